//! Local UDP on the client: one flow per local peer address, so replies reach exactly
//! the peer that sent the request, and two peers on one forward never see each
//! other's packets.

use std::collections::HashMap;
use std::net::SocketAddr;
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
use crate::udp::{Clock, DropCounter, UDP_BUF, send_payload};

#[derive(Default)]
struct FlowTable {
    by_peer: HashMap<SocketAddr, (u32, u64)>,
    by_id: HashMap<u32, SocketAddr>,
    next_id: u32,
}

impl FlowTable {
    fn flow_for(&mut self, peer: SocketAddr, now_ms: u64, max: usize) -> Option<u32> {
        if let Some(entry) = self.by_peer.get_mut(&peer) {
            entry.1 = now_ms;
            return Some(entry.0);
        }
        if self.by_peer.len() >= max {
            return None;
        }
        let mut id = self.next_id;
        while self.by_id.contains_key(&id) {
            id = id.wrapping_add(1);
        }
        self.next_id = id.wrapping_add(1);
        self.by_peer.insert(peer, (id, now_ms));
        self.by_id.insert(id, peer);
        Some(id)
    }

    fn peer_of(&mut self, id: u32, now_ms: u64) -> Option<SocketAddr> {
        let peer = *self.by_id.get(&id)?;
        if let Some(e) = self.by_peer.get_mut(&peer) {
            e.1 = now_ms;
        }
        Some(peer)
    }

    fn expire(&mut self, now_ms: u64, idle_ms: u64) -> usize {
        let stale: Vec<(SocketAddr, u32)> = self
            .by_peer
            .iter()
            .filter(|(_, (_, last))| now_ms.saturating_sub(*last) >= idle_ms)
            .map(|(p, (id, _))| (*p, *id))
            .collect();
        for (p, id) in &stale {
            self.by_peer.remove(p);
            self.by_id.remove(id);
        }
        stale.len()
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_are_per_peer_and_expire() {
        let mut t = FlowTable::default();
        let a: SocketAddr = "127.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "127.0.0.1:1001".parse().unwrap();
        let fa = t.flow_for(a, 0, 10).unwrap();
        let fb = t.flow_for(b, 0, 10).unwrap();
        assert_ne!(fa, fb);
        assert_eq!(t.flow_for(a, 5, 10), Some(fa));
        assert_eq!(t.peer_of(fb, 5), Some(b));
        assert_eq!(t.expire(100, 50), 2);
        assert_eq!(t.peer_of(fa, 100), None);
    }

    #[test]
    fn flow_limit_holds() {
        let mut t = FlowTable::default();
        for p in 0..3u16 {
            assert!(
                t.flow_for(SocketAddr::from(([127, 0, 0, 1], 2000 + p)), 0, 3)
                    .is_some()
            );
        }
        assert!(t.flow_for("127.0.0.1:9".parse().unwrap(), 0, 3).is_none());
    }
}
