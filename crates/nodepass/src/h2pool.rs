//! Pool type 3 (HTTP/2, NodePass's `nph2`): every pool connection is one HTTP/2 stream
//! on a single TLS connection from the client to the server's tunnel port. The client
//! opens a stream (`POST /stream`) and sends a one-byte hello (0x00); the server answers
//! 200 and the stream's 4-byte pool ID, the first stream of a tunnel getting the control
//! channel's; then the stream carries the pool connection's bytes both ways. TLS is
//! always on, ALPN `h2` (a self-signed certificate at tls=0, unchecked below tls=2).
//!
//! Versions of `nph2` differ in who waits for whom (the hello before the response
//! headers, or the other way round): the client here sends the hello with the request
//! and the server answers the headers at once, so either order meets.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::{Reason, RecvStream, SendStream};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::debug;

use crate::pool::{Intake, PoolConn};
use crate::stream::PoolStream;
use crate::wire::Fingerprint;
use crate::wire::{ID_TIMEOUT, PoolId, STREAM_HELLO, id_hex};

/// The ALPN protocol both ends insist on.
pub const ALPN: &[u8] = b"h2";
/// Flow-control windows. h2's default of 64 KiB per stream would hold a pool connection
/// to 64 KiB per round trip; these match the TCP pool's socket buffers in spirit: a
/// stream may fill a WAN path, and one connection holds many busy streams.
const STREAM_WINDOW: u32 = 4 << 20;
const CONN_WINDOW: u32 = 32 << 20;
/// The most one write hands to h2 before it waits for the peer's window.
const MAX_WRITE: usize = 256 << 10;
/// How long the TLS and HTTP/2 handshakes of the shared connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

fn io_err(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e
            .into_io()
            .unwrap_or_else(|| io::Error::other("HTTP/2 I/O error"));
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

/// One pool connection: an HTTP/2 stream as a byte stream. Shutdown ends our half
/// (END_STREAM); dropping it resets the stream. A peer that resets with NO_ERROR or
/// CANCEL (the Go side closing a pool connection fully) reads as the end of the stream.
pub struct H2Stream {
    send: SendStream<Bytes>,
    recv: RecvStream,
    /// Received bytes not yet read (the rest of one DATA frame).
    pending: Bytes,
    read_done: bool,
    write_done: bool,
}

impl fmt::Debug for H2Stream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "H2Stream({:?})", self.send.stream_id())
    }
}

impl H2Stream {
    fn new(send: SendStream<Bytes>, recv: RecvStream, pending: Bytes) -> Self {
        Self {
            send,
            recv,
            pending,
            read_done: false,
            write_done: false,
        }
    }
}

impl AsyncRead for H2Stream {
    /// At most one DATA frame's bytes per read: a peer's write of a datagram up to the
    /// frame size arrives as one read (what bare UDP datagrams rely on).
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.pending.is_empty() {
                let n = this.pending.len().min(buf.remaining());
                buf.put_slice(&this.pending.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if this.read_done {
                return Poll::Ready(Ok(()));
            }
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    // The window reopens as bytes leave h2's buffer for ours (one frame).
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    this.pending = data;
                }
                Some(Err(e)) if matches!(e.reason(), Some(Reason::NO_ERROR | Reason::CANCEL)) => {
                    this.read_done = true
                }
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
                None => this.read_done = true,
            }
        }
    }
}

impl AsyncWrite for H2Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.write_done {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        this.send.reserve_capacity(buf.len().min(MAX_WRITE));
        loop {
            let cap = this.send.capacity();
            if cap > 0 {
                let n = cap.min(buf.len());
                this.send
                    .send_data(Bytes::copy_from_slice(&buf[..n]), false)
                    .map_err(io_err)?;
                return Poll::Ready(Ok(n));
            }
            match ready!(this.send.poll_capacity(cx)) {
                Some(Ok(_)) => {}
                Some(Err(e)) => return Poll::Ready(Err(io_err(e))),
                // The stream no longer sends (reset by the peer).
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    /// h2's connection task writes what was handed over; nothing is held here.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !std::mem::replace(&mut this.write_done, true) {
            let _ = this.send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

/// The shared connection a client opens its pool streams on.
struct Live {
    send: h2::client::SendRequest<Bytes>,
    fp: Option<Fingerprint>,
    dead: Arc<AtomicBool>,
}

/// A client's side of an HTTP/2 pool: one TLS connection, made on first use and again
/// after it is lost, each pool connection a new stream on it.
pub struct H2Client {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    addr: String,
    uri: http::Uri,
    live: tokio::sync::Mutex<Option<Live>>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
}

impl H2Client {
    /// `connector` as the tunnel's TLS mode says (tls=0 uses an unchecked one, as NodePass
    /// does); ALPN `h2` is set here.
    pub fn new(
        connector: &tokio_rustls::TlsConnector,
        name: ServerName<'static>,
        addr: String,
        host: &str,
    ) -> io::Result<Self> {
        let mut config = (**connector.config()).clone();
        config.alpn_protocols = vec![ALPN.to_vec()];
        let uri = http::Uri::builder()
            .scheme("https")
            .authority(host)
            .path_and_query("/stream")
            .build()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let stop = CancellationToken::new();
        Ok(Self {
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            name,
            addr,
            uri,
            live: tokio::sync::Mutex::new(None),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        })
    }

    /// The shared connection, made if there is none or it was lost.
    async fn connection(
        &self,
    ) -> io::Result<(h2::client::SendRequest<Bytes>, Option<Fingerprint>)> {
        let mut live = self.live.lock().await;
        if let Some(l) = live.as_ref()
            && !l.dead.load(Ordering::Acquire)
        {
            return Ok((l.send.clone(), l.fp));
        }
        *live = None;
        let connect = async {
            let tcp = TcpStream::connect(&self.addr).await?;
            let _ = tcp.set_nodelay(true);
            crate::stream::pool_keepalive(&tcp);
            let tls = self.connector.connect(self.name.clone(), tcp).await?;
            if tls.get_ref().1.alpn_protocol() != Some(ALPN) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server's tunnel port does not speak HTTP/2 (no ALPN h2): is its pool type 3?",
                ));
            }
            let fp = crate::tls::server_fingerprint(&tls);
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(STREAM_WINDOW)
                .initial_connection_window_size(CONN_WINDOW)
                .handshake::<_, Bytes>(tls)
                .await
                .map_err(io_err)?;
            Ok::<_, io::Error>((send, conn, fp))
        };
        let (send, conn, fp) = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "HTTP/2 pool connection timed out")
            })??;
        let dead = Arc::new(AtomicBool::new(false));
        let (stop, mark) = (self.stop.clone(), dead.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = conn => if let Err(e) = r {
                    debug!("HTTP/2 pool connection ended: {e}");
                },
            }
            mark.store(true, Ordering::Release);
        });
        debug!("HTTP/2 pool connection up");
        *live = Some(Live {
            send: send.clone(),
            fp,
            dead,
        });
        Ok((send, fp))
    }

    /// A new pool connection: a stream, its hello, its ID.
    pub async fn open(&self) -> io::Result<PoolConn> {
        let (send, fp) = self.connection().await?;
        let mut send = send.ready().await.map_err(io_err)?;
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(self.uri.clone())
            .body(())
            .map_err(io::Error::other)?;
        let (response, mut body) = send.send_request(request, false).map_err(io_err)?;
        body.send_data(Bytes::from_static(&[STREAM_HELLO]), false)
            .map_err(io_err)?;
        let get_id = async {
            let response = response.await.map_err(io_err)?;
            if response.status() != http::StatusCode::OK {
                return Err(io::Error::other(format!(
                    "the server answered a new pool stream with {} (503: its pool is full)",
                    response.status()
                )));
            }
            let mut s = H2Stream::new(body, response.into_body(), Bytes::new());
            let mut id: PoolId = [0; 4];
            s.read_exact(&mut id).await?;
            Ok((s, id))
        };
        let (s, id) = tokio::time::timeout(ID_TIMEOUT, get_id)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no pool ID"))??;
        Ok(PoolConn {
            id,
            io: PoolStream::H2(Box::new(s)),
            seen_fp: fp,
            since: Instant::now(),
        })
    }
}

/// Serves one client's HTTP/2 pool connection (TLS already accepted, ALPN `h2`) until it
/// closes or `cancel` fires: each new stream is answered 200 and its pool ID, and joins
/// the pool (refused with a reset while the pool is full).
pub async fn serve<IO>(io: IO, to: Intake, cancel: CancellationToken)
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = h2::server::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONN_WINDOW)
        .max_concurrent_streams(u32::try_from(to.max).unwrap_or(u32::MAX).saturating_add(16))
        .handshake::<_, Bytes>(io);
    let mut conn = match tokio::time::timeout(CONNECT_TIMEOUT, handshake).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return debug!("HTTP/2 pool handshake: {e}"),
        Err(_) => return debug!("HTTP/2 pool handshake timed out"),
    };
    loop {
        let next = tokio::select! {
            _ = cancel.cancelled() => break,
            n = conn.accept() => n,
        };
        let (request, mut respond) = match next {
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                debug!("HTTP/2 pool connection: {e}");
                break;
            }
            None => break,
        };
        let to = to.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            // Headers first, then the hello: nph2 versions differ in which they wait for.
            let Ok(mut send) = respond.send_response(http::Response::new(()), false) else {
                return;
            };
            let mut recv = request.into_body();
            // The hello: the first byte of the first DATA frame; what follows it stays.
            let hello = tokio::select! {
                _ = cancel.cancelled() => return,
                h = tokio::time::timeout(CONNECT_TIMEOUT, recv.data()) => h,
            };
            let rest = match hello {
                Ok(Some(Ok(mut data))) if !data.is_empty() => {
                    let _ = recv.flow_control().release_capacity(data.len());
                    data.split_off(1)
                }
                _ => return debug!("a new HTTP/2 pool stream sent no hello"),
            };
            let Some(claim) = to.claim() else {
                debug!("pool full ({}): refusing a new stream", to.max);
                return send.send_reset(Reason::REFUSED_STREAM);
            };
            if send
                .send_data(Bytes::copy_from_slice(&claim.id), false)
                .is_err()
            {
                return to.release(claim);
            }
            debug!("pool stream {}", id_hex(claim.id));
            to.deliver(
                claim,
                PoolStream::H2(Box::new(H2Stream::new(send, recv, rest))),
            );
        });
    }
}
