//! The client's half: offer, punch, connect; paced across the run's sessions.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use porthole_engine::control::{read_frame, write_frame};
use porthole_engine::either::Either;
use porthole_engine::transport::{Connection, Connector, PathKind};
use porthole_proto::resume::ResumableHeader;
use porthole_proto::upgrade::{Declined, IROH_FIRST_MS, UpgradeAnswer, UpgradeOffer};
use porthole_transport_iroh::{IrohConn, IrohConnector};
use porthole_transport_quic::{PreparedClient, PunchReport, QuicConn};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::Conn;
use crate::options::{self, CONNECT_WAIT, UpgradeOptions};

/// How long the server may take to gather its candidates and answer.
const ANSWER_WAIT: Duration = Duration::from_secs(15);
/// How often a direct iroh path is looked at again (it may fall back to the relay).
const LOOK_AGAIN: Duration = Duration::from_millis(500);
/// After an answer that will not change soon (no path between these NATs, upgrades
/// off on the server), the pause before asking again.
const AFTER_NO: Duration = Duration::from_secs(30 * 60);

/// The engine's connector in iroh mode: iroh connections, and direct ones punched
/// beside a relayed session when `upgrader` is set.
#[derive(Debug, Clone)]
pub struct UpgradingConnector {
    iroh: IrohConnector,
    upgrader: Option<Arc<Upgrader>>,
}

impl UpgradingConnector {
    /// `options: None` is `--no-upgrade`: iroh connections only.
    pub fn new(iroh: IrohConnector, options: Option<UpgradeOptions>) -> Self {
        Self {
            iroh,
            upgrader: options.map(|o| Arc::new(Upgrader::new(o))),
        }
    }
}

impl Connector for UpgradingConnector {
    type Conn = Conn;

    async fn connect(&self) -> io::Result<Conn> {
        self.iroh.connect().await.map(Either::Left)
    }

    fn upgrade(&self, conn: &Conn) -> impl Future<Output = Conn> + Send {
        let upgrader = self.upgrader.clone();
        let conn = conn.clone();
        async move {
            match (upgrader, conn) {
                (Some(u), Either::Left(iroh)) => Either::Right(u.upgrade(&iroh).await),
                // Off, or already on a punched path.
                _ => std::future::pending().await,
            }
        }
    }
}

/// Punches direct paths for the client's relayed sessions, one attempt at a time and
/// fewer the more of them failed.
#[derive(Debug)]
pub struct Upgrader {
    options: UpgradeOptions,
    pace: Mutex<Pace>,
}

#[derive(Debug)]
struct Pace {
    failures: u32,
    /// No attempt before this.
    next: Instant,
    /// When the last attempt succeeded: a relayed session soon after means the direct
    /// path did not last, which counts as a failure (no loop of upgrades and falls back).
    succeeded: Option<Instant>,
}

/// A direct path that carried the tunnel for less than this before it was back on the
/// relay counts as a failed attempt.
const SHORT_LIVED: Duration = Duration::from_secs(120);

impl Pace {
    fn new(now: Instant) -> Self {
        Self {
            failures: 0,
            next: now,
            succeeded: None,
        }
    }

    /// An attempt moved the tunnel onto a direct path. The failures are cleared only once
    /// that path has lasted ([`Pace::back_on_the_relay`]).
    fn succeeded(&mut self, now: Instant) {
        self.succeeded = Some(now);
        self.next = now;
    }

    /// An attempt failed; the next waits `wait`, or the backoff's pause. Returns the pause.
    fn failed(&mut self, wait: Option<Duration>, now: Instant) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let pause = wait.unwrap_or_else(|| options::retry_after(self.failures));
        self.next = now + pause;
        pause
    }

    /// The tunnel runs through the relay again (a new relayed session). After a direct
    /// path that lasted, the failures are cleared; after a short-lived one it counts as
    /// one more failure, so a path that keeps dying is punched less and less often:
    /// returns how long it lasted and the pause.
    fn back_on_the_relay(&mut self, now: Instant) -> Option<(Duration, Duration)> {
        let lasted = now.saturating_duration_since(self.succeeded.take()?);
        if lasted >= SHORT_LIVED {
            self.failures = 0;
            return None;
        }
        Some((lasted, self.failed(None, now)))
    }
}

/// Why an attempt got no direct connection.
enum Failed {
    /// The server said no.
    Declined(Declined),
    /// Our side's NAT could not be classified (STUN unanswered or not configured).
    NoStun,
    /// Anything on the way (stream, punch, handshake).
    Other(String),
}

impl Upgrader {
    pub fn new(options: UpgradeOptions) -> Self {
        Self {
            options,
            pace: Mutex::new(Pace::new(Instant::now())),
        }
    }

    /// A direct connection to `relayed`'s server; waits while `relayed` runs on a direct
    /// path of its own and between failed attempts.
    pub async fn upgrade(&self, relayed: &IrohConn) -> QuicConn {
        self.back_on_the_relay();
        let mut since = None;
        loop {
            let next = self.pace().next;
            tokio::time::sleep_until(next).await;
            let relayed_since = relayed_since(relayed, &mut since).await;
            let started = Instant::now();
            let failed = match self.attempt(relayed, relayed_since).await {
                Ok(Some((conn, punched))) => {
                    info!(
                        "path=direct remote={} upgraded from the relay in {:.0?} (punched in {:.0?} via {})",
                        conn.inner().remote_address(),
                        started.elapsed(),
                        punched.elapsed,
                        punched.method
                    );
                    self.pace().succeeded(Instant::now());
                    return conn;
                }
                // iroh found a direct path of its own meanwhile.
                Ok(None) => continue,
                Err(Failed::Declined(Declined::IrohFirst)) => {
                    let turn = relayed_since + Duration::from_millis(IROH_FIRST_MS);
                    tokio::time::sleep_until(turn.max(Instant::now() + LOOK_AGAIN)).await;
                    continue;
                }
                Err(f) => f,
            };
            let (why, wait) = match failed {
                Failed::Declined(d @ (Declined::Disabled | Declined::NoPath)) => {
                    (d.explain().to_string(), Some(AFTER_NO))
                }
                Failed::Declined(d) => (d.explain().to_string(), None),
                Failed::NoStun => (
                    "our NAT could not be classified (it takes two STUN servers that answer: --stun-server)"
                        .to_string(),
                    Some(AFTER_NO),
                ),
                Failed::Other(e) => (e, None),
            };
            let pause = self.pace().failed(wait, Instant::now());
            warn!("no direct upgrade: {why}; staying on the relay, next attempt in {pause:.0?}");
        }
    }

    fn back_on_the_relay(&self) {
        if let Some((lasted, pause)) = self.pace().back_on_the_relay(Instant::now()) {
            info!("the direct path lasted {lasted:.0?}; next upgrade attempt in {pause:.0?}");
        }
    }

    fn pace(&self) -> MutexGuard<'_, Pace> {
        self.pace.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One offer, answer, punch and handshake; `Ok(None)` if the iroh connection went
    /// direct by itself meanwhile (nothing to upgrade).
    async fn attempt(
        &self,
        relayed: &IrohConn,
        relayed_since: Instant,
    ) -> Result<Option<(QuicConn, PunchReport)>, Failed> {
        let prepared = PreparedClient::new(self.options.manual().await)
            .await
            .map_err(|e| Failed::Other(e.to_string()))?;
        if prepared.offer().nat == porthole_proto::blob::NatKind::Unknown {
            return Err(Failed::NoStun);
        }
        if !is_relayed(relayed) {
            return Ok(None);
        }
        debug!(nat = %prepared.offer().nat, "offering the server a direct upgrade");
        let (mut send, mut recv) = relayed
            .open_bi()
            .await
            .map_err(|e| Failed::Other(format!("upgrade stream: {e}")))?;
        let asked = async {
            write_frame(&mut send, &ResumableHeader::Upgrade).await?;
            let offer = UpgradeOffer {
                offer: prepared.offer().clone(),
                relayed_ms: relayed_since.elapsed().as_millis() as u64,
            };
            write_frame(&mut send, &offer).await?;
            read_frame::<UpgradeAnswer, _>(&mut recv).await
        };
        let answer = match tokio::time::timeout(ANSWER_WAIT, asked).await {
            Ok(Ok(UpgradeAnswer::Answer(blob))) => blob,
            Ok(Ok(UpgradeAnswer::Declined(d))) => return Err(Failed::Declined(d)),
            Ok(Err(e)) => return Err(Failed::Other(format!("the server's answer: {e}"))),
            Err(_) => {
                return Err(Failed::Other(format!(
                    "the server did not answer within {ANSWER_WAIT:?}"
                )));
            }
        };
        // The punch has its own deadline; this one is only a backstop.
        let punching = prepared.connect(answer);
        let connector = tokio::time::timeout(self.options.punch_timeout * 2, punching)
            .await
            .map_err(|_| Failed::Other("punching did not finish".into()))?
            .map_err(|e| Failed::Other(error_chain(&e)))?;
        if !is_relayed(relayed) {
            return Ok(None);
        }
        match tokio::time::timeout(CONNECT_WAIT, connector.connect()).await {
            Ok(Ok(conn)) => Ok(Some((conn, connector.punched().clone()))),
            Ok(Err(e)) => Err(Failed::Other(format!("QUIC on the punched path: {e}"))),
            Err(_) => Err(Failed::Other(format!(
                "QUIC on the punched path did not connect within {CONNECT_WAIT:?}"
            ))),
        }
    }
}

/// Waits until the connection runs through the relay; returns since when it has done
/// so without a break seen (`since` keeps that across calls; the path is looked at
/// every [`LOOK_AGAIN`]: a fresh connection's is not known at once, and a direct one
/// may fall back).
async fn relayed_since(conn: &IrohConn, since: &mut Option<Instant>) -> Instant {
    loop {
        if is_relayed(conn) {
            return *since.get_or_insert_with(Instant::now);
        }
        *since = None;
        tokio::time::sleep(LOOK_AGAIN).await;
    }
}

/// Whether the connection's data goes through a relay now.
fn is_relayed(conn: &IrohConn) -> bool {
    matches!(
        Connection::path(conn).map(|p| p.kind),
        Some(PathKind::Relay(_))
    )
}

/// An error with its sources, for one log line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut next = e.source();
    while let Some(cause) = next {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        next = cause.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_back_off_and_a_path_that_keeps_dying_is_punched_less_often() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        assert_eq!(p.failed(None, t0), options::FIRST_RETRY);
        assert_eq!(p.failed(None, t0), options::FIRST_RETRY * 2);
        // A success, then the path dies after 10 s: one more failure, not a fresh start.
        p.succeeded(t0);
        let (lasted, pause) = p.back_on_the_relay(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(lasted, Duration::from_secs(10));
        assert_eq!(pause, options::FIRST_RETRY * 4);
        p.succeeded(t0);
        let (_, pause) = p.back_on_the_relay(t0 + Duration::from_secs(10)).unwrap();
        assert_eq!(pause, options::FIRST_RETRY * 8);
        // A path that lasted clears the failures.
        p.succeeded(t0);
        assert!(p.back_on_the_relay(t0 + SHORT_LIVED).is_none());
        assert_eq!(p.failed(None, t0), options::FIRST_RETRY);
        // No upgrade since the last relayed session: nothing to count.
        assert!(p.back_on_the_relay(t0).is_none());
        // A "no" waits its own pause.
        assert_eq!(p.failed(Some(AFTER_NO), t0), AFTER_NO);
        assert_eq!(p.next, t0 + AFTER_NO);
    }
}
