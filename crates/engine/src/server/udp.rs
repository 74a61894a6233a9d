//! UDP on the server: one connected socket per flow, created on the flow's first
//! datagram (so a lost first datagram costs nothing), expired when idle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use porthole_proto::datagram::{FlowKey, Received, Receiver};
use porthole_proto::source::Protocol;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span};

use super::forwards::{Forward, Forwards};
use super::publish::SessionUdp;
use super::{ClientClaim, ClientShared, ServerConfig};
use crate::telemetry::{Discard, FlowGuard, Refusal, Telemetry};
use crate::transport::Connection;
use crate::udp::{Clock, DropCounter, SendError, UDP_BUF, connect_udp, send_payload};
use porthole_proto::message::FIRST_PUBLISH_ID;

struct Flow {
    socket: Arc<UdpSocket>,
    last_ms: AtomicU64,
    forward: Arc<Forward>,
    _counted: FlowGuard,
    _claim: ClientClaim,
}

pub(crate) struct ServerUdp<C> {
    conn: C,
    forwards: Arc<Forwards>,
    /// The session's published UDP ports: the client's replies to their visitors.
    published: Arc<SessionUdp<C>>,
    client: Arc<ClientShared>,
    flows: Mutex<HashMap<FlowKey, Arc<Flow>>>,
    max_flows: usize,
    idle: Duration,
    clock: Clock,
    packet_ids: AtomicU16,
    drops: DropCounter,
    telemetry: Telemetry,
    cancel: CancellationToken,
}

impl<C: Connection> ServerUdp<C> {
    pub fn new(
        conn: C,
        forwards: Arc<Forwards>,
        published: Arc<SessionUdp<C>>,
        client: Arc<ClientShared>,
        config: &ServerConfig,
        cancel: CancellationToken,
    ) -> Self {
        Self {
            conn,
            forwards,
            published,
            client,
            flows: Mutex::new(HashMap::new()),
            max_flows: config.max_udp_flows,
            idle: config.udp_idle_timeout,
            clock: Clock::default(),
            packet_ids: AtomicU16::new(0),
            drops: DropCounter::new("UDP datagrams discarded"),
            telemetry: config.telemetry.clone(),
            cancel,
        }
    }

    /// Reads datagrams from the client until the connection ends.
    pub async fn datagram_loop(self: Arc<Self>) {
        let mut rx = Receiver::default();
        loop {
            let data = tokio::select! {
                _ = self.cancel.cancelled() => break,
                d = self.conn.read_datagram() => match d {
                    Ok(d) => d,
                    Err(_) => break,
                },
            };
            match rx.receive(&data, Instant::now()) {
                Received::Payload(flow, payload) if flow.forward_id >= FIRST_PUBLISH_ID => {
                    self.to_visitor(flow, &payload)
                }
                Received::Payload(flow, payload) => self.deliver(flow, &payload).await,
                Received::Pending => {}
                Received::Dropped(why) => self.discard(Discard::Malformed, 1, &why),
            }
            self.discard(
                Discard::Malformed,
                rx.take_timed_out(),
                &"incomplete fragmented datagrams timed out",
            );
        }
        self.cancel.cancel();
    }

    /// A reply from the client to a visitor of a published UDP port.
    fn to_visitor(&self, key: FlowKey, payload: &[u8]) {
        let port = self
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&key.forward_id)
            .cloned();
        let Some(port) = port else {
            return self.discard(
                Discard::UnknownForward,
                1,
                &"datagram for a publish this connection never made",
            );
        };
        if !self.client.caps.down.try_take(payload.len() as u64) {
            return self.discard(Discard::RateLimit, 1, &"over the client's bandwidth cap");
        }
        port.deliver(key.flow_id, payload);
    }

    async fn deliver(self: &Arc<Self>, key: FlowKey, payload: &[u8]) {
        let existing = self
            .lock()
            .get(&key)
            .filter(|f| !f.forward.closed.is_cancelled())
            .cloned();
        let flow = match existing {
            Some(f) => f,
            None => match self.open_flow(key).await {
                Some(f) => f,
                None => return,
            },
        };
        flow.last_ms.store(self.clock.now_ms(), Ordering::Relaxed);
        if !self.client.caps.up.try_take(payload.len() as u64) {
            self.discard(Discard::RateLimit, 1, &"over the client's bandwidth cap");
            return;
        }
        match flow.socket.try_send(payload) {
            Ok(n) => flow.forward.live.add_up(n as u64),
            // A fresh socket has no writability recorded yet (and a full send buffer
            // drains fast): wait briefly instead of dropping, e.g. a flow's first datagram.
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                let send =
                    tokio::time::timeout(Duration::from_millis(50), flow.socket.send(payload));
                match send.await {
                    Ok(Ok(n)) => flow.forward.live.add_up(n as u64),
                    _ => self.discard(Discard::Socket, 1, &"sending to target: socket busy"),
                }
            }
            Err(e) => self.discard(Discard::Socket, 1, &format_args!("sending to target: {e}")),
        }
    }

    async fn open_flow(self: &Arc<Self>, key: FlowKey) -> Option<Arc<Flow>> {
        let Some(forward) = self
            .forwards
            .get(key.forward_id)
            .filter(|f| f.source.protocol == Protocol::Udp && !f.closed.is_cancelled())
        else {
            self.discard(
                Discard::UnknownForward,
                1,
                &"datagram for a forward this connection never opened",
            );
            return None;
        };
        if self.lock().len() >= self.max_flows {
            self.telemetry.refused(Refusal::UdpFlowLimit);
            self.discard(
                Discard::FlowLimit,
                1,
                &format_args!("UDP flow limit ({}) reached", self.max_flows),
            );
            return None;
        }
        let Some(claim) = self.client.claim(true) else {
            self.telemetry.refused(Refusal::UdpFlowLimit);
            self.discard(
                Discard::FlowLimit,
                1,
                &"the client is at its UDP flow limit (max_udp_flows)",
            );
            return None;
        };
        let target = *forward.addrs.first()?;
        let socket = match connect_udp(target).await {
            Ok(s) => Arc::new(s),
            Err(e) => {
                self.discard(
                    Discard::Socket,
                    1,
                    &format_args!("cannot open socket to {target}: {e}"),
                );
                return None;
            }
        };
        let flow = Arc::new(Flow {
            socket,
            last_ms: AtomicU64::new(self.clock.now_ms()),
            _counted: forward.live.flow_opened(),
            _claim: claim,
            forward,
        });
        self.lock().insert(key, flow.clone());
        debug!(flow_id = key.flow_id, "new UDP flow to {target}");
        let span = info_span!("udp_flow", forward = key.forward_id, flow = key.flow_id);
        tokio::spawn(self.clone().reply_loop(key, flow.clone()).instrument(span));
        Some(flow)
    }

    /// Carries the target's replies back to the client until the flow goes idle.
    async fn reply_loop(self: Arc<Self>, key: FlowKey, flow: Arc<Flow>) {
        let mut buf = vec![0u8; UDP_BUF];
        loop {
            let Some(left) = self.clock.left(&flow.last_ms, self.idle) else {
                debug!("UDP flow idle for {:?}: closing", self.idle);
                break;
            };
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                _ = flow.forward.closed.cancelled() => break,
                _ = tokio::time::sleep(left) => {}
                r = flow.socket.recv(&mut buf) => match r {
                    Ok(n) if !self.client.caps.down.try_take(n as u64) => {
                        self.discard(Discard::RateLimit, 1, &"over the client's bandwidth cap");
                    }
                    Ok(n) => {
                        flow.last_ms.store(self.clock.now_ms(), Ordering::Relaxed);
                        match send_payload(&self.conn, key, &self.packet_ids, &buf[..n]) {
                            Ok(()) => flow.forward.live.add_down(n as u64),
                            Err(SendError::Connection(_)) => break,
                            Err(e) => self.discard(
                                Discard::Tunnel,
                                1,
                                &format_args!("reply to client: {e}"),
                            ),
                        }
                    }
                    // ICMP port unreachable surfaces here on a connected socket; the
                    // target may come up later, so keep the flow.
                    Err(e) => debug!("target socket: {e}"),
                },
            }
        }
        let mut flows = self.lock();
        if flows.get(&key).is_some_and(|f| Arc::ptr_eq(f, &flow)) {
            flows.remove(&key);
        }
    }

    /// Counts discarded datagrams for the log and the metrics.
    fn discard(&self, why: Discard, n: u64, detail: &dyn std::fmt::Display) {
        self.telemetry.dropped(why, n);
        self.drops.add(n, detail);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlowKey, Arc<Flow>>> {
        self.flows.lock().unwrap_or_else(|e| e.into_inner())
    }
}
