//! The client role: single-end (a plain local forwarder) or dual-end (handshake with a
//! server, keep the pool filled, run the control channel, restart on failure).

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use rustls_pki_types::CertificateDer;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::channel::{self, ChannelCtx, ChannelEnd, TunnelHandle};
use crate::pool::{Pool, PoolConn};
use crate::session::{self, Limits};
use crate::stream::{PoolStream, UdpFraming};
use crate::targets::Dialer;
use crate::tasks::Tasks;
use crate::wire::http::{self, Reply};
use crate::wire::url::{HandshakeChoice, NodepassUrl, PoolType, TlsMode};
use crate::wire::{CONTROL_ID, Fingerprint, Generation, PoolId, id_hex};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the server refused the handshake with {0}: {1}")]
    Refused(u16, &'static str),
    #[error("{0}")]
    WrongHandshake(&'static str),
    #[error(
        "the server runs pool type={0}, which porthole does not know (it speaks 0 TCP, 1 QUIC, 2 WebSocket and 3 HTTP/2)"
    )]
    PoolType(String),
    #[error("cannot listen on {0} for users: {1}")]
    Bind(String, std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("pool connections: {0}")]
    Streams(std::io::Error),
}

/// Tunables that are not URL parameters.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    pub verify_after: Duration,
    pub restart_delay: Duration,
    /// Roots trusted for tls=2 besides the system's (and `SSL_CERT_FILE`).
    pub extra_roots: Vec<CertificateDer<'static>>,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            verify_after: Duration::from_secs(5),
            restart_delay: crate::server::RESTART_DELAY,
            extra_roots: Vec::new(),
        }
    }
}

pub async fn run(
    url: NodepassUrl,
    opts: ClientOptions,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let p = &url.params;
    // Single-end: mode=1, or mode=0 when the tunnel address is ours to listen on.
    let local = match p.mode {
        1 => Some(
            porthole_engine::net::listen_tcp_str(&url.tunnel.listen())
                .await
                .map_err(|e| ClientError::Bind(url.tunnel.listen(), e))?,
        ),
        0 => porthole_engine::net::listen_tcp_str(&url.tunnel.listen())
            .await
            .ok(),
        _ => None,
    };
    if let Some(listener) = local {
        return single_end(url, listener, shutdown).await;
    }
    dual_end(url, opts, shutdown).await
}

/// A plain local forwarder: no server, users connect to the tunnel address and are
/// forwarded to the targets (TCP and UDP).
async fn single_end(
    url: NodepassUrl,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let p = &url.params;
    info!(
        "single-end mode: forwarding {} to {:?}",
        url.tunnel.listen(),
        url.targets
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
    );
    let dialer = Arc::new(Dialer::new(url.targets.clone(), p));
    let limits = Arc::new(Limits::from_params(p));
    let tasks = Tasks::new(&shutdown);
    dialer.start_probes(&tasks);
    if !p.noudp
        && let Ok(u) = UdpSocket::bind(url.tunnel.listen()).await
    {
        porthole_engine::udp::size_socket(&u);
        tasks.spawn(single_end_udp(Arc::new(u), dialer.clone(), tasks.clone()));
    }
    if p.notcp {
        shutdown.cancelled().await;
        tasks.finish().await;
        return Ok(());
    }
    loop {
        let (user, from) = tokio::select! {
            _ = shutdown.cancelled() => break,
            a = listener.accept() => match a { Ok(x) => x, Err(_) => continue },
        };
        let dialer = dialer.clone();
        let limits = limits.clone();
        let block = p.block;
        tasks.spawn(async move {
            if session::blocked(&user, from, block).await {
                return;
            }
            match dialer.tcp().await {
                Ok((target, _)) => {
                    session::splice(user, target, &limits).await;
                }
                Err(e) => warn!("{from}: target unreachable: {e}"),
            }
        });
    }
    tasks.finish().await;
    Ok(())
}

/// Ends with its [`Tasks`] (spawned there).
async fn single_end_udp(socket: Arc<UdpSocket>, dialer: Arc<Dialer>, tasks: Tasks) {
    use std::collections::HashMap;
    let mut sessions: HashMap<std::net::SocketAddr, Arc<UdpSocket>> = HashMap::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let target = match sessions.get(&from) {
            Some(t) => t.clone(),
            None => {
                let Ok(t) = dialer.udp().await else { continue };
                let t = Arc::new(t);
                sessions.insert(from, t.clone());
                let (back, sock) = (t.clone(), socket.clone());
                tasks.spawn(async move {
                    let mut b = vec![0u8; 65536];
                    while let Ok(Ok(n)) =
                        tokio::time::timeout(session::UDP_IDLE, back.recv(&mut b)).await
                    {
                        let _ = sock.send_to(&b[..n], from).await;
                    }
                });
                t
            }
        };
        let _ = target.send(&buf[..n]).await;
    }
}

async fn dual_end(
    url: NodepassUrl,
    opts: ClientOptions,
    shutdown: CancellationToken,
) -> Result<(), ClientError> {
    let p = url.params.clone();
    let key = url.key();
    let limits = Arc::new(Limits::from_params(&p));
    let dialer = Arc::new(Dialer::new(url.targets.clone(), &p));
    let (tunnels_tx, tunnels_rx) = watch::channel::<Option<Arc<TunnelHandle>>>(None);
    let user_cancel = shutdown.child_token();
    let tasks = Tasks::new(&shutdown);
    dialer.start_probes(&tasks);
    let mut user_side_bound = false;
    // What worked last time is tried first after a restart.
    let mut worked: Option<Generation> = None;
    let result = loop {
        let (reply, generation) = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            r = handshake(&url, &key, &mut worked) => match r {
                Ok(r) => r,
                Err(e) => break Err(e),
            },
        };
        let Some(pool_type) = PoolType::from_code(&reply.pool_type) else {
            break Err(ClientError::PoolType(reply.pool_type));
        };
        let forward = reply.flow == "+";
        let tls = TlsMode::from_code(&reply.tls).unwrap_or(TlsMode::Plain);
        info!(flow = %reply.flow, max = reply.max, tls = %reply.tls, https = (generation == Generation::V2), "handshake accepted");
        // Forward flow: we accept the users, on our first target.
        if forward && !user_side_bound {
            let (tcp, udp) = session::bind_user_side(&url.targets[0], p.notcp, p.noudp)
                .await
                .map_err(|e| ClientError::Bind(url.targets[0].listen(), e))?;
            if let Some(l) = tcp {
                tasks.spawn(session::accept_tcp(
                    l,
                    tunnels_rx.clone(),
                    limits.clone(),
                    p.block,
                    user_cancel.clone(),
                    tasks.clone(),
                ));
            }
            if let Some(u) = udp {
                tasks.spawn(session::accept_udp(
                    u,
                    tunnels_rx.clone(),
                    user_cancel.clone(),
                    tasks.clone(),
                ));
            }
            user_side_bound = true;
        }
        let connector = match tls {
            TlsMode::Plain => None,
            TlsMode::SelfSigned => Some(crate::tls::client_unverified()?),
            TlsMode::Verified => Some(crate::tls::client_verified(&opts.extra_roots)?),
        };
        let pool = Arc::new(Pool::default());
        let tunnel_cancel = shutdown.child_token();
        let streams = match pool_type {
            PoolType::Http2 => Some(Streams::Http2(h2_client(&url, connector.as_ref())?)),
            PoolType::Quic => Some(Streams::Quic(quic_client(&url, connector.as_ref())?)),
            _ => None,
        };
        let dialing = PoolDialer {
            url: url.clone(),
            connector,
            pool_type,
            streams,
            pool: pool.clone(),
            min: p.min.min(reply.max as usize).max(1),
        };
        let (control_tx, control_rx) = tokio::sync::oneshot::channel::<PoolConn>();
        // The first pool connection after the handshake is the control channel. A Go
        // server may take a moment to listen for pool connections after its reply
        // (pool types other than TCP start a server for them): refused dials are retried.
        let first = dialing.dial_first().await;
        match first {
            Ok(conn) if conn.id == CONTROL_ID => {
                let _ = control_tx.send(conn);
            }
            Ok(conn) => warn!(
                "the first pool connection got id {} instead of 00000000",
                id_hex(conn.id)
            ),
            Err(e) => warn!("first pool connection: {e}"),
        }
        let filler = tokio::spawn(dialing.fill(tunnel_cancel.clone()));
        let end = match tokio::time::timeout(Duration::from_secs(5), control_rx).await {
            Ok(Ok(conn)) => {
                info!("control channel up");
                let ctx = ChannelCtx {
                    key: key.clone(),
                    tls,
                    own_fp: None,
                    generation,
                    udp_framing: UdpFraming::new(p.udpframe, generation),
                    accepting: forward,
                    pool: pool.clone(),
                    dialer: Some(dialer.clone()),
                    limits: limits.clone(),
                    verify_after: opts.verify_after,
                    tasks: tasks.clone(),
                };
                channel::run(conn, ctx, &tunnels_tx, &shutdown).await
            }
            _ => ChannelEnd::Error("no control channel within 5 s".into()),
        };
        tunnel_cancel.cancel();
        // Gone before the next handshake: a dial still in flight would reach the server
        // after it and could be taken for the new tunnel's control connection.
        filler.abort();
        let _ = filler.await;
        pool.clear();
        if matches!(end, ChannelEnd::Shutdown) {
            break Ok(());
        }
        warn!(
            "tunnel ended ({end:?}); redoing the handshake in {:?}",
            opts.restart_delay
        );
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep(opts.restart_delay) => {}
        }
    };
    user_cancel.cancel();
    tasks.finish().await;
    result
}

/// Handshake, retried on early EOF or connection errors (servers may close before their
/// reply is flushed) and while the port answers for a running tunnel (426, 5xx); a
/// refusal (401/404/405) is final. `handshake=auto` tries
/// HTTPS (v1.15 and later) first, then plain HTTP (v1.14), starting with what worked
/// last (`worked`); the generation that answered is returned with the reply.
async fn handshake(
    url: &NodepassUrl,
    key: &str,
    worked: &mut Option<Generation>,
) -> Result<(Reply, Generation), ClientError> {
    use Generation::{V1, V2};
    let order: &[Generation] = match (url.params.handshake, *worked) {
        (HandshakeChoice::Https, _) => &[V2],
        (HandshakeChoice::Http, _) => &[V1],
        (HandshakeChoice::Auto, Some(V1)) => &[V1, V2],
        (HandshakeChoice::Auto, _) => &[V2, V1],
    };
    let auto = order.len() > 1;
    let mut delay = Duration::from_secs(1);
    loop {
        let mut failures: Vec<String> = Vec::new();
        let mut not_tls_seen = false;
        for &generation in order {
            // A server that answered HTTPS before and now fails it for another reason than
            // not speaking TLS (a reset, a timeout: it is restarting its tunnel) is asked
            // again over HTTPS; a plain request would only earn a 400.
            if generation == V1 && *worked == Some(V2) && !not_tls_seen {
                break;
            }
            match try_handshake(url, key, generation).await {
                Ok(Ok(reply)) => {
                    *worked = Some(generation);
                    return Ok((reply, generation));
                }
                // A plain request to an HTTPS server: Go answers 400.
                Ok(Err(400)) if auto => failures.push("400 to a plain-HTTP handshake".into()),
                Ok(Err(400)) if generation == V1 => {
                    return Err(ClientError::WrongHandshake(
                        "the server answered the plain-HTTP handshake with 400: it speaks \
                         HTTPS (NodePass v1.15 or later); set handshake=https or handshake=auto",
                    ));
                }
                // The port serves a WebSocket pool (426, "upgrade required") or the server
                // is in trouble (5xx): it still runs a tunnel whose reply never reached us
                // (Go may close the handshake connection before flushing it) and restarts
                // the tunnel when no control connection comes.
                Ok(Err(code)) if code == 426 || code >= 500 => failures.push(format!(
                    "{code} from the tunnel port: the server is not taking handshakes yet"
                )),
                Ok(Err(code)) => {
                    let why = match code {
                        401 => {
                            "wrong tunnel key (the URL's key@, or the port-derived key: both ends need the same)"
                        }
                        404 => "wrong path",
                        405 => "wrong method",
                        _ => "unexpected status",
                    };
                    return Err(ClientError::Refused(code, why));
                }
                Err(Attempt::NotTls(e)) if !auto => {
                    warn!("HTTPS handshake with {}: {e}", url.tunnel.dial());
                    return Err(ClientError::WrongHandshake(
                        "the server does not speak TLS on its tunnel port (NodePass v1.14 or \
                         older); set handshake=http or handshake=auto",
                    ));
                }
                Err(Attempt::NotTls(e)) => {
                    not_tls_seen = true;
                    failures.push(format!("{} handshake: {e}", name(generation)))
                }
                Err(Attempt::Io(e)) => {
                    failures.push(format!("{} handshake: {e}", name(generation)))
                }
            }
        }
        warn!(
            "handshake with {} failed ({}); retrying in {delay:?}",
            url.tunnel.dial(),
            failures.join("; ")
        );
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(3));
    }
}

fn name(g: Generation) -> &'static str {
    match g {
        Generation::V1 => "plain-HTTP",
        Generation::V2 => "HTTPS",
    }
}

/// Why one handshake attempt failed.
enum Attempt {
    /// The server answered the ClientHello with something that is not TLS: it may
    /// speak plain HTTP.
    NotTls(std::io::Error),
    /// Anything else (connect, timeouts, early EOF, a garbled reply): retried.
    Io(std::io::Error),
}

/// One handshake: plain HTTP (`V1`) or HTTPS without certificate checks (`V2`, as
/// NodePass's own client: the tunnel key authenticates, pool TLS is checked later).
async fn try_handshake(
    url: &NodepassUrl,
    key: &str,
    generation: Generation,
) -> Result<Result<Reply, u16>, Attempt> {
    let timed_out =
        |what: &str| std::io::Error::new(std::io::ErrorKind::TimedOut, what.to_string());
    let s = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect(url.tunnel.dial()),
    )
    .await
    .map_err(|_| Attempt::Io(timed_out("connect timed out")))?
    .map_err(Attempt::Io)?;
    let mut io = match generation {
        Generation::V1 => PoolStream::Plain(s),
        Generation::V2 => {
            let connector = crate::tls::client_unverified()
                .map_err(|e| Attempt::Io(std::io::Error::other(e.to_string())))?;
            let name = crate::tls::server_name(&url.sni(), &url.tunnel.host)
                .map_err(|e| Attempt::Io(std::io::Error::other(e.to_string())))?;
            let tls = tokio::time::timeout(Duration::from_secs(10), connector.connect(name, s))
                .await
                .map_err(|_| Attempt::Io(timed_out("TLS handshake timed out")))?
                // Bytes that are no TLS (a plain server's 400) say the server does not
                // speak it; a reset or EOF (a server restarting its tunnel) says nothing.
                .map_err(|e| match e.kind() {
                    std::io::ErrorKind::InvalidData => Attempt::NotTls(e),
                    _ => Attempt::Io(e),
                })?;
            PoolStream::Client(Box::new(tls))
        }
    };
    io.write_all(http::request(&url.sni(), key).as_bytes())
        .await
        .map_err(Attempt::Io)?;
    io.flush().await.map_err(Attempt::Io)?;
    let mut buf = Vec::new();
    let read = async {
        let mut chunk = [0u8; 2048];
        loop {
            let n = match io.read(&mut chunk).await {
                Ok(n) => n,
                // A server that closes without a TLS close_notify: judge what arrived.
                Err(_) if !buf.is_empty() => 0,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Ok::<_, std::io::Error>(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if buf.len() > http::MAX_HEAD + http::MAX_BODY {
                return Ok(());
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .map_err(|_| Attempt::Io(timed_out("no reply")))?
        .map_err(Attempt::Io)?;
    if buf.is_empty() {
        return Err(Attempt::Io(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "the server closed before replying",
        )));
    }
    match http::parse_response(&buf) {
        Ok((200, Some(reply))) => Ok(Ok(reply)),
        Ok((code, _)) => Ok(Err(code)),
        Err(e) => Err(Attempt::Io(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            e.to_string(),
        ))),
    }
}

/// Pool types whose pool connections are streams of shared connections.
enum Streams {
    Http2(crate::h2pool::H2Client),
    Quic(crate::quicpool::QuicClient),
}

/// The TLS side of HTTP/2 and QUIC pools: always on (NodePass checks the certificate
/// only at tls=2, so tls=0 gets an unchecked connector as tls=1 does).
fn stream_connector(
    connector: Option<&tokio_rustls::TlsConnector>,
) -> Result<tokio_rustls::TlsConnector, ClientError> {
    match connector {
        Some(c) => Ok(c.clone()),
        None => Ok(crate::tls::client_unverified()?),
    }
}

fn h2_client(
    url: &NodepassUrl,
    connector: Option<&tokio_rustls::TlsConnector>,
) -> Result<crate::h2pool::H2Client, ClientError> {
    let name = crate::tls::server_name(&url.sni(), &url.tunnel.host)?;
    let host = if url.sni() == "none" {
        url.tunnel.dial()
    } else {
        url.sni()
    };
    crate::h2pool::H2Client::new(
        &stream_connector(connector)?,
        name,
        url.tunnel.dial(),
        &host,
    )
    .map_err(ClientError::Streams)
}

fn quic_client(
    url: &NodepassUrl,
    connector: Option<&tokio_rustls::TlsConnector>,
) -> Result<crate::quicpool::QuicClient, ClientError> {
    let name = crate::tls::server_name(&url.sni(), &url.tunnel.host)?;
    crate::quicpool::QuicClient::new(
        &stream_connector(connector)?,
        url.tunnel.dial(),
        name.to_str().into_owned(),
    )
    .map_err(ClientError::Streams)
}

struct PoolDialer {
    url: NodepassUrl,
    connector: Option<tokio_rustls::TlsConnector>,
    pool_type: PoolType,
    /// Pool types 1 and 3: the connections pool streams are opened on.
    streams: Option<Streams>,
    pool: Arc<Pool>,
    min: usize,
}

impl PoolDialer {
    /// One pool connection: connect, TLS if asked, read the 4-byte ID (HTTP/2 and QUIC:
    /// a new stream on a shared connection).
    async fn dial_one(&self) -> std::io::Result<PoolConn> {
        match &self.streams {
            Some(Streams::Http2(c)) => return c.open().await,
            Some(Streams::Quic(c)) => return c.open().await,
            None => {}
        }
        let tcp = TcpStream::connect(self.url.tunnel.dial()).await?;
        let _ = tcp.set_nodelay(true);
        crate::stream::pool_keepalive(&tcp);
        let (mut io, seen_fp): (PoolStream, Option<Fingerprint>) = match &self.connector {
            None => (PoolStream::Plain(tcp), None),
            Some(c) => {
                let name = crate::tls::server_name(&self.url.sni(), &self.url.tunnel.host)
                    .map_err(|e| std::io::Error::other(e.to_string()))?;
                let tls = tokio::time::timeout(Duration::from_secs(10), c.connect(name, tcp))
                    .await
                    .map_err(|_| {
                        std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
                    })??;
                let fp = crate::tls::server_fingerprint(&tls);
                (PoolStream::Client(Box::new(tls)), fp)
            }
        };
        if self.pool_type == PoolType::WebSocket {
            let tls = self.connector.is_some();
            let ws = tokio::time::timeout(
                Duration::from_secs(10),
                crate::ws::connect(io, &self.url.tunnel.dial(), tls),
            )
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "WebSocket upgrade timed out")
            })??;
            io = PoolStream::Ws(Box::new(ws));
        }
        let mut id: PoolId = [0; 4];
        tokio::time::timeout(crate::wire::ID_TIMEOUT, io.read_exact(&mut id))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no pool ID"))??;
        Ok(PoolConn {
            id,
            io,
            seen_fp,
            since: std::time::Instant::now(),
        })
    }

    /// The control connection: [`dial_one`](Self::dial_one), retried every 50 ms for up
    /// to 5 s while it fails. The server may not listen for the pool yet (refused), or
    /// its handshake listener may still hold the port for a moment (a WebSocket upgrade
    /// or TLS answered by the wrong server): any failure is worth another try, since
    /// without this connection the whole handshake is redone.
    async fn dial_first(&self) -> std::io::Result<PoolConn> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(deadline, self.dial_one()).await {
                Ok(Err(e)) if tokio::time::Instant::now() < deadline => {
                    debug!("first pool connection: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Ok(r) => return r,
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "no pool connection within 5 s",
                    ));
                }
            }
        }
    }

    /// Keeps at least `min` idle connections: refills as soon as one is used, and checks
    /// every 100 ms anyway (connections the server dropped).
    async fn fill(self, cancel: CancellationToken) {
        let this = Arc::new(self);
        let mut failures = 0u32;
        loop {
            let missing = this.min.saturating_sub(this.pool.len());
            if missing > 0 {
                let batch = missing.min(16);
                // Dialled inside this task, not spawned: when the tunnel ends and this
                // task is dropped, no dial is left to reach the server afterwards.
                let mut set: futures_util::stream::FuturesUnordered<_> =
                    (0..batch).map(|_| this.dial_one()).collect();
                while let Some(r) = set.next().await {
                    match r {
                        Ok(conn) => {
                            failures = 0;
                            this.pool.push(conn);
                        }
                        Err(e) => {
                            failures += 1;
                            debug!("pool connection: {e}");
                        }
                    }
                }
            }
            let pause = if failures > 0 {
                Duration::from_millis(100 * u64::from(failures.min(10)))
            } else {
                Duration::from_millis(100)
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(pause) => {}
                _ = this.pool.taken(), if failures == 0 => {}
            }
        }
    }
}
