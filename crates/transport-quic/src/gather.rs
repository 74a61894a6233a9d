//! Address candidates for manual mode, gathered on the socket QUIC will use.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use porthole_engine::direct_paths::{PathGuard, PathRules};
use porthole_proto::blob::{Candidate, CandidateKind, MAX_CANDIDATES, NatKind};
use tokio::net::UdpSocket;
use tracing::{info, warn};

use crate::stun;

/// Local interface addresses with the socket's port. A socket bound to a specific
/// address offers only that one; one bound to the wildcard offers every non-loopback
/// IPv4 interface.
/// Addresses on tunnel interfaces (and any the rules refuse) are left out.
pub fn host_candidates(socket: &UdpSocket, rules: &PathRules) -> Vec<Candidate> {
    let guard = PathGuard::new(rules.clone());
    let Ok(local) = socket.local_addr() else {
        return Vec::new();
    };
    let ips: Vec<IpAddr> = if local.ip().is_unspecified() {
        match if_addrs::get_if_addrs() {
            Ok(ifs) => ifs
                .into_iter()
                .map(|i| i.ip())
                .filter(|ip| ip.is_ipv4() && !ip.is_loopback())
                .collect(),
            Err(e) => {
                warn!("cannot list network interfaces: {e}");
                Vec::new()
            }
        }
    } else {
        vec![local.ip()]
    };
    ips.into_iter()
        .filter(|ip| guard.advertise(*ip))
        .map(|ip| Candidate {
            addr: SocketAddr::new(ip, local.port()),
            kind: CandidateKind::Host,
        })
        .collect()
}

/// Host candidates plus what the STUN servers see, and the NAT behaviour that implies:
/// two servers reporting different public ports mean an endpoint-dependent NAT.
pub async fn gather(
    socket: &UdpSocket,
    stun_servers: &[SocketAddr],
    rules: &PathRules,
) -> (Vec<Candidate>, NatKind) {
    let mut candidates = host_candidates(socket, rules);
    if stun_servers.is_empty() {
        return (candidates, NatKind::Unknown);
    }
    let seen: Vec<SocketAddr> = stun::bindings(socket, stun_servers, Duration::from_secs(3))
        .await
        .into_iter()
        .flatten()
        .collect();
    if seen.is_empty() {
        warn!("no STUN server answered ({stun_servers:?}): offering local addresses only");
        return (candidates, NatKind::Unknown);
    }
    let nat = classify(&candidates, &seen);
    for addr in seen {
        if !candidates.iter().any(|c| c.addr == addr) {
            candidates.push(Candidate {
                addr,
                kind: CandidateKind::ServerReflexive,
            });
        }
    }
    candidates.truncate(MAX_CANDIDATES);
    info!(%nat, "gathered {} candidate(s)", candidates.len());
    (candidates, nat)
}

fn classify(host: &[Candidate], seen: &[SocketAddr]) -> NatKind {
    if seen.iter().all(|s| host.iter().any(|h| h.addr == *s)) {
        return NatKind::Open;
    }
    if seen.len() < 2 {
        return NatKind::Unknown;
    }
    if seen.iter().all(|s| *s == seen[0]) {
        NatKind::EndpointIndependent
    } else {
        NatKind::EndpointDependent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(a: &str) -> Candidate {
        Candidate {
            addr: a.parse().unwrap(),
            kind: CandidateKind::Host,
        }
    }

    #[test]
    fn nat_kinds() {
        let host = [c("10.0.0.2:5000")];
        let s = |a: &str| a.parse::<SocketAddr>().unwrap();
        assert_eq!(classify(&host, &[s("10.0.0.2:5000")]), NatKind::Open);
        assert_eq!(classify(&host, &[s("198.51.100.1:7000")]), NatKind::Unknown);
        assert_eq!(
            classify(&host, &[s("198.51.100.1:7000"), s("198.51.100.1:7000")]),
            NatKind::EndpointIndependent
        );
        assert_eq!(
            classify(&host, &[s("198.51.100.1:7000"), s("198.51.100.1:7004")]),
            NatKind::EndpointDependent
        );
    }

    #[tokio::test]
    async fn gathers_on_loopback() {
        let stun_sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let stun_addr = stun_sock.local_addr().unwrap();
        let t = tokio::spawn(stun::respond(stun_sock));
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (cands, nat) = gather(&s, &[stun_addr], &PathRules::default()).await;
        assert_eq!(nat, NatKind::Open);
        assert_eq!(cands, vec![c(&s.local_addr().unwrap().to_string())]);
        t.abort();
    }
}
