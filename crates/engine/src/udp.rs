//! UDP plumbing shared by both sides: sending payloads as (possibly fragmented)
//! datagrams, sizing sockets, and counting what gets discarded.

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use porthole_proto::datagram::{self, DatagramError, FlowKey};
use tokio::net::UdpSocket;

use crate::transport::Connection;

/// Receive buffer for one UDP read: the largest possible UDP payload.
pub const UDP_BUF: usize = 65_536;
/// A UDP flow with no datagram either way for this long is closed (both ends; the
/// one default of `--udp-idle-timeout`).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Socket buffer size asked of the OS for UDP sockets (the OS may cap it).
pub const SOCKET_BUFFER: usize = 4 << 20;

/// Sends one UDP payload over `conn`, fragmenting when it exceeds the path's
/// datagram size. `packet_ids` numbers fragmented packets.
pub fn send_payload<C: Connection>(
    conn: &C,
    flow: FlowKey,
    packet_ids: &AtomicU16,
    payload: &[u8],
) -> Result<(), SendError> {
    let max = conn
        .max_datagram_size()
        .ok_or(SendError::DatagramsDisabled)?;
    let packet_id = if payload.len() + datagram::WHOLE_HEADER_LEN > max {
        packet_ids.fetch_add(1, Ordering::Relaxed)
    } else {
        0
    };
    let parts = datagram::encode(flow, packet_id, payload, max)?;
    for p in parts {
        conn.send_datagram(Bytes::from(p))
            .map_err(SendError::Connection)?;
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("the peer does not accept datagrams")]
    DatagramsDisabled,
    #[error(transparent)]
    Encode(#[from] DatagramError),
    #[error("connection: {0}")]
    Connection(std::io::Error),
}

/// Asks for large socket buffers so bursts are not dropped by the kernel.
pub fn size_socket(socket: &UdpSocket) {
    let s = socket2::SockRef::from(socket);
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
}

/// Counters of discarded datagrams, logged at most once per interval.
#[derive(Debug)]
pub struct DropCounter {
    what: &'static str,
    count: AtomicU64,
    reported: AtomicU64,
    started: Instant,
    last_log_ms: AtomicU64,
}

impl DropCounter {
    pub fn new(what: &'static str) -> Self {
        Self {
            what,
            count: AtomicU64::new(0),
            reported: AtomicU64::new(0),
            started: Instant::now(),
            last_log_ms: AtomicU64::new(0),
        }
    }

    pub fn total(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Counts `n` discarded datagrams and logs a summary if the last one is old enough.
    pub fn add(&self, n: u64, why: &dyn std::fmt::Display) {
        if n == 0 {
            return;
        }
        let total = self.count.fetch_add(n, Ordering::Relaxed) + n;
        let now_ms = self.started.elapsed().as_millis() as u64;
        let last = self.last_log_ms.load(Ordering::Relaxed);
        let interval = Duration::from_secs(10).as_millis() as u64;
        if (last == 0 || now_ms.saturating_sub(last) >= interval)
            && self
                .last_log_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let since = total - self.reported.swap(total, Ordering::Relaxed);
            tracing::warn!(discarded = since, total, "{}: {why}", self.what);
        }
    }
}

/// Monotonic milliseconds since a fixed start, for cheap atomic "last active" stamps.
#[derive(Debug, Clone, Copy)]
pub struct Clock(Instant);

impl Default for Clock {
    fn default() -> Self {
        Self(Instant::now())
    }
}

impl Clock {
    pub fn now_ms(&self) -> u64 {
        self.0.elapsed().as_millis() as u64
    }
}

/// UDP flows by peer address, for the side that listens (the client's forwards, the
/// server's published ports): one flow id per peer, so replies reach exactly the peer
/// that sent, and two peers never see each other's packets.
#[derive(Default)]
pub(crate) struct FlowTable {
    pub by_peer: HashMap<SocketAddr, (u32, u64)>,
    by_id: HashMap<u32, SocketAddr>,
    next_id: u32,
}

impl FlowTable {
    pub fn flow_for(&mut self, peer: SocketAddr, now_ms: u64, max: usize) -> Option<u32> {
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

    pub fn peer_of(&mut self, id: u32, now_ms: u64) -> Option<SocketAddr> {
        let peer = *self.by_id.get(&id)?;
        if let Some(e) = self.by_peer.get_mut(&peer) {
            e.1 = now_ms;
        }
        Some(peer)
    }

    pub fn expire(&mut self, now_ms: u64, idle_ms: u64) -> usize {
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

/// The side of a UDP forward that listens (the client's forwards, the server's published
/// ports): one socket, one flow per peer address, replies to exactly that peer.
pub(crate) struct Listening {
    pub socket: std::sync::Arc<UdpSocket>,
    table: std::sync::Mutex<FlowTable>,
    idle: Duration,
    max_flows: usize,
    clock: Clock,
    /// Numbers this side's fragmented packets toward the tunnel.
    pub packet_ids: AtomicU16,
    drops: DropCounter,
    /// Counts up what peers send into the tunnel, down what reaches them from it.
    pub live: std::sync::Arc<crate::telemetry::ForwardLive>,
    telemetry: crate::telemetry::Telemetry,
}

impl Listening {
    pub fn new(
        socket: std::sync::Arc<UdpSocket>,
        live: std::sync::Arc<crate::telemetry::ForwardLive>,
        idle: Duration,
        max_flows: usize,
        telemetry: crate::telemetry::Telemetry,
    ) -> Self {
        Self {
            socket,
            table: Default::default(),
            idle,
            max_flows,
            clock: Clock::default(),
            packet_ids: AtomicU16::new(0),
            drops: DropCounter::new("UDP datagrams discarded"),
            live,
            telemetry,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, FlowTable> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts a discarded datagram for the log and the metrics.
    pub fn discard(&self, why: crate::telemetry::Discard, detail: &dyn std::fmt::Display) {
        self.telemetry.dropped(why, 1);
        self.drops.add(1, detail);
    }

    /// The timer [`next_datagram`](Self::next_datagram) sweeps idle flows by.
    pub fn sweep_timer(&self) -> tokio::time::Interval {
        let every = (self.idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(5));
        tokio::time::interval(every)
    }

    /// The next datagram from a peer into `buf` (its length) and the peer's flow,
    /// forgetting idle flows whenever `sweep` ticks. Receive errors and datagrams over
    /// the flow limit (counted) are skipped. Cancel-safe, for a `select!` beside the
    /// caller's stop.
    pub async fn next_datagram(
        &self,
        buf: &mut [u8],
        sweep: &mut tokio::time::Interval,
    ) -> (usize, u32) {
        loop {
            let (n, peer) = tokio::select! {
                _ = sweep.tick() => {
                    self.sweep();
                    continue;
                }
                r = self.socket.recv_from(buf) => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::debug!("UDP receive: {e}");
                        continue;
                    }
                },
            };
            if let Some(flow_id) = self.flow_of(peer) {
                return (n, flow_id);
            }
        }
    }

    /// Forgets the flows idle for the idle timeout.
    fn sweep(&self) {
        let mut table = self.table();
        let n = table.expire(self.clock.now_ms(), self.idle.as_millis() as u64);
        self.live.flows_now(table.by_peer.len(), 0);
        drop(table);
        if n > 0 {
            tracing::debug!("{n} idle UDP flow(s) expired");
        }
    }

    /// The flow of `peer`, a new one if it has none and the limit allows (else the
    /// datagram is counted as discarded).
    fn flow_of(&self, peer: SocketAddr) -> Option<u32> {
        let mut table = self.table();
        let before = table.by_peer.len();
        let flow = table.flow_for(peer, self.clock.now_ms(), self.max_flows);
        let after = table.by_peer.len();
        drop(table);
        if after != before {
            self.live.flows_now(after, (after - before) as u64);
        }
        if flow.is_none() {
            self.telemetry
                .refused(crate::telemetry::Refusal::UdpFlowLimit);
            self.discard(
                crate::telemetry::Discard::FlowLimit,
                &format_args!("UDP flow limit ({}) reached", self.max_flows),
            );
        }
        flow
    }

    /// A datagram from the tunnel, to the peer that owns `flow_id`.
    pub fn to_peer(&self, flow_id: u32, payload: &[u8]) {
        use crate::telemetry::Discard;
        let Some(peer) = self.table().peer_of(flow_id, self.clock.now_ms()) else {
            self.discard(
                Discard::UnknownForward,
                &"reply for an unknown or expired flow",
            );
            return;
        };
        // Straight to the kernel: tokio has no writability recorded for a socket only
        // ever read from, so its try_send_to could drop a datagram that would go out.
        match socket2::SockRef::from(&*self.socket).send_to(payload, &peer.into()) {
            Ok(n) => self.live.add_down(n as u64),
            Err(e) => self.discard(Discard::Socket, &format_args!("to {peer}: {e}")),
        }
    }
}

impl Clock {
    /// How long a flow last active at `last_ms` has left before `idle` ends it
    /// (`None`: it has ended).
    pub fn left(&self, last_ms: &AtomicU64, idle: Duration) -> Option<Duration> {
        let idle_ms = self
            .now_ms()
            .saturating_sub(last_ms.load(Ordering::Relaxed));
        idle.checked_sub(Duration::from_millis(idle_ms))
            .filter(|d| !d.is_zero())
    }
}

/// A UDP socket of the target's family, connected to it so only its replies arrive.
pub(crate) async fn connect_udp(target: SocketAddr) -> std::io::Result<UdpSocket> {
    let bind: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(bind).await?;
    size_socket(&socket);
    socket.connect(target).await?;
    Ok(socket)
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
