//! The client side: local listeners that live for the whole run, and one authenticated
//! connection to the server that is re-established with backoff whenever it drops.

mod liveness;
pub mod proxy;
mod publish;
mod resumable;
mod session;
mod tcp;
mod udp;
mod upgrade;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use porthole_proto::close::CloseCode;
use porthole_proto::message::RejectReason;
use porthole_proto::source::{Protocol, Source};
use porthole_proto::token::AuthToken;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, error, info, info_span, warn};

pub use publish::PublishSpec;
pub use session::Session;

use crate::telemetry::{ForwardLive, Role, Telemetry, TunnelState};
use crate::transport::{Connection, ConnectionEnd, Connector};

/// One forward: a source on the server's side, a listen address on ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardSpec {
    pub source: Source,
    pub listen: SocketAddr,
    /// PROXY protocol headers on this forward's TCP connections.
    pub proxy: ProxyProtocol,
}

impl ForwardSpec {
    pub fn new(source: Source, listen: SocketAddr) -> Self {
        Self {
            source,
            listen,
            proxy: ProxyProtocol::default(),
        }
    }
}

/// PROXY protocol on a TCP forward (`?proxy_protocol=v1|v2&accept_proxy_protocol=1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProxyProtocol {
    /// Write this header ahead of each connection's bytes, so the target sees the user's
    /// address (the one the listener saw, or the one an accepted header named).
    pub send: Option<porthole_proto::proxy_header::Version>,
    /// Each local connection starts with a PROXY header (v1 or v2) from a load balancer:
    /// it is read off and its address taken as the user's; a connection without one is
    /// refused.
    pub accept: bool,
}

#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// The token shown to the server; unused when `key` is set.
    pub token: Option<AuthToken>,
    /// A client key, proved on every connection (the server's access file lists it).
    pub key: Option<porthole_proto::key::SecretKey>,
    pub forwards: Vec<ForwardSpec>,
    /// Services published on the server's side (reverse forwards).
    pub publishes: Vec<PublishSpec>,
    /// Transport connect deadline (hole punching or relay included).
    pub connect_timeout: Duration,
    /// From connection to the last forward answered.
    pub handshake_timeout: Duration,
    /// How long a new local TCP connection waits for the tunnel to be up.
    pub session_wait: Duration,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub udp_idle_timeout: Duration,
    pub max_udp_flows: usize,
    /// After this long without hearing the server, check with a fresh connection whether
    /// it still knows the tunnel (`QuicParams::silent_after`; see `liveness`).
    pub silent_after: Duration,
    /// Where the client counts what it does (status, metrics).
    pub telemetry: Telemetry,
    /// SOCKS5 and HTTP CONNECT proxies: dynamic forwarding, checked by the server.
    pub proxies: Vec<proxy::ProxySpec>,
    /// What the proxies require from their users (always, off loopback).
    pub proxy_auth: Option<proxy::ProxyAuth>,
    /// Resumable sessions: how long TCP connections wait for a lost tunnel to come back,
    /// and the replay bounds (`--resume-grace`, `[resume]`).
    pub resume: crate::resume::ResumeSettings,
}

impl ClientConfig {
    pub fn new(token: AuthToken, forwards: Vec<ForwardSpec>) -> Self {
        Self::with_credentials(Some(token), None, forwards)
    }

    /// A token, a key, or both (the key is what the client then proves).
    pub fn with_credentials(
        token: Option<AuthToken>,
        key: Option<porthole_proto::key::SecretKey>,
        forwards: Vec<ForwardSpec>,
    ) -> Self {
        Self {
            token,
            key,
            forwards,
            publishes: Vec::new(),
            connect_timeout: Duration::from_secs(30),
            handshake_timeout: Duration::from_secs(15),
            session_wait: Duration::from_secs(20),
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
            udp_idle_timeout: crate::udp::DEFAULT_IDLE_TIMEOUT,
            max_udp_flows: 1024,
            silent_after: crate::quic_params::QuicParams::default().silent_after(),
            telemetry: Telemetry::new(Role::Client),
            proxies: Vec::new(),
            proxy_auth: None,
            resume: Default::default(),
        }
    }
}

/// Why the client stopped. Each variant maps to its own exit code in the binary.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot listen on {addr} for {forward}: {error} (is another program using that port?)")]
    Bind {
        addr: SocketAddr,
        forward: Source,
        error: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} for the {what} proxy: {error} (is another program using that port?)"
    )]
    BindProxy {
        addr: SocketAddr,
        what: &'static str,
        error: std::io::Error,
    },
    #[error("the server refused the auth token")]
    AuthRejected,
    #[error("the server refused forward {forward}: {reason}: {detail}")]
    SourceRefused {
        forward: Source,
        reason: RejectReason,
        detail: String,
    },
    #[error("the server refused to publish {publish}: {reason}: {detail}")]
    PublishRefused {
        publish: Box<PublishSpec>,
        reason: RejectReason,
        detail: String,
    },
    #[error("protocol version mismatch: {0}")]
    Version(String),
    #[error("{}", CloseCode::AccessRevoked.explain())]
    AccessRevoked,
    #[error("no forwards configured")]
    NoForwards,
}

/// Whether the server's close ends this client for good: a refused token or another
/// protocol version are configuration problems that retrying cannot fix; every other end
/// is retried with backoff. The one place that decides it, for a handshake and for a
/// running tunnel alike.
pub(crate) fn fatal_close(end: &ConnectionEnd) -> Option<ClientError> {
    let ConnectionEnd::Peer { code, reason } = end else {
        return None;
    };
    match CloseCode::from_u64(*code)? {
        CloseCode::AuthFailed => Some(ClientError::AuthRejected),
        CloseCode::AccessRevoked => Some(ClientError::AccessRevoked),
        CloseCode::UnsupportedVersion => Some(ClientError::Version(format!(
            "{} ({reason})",
            CloseCode::UnsupportedVersion.explain()
        ))),
        _ => None,
    }
}

/// Longest pause between connection attempts while connections wait for a resume.
const RESUME_RETRY: Duration = Duration::from_secs(2);

/// The liveness probe's connection took the session over (both ways of noticing it).
fn log_moved() {
    info!(
        "the tunnel moved to a fresh connection (the old one went silent); its connections resume there"
    );
}

/// What took the session to another connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moved {
    /// The liveness probe: the server no longer answered the old one.
    Probe,
    /// A direct path punched beside the relayed one.
    Direct,
}

/// Whether the server closed the connection because the session moved to a newer one.
fn is_resumed_elsewhere(end: &ConnectionEnd) -> bool {
    matches!(end, ConnectionEnd::Peer { code, .. }
        if CloseCode::from_u64(*code) == Some(CloseCode::Resumed))
}

/// What the client is doing, for logs, tests and status displays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Connecting,
    Connected { peer: String },
    Reconnecting { reason: String },
    Stopped,
}

/// The current session, as every local listener sees it (`None` while the tunnel is down).
pub(crate) type Sessions<C> = watch::Receiver<Option<Arc<Session<C>>>>;

/// The tunnel's session, waiting up to `wait` for one to be up.
pub(crate) async fn wait_for_session<C: Connection>(
    sessions: &mut Sessions<C>,
    wait: Duration,
) -> Option<Arc<Session<C>>> {
    match tokio::time::timeout(wait, sessions.wait_for(|s| s.is_some())).await {
        Ok(Ok(s)) => s.clone(),
        _ => None,
    }
}

pub(crate) enum Local {
    Tcp(TcpListener, Arc<ForwardLive>),
    Udp(Arc<UdpSocket>, Arc<ForwardLive>),
}

/// One authenticated connection to the server with no forwards, for `porthole ping`:
/// the token is checked as for a tunnel; a refused one ends the same way (AuthRejected).
/// Transient failures come back as [`CheckInError::Retry`] with the reason.
pub async fn check_in<K: Connector>(
    connector: &K,
    config: &ClientConfig,
) -> Result<Session<K::Conn>, CheckInError> {
    let mut config = config.clone();
    config.forwards.clear();
    match session::establish(connector, &config, None).await {
        Ok(s) => Ok(s),
        Err(session::EstablishError::Fatal(e)) => Err(CheckInError::Fatal(e)),
        Err(session::EstablishError::Retry(why)) => Err(CheckInError::Retry(why)),
    }
}

/// Why [`check_in`] failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckInError {
    #[error(transparent)]
    Fatal(ClientError),
    #[error("{0}")]
    Retry(String),
}

/// A client whose local listeners are bound; [`Client::run`] starts forwarding.
pub struct Client {
    config: ClientConfig,
    locals: Vec<Local>,
    /// Counters of each publish, in config order.
    published: Vec<Arc<ForwardLive>>,
    proxies: Vec<proxy::Proxy>,
    status: watch::Sender<Status>,
}

impl Client {
    /// Binds every local listener first, so a port conflict is reported at once.
    pub async fn bind(config: ClientConfig) -> Result<Self, ClientError> {
        if config.forwards.is_empty() && config.proxies.is_empty() && config.publishes.is_empty() {
            return Err(ClientError::NoForwards);
        }
        let mut proxies = Vec::with_capacity(config.proxies.len());
        for p in &config.proxies {
            let (scheme, label) = match p.kind {
                proxy::ProxyKind::Socks5 => ("socks5", "socks"),
                proxy::ProxyKind::HttpConnect => ("http", "http-proxy"),
            };
            let listener =
                crate::net::listen_tcp(p.listen).map_err(|error| ClientError::BindProxy {
                    addr: p.listen,
                    what: scheme,
                    error,
                })?;
            let addr = listener.local_addr().unwrap_or(p.listen);
            proxies.push(proxy::Proxy {
                kind: p.kind,
                listener,
                live: config.telemetry.client_forward(label, addr),
                auth: config.proxy_auth.clone(),
                session_wait: config.session_wait,
            });
        }
        let mut locals = Vec::with_capacity(config.forwards.len());
        for f in &config.forwards {
            let bind_err = |error| ClientError::Bind {
                addr: f.listen,
                forward: f.source.clone(),
                error,
            };
            let source = f.source.to_string();
            locals.push(match f.source.protocol {
                Protocol::Tcp => {
                    let l = crate::net::listen_tcp(f.listen).map_err(bind_err)?;
                    let addr = l.local_addr().unwrap_or(f.listen);
                    Local::Tcp(l, config.telemetry.client_forward(&source, addr))
                }
                Protocol::Udp => {
                    let s = UdpSocket::bind(f.listen).await.map_err(bind_err)?;
                    crate::udp::size_socket(&s);
                    let addr = s.local_addr().unwrap_or(f.listen);
                    Local::Udp(Arc::new(s), config.telemetry.client_forward(&source, addr))
                }
            });
        }
        let published = config
            .publishes
            .iter()
            .map(|p| {
                let listen = match p.bind.host {
                    porthole_proto::source::Host::Ip(ip) => SocketAddr::new(ip, p.bind.port),
                    _ => SocketAddr::from(([0, 0, 0, 0], p.bind.port)),
                };
                config
                    .telemetry
                    .client_forward(&format!("publish {}", p.bind), listen)
            })
            .collect();
        Ok(Self {
            config,
            locals,
            published,
            proxies,
            status: watch::channel(Status::Connecting).0,
        })
    }

    /// The bound local addresses, in forward order (useful with port 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.locals
            .iter()
            .filter_map(|l| match l {
                Local::Tcp(t, _) => t.local_addr().ok(),
                Local::Udp(u, _) => u.local_addr().ok(),
            })
            .collect()
    }

    /// The bound proxy addresses, in `proxies` order.
    pub fn proxy_addrs(&self) -> Vec<SocketAddr> {
        self.proxies
            .iter()
            .filter_map(|p| p.listener.local_addr().ok())
            .collect()
    }

    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Forwards until `shutdown` fires (Ok) or a fatal refusal (Err).
    pub async fn run<C: Connector>(
        self,
        connector: C,
        shutdown: CancellationToken,
    ) -> Result<(), ClientError> {
        let Client {
            config,
            locals,
            published,
            proxies,
            status,
        } = self;
        let published = Arc::new(published);
        let config = Arc::new(config);
        let (session_tx, session_rx) = watch::channel::<Option<Arc<Session<C::Conn>>>>(None);
        let tasks = TaskTracker::new();
        let local_cancel = shutdown.child_token();
        let mut udp_forwards = Vec::with_capacity(locals.len());
        for (index, local) in locals.into_iter().enumerate() {
            let spec = &config.forwards[index];
            let span = info_span!("forward", listen = %spec.listen, source = %spec.source);
            match local {
                Local::Tcp(listener, live) => {
                    udp_forwards.push(None);
                    tasks.spawn(
                        tcp::accept_loop(
                            listener,
                            tcp::TcpForward {
                                index,
                                proxy: spec.proxy,
                            },
                            session_rx.clone(),
                            config.session_wait,
                            live,
                            config.telemetry.first_byte(),
                            local_cancel.clone(),
                        )
                        .instrument(span),
                    );
                }
                Local::Udp(socket, live) => {
                    let fwd = Arc::new(udp::UdpForward::new(socket, index, &config, live));
                    udp_forwards.push(Some(fwd.clone()));
                    tasks.spawn(
                        fwd.local_loop(session_rx.clone(), local_cancel.clone())
                            .instrument(span),
                    );
                }
            }
        }
        for p in proxies {
            let span = info_span!("proxy", listen = ?p.listener.local_addr().ok(), kind = ?p.kind);
            tasks.spawn(
                p.accept_loop(session_rx.clone(), local_cancel.clone())
                    .instrument(span),
            );
        }
        let udp_forwards = Arc::new(udp_forwards);
        tasks.spawn(sample_rtt(config.telemetry.clone(), local_cancel.clone()));
        let carried = Carried {
            udp_forwards,
            published,
        };
        let result = connection_loop(
            &connector,
            &config,
            &session_tx,
            &status,
            &carried,
            &shutdown,
        )
        .await;
        let _ = session_tx.send(None);
        let _ = status.send(Status::Stopped);
        config
            .telemetry
            .tunnel_down(TunnelState::Stopped, "stopped".into(), None);
        local_cancel.cancel();
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), tasks.wait()).await;
        result
    }
}

async fn connection_loop<C: Connector>(
    connector: &C,
    config: &Arc<ClientConfig>,
    sessions: &watch::Sender<Option<Arc<Session<C::Conn>>>>,
    status: &watch::Sender<Status>,
    carried: &Carried,
    shutdown: &CancellationToken,
) -> Result<(), ClientError> {
    let backoff_builder = ExponentialBuilder::default()
        .with_min_delay(config.backoff_min)
        .with_max_delay(config.backoff_max)
        .with_jitter()
        .without_max_times();
    let mut backoff = backoff_builder.build();
    let mut announced = false;
    // A fresh session that replaced one whose server no longer answered.
    let mut replacement = None;
    let book = config
        .resume
        .enabled()
        .then(|| Arc::new(resumable::BookOf::<C::Conn>::new(config.resume)));
    loop {
        let attempt = match replacement.take() {
            Some(fresh) => Ok(fresh),
            None => {
                config.telemetry.retry_in(Duration::ZERO);
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    r = session::establish(connector, config, book.as_ref()) => r,
                }
            }
        };
        match attempt {
            Ok(session) => {
                backoff = backoff_builder.build();
                let peer = session.conn.peer();
                info!(%peer, "tunnel up ({} forward(s))", config.forwards.len());
                if !announced {
                    for f in &config.forwards {
                        info!("forwarding {} -> {} (via {peer})", f.listen, f.source);
                    }
                    for p in &config.publishes {
                        info!("publishing {p} (on {peer})");
                    }
                    announced = true;
                }
                let path_of = session.conn.clone();
                config
                    .telemetry
                    .tunnel_up(peer.clone(), Box::new(move || path_of.path()));
                let _ = status.send(Status::Connected { peer });
                let session = Arc::new(session);
                let _ = sessions.send(Some(session.clone()));
                let rx = tokio::spawn(
                    carried
                        .clone()
                        .carry(session.clone(), config.clone())
                        .in_current_span(),
                );
                // What may take the session to another connection: the liveness probe's
                // (the server stopped answering this one) or a direct path beside a
                // relayed one.
                let probe = liveness::replacement(&session.conn, connector, config, book.as_ref());
                let direct = upgrade::direct(&session, connector, config, book.as_ref());
                let moved = async {
                    tokio::select! {
                        fresh = probe => (fresh, Moved::Probe),
                        fresh = direct => (fresh, Moved::Direct),
                    }
                };
                let mut moved = std::pin::pin!(moved);
                let end = tokio::select! {
                    end = session.conn.closed() => end,
                    (fresh, why) = &mut moved => {
                        // Its streams are reset: users' connections end now, with RST
                        // (unless they moved with the session).
                        session.conn.close(CloseCode::Normal.as_u32(), b"replaced");
                        let _ = sessions.send(None);
                        rx.abort();
                        if why == Moved::Direct {
                            replacement = Some(fresh);
                            continue;
                        }
                        if fresh.resumed {
                            log_moved();
                        } else {
                            warn!("tunnel lost: the server no longer answers it (restarted?); \
                                   continuing on a fresh connection");
                        }
                        let reason = "the server stopped answering".to_string();
                        config.telemetry.tunnel_down(TunnelState::Reconnecting, reason.clone(), None);
                        let _ = status.send(Status::Reconnecting { reason });
                        replacement = Some(fresh);
                        continue;
                    }
                    _ = shutdown.cancelled() => {
                        session.conn.close(CloseCode::Normal.as_u32(), b"client shutting down");
                        rx.abort();
                        return Ok(());
                    }
                };
                let _ = sessions.send(None);
                rx.abort();
                // The server moved the session to a newer connection: our liveness probe's
                // or the direct path's, whose handshake is finishing. Continue on it.
                if is_resumed_elsewhere(&end) {
                    let wait = config.handshake_timeout;
                    if let Ok((fresh, why)) = tokio::time::timeout(wait, &mut moved).await {
                        if why == Moved::Probe {
                            log_moved();
                        }
                        replacement = Some(fresh);
                        continue;
                    }
                }
                if let Some(book) = &book {
                    book.lost();
                }
                if let Some(fatal) = fatal_close(&end) {
                    error!("{fatal}");
                    return Err(fatal);
                }
                warn!("tunnel lost: {end}; reconnecting");
                config
                    .telemetry
                    .tunnel_down(TunnelState::Reconnecting, end.to_string(), None);
                let _ = status.send(Status::Reconnecting {
                    reason: end.to_string(),
                });
            }
            Err(session::EstablishError::Fatal(e)) => {
                error!("{e}");
                return Err(e);
            }
            Err(session::EstablishError::Retry(why)) => {
                let _ = status.send(Status::Reconnecting {
                    reason: why.clone(),
                });
                let mut delay = backoff.next().unwrap_or(config.backoff_max);
                // Connections waiting for a resume want the path's return noticed soon.
                if book.as_ref().is_some_and(|b| !b.streams.is_empty()) {
                    delay = delay.min(RESUME_RETRY);
                }
                let state = if announced {
                    TunnelState::Reconnecting
                } else {
                    TunnelState::Connecting
                };
                config
                    .telemetry
                    .tunnel_down(state, why.clone(), Some(delay));
                warn!("could not establish the tunnel: {why}; retrying in {delay:.1?}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(delay) => {}
                }
                continue;
            }
        }
        // A drop right after being up: reconnect after a short pause.
        let delay = backoff.next().unwrap_or(config.backoff_min);
        config.telemetry.retry_in(delay);
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// What the client carries on every session besides its listeners' streams.
#[derive(Clone)]
struct Carried {
    udp_forwards: Arc<Vec<Option<Arc<udp::UdpForward>>>>,
    published: Arc<Vec<Arc<ForwardLive>>>,
}

impl Carried {
    /// The session's datagrams, and the visitors of published services, until it ends
    /// (the caller aborts it).
    async fn carry<C: Connection>(self, session: Arc<Session<C>>, config: Arc<ClientConfig>) {
        let cancel = CancellationToken::new();
        let _ended = cancel.clone().drop_guard();
        if let Some(book) = &session.book {
            let tasks = TaskTracker::new();
            tasks.spawn(
                resumable::acknowledge(session.conn.clone(), book.clone()).in_current_span(),
            );
            if session.resumed {
                let (conn, book) = (session.conn.clone(), book.clone());
                tasks.spawn(
                    async move {
                        let r = book.streams.resume_on(&conn).await;
                        info!(
                            resumed = r.resumed,
                            reset = r.unknown,
                            failed = r.failed,
                            "connections resumed on the new tunnel"
                        );
                    }
                    .in_current_span(),
                );
            }
            tasks.close();
        }
        let reverse = if config.publishes.is_empty() {
            None
        } else {
            let p = Arc::new(publish::Publishing {
                config,
                lives: self.published.clone(),
                session: session.clone(),
            });
            tokio::spawn(publish::accept_visitors(p.clone()).in_current_span());
            Some(Arc::new(publish::ReverseUdp::new(&p, cancel.clone()).await))
        };
        udp::datagram_loop(session, self.udp_forwards.clone(), reverse).await;
    }
}

/// Samples the tunnel's RTT into the status history every few seconds.
async fn sample_rtt(telemetry: Telemetry, cancel: CancellationToken) {
    let mut every = tokio::time::interval(Duration::from_secs(2));
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => telemetry.sample_rtt(),
        }
    }
}
