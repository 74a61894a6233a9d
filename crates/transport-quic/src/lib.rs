//! Manual mode: porthole without iroh infrastructure.
//!
//! Plain QUIC (quinn) between two self-signed certificates that pin each other by
//! SHA-256 fingerprint, exchanged in copy-paste offer/answer blobs together with the
//! address candidates each side gathered on the very UDP socket QUIC will use:
//! interface addresses, and public (server-reflexive) addresses from STUN.
//! Both sides then probe every candidate pair at once, keep the first pair that
//! answers, and hand that socket to quinn. Against an endpoint-dependent
//! ("symmetric") NAT, the symmetric side opens many sockets and the other side sprays
//! many ports (the birthday technique), plus port prediction for sequential NATs.
//!
//! - [`tls`]: identities, pinned rustls/quinn configs.
//! - [`stun`]: a STUN binding client and responder (stun-rs encodes, we do the I/O).
//! - [`gather`]: host and server-reflexive candidates, NAT kind.
//! - [`punch`]: the hole-punching driver.
//! - [`session`]: offer/answer orchestration for client and server.
//! - [`conn`]: the engine's traits over quinn.

pub mod conn;
pub mod gather;
pub mod punch;
pub mod session;
pub mod stun;
pub mod tls;

pub use conn::QuicConn;
pub use session::{
    ManualAcceptor, ManualConnector, ManualOptions, PreparedClient, PreparedServer, PunchReport,
};
