//! Sizes each connection's receive window (QUIC MAX_DATA) to its measured
//! bandwidth-delay product.
//!
//! The connection window is what the peer may have written to its streams beyond what we
//! have read: its buffered plus in-flight data. Fixed at the 32 MiB a long, fast path
//! needs, a tunnel over a short fast path (loopback, LAN) with several bulk streams lets
//! the sender keep each stream's whole 1 MiB stream window read from TCP and waiting, and
//! that data has left the CPU cache by the time it is copied into packets: 8 streams ran
//! 15-45 % slower than one (docs/BENCHMARKS.md). A window of a few times the bytes
//! received per RTT keeps that backlog small where it costs, and grows 4x per tick
//! wherever the window itself is what limits the rate, so long paths still reach the full
//! window ([`QuicParams::connection_window`](crate::quic_params::QuicParams)) within a few
//! ticks. (The receiving side tunes it because iroh and quinn expose
//! the receive window at run time, not the send window.)
//!
//! The policy is here, transport-free; each QUIC transport implements [`WindowControl`]
//! for its connection type and calls [`spawn_tuner`].

use std::future::Future;
use std::time::Duration;

use tracing::{Instrument, debug};

/// What the tuner needs from a QUIC connection.
pub trait WindowControl: Send + Sync + 'static {
    /// UDP payload bytes received on the connection so far.
    fn received_bytes(&self) -> u64;
    /// Round-trip time of the path in use, if one is selected.
    fn rtt(&self) -> Option<Duration>;
    /// Sets the connection's receive window (MAX_DATA beyond what was read).
    fn set_receive_window(&self, bytes: u64);
    /// Resolves when the connection is closed.
    fn closed(&self) -> impl Future<Output = ()> + Send;
}

/// The window never goes below this: room for a burst on an idle connection, and more
/// than slow start needs before the first tick.
pub const MIN_WINDOW: u64 = 1 << 20;
/// How often the window is recomputed.
const TICK: Duration = Duration::from_millis(50);
/// Window = HEADROOM x bytes received per RTT (a window-limited rate grows 4x a tick).
const HEADROOM: f64 = 4.0;

/// The receive window, at most `max`, for a connection that received `received` bytes
/// during `interval` on a path with round-trip time `rtt`.
pub fn window_for(received: u64, interval: Duration, rtt: Duration, max: u64) -> u64 {
    let max = max.max(MIN_WINDOW);
    if interval.is_zero() {
        return max;
    }
    let per_rtt = received as f64 * rtt.as_secs_f64() / interval.as_secs_f64();
    let window = (per_rtt * HEADROOM).min(max as f64) as u64;
    window.clamp(MIN_WINDOW, max)
}

/// Retunes the connection's receive window every [`TICK`] until it closes, between
/// [`MIN_WINDOW`] and `max` (the window the connection was configured with).
pub fn spawn_tuner<C: WindowControl>(conn: C, max: u64) {
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_received = conn.received_bytes();
            let mut last_at = tokio::time::Instant::now();
            let mut current = max;
            let closed = conn.closed();
            tokio::pin!(closed);
            loop {
                tokio::select! {
                    _ = &mut closed => return,
                    _ = tick.tick() => {}
                }
                let received = conn.received_bytes();
                let now = tokio::time::Instant::now();
                let Some(rtt) = conn.rtt() else {
                    continue;
                };
                let window = window_for(
                    received.saturating_sub(last_received),
                    now - last_at,
                    rtt,
                    max,
                );
                (last_received, last_at) = (received, now);
                if window != current {
                    conn.set_receive_window(window);
                    debug!(window, ?rtt, "receive window");
                    current = window;
                }
            }
        }
        .in_current_span(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const MAX_WINDOW: u64 = 32 << 20;

    fn window_for(received: u64, interval: Duration, rtt: Duration) -> u64 {
        super::window_for(received, interval, rtt, MAX_WINDOW)
    }

    #[test]
    fn idle_connection_keeps_the_minimum() {
        assert_eq!(window_for(0, 50 * MS, 20 * MS), MIN_WINDOW);
    }

    #[test]
    fn fast_short_path_gets_a_small_window() {
        // 500 MB/s over a 0.5 ms RTT: 250 KB per RTT -> 1 MB, floored at 1 MiB.
        assert_eq!(window_for(25_000_000, 50 * MS, MS / 2), MIN_WINDOW);
        // ... and over a 2 ms RTT: 1 MB per RTT -> 4 MB.
        assert_eq!(window_for(25_000_000, 50 * MS, 2 * MS), 4_000_000);
    }

    #[test]
    fn window_limited_rate_grows_the_window_fourfold() {
        // A 2 MiB window on a 50 ms path delivers 2 MiB per RTT, i.e. per 50 ms tick.
        let w = 2 << 20;
        assert_eq!(window_for(w, 50 * MS, 50 * MS), 4 * w);
    }

    #[test]
    fn long_fat_path_reaches_the_maximum() {
        // 1 Gbit/s over 100 ms: 12.5 MB per RTT, x4 is above the cap.
        assert_eq!(window_for(6_250_000, 50 * MS, 100 * MS), MAX_WINDOW);
    }

    #[test]
    fn the_configured_bound_caps_the_window() {
        // 1 Gbit/s over 100 ms wants the cap, whatever it is; a cap below the floor
        // still leaves the floor.
        assert_eq!(
            super::window_for(6_250_000, 50 * MS, 100 * MS, 8 << 20),
            8 << 20
        );
        assert_eq!(
            super::window_for(6_250_000, 50 * MS, 100 * MS, 1000),
            MIN_WINDOW
        );
        assert_eq!(super::window_for(0, Duration::ZERO, MS, 8 << 20), 8 << 20);
    }

    #[test]
    fn zero_interval_does_not_divide_by_zero() {
        assert_eq!(window_for(1000, Duration::ZERO, MS), MAX_WINDOW);
    }
}
