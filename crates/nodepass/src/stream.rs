//! Pool connection streams: plain TCP or TLS (either side), and datagrams for UDP
//! sessions.
//!
//! Up to v2.0.0-b8 NodePass carries each UDP datagram as one write and takes each read on
//! the other side as one datagram. Over TLS that works because Go's `tls.Conn.Read`
//! returns at most one record per call, and each write is one record. A tokio-rustls
//! stream happily returns several records in one read, gluing datagrams together;
//! [`DatagramStream`] therefore drives rustls itself and decrypts exactly one record at
//! a time. From v2.0.0-b9 each datagram carries a 2-byte length prefix
//! ([`crate::wire::udp_frame`]); [`UdpFraming`] says which a tunnel speaks.

use std::io::{self, Write};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tracing::warn;

use crate::wire::Generation;
use crate::wire::udp_frame::{self, Decoder};

/// TCP keep-alive on a pool socket (either side): a peer that vanished is noticed even
/// while the connection sits idle in a pool.
pub fn pool_keepalive(tcp: &TcpStream) {
    let keepalive = socket2::TcpKeepalive::new().with_time(std::time::Duration::from_secs(5));
    let _ = socket2::SockRef::from(tcp).set_tcp_keepalive(&keepalive);
}

/// A pool connection's byte stream.
pub enum PoolStream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// Pool type 2: a WebSocket over one of the above.
    Ws(Box<crate::ws::WsConn>),
    /// Pool type 3: a stream of the tunnel's one HTTP/2 connection.
    H2(Box<crate::h2pool::H2Stream>),
    /// Pool type 1: a stream of one of the tunnel's QUIC connections.
    Quic(Box<crate::quicpool::QuicStream>),
}

impl AsyncRead for PoolStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PoolStream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PoolStream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PoolStream::Ws(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PoolStream::H2(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PoolStream::Quic(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PoolStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PoolStream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PoolStream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PoolStream::Ws(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PoolStream::H2(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PoolStream::Quic(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PoolStream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PoolStream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PoolStream::Ws(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PoolStream::H2(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PoolStream::Quic(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PoolStream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PoolStream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PoolStream::Ws(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PoolStream::H2(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PoolStream::Quic(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// TLS record header length and the largest record body (TLS 1.3 allows 2^14 + 256).
const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = (1 << 14) + 256;

/// Whether a tunnel's UDP datagrams carry a length prefix (`udpframe=`), shared by its
/// sessions. Auto follows the handshake (HTTPS: framed) and falls back to bare datagrams
/// for good when a peer's first TLS record shows it does not frame (v1.15-v2.0.0-b8).
/// Nothing goes the other way: a plain-HTTP (v1.14) peer never frames.
#[derive(Debug)]
pub struct UdpFraming {
    explicit: bool,
    framed: AtomicBool,
}

impl UdpFraming {
    pub fn new(param: Option<bool>, generation: Generation) -> Arc<Self> {
        Arc::new(Self {
            explicit: param.is_some(),
            framed: AtomicBool::new(param.unwrap_or(generation.udp_framed())),
        })
    }

    pub fn framed(&self) -> bool {
        self.framed.load(Ordering::Relaxed)
    }
}

/// One datagram per [`recv`](Self::recv) / [`send`](Self::send), bare or length-prefixed
/// as the tunnel's [`UdpFraming`] says.
pub struct DatagramStream {
    io: RecordStream,
    framing: Arc<UdpFraming>,
    /// This session's choice, made at its first send or receive.
    framed: Option<bool>,
    sent: bool,
    frames: Decoder,
    chunk: Vec<u8>,
}

impl DatagramStream {
    pub fn new(s: PoolStream, framing: Arc<UdpFraming>) -> Self {
        Self {
            io: RecordStream::new(s),
            framing,
            framed: None,
            sent: false,
            frames: Decoder::default(),
            chunk: Vec::new(),
        }
    }

    /// The next datagram (`Ok(0)` at the end of the stream). Cancel-safe: bytes already
    /// read from the socket stay buffered. A peer whose framing is not the one in force
    /// ends the session with `InvalidData` naming `udpframe=`.
    pub async fn recv(&mut self, out: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.framed == Some(true) {
                if let Some(d) = self.frames.next_datagram() {
                    let n = d.len().min(out.len());
                    out[..n].copy_from_slice(&d[..n]);
                    return Ok(n);
                }
            } else if self.framed == Some(false) {
                return self.io.recv(out).await;
            }
            self.chunk.resize(64 * 1024, 0);
            let n = self.io.recv(&mut self.chunk).await?;
            if n == 0 {
                return Ok(0);
            }
            if self.framed.is_none() {
                self.decide(n)?;
            }
            if self.framed == Some(true) {
                self.frames.push(&self.chunk[..n]);
            } else {
                let n = n.min(out.len());
                out[..n].copy_from_slice(&self.chunk[..n]);
                return Ok(n);
            }
        }
    }

    /// The session's framing: the tunnel's, checked under TLS against the peer's first
    /// record (a length-prefixed peer's records always look framed; a bare datagram
    /// does so only by a 1 in 65536 chance or at 2 bytes). A mismatch on an explicit
    /// `udpframe=` ends the session before anything reaches the target; under auto a
    /// bare peer switches the tunnel to bare datagrams (a v1.14 peer never frames, so
    /// nothing switches the other way).
    fn decide(&mut self, n: usize) -> io::Result<()> {
        let expected = self.framed.unwrap_or(self.framing.framed());
        let looks = self.io.keeps_boundaries() && udp_frame::looks_framed(&self.chunk[..n]);
        if !self.io.keeps_boundaries() || looks == expected || (!expected && !self.framing.explicit)
        {
            self.framed = Some(expected);
            return Ok(());
        }
        if self.framing.explicit {
            let (peer, fix) = if expected {
                ("without a length prefix", "udpframe=0")
            } else {
                ("with a 2-byte length prefix", "udpframe=1")
            };
            warn!(
                "the peer sends UDP datagrams {peer}, not as this URL says: set {fix} (or \
                 udpframe=auto); closing the session"
            );
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("UDP framing mismatch: set {fix}"),
            ));
        }
        self.framing.framed.store(false, Ordering::Relaxed);
        self.framed = Some(false);
        if self.sent {
            warn!(
                "the peer sends UDP datagrams without a length prefix (NodePass v1.15 to \
                 v2.0.0-b8): this tunnel switches to bare datagrams; this session's first \
                 datagrams were misread by the peer, so it is closed. Set udpframe=0 in the \
                 URL to start that way"
            );
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "UDP framing mismatch: set udpframe=0",
            ));
        }
        warn!(
            "the peer sends UDP datagrams without a length prefix (NodePass v1.15 to \
             v2.0.0-b8): using bare datagrams on this tunnel (udpframe=0 says so up front)"
        );
        Ok(())
    }

    /// Sends one datagram (one write, so one TLS record under TLS).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        let framed = *self.framed.get_or_insert(self.framing.framed());
        self.sent = true;
        if framed {
            let frame = udp_frame::encode(data)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            self.io.send(&frame).await
        } else {
            self.io.send(data).await
        }
    }
}

/// Reads of one TLS record, WebSocket message or HTTP/2 DATA frame at a time (one read
/// under plain TCP), writes of one record or message.
enum RecordStream {
    Messages(Box<crate::ws::WsConn>),
    /// HTTP/2 DATA frames: a read returns at most one.
    Frames(Box<crate::h2pool::H2Stream>),
    /// A QUIC stream: bytes, no boundaries (as plain TCP).
    Quic(Box<crate::quicpool::QuicStream>),
    Plain(TcpStream),
    Tls {
        tcp: TcpStream,
        conn: Box<rustls::Connection>,
        inbuf: Vec<u8>,
    },
}

impl RecordStream {
    fn new(s: PoolStream) -> Self {
        match s {
            PoolStream::Plain(t) => RecordStream::Plain(t),
            PoolStream::Ws(w) => RecordStream::Messages(w),
            PoolStream::H2(h) => RecordStream::Frames(h),
            PoolStream::Quic(q) => RecordStream::Quic(q),
            PoolStream::Server(t) => {
                let (tcp, conn) = t.into_inner();
                RecordStream::Tls {
                    tcp,
                    conn: Box::new(conn.into()),
                    inbuf: Vec::new(),
                }
            }
            PoolStream::Client(t) => {
                let (tcp, conn) = t.into_inner();
                RecordStream::Tls {
                    tcp,
                    conn: Box::new(conn.into()),
                    inbuf: Vec::new(),
                }
            }
        }
    }

    /// Whether each read is one write of the peer's (a TLS record, a message).
    fn keeps_boundaries(&self) -> bool {
        !matches!(self, RecordStream::Plain(_) | RecordStream::Quic(_))
    }

    /// The plaintext of the next record (`Ok(0)` at the end of the stream). Cancel-safe:
    /// bytes already read from the socket stay buffered.
    async fn recv(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            RecordStream::Plain(t) => t.read(out).await,
            RecordStream::Messages(w) => w.recv_message(out).await,
            RecordStream::Frames(h) => h.read(out).await,
            RecordStream::Quic(q) => q.read(out).await,
            RecordStream::Tls { tcp, conn, inbuf } => loop {
                // One record's plaintext: rustls keeps each record as a chunk, and more
                // than one may be waiting (records that arrived with the pool ID were
                // decrypted while it was read), so take one chunk, not all there is.
                let mut reader = conn.reader();
                match std::io::BufRead::fill_buf(&mut reader) {
                    Ok(chunk) => {
                        let n = chunk.len().min(out.len());
                        out[..n].copy_from_slice(&chunk[..n]);
                        std::io::BufRead::consume(&mut reader, n);
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // Exactly one more record from the socket.
                let len = loop {
                    if let Some(len) = record_len(inbuf) {
                        if len > RECORD_HEADER + MAX_RECORD {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "oversized TLS record",
                            ));
                        }
                        if inbuf.len() >= len {
                            break len;
                        }
                    }
                    let mut chunk = [0u8; 16 * 1024];
                    let n = tcp.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(0);
                    }
                    inbuf.extend_from_slice(&chunk[..n]);
                };
                let mut record = &inbuf[..len];
                conn.read_tls(&mut record)?;
                inbuf.drain(..len);
                // Anything rustls wants to answer (a key update) goes out with the next
                // send: writing here would not be cancel-safe.
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            },
        }
    }

    async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            RecordStream::Plain(t) => t.write_all(data).await,
            RecordStream::Messages(w) => {
                w.write_all(data).await?;
                w.flush().await
            }
            RecordStream::Frames(h) => h.write_all(data).await,
            RecordStream::Quic(q) => q.write_all(data).await,
            RecordStream::Tls { tcp, conn, .. } => {
                conn.writer().write_all(data)?;
                flush_tls(tcp, conn).await
            }
        }
    }
}

/// The whole length (header included) of the TLS record starting `buf`, once its header is in.
fn record_len(buf: &[u8]) -> Option<usize> {
    let body = u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]);
    Some(RECORD_HEADER + usize::from(body))
}

async fn flush_tls(tcp: &mut TcpStream, conn: &mut rustls::Connection) -> io::Result<()> {
    while conn.wants_write() {
        let mut out = Vec::new();
        conn.write_tls(&mut out)?;
        tcp.write_all(&out).await?;
    }
    Ok(())
}
