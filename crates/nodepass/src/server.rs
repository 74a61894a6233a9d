//! The server role: handshake, pool numbering, control channel, restart on failure.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::channel::{self, ChannelCtx, ChannelEnd, TunnelHandle};
use crate::pool::{Intake, Pool, PoolConn};
use crate::session::{self, Limits};
use crate::stream::{PoolStream, UdpFraming};
use crate::targets::Dialer;
use crate::tasks::Tasks;
use crate::tls::ServerTls;
use crate::wire::http::{self, Reply, Verdict};
use crate::wire::url::{NodepassUrl, PoolType, TlsMode};
use crate::wire::{CONTROL_ID, Generation, PoolId, id_hex};

/// Handshake requests must be complete within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause before redoing the handshake after the tunnel failed.
pub const RESTART_DELAY: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on the tunnel address {0}: {1}")]
    Bind(String, std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error("mode=1 (reverse) needs the target address free to listen on: {0}")]
    Target(std::io::Error),
}

/// Tunables that are not URL parameters (tests shorten them).
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub verify_after: Duration,
    pub restart_delay: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            verify_after: Duration::from_secs(5),
            restart_delay: RESTART_DELAY,
        }
    }
}

pub async fn run(
    url: NodepassUrl,
    opts: ServerOptions,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let p = &url.params;
    let tls = match p.tls {
        TlsMode::Plain => None,
        TlsMode::SelfSigned => Some(ServerTls::self_signed()?),
        TlsMode::Verified => Some(ServerTls::from_files(
            Path::new(p.crt.as_deref().unwrap_or_default()),
            Path::new(p.key.as_deref().unwrap_or_default()),
        )?),
    };
    // HTTPS handshakes (v1.15 and later) get the tls=2 certificate, else a self-signed one.
    let handshake_tls = match &tls {
        Some(t) if p.tls == TlsMode::Verified => t.clone(),
        _ => ServerTls::self_signed()?,
    };
    // HTTP/2 pools are TLS always (self-signed at tls=0, as NodePass); ALPN h2 marks a
    // pool connection, anything else on TLS is a restarted client's handshake.
    let h2_tls = (p.pool == PoolType::Http2).then(|| {
        tls.as_ref()
            .unwrap_or(&handshake_tls)
            .with_alpn(&[crate::h2pool::ALPN, b"http/1.1"])
    });
    let listener = porthole_engine::net::listen_tcp_str(&url.tunnel.listen())
        .await
        .map_err(|e| ServerError::Bind(url.tunnel.listen(), e))?;
    // QUIC pools: the tunnel port's UDP side, for the server's whole life (the TLS as
    // for HTTP/2 pools).
    let quic = match p.pool {
        PoolType::Quic => {
            let bind = async {
                let addr = listener.local_addr()?;
                // A server that just stopped on this port may still be draining it.
                let mut tries = 0;
                loop {
                    match crate::quicpool::bind(addr, tls.as_ref().unwrap_or(&handshake_tls)) {
                        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 20 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        r => break r,
                    }
                }
            };
            Some(
                bind.await
                    .map_err(|e| ServerError::Bind(format!("{} (UDP)", url.tunnel.listen()), e))?,
            )
        }
        _ => None,
    };
    info!(
        "NodePass server on {} (tls={})",
        listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default(),
        p.tls.code()
    );

    // Flow: reverse when we can listen on the target ourselves (mode 0 tries), else forward.
    let target = &url.targets[0];
    let user_side = match p.mode {
        2 => None,
        1 => Some(
            session::bind_user_side(target, p.notcp, p.noudp)
                .await
                .map_err(ServerError::Target)?,
        ),
        _ => session::bind_user_side(target, p.notcp, p.noudp).await.ok(),
    };
    let reverse = user_side.is_some();
    info!(
        "flow: {}",
        if reverse {
            "reverse (users connect here)"
        } else {
            "forward (the client accepts users; we dial the targets)"
        }
    );
    let limits = Arc::new(Limits::from_params(p));
    let (tunnels_tx, tunnels_rx) = watch::channel::<Option<Arc<TunnelHandle>>>(None);
    let user_cancel = shutdown.child_token();
    let tasks = Tasks::new(&shutdown);
    if let Some((tcp, udp)) = user_side {
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
    }
    let dialer = (!reverse).then(|| Arc::new(Dialer::new(url.targets.clone(), p)));
    if let Some(d) = &dialer {
        d.start_probes(&tasks);
    }
    let key = url.key();
    let reply = Reply {
        flow: if reverse { "-" } else { "+" }.into(),
        max: p.max as u64,
        tls: p.tls.code().into(),
        pool_type: p.pool.code().into(),
    };

    let mut pending: Option<Pending> = None;
    loop {
        let (client_ip, generation) = tokio::select! {
            _ = shutdown.cancelled() => break,
            r = handshake(&listener, pending.take(), &key, &reply, &handshake_tls) => r,
        };
        info!(
            https = (generation == Generation::V2),
            "client {client_ip} authenticated; building the pool"
        );
        let pool = Arc::new(Pool::default());
        let session = TunnelSession {
            listener: &listener,
            client_ip,
            tls: tls.clone(),
            h2_tls: h2_tls.clone(),
            quic: quic.as_ref(),
            pool_type: p.pool,
            max: p.max,
            pool: pool.clone(),
            tasks: tasks.clone(),
        };
        let ctx = ChannelCtx {
            key: key.clone(),
            tls: p.tls,
            own_fp: tls.as_ref().map(|t| t.fingerprint),
            generation,
            udp_framing: UdpFraming::new(p.udpframe, generation),
            accepting: reverse,
            pool: pool.clone(),
            dialer: dialer.clone(),
            limits: limits.clone(),
            verify_after: opts.verify_after,
            tasks: tasks.clone(),
        };
        let (end, next) = session.run(ctx, &tunnels_tx, &shutdown).await;
        pool.clear();
        match end {
            ChannelEnd::Shutdown => break,
            ChannelEnd::Eof if next.is_some() => {
                info!("the client started a new handshake: restarting the tunnel")
            }
            e => warn!(
                "tunnel ended ({e:?}); restarting in {:?}",
                opts.restart_delay
            ),
        }
        pending = next;
        if pending.is_none() {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep(opts.restart_delay) => {}
            }
        }
    }
    user_cancel.cancel();
    tasks.finish().await;
    // The QUIC pool's UDP socket is released once its connections have drained: a server
    // started again on the same port right away (a restart) can bind it.
    if let Some(e) = quic {
        e.close(0u32.into(), b"server stopped");
        let _ = tokio::time::timeout(Duration::from_secs(2), e.wait_idle()).await;
    }
    Ok(())
}

/// A tunnel-port connection that carries (or may carry) a handshake.
enum Pending {
    /// Not looked at yet: TLS or plain is decided by its first byte.
    Raw(TcpStream),
    /// Read from already (a restarted client met as a pool connection, past TLS if
    /// any), with the request bytes read so far.
    Read(PoolStream, Vec<u8>),
}

/// Handshakes served at once; more wait in the listen backlog. Each may take up to
/// [`HANDSHAKE_TIMEOUT`]: served one by one, a few silent connections (a port scanner,
/// a stalled client) kept the real client out for 10 s each.
const HANDSHAKES_AT_ONCE: usize = 64;

/// Serves handshake requests, up to [`HANDSHAKES_AT_ONCE`] at once, until one succeeds;
/// returns the client's IP and which handshake it made (a TLS ClientHello first: HTTPS,
/// v1.15 and later; else plain HTTP, v1.14). Wrong requests get 405/404/401 and the
/// server keeps listening. Only one request gets the 200: others still in flight when
/// it goes out are closed (their clients retry, and meet a running tunnel).
async fn handshake(
    listener: &TcpListener,
    first: Option<Pending>,
    key: &str,
    reply: &Reply,
    tls: &ServerTls,
) -> (IpAddr, Generation) {
    let won = std::sync::atomic::AtomicBool::new(false);
    let mut serving = futures_util::stream::FuturesUnordered::new();
    if let Some(p) = first {
        serving.push(serve_handshake(p, key, reply, tls, &won));
    }
    loop {
        tokio::select! {
            r = listener.accept(), if serving.len() < HANDSHAKES_AT_ONCE => match r {
                Ok((s, _)) => serving.push(serve_handshake(Pending::Raw(s), key, reply, tls, &won)),
                Err(e) => {
                    warn!("accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(done) = futures_util::StreamExt::next(&mut serving) => {
                if let Some(client) = done {
                    return client;
                }
            }
        }
    }
}

/// One handshake connection, within [`HANDSHAKE_TIMEOUT`]: the client's IP and
/// generation if it was accepted (and won the 200).
async fn serve_handshake(
    pending: Pending,
    key: &str,
    reply: &Reply,
    tls: &ServerTls,
    won: &std::sync::atomic::AtomicBool,
) -> Option<(IpAddr, Generation)> {
    let peer = match &pending {
        Pending::Raw(s) => s.peer_addr(),
        Pending::Read(PoolStream::Server(s), _) => s.get_ref().0.peer_addr(),
        Pending::Read(PoolStream::Plain(s), _) => s.peer_addr(),
        Pending::Read(..) => return None,
    };
    let peer = peer.ok()?;
    let serve = async {
        let (mut io, prefix, generation) = match pending {
            Pending::Read(io, prefix) => {
                let g = if matches!(io, PoolStream::Plain(_)) {
                    Generation::V1
                } else {
                    Generation::V2
                };
                (io, prefix, g)
            }
            Pending::Raw(s) => {
                let mut b = [0u8; 1];
                s.peek(&mut b).await?;
                if b[0] == TLS_HANDSHAKE {
                    let s = tls.acceptor.accept(s).await?;
                    (PoolStream::Server(Box::new(s)), Vec::new(), Generation::V2)
                } else {
                    (PoolStream::Plain(s), Vec::new(), Generation::V1)
                }
            }
        };
        read_request(&mut io, prefix, key)
            .await
            .map(|v| (io, v, generation))
    };
    let (mut io, verdict, generation) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, serve).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            debug!("handshake from {peer}: {e}");
            return None;
        }
        Err(_) => {
            debug!("handshake from {peer} timed out");
            return None;
        }
    };
    let accept = verdict == Verdict::Accept;
    // One 200 only: taken before it goes out, given back if it does not.
    if accept && won.swap(true, std::sync::atomic::Ordering::AcqRel) {
        debug!("handshake from {peer}: another client was accepted first");
        return None;
    }
    let resp = http::response(verdict, accept.then_some(reply));
    // Flush the whole reply before closing (v1.14 sometimes closes first).
    let sent = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        io.write_all(resp.as_bytes()).await?;
        io.flush().await
    })
    .await;
    if !matches!(sent, Ok(Ok(()))) {
        if accept {
            won.store(false, std::sync::atomic::Ordering::Release);
        }
        debug!("handshake from {peer}: the reply did not go out");
        return None;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), io.shutdown()).await;
    if !accept {
        let (code, text) = verdict.status();
        warn!("handshake from {peer} refused: {code} {text}");
        return None;
    }
    Some((peer.ip(), generation))
}

/// The first byte of a TLS ClientHello (a handshake record).
const TLS_HANDSHAKE: u8 = 0x16;

/// Reads one handshake request and judges it (a head too long or malformed is answered
/// here, with 431 or 400, and is an error).
async fn read_request(
    stream: &mut PoolStream,
    mut buf: Vec<u8>,
    key: &str,
) -> std::io::Result<Verdict> {
    let mut chunk = [0u8; 1024];
    let end = loop {
        if let Some(end) = http::head_end(&buf) {
            break end;
        }
        if buf.len() > http::MAX_HEAD {
            let resp = "HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
            stream.write_all(resp.as_bytes()).await?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "oversized request head",
            ));
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before the request ended",
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let verdict = match http::parse_request(&buf[..end]) {
        Ok(req) => http::judge(&req, key),
        Err(_) => {
            let resp = "HTTP/1.1 400 Bad Request\r\nConnection: close\r\nContent-Length: 0\r\n\r\n";
            stream.write_all(resp.as_bytes()).await?;
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "malformed request",
            ));
        }
    };
    Ok(verdict)
}

struct TunnelSession<'a> {
    listener: &'a TcpListener,
    client_ip: IpAddr,
    tls: Option<ServerTls>,
    /// Pool type 3: the TLS side of the HTTP/2 connection.
    h2_tls: Option<ServerTls>,
    /// Pool type 1: the QUIC endpoint pool streams come in on.
    quic: Option<&'a quinn::Endpoint>,
    pool_type: PoolType,
    max: usize,
    pool: Arc<Pool>,
    tasks: Tasks,
}

impl TunnelSession<'_> {
    /// Accepts pool connections and runs the control channel; returns why it ended and,
    /// if the client started over, its new handshake connection.
    async fn run(
        &self,
        ctx: ChannelCtx,
        tunnels: &watch::Sender<Option<Arc<TunnelHandle>>>,
        shutdown: &CancellationToken,
    ) -> (ChannelEnd, Option<Pending>) {
        let (control_tx, control_rx) = tokio::sync::oneshot::channel::<PoolConn>();
        let control_slot = Arc::new(std::sync::Mutex::new(Some(control_tx)));
        let (rehandshake_tx, mut rehandshake_rx) = tokio::sync::mpsc::channel::<Pending>(1);
        let tunnel_cancel = shutdown.child_token();
        // HTTP/2 pool connections live until the tunnel ends, however it ends.
        let _end_tunnel = tunnel_cancel.clone().drop_guard();
        // NodePass's client keeps one HTTP/2 connection; a few more cover replacements.
        let h2_conns = Arc::new(tokio::sync::Semaphore::new(H2_MAX_CONNS));
        let intake = Intake {
            pool: self.pool.clone(),
            control: control_slot.clone(),
            max: self.max,
            new_id: || random_id().ok(),
        };
        // Runs until the tunnel ends (never ends it).
        let quic_pool = async {
            if let Some(e) = self.quic {
                crate::quicpool::serve(e, self.client_ip, intake.clone(), tunnel_cancel.clone())
                    .await;
            }
            std::future::pending::<()>().await
        };
        let accept = async {
            loop {
                let (stream, peer) = match self.listener.accept().await {
                    Ok(x) => x,
                    Err(_) => continue,
                };
                if peer.ip() != self.client_ip {
                    debug!("refusing a pool connection from {peer}: not the authenticated client");
                    continue;
                }
                if self.quic.is_some() {
                    // Pool connections come over QUIC: on TCP, only a restarted client's
                    // handshake (a plain `GET` or a ClientHello, at once); anything else
                    // from that address does not end the tunnel.
                    let rehandshake = rehandshake_tx.clone();
                    self.tasks.spawn(async move {
                        let mut first = [0u8; 1];
                        let peek = tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first));
                        if let Ok(Ok(1)) = peek.await
                            && (first[0] == b'G' || first[0] == TLS_HANDSHAKE)
                        {
                            let _ = rehandshake.send(Pending::Raw(stream)).await;
                        }
                    });
                    continue;
                }
                if let Some(tls) = &self.h2_tls {
                    let Ok(permit) = h2_conns.clone().try_acquire_owned() else {
                        debug!("refusing an HTTP/2 pool connection: {H2_MAX_CONNS} already open");
                        continue;
                    };
                    let to = intake.clone();
                    let (tls, cancel) = (tls.clone(), tunnel_cancel.clone());
                    let rehandshake = rehandshake_tx.clone();
                    self.tasks.spawn(async move {
                        let _permit = permit;
                        if let Some(p) = admit_h2(stream, tls, to, cancel).await {
                            let _ = rehandshake.send(p).await;
                        }
                    });
                    continue;
                }
                // Under TLS, records go out as they come (no Nagle delay on small writes).
                // Under tls=0 Nagle stays on: UDP sessions there have no framing, and
                // whole-datagram segments are less often cut by a lagging reader.
                if self.tls.is_some() {
                    let _ = stream.set_nodelay(true);
                }
                let tls = self.tls.clone();
                let pool_type = self.pool_type;
                let to = intake.clone();
                let rehandshake = rehandshake_tx.clone();
                self.tasks.spawn(async move {
                    if let Some(s) = admit(stream, tls, pool_type, &to).await {
                        let _ = rehandshake.send(s).await;
                    }
                });
            }
        };
        let control = async {
            let conn = match tokio::time::timeout(Duration::from_secs(5), control_rx).await {
                Ok(Ok(c)) => c,
                _ => return ChannelEnd::Error("no control connection within 5 s".into()),
            };
            info!("control channel up");
            channel::run(conn, ctx, tunnels, &tunnel_cancel).await
        };
        tokio::select! {
            _ = accept => unreachable_end(),
            _ = quic_pool => unreachable_end(),
            end = control => (end, None),
            s = rehandshake_rx.recv() => {
                tunnel_cancel.cancel();
                (ChannelEnd::Eof, s)
            }
        }
    }
}

fn unreachable_end() -> (ChannelEnd, Option<Pending>) {
    (ChannelEnd::Error("accept loop ended".into()), None)
}

/// HTTP/2 pool connections one tunnel serves at once (a restarted client's handshake
/// passes through one of them too).
const H2_MAX_CONNS: usize = 4;

/// How long a new tunnel-port connection may take to show a restarted client's request.
const RESTART_PEEK: Duration = Duration::from_millis(10);
/// ...and only while at least this many pool connections are idle and none was taken
/// for this long.
const RESTART_PEEK_MIN_IDLE: usize = 8;
const RESTART_PEEK_QUIET: Duration = Duration::from_millis(250);

/// A new connection on the tunnel port during the tunnel: a pool connection (its ID
/// sent, handed to the control channel or the pool through `to`; `None`, as for one
/// refused), or the client starting over with a new handshake, returned: a plain `GET`,
/// a ClientHello where pool connections are plain (tls=0), or under tls=1/2 a request
/// right behind the TLS handshake (a pool client waits for its ID instead). The control channel's place goes to the first
/// connection that gets this far, not the first accepted: a connection from the same
/// address that is already dead (a restarted client's predecessor still dialling as it
/// stopped) must not take it and end the new tunnel.
async fn admit(
    stream: TcpStream,
    tls: Option<ServerTls>,
    pool_type: PoolType,
    to: &Intake,
) -> Option<Pending> {
    crate::stream::pool_keepalive(&stream);
    let pool = &to.pool;
    // A pool client writes nothing (tls=0) or a TLS ClientHello and then nothing; a
    // restarted client writes its request right behind the TCP (and TLS) handshake, so it
    // is there within a few ms. The wait delays the connection's ID, so it is made only
    // while the pool is well stocked and at rest: a client that vanished without closing
    // leaves its pool behind, full and untouched, while a pool in use means users may
    // wait for connections (measured: looking at every refill took the p99 of connect +
    // first byte from ~1 ms to ~6-9 ms in a burst). Bytes already there are still seen.
    let wait = if pool.len() >= RESTART_PEEK_MIN_IDLE && pool.at_rest(RESTART_PEEK_QUIET) {
        RESTART_PEEK
    } else {
        Duration::ZERO
    };
    let mut first = [0u8; 1];
    let peeked = tokio::time::timeout(wait, stream.peek(&mut first)).await;
    if let Ok(Ok(1)) = peeked
        && ((first[0] == b'G' && pool_type == PoolType::Tcp)
            || (tls.is_none() && first[0] == TLS_HANDSHAKE))
    {
        return Some(Pending::Raw(stream));
    }
    if closed_by_peer(&stream) {
        debug!("a new connection was closed by its peer before it was admitted");
        return None;
    }
    if to.full() {
        debug!(
            "pool full ({}): closing a new connection without an ID",
            to.max
        );
        return None;
    }
    let mut io: PoolStream = match tls {
        None => PoolStream::Plain(stream),
        Some(t) => {
            match tokio::time::timeout(Duration::from_secs(10), t.acceptor.accept(stream)).await {
                Ok(Ok(s)) => PoolStream::Server(Box::new(s)),
                _ => return None,
            }
        }
    };
    if pool_type == PoolType::WebSocket {
        // Every connection sends a request: an upgrade (a pool connection) or a
        // restarted client's handshake.
        let head = match tokio::time::timeout(HANDSHAKE_TIMEOUT, read_head(&mut io)).await {
            Ok(Ok(h)) => h,
            _ => return None,
        };
        let key = match http::parse_request(&head) {
            Ok(req) => req.websocket_key,
            Err(_) => return None,
        };
        let Some(key) = key else {
            return Some(Pending::Read(io, head));
        };
        io = match crate::ws::accept(io, &key).await {
            Ok(w) => PoolStream::Ws(Box::new(w)),
            Err(_) => return None,
        };
    } else if matches!(io, PoolStream::Server(_)) && !wait.is_zero() {
        let mut request = vec![0u8; 1024];
        if let Ok(Ok(n @ 1..)) = tokio::time::timeout(wait, io.read(&mut request)).await {
            request.truncate(n);
            return Some(Pending::Read(io, request));
        }
    }
    let Some(claim) = to.claim() else {
        debug!(
            "pool full ({}): closing a new connection without an ID",
            to.max
        );
        return None;
    };
    if io.write_all(&claim.id).await.is_err() || io.flush().await.is_err() {
        to.release(claim);
        return None;
    }
    if claim.is_control() && !alive_after_its_id(&io).await {
        debug!(
            "the would-be control connection was closed by its peer: its place goes to the next"
        );
        to.release(claim);
        return None;
    }
    debug!("pool connection {}", id_hex(claim.id));
    to.deliver(claim, io);
    None
}

/// How long a plain connection given the control channel's ID is watched before it gets
/// the place: a dead one (a restarted client's predecessor, closed as it connected) may
/// have been admitted before its FIN arrived, and answers the ID with a reset.
const CONTROL_CONFIRM: Duration = Duration::from_millis(100);

/// Whether a connection just sent the control channel's ID is still open after
/// [`CONTROL_CONFIRM`]: a client's control connection sends nothing (or something,
/// left unread), a dead one shows its FIN or reset. TLS connections need no look: a dead
/// one never finishes the handshake.
async fn alive_after_its_id(io: &PoolStream) -> bool {
    let PoolStream::Plain(stream) = io else {
        return true;
    };
    let mut first = [0u8; 1];
    !matches!(
        tokio::time::timeout(CONTROL_CONFIRM, stream.peek(&mut first)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Whether the peer closed the connection already (its FIN waits unread). A look
/// without waiting: the socket is non-blocking, so the peek returns at once.
fn closed_by_peer(stream: &TcpStream) -> bool {
    let mut b = [std::mem::MaybeUninit::<u8>::uninit(); 1];
    matches!(socket2::SockRef::from(stream).peek(&mut b), Ok(0))
}

/// A new connection on the tunnel port of an HTTP/2 pool: the client's pool connection
/// (TLS with ALPN h2), served until the tunnel ends, or a restarted client's handshake
/// (a plain `GET`, or TLS without h2), handed back.
async fn admit_h2(
    stream: TcpStream,
    tls: ServerTls,
    to: Intake,
    cancel: CancellationToken,
) -> Option<Pending> {
    let _ = stream.set_nodelay(true);
    crate::stream::pool_keepalive(&stream);
    let mut first = [0u8; 1];
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, stream.peek(&mut first)).await {
        Ok(Ok(1)) if first[0] == TLS_HANDSHAKE => {}
        Ok(Ok(1)) => return Some(Pending::Raw(stream)),
        _ => return None,
    }
    let s = match tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.acceptor.accept(stream)).await {
        Ok(Ok(s)) => s,
        _ => return None,
    };
    if s.get_ref().1.alpn_protocol() != Some(crate::h2pool::ALPN) {
        return Some(Pending::Read(PoolStream::Server(Box::new(s)), Vec::new()));
    }
    debug!("HTTP/2 pool connection");
    crate::h2pool::serve(s, to, cancel).await;
    None
}

/// An HTTP request head, up to its blank line (bounded). A WebSocket client waits for
/// the answer before it sends anything else: bytes past the head are an error.
async fn read_head(io: &mut PoolStream) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut chunk = [0u8; 512];
    loop {
        if let Some(end) = http::head_end(&head) {
            if end != head.len() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "data behind the upgrade request",
                ));
            }
            return Ok(head);
        }
        let n = io.read(&mut chunk).await?;
        if n == 0 || head.len() + n > http::MAX_HEAD {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no complete request head",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// A fresh pool id (never the control connection's). Fails only if the OS has no
/// randomness to give, instead of spinning on the same bytes forever.
fn random_id() -> Result<PoolId, getrandom::Error> {
    loop {
        let mut id = [0u8; 4];
        getrandom::fill(&mut id)?;
        if id != CONTROL_ID {
            return Ok(id);
        }
    }
}
