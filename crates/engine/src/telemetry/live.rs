//! The live counters: a forward's, a stream's (while it is open), a session's.

use super::*;

/// Counters of one forward: on the client for the whole run, on the server per session.
#[derive(Debug)]
pub struct ForwardLive {
    pub(super) id: u64,
    pub(super) source: String,
    pub(super) listen: Option<SocketAddr>,
    pub(super) streams_open: AtomicI64,
    pub(super) streams_total: AtomicU64,
    pub(super) flows_open: AtomicI64,
    /// Toward the target (user -> service) and back.
    pub(super) up: AtomicU64,
    pub(super) down: AtomicU64,
    pub(super) metric_up: Counter,
    pub(super) metric_down: Counter,
    pub(super) metric_streams: Gauge,
    pub(super) metric_streams_opened: Counter,
    pub(super) metric_flows: Gauge,
    pub(super) metric_flows_opened: Counter,
    pub(super) session: Option<Arc<SessionLive>>,
}

impl ForwardLive {
    /// Counts bytes toward the target (`up`) or back from it.
    pub fn add_up(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
        self.metric_up.inc_by(n);
        if let Some(s) = &self.session {
            s.up.fetch_add(n, Ordering::Relaxed);
        }
    }

    pub fn add_down(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
        self.metric_down.inc_by(n);
        if let Some(s) = &self.session {
            s.down.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// A UDP flow of this forward opened; it counts as open until the guard drops.
    pub fn flow_opened(self: &Arc<Self>) -> FlowGuard {
        self.flows_open.fetch_add(1, Ordering::Relaxed);
        self.metric_flows.inc();
        self.metric_flows_opened.inc();
        FlowGuard(self.clone())
    }

    /// The client's flow table for this forward now holds `open` flows, `started` of
    /// them new.
    pub fn flows_now(&self, open: usize, started: u64) {
        self.flows_open.store(open as i64, Ordering::Relaxed);
        self.metric_flows.set(open as i64);
        self.metric_flows_opened.inc_by(started);
    }

    /// A TCP stream of this forward opened; `side` says which way TCP faces.
    pub fn stream(self: &Arc<Self>, side: Side, first_byte: Option<Histogram>) -> StreamMeter {
        self.streams_open.fetch_add(1, Ordering::Relaxed);
        self.streams_total.fetch_add(1, Ordering::Relaxed);
        self.metric_streams.inc();
        self.metric_streams_opened.inc();
        StreamMeter {
            forward: self.clone(),
            side,
            opened: Instant::now(),
            first_byte,
            first_seen: AtomicBool::new(false),
        }
    }

    pub(super) fn status(&self) -> ForwardStatus {
        ForwardStatus {
            id: self.id,
            source: self.source.clone(),
            listen: self.listen.map(|a| a.to_string()),
            tcp_open: self.streams_open.load(Ordering::Relaxed).max(0) as u64,
            tcp_total: self.streams_total.load(Ordering::Relaxed),
            udp_flows: self.flows_open.load(Ordering::Relaxed).max(0) as u64,
            bytes_up: self.up.load(Ordering::Relaxed),
            bytes_down: self.down.load(Ordering::Relaxed),
        }
    }
}

/// Keeps a UDP flow counted as open.
#[derive(Debug)]
pub struct FlowGuard(Arc<ForwardLive>);

impl Drop for FlowGuard {
    fn drop(&mut self) {
        self.0.flows_open.fetch_sub(1, Ordering::Relaxed);
        self.0.metric_flows.dec();
    }
}

/// Which end of the tunnel a TCP connection is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The user's end: bytes read from TCP go toward the target.
    Client,
    /// The target's end: bytes read from TCP come back from it.
    Server,
}

/// Counts one TCP stream's bytes as they move; the stream counts as open until dropped.
#[derive(Debug)]
pub struct StreamMeter {
    pub(super) forward: Arc<ForwardLive>,
    pub(super) side: Side,
    pub(super) opened: Instant,
    pub(super) first_byte: Option<Histogram>,
    pub(super) first_seen: AtomicBool,
}

impl StreamMeter {
    /// A meter that belongs to no forward (tests, tools).
    pub fn detached() -> Self {
        Arc::new(Telemetry::new(Role::Client).new_forward(0, "-", None, None))
            .stream(Side::Client, None)
    }

    /// Bytes read from the TCP connection.
    pub fn from_tcp(&self, n: u64) {
        match self.side {
            Side::Client => self.forward.add_up(n),
            Side::Server => self.forward.add_down(n),
        }
    }

    /// Bytes written to the TCP connection.
    pub fn to_tcp(&self, n: u64) {
        match self.side {
            Side::Client => {
                if let Some(h) = &self.first_byte
                    && n > 0
                    && !self.first_seen.swap(true, Ordering::Relaxed)
                {
                    h.observe(self.opened.elapsed().as_secs_f64());
                }
                self.forward.add_down(n)
            }
            Side::Server => self.forward.add_up(n),
        }
    }
}

impl Drop for StreamMeter {
    fn drop(&mut self) {
        self.forward.streams_open.fetch_sub(1, Ordering::Relaxed);
        self.forward.metric_streams.dec();
    }
}

/// One authenticated connection on the server (or the client's current one).
pub struct SessionLive {
    pub(super) id: u64,
    pub(super) client: String,
    pub(super) peer: String,
    pub(super) since: SystemTime,
    pub(super) path: Box<dyn Fn() -> Option<PathNow> + Send + Sync>,
    pub(super) up: AtomicU64,
    pub(super) down: AtomicU64,
    pub(super) forwards: Mutex<Vec<Arc<ForwardLive>>>,
}

impl std::fmt::Debug for SessionLive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionLive").field("id", &self.id).finish()
    }
}

/// Removes a server session from the table when it ends.
#[derive(Debug)]
pub struct SessionGuard {
    pub(super) telemetry: Telemetry,
    pub(super) session: Arc<SessionLive>,
}

impl SessionGuard {
    /// A forward this session opened (server side).
    pub fn forward(&self, id: u64, source: &str) -> Arc<ForwardLive> {
        self.forwards().forward(id, source)
    }

    /// What adds forwards to this session later, without holding the guard.
    pub fn forwards(&self) -> SessionForwards {
        SessionForwards {
            telemetry: self.telemetry.clone(),
            session: self.session.clone(),
        }
    }
}

/// Adds forwards to a session's table ([`SessionGuard::forwards`]).
#[derive(Debug, Clone)]
pub struct SessionForwards {
    pub(super) telemetry: Telemetry,
    pub(super) session: Arc<SessionLive>,
}

impl SessionForwards {
    pub fn forward(&self, id: u64, source: &str) -> Arc<ForwardLive> {
        self.telemetry.0.metrics.forwards.inc();
        let f = Arc::new(
            self.telemetry
                .new_forward(id, source, None, Some(self.session.clone())),
        );
        lock(&self.session.forwards).push(f.clone());
        f
    }
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        lock(&self.telemetry.0.sessions).remove(&self.session.id);
    }
}
