//! What a running server or client is doing, counted where it happens: the live tables
//! behind `porthole status` and the status page, and the Prometheus metrics.
//!
//! One [`Telemetry`] per process role. The data path pays a few relaxed atomic adds per
//! chunk (64 KiB): each TCP stream holds a [`StreamMeter`] whose counters were looked up
//! once, when the stream opened. Everything else (sessions, paths, RTTs) is read when
//! someone asks: [`Telemetry::server_status`] / [`Telemetry::client_status`] build a
//! snapshot, and the metrics that describe the present (sessions by path, RTT) are
//! computed at scrape time by a collector over the same tables.
//!
//! Label cardinality is bounded: forwards are labelled by their source as configured,
//! at most [`MAX_FORWARD_LABELS`] distinct values per process (the rest share `other`);
//! nothing is labelled per connection. Secrets never appear: a client is shown by its
//! token's label ([`token_label`]), a short hash.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::transport::{PathKind, PathNow};
use porthole_proto::token::AuthToken;

mod collector;
mod live;
mod status;

use collector::LiveCollector;
pub use live::{
    FlowGuard, ForwardLive, SessionForwards, SessionGuard, SessionLive, Side, StreamMeter,
};
use status::path_name;
pub use status::{
    ClientStatus, ForwardStatus, PathStatus, RefusalStatus, ServerStatus, SessionStatus,
};

/// Distinct forward labels one process exports; later ones are counted as `other`.
pub const MAX_FORWARD_LABELS: usize = 100;
/// RTT samples a client keeps for its history (one every few seconds).
pub const RTT_HISTORY: usize = 60;

/// The name a token goes by in logs, status and metrics: `token:` and 8 hex digits of
/// a SHA-256 over it. Enough to tell clients apart, useless for guessing the token.
pub fn token_label(token: &AuthToken) -> String {
    let digest = Sha256::new()
        .chain_update(b"porthole token label\0")
        .chain_update(token.expose().as_bytes())
        .finalize();
    let hex: String = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
    format!("token:{hex}")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// Why something was refused: what `porthole status` lists and
/// `porthole_refusals_total{kind,reason}` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong or malformed token.
    AuthFailed,
    /// A peer still blocked after failed auths.
    RateLimited,
    AuthTimeout,
    ProtocolError,
    UnsupportedVersion,
    /// The client's access was revoked or has expired.
    AccessRevoked,
    /// `--max-sessions` (or the client's own limit) reached.
    SessionLimit,
    /// Too many connections still handshaking.
    PendingLimit,
    /// A forward outside the allow-list (or otherwise refused by policy).
    Forward(porthole_proto::message::RejectReason),
    /// `--max-forwards` reached on one connection.
    ForwardLimit,
    /// `--max-udp-flows` reached on one connection, or the client's `max_udp_flows`.
    UdpFlowLimit,
    /// The client's `max_streams` reached.
    StreamLimit,
    /// A TCP stream whose target did not answer.
    TargetUnreachable,
    /// A visitor of a published service refused: too many waiting to be read or
    /// carried to the client.
    PublishQueue,
    /// A visitor on a shared port asked for a name nobody publishes there.
    UnknownName,
}

impl Refusal {
    /// `auth`, `forward` or `limit`.
    pub fn kind(self) -> &'static str {
        match self {
            Refusal::AuthFailed
            | Refusal::RateLimited
            | Refusal::AuthTimeout
            | Refusal::ProtocolError
            | Refusal::AccessRevoked
            | Refusal::UnsupportedVersion => "auth",
            Refusal::Forward(_) | Refusal::TargetUnreachable | Refusal::UnknownName => "forward",
            Refusal::SessionLimit
            | Refusal::PendingLimit
            | Refusal::ForwardLimit
            | Refusal::StreamLimit
            | Refusal::UdpFlowLimit
            | Refusal::PublishQueue => "limit",
        }
    }

    /// A stable snake_case name.
    pub fn reason(self) -> &'static str {
        use porthole_proto::message::RejectReason as R;
        match self {
            Refusal::AuthFailed => "auth_failed",
            Refusal::RateLimited => "rate_limited",
            Refusal::AuthTimeout => "auth_timeout",
            Refusal::ProtocolError => "protocol_error",
            Refusal::AccessRevoked => "access_revoked",
            Refusal::UnsupportedVersion => "unsupported_version",
            Refusal::SessionLimit => "max_sessions",
            Refusal::PendingLimit => "max_pending",
            Refusal::ForwardLimit => "max_forwards",
            Refusal::UdpFlowLimit => "max_udp_flows",
            Refusal::StreamLimit => "max_streams",
            Refusal::TargetUnreachable => "target_unreachable",
            Refusal::PublishQueue => "publish_queue",
            Refusal::UnknownName => "unknown_name",
            Refusal::Forward(r) => match r {
                R::NotAllowed => "not_allowed",
                R::InvalidSource => "invalid_source",
                R::ResolveFailed => "resolve_failed",
                R::TooManyForwards => "max_forwards",
                R::ProtocolDisabled => "protocol_disabled",
                R::BindNotAllowed => "bind_not_allowed",
                R::NameNotAllowed => "name_not_allowed",
                R::AddressTaken => "address_taken",
                R::BindFailed => "bind_failed",
            },
        }
    }
}

/// Why a datagram was discarded, for `porthole_datagrams_dropped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Discard {
    /// For a forward this connection never opened.
    UnknownForward,
    /// The flow limit was reached.
    FlowLimit,
    /// A local socket could not take it (full, or an error).
    Socket,
    /// Too big for the path even in fragments, or the tunnel refused it.
    Tunnel,
    /// Malformed, or a fragment whose siblings never came.
    Malformed,
    /// Over the client's bandwidth cap.
    RateLimit,
}

impl Discard {
    fn name(self) -> &'static str {
        match self {
            Discard::UnknownForward => "unknown_forward",
            Discard::FlowLimit => "flow_limit",
            Discard::Socket => "socket",
            Discard::Tunnel => "tunnel",
            Discard::Malformed => "malformed",
            Discard::RateLimit => "rate_limit",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    kind: &'static str,
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForwardLabels {
    forward: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BytesLabels {
    forward: String,
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PathLabels {
    path: &'static str,
}

#[derive(Debug, Default)]
struct Metrics {
    sessions: Counter,
    forwards: Counter,
    refusals: Family<RefusalLabels, Counter>,
    streams_opened: Family<ForwardLabels, Counter>,
    streams_active: Family<ForwardLabels, Gauge>,
    flows_opened: Family<ForwardLabels, Counter>,
    flows_active: Family<ForwardLabels, Gauge>,
    bytes: Family<BytesLabels, Counter>,
    dropped: Family<ReasonLabels, Counter>,
    reconnects: Counter,
    first_byte: Option<Histogram>,
}

/// What the client's tunnel is doing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TunnelState {
    Connecting,
    Up,
    Reconnecting,
    Stopped,
}

struct ClientLive {
    state: TunnelState,
    reason: Option<String>,
    next_attempt: Option<Instant>,
    server: Option<String>,
    since: Option<SystemTime>,
    session: Option<Arc<SessionLive>>,
    rtt: VecDeque<f64>,
    reconnects: u64,
}

/// (kind, reason) of a [`Refusal`].
type RefusalKey = (&'static str, &'static str);

struct Inner {
    role: Role,
    started: SystemTime,
    metrics: Metrics,
    registry: Mutex<Option<Registry>>,
    next_session: AtomicU64,
    sessions: Mutex<BTreeMap<u64, Arc<SessionLive>>>,
    refusals: Mutex<BTreeMap<RefusalKey, (u64, SystemTime)>>,
    labels: Mutex<HashSet<String>>,
    client: Mutex<ClientLive>,
    client_forwards: Mutex<Vec<Arc<ForwardLive>>>,
}

/// The process' telemetry; cheap to clone.
#[derive(Clone)]
pub struct Telemetry(Arc<Inner>);

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Telemetry({:?})", self.0.role)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Telemetry {
    pub fn new(role: Role) -> Self {
        let mut metrics = Metrics::default();
        if role == Role::Client {
            metrics.first_byte = Some(Histogram::new([
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
            ]));
        }
        let inner = Arc::new(Inner {
            role,
            started: SystemTime::now(),
            metrics,
            registry: Mutex::new(None),
            next_session: AtomicU64::new(0),
            sessions: Mutex::new(BTreeMap::new()),
            refusals: Mutex::new(BTreeMap::new()),
            labels: Mutex::new(HashSet::new()),
            client: Mutex::new(ClientLive {
                state: TunnelState::Connecting,
                reason: None,
                next_attempt: None,
                server: None,
                since: None,
                session: None,
                rtt: VecDeque::new(),
                reconnects: 0,
            }),
            client_forwards: Mutex::new(Vec::new()),
        });
        let mut registry = Registry::with_prefix("porthole");
        let m = &inner.metrics;
        if role == Role::Server {
            registry.register(
                "sessions",
                "Client connections authenticated",
                m.sessions.clone(),
            );
            registry.register(
                "forwards_opened",
                "Forwards accepted (a client's source inside the allow-list)",
                m.forwards.clone(),
            );
            registry.register(
                "refusals",
                "Requests refused, by kind (auth, forward, limit) and reason",
                m.refusals.clone(),
            );
        } else {
            registry.register(
                "reconnects",
                "Times the tunnel was lost and established again",
                m.reconnects.clone(),
            );
            if let Some(h) = &m.first_byte {
                registry.register_with_unit(
                    "first_byte",
                    "From accepting a local TCP connection to its first byte back from the target",
                    prometheus_client::registry::Unit::Seconds,
                    h.clone(),
                );
            }
        }
        registry.register(
            "streams_opened",
            "TCP connections carried, by forward",
            m.streams_opened.clone(),
        );
        registry.register(
            "streams_active",
            "TCP connections open now, by forward",
            m.streams_active.clone(),
        );
        registry.register(
            "udp_flows_opened",
            "UDP flows started, by forward",
            m.flows_opened.clone(),
        );
        registry.register(
            "udp_flows_active",
            "UDP flows open now, by forward",
            m.flows_active.clone(),
        );
        registry.register_with_unit(
            "forward",
            "Payload bytes carried, by forward and direction (up: toward the target)",
            prometheus_client::registry::Unit::Bytes,
            m.bytes.clone(),
        );
        registry.register(
            "datagrams_dropped",
            "UDP datagrams discarded, by reason",
            m.dropped.clone(),
        );
        registry.register_collector(Box::new(LiveCollector(Arc::downgrade(&inner))));
        *lock(&inner.registry) = Some(registry);
        Self(inner)
    }

    pub fn role(&self) -> Role {
        self.0.role
    }

    /// The metrics in the Prometheus/OpenMetrics text format.
    pub fn encode_metrics(&self, out: &mut String) -> std::fmt::Result {
        match &*lock(&self.0.registry) {
            Some(r) => prometheus_client::encoding::text::encode(out, r),
            None => Ok(()),
        }
    }

    fn forward_label(&self, source: &str) -> String {
        let mut labels = lock(&self.0.labels);
        if labels.contains(source) {
            return source.to_string();
        }
        if labels.len() < MAX_FORWARD_LABELS {
            labels.insert(source.to_string());
            return source.to_string();
        }
        "other".into()
    }

    fn new_forward(
        &self,
        id: u64,
        source: &str,
        listen: Option<SocketAddr>,
        session: Option<Arc<SessionLive>>,
    ) -> ForwardLive {
        let m = &self.0.metrics;
        let label = self.forward_label(source);
        let fl = ForwardLabels {
            forward: label.clone(),
        };
        let bytes = |direction| BytesLabels {
            forward: label.clone(),
            direction,
        };
        // One statement each: a family's read guard lives to the end of its statement,
        // and the next get_or_create of the same family may need its write lock.
        let metric_up = m.bytes.get_or_create_owned(&bytes("up"));
        let metric_down = m.bytes.get_or_create_owned(&bytes("down"));
        let metric_streams = m.streams_active.get_or_create_owned(&fl);
        let metric_streams_opened = m.streams_opened.get_or_create_owned(&fl);
        let metric_flows = m.flows_active.get_or_create_owned(&fl);
        let metric_flows_opened = m.flows_opened.get_or_create_owned(&fl);
        ForwardLive {
            id,
            source: source.to_string(),
            listen,
            streams_open: AtomicI64::new(0),
            streams_total: AtomicU64::new(0),
            flows_open: AtomicI64::new(0),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            metric_up,
            metric_down,
            metric_streams,
            metric_streams_opened,
            metric_flows,
            metric_flows_opened,
            session,
        }
    }

    /// Counts a refusal (and remembers when it last happened).
    pub fn refused(&self, r: Refusal) {
        self.0
            .metrics
            .refusals
            .get_or_create(&RefusalLabels {
                kind: r.kind(),
                reason: r.reason(),
            })
            .inc();
        let mut refusals = lock(&self.0.refusals);
        let e = refusals
            .entry((r.kind(), r.reason()))
            .or_insert((0, SystemTime::now()));
        e.0 += 1;
        e.1 = SystemTime::now();
    }

    /// Counts discarded datagrams.
    pub fn dropped(&self, why: Discard, n: u64) {
        if n > 0 {
            self.0
                .metrics
                .dropped
                .get_or_create(&ReasonLabels { reason: why.name() })
                .inc_by(n);
        }
    }

    /// Registers an authenticated server session; it is listed until the guard drops.
    pub fn session(
        &self,
        client: String,
        peer: String,
        path: Box<dyn Fn() -> Option<PathNow> + Send + Sync>,
    ) -> SessionGuard {
        self.0.metrics.sessions.inc();
        let id = self.0.next_session.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Arc::new(SessionLive {
            id,
            client,
            peer,
            since: SystemTime::now(),
            path,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            forwards: Mutex::new(Vec::new()),
        });
        lock(&self.0.sessions).insert(id, session.clone());
        SessionGuard {
            telemetry: self.clone(),
            session,
        }
    }

    /// A client forward, listening on `listen` for the whole run.
    pub fn client_forward(&self, source: &str, listen: SocketAddr) -> Arc<ForwardLive> {
        let mut forwards = lock(&self.0.client_forwards);
        let id = forwards.len() as u64;
        let f = Arc::new(self.new_forward(id, source, Some(listen), None));
        forwards.push(f.clone());
        f
    }

    /// The histogram of times to first byte (client).
    pub fn first_byte(&self) -> Option<Histogram> {
        self.0.metrics.first_byte.clone()
    }

    /// The client's tunnel is up on a connection whose path `path` reports.
    pub fn tunnel_up(&self, server: String, path: Box<dyn Fn() -> Option<PathNow> + Send + Sync>) {
        let mut c = lock(&self.0.client);
        if c.since.is_some() {
            c.reconnects += 1;
            self.0.metrics.reconnects.inc();
        }
        c.state = TunnelState::Up;
        c.reason = None;
        c.next_attempt = None;
        c.server = Some(server.clone());
        c.since = Some(SystemTime::now());
        c.session = Some(Arc::new(SessionLive {
            id: 0,
            client: String::new(),
            peer: server,
            since: SystemTime::now(),
            path,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            forwards: Mutex::new(Vec::new()),
        }));
    }

    /// The client's tunnel is down: `next_attempt` is when it tries again, if known.
    pub fn tunnel_down(&self, state: TunnelState, reason: String, next_attempt: Option<Duration>) {
        let mut c = lock(&self.0.client);
        c.state = state;
        c.reason = Some(reason);
        c.next_attempt = next_attempt.map(|d| Instant::now() + d);
        c.session = None;
    }

    /// The client's next attempt to connect is `delay` from now (zero: one is under
    /// way, so none is pending).
    pub fn retry_in(&self, delay: Duration) {
        lock(&self.0.client).next_attempt = (!delay.is_zero()).then(|| Instant::now() + delay);
    }

    /// Samples the client's RTT into its history (called every few seconds).
    pub fn sample_rtt(&self) {
        let mut c = lock(&self.0.client);
        let rtt = c
            .session
            .as_ref()
            .and_then(|s| (s.path)())
            .and_then(|p| p.rtt);
        if let Some(rtt) = rtt {
            if c.rtt.len() == RTT_HISTORY {
                c.rtt.pop_front();
            }
            c.rtt.push_back(rtt.as_secs_f64() * 1000.0);
        }
    }

    pub fn server_status(&self) -> ServerStatus {
        let sessions: Vec<Arc<SessionLive>> = lock(&self.0.sessions).values().cloned().collect();
        let sessions = sessions
            .iter()
            .map(|s| {
                let forwards: Vec<ForwardStatus> =
                    lock(&s.forwards).iter().map(|f| f.status()).collect();
                SessionStatus {
                    id: s.id,
                    client: s.client.clone(),
                    peer: s.peer.clone(),
                    path: (s.path)().map(PathStatus::from),
                    connected_since: unix(s.since),
                    bytes_up: s.up.load(Ordering::Relaxed),
                    bytes_down: s.down.load(Ordering::Relaxed),
                    tcp_open: forwards.iter().map(|f| f.tcp_open).sum(),
                    udp_flows: forwards.iter().map(|f| f.udp_flows).sum(),
                    forwards,
                }
            })
            .collect();
        let refusals = lock(&self.0.refusals)
            .iter()
            .map(|((kind, reason), (count, last))| RefusalStatus {
                kind: kind.to_string(),
                reason: reason.to_string(),
                count: *count,
                last: unix(*last),
            })
            .collect();
        ServerStatus { sessions, refusals }
    }

    pub fn client_status(&self) -> ClientStatus {
        let c = lock(&self.0.client);
        ClientStatus {
            state: c.state.clone(),
            reason: c.reason.clone(),
            next_attempt_in_ms: c
                .next_attempt
                .map(|t| t.saturating_duration_since(Instant::now()).as_millis() as u64),
            server: c.server.clone(),
            up_since: c.since.filter(|_| c.state == TunnelState::Up).map(unix),
            path: c
                .session
                .as_ref()
                .and_then(|s| (s.path)())
                .map(PathStatus::from),
            rtt_history_ms: c.rtt.iter().copied().collect(),
            reconnects: c.reconnects,
            forwards: lock(&self.0.client_forwards)
                .iter()
                .map(|f| f.status())
                .collect(),
        }
    }

    /// Seconds since the Unix epoch when this process started.
    pub fn started(&self) -> u64 {
        unix(self.0.started)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn direct() -> Box<dyn Fn() -> Option<PathNow> + Send + Sync> {
        Box::new(|| {
            Some(PathNow {
                kind: PathKind::Direct("192.0.2.1:4000".parse().unwrap_or_else(|_| unreachable!())),
                rtt: Some(Duration::from_millis(12)),
            })
        })
    }

    #[test]
    fn sessions_forwards_and_streams_are_counted_and_listed_until_they_end() {
        let t = Telemetry::new(Role::Server);
        let s = t.session("token:00000000".into(), "abcde".into(), direct());
        let f = s.forward(0, "tcp://127.0.0.1:22");
        let meter = f.stream(Side::Server, None);
        meter.from_tcp(100);
        meter.to_tcp(7);
        let status = t.server_status();
        let session = &status.sessions[0];
        assert_eq!((session.bytes_up, session.bytes_down), (7, 100));
        assert_eq!(session.tcp_open, 1);
        assert_eq!(
            session.path.as_ref().map(|p| p.kind.as_str()),
            Some("direct")
        );
        let mut text = String::new();
        t.encode_metrics(&mut text).unwrap_or_default();
        assert!(
            text.contains(
                r#"porthole_forward_bytes_total{forward="tcp://127.0.0.1:22",direction="down"} 100"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"porthole_sessions_active{path="direct"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"porthole_streams_active{forward="tcp://127.0.0.1:22"} 1"#),
            "{text}"
        );
        drop(meter);
        assert_eq!(t.server_status().sessions[0].tcp_open, 0);
        drop(s);
        assert!(t.server_status().sessions.is_empty());
        let mut text = String::new();
        t.encode_metrics(&mut text).unwrap_or_default();
        assert!(
            text.contains(r#"porthole_sessions_active{path="direct"} 0"#),
            "{text}"
        );
        assert!(text.contains("porthole_sessions_total 1"), "{text}");
        assert!(text.contains("porthole_forwards_opened_total 1"), "{text}");
        assert!(text.contains("porthole_forwards_active 0"), "{text}");
    }

    #[test]
    fn forward_labels_are_bounded() {
        let t = Telemetry::new(Role::Server);
        let s = t.session("c".into(), "p".into(), direct());
        for port in 0..(MAX_FORWARD_LABELS as u16 + 20) {
            s.forward(port.into(), &format!("tcp://10.0.0.1:{port}"));
        }
        assert_eq!(lock(&t.0.labels).len(), MAX_FORWARD_LABELS);
        let mut text = String::new();
        t.encode_metrics(&mut text).unwrap_or_default();
        assert!(
            text.contains(r#"porthole_streams_opened_total{forward="other"} 0"#),
            "{text}"
        );
    }

    #[test]
    fn refusals_are_counted_by_kind_and_reason() {
        let t = Telemetry::new(Role::Server);
        t.refused(Refusal::AuthFailed);
        t.refused(Refusal::AuthFailed);
        t.refused(Refusal::Forward(
            porthole_proto::message::RejectReason::NotAllowed,
        ));
        let r = t.server_status().refusals;
        assert_eq!(r.len(), 2);
        assert_eq!((r[0].reason.as_str(), r[0].count), ("auth_failed", 2));
        let mut text = String::new();
        t.encode_metrics(&mut text).unwrap_or_default();
        assert!(
            text.contains(r#"porthole_refusals_total{kind="forward",reason="not_allowed"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn the_token_label_hides_the_token() {
        let token: AuthToken = AuthToken::generate().unwrap_or_else(|_| unreachable!());
        let label = token_label(&token);
        assert!(label.starts_with("token:") && label.len() == 14, "{label}");
        assert!(!label.contains(token.expose()));
        assert_eq!(label, token_label(&token), "stable");
    }
}
