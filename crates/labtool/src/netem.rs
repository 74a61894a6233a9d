//! `porthole-labtool netem`: this kernel has no `sch_netem`, so the lab delays and drops
//! packets in user space. iptables hands a link's packets to an NFQUEUE; a reader thread
//! drops a share of them at once and queues the rest with their release time; a releaser
//! thread lets every packet that is due go with one batch verdict. The delay is the same
//! for every packet, so releasing in arrival order is releasing on time.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::nfqueue::{IDLE_WAIT, Queue};

/// Packets the kernel may hold for us; at 500 Mbit/s and 75 ms that is ~3,200.
const QUEUE_MAX_LEN: u32 = 65_536;
/// Netlink receive buffer asked for (the kernel caps it at `net.core.rmem_max`).
const RCVBUF: usize = 8 << 20;

struct Line {
    held: Mutex<VecDeque<(Instant, u32)>>,
    arrived: Condvar,
}

/// Serves queue `num` until an error: each packet is dropped with probability `loss`,
/// else released `delay` after it arrived.
pub fn run(num: u16, delay: Duration, loss: f64) -> io::Result<()> {
    let mut early = Vec::new();
    let q = Arc::new(Queue::open(num, QUEUE_MAX_LEN, RCVBUF, &mut early)?);
    eprintln!("netem: queue {num}, delay {delay:?}, loss {loss}");
    let line = Arc::new(Line {
        held: Mutex::new(VecDeque::new()),
        arrived: Condvar::new(),
    });
    let releaser = {
        let (q, line) = (q.clone(), line.clone());
        std::thread::spawn(move || release(&q, &line))
    };
    let mut buf = Vec::new();
    let mut ids = early;
    loop {
        let now = Instant::now();
        let batch = ids.len();
        let mut kept = Vec::with_capacity(batch);
        for id in ids.drain(..) {
            if loss > 0.0 && random_f64() < loss {
                q.drop_packet(id)?;
            } else {
                // Released up to SLACK after it is due (see `release`): centred on `delay`.
                kept.push((now + delay.saturating_sub(SLACK / 2), id));
            }
        }
        let was_empty = {
            let mut held = lock(&line.held);
            let was_empty = held.is_empty();
            held.extend(kept);
            was_empty
        };
        // The releaser sleeps until its oldest packet is due; it needs waking only when
        // it had none.
        if was_empty {
            line.arrived.notify_one();
        }
        if releaser.is_finished() {
            return match releaser.join() {
                Ok(r) => r,
                Err(_) => Err(io::Error::other("the releaser thread panicked")),
            };
        }
        // A small batch: let a few more packets gather in the socket first (one system
        // call per packet cost a whole core at 500 Mbit/s). Arrival times shift by at
        // most this much; the order never changes.
        if batch < 32 {
            std::thread::sleep(SLACK);
        }
        q.recv(&mut buf, &mut ids)?;
    }
}

/// Granularity of the delay line: packets are stamped and released in batches up to
/// this far apart (~10 packets at 500 Mbit/s; small next to any delay worth emulating).
const SLACK: Duration = Duration::from_micros(200);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Releases due packets, one batch verdict per wake-up.
fn release(q: &Queue, line: &Line) -> io::Result<()> {
    let mut held = lock(&line.held);
    loop {
        let now = Instant::now();
        let mut last = None;
        while let Some(&(due, id)) = held.front() {
            if due > now {
                break;
            }
            last = Some(id);
            held.pop_front();
        }
        if let Some(id) = last {
            drop(held);
            q.accept_up_to(id)?;
            held = lock(&line.held);
            continue;
        }
        // Wake SLACK after the oldest packet is due, so that each wake-up releases a
        // batch rather than the one packet that just became due.
        let wait = held.front().map_or(IDLE_WAIT, |&(due, _)| {
            (due + SLACK).saturating_duration_since(now)
        });
        held = line
            .arrived
            .wait_timeout(held, wait)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

fn random_f64() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}
