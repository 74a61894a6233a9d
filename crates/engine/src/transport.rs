//! The seam between the engine and a transport: what every QUIC-like link provides.
//!
//! Native `async fn`-in-trait style (`impl Future + Send`), no boxing in hot paths.

use std::fmt;
use std::future::Future;
use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite};

/// The sending half of a bidirectional stream. `shutdown()` finishes it cleanly (FIN).
pub trait SendStream: AsyncWrite + Unpin + Send + 'static {
    /// Ends the stream abruptly: the peer's reads fail with `code` instead of a clean EOF.
    fn reset(&mut self, code: u32);

    /// Writes a whole chunk, handing over ownership (no copy into the stream's buffer).
    fn write_chunk(&mut self, data: Bytes) -> impl Future<Output = io::Result<()>> + Send;

    /// Scheduling priority among the connection's streams (higher goes first; default 0).
    fn set_priority(&mut self, priority: i32);
}

/// The receiving half of a bidirectional stream. Reads fail if the peer reset it.
pub trait RecvStream: AsyncRead + Unpin + Send + 'static {
    /// Tells the peer to stop sending (its writes fail with `code`).
    fn stop(&mut self, code: u32);

    /// Takes the stream's next chunks of received data without copying them: fills
    /// `bufs` from the front and returns how many, or `None` once the peer finished the
    /// stream. Waits while nothing is buffered.
    fn read_chunks(
        &mut self,
        bufs: &mut [Bytes],
    ) -> impl Future<Output = io::Result<Option<usize>>> + Send;
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionEnd {
    /// The peer closed it with an application code.
    Peer { code: u64, reason: String },
    /// We closed it.
    Local,
    /// Nothing heard from the peer within the idle timeout.
    TimedOut,
    /// The peer no longer knows the connection (it restarted).
    Reset,
    /// Anything else (transport error, version mismatch...).
    Other(String),
}

impl fmt::Display for ConnectionEnd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectionEnd::Peer { code, reason } => {
                match porthole_proto::close::CloseCode::from_u64(*code) {
                    Some(c) => write!(f, "{} (code {code})", c.explain()),
                    None => write!(f, "closed by peer with code {code}: {reason}"),
                }
            }
            ConnectionEnd::Local => f.write_str("closed locally"),
            ConnectionEnd::TimedOut => f.write_str("timed out (no packets from the peer)"),
            ConnectionEnd::Reset => f.write_str("reset by the peer (it probably restarted)"),
            ConnectionEnd::Other(s) => f.write_str(s),
        }
    }
}

/// The network path a connection uses right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathNow {
    pub kind: PathKind,
    /// The path's smoothed round-trip time, once measured.
    pub rtt: Option<std::time::Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    /// Straight to the peer's address.
    Direct(std::net::SocketAddr),
    /// Through a relay, by its URL.
    Relay(String),
    Unknown,
}

/// An established, encrypted connection to the peer.
pub trait Connection: Clone + Send + Sync + 'static {
    type Send: SendStream;
    type Recv: RecvStream;

    fn open_bi(&self) -> impl Future<Output = io::Result<(Self::Send, Self::Recv)>> + Send;
    fn accept_bi(&self) -> impl Future<Output = io::Result<(Self::Send, Self::Recv)>> + Send;
    /// Sends one unreliable datagram; may be dropped on the way (or locally when the
    /// send buffer is full). Errors when the connection is gone or the datagram too big.
    fn send_datagram(&self, data: Bytes) -> io::Result<()>;
    fn read_datagram(&self) -> impl Future<Output = io::Result<Bytes>> + Send;
    /// Largest datagram the current path carries; `None` if the peer disabled datagrams.
    fn max_datagram_size(&self) -> Option<usize>;
    fn close(&self, code: u32, reason: &[u8]);
    /// Resolves when the connection has ended, with the reason.
    fn closed(&self) -> impl Future<Output = ConnectionEnd> + Send;
    /// The reason if the connection has already ended.
    fn close_reason(&self) -> Option<ConnectionEnd>;
    /// Who the peer is, short, for logs (an EndpointId's first bytes, an address).
    fn peer(&self) -> String;
    /// The peer's full identity, never shortened: what per-peer limits are keyed on, so
    /// unrelated peers never share a bucket and nobody can grind a key into another's
    /// (the whole EndpointId in iroh mode; the remote IP in manual mode, where a peer
    /// has no identity beyond its certificate of the moment).
    fn peer_key(&self) -> String;
    /// Frames received from the peer so far that prove it alive: acknowledgements, pings,
    /// stream data, datagrams. With keep-alives on, this grows at least once per
    /// keep-alive interval while the peer and a path to it are up. Counted after
    /// decryption: unlike raw UDP bytes, a stateless reset the connection does not
    /// recognise (a restarted server sends them) adds nothing.
    fn frames_received(&self) -> u64;
    /// The path carrying the connection now, if one is selected.
    fn path(&self) -> Option<PathNow>;
    /// 32 bytes of the TLS exporter under `label` (RFC 5705): the same on both ends of
    /// this connection and on no other, what a client key proof signs.
    fn keying_material(&self, label: &[u8]) -> Option<[u8; 32]>;
}

/// The server side of a transport: hands out incoming connections.
pub trait Acceptor: Send + Sync + 'static {
    type Conn: Connection;
    /// The transport handshake of one incoming connection; the engine runs it in its
    /// own task under a timeout so a slow peer cannot stall the accept loop.
    type Handshake: Future<Output = io::Result<Self::Conn>> + Send + 'static;

    /// The next incoming connection, or `None` once the endpoint is closed.
    fn accept(&self) -> impl Future<Output = Option<Self::Handshake>> + Send;
}

/// The client side of a transport: dials the server.
pub trait Connector: Send + Sync + 'static {
    type Conn: Connection;
    fn connect(&self) -> impl Future<Output = io::Result<Self::Conn>> + Send;

    /// A direct connection to the same server, punched beside `conn` (a relayed one),
    /// for the engine to move `conn`'s resumable session onto (see [`crate::upgrade`]).
    /// Resolves only with a connection; a transport that cannot, or a path already
    /// direct, never resolves. The engine drops the future when `conn`'s session ends.
    fn upgrade(&self, conn: &Self::Conn) -> impl Future<Output = Self::Conn> + Send {
        let _ = conn;
        std::future::pending()
    }
}
