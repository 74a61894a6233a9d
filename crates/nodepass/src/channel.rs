//! The signal channel (pool connection `00000000`; NodePass calls it the control channel),
//! shared by both roles: pings, launches, the fingerprint check (`verify`), flushes, and
//! dead-peer detection.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::pool::{Pool, PoolConn};
use crate::session::{self, Limits};
use crate::stream::UdpFraming;
use crate::targets::Dialer;
use crate::tasks::Tasks;
pub use crate::tunnel::TunnelHandle;
use crate::wire::signal::{MAX_LINE, Signal};
use crate::wire::url::TlsMode;
use crate::wire::{Fingerprint, FpStyle, Generation, PoolId, id_hex, parse_id};

/// Pings go out this often; this long without any line means the peer is dead.
pub const PING_EVERY: Duration = Duration::from_secs(5);
pub const DEAD_AFTER: Duration = Duration::from_secs(15);
/// A launched pool connection is looked up for this long on the dialing side.
pub const LOOKUP_WAIT: Duration = Duration::from_secs(5);

/// Everything the control loop needs.
pub struct ChannelCtx {
    pub key: String,
    pub tls: TlsMode,
    /// The server certificate fingerprint as this side knows it (servers: their own).
    pub own_fp: Option<Fingerprint>,
    /// What the handshake revealed about the peer.
    pub generation: Generation,
    /// How UDP sessions on this tunnel frame datagrams.
    pub udp_framing: Arc<UdpFraming>,
    pub accepting: bool,
    pub pool: Arc<Pool>,
    pub dialer: Option<Arc<Dialer>>,
    pub limits: Arc<Limits>,
    /// When to send our own `verify`: 5 s after the channel is up, as NodePass does
    /// (plus up to a fifth of that waiting for the peer's, to write ours in its style).
    pub verify_after: Duration,
    /// Where launches and verify checks run (ended and awaited at shutdown).
    pub tasks: Tasks,
}

/// Why the control channel ended.
#[derive(Debug)]
pub enum ChannelEnd {
    Eof,
    Dead,
    VerifyMismatch,
    Shutdown,
    Error(String),
}

/// Runs the control channel on `conn` until it ends; publishes the tunnel handle
/// (accepting side) while it runs.
pub async fn run(
    conn: PoolConn,
    ctx: ChannelCtx,
    tunnels: &watch::Sender<Option<Arc<TunnelHandle>>>,
    shutdown: &CancellationToken,
) -> ChannelEnd {
    let control_fp = conn.seen_fp;
    let (reader, mut writer) = tokio::io::split(conn.io);
    let mut lines = BufReader::new(reader);
    let (tx, mut rx) = mpsc::channel::<Signal>(256);
    let needs_verify = ctx.tls == TlsMode::SelfSigned;
    let (verified_tx, verified_rx) = watch::channel(!needs_verify);
    let handle = Arc::new(TunnelHandle::new(
        ctx.pool.clone(),
        ctx.udp_framing.clone(),
        tx.clone(),
        verified_rx,
    ));
    if ctx.accepting {
        let _ = tunnels.send(Some(handle.clone()));
    }
    let key = ctx.key.clone();
    let writer_task = tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING_EVERY);
        loop {
            let s = tokio::select! {
                _ = ping.tick() => Signal::action("ping"),
                s = rx.recv() => match s { Some(s) => s, None => return },
            };
            if writer.write_all(s.encode(&key).as_bytes()).await.is_err()
                || writer.flush().await.is_err()
            {
                return;
            }
        }
    });
    let (end_tx, mut end_rx) = mpsc::channel::<ChannelEnd>(4);
    // The style the peer wrote its own `verify` in, once one arrived.
    let (peer_style_tx, peer_style_rx) = watch::channel::<Option<FpStyle>>(None);
    // Whether the peer sent a `verify` at all: a peer that does also acts on ours.
    let peer_verifies = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The pool connection our own `verify` named, with the fingerprint seen on it: the
    // peer may name the same one (both sides pick their newest, the same connection on
    // a small pool), and it is not in our pool any more to be looked up.
    let own_verify: OwnVerify = Arc::new(watch::channel(None).0);

    // Our own `verify`: under tls=1 both sides send one; under tls=2 only a server
    // facing a v1.14 client (v1.14.0 waits for it, later versions ignore it).
    let sends_verify = needs_verify
        || (ctx.tls == TlsMode::Verified
            && ctx.own_fp.is_some()
            && ctx.generation == Generation::V1);
    if sends_verify {
        ctx.tasks.spawn(send_verify(
            ctx.pool.clone(),
            tx.clone(),
            ctx.own_fp,
            ctx.generation,
            ctx.verify_after,
            VerifyLinks {
                peer_style: peer_style_rx,
                may_be_ignored: (ctx.tls == TlsMode::Verified).then(|| peer_verifies.clone()),
                taken: own_verify.clone(),
            },
        ));
    }

    let mut flush_check = tokio::time::interval(Duration::from_secs(5));
    let mut line = String::new();
    let end = loop {
        line.clear();
        let read = tokio::time::timeout(DEAD_AFTER, read_line(&mut lines, &mut line));
        tokio::select! {
            _ = shutdown.cancelled() => break ChannelEnd::Shutdown,
            e = end_rx.recv() => break e.unwrap_or(ChannelEnd::Error("control ended".into())),
            _ = flush_check.tick() => {
                let idle = ctx.pool.len() as u64;
                let errors = handle.errors.load(Ordering::Relaxed);
                if errors > 0 && errors > idle / 2 {
                    info!(errors, idle, "too many pool errors: flushing idle connections");
                    let _ = tx.send(Signal::action("flush")).await;
                    ctx.pool.clear();
                    handle.errors.store(0, Ordering::Relaxed);
                }
                continue;
            }
            r = read => match r {
                Err(_) => break ChannelEnd::Dead,
                Ok(Err(e)) => break ChannelEnd::Error(e.to_string()),
                Ok(Ok(0)) => break ChannelEnd::Eof,
                Ok(Ok(_)) => {}
            }
        }
        let signal = match Signal::decode(&line, &ctx.key) {
            Ok(s) => s,
            Err(e) => {
                warn!("ignoring a malformed signal: {e}");
                continue;
            }
        };
        match signal.action.as_str() {
            "ping" => {
                let _ = tx.send(Signal::action("pong")).await;
            }
            "pong" => {}
            "flush" => {
                let n = ctx.pool.clear();
                info!("peer asked for a flush: dropped {n} idle connection(s)");
            }
            kind @ ("tcp" | "udp") => {
                let Some(dialer) = ctx.dialer.clone().filter(|_| !ctx.accepting) else {
                    warn!("ignoring a {kind} launch: this side accepts user traffic itself");
                    continue;
                };
                let Some(id) = parse_id(&signal.id) else {
                    warn!("ignoring a {kind} launch with a bad id {:?}", signal.id);
                    continue;
                };
                let remote = signal.remote.parse::<SocketAddr>().ok();
                let pool = ctx.pool.clone();
                let limits = ctx.limits.clone();
                let errors_handle = handle.clone();
                let udp = kind == "udp";
                let framing = ctx.udp_framing.clone();
                ctx.tasks.spawn(async move {
                    let Some(conn) = pool.wait_take(id, LOOKUP_WAIT).await else {
                        errors_handle.errors.fetch_add(1, Ordering::Relaxed);
                        warn!("launch for unknown pool connection {}", id_hex(id));
                        return;
                    };
                    if udp {
                        session::dial_udp(conn, &dialer, framing).await;
                    } else {
                        session::dial_tcp(conn, remote, &dialer, &limits).await;
                    }
                });
            }
            "verify" => {
                let Some(id) = parse_id(&signal.id) else {
                    continue;
                };
                peer_verifies.store(true, std::sync::atomic::Ordering::Release);
                let peer = Fingerprint::parse(&signal.fp);
                if let Some((_, style)) = peer {
                    let _ = peer_style_tx.send(Some(style));
                }
                let pool = ctx.pool.clone();
                let own = ctx.own_fp;
                let tls = ctx.tls;
                let verified_tx = verified_tx.clone();
                let end_tx = end_tx.clone();
                let mut ours = own_verify.subscribe();
                ctx.tasks.spawn(async move {
                    // Held (and closed) until the check is done, as the peer expects. If
                    // our own `verify` took that connection, it is not in the pool.
                    let (_held, seen) = tokio::select! {
                        conn = pool.wait_take(id, LOOKUP_WAIT) => {
                            let seen = conn.as_ref().and_then(|c| c.seen_fp);
                            (conn, seen)
                        }
                        Ok(o) = ours.wait_for(|o| o.is_some_and(|(i, _)| i == id)) => {
                            (None, o.and_then(|(_, seen)| seen))
                        }
                    };
                    // Under tls=2 TLS itself checked the certificate (and a v1.14
                    // server's verify is empty there): nothing to compare.
                    if tls != TlsMode::SelfSigned {
                        let _ = verified_tx.send(true);
                        return;
                    }
                    let mine = own.or(seen).or(control_fp);
                    match (mine, peer) {
                        (Some(m), Some((p, _))) if m == p => {
                            info!(
                                "peer verified the TLS fingerprint {}",
                                &m.render(FpStyle::Hex)[..23]
                            );
                            let _ = verified_tx.send(true);
                        }
                        (Some(m), _) => {
                            warn!(
                                "TLS fingerprint mismatch: peer sees {:?}, we see {:?}: tearing the tunnel down",
                                signal.fp,
                                m.render(FpStyle::Hex)
                            );
                            let _ = end_tx.send(ChannelEnd::VerifyMismatch).await;
                        }
                        (None, _) => {
                            warn!("verify for unknown pool connection {}: ignored", id_hex(id));
                            let _ = verified_tx.send(true);
                        }
                    }
                });
            }
            other => debug!("ignoring unknown action {other:?}"),
        }
    };
    writer_task.abort();
    let _ = tunnels.send(None);
    end
}

/// Sends our `verify` on the NEWEST idle connection (v1.14 picks the oldest on both
/// sides, which can collide on small pools), in the style the peer writes its own when
/// that arrives in time, else the one its generation uses. A peer that acts on `verify`
/// takes the named connection out of its pool (and may keep it open: v2 at tls=1,
/// v1.14.0 at tls=2), so it is not ours to use again: reusing it sent users into a
/// connection the peer no longer knew. Only under tls=2 (`may_be_ignored` is set), where
/// a peer from v1.14.1 on ignores `verify`, does a connection the peer left open go back
/// to the pool, and only if the peer sent no `verify` of its own (what the flag says:
/// one that sends them acts on them).
async fn send_verify(
    pool: Arc<Pool>,
    tx: mpsc::Sender<Signal>,
    own: Option<Fingerprint>,
    generation: Generation,
    after: Duration,
    links: VerifyLinks,
) {
    let VerifyLinks {
        mut peer_style,
        may_be_ignored,
        taken,
    } = links;
    tokio::time::sleep(after).await;
    let _ = tokio::time::timeout(after / 5, peer_style.wait_for(Option::is_some)).await;
    let style = (*peer_style.borrow()).unwrap_or(generation.fp_style());
    let mut conn = loop {
        if let Some(c) = pool.take_newest() {
            taken.send_replace(Some((c.id, c.seen_fp)));
            break c;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        if tx.is_closed() {
            return;
        }
    };
    let fp = own
        .or(conn.seen_fp)
        .map(|f| f.render(style))
        .unwrap_or_default();
    let id = conn.id;
    if tx
        .send(Signal {
            action: "verify".into(),
            remote: String::new(),
            id: id_hex(id),
            fp,
        })
        .await
        .is_err()
    {
        return;
    }
    debug!("sent verify for {}", id_hex(id));
    // Held open while the peer checks it (it reads the TLS state of its end).
    let mut byte = [0u8; 1];
    if tokio::time::timeout(VERIFY_CLOSE_WAIT, conn.io.read(&mut byte))
        .await
        .is_err()
        && may_be_ignored
            .is_some_and(|peer_verifies| !peer_verifies.load(std::sync::atomic::Ordering::Acquire))
    {
        debug!("the peer kept {} open: back to the pool", id_hex(id));
        pool.push(conn);
    }
}

/// What our own `verify` shares with the signal loop.
struct VerifyLinks {
    /// The style the peer wrote its own `verify` in, once one arrived.
    peer_style: watch::Receiver<Option<FpStyle>>,
    /// Under tls=2 only: whether the peer sent a `verify` (a peer that does acts on ours).
    may_be_ignored: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// Set the moment our connection is taken from the pool.
    taken: OwnVerify,
}

/// The pool connection our own `verify` named and the fingerprint seen on it, once taken.
type OwnVerify = Arc<watch::Sender<Option<(PoolId, Option<Fingerprint>)>>>;

/// How long a peer has to close the connection our `verify` named before it is reused.
const VERIFY_CLOSE_WAIT: Duration = Duration::from_secs(3);

/// Reads one line with a length cap (a peer cannot make us buffer without bound).
async fn read_line<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    out: &mut String,
) -> std::io::Result<usize> {
    let mut total = 0;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Ok(total);
        }
        let (chunk, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..=i], true),
            None => (buf, false),
        };
        let n = chunk.len();
        if total + n > MAX_LINE + 2 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "signal line too long",
            ));
        }
        out.push_str(&String::from_utf8_lossy(chunk));
        total += n;
        r.consume(n);
        if done {
            return Ok(total);
        }
    }
}
