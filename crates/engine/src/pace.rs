//! Bandwidth caps: a token bucket per client and direction, shared by all of the
//! client's sessions, streams and flows.
//!
//! TCP waits for its bytes (the wait pushes back through QUIC flow control to the
//! sender); UDP datagrams over the cap are dropped, as a router's policer would.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

// tokio's clock, so tests with paused time see the bucket refill as time advances.
use tokio::time::Instant;

/// How much a bucket may save up while idle: this long at its rate.
const BURST: Duration = Duration::from_millis(100);

/// A token bucket in bytes per second; 0 means no cap.
#[derive(Debug)]
pub struct Bucket {
    rate: AtomicU64,
    state: Mutex<(f64, Instant)>,
}

impl Bucket {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            rate: AtomicU64::new(bytes_per_sec),
            state: Mutex::new((0.0, Instant::now())),
        }
    }

    /// Changes the cap (a reload); 0 lifts it.
    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.rate.store(bytes_per_sec, Ordering::Relaxed);
    }

    pub fn rate(&self) -> u64 {
        self.rate.load(Ordering::Relaxed)
    }

    /// Takes `n` bytes' worth now, going into debt if need be; returns how long the
    /// caller must wait to stay within the cap.
    fn debit(&self, n: u64, rate: u64) -> Duration {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let rate = rate as f64;
        let burst = rate * BURST.as_secs_f64();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * rate).min(burst);
        s.1 = now;
        s.0 -= n as f64;
        if s.0 >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-s.0 / rate)
        }
    }

    /// Waits until `n` more bytes fit the cap (TCP).
    pub async fn take(&self, n: u64) {
        let rate = self.rate();
        if rate == 0 || n == 0 {
            return;
        }
        let wait = self.debit(n, rate);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }

    /// Whether `n` more bytes fit the cap right now (UDP: the caller drops what does not).
    pub fn try_take(&self, n: u64) -> bool {
        let rate = self.rate();
        if rate == 0 {
            return true;
        }
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        let burst = rate as f64 * BURST.as_secs_f64();
        s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * rate as f64).min(burst);
        s.1 = now;
        if s.0 >= n as f64 {
            s.0 -= n as f64;
            true
        } else {
            false
        }
    }
}

/// The two buckets of one client: toward its targets (up) and back (down).
#[derive(Debug)]
pub struct Caps {
    pub up: Bucket,
    pub down: Bucket,
}

impl Caps {
    pub fn new(bytes_per_sec: u64) -> Self {
        Self {
            up: Bucket::new(bytes_per_sec),
            down: Bucket::new(bytes_per_sec),
        }
    }

    pub fn set_rate(&self, bytes_per_sec: u64) {
        self.up.set_rate(bytes_per_sec);
        self.down.set_rate(bytes_per_sec);
    }
}

/// Megabits per second (as users write caps) to bytes per second.
pub fn mbps_to_bytes(mbps: f64) -> u64 {
    (mbps * 1_000_000.0 / 8.0).round() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn tcp_waits_for_its_share() {
        let b = Bucket::new(1_000_000);
        let start = tokio::time::Instant::now();
        for _ in 0..20 {
            b.take(100_000).await;
        }
        // 2 MB at 1 MB/s, less the first moment's burst allowance (none saved yet).
        let took = start.elapsed();
        assert!(
            took >= Duration::from_millis(1900) && took <= Duration::from_millis(2100),
            "{took:?}"
        );
    }

    #[test]
    fn udp_over_the_cap_is_refused_and_no_cap_refuses_nothing() {
        let b = Bucket::new(10_000);
        std::thread::sleep(Duration::from_millis(120));
        assert!(b.try_take(900), "saved-up burst");
        assert!(!b.try_take(900), "over the cap");
        let free = Bucket::new(0);
        assert!((0..1000).all(|_| free.try_take(65_000)));
    }
}
