//! Pool type 1 (QUIC, NodePass's `quic` package): pool connections are bidirectional
//! streams of QUIC connections from the client to the server's tunnel port (UDP, the
//! same number as the TCP handshake port). The client opens a stream and writes a
//! one-byte hello (0x00); the server answers the stream's 4-byte pool ID, the first
//! stream of a tunnel getting the control channel's. TLS 1.3 with ALPN `np-quic`; the
//! certificate is self-signed at tls=0 and checked only at tls=2.
//!
//! NodePass's server takes at most 128 streams per connection, so a client spreads its
//! pool over as many connections as that needs (NodePass's "shards").

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use porthole_engine::quic_params::QuicParams;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::pool::{Intake, PoolConn};
use crate::stream::PoolStream;
use crate::tls::ServerTls;
use crate::wire::{Fingerprint, ID_TIMEOUT, PoolId, STREAM_HELLO, id_hex};

/// The ALPN protocol both ends insist on.
pub const ALPN: &[u8] = b"np-quic";
/// Streams one connection carries at once (NodePass's server limit).
const STREAMS_PER_CONN: usize = 128;
/// Per-stream receive window: a pool connection may fill a WAN path (quinn's default,
/// ~1.25 MB, is a fraction of the TCP pool's socket buffers).
const STREAM_WINDOW: u32 = 4 << 20;
/// How long a QUIC handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// QUIC tunables for NodePass peers: porthole's own keep-alive, idle timeout and
/// windows ([`QuicParams`]), NodePass's stream limit.
fn transport() -> Arc<quinn::TransportConfig> {
    let p = QuicParams::default();
    let varint = |v: u64| quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX);
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(STREAMS_PER_CONN as u32));
    t.max_concurrent_uni_streams(0u32.into());
    t.keep_alive_interval(Some(p.keep_alive));
    t.max_idle_timeout(p.idle_timeout.try_into().ok());
    t.stream_receive_window(quinn::VarInt::from_u32(STREAM_WINDOW));
    t.receive_window(varint(p.connection_window));
    t.send_window(p.send_window);
    Arc::new(t)
}

/// One pool connection: a QUIC stream as a byte stream (shutdown finishes our half).
pub struct QuicStream {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    /// Frees the stream's place on its connection when dropped (clients).
    _place: Option<Place>,
}

impl fmt::Debug for QuicStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "QuicStream({})", self.send.id())
    }
}

impl AsyncRead for QuicStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.get_mut().recv), cx, buf)
    }
}

impl AsyncWrite for QuicStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.get_mut().send), cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.get_mut().send), cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.get_mut().send), cx)
    }
}

/// A stream's place on a client connection.
struct Place(Arc<AtomicUsize>);

impl Drop for Place {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The certificate the peer presented, as a fingerprint.
fn peer_fp(conn: &quinn::Connection) -> Option<Fingerprint> {
    let certs = conn
        .peer_identity()?
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    certs.first().map(|c| Fingerprint::of(c))
}

/// A client's side of a QUIC pool: connections made as streams need them, each stream a
/// pool connection. Dropping it closes them all.
pub struct QuicClient {
    config: quinn::ClientConfig,
    /// The tunnel's `host:port` (resolved at each new connection) and TLS name.
    addr: String,
    name: String,
    state: tokio::sync::Mutex<ClientState>,
}

#[derive(Default)]
struct ClientState {
    /// Bound on first use, for the family of the tunnel's address.
    endpoint: Option<quinn::Endpoint>,
    conns: Vec<(quinn::Connection, Arc<AtomicUsize>)>,
}

impl Drop for QuicClient {
    fn drop(&mut self) {
        if let Some(e) = &self.state.get_mut().endpoint {
            e.close(0u32.into(), b"tunnel ended");
        }
    }
}

impl QuicClient {
    /// `connector` as the tunnel's TLS mode says (tls=0 uses an unchecked one, as
    /// NodePass does); ALPN and TLS 1.3 are QUIC's.
    pub fn new(
        connector: &tokio_rustls::TlsConnector,
        addr: String,
        name: String,
    ) -> io::Result<Self> {
        let mut tls = (**connector.config()).clone();
        tls.alpn_protocols = vec![ALPN.to_vec()];
        let quic = QuicClientConfig::try_from(tls)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut config = quinn::ClientConfig::new(Arc::new(quic));
        config.transport_config(transport());
        Ok(Self {
            config,
            addr,
            name,
            state: tokio::sync::Mutex::new(ClientState::default()),
        })
    }

    /// A connection with room for another stream, made if none has.
    async fn place(&self) -> io::Result<(quinn::Connection, Place)> {
        let mut state = self.state.lock().await;
        state.conns.retain(|(c, _)| c.close_reason().is_none());
        for (c, n) in state.conns.iter() {
            if n.load(Ordering::Acquire) < STREAMS_PER_CONN {
                n.fetch_add(1, Ordering::AcqRel);
                return Ok((c.clone(), Place(n.clone())));
            }
        }
        let addr = tokio::net::lookup_host(&self.addr)
            .await?
            .next()
            .ok_or_else(|| io::Error::other(format!("{} has no address", self.addr)))?;
        let endpoint = match &state.endpoint {
            Some(e) if e.local_addr()?.is_ipv4() == addr.is_ipv4() => e.clone(),
            _ => {
                let bind: SocketAddr = if addr.is_ipv4() {
                    ([0, 0, 0, 0], 0).into()
                } else {
                    ([0u16; 8], 0).into()
                };
                let e = quinn::Endpoint::client(bind)?;
                state.endpoint = Some(e.clone());
                e
            }
        };
        let connecting = endpoint
            .connect_with(self.config.clone(), addr, &self.name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "QUIC handshake timed out"))?
            .map_err(io::Error::other)?;
        debug!("QUIC pool connection {} up", state.conns.len() + 1);
        let n = Arc::new(AtomicUsize::new(1));
        state.conns.push((conn.clone(), n.clone()));
        Ok((conn, Place(n)))
    }

    /// A new pool connection: a stream, its hello, its ID.
    pub async fn open(&self) -> io::Result<PoolConn> {
        let (conn, place) = self.place().await?;
        let get = async {
            let (mut send, mut recv) = conn.open_bi().await.map_err(io::Error::other)?;
            AsyncWriteExt::write_all(&mut send, &[STREAM_HELLO]).await?;
            let mut id: PoolId = [0; 4];
            AsyncReadExt::read_exact(&mut recv, &mut id).await?;
            Ok::<_, io::Error>((send, recv, id))
        };
        let (send, recv, id) = tokio::time::timeout(ID_TIMEOUT, get)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no pool ID"))??;
        Ok(PoolConn {
            id,
            io: PoolStream::Quic(Box::new(QuicStream {
                send,
                recv,
                _place: Some(place),
            })),
            seen_fp: peer_fp(&conn),
            since: Instant::now(),
        })
    }
}

/// A server's QUIC pool endpoint on the tunnel port (UDP), for the whole server's life.
pub fn bind(addr: SocketAddr, tls: &ServerTls) -> io::Result<quinn::Endpoint> {
    let tls = tls.with_alpn(&[ALPN]);
    let quic = QuicServerConfig::try_from(tls.acceptor.config().clone())
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport());
    quinn::Endpoint::server(config, addr)
}

/// Serves one tunnel's QUIC pool until `cancel` fires: connections from `client` only,
/// each new stream answered with its pool ID and joining the pool (refused while it is
/// full). The tunnel's connections are closed when it ends.
pub async fn serve(
    endpoint: &quinn::Endpoint,
    client: IpAddr,
    to: Intake,
    cancel: CancellationToken,
) {
    // As many connections as NodePass's client opens for a pool of `max` (its shards),
    // and one to spare for a replacement while an old one closes.
    let conns = Arc::new(tokio::sync::Semaphore::new(
        to.max.div_ceil(STREAMS_PER_CONN).clamp(1, 64) + 1,
    ));
    loop {
        let incoming = tokio::select! {
            _ = cancel.cancelled() => return,
            i = endpoint.accept() => match i {
                Some(i) => i,
                None => return,
            },
        };
        if incoming.remote_address().ip() != client {
            debug!(
                "refusing a QUIC pool connection from {}: not the authenticated client",
                incoming.remote_address()
            );
            incoming.refuse();
            continue;
        }
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            debug!(
                "refusing a QUIC pool connection from {}: the tunnel has as many as its pool needs",
                incoming.remote_address()
            );
            incoming.refuse();
            continue;
        };
        let (to, cancel) = (to.clone(), cancel.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let conn = match tokio::time::timeout(CONNECT_TIMEOUT, incoming).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return debug!("QUIC pool connection: {e}"),
                Err(_) => return debug!("QUIC pool handshake timed out"),
            };
            debug!("QUIC pool connection from {}", conn.remote_address());
            loop {
                let (send, recv) = tokio::select! {
                    _ = cancel.cancelled() => {
                        conn.close(0u32.into(), b"tunnel ended");
                        return;
                    }
                    s = conn.accept_bi() => match s {
                        Ok(s) => s,
                        Err(e) => return debug!("QUIC pool connection ended: {e}"),
                    },
                };
                tokio::spawn(admit(send, recv, to.clone()));
            }
        });
    }
}

/// A new stream: its hello, then its ID.
async fn admit(mut send: quinn::SendStream, mut recv: quinn::RecvStream, to: Intake) {
    let mut hello = [0u8; 1];
    match tokio::time::timeout(
        CONNECT_TIMEOUT,
        AsyncReadExt::read_exact(&mut recv, &mut hello),
    )
    .await
    {
        Ok(Ok(_)) => {}
        _ => return debug!("a new QUIC pool stream sent no hello"),
    }
    let Some(claim) = to.claim() else {
        debug!("pool full ({}): refusing a new stream", to.max);
        let _ = send.reset(0u32.into());
        return;
    };
    if AsyncWriteExt::write_all(&mut send, &claim.id)
        .await
        .is_err()
    {
        return to.release(claim);
    }
    debug!("pool stream {}", id_hex(claim.id));
    let stream = QuicStream {
        send,
        recv,
        _place: None,
    };
    to.deliver(claim, PoolStream::Quic(Box::new(stream)));
}
