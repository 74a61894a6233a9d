//! `porthole-labtool`: the NAT lab's helpers, run inside network namespaces.
//!
//! - `netem`: this kernel has no `sch_netem`, so delay and loss are emulated in user
//!   space: iptables sends a link's packets to an NFQUEUE, this program drops a share
//!   of them and releases the rest after a fixed delay.
//! - `echo`: TCP and UDP echo services (the "services behind the NAT").
//! - `tcp-check` / `udp-check`: reach a forwarded port, verify every byte, report timings
//!   as one JSON line.
//! - `share-check`: parallel bulk connections plus small probes (`share.rs`).
//!
//! Deliberately std-only (plus nfq): small, synchronous, easy to reason about.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

mod share;

#[derive(Parser)]
#[command(
    name = "porthole-labtool",
    about = "NAT lab helpers (run inside network namespaces)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Delay and drop the packets of an NFQUEUE.
    Netem {
        #[arg(long, default_value_t = 0)]
        queue: u16,
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Probability of dropping a packet (0.0 - 1.0).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
    },
    /// TCP and UDP echo on the given addresses.
    Echo {
        #[arg(long)]
        tcp: Option<SocketAddr>,
        #[arg(long)]
        udp: Option<SocketAddr>,
    },
    /// Connect (retrying until the deadline), send BYTES, expect them back.
    TcpCheck {
        addr: SocketAddr,
        #[arg(long, default_value_t = 65536)]
        bytes: usize,
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
    /// COUNT sequential connections, each: connect, send one byte, wait for the echo.
    /// Prints the median and 99th percentile in microseconds.
    ConnectRate {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1000)]
        count: usize,
    },
    /// STREAMS bulk echo connections for SECONDS, with one-byte round trips on fresh
    /// connections from half-time on. Prints each connection's echoed bytes and the
    /// probes' round trips (ms): do parallel transfers share the path, and does a small
    /// request still get through?
    ShareCheck {
        addr: SocketAddr,
        #[arg(long, default_value_t = 4)]
        streams: usize,
        #[arg(long, default_value_t = 8)]
        seconds: u64,
    },
    /// Send COUNT datagrams of SIZE bytes (retrying each), expect them back.
    UdpCheck {
        addr: SocketAddr,
        #[arg(long, default_value_t = 1200)]
        size: usize,
        #[arg(long, default_value_t = 10)]
        count: usize,
        #[arg(long, default_value_t = 60)]
        timeout_s: u64,
    },
}

fn main() -> ExitCode {
    let r = match Cli::parse().cmd {
        Cmd::Netem {
            queue,
            delay_ms,
            loss,
        } => netem(queue, Duration::from_millis(delay_ms), loss),
        Cmd::Echo { tcp, udp } => echo(tcp, udp),
        Cmd::ConnectRate { addr, count } => connect_rate(addr, count),
        Cmd::TcpCheck {
            addr,
            bytes,
            timeout_s,
        } => tcp_check(addr, bytes, Duration::from_secs(timeout_s)),
        Cmd::ShareCheck {
            addr,
            streams,
            seconds,
        } => share::share_check(addr, streams, Duration::from_secs(seconds)),
        Cmd::UdpCheck {
            addr,
            size,
            count,
            timeout_s,
        } => udp_check(addr, size, count, Duration::from_secs(timeout_s)),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("porthole-labtool: {e}");
            ExitCode::FAILURE
        }
    }
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn random_f64() -> f64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    (u64::from_le_bytes(b) >> 11) as f64 / (1u64 << 53) as f64
}

fn netem(queue_num: u16, delay: Duration, loss: f64) -> Result<()> {
    let mut q = nfq::Queue::open()?;
    q.bind(queue_num)?;
    q.set_queue_max_len(queue_num, 16384)?;
    q.set_fail_open(queue_num, true)?;
    q.set_nonblocking(true);
    eprintln!("netem: queue {queue_num}, delay {delay:?}, loss {loss}");
    let mut held: VecDeque<(Instant, nfq::Message)> = VecDeque::new();
    loop {
        loop {
            match q.recv() {
                Ok(mut msg) => {
                    if loss > 0.0 && random_f64() < loss {
                        msg.set_verdict(nfq::Verdict::Drop);
                        q.verdict(msg)?;
                    } else {
                        msg.set_verdict(nfq::Verdict::Accept);
                        held.push_back((Instant::now() + delay, msg));
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return Err(e.into()),
            }
        }
        let now = Instant::now();
        while held.front().is_some_and(|(t, _)| *t <= now) {
            if let Some((_, msg)) = held.pop_front() {
                q.verdict(msg)?;
            }
        }
        std::thread::sleep(Duration::from_micros(300));
    }
}

fn echo(tcp: Option<SocketAddr>, udp: Option<SocketAddr>) -> Result<()> {
    if let Some(u) = udp {
        let s = UdpSocket::bind(u)?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        });
    }
    if let Some(t) = tcp {
        let l = TcpListener::bind(t)?;
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                    }
                }
            });
        }
    }
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn connect_rate(addr: SocketAddr, count: usize) -> Result<()> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let mut s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.write_all(b"x")?;
        let mut b = [0u8; 1];
        s.read_exact(&mut b)?;
        samples.push(t.elapsed().as_micros() as u64);
    }
    samples.sort_unstable();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{{\"ok\":true,\"median_us\":{},\"p99_us\":{},\"count\":{count}}}",
        at(0.5),
        at(0.99)
    );
    Ok(())
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 31 % 251) as u8).collect()
}

fn tcp_check(addr: SocketAddr, bytes: usize, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let data = pattern(bytes);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match tcp_once(addr, &data, start) {
            Ok(ttfb) => {
                println!(
                    "{{\"ok\":true,\"ttfb_ms\":{},\"total_ms\":{},\"attempts\":{attempts}}}",
                    ttfb.as_millis(),
                    start.elapsed().as_millis()
                );
                return Ok(());
            }
            Err(e) if start.elapsed() < limit => {
                eprintln!("tcp-check attempt {attempts}: {e}");
                std::thread::sleep(Duration::from_millis(250));
            }
            Err(e) => return Err(format!("no echo from {addr} within {limit:?}: {e}").into()),
        }
    }
}

/// One connection: returns the time from the check's start to the first echoed byte.
fn tcp_once(addr: SocketAddr, data: &[u8], start: Instant) -> Result<Duration> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    s.write_all(&data[..1])?;
    let mut first = [0u8; 1];
    s.read_exact(&mut first)?;
    let ttfb = start.elapsed();
    if first[0] != data[0] {
        return Err("wrong first byte".into());
    }
    s.write_all(&data[1..])?;
    let mut back = vec![0u8; data.len() - 1];
    s.read_exact(&mut back)?;
    if back != data[1..] {
        return Err("echoed bytes differ".into());
    }
    Ok(ttfb)
}

fn udp_check(addr: SocketAddr, size: usize, count: usize, limit: Duration) -> Result<()> {
    let start = Instant::now();
    let any: SocketAddr = if addr.is_ipv4() {
        ([0, 0, 0, 0], 0).into()
    } else {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let s = UdpSocket::bind(any)?;
    s.connect(addr)?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    let mut buf = vec![0u8; 65536];
    let mut first_ms = None;
    for i in 0..count {
        let mut payload = pattern(size);
        payload[0] = i as u8;
        loop {
            if start.elapsed() > limit {
                return Err(format!(
                    "datagram {i} of {count} ({size} bytes) never echoed within {limit:?}"
                )
                .into());
            }
            s.send(&payload)?;
            match s.recv(&mut buf) {
                Ok(n) if buf[..n] == payload[..] => {
                    first_ms.get_or_insert(start.elapsed().as_millis());
                    break;
                }
                Ok(_) => return Err("an echoed datagram differs from what was sent".into()),
                Err(_) => continue,
            }
        }
    }
    println!(
        "{{\"ok\":true,\"first_ms\":{},\"total_ms\":{}}}",
        first_ms.unwrap_or_default(),
        start.elapsed().as_millis()
    );
    Ok(())
}
