//! `share-check`: do parallel bulk connections share a tunnel, and does a small request
//! still get through while they run?
//!
//! A tunnel that sends its streams one after the other (first come, first served) lets
//! the first bulk connections take the whole path on a slow link: later ones move nothing
//! for as long as the first keep sending, and a new interactive connection can wait behind
//! them. This check measures both, against an echo service.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Result, pattern};

/// Echo round trips measured while the bulk connections run.
const PROBES: usize = 3;
/// A probe that waits longer than this counts as stalled (and ends the wait).
const PROBE_LIMIT: Duration = Duration::from_secs(20);

/// Runs `streams` bulk echo connections for `duration`, probing with one-byte round trips
/// on fresh connections from the middle of the run on. Prints each connection's echoed
/// bytes and each probe's round trip in milliseconds as one JSON line.
pub fn share_check(addr: SocketAddr, streams: usize, duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    let mut echoed = Vec::with_capacity(streams);
    let mut sockets = Vec::with_capacity(streams);
    for _ in 0..streams {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
        let count = Arc::new(AtomicU64::new(0));
        spawn_bulk(&s, deadline, Arc::clone(&count))?;
        echoed.push(count);
        sockets.push(s);
    }

    thread::sleep(duration / 2);
    let mut probes_ms = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        let t = Instant::now();
        let ok = probe(addr).is_ok();
        let ms = if ok { t.elapsed() } else { PROBE_LIMIT }.as_millis();
        probes_ms.push(ms);
        if !ok || Instant::now() >= deadline {
            break;
        }
    }
    thread::sleep(deadline.saturating_duration_since(Instant::now()));

    let bytes: Vec<u64> = echoed.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    for s in &sockets {
        let _ = s.shutdown(Shutdown::Both);
    }
    println!(
        "{{\"ok\":true,\"echoed\":{bytes:?},\"probe_ms\":{probes_ms:?},\"seconds\":{}}}",
        duration.as_secs_f64()
    );
    Ok(())
}

/// One bulk connection: a writer sending until the deadline, a reader counting the echo.
fn spawn_bulk(s: &TcpStream, deadline: Instant, count: Arc<AtomicU64>) -> Result<()> {
    let mut w = s.try_clone()?;
    let mut r = s.try_clone()?;
    w.set_write_timeout(Some(Duration::from_millis(500)))?;
    thread::spawn(move || {
        let chunk = pattern(16 * 1024);
        while Instant::now() < deadline {
            match w.write(&chunk) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => break,
            }
        }
    });
    thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = r.read(&mut buf) {
            if n == 0 {
                break;
            }
            count.fetch_add(n as u64, Ordering::Relaxed);
        }
    });
    Ok(())
}

/// A fresh connection: one byte out, the same byte back.
fn probe(addr: SocketAddr) -> Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, PROBE_LIMIT)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(PROBE_LIMIT))?;
    s.write_all(b"p")?;
    let mut b = [0u8; 1];
    s.read_exact(&mut b)?;
    if b != *b"p" {
        return Err("the probe's echo differs".into());
    }
    Ok(())
}
