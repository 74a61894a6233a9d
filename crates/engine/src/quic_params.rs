//! One set of QUIC transport parameters, defined once and applied by both transports
//! (iroh's noq in `porthole-transport-iroh`, quinn in `porthole-transport-quic`).
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

/// Accepted idle timeouts. Below 5 s a few lost keep-alives end the connection; above
/// an hour a vanished peer holds its resources for longer than anyone waits.
pub const IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(5)..=Duration::from_secs(3600);
/// Accepted keep-alive intervals: more often than every second is noise; NAT mappings
/// commonly expire after 30 s without traffic.
pub const KEEP_ALIVE_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(25);

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
    /// How long a silent peer is waited for before the connection and every stream on it
    /// are given up. An outage shorter than this is only a pause: the connection, the
    /// users' TCP connections and UDP flows carry on within a few seconds of the path
    /// returning (`natlab::outage`: 0.3-3 s after a 30 s cut). The price is how long
    /// a peer that vanished without a word (host down, cable cut for good) takes to be
    /// noticed; a server that restarted is noticed much sooner by the client's liveness
    /// probe ([`QuicParams::silent_after`]). 90 s rides out the minute-long outages
    /// users meet (Wi-Fi drops, a train tunnel, a lid closed for a coffee); at 20 s every
    /// SSH session died in them. Both peers propose one; QUIC uses the smaller.
    pub idle_timeout: Duration,
    /// Keep-alive interval: holds punched NAT mappings open (many expire after 30 s of
    /// silence) and proves liveness: a live peer is heard at least this often.
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

impl QuicParams {
    /// Checks the timers against their bounds and each other; the message names the
    /// setting and the fix.
    pub fn check(&self) -> Result<(), String> {
        let secs = |r: &std::ops::RangeInclusive<Duration>| {
            format!("{}s to {}s", r.start().as_secs(), r.end().as_secs())
        };
        if !IDLE_TIMEOUT_RANGE.contains(&self.idle_timeout) {
            return Err(format!(
                "idle timeout {:?} is out of range: use {}",
                self.idle_timeout,
                secs(&IDLE_TIMEOUT_RANGE)
            ));
        }
        if !KEEP_ALIVE_RANGE.contains(&self.keep_alive) {
            return Err(format!(
                "keep-alive {:?} is out of range: use {}",
                self.keep_alive,
                secs(&KEEP_ALIVE_RANGE)
            ));
        }
        if self.keep_alive * 3 > self.idle_timeout {
            return Err(format!(
                "keep-alive {:?} is too long for idle timeout {:?}: a live but quiet peer \
                 would time out after two lost keep-alives; use at most a third of the \
                 idle timeout",
                self.keep_alive, self.idle_timeout
            ));
        }
        Ok(())
    }

    /// How long the client lets its connection go without hearing the server before it
    /// checks, with a fresh connection, whether the server is still there (a restarted
    /// server never answers the old connection again). Two keep-alive intervals and a
    /// second: one lost keep-alive is not silence.
    pub fn silent_after(&self) -> Duration {
        self.keep_alive * 2 + Duration::from_secs(1)
    }
}

impl Default for QuicParams {
    fn default() -> Self {
        Self {
            max_streams: MAX_STREAMS,
            stream_window: 8 << 20,
            connection_window: 32 << 20,
            send_window: 16 << 20,
            window_budget: 512 << 20,
            idle_timeout: Duration::from_secs(90),
            keep_alive: Duration::from_secs(5),
            datagram_buffer: 4 << 20,
            send_fairness: true,
            congestion: Congestion::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(idle: u64, keep_alive: u64) -> QuicParams {
        QuicParams {
            idle_timeout: Duration::from_secs(idle),
            keep_alive: Duration::from_secs(keep_alive),
            ..QuicParams::default()
        }
    }

    #[test]
    fn defaults_ride_out_a_minute_and_pass_their_own_check() {
        let q = QuicParams::default();
        assert_eq!(q.check(), Ok(()));
        assert!(q.idle_timeout > Duration::from_secs(60));
        assert_eq!(q.silent_after(), Duration::from_secs(11));
    }

    #[test]
    fn timers_out_of_bounds_or_inconsistent_are_refused_with_the_fix() {
        assert!(with(4, 1).check().unwrap_err().contains("use 5s to 3600s"));
        assert!(with(3601, 5).check().unwrap_err().contains("idle timeout"));
        assert!(with(90, 26).check().unwrap_err().contains("use 1s to 25s"));
        assert!(with(90, 0).check().unwrap_err().contains("keep-alive"));
        assert!(with(30, 11).check().unwrap_err().contains("a third"));
        assert_eq!(with(30, 10).check(), Ok(()));
        assert_eq!(with(5, 1).check(), Ok(()));
    }
}
