//! The iroh transport: QUIC with hole punching, relay fallback and discovery.
//!
//! - [`options`]: how the endpoint is set up (relays, CA, discovery, relay-only, bind).
//! - [`endpoint`]: binding the endpoint, the engine's acceptor and connector.
//! - [`conn`]: the engine's connection trait over iroh's (noq) connection and streams.
//! - [`paths`]: watching and logging the selected path (`path=direct` / `path=relay`).
//! - [`ticket`]: building and reading porthole tickets from iroh addresses.
//! - `bbr`: the BBR congestion controller for noq (quinn's, ported).

mod bbr;
pub mod conn;
pub mod endpoint;
pub mod options;
pub mod paths;
pub mod ticket;

pub use conn::IrohConn;
pub use endpoint::{IrohAcceptor, IrohConnector, bind};
pub use options::{DnsSetting, IrohOptions, RelaySetting, RelaySpec};

/// Errors setting up the iroh endpoint.
#[derive(Debug, thiserror::Error)]
pub enum IrohError {
    #[error("cannot bind the iroh endpoint: {0}")]
    Bind(String),
    #[error("invalid relay URL {url:?}: {why}")]
    RelayUrl { url: String, why: String },
    #[error("invalid bind address: {0}")]
    BindAddr(String),
    #[error("cannot read the relay CA: {0}")]
    RelayCa(String),
}
