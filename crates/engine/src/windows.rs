//! Sizes each connection's receive window (QUIC MAX_DATA beyond what we have read) to its
//! measured bandwidth-delay product, within a per-connection cap and one budget for the
//! whole process.
//!
//! The receive window is what the peer may send us and we must buffer until the local
//! TCP side takes it, and, since the peer is porthole too, what the peer's sender holds
//! read from TCP and not yet acknowledged. A fixed window is wrong at both ends of the
//! range. A large one (what a long fat path needs) lets a sender on a short fast path
//! keep several MiB per stream read from TCP and waiting, cold in cache by the time it
//! is packetised (8 streams ran 15-45 % slower than one on loopback), lets a sender on a
//! slow lossy path queue minutes of data ahead of a new interactive connection, and
//! costs memory whether the path needs it or not. A small one caps a connection at one
//! window per round trip (1 MiB: ~170 Mbit/s at 50 ms, docs/BENCHMARKS.md). So every
//! [`TICK`] the window becomes a few times the bytes received per round trip, which
//! keeps the backlog small where it costs and grows it 4x per tick wherever the window
//! itself is what limits the rate.
//!
//! Connections start at [`MIN_WINDOW`] (MAX_DATA cannot be taken back once granted) and
//! never exceed [`QuicParams::connection_window`]. Growth above the floor comes out of one
//! process-wide budget ([`QuicParams::window_budget`]), so a server with many busy clients
//! is asked to buffer at most the budget plus a floor per connection, however fast their
//! paths are. (The send window is a fixed cap, [`QuicParams::send_window`]: iroh has no
//! run-time setter for it, and the peer's tuned receive window bounds it in practice.)
//!
//! The policy is here, transport-free; each QUIC transport implements [`WindowControl`]
//! for its connection type (the `quic_adapter!` macro does) and calls [`spawn_tuner`].

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tracing::{Instrument, debug};

use crate::quic_params::QuicParams;

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
/// than slow start needs before the first tick. Connections also start with it (the transports
/// configure it as the initial window): MAX_DATA cannot be taken back once granted, so a
/// large first grant let a sender on a slow path queue more than it delivered in minutes.
pub const MIN_WINDOW: u64 = 1 << 20;
/// How often the window is recomputed.
const TICK: Duration = Duration::from_millis(50);
/// Window = HEADROOM x bytes received per RTT (a window-limited rate grows 4x a tick).
const HEADROOM: f64 = 4.0;

/// The window, at most `max`, for a connection that received `bytes` during `interval` on
/// a path with round-trip time `rtt`.
pub fn window_for(bytes: u64, interval: Duration, rtt: Duration, max: u64) -> u64 {
    let max = max.max(MIN_WINDOW);
    if interval.is_zero() {
        return max;
    }
    let per_rtt = bytes as f64 * rtt.as_secs_f64() / interval.as_secs_f64();
    let window = (per_rtt * HEADROOM).min(max as f64) as u64;
    window.clamp(MIN_WINDOW, max)
}

/// Receive-window growth above [`MIN_WINDOW`], summed over every connection of the process.
static GRANTED: AtomicU64 = AtomicU64::new(0);

/// Moves one connection's window from `from` to `to` bytes (both at least
/// [`MIN_WINDOW`]) within a process-wide budget of `budget` bytes above the floors;
/// returns the window granted, which is `to` unless the budget ran out (shrinking always
/// succeeds).
fn resize(from: u64, to: u64, budget: u64) -> u64 {
    if to <= from {
        GRANTED.fetch_sub(from - to, Ordering::Relaxed);
        return to;
    }
    let mut granted = GRANTED.load(Ordering::Relaxed);
    loop {
        let extra = (to - from).min(budget.saturating_sub(granted));
        if extra == 0 {
            return from;
        }
        match GRANTED.compare_exchange_weak(
            granted,
            granted + extra,
            Ordering::Relaxed,
            Ordering::Relaxed,
        ) {
            Ok(_) => return from + extra,
            Err(now) => granted = now,
        }
    }
}

/// Bytes of window growth granted right now, all connections together (tests, status).
pub fn granted() -> u64 {
    GRANTED.load(Ordering::Relaxed)
}

/// Retunes the connection's receive window every [`TICK`] until it closes, between
/// [`MIN_WINDOW`] (where connections start) and the cap in `params`, then returns what it
/// held to the budget.
pub fn spawn_tuner<C: WindowControl>(conn: C, params: &QuicParams) {
    let (max, budget) = (params.connection_window, params.window_budget);
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut last_received = conn.received_bytes();
            let mut last_at = tokio::time::Instant::now();
            let mut current = MIN_WINDOW;
            let closed = conn.closed();
            tokio::pin!(closed);
            loop {
                tokio::select! {
                    _ = &mut closed => break,
                    _ = tick.tick() => {}
                }
                let received = conn.received_bytes();
                let now = tokio::time::Instant::now();
                let Some(rtt) = conn.rtt() else {
                    continue;
                };
                let wanted = window_for(
                    received.saturating_sub(last_received),
                    now - last_at,
                    rtt,
                    max,
                );
                (last_received, last_at) = (received, now);
                let window = resize(current, wanted, budget);
                if window != current {
                    conn.set_receive_window(window);
                    debug!(window, wanted, ?rtt, "receive window");
                    current = window;
                }
            }
            resize(current, MIN_WINDOW, budget);
        }
        .in_current_span(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);
    const MAX_WINDOW: u64 = 32 << 20;

    fn window_for(bytes: u64, interval: Duration, rtt: Duration) -> u64 {
        super::window_for(bytes, interval, rtt, MAX_WINDOW)
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

    /// The process-wide budget: growth is granted until it runs out, shrinking returns it,
    /// and what one connection gives back another can take. (One test: the budget is a
    /// process global, and tests run in parallel.)
    #[test]
    fn growth_beyond_the_floors_shares_one_budget() {
        let budget = granted() + (10 << 20);
        let a = resize(MIN_WINDOW, MIN_WINDOW + (8 << 20), budget);
        assert_eq!(a, MIN_WINDOW + (8 << 20));
        // Only 2 MiB of the budget left for the second connection.
        let b = resize(MIN_WINDOW, MIN_WINDOW + (8 << 20), budget);
        assert_eq!(b, MIN_WINDOW + (2 << 20));
        // Nothing left: the third stays where it is.
        assert_eq!(resize(MIN_WINDOW, 4 * MIN_WINDOW, budget), MIN_WINDOW);
        // The first shrinks; the second may now grow by what it gave back.
        assert_eq!(
            resize(a, MIN_WINDOW + (2 << 20), budget),
            MIN_WINDOW + (2 << 20)
        );
        assert_eq!(
            resize(b, MIN_WINDOW + (8 << 20), budget),
            MIN_WINDOW + (8 << 20)
        );
        // Both give everything back.
        resize(MIN_WINDOW + (2 << 20), MIN_WINDOW, budget);
        resize(MIN_WINDOW + (8 << 20), MIN_WINDOW, budget);
        assert_eq!(granted(), budget - (10 << 20));
    }
}
