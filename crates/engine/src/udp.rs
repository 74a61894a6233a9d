//! UDP plumbing shared by both sides: sending payloads as (possibly fragmented)
//! datagrams, sizing sockets, and counting what gets discarded.

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
