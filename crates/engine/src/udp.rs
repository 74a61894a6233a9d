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
