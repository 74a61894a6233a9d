//! `porthole-labtool`: the NAT lab's helpers, run inside network namespaces.
//!
//! - `netem`: this kernel has no `sch_netem`, so delay and loss are emulated in user
//!   space: iptables sends a link's packets to an NFQUEUE, this program drops a share
//!   of them and releases the rest after a fixed delay.
//! - `echo`: TCP and UDP echo services (the "services behind the NAT").
//! - `tcp-check` / `udp-check`: reach a forwarded port, verify every byte, report timings
//!   as one JSON line.
//! - `share-check`: parallel bulk connections plus small probes (`share.rs`).
//! - `hold-check`: an interactive and a bulk connection held open across an outage,
//!   every byte verified (`hold.rs`).
//! - `lab`: builds the NAT lab's network (`porthole_labtool::lab`) with a shaped WAN path,
//!   prints where things are as one JSON line, and tears it down when stdin closes (the
//!   WAN benchmark, bench/wan.py, drives it).
//!
//! Deliberately small and synchronous (std threads, no async runtime): easy to reason about.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use porthole_labtool::lab;

mod hold;
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
        /// Each TCP connection stops reading for this long after echoing its first bytes
        /// (a stalled target: whatever the client sends meanwhile fills the tunnel's
        /// buffers behind it).
        #[arg(long, default_value_t = 0)]
        stall_ms: u64,
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
    /// Build the NAT lab (root): print its namespaces and addresses as one JSON line, keep
    /// it until stdin closes, then tear it down. Client behind NAT A, server behind NAT B.
    Lab {
        #[arg(long, default_value = "cone")]
        client_nat: lab::Nat,
        #[arg(long, default_value = "cone")]
        server_nat: lab::Nat,
        /// Delay on each NAT's uplink, i.e. each direction (RTT = 2 x this).
        #[arg(long, default_value_t = 0)]
        delay_ms: u64,
        /// Probability of dropping a packet on each NAT's uplink (0.0 - 1.0).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Bottleneck rate of each NAT's uplink (tbf); 0 = unshaped.
        #[arg(long, default_value_t = 0)]
        rate_mbit: u32,
        /// The bottleneck's queue, in milliseconds of traffic at its rate.
        #[arg(long, default_value_t = 50)]
        queue_ms: u32,
        /// GSO/GRO/TSO off on every link (a lost packet is one packet).
        #[arg(long)]
        offloads_off: bool,
        /// TCP ports on NAT B's public address forwarded to host B (repeatable).
        #[arg(long)]
        dnat_tcp: Vec<u16>,
        /// Kernel TCP send-buffer limit (net.ipv4.tcp_wmem's max, bytes) in every
        /// namespace; default: the kernel's.
        #[arg(long)]
        tcp_wmem_max: Option<u32>,
    },
    /// Hold an interactive connection (a line every INTERVAL_MS) and a bulk one (paced
    /// to BULK_MBIT) to an echo for SECONDS, verifying every byte. Prints the lines, the
    /// longest echo wait (ms) and the bulk bytes as one JSON line; fails on any reset,
    /// early EOF or altered byte.
    HoldCheck {
        addr: SocketAddr,
        #[arg(long, default_value_t = 40)]
        seconds: u64,
        #[arg(long, default_value_t = 200)]
        interval_ms: u64,
        /// 0: no bulk connection.
        #[arg(long, default_value_t = 20)]
        bulk_mbit: u32,
        /// Longest wait for an echo (must exceed the outage under test).
        #[arg(long, default_value_t = 120)]
        read_limit_s: u64,
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
        } => porthole_labtool::netem::run(queue, Duration::from_millis(delay_ms), loss)
            .map_err(|e| format!("netem: {e}").into()),
        Cmd::Echo { tcp, udp, stall_ms } => echo(tcp, udp, Duration::from_millis(stall_ms)),
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
        Cmd::HoldCheck {
            addr,
            seconds,
            interval_ms,
            bulk_mbit,
            read_limit_s,
        } => hold::hold_check(&hold::Hold {
            addr,
            duration: Duration::from_secs(seconds),
            interval: Duration::from_millis(interval_ms),
            bulk_mbit,
            read_limit: Duration::from_secs(read_limit_s),
        }),
        Cmd::UdpCheck {
            addr,
            size,
            count,
            timeout_s,
        } => udp_check(addr, size, count, Duration::from_secs(timeout_s)),
        Cmd::Lab {
            client_nat,
            server_nat,
            delay_ms,
            loss,
            rate_mbit,
            queue_ms,
            offloads_off,
            dnat_tcp,
            tcp_wmem_max,
        } => {
            let mut spec = lab::Spec::new(client_nat, server_nat);
            if delay_ms > 0 || loss > 0.0 {
                spec.impair = Some(lab::Impair { delay_ms, loss });
            }
            if rate_mbit > 0 {
                spec.rate = Some(lab::Rate {
                    mbit: rate_mbit,
                    queue_ms,
                });
            }
            spec.offloads_off = offloads_off;
            spec.server_dnat_tcp = dnat_tcp;
            spec.tcp_wmem_max = tcp_wmem_max;
            hold_lab(&spec)
        }
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

/// `lab`: build, report, hold until stdin closes, tear down (on drop).
fn hold_lab(spec: &lab::Spec) -> Result<()> {
    lab::available()?;
    let net = lab::Net::build(spec, &std::env::current_exe()?)?;
    let quoted: Vec<String> = net.impaired.iter().map(|n| format!("\"{n}\"")).collect();
    println!(
        "{{\"client\":\"{}\",\"server\":\"{}\",\"relay\":\"{}\",\"impaired\":[{}],\"relay_ip\":\"{}\",\"client_nat_ip\":\"{}\",\"server_nat_ip\":\"{}\",\"server_ip\":\"{}\"}}",
        net.a,
        net.b,
        net.relay,
        quoted.join(","),
        lab::RELAY_IP,
        lab::NAT_A_IP,
        lab::NAT_B_IP,
        lab::HOST_B_IP
    );
    std::io::stdout().flush()?;
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(net);
    Ok(())
}

fn echo(tcp: Option<SocketAddr>, udp: Option<SocketAddr>, stall: Duration) -> Result<()> {
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
                let mut first = true;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => {
                            if s.write_all(&buf[..n]).is_err() {
                                break;
                            }
                            if std::mem::take(&mut first) {
                                std::thread::sleep(stall);
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
    // Write the rest while reading the echo: with megabytes in flight, writing all of it
    // first would deadlock against an echo that cannot write back.
    let mut w = s.try_clone()?;
    let rest = data[1..].to_vec();
    let writer = std::thread::spawn(move || w.write_all(&rest));
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut back = vec![0u8; data.len() - 1];
    s.read_exact(&mut back)?;
    writer.join().map_err(|_| "the writer thread panicked")??;
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
