//! One set of QUIC transport parameters, defined once and applied by both transports
//! (iroh's noq in `porthole-iroh`, quinn in `porthole-quic`).
//!
//! Each transport maps [`QuicParams`] onto its library's config type field by field and
//! nothing else; the values, their defaults and the reasons for them live here.

use std::time::Duration;

/// Concurrent bidirectional streams a peer may open on one connection: one per forwarded
/// TCP connection (plus the control stream). Also the server's per-connection TCP limit.
pub const MAX_STREAMS: u32 = 1024;

/// The congestion controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// BBR (v1, as Linux's `tcp_bbr`): sends at the measured bottleneck rate and does not
    /// take random loss for congestion. The default: on a 50 ms path with 1 % loss it
    /// moves ~300 Mbit/s where CUBIC moves ~5 (docs/BENCHMARKS.md, WAN).
    #[default]
    Bbr,
    /// CUBIC (RFC 9438), most kernels' TCP default: backs off on every loss; fairer to
    /// loss-based flows sharing a shallow-buffered bottleneck.
    Cubic,
    /// NewReno (RFC 9002's reference controller).
    NewReno,
}

impl Congestion {
    pub const NAMES: &str = "bbr, cubic or newreno";

    pub fn name(self) -> &'static str {
        match self {
            Congestion::Bbr => "bbr",
            Congestion::Cubic => "cubic",
            Congestion::NewReno => "newreno",
        }
    }
}

impl std::str::FromStr for Congestion {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "bbr" => Ok(Congestion::Bbr),
            "cubic" => Ok(Congestion::Cubic),
            "newreno" => Ok(Congestion::NewReno),
            other => Err(format!(
                "unknown congestion controller {other:?}: use {}",
                Self::NAMES
            )),
        }
    }
}

/// QUIC tuning shared by every porthole connection, whatever the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicParams {
    /// See [`MAX_STREAMS`]. Unidirectional streams are never used (limit 0).
    pub max_streams: u32,
    /// Per-stream receive window (MAX_STREAM_DATA): what one stream may have in flight,
    /// so one TCP connection moves at most this much per round trip. It is a cap, not an
    /// allocation: the connection's tuned window bounds what is buffered. 8 MiB: one
    /// stream reaches ~250 Mbit/s over 150 ms (at 1 MiB it ran at 140 Mbit/s at 50 ms);
    /// 16 MiB moved one stream faster on lossy 150 ms paths but let the first bulk
    /// streams take most of the connection's credit (docs/BENCHMARKS.md, tuning log).
    ///
    /// Windows above ~2 MiB need `vendor/noq-proto`: stock noq closes the whole
    /// connection when a stream's reassembly buffer holds more than 1024 chunks.
    pub stream_window: u64,
    /// Cap of a connection's receive window (MAX_DATA beyond what was read); the
    /// [`windows`](crate::windows) tuner sizes it to the path below this. 32 MiB covers
    /// 500 Mbit/s at 150 ms with room for recovery; more only added memory.
    pub connection_window: u64,
    /// Send window: data one connection accepts from local TCP and keeps until the peer
    /// acknowledges it, all streams together. Fixed (iroh has no run-time setter); in
    /// practice the peer's tuned receive window bounds it further.
    pub send_window: u64,
    /// Receive-window growth above the floor, summed over every connection of the
    /// process: what all tunnels together may be asked to buffer beyond 1 MiB each,
    /// however fast their paths.
    pub window_budget: u64,
    /// A silent peer counts as gone after this long; its streams are reset.
    pub idle_timeout: Duration,
    /// Keep-alive interval: holds punched NAT mappings open and proves liveness.
    pub keep_alive: Duration,
    /// Datagram queue per direction (UDP forwards): bursts above it are dropped.
    pub datagram_buffer: usize,
    /// Streams of equal priority share the path round-robin (bulk ones are demoted below
    /// young ones, see [`crate::splice::BULK_AFTER`]). Sending them one after the other
    /// starved later streams on slow paths, and their unsent data held the connection's
    /// flow-control credit, so even a small new stream waited behind it.
    pub send_fairness: bool,
    pub congestion: Congestion,
}

impl Default for QuicParams {
    fn default() -> Self {
        Self {
            max_streams: MAX_STREAMS,
            stream_window: 8 << 20,
            connection_window: 32 << 20,
            send_window: 16 << 20,
            window_budget: 512 << 20,
            idle_timeout: Duration::from_secs(20),
            keep_alive: Duration::from_secs(5),
            datagram_buffer: 4 << 20,
            send_fairness: true,
            congestion: Congestion::default(),
        }
    }
}
