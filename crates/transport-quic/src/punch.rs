//! Hole punching: both sides probe every candidate pair at once; the client picks the
//! first pair that answers and tells the server, whose socket then goes to quinn.
//!
//! Against an endpoint-dependent ("symmetric") NAT on one side only, plain punching
//! cannot work: that side's public port for us is unknown in advance. Two remedies run
//! together:
//! - **birthday**: the symmetric side opens many sockets, each sending to the other
//!   side's public address (each opens its own mapping), while the other side sprays
//!   probes at random ports of the symmetric side's public IP. With 256 sockets and
//!   ~2000 probes/s over ~64k ports, a hit is expected within a second or two;
//! - **port prediction**: when the symmetric side's STUN mappings moved by a small
//!   constant step, the next ports in that sequence are probed first.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use porthole_proto::blob::{Candidate, CandidateKind, NatKind};
use porthole_proto::probe::{Probe, ProbeType};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, info};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Client,
    Server,
}

#[derive(Debug, Clone)]
pub struct PunchPlan {
    pub role: Role,
    pub session_id: [u8; 16],
    pub local_nat: NatKind,
    pub remote_nat: NatKind,
    pub remote: Vec<Candidate>,
    pub timeout: Duration,
    /// Extra sockets opened when we are the symmetric side.
    pub birthday_sockets: usize,
    /// Random ports probed per 25 ms when the peer is the symmetric side.
    pub spray_per_tick: usize,
}

impl PunchPlan {
    pub fn new(
        role: Role,
        session_id: [u8; 16],
        local_nat: NatKind,
        remote_nat: NatKind,
        remote: Vec<Candidate>,
    ) -> Self {
        Self {
            role,
            session_id,
            local_nat,
            remote_nat,
            remote,
            timeout: Duration::from_secs(match role {
                Role::Client => 30,
                Role::Server => 120,
            }),
            birthday_sockets: 256,
            spray_per_tick: 48,
        }
    }
}

/// How the chosen pair was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// A candidate from the peer's blob answered (local interface or STUN address).
    Candidate(CandidateKind),
    /// An address not in the blob answered (a NAT mapping learned from its probes).
    PeerReflexive,
    /// A predicted port of a sequential symmetric NAT.
    Predicted,
    /// One of many sockets / sprayed ports met (symmetric NAT).
    Birthday,
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Method::Candidate(CandidateKind::Host) => "host candidate",
            Method::Candidate(CandidateKind::ServerReflexive) => {
                "STUN (server-reflexive) candidate"
            }
            Method::PeerReflexive => "peer-reflexive address",
            Method::Predicted => "port prediction",
            Method::Birthday => "birthday probing",
        })
    }
}

#[derive(Debug)]
pub struct Punched {
    pub socket: std::net::UdpSocket,
    pub remote: SocketAddr,
    pub method: Method,
    pub elapsed: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum PunchError {
    #[error(
        "no candidate pair answered within {0:?}: UDP may be blocked, or both sides are behind symmetric NATs (peers: {1}); use iroh mode, whose relay always works"
    )]
    Timeout(Duration, String),
    #[error("the peer offered no candidate of our address family")]
    NoCandidates,
    #[error("socket")]
    Io(#[from] std::io::Error),
}

enum Event {
    Probe(Probe),
    /// A QUIC long-header packet: the client already started QUIC on this pair.
    Quic,
}

/// Runs the punching protocol on `main` (plus birthday sockets) until a pair is chosen.
pub async fn punch(main: UdpSocket, plan: PunchPlan) -> Result<Punched, PunchError> {
    let started = Instant::now();
    let local = main.local_addr()?;
    let remote: Vec<Candidate> = plan
        .remote
        .iter()
        .copied()
        .filter(|c| c.addr.is_ipv4() == local.is_ipv4())
        .collect();
    if remote.is_empty() {
        return Err(PunchError::NoCandidates);
    }
    let mut sockets: Vec<Arc<UdpSocket>> = vec![Arc::new(main)];
    let birthday_local = plan.local_nat == NatKind::EndpointDependent
        && plan.remote_nat != NatKind::EndpointDependent;
    let spray = plan.remote_nat == NatKind::EndpointDependent
        && plan.local_nat != NatKind::EndpointDependent;
    if birthday_local {
        for _ in 0..plan.birthday_sockets {
            match UdpSocket::bind(SocketAddr::new(local.ip(), 0)).await {
                Ok(s) => sockets.push(Arc::new(s)),
                Err(e) => {
                    debug!("birthday socket: {e}");
                    break;
                }
            }
        }
        info!("symmetric NAT here: probing from {} sockets", sockets.len());
    }
    let reflexive: Vec<SocketAddr> = remote
        .iter()
        .filter(|c| c.kind == CandidateKind::ServerReflexive)
        .map(|c| c.addr)
        .collect();
    let predicted = predict(&reflexive);
    let spray_ips: Vec<IpAddr> = {
        let mut v: Vec<IpAddr> = reflexive.iter().map(|a| a.ip()).collect();
        v.dedup();
        v
    };
    if spray {
        info!("symmetric NAT on the peer's side: spraying ports of {spray_ips:?}");
    }

    let (tx, mut rx) = mpsc::channel::<(usize, SocketAddr, Event)>(4096);
    let mut readers = JoinSet::new();
    for (i, s) in sockets.iter().enumerate() {
        readers.spawn(read_loop(i, s.clone(), plan.session_id, tx.clone()));
    }
    drop(tx);

    let send = |s: &UdpSocket, kind: ProbeType, to: SocketAddr| {
        let p = Probe {
            kind,
            session_id: plan.session_id,
            nonce: 0,
        }
        .encode();
        let _ = s.try_send_to(&p, to);
    };
    let mut rng = Rng::new();
    let mut probe_tick = tokio::time::interval(Duration::from_millis(100));
    let mut spray_tick = tokio::time::interval(Duration::from_millis(25));
    let deadline = tokio::time::sleep(plan.timeout);
    tokio::pin!(deadline);
    let mut ticks: u64 = 0;
    let mut selected: Option<(usize, SocketAddr, Instant)> = None;
    let mut seen_from: HashSet<SocketAddr> = HashSet::new();

    let chosen = loop {
        tokio::select! {
            _ = &mut deadline => {
                readers.abort_all();
                return Err(PunchError::Timeout(plan.timeout, format!("local {}, remote {}", plan.local_nat, plan.remote_nat)));
            }
            _ = probe_tick.tick() => {
                ticks += 1;
                for c in &remote {
                    send(&sockets[0], ProbeType::Probe, c.addr);
                }
                if ticks <= 50 {
                    for p in &predicted {
                        send(&sockets[0], ProbeType::Probe, *p);
                    }
                }
                // Birthday sockets refresh their mappings towards the peer every 300 ms.
                if birthday_local && ticks % 3 == 1 {
                    for s in &sockets[1..] {
                        for r in &reflexive {
                            send(s, ProbeType::Probe, *r);
                        }
                    }
                }
                if let Some((i, to, since)) = selected {
                    // Resend the choice until confirmed; after a second without an
                    // answer, assume the server switched and let QUIC confirm it.
                    if since.elapsed() > Duration::from_secs(1) {
                        break (i, to);
                    }
                    send(&sockets[i], ProbeType::Select, to);
                }
            }
            _ = spray_tick.tick(), if spray => {
                for _ in 0..plan.spray_per_tick {
                    let port = rng.port();
                    for ip in &spray_ips {
                        send(&sockets[0], ProbeType::Probe, SocketAddr::new(*ip, port));
                    }
                }
            }
            ev = rx.recv() => {
                let Some((i, from, ev)) = ev else { continue };
                if seen_from.insert(from) {
                    debug!("first packet from {from} on socket {i}");
                }
                match (ev, plan.role) {
                    (Event::Probe(p), role) => match (p.kind, role) {
                        (ProbeType::Probe, _) => {
                            send(&sockets[i], ProbeType::Ack, from);
                            send(&sockets[i], ProbeType::Probe, from);
                        }
                        (ProbeType::Ack, Role::Client) if selected.is_none() => {
                            selected = Some((i, from, Instant::now()));
                            send(&sockets[i], ProbeType::Select, from);
                        }
                        (ProbeType::Select, Role::Server) => {
                            for _ in 0..3 {
                                send(&sockets[i], ProbeType::SelectAck, from);
                            }
                            break (i, from);
                        }
                        (ProbeType::SelectAck, Role::Client) if selected.is_some_and(|(si, sf, _)| si == i && sf == from) => {
                            break (i, from);
                        }
                        _ => {}
                    },
                    (Event::Quic, Role::Server) => break (i, from),
                    (Event::Quic, Role::Client) => {}
                }
            }
        }
    };

    readers.abort_all();
    while readers.join_next().await.is_some() {}
    let (i, to) = chosen;
    let method = if i > 0 {
        Method::Birthday
    } else if let Some(c) = remote.iter().find(|c| c.addr == to) {
        Method::Candidate(c.kind)
    } else if predicted.contains(&to) {
        Method::Predicted
    } else if spray && spray_ips.contains(&to.ip()) {
        Method::Birthday
    } else {
        Method::PeerReflexive
    };
    let socket = sockets.swap_remove(i);
    drop(sockets);
    let socket = Arc::try_unwrap(socket)
        .map_err(|_| std::io::Error::other("punch socket still shared"))?
        .into_std()?;
    Ok(Punched {
        socket,
        remote: to,
        method,
        elapsed: started.elapsed(),
    })
}

async fn read_loop(
    i: usize,
    socket: Arc<UdpSocket>,
    session: [u8; 16],
    tx: mpsc::Sender<(usize, SocketAddr, Event)>,
) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, from)) = socket.recv_from(&mut buf).await else {
            continue;
        };
        let ev = if let Some(p) = Probe::decode(&buf[..n], &session) {
            Event::Probe(p)
        } else if n >= 1200 && buf[0] & 0xc0 == 0xc0 {
            Event::Quic
        } else {
            continue;
        };
        if tx.send((i, from, ev)).await.is_err() {
            return;
        }
    }
}

/// Next ports of a sequential symmetric NAT: if its mappings moved by a small constant
/// step, continue the sequence.
pub fn predict(reflexive: &[SocketAddr]) -> Vec<SocketAddr> {
    let [.., a, b] = reflexive else {
        return Vec::new();
    };
    if a.ip() != b.ip() {
        return Vec::new();
    }
    let step = b.port() as i32 - a.port() as i32;
    if step == 0 || step.abs() > 32 {
        return Vec::new();
    }
    (1..=64)
        .filter_map(|k| {
            let p = b.port() as i32 + step * k;
            (1..=65535)
                .contains(&p)
                .then(|| SocketAddr::new(b.ip(), p as u16))
        })
        .collect()
}

/// xorshift, seeded from the OS: only used to pick ports to spray. Predictable ports
/// cost nothing but spread (the probes are authenticated), so without OS randomness
/// the clock seeds it.
struct Rng(u64);

impl Rng {
    fn new() -> Self {
        let mut b = [0u8; 8];
        if getrandom::fill(&mut b).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(0x9e37_79b9_7f4a_7c15);
            b = nanos.to_le_bytes();
        }
        Self(u64::from_le_bytes(b) | 1)
    }

    fn port(&mut self) -> u16 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        1024 + (self.0 % (65536 - 1024)) as u16
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prediction_follows_small_steps_only() {
        let a = |p: u16| SocketAddr::from(([198, 51, 100, 1], p));
        assert_eq!(
            &predict(&[a(5000), a(5002)])[..3],
            &[a(5004), a(5006), a(5008)]
        );
        assert!(predict(&[a(5000), a(45000)]).is_empty());
        assert!(predict(&[a(5000)]).is_empty());
        assert!(predict(&[a(5000), a(5000)]).is_empty());
    }

    #[tokio::test]
    async fn two_loopback_sockets_punch() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let sid = [5; 16];
        let host = |addr| {
            vec![Candidate {
                addr,
                kind: CandidateKind::Host,
            }]
        };
        let client = punch(
            a,
            PunchPlan::new(
                Role::Client,
                sid,
                NatKind::Unknown,
                NatKind::Unknown,
                host(ba),
            ),
        );
        let server = punch(
            b,
            PunchPlan::new(
                Role::Server,
                sid,
                NatKind::Unknown,
                NatKind::Unknown,
                host(aa),
            ),
        );
        let (c, s) = tokio::join!(client, server);
        let (c, s) = (c.unwrap(), s.unwrap());
        assert_eq!(c.remote, ba);
        assert_eq!(s.remote, aa);
        assert_eq!(c.method, Method::Candidate(CandidateKind::Host));
    }

    #[tokio::test]
    async fn other_sessions_are_ignored_and_time_out() {
        let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (aa, ba) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let host = |addr| {
            vec![Candidate {
                addr,
                kind: CandidateKind::Host,
            }]
        };
        let mut pa = PunchPlan::new(
            Role::Client,
            [1; 16],
            NatKind::Unknown,
            NatKind::Unknown,
            host(ba),
        );
        let mut pb = PunchPlan::new(
            Role::Server,
            [2; 16],
            NatKind::Unknown,
            NatKind::Unknown,
            host(aa),
        );
        pa.timeout = Duration::from_millis(600);
        pb.timeout = Duration::from_millis(600);
        let (c, s) = tokio::join!(punch(a, pa), punch(b, pb));
        assert!(matches!(c, Err(PunchError::Timeout(..))));
        assert!(matches!(s, Err(PunchError::Timeout(..))));
    }
}
