//! The server's allow-list: which addresses a client may ask to reach, per protocol.
//!
//! Rules are CIDRs with an optional port restriction: `10.0.0.0/8`, `10.0.0.0/8:5432`,
//! `127.0.0.1/32:8000-8100`, `::1/128`, `fd00::/8:22`. An empty list refuses the
//! protocol entirely (never "allow all"). IPv4-mapped IPv6 addresses
//! (`::ffff:10.0.0.1`) are matched, and dialed, as the IPv4 address they carry.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use ipnet::IpNet;
use porthole_proto::message::RejectReason;
use porthole_proto::source::{Host, Protocol, Source};

/// One allow rule: a network and an optional port range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowRule {
    pub net: IpNet,
    pub ports: Option<RangeInclusive<u16>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid allow rule {rule:?}: {why} (examples: 10.0.0.0/8, 127.0.0.1/32:8000-8100, ::1/128:22)"
)]
pub struct RuleError {
    pub rule: String,
    pub why: String,
}

impl AllowRule {
    pub fn matches(&self, addr: SocketAddr) -> bool {
        let ip = canonical_ip(addr.ip());
        let net_ok = match (self.net, ip) {
            (IpNet::V4(n), IpAddr::V4(a)) => n.contains(&a),
            (IpNet::V6(n), IpAddr::V6(a)) => n.contains(&a),
            _ => false,
        };
        net_ok && self.ports.as_ref().is_none_or(|r| r.contains(&addr.port()))
    }
}

impl fmt::Display for AllowRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.net)?;
        match &self.ports {
            Some(r) if r.start() == r.end() => write!(f, ":{}", r.start()),
            Some(r) => write!(f, ":{}-{}", r.start(), r.end()),
            None => Ok(()),
        }
    }
}

impl std::str::FromStr for AllowRule {
    type Err = RuleError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let err = |why: &str| RuleError {
            rule: s.to_string(),
            why: why.to_string(),
        };
        // The port part, if any, follows the prefix length: "<net>/<len>[:ports]".
        let (net_str, ports_str) = match s.split_once('/') {
            Some((addr, rest)) => match rest.split_once(':') {
                Some((len, ports)) => (format!("{addr}/{len}"), Some(ports)),
                None => (s.to_string(), None),
            },
            None => {
                // A bare address is a single host.
                let ip: IpAddr = s
                    .parse()
                    .map_err(|_| err("expected a CIDR like 10.0.0.0/8 or a single IP address"))?;
                let len = if ip.is_ipv4() { 32 } else { 128 };
                (format!("{ip}/{len}"), None)
            }
        };
        let net: IpNet = net_str
            .parse()
            .map_err(|_| err("not a valid CIDR network"))?;
        if net.trunc() != net {
            return Err(err(&format!(
                "host bits are set; did you mean {}?",
                net.trunc()
            )));
        }
        // A v4-mapped v6 network is written as the v4 network it means.
        let net = match net {
            IpNet::V6(n) => match n.addr().to_ipv4_mapped() {
                Some(v4) if n.prefix_len() >= 96 => IpNet::new(IpAddr::V4(v4), n.prefix_len() - 96)
                    .map_err(|_| err("invalid IPv4-mapped network"))?,
                _ => IpNet::V6(n),
            },
            v4 => v4,
        };
        let ports = match ports_str {
            None => None,
            Some(p) => Some(parse_ports(p).ok_or_else(|| {
                err("ports must be PORT or FIRST-LAST with 1 <= FIRST <= LAST <= 65535")
            })?),
        };
        Ok(Self { net, ports })
    }
}

fn parse_ports(p: &str) -> Option<RangeInclusive<u16>> {
    let one = |x: &str| x.trim().parse::<u16>().ok().filter(|&n| n > 0);
    let (a, b) = match p.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => {
            let n = one(p)?;
            (n, n)
        }
    };
    (a <= b).then_some(a..=b)
}

/// An IPv4-mapped IPv6 address becomes the IPv4 address it carries.
pub fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical_ip(addr.ip()), addr.port())
}

/// The rules of one protocol.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowList(pub Vec<AllowRule>);

impl AllowList {
    pub fn parse<S: AsRef<str>>(rules: &[S]) -> Result<Self, RuleError> {
        rules
            .iter()
            .map(|r| r.as_ref().parse())
            .collect::<Result<_, _>>()
            .map(Self)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn allows(&self, addr: SocketAddr) -> bool {
        self.0.iter().any(|r| r.matches(addr))
    }
}

impl fmt::Display for AllowList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("(none)");
        }
        let parts: Vec<String> = self.0.iter().map(|r| r.to_string()).collect();
        f.write_str(&parts.join(", "))
    }
}

/// Allow-lists for both protocols.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    pub tcp: AllowList,
    pub udp: AllowList,
}

/// Where clients may publish: `--allowed-bind-tcp` / `--allowed-bind-udp` (addresses
/// and ports) and `--allowed-bind-name` (names on a shared TCP port). Empty lists
/// mean no client may publish anything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindRules {
    pub tcp: AllowList,
    pub udp: AllowList,
    /// Exact names or `*.example.com` (any name under it).
    pub names: Vec<String>,
}

impl BindRules {
    /// Whether a client may publish `bind` (and `name` on it).
    pub fn check(&self, bind: &Source, name: Option<&str>) -> Result<SocketAddr, Refusal> {
        let refuse = |reason, detail: String| Refusal { reason, detail };
        let Host::Ip(ip) = bind.host else {
            return Err(refuse(
                RejectReason::InvalidSource,
                format!("{bind}: publish on an IP address (e.g. 0.0.0.0), not a name"),
            ));
        };
        let addr = SocketAddr::new(ip, bind.port);
        let list = match bind.protocol {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        };
        if !list.allows(addr) {
            return Err(refuse(
                RejectReason::BindNotAllowed,
                format!(
                    "{bind} is outside the server's --allowed-bind-{} rules ({list})",
                    bind.protocol
                ),
            ));
        }
        if let Some(name) = name {
            if bind.protocol == Protocol::Udp {
                return Err(refuse(
                    RejectReason::InvalidSource,
                    "names route TCP only (TLS SNI / HTTP Host)".into(),
                ));
            }
            if !self
                .names
                .iter()
                .any(|r| porthole_proto::sniff::name_matches(r, name))
            {
                return Err(refuse(
                    RejectReason::NameNotAllowed,
                    format!("{name} is outside the server's --allowed-bind-name rules"),
                ));
            }
        }
        Ok(addr)
    }
}

/// A source the policy accepted: the exact addresses the server will dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub source: Source,
    pub addrs: Vec<SocketAddr>,
}

/// A refusal with a reason the client can show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: RejectReason,
    pub detail: String,
}

impl Policy {
    pub fn list(&self, protocol: Protocol) -> &AllowList {
        match protocol {
            Protocol::Tcp => &self.tcp,
            Protocol::Udp => &self.udp,
        }
    }

    /// Resolves `source` once and keeps only the addresses inside the allow-list; the
    /// server later dials exactly these (no second lookup, so DNS cannot change the
    /// answer after the check).
    pub async fn resolve(&self, source: &Source, timeout: Duration) -> Result<Resolved, Refusal> {
        let list = self.list(source.protocol);
        if list.is_empty() {
            return Err(Refusal {
                reason: RejectReason::ProtocolDisabled,
                detail: format!("the server allows no {} sources", source.protocol),
            });
        }
        let candidates: Vec<SocketAddr> = match &source.host {
            Host::Ip(ip) => vec![SocketAddr::new(*ip, source.port)],
            Host::Name(name) => {
                let lookup = tokio::net::lookup_host((name.as_str(), source.port));
                match tokio::time::timeout(timeout, lookup).await {
                    Ok(Ok(addrs)) => addrs.collect(),
                    Ok(Err(e)) => {
                        return Err(Refusal {
                            reason: RejectReason::ResolveFailed,
                            detail: format!("{name}: {e}"),
                        });
                    }
                    Err(_) => {
                        return Err(Refusal {
                            reason: RejectReason::ResolveFailed,
                            detail: format!("{name}: lookup timed out"),
                        });
                    }
                }
            }
        };
        let mut allowed: Vec<SocketAddr> = Vec::new();
        for a in candidates.iter().copied().map(canonical) {
            if list.allows(a) && !allowed.contains(&a) {
                allowed.push(a);
            }
        }
        if allowed.is_empty() {
            let seen: Vec<String> = candidates
                .iter()
                .map(|a| canonical(*a).to_string())
                .collect();
            let what = match &source.host {
                Host::Ip(_) => seen.join(", "),
                Host::Name(n) => format!(
                    "{n} ({})",
                    if seen.is_empty() {
                        "no addresses".into()
                    } else {
                        seen.join(", ")
                    }
                ),
            };
            return Err(Refusal {
                reason: RejectReason::NotAllowed,
                detail: format!(
                    "{what} is outside the server's {} allow-list",
                    source.protocol
                ),
            });
        }
        Ok(Resolved {
            source: source.clone(),
            addrs: allowed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> AllowRule {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn rules_parse_and_match() {
        let r = rule("10.0.0.0/8");
        assert!(r.matches(sa("10.1.2.3:22")));
        assert!(!r.matches(sa("11.0.0.1:22")));
        let r = rule("127.0.0.1/32:8000-8100");
        assert!(r.matches(sa("127.0.0.1:8050")));
        assert!(!r.matches(sa("127.0.0.1:22")));
        let r = rule("::1/128:22");
        assert!(r.matches(sa("[::1]:22")) && !r.matches(sa("[::1]:23")));
        let r = rule("fd00::/8");
        assert!(r.matches(sa("[fd12::1]:1")));
        assert!(!r.matches(sa("10.0.0.1:1")));
        assert_eq!(rule("192.168.1.10"), rule("192.168.1.10/32"));
        assert_eq!(rule("10.0.0.0/8:5432").to_string(), "10.0.0.0/8:5432");
    }

    #[test]
    fn mapped_addresses_match_as_ipv4() {
        let r = rule("10.0.0.0/8");
        assert!(r.matches(sa("[::ffff:10.0.0.1]:80")));
        assert!(!r.matches(sa("[::ffff:11.0.0.1]:80")));
        // A mapped rule is a v4 rule.
        let r = rule("::ffff:10.0.0.0/104");
        assert_eq!(r, rule("10.0.0.0/8"));
        // A v6 rule never matches v4 through a mapped form.
        let r = rule("::/0");
        assert!(!r.matches(sa("[::ffff:10.0.0.1]:80")));
    }

    #[test]
    fn bad_rules_explain() {
        for bad in [
            "",
            "10.0.0.0/33",
            "10.0.0.1/8",
            "x/8",
            "10.0.0.0/8:0",
            "10.0.0.0/8:9-3",
            "10.0.0.0/8:70000",
        ] {
            let e = bad.parse::<AllowRule>().unwrap_err().to_string();
            assert!(e.contains("examples"), "{bad}: {e}");
        }
        assert!(
            "10.0.0.1/8"
                .parse::<AllowRule>()
                .unwrap_err()
                .why
                .contains("10.0.0.0/8")
        );
    }

    #[tokio::test]
    async fn empty_list_refuses_protocol() {
        let p = Policy {
            tcp: AllowList::parse(&["127.0.0.0/8"]).unwrap(),
            udp: AllowList::default(),
        };
        let r = p
            .resolve(
                &"udp://127.0.0.1:53".parse().unwrap(),
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(r.unwrap_err().reason, RejectReason::ProtocolDisabled);
        let r = p
            .resolve(
                &"tcp://127.0.0.1:22".parse().unwrap(),
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(r.unwrap().addrs, vec![sa("127.0.0.1:22")]);
    }

    #[tokio::test]
    async fn outside_addresses_are_refused_and_mapped_is_canonical() {
        let p = Policy {
            tcp: AllowList::parse(&["10.0.0.0/8"]).unwrap(),
            udp: AllowList::default(),
        };
        let r = p
            .resolve(
                &"tcp://192.168.1.1:22".parse().unwrap(),
                Duration::from_secs(1),
            )
            .await;
        let refusal = r.unwrap_err();
        assert_eq!(refusal.reason, RejectReason::NotAllowed);
        assert!(refusal.detail.contains("192.168.1.1"), "{}", refusal.detail);
        let r = p
            .resolve(
                &"tcp://[::ffff:10.9.9.9]:22".parse().unwrap(),
                Duration::from_secs(1),
            )
            .await;
        assert_eq!(r.unwrap().addrs, vec![sa("10.9.9.9:22")]);
    }

    #[tokio::test]
    async fn hostname_resolving_outside_is_refused() {
        // "localhost" resolves to loopback, which is outside 10.0.0.0/8.
        let p = Policy {
            tcp: AllowList::parse(&["10.0.0.0/8"]).unwrap(),
            udp: AllowList::default(),
        };
        let r = p
            .resolve(
                &"tcp://localhost:22".parse().unwrap(),
                Duration::from_secs(5),
            )
            .await;
        let refusal = r.unwrap_err();
        assert_eq!(refusal.reason, RejectReason::NotAllowed);
        assert!(refusal.detail.contains("localhost"));
        // Inside the list, only the allowed addresses are kept.
        let p = Policy {
            tcp: AllowList::parse(&["127.0.0.0/8"]).unwrap(),
            udp: AllowList::default(),
        };
        let ok = p
            .resolve(
                &"tcp://localhost:22".parse().unwrap(),
                Duration::from_secs(5),
            )
            .await
            .unwrap();
        assert!(ok.addrs.iter().all(|a| a.ip().is_loopback() && a.is_ipv4()));
    }
}
