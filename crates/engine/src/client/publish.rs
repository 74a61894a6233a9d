//! Published services on the client's side: the streams the server opens for visitors
//! of a published TCP port, and the datagrams of a published UDP port, carried to the
//! target next to the client (see `server::publish`).

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use porthole_proto::close::StreamCode;
use porthole_proto::datagram::FlowKey;
use porthole_proto::message::{PublishRequest, VisitorHeader};
use porthole_proto::proxy_header;
use porthole_proto::source::{Protocol, Source};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::{ClientConfig, ProxyProtocol, Session};
use crate::control::read_frame;
use crate::splice::{Controls, SpliceEnd, splice, tune_tcp};
use crate::telemetry::{Discard, ForwardLive, Side, Telemetry};
use crate::transport::{Connection, RecvStream, SendStream};
use crate::udp::{Clock, DropCounter, SendError, UDP_BUF, send_payload};

/// How long the client waits for a visitor stream's header, and for its target.
const VISITOR_TIMEOUT: Duration = Duration::from_secs(10);

/// One published service: where the server listens, and where visitors go here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishSpec {
    /// `tcp://IP:PORT` / `udp://IP:PORT` on the server's side.
    pub bind: Source,
    /// On a shared TCP port: the name (TLS SNI or HTTP Host) this service answers to.
    pub name: Option<String>,
    /// Where each visitor goes on the client's side (same protocol as `bind`).
    pub target: Source,
    /// `send`: a PROXY header ahead of each visitor's bytes, naming the visitor;
    /// `accept`: the server reads one off each visitor (a load balancer in front).
    pub proxy: ProxyProtocol,
}

impl PublishSpec {
    pub(crate) fn request(&self) -> PublishRequest {
        PublishRequest {
            bind: self.bind.to_string(),
            name: self.name.clone(),
            accept_proxy_protocol: self.proxy.accept,
        }
    }
}

impl fmt::Display for PublishSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bind)?;
        if let Some(n) = &self.name {
            write!(f, " ({n})")?;
        }
        write!(f, " -> {}", self.target.authority())
    }
}

/// What carrying one session's visitors needs.
pub(crate) struct Publishing<C: Connection> {
    pub config: Arc<ClientConfig>,
    /// Counters per publish, in config order.
    pub lives: Arc<Vec<Arc<ForwardLive>>>,
    pub session: Arc<Session<C>>,
}

/// Accepts the server's visitor streams until the session ends.
pub(crate) async fn accept_visitors<C: Connection>(p: Arc<Publishing<C>>) {
    while let Ok((send, recv)) = p.session.conn.accept_bi().await {
        tokio::spawn(visitor(send, recv, p.clone()).in_current_span());
    }
}

async fn visitor<C: Connection>(mut send: C::Send, mut recv: C::Recv, p: Arc<Publishing<C>>) {
    let refuse = |send: &mut C::Send, recv: &mut C::Recv, code: StreamCode| {
        send.reset(code.as_u32());
        recv.stop(code.as_u32());
    };
    let header = match tokio::time::timeout(
        VISITOR_TIMEOUT,
        read_frame::<VisitorHeader, _>(&mut recv),
    )
    .await
    {
        Ok(Ok(h)) => h,
        _ => return refuse(&mut send, &mut recv, StreamCode::BadHeader),
    };
    let Some(index) = p
        .session
        .publish_ids
        .iter()
        .position(|id| *id == header.publish_id)
    else {
        warn!(
            publish_id = header.publish_id,
            "a visitor stream for a publish this session never made"
        );
        return refuse(&mut send, &mut recv, StreamCode::UnknownForward);
    };
    let spec = &p.config.publishes[index];
    let span = info_span!("visitor", publish = %spec.bind, from = %header.visitor);
    async {
        let meter = p.lives[index].stream(Side::Client, None);
        let mut tcp = match dial(&spec.target).await {
            Ok(t) => t,
            Err(e) => {
                warn!("target {} unreachable: {e}", spec.target.authority());
                return refuse(&mut send, &mut recv, StreamCode::TargetUnreachable);
            }
        };
        if let Some(version) = spec.proxy.send {
            let head = proxy_header::encode(version, header.visitor, header.local);
            if let Err(e) = tcp.write_all(&head).await {
                warn!("target {}: {e}", spec.target.authority());
                return refuse(&mut send, &mut recv, StreamCode::PeerReset);
            }
        }
        tune_tcp(&tcp);
        match splice(tcp, send, recv, Controls::meter(&meter)).await {
            SpliceEnd::Clean { up, down } => debug!(to_visitor = up, from_visitor = down, "done"),
            SpliceEnd::Aborted { up, down, error } => {
                debug!(to_visitor = up, from_visitor = down, "aborted: {error}")
            }
        }
    }
    .instrument(span)
    .await
}

/// The target's addresses, resolved now (a name may move between visitors).
async fn resolve(target: &Source) -> std::io::Result<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> =
        tokio::time::timeout(VISITOR_TIMEOUT, tokio::net::lookup_host(target.authority()))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "name lookup timed out")
            })??
            .collect();
    Ok(addrs)
}

async fn dial(target: &Source) -> std::io::Result<tokio::net::TcpStream> {
    crate::net::dial(&resolve(target).await?, VISITOR_TIMEOUT).await
}

/// One visitor's UDP flow: a socket connected to the target.
struct Flow {
    socket: Arc<UdpSocket>,
    last_ms: AtomicU64,
    live: Arc<ForwardLive>,
}

/// A session's published UDP ports: one connected socket per visitor flow.
pub(crate) struct ReverseUdp<C> {
    conn: C,
    /// By publish id: the target (resolved when the session came up) and counters.
    targets: HashMap<u16, (SocketAddr, Arc<ForwardLive>)>,
    flows: Mutex<HashMap<FlowKey, Arc<Flow>>>,
    max_flows: usize,
    idle: Duration,
    clock: Clock,
    packet_ids: AtomicU16,
    drops: DropCounter,
    telemetry: Telemetry,
    cancel: CancellationToken,
}

impl<C: Connection> ReverseUdp<C> {
    /// Resolves the UDP publishes' targets for this session.
    pub async fn new(p: &Publishing<C>, cancel: CancellationToken) -> Self {
        let mut targets = HashMap::new();
        for (i, spec) in p.config.publishes.iter().enumerate() {
            if spec.bind.protocol != Protocol::Udp {
                continue;
            }
            match resolve(&spec.target).await.map(|a| a.first().copied()) {
                Ok(Some(addr)) => {
                    targets.insert(p.session.publish_ids[i], (addr, p.lives[i].clone()));
                }
                Ok(None) | Err(_) => {
                    warn!("publish {spec}: target does not resolve; its datagrams are dropped")
                }
            }
        }
        Self {
            conn: p.session.conn.clone(),
            targets,
            flows: Default::default(),
            max_flows: p.config.max_udp_flows,
            idle: p.config.udp_idle_timeout,
            clock: Clock::default(),
            packet_ids: AtomicU16::new(0),
            drops: DropCounter::new("UDP datagrams discarded"),
            telemetry: p.config.telemetry.clone(),
            cancel,
        }
    }

    fn discard(&self, why: Discard, detail: &dyn fmt::Display) {
        self.telemetry.dropped(why, 1);
        self.drops.add(1, detail);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlowKey, Arc<Flow>>> {
        self.flows.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A visitor's datagram, to the target.
    pub fn deliver(self: &Arc<Self>, key: FlowKey, payload: &[u8]) {
        let existing = self.lock().get(&key).cloned();
        let flow = match existing {
            Some(f) => f,
            None => match self.open(key) {
                Ok(f) => f,
                Err(why) => return self.discard(Discard::UnknownForward, &why),
            },
        };
        flow.last_ms.store(self.clock.now_ms(), Ordering::Relaxed);
        // Straight to the kernel: tokio has no writability recorded for a fresh socket
        // yet, so its try_send would drop a flow's first datagram.
        match socket2::SockRef::from(&*flow.socket).send(payload) {
            Ok(n) => flow.live.add_up(n as u64),
            Err(e) => self.discard(Discard::Socket, &format_args!("to target: {e}")),
        }
    }

    fn open(self: &Arc<Self>, key: FlowKey) -> Result<Arc<Flow>, String> {
        let Some((target, live)) = self.targets.get(&key.forward_id) else {
            return Err("datagram for a publish this session never made".into());
        };
        if self.lock().len() >= self.max_flows {
            return Err(format!("UDP flow limit ({}) reached", self.max_flows));
        }
        // Binding and connecting a UDP socket do not block: no await in the receive path.
        let socket = (|| {
            let any: SocketAddr = if target.is_ipv4() {
                "0.0.0.0:0".parse().expect("literal")
            } else {
                "[::]:0".parse().expect("literal")
            };
            let s = std::net::UdpSocket::bind(any)?;
            s.connect(target)?;
            s.set_nonblocking(true)?;
            UdpSocket::from_std(s)
        })()
        .map_err(|e| format!("cannot open a socket to {target}: {e}"))?;
        crate::udp::size_socket(&socket);
        let flow = Arc::new(Flow {
            socket: Arc::new(socket),
            last_ms: AtomicU64::new(self.clock.now_ms()),
            live: live.clone(),
        });
        self.lock().insert(key, flow.clone());
        let span = info_span!("udp_visitor", publish = key.forward_id, flow = key.flow_id);
        tokio::spawn(self.clone().reply_loop(key, flow.clone()).instrument(span));
        Ok(flow)
    }

    /// The target's replies, back to the visitor, until the flow goes idle.
    async fn reply_loop(self: Arc<Self>, key: FlowKey, flow: Arc<Flow>) {
        let mut buf = vec![0u8; UDP_BUF];
        while let Some(left) = self.clock.left(&flow.last_ms, self.idle) {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(left) => {}
                r = flow.socket.recv(&mut buf) => match r {
                    Ok(n) => {
                        flow.last_ms.store(self.clock.now_ms(), Ordering::Relaxed);
                        match send_payload(&self.conn, key, &self.packet_ids, &buf[..n]) {
                            Ok(()) => flow.live.add_down(n as u64),
                            Err(SendError::Connection(_)) => break,
                            Err(e) => self.discard(Discard::Tunnel, &format_args!("to visitor: {e}")),
                        }
                    }
                    Err(e) => debug!("target socket: {e}"),
                },
            }
        }
        let mut flows = self.lock();
        if flows.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
            flows.remove(&key);
        }
    }
}
