//! NodePass v1.14 to v2.0 compatible tunnels: porthole can stand in for either end of a
//! NodePass tunnel, any pool type, and talk to the real NodePass on the wire.
//!
//! - [`wire`]: the protocol as data (no I/O), tested on the documented byte examples.
//! - [`tls`]: tls=0/1/2 server and client configurations.
//! - [`pool`]: the idle pool connections, by ID.
//! - [`server`] / [`client`]: the two roles (handshake, pool, signal channel).
//! - [`channel`]: the signal channel (NodePass's "control channel", pool connection 0)
//!   shared by both roles: signals, liveness, verify.
//! - [`tunnel`]: the running tunnel as the users' side sees it (launching a session).
//! - [`session`]: user sessions over pool connections (TCP, UDP), limits, `block=`.
//! - [`targets`]: the dialing side's targets (`dns=` cache, `lbs=` selection, failover).
//! - [`tasks`]: every task a tunnel starts, ended and awaited at shutdown.
//! - [`ws`]: pool type 2, pool connections as WebSockets.
//! - [`quicpool`]: pool type 1, pool connections as streams of QUIC connections.
//! - [`h2pool`]: pool type 3, pool connections as streams of one HTTP/2 connection.

pub mod channel;
pub mod client;
pub mod h2pool;
pub mod pool;
pub mod quicpool;
pub mod server;
pub mod session;
pub mod stream;
pub mod targets;
pub mod tasks;
pub mod tls;
pub mod tunnel;
pub mod wire;
pub mod ws;

pub use wire::url::{NodepassUrl, Role};
