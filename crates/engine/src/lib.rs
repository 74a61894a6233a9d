//! The forwarding engine: everything porthole does with a connection once it has one,
//! independent of how the connection was made (iroh, plain quinn, or a test double).
//!
//! A transport implements the small [`transport`] traits (bidirectional streams,
//! datagrams, close codes); the engine provides:
//! - [`server::run`]: accept connections, authenticate, resolve and police forwards,
//!   splice TCP streams and UDP flows to targets, within session and flow limits;
//! - [`client::run`]: bind local listeners once, keep one authenticated connection up
//!   (reconnecting with backoff), and carry local TCP connections and UDP peers over it.
//!
//! The concrete transport is chosen once at the top with generics, as rathole does.

pub mod access;
pub mod auth;
pub mod client;
pub mod control;
pub mod direct_paths;
pub mod either;
pub mod net;
pub mod pace;
pub mod policy;
pub mod quic_adapter;
pub mod quic_params;
pub mod resume;
pub mod server;
pub mod socket_buffers;
pub mod splice;
pub mod telemetry;
pub mod transport;
pub mod udp;
pub mod upgrade;
pub mod windows;

pub use porthole_proto as proto;

/// What [`quic_adapter!`] needs from our dependencies, so callers need not name them.
#[doc(hidden)]
pub mod __private {
    pub use bytes::Bytes;
    pub use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
}
