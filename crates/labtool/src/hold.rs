//! `hold-check`: do open connections survive an outage, with every byte intact?
//!
//! Two connections to an echo service run side by side for the whole check: an
//! interactive one (a short line every interval, like a shell session) and a paced bulk one
//! (a file transfer). Each verifies every echoed byte against what it sent, in order. The
//! longest wait for an interactive echo is what a user saw of an outage in the middle of
//! the check; a failed connection (reset, EOF, wrong byte) fails the check.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::{Result, pattern};

/// One interactive line: a sequence number, padded.
const LINE: usize = 64;
/// The bulk connection writes this much at a time, paced to its rate.
const BULK_CHUNK: usize = 16 * 1024;

pub struct Hold {
    pub addr: SocketAddr,
    pub duration: Duration,
    pub interval: Duration,
    pub bulk_mbit: u32,
    /// How long a read may wait (longer than any outage under test).
    pub read_limit: Duration,
}

/// Runs both connections; prints one JSON line.
pub fn hold_check(h: &Hold) -> Result<()> {
    let bulk = if h.bulk_mbit > 0 {
        let s = connect(h)?;
        let (duration, rate) = (h.duration, h.bulk_mbit);
        // Errors cross the thread as text (the crate's error type is not `Send`).
        Some(thread::spawn(move || {
            bulk(s, duration, rate).map_err(|e| e.to_string())
        }))
    } else {
        None
    };
    let (lines, max_gap) = interactive(connect(h)?, h.duration, h.interval)?;
    let bulk_bytes = match bulk {
        Some(t) => t.join().map_err(|_| "the bulk thread panicked")??,
        None => 0,
    };
    println!(
        "{{\"ok\":true,\"lines\":{lines},\"max_gap_ms\":{},\"bulk_bytes\":{bulk_bytes}}}",
        max_gap.as_millis()
    );
    Ok(())
}

fn connect(h: &Hold) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&h.addr, Duration::from_secs(5))?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(h.read_limit))?;
    Ok(s)
}

/// A line every `interval`, each echoed before the next goes out; returns the lines and
/// the longest round trip.
fn interactive(
    mut s: TcpStream,
    duration: Duration,
    interval: Duration,
) -> Result<(u64, Duration)> {
    let end = Instant::now() + duration;
    let (mut n, mut max_gap) = (0u64, Duration::ZERO);
    let mut back = [0u8; LINE];
    while Instant::now() < end {
        let mut line = [b'.'; LINE];
        let text = format!("line {n}");
        line[..text.len()].copy_from_slice(text.as_bytes());
        line[LINE - 1] = b'\n';
        let sent = Instant::now();
        s.write_all(&line)?;
        s.read_exact(&mut back)
            .map_err(|e| format!("interactive connection, line {n}: {e}"))?;
        if back != line {
            return Err(format!("interactive connection: line {n} came back altered").into());
        }
        max_gap = max_gap.max(sent.elapsed());
        n += 1;
        thread::sleep(interval.saturating_sub(sent.elapsed()));
    }
    Ok((n, max_gap))
}

/// Writes the pattern at `mbit` while reading the echo; returns the bytes verified.
fn bulk(s: TcpStream, duration: Duration, mbit: u32) -> Result<u64> {
    let mut w = s.try_clone()?;
    let data = pattern(BULK_CHUNK * 251);
    let per_chunk = Duration::from_secs_f64(BULK_CHUNK as f64 * 8.0 / (f64::from(mbit) * 1e6));
    let writer = thread::spawn(move || -> std::io::Result<u64> {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut i = 0usize;
        while start.elapsed() < duration {
            let at = (i * BULK_CHUNK) % data.len();
            w.write_all(&data[at..at + BULK_CHUNK])?;
            sent += BULK_CHUNK as u64;
            i += 1;
            thread::sleep((per_chunk * i as u32).saturating_sub(start.elapsed()));
        }
        w.shutdown(std::net::Shutdown::Write)?;
        Ok(sent)
    });
    let expected = pattern(BULK_CHUNK * 251);
    let mut r = s;
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0u64;
    loop {
        let n = r
            .read(&mut buf)
            .map_err(|e| format!("bulk connection after {got} bytes: {e}"))?;
        if n == 0 {
            break;
        }
        for (k, b) in buf[..n].iter().enumerate() {
            let at = (got as usize + k) % expected.len();
            if *b != expected[at] {
                return Err(format!("bulk connection: byte {} differs", got as usize + k).into());
            }
        }
        got += n as u64;
    }
    let sent = writer.join().map_err(|_| "the bulk writer panicked")??;
    if got != sent {
        return Err(format!("bulk connection: sent {sent} bytes, {got} came back").into());
    }
    Ok(got)
}
