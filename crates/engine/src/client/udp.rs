//! Local UDP on the client: one flow per local peer address, so replies reach exactly
//! the peer that sent the request, and two peers on one forward never see each
//! other's packets.

use std::collections::HashMap;
use std::sync::atomic::AtomicU16;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use porthole_proto::datagram::{FlowKey, Received, Receiver};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{ClientConfig, Session};
use crate::telemetry::{Discard, ForwardLive, Telemetry};
use crate::transport::Connection;
use crate::udp::{Clock, DropCounter, FlowTable, UDP_BUF, send_payload};

pub(crate) struct UdpForward {
    socket: Arc<UdpSocket>,
    index: usize,
    table: Mutex<FlowTable>,
    idle: Duration,
    max_flows: usize,
    clock: Clock,
    packet_ids: AtomicU16,
    drops: DropCounter,
    live: Arc<ForwardLive>,
    telemetry: Telemetry,
}

impl UdpForward {
    pub fn new(
        socket: Arc<UdpSocket>,
        index: usize,
        config: &ClientConfig,
        live: Arc<ForwardLive>,
    ) -> Self {
        Self {
            socket,
            index,
            table: Mutex::new(FlowTable::default()),
            idle: config.udp_idle_timeout,
            max_flows: config.max_udp_flows,
            clock: Clock::default(),
            packet_ids: AtomicU16::new(0),
            drops: DropCounter::new("UDP datagrams discarded"),
            live,
            telemetry: config.telemetry.clone(),
        }
    }

    /// Counts discarded datagrams for the log and the metrics.
    fn discard(&self, why: Discard, detail: &dyn std::fmt::Display) {
        self.telemetry.dropped(why, 1);
        self.drops.add(1, detail);
    }

    fn table(&self) -> std::sync::MutexGuard<'_, FlowTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Local peers -> tunnel, for the whole run (across reconnects).
    pub async fn local_loop<C: Connection>(
        self: Arc<Self>,
        sessions: watch::Receiver<Option<Arc<Session<C>>>>,
        cancel: CancellationToken,
    ) {
        let mut buf = vec![0u8; UDP_BUF];
        let sweep_every = (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        let mut sweep = tokio::time::interval(sweep_every);
        loop {
            let (n, peer) = tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sweep.tick() => {
                    let mut table = self.table();
                    let n = table.expire(self.clock.now_ms(), self.idle.as_millis() as u64);
                    self.live.flows_now(table.by_peer.len(), 0);
                    drop(table);
                    if n > 0 {
                        debug!("{n} idle UDP flow(s) expired");
                    }
                    continue;
                }
                r = self.socket.recv_from(&mut buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        debug!("local UDP receive: {e}");
                        continue;
                    }
                },
            };
            let flow = {
                let mut table = self.table();
                let before = table.by_peer.len();
                let flow = table.flow_for(peer, self.clock.now_ms(), self.max_flows);
                let after = table.by_peer.len();
                if after != before {
                    self.live.flows_now(after, (after - before) as u64);
                }
                flow
            };
            let Some(flow_id) = flow else {
                self.discard(
                    Discard::FlowLimit,
                    &format_args!("UDP flow limit ({}) reached", self.max_flows),
                );
                continue;
            };
            let session = sessions.borrow().clone();
            let Some(session) = session else {
                self.discard(Discard::Tunnel, &"tunnel is down");
                continue;
            };
            let Some(&forward_id) = session.forward_ids.get(self.index) else {
                continue;
            };
            let key = FlowKey {
                forward_id,
                flow_id,
            };
            match send_payload(&session.conn, key, &self.packet_ids, &buf[..n]) {
                Ok(()) => self.live.add_up(n as u64),
                Err(e) => self.discard(Discard::Tunnel, &format_args!("to tunnel: {e}")),
            }
        }
    }

    /// Tunnel -> the local peer that owns `flow_id`.
    fn deliver(&self, flow_id: u32, payload: &[u8]) {
        let Some(peer) = self.table().peer_of(flow_id, self.clock.now_ms()) else {
            self.discard(
                Discard::UnknownForward,
                &"reply for an unknown or expired flow",
            );
            return;
        };
        match self.socket.try_send_to(payload, peer) {
            Ok(n) => self.live.add_down(n as u64),
            Err(e) => self.discard(Discard::Socket, &format_args!("to local peer {peer}: {e}")),
        }
    }
}

/// Reads the session's datagrams and hands each to its forward, until the session ends.
pub(crate) async fn datagram_loop<C: Connection>(
    session: Arc<Session<C>>,
    forwards: Arc<Vec<Option<Arc<UdpForward>>>>,
    published: Option<Arc<super::publish::ReverseUdp<C>>>,
) {
    let by_id: HashMap<u16, usize> = session
        .forward_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i))
        .collect();
    let unknown = DropCounter::new("UDP datagrams discarded");
    let mut rx = Receiver::default();
    let route = |flow: FlowKey, payload: &[u8]| match by_id
        .get(&flow.forward_id)
        .and_then(|i| forwards.get(*i))
        .and_then(|f| f.as_ref())
    {
        Some(f) => f.deliver(flow.flow_id, payload),
        // A SOCKS association's destination (a forward opened on demand)?
        None => match session.routed(flow.forward_id, flow.flow_id) {
            Some(to) => {
                if to
                    .try_send((flow.forward_id, Bytes::copy_from_slice(payload)))
                    .is_err()
                {
                    unknown.add(1, &"a SOCKS association is not keeping up");
                }
            }
            None => unknown.add(1, &"datagram for an unknown forward"),
        },
    };
    while let Ok(data) = session.conn.read_datagram().await {
        match rx.receive(&data, Instant::now()) {
            Received::Payload(flow, payload) if session.publish_ids.contains(&flow.forward_id) => {
                match &published {
                    Some(p) => p.deliver(flow, &payload),
                    None => unknown.add(1, &"datagram for an unknown publish"),
                }
            }
            Received::Payload(flow, payload) => route(flow, &payload),
            Received::Pending => {}
            Received::Dropped(why) => unknown.add(1, &why),
        }
        unknown.add(
            rx.take_timed_out(),
            &"incomplete fragmented datagrams timed out",
        );
    }
}
