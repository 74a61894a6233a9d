//! Direct upgrade (iroh mode): when a session runs through a relay because one side's
//! NAT is endpoint-dependent ("symmetric"), which iroh's own hole punching cannot get
//! through, the client offers to punch a direct path beside it with manual mode's
//! machinery (two STUN observations to classify each NAT, birthday probing, port
//! prediction: `porthole_transport_quic`).
//!
//! The offer and answer travel on a stream of the authenticated relayed connection,
//! so there is no copy and paste and no other server; each carries the fingerprint of
//! a fresh self-signed certificate that the other side pins, so the direct QUIC
//! connection reaches the same peer as the relayed one. The engine then claims the
//! session on it (a resume, bound to the session's secret): open connections move, the
//! relayed connection closes. If the direct path dies, the engine's reconnect and
//! resume bring the session back through the relay, and a later attempt may punch
//! again.
//!
//! - [`options`]: the settings (`--no-upgrade`, STUN servers, limits) and the pacing.
//! - [`client`]: the client's offer, punch and connection ([`UpgradingConnector`]).
//! - [`server`]: the server's answer and punch, and an acceptor that hands the direct
//!   connections to the engine beside the iroh ones ([`UpgradingAcceptor`]).

pub mod client;
pub mod options;
pub mod server;

pub use client::UpgradingConnector;
pub use options::UpgradeOptions;
pub use server::{Answerer, Punched, UpgradingAcceptor};

use porthole_engine::either::Either;
use porthole_transport_iroh::IrohConn;
use porthole_transport_quic::QuicConn;

/// A connection of an iroh-mode session: the iroh one (relayed or direct) or the plain
/// QUIC one an upgrade punched.
pub type Conn = Either<IrohConn, QuicConn>;
