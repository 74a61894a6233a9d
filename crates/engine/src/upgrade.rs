//! The seam for a direct upgrade: a session running over a relay moves onto a direct
//! path a transport punched beside it (iroh mode with symmetric NATs; see
//! docs/NAT-TRAVERSAL.md).
//!
//! The engine owns when and what moves; the transport owns how a path is punched:
//! - client: [`crate::transport::Connector::upgrade`] returns a direct connection for a
//!   running resumable session; the engine then claims the session on it (a resume:
//!   open connections move, the server closes the old connection) and carries on there.
//!   When the direct connection dies, the usual reconnect and resume take the session
//!   back onto the relay.
//! - server: an authenticated resumable session's
//!   [`porthole_proto::resume::ResumableHeader::Upgrade`] stream goes to the
//!   [`UpgradeAnswerer`], which answers the offer, punches, and hands the direct
//!   connection to its acceptor. Without one the engine declines.

use std::fmt;
use std::future::Future;
use std::pin::Pin;

use tokio::io::{AsyncRead, AsyncWrite};

/// The sending half of an upgrade stream, whatever the connection's type.
pub type UpgradeSend = Box<dyn AsyncWrite + Unpin + Send>;
/// The receiving half of an upgrade stream.
pub type UpgradeRecv = Box<dyn AsyncRead + Unpin + Send>;

/// The server's half of the upgrade: answers one offer read from the stream's receiving
/// half (its header already read) on its sending half, punches, and delivers the direct
/// connection to the acceptor the server runs on. `client` names the session's client
/// (for logs); `session` is the session's id (one upgrade at a time each).
pub trait UpgradeAnswerer: Send + Sync + fmt::Debug + 'static {
    fn answer(
        &self,
        client: String,
        session: String,
        stream: (UpgradeSend, UpgradeRecv),
    ) -> Pin<Box<dyn Future<Output = ()> + Send>>;
}
