//! User sessions over pool connections: the accepting side's listeners, the dialing
//! side's targets, the byte and datagram pumps, and the session limits.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use porthole_proto::proxy_header;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::pool::PoolConn;
use crate::stream::{DatagramStream, UdpFraming};
use crate::targets::Dialer;
use crate::tasks::Tasks;
use crate::tunnel::TunnelHandle;
use crate::wire::block::{self, BlockSet};
use crate::wire::url::{HostPort, Params};

/// UDP sessions end after this much silence.
pub const UDP_IDLE: Duration = Duration::from_secs(30);
const BUF: usize = 32 * 1024;

/// `slot`, `rate` and `read` of the URL.
#[derive(Debug)]
pub struct Limits {
    pub slots: Option<Arc<Semaphore>>,
    pub rate: Option<RateLimiter>,
    pub read: Option<Duration>,
}

impl Limits {
    pub fn from_params(p: &Params) -> Self {
        Self {
            slots: (p.slot > 0).then(|| Arc::new(Semaphore::new(p.slot))),
            rate: (p.rate > 0).then(|| RateLimiter::new(p.rate * 125_000)),
            read: p.read,
        }
    }
}

/// A token bucket shared by every session of a tunnel (bytes per second).
#[derive(Debug)]
pub struct RateLimiter {
    per_sec: u64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(per_sec: u64) -> Self {
        Self {
            per_sec,
            state: Mutex::new((per_sec as f64, Instant::now())),
        }
    }

    /// Waits until `n` bytes may pass.
    pub async fn take(&self, n: usize) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = Instant::now();
                let cap = self.per_sec as f64;
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * cap).min(cap);
                s.1 = now;
                if s.0 >= n as f64 || s.0 >= cap {
                    s.0 -= n as f64;
                    return;
                }
                Duration::from_secs_f64((n as f64 - s.0) / cap)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// Copies both ways; EOF on one side finishes only that direction (half-close), an
/// error or `read` idle time ends both. Returns bytes (a -> b, b -> a).
pub async fn splice<A, B>(a: A, b: B, limits: &Limits) -> (u64, u64)
where
    A: AsyncRead + AsyncWrite + Unpin + Send,
    B: AsyncRead + AsyncWrite + Unpin + Send,
{
    let (mut ar, mut aw) = tokio::io::split(a);
    let (mut br, mut bw) = tokio::io::split(b);
    let last = AtomicU64::new(0);
    let start = Instant::now();
    let up = copy(&mut ar, &mut bw, limits, &last, start);
    let down = copy(&mut br, &mut aw, limits, &last, start);
    let idle = async {
        match limits.read {
            None => std::future::pending::<()>().await,
            Some(limit) => loop {
                tokio::time::sleep(limit / 4 + Duration::from_millis(10)).await;
                let idle_ms = (start.elapsed().as_millis() as u64)
                    .saturating_sub(last.load(Ordering::Relaxed));
                if Duration::from_millis(idle_ms) >= limit {
                    debug!("session idle for {limit:?}: closing");
                    return;
                }
            },
        }
    };
    tokio::pin!(up, down, idle);
    let (mut u, mut d) = (None, None);
    loop {
        tokio::select! {
            r = &mut up, if u.is_none() => match r { Ok(n) => u = Some(n), Err(_) => break },
            r = &mut down, if d.is_none() => match r { Ok(n) => d = Some(n), Err(_) => break },
            _ = &mut idle => break,
        }
        if u.is_some() && d.is_some() {
            break;
        }
    }
    (u.unwrap_or_default(), d.unwrap_or_default())
}

async fn copy<R, W>(
    r: &mut R,
    w: &mut W,
    limits: &Limits,
    last: &AtomicU64,
    start: Instant,
) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    let mut total = 0;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            let _ = w.shutdown().await;
            return Ok(total);
        }
        if let Some(rate) = &limits.rate {
            rate.take(n).await;
        }
        w.write_all(&buf[..n]).await?;
        total += n as u64;
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Dialing side: a `tcp` launch. Dials a target and pumps bytes.
pub async fn dial_tcp(
    conn: PoolConn,
    remote: Option<SocketAddr>,
    dialer: &Dialer,
    limits: &Limits,
) {
    let _slot = match &limits.slots {
        Some(s) => match s.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                warn!("slot limit reached: refusing a session");
                return;
            }
        },
        None => None,
    };
    let (mut target, addr) = match dialer.tcp().await {
        Ok(t) => t,
        Err(e) => {
            warn!("target unreachable: {e}");
            return;
        }
    };
    if dialer.proxy
        && let Some(src) = remote
        && target
            .write_all(&proxy_header::encode(proxy_header::Version::V1, src, addr))
            .await
            .is_err()
    {
        return;
    }
    let (a, b) = splice(conn.io, target, limits).await;
    debug!(to_target = a, from_target = b, "tcp session done");
}

/// Dialing side: a `udp` launch: datagrams between the pool connection (framed as the
/// tunnel says) and a target socket.
pub async fn dial_udp(conn: PoolConn, dialer: &Dialer, framing: Arc<UdpFraming>) {
    let socket = match dialer.udp().await {
        Ok(s) => s,
        Err(e) => {
            warn!("UDP target: {e}");
            return;
        }
    };
    let mut pool = DatagramStream::new(conn.io, framing);
    let mut from_pool = vec![0u8; 65536];
    let mut from_target = vec![0u8; 65536];
    loop {
        tokio::select! {
            n = pool.recv(&mut from_pool) => match n {
                Ok(0) => break,
                Err(e) => { debug!("UDP session: {e}"); break }
                Ok(n) => { let _ = socket.send(&from_pool[..n]).await; }
            },
            n = socket.recv(&mut from_target) => match n {
                Ok(n) => if pool.send(&from_target[..n]).await.is_err() { break },
                Err(e) => debug!("UDP target: {e}"),
            },
            _ = tokio::time::sleep(UDP_IDLE) => break,
        }
    }
}

pub type Tunnels = watch::Receiver<Option<Arc<TunnelHandle>>>;

/// How long `block=` waits for a user's first bytes. NodePass waits for 8 bytes without
/// a limit, which stalls protocols where the server speaks first (SMTP, MySQL); here
/// what arrived by then decides.
pub const BLOCK_PEEK_WAIT: Duration = Duration::from_millis(500);

/// Whether `block` refuses the protocol the user connection from `from` starts (said in
/// the log). Reads nothing: the bytes stay for the session.
pub async fn blocked(user: &TcpStream, from: SocketAddr, block: BlockSet) -> bool {
    if block.is_empty() {
        return false;
    }
    let deadline = tokio::time::Instant::now() + BLOCK_PEEK_WAIT;
    let mut first = [0u8; block::PEEK];
    let mut n = 0;
    while let Ok(Ok(k)) = tokio::time::timeout_at(deadline, user.peek(&mut first)).await {
        n = k;
        if k == 0 || k >= block::PEEK || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let Some(protocol) = block.check(&first[..n]) else {
        return false;
    };
    warn!("{from}: {protocol} is blocked (block=): closing");
    true
}

/// Accepting side, TCP: each user connection rides a pool connection.
pub async fn accept_tcp(
    listener: TcpListener,
    tunnels: Tunnels,
    limits: Arc<Limits>,
    block: BlockSet,
    cancel: CancellationToken,
    tasks: Tasks,
) {
    loop {
        let (user, from) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(e) => { warn!("accept: {e}"); tokio::time::sleep(Duration::from_millis(100)).await; continue; }
            },
        };
        let _ = user.set_nodelay(true);
        let tunnel = tunnels.borrow().clone();
        let limits = limits.clone();
        tasks.spawn(async move {
            let Some(tunnel) = tunnel else {
                debug!("no tunnel: closing user connection from {from}");
                return;
            };
            if blocked(&user, from, block).await {
                return;
            }
            let _slot = match &limits.slots {
                Some(s) => match s.clone().try_acquire_owned() {
                    Ok(p) => Some(p),
                    Err(_) => {
                        warn!("slot limit reached: refusing {from}");
                        return;
                    }
                },
                None => None,
            };
            let Some(conn) = tunnel.launch("tcp", from).await else {
                return;
            };
            let (a, b) = splice(user, conn.io, &limits).await;
            debug!(%from, up = a, down = b, "tcp session done");
        });
    }
}

/// Accepting side, UDP: one pool connection per user address.
pub async fn accept_udp(
    socket: Arc<UdpSocket>,
    tunnels: Tunnels,
    cancel: CancellationToken,
    tasks: Tasks,
) {
    let sessions: Arc<Mutex<HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>>> = Arc::default();
    let mut buf = vec![0u8; 65536];
    loop {
        let (n, from) = tokio::select! {
            _ = cancel.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r { Ok(x) => x, Err(_) => continue },
        };
        let datagram = buf[..n].to_vec();
        let existing = sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&from)
            .cloned();
        let datagram = match existing {
            None => datagram,
            Some(tx) => match tx.try_send(datagram) {
                Ok(()) => continue,
                // A full queue drops the datagram, as a congested link would.
                Err(mpsc::error::TrySendError::Full(_)) => continue,
                // The session ended: start a new one with this datagram.
                Err(mpsc::error::TrySendError::Closed(d)) => d,
            },
        };
        let Some(tunnel) = tunnels.borrow().clone() else {
            continue;
        };
        let (tx, rx) = mpsc::channel::<Vec<u8>>(256);
        let _ = tx.try_send(datagram);
        sessions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(from, tx);
        let socket = socket.clone();
        let sessions = sessions.clone();
        tasks.spawn(async move {
            if let Some(conn) = tunnel.launch("udp", from).await {
                udp_session(conn, socket, from, rx, tunnel.udp_framing.clone()).await;
            }
            sessions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&from);
        });
    }
}

async fn udp_session(
    conn: PoolConn,
    socket: Arc<UdpSocket>,
    user: SocketAddr,
    mut rx: mpsc::Receiver<Vec<u8>>,
    framing: Arc<UdpFraming>,
) {
    let mut pool = DatagramStream::new(conn.io, framing);
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            d = rx.recv() => match d {
                Some(d) => if pool.send(&d).await.is_err() { break },
                None => break,
            },
            n = pool.recv(&mut buf) => match n {
                Ok(0) => break,
                Err(e) => { debug!(%user, "UDP session: {e}"); break }
                Ok(n) => { let _ = socket.send_to(&buf[..n], user).await; }
            },
            _ = tokio::time::sleep(UDP_IDLE) => break,
        }
    }
    debug!(%user, "udp session done");
}

/// Binds the accepting side's listeners on `addr` (TCP and/or UDP).
pub async fn bind_user_side(
    addr: &HostPort,
    notcp: bool,
    noudp: bool,
) -> io::Result<(Option<TcpListener>, Option<Arc<UdpSocket>>)> {
    let tcp = if notcp {
        None
    } else {
        Some(porthole_engine::net::listen_tcp_str(&addr.listen()).await?)
    };
    let udp = if noudp {
        None
    } else {
        let u = UdpSocket::bind(addr.listen()).await?;
        porthole_engine::udp::size_socket(&u);
        Some(Arc::new(u))
    };
    if let Some(t) = &tcp {
        info!("accepting user TCP on {}", t.local_addr()?);
    }
    if let Some(u) = &udp {
        info!("accepting user UDP on {}", u.local_addr()?);
    }
    Ok((tcp, udp))
}
