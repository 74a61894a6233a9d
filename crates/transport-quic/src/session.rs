//! Manual-mode sessions: the client prepares an offer, the server answers it, both
//! punch, and each side ends up with a quinn endpoint on the punched socket.
//!
//! The blobs themselves are moved by the caller (stdout/stdin, files, or a test), so
//! this module stays free of terminal I/O.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use porthole_engine::direct_paths::{PathGuard, PathRules};
use porthole_engine::quic_params::QuicParams;
use porthole_engine::transport::{Acceptor, Connector};
use porthole_proto::blob::{Blob, BlobError, BlobKind, NatKind};
use tokio::net::UdpSocket;
use tracing::{debug, info};

use crate::conn::QuicConn;
use crate::gather;
use crate::punch::{self, PunchError, PunchPlan, Role};
use crate::tls::{self, Identity, TlsError};

#[derive(Debug, Clone)]
pub struct ManualOptions {
    /// Local UDP address for candidates, punching and QUIC.
    pub bind: SocketAddr,
    /// STUN servers; empty = local addresses only (LAN).
    pub stun: Vec<SocketAddr>,
    /// How long a blob stays valid.
    pub expiry: Duration,
    /// Override of the punching deadline (default: client 30 s, server 120 s).
    pub punch_timeout: Option<Duration>,
    /// QUIC tuning (windows, timeouts, stream limit, congestion control).
    pub quic: QuicParams,
    /// Which addresses may be offered and punched (tunnel interfaces, `--exclude-addr`,
    /// `--pin-addr`).
    pub direct_paths: PathRules,
}

impl Default for ManualOptions {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([0, 0, 0, 0], 0)),
            stun: Vec::new(),
            expiry: Duration::from_secs(600),
            punch_timeout: None,
            quic: QuicParams::default(),
            direct_paths: PathRules::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ManualError {
    #[error("cannot bind {0}: {1}")]
    Bind(SocketAddr, io::Error),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Blob(#[from] BlobError),
    #[error(
        "this answer belongs to another offer (session mismatch): use the answer the server printed for this client's offer"
    )]
    SessionMismatch,
    #[error("hole punching failed")]
    Punch(#[from] PunchError),
    #[error("cannot start QUIC on the punched socket: {0}")]
    Endpoint(io::Error),
    #[error("the OS has no randomness to give: {0}")]
    Random(String),
}

pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// The offer's session id: what ties an answer (and the punch probes) to this offer, so
/// it must not be predictable or repeat.
fn random_session() -> Result<[u8; 16], ManualError> {
    let mut s = [0u8; 16];
    getrandom::fill(&mut s).map_err(|e| ManualError::Random(e.to_string()))?;
    Ok(s)
}

/// The socket that STUN, punching and then QUIC all use, with big buffers: quinn leaves
/// the OS default (often 208 KiB), which drops bursts at Gbit/s.
async fn bind(addr: SocketAddr) -> Result<UdpSocket, ManualError> {
    let socket = UdpSocket::bind(addr)
        .await
        .map_err(|e| ManualError::Bind(addr, e))?;
    porthole_engine::udp::size_socket(&socket);
    Ok(socket)
}

fn punch_plan(
    role: Role,
    opts: &ManualOptions,
    session: [u8; 16],
    local_nat: NatKind,
    remote: &Blob,
) -> PunchPlan {
    // The peer's candidates that do not route through a tunnel (or the rules) only: a
    // path through porthole's own forward would carry the tunnel inside itself.
    let guard = PathGuard::new(opts.direct_paths.clone());
    let candidates = remote
        .candidates
        .iter()
        .filter(|c| guard.reach(c.addr))
        .cloned()
        .collect();
    let mut plan = PunchPlan::new(role, session, local_nat, remote.nat, candidates);
    if let Some(t) = opts.punch_timeout {
        plan.timeout = t;
    }
    plan
}

fn endpoint(
    socket: std::net::UdpSocket,
    server: Option<quinn::ServerConfig>,
) -> Result<quinn::Endpoint, ManualError> {
    let runtime = Arc::new(quinn::TokioRuntime);
    quinn::Endpoint::new(quinn::EndpointConfig::default(), server, socket, runtime)
        .map_err(ManualError::Endpoint)
}

/// A client that has gathered its candidates and made its offer.
pub struct PreparedClient {
    opts: ManualOptions,
    socket: UdpSocket,
    identity: Identity,
    offer: Blob,
}

impl PreparedClient {
    pub async fn new(opts: ManualOptions) -> Result<Self, ManualError> {
        let socket = bind(opts.bind).await?;
        let identity = Identity::generate()?;
        let (candidates, nat) = gather::gather(&socket, &opts.stun, &opts.direct_paths).await;
        let offer = Blob {
            kind: BlobKind::Offer,
            session_id: random_session()?,
            expires_unix: now_unix() + opts.expiry.as_secs(),
            fingerprint: identity.fingerprint,
            nat,
            candidates,
        };
        Ok(Self {
            opts,
            socket,
            identity,
            offer,
        })
    }

    pub fn offer(&self) -> &Blob {
        &self.offer
    }

    /// Punches towards the server described by `answer` and prepares QUIC to it.
    pub async fn connect(self, answer: Blob) -> Result<ManualConnector, ManualError> {
        if answer.session_id != self.offer.session_id {
            return Err(ManualError::SessionMismatch);
        }
        info!(nat = %answer.nat, "server answered with {} candidate(s); punching", answer.candidates.len());
        let plan = punch_plan(
            Role::Client,
            &self.opts,
            self.offer.session_id,
            self.offer.nat,
            &answer,
        );
        let punched = punch::punch(self.socket, plan).await?;
        let report = PunchReport::of(&punched);
        let endpoint = endpoint(punched.socket, None)?;
        let config = tls::client_config(&self.identity, answer.fingerprint, &self.opts.quic)?;
        Ok(ManualConnector {
            endpoint,
            remote: punched.remote,
            config,
            quic: Arc::new(self.opts.quic.clone()),
            report,
        })
    }
}

/// A server that has read an offer and made its answer.
pub struct PreparedServer {
    opts: ManualOptions,
    socket: UdpSocket,
    identity: Identity,
    offer: Blob,
    answer: Blob,
}

impl PreparedServer {
    pub async fn new(opts: ManualOptions, offer: Blob) -> Result<Self, ManualError> {
        let socket = bind(opts.bind).await?;
        let identity = Identity::generate()?;
        let (candidates, nat) = gather::gather(&socket, &opts.stun, &opts.direct_paths).await;
        let answer = Blob {
            kind: BlobKind::Answer,
            session_id: offer.session_id,
            expires_unix: now_unix() + opts.expiry.as_secs(),
            fingerprint: identity.fingerprint,
            nat,
            candidates,
        };
        Ok(Self {
            opts,
            socket,
            identity,
            offer,
            answer,
        })
    }

    pub fn answer(&self) -> &Blob {
        &self.answer
    }

    /// Punches towards the client and starts a QUIC server on the punched socket that
    /// accepts only the client's pinned certificate.
    pub async fn accept(self) -> Result<ManualAcceptor, ManualError> {
        info!(nat = %self.offer.nat, "punching towards the client's {} candidate(s)", self.offer.candidates.len());
        let plan = punch_plan(
            Role::Server,
            &self.opts,
            self.offer.session_id,
            self.answer.nat,
            &self.offer,
        );
        let punched = punch::punch(self.socket, plan).await?;
        let report = PunchReport::of(&punched);
        let config = tls::server_config(&self.identity, self.offer.fingerprint, &self.opts.quic)?;
        let endpoint = endpoint(punched.socket, Some(config))?;
        Ok(ManualAcceptor {
            endpoint,
            quic: Arc::new(self.opts.quic.clone()),
            report,
        })
    }
}

/// The engine's connector: QUIC to the punched address (reconnects reuse the socket).
#[derive(Debug, Clone)]
pub struct ManualConnector {
    endpoint: quinn::Endpoint,
    remote: SocketAddr,
    config: quinn::ClientConfig,
    /// The connections' tuning (their windows' caps).
    quic: Arc<QuicParams>,
    report: PunchReport,
}

impl ManualConnector {
    pub fn remote(&self) -> SocketAddr {
        self.remote
    }

    /// How the path was punched.
    pub fn punched(&self) -> &PunchReport {
        &self.report
    }
}

/// How a path was punched: to where, how, how fast. Shows as the `path=direct` log
/// line (the caller logs it: manual mode at once, an upgrade once it moved there).
#[derive(Debug, Clone)]
pub struct PunchReport {
    pub remote: SocketAddr,
    pub method: punch::Method,
    pub elapsed: Duration,
}

impl PunchReport {
    fn of(p: &punch::Punched) -> Self {
        Self {
            remote: p.remote,
            method: p.method,
            elapsed: p.elapsed,
        }
    }
}

impl std::fmt::Display for PunchReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "path=direct remote={} punched in {:.0?} via {}",
            self.remote, self.elapsed, self.method
        )
    }
}

impl Connector for ManualConnector {
    type Conn = QuicConn;

    async fn connect(&self) -> io::Result<QuicConn> {
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), self.remote, tls::SERVER_NAME)
            .map_err(|e| io::Error::other(e.to_string()))?;
        let conn = connecting
            .await
            .map_err(|e| io::Error::other(e.to_string()))?;
        debug!("QUIC connected to {}", self.remote);
        Ok(QuicConn::new(conn, &self.quic))
    }
}

/// The engine's acceptor over the punched endpoint.
#[derive(Debug, Clone)]
pub struct ManualAcceptor {
    endpoint: quinn::Endpoint,
    /// The connections' tuning (their windows' caps).
    quic: Arc<QuicParams>,
    report: PunchReport,
}

impl ManualAcceptor {
    /// How the path was punched.
    pub fn punched(&self) -> &PunchReport {
        &self.report
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The one connection a direct upgrade expects: the first that arrives within
    /// `wait`; the endpoint takes no other after it.
    pub async fn accept_one(self, wait: Duration) -> io::Result<QuicConn> {
        let handshake = tokio::time::timeout(wait, self.accept())
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no connection arrived"))?
            .ok_or_else(|| io::Error::other("the endpoint closed"))?;
        self.endpoint.set_server_config(None);
        tokio::time::timeout(wait, handshake)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the handshake did not finish"))?
    }

    pub async fn close(&self) {
        self.endpoint.close(0u32.into(), b"bye");
        self.endpoint.wait_idle().await;
    }
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<QuicConn>> + Send>>;

impl Acceptor for ManualAcceptor {
    type Conn = QuicConn;
    type Handshake = Handshake;

    async fn accept(&self) -> Option<Handshake> {
        loop {
            let incoming = self.endpoint.accept().await?;
            match incoming.accept() {
                Ok(connecting) => {
                    let quic = self.quic.clone();
                    return Some(Box::pin(async move {
                        let c = connecting
                            .await
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        Ok(QuicConn::new(c, &quic))
                    }));
                }
                Err(e) => debug!("incoming QUIC connection failed: {e}"),
            }
        }
    }
}
