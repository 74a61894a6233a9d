//! The server side: accept connections, authenticate them, and forward what each
//! authenticated client asks for, within the allow-list and the limits.

mod conn;
mod forwards;
mod publish;
mod resumable;
mod tcp;
mod udp;

use std::io;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::access::{Access, AccessRules};
use crate::auth::{AuthLimiter, TokenSet};
use crate::policy::Policy;
use crate::telemetry::{Refusal, Role, Telemetry};
use crate::transport::{Acceptor, Connection};
use porthole_proto::close::CloseCode;

/// Concurrent client connections a server takes by default (`--max-sessions`).
pub const DEFAULT_MAX_SESSIONS: usize = 100;

/// Everything the server engine needs to know.
#[derive(Debug)]
pub struct ServerConfig {
    /// Who may connect and what each client may reach; replaceable while running.
    pub access: AccessRules,
    /// Concurrent authenticated client connections.
    pub max_sessions: usize,
    /// Concurrent connections still in the transport handshake or authenticating.
    pub max_pending: usize,
    /// Forwards one connection may open.
    pub max_forwards: usize,
    /// Concurrent TCP streams per connection (also set as the QUIC stream limit).
    pub max_streams: u32,
    /// Concurrent UDP flows per connection.
    pub max_udp_flows: usize,
    /// Transport handshake deadline.
    pub handshake_timeout: Duration,
    /// From connection to accepted token.
    pub auth_timeout: Duration,
    pub resolve_timeout: Duration,
    pub dial_timeout: Duration,
    /// A TCP stream's header must arrive within this.
    pub header_timeout: Duration,
    pub udp_idle_timeout: Duration,
    /// Resumable sessions: how long a lost one's connections are kept, and the replay
    /// bounds (`--resume-grace`, `[resume]`).
    pub resume: crate::resume::ResumeSettings,
    /// Answers clients' offers to punch a direct path beside a relayed session
    /// (`--no-upgrade` leaves it out: offers are declined).
    pub upgrade: Option<Arc<dyn crate::upgrade::UpgradeAnswerer>>,
    /// Where the server counts what it does (status, metrics); clone it before `run`.
    pub telemetry: Telemetry,
}

impl ServerConfig {
    /// One client (`default`) with these tokens and allow-lists; defaults for the rest.
    pub fn new(tokens: TokenSet, policy: Policy) -> Self {
        Self::with_access(AccessRules::new(Access::single(&tokens, policy)))
    }

    /// Named clients, each with its own tokens, allow-lists and limits.
    pub fn with_access(access: AccessRules) -> Self {
        Self {
            access,
            max_sessions: DEFAULT_MAX_SESSIONS,
            max_pending: 64,
            max_forwards: 64,
            max_streams: crate::quic_params::MAX_STREAMS,
            max_udp_flows: 1024,
            handshake_timeout: Duration::from_secs(15),
            auth_timeout: Duration::from_secs(10),
            resolve_timeout: Duration::from_secs(5),
            dial_timeout: Duration::from_secs(10),
            header_timeout: Duration::from_secs(10),
            udp_idle_timeout: crate::udp::DEFAULT_IDLE_TIMEOUT,
            resume: Default::default(),
            upgrade: None,
            telemetry: Telemetry::new(Role::Server),
        }
    }
}

/// Shared server state.
#[derive(Debug)]
pub(crate) struct Shared {
    pub config: ServerConfig,
    pub sessions: Arc<Semaphore>,
    pub pending: Arc<Semaphore>,
    pub limiter: AuthLimiter,
    /// Per client name: its open sessions (for `max_sessions`) and what its sessions
    /// share (stream and flow counts, bandwidth caps).
    pub per_client: std::sync::Mutex<std::collections::HashMap<String, (usize, Arc<ClientShared>)>>,
    /// Who publishes what, across sessions.
    pub publishers: publish::Publishers,
    /// Numbers sessions (who holds a published route).
    pub next_session: std::sync::atomic::AtomicU64,
    /// Resumable sessions, across connections.
    pub resumable: Arc<resumable::Registry>,
}

/// What all sessions of one client share.
#[derive(Debug)]
pub(crate) struct ClientShared {
    pub streams: std::sync::atomic::AtomicUsize,
    pub flows: std::sync::atomic::AtomicUsize,
    /// 0: no limit. Follow the client's rules across reloads.
    pub max_streams: std::sync::atomic::AtomicUsize,
    pub max_flows: std::sync::atomic::AtomicUsize,
    pub caps: crate::pace::Caps,
}

impl ClientShared {
    fn new(rule: &crate::access::ClientRule) -> Self {
        let s = Self {
            streams: Default::default(),
            flows: Default::default(),
            max_streams: Default::default(),
            max_flows: Default::default(),
            caps: crate::pace::Caps::new(0),
        };
        s.apply(rule);
        s
    }

    /// Puts `rule`'s limits in force.
    pub fn apply(&self, rule: &crate::access::ClientRule) {
        use std::sync::atomic::Ordering::Relaxed;
        self.max_streams
            .store(rule.max_streams.unwrap_or(0), Relaxed);
        self.max_flows
            .store(rule.max_udp_flows.unwrap_or(0), Relaxed);
        self.caps.set_rate(rule.max_rate.unwrap_or(0));
    }

    /// Counts one more stream (or flow) if the limit allows; the guard gives it back.
    pub fn claim(self: &Arc<Self>, flow: bool) -> Option<ClientClaim> {
        use std::sync::atomic::Ordering::Relaxed;
        let (count, max) = if flow {
            (&self.flows, self.max_flows.load(Relaxed))
        } else {
            (&self.streams, self.max_streams.load(Relaxed))
        };
        let before = count.fetch_add(1, Relaxed);
        if max != 0 && before >= max {
            count.fetch_sub(1, Relaxed);
            return None;
        }
        Some(ClientClaim {
            client: self.clone(),
            flow,
        })
    }
}

/// One stream or flow counted against its client's limit.
#[derive(Debug)]
pub(crate) struct ClientClaim {
    client: Arc<ClientShared>,
    flow: bool,
}

impl Drop for ClientClaim {
    fn drop(&mut self) {
        let count = if self.flow {
            &self.client.flows
        } else {
            &self.client.streams
        };
        count.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Serves connections from `acceptor` until it closes or `shutdown` fires, then closes
/// every connection with [`CloseCode::Shutdown`] and waits (briefly) for them to end.
pub async fn run<A: Acceptor>(
    acceptor: A,
    config: ServerConfig,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let shared = Arc::new(Shared {
        sessions: Arc::new(Semaphore::new(config.max_sessions)),
        pending: Arc::new(Semaphore::new(config.max_pending)),
        limiter: AuthLimiter::default(),
        per_client: Default::default(),
        publishers: Default::default(),
        next_session: Default::default(),
        resumable: Default::default(),
        config,
    });
    let access = shared.config.access.current();
    info!(
        "accepting {} client(s) with {} token(s): {}",
        access.clients().len(),
        access.token_count(),
        access
            .clients()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let tracker = TaskTracker::new();
    let mut next_id: u64 = 0;
    loop {
        let handshake = tokio::select! {
            _ = shutdown.cancelled() => break,
            h = acceptor.accept() => match h {
                Some(h) => h,
                None => break,
            },
        };
        next_id += 1;
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        let span = info_span!(
            "conn",
            id = next_id,
            peer = tracing::field::Empty,
            client = tracing::field::Empty
        );
        tracker.spawn(
            async move {
                let Ok(pending) = shared.pending.clone().try_acquire_owned() else {
                    // Too many handshakes at once: drop this one before it costs anything.
                    warn!("too many connections still authenticating; refusing one");
                    shared.config.telemetry.refused(Refusal::PendingLimit);
                    if let Ok(Ok(conn)) =
                        tokio::time::timeout(Duration::from_secs(2), handshake).await
                    {
                        conn.close(CloseCode::ServerBusy.as_u32(), b"busy");
                    }
                    return;
                };
                let conn =
                    match tokio::time::timeout(shared.config.handshake_timeout, handshake).await {
                        Ok(Ok(conn)) => conn,
                        Ok(Err(e)) => {
                            debug!("handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            debug!("handshake timed out");
                            return;
                        }
                    };
                conn::serve(conn, shared, pending, shutdown).await;
            }
            .instrument(span),
        );
    }
    tracker.close();
    info!("server stopping: closing {} connection(s)", tracker.len());
    if tokio::time::timeout(Duration::from_secs(5), tracker.wait())
        .await
        .is_err()
    {
        warn!("some connections did not close within 5 s");
    }
    Ok(())
}
