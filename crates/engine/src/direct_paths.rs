//! Which addresses a transport may advertise for direct paths and send to: porthole must
//! never carry its own QUIC traffic through a forward it carries.
//!
//! The loop this prevents: WireGuard (or any VPN) runs over a porthole UDP forward and its
//! routes cover an address of the other peer (the server's address inside the VPN, or a
//! whole LAN the VPN reaches). The peers learn that address as a direct-path candidate,
//! find that it answers (through the VPN, i.e. through porthole itself), prefer it, and
//! the tunnel collapses the moment it carries itself.
//!
//! The rules, in order (docs/NAT-TRAVERSAL.md explains them for users):
//! 1. an address matching an `exclude` rule (CIDR, or the interface it lives on or is
//!    routed through) is never used;
//! 2. if `pin` rules exist, only addresses matching one of them are used;
//! 3. otherwise an address on, or routed through, a tunnel interface (TUN/TAP, WireGuard,
//!    IP-in-IP/GRE/SIT, point-to-point links other than PPP) is not used, unless that
//!    interface carries the default route (then it is the machine's way to the internet,
//!    not a detour through a VPN).
//!
//! The decision ([`judge`]) is pure and unit-tested; [`PathGuard`] feeds it what the
//! kernel says (interface list, route lookups), caches the answers for a short while
//! (senders ask on every datagram), and logs each address once when its verdict changes.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use tracing::{info, warn};

/// How long a route lookup or interface list is trusted where the kernel does not tell us
/// about changes (no netlink): short enough that a VPN coming up is noticed before it can
/// carry a path for long, long enough that the send path costs a map lookup, not syscalls.
/// On Linux every change of a link, address or route invalidates the answers at once
/// ([`changes`]), and this only bounds their age.
pub const RECHECK: Duration = Duration::from_secs(2);
const RECHECK_WATCHED: Duration = Duration::from_secs(30);

/// Addresses remembered at most (a peer's candidates are a handful; this bounds the map
/// against a peer that offers thousands).
const MAX_CACHED: usize = 1024;

/// One `exclude` / `pin` rule: a network (an address alone means just that address) or
/// an interface name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddrRule {
    Net(IpNet),
    Iface(String),
}

impl AddrRule {
    fn matches(&self, ip: IpAddr, iface: Option<&str>) -> bool {
        match self {
            AddrRule::Net(net) => net.contains(&ip),
            AddrRule::Iface(name) => iface == Some(name.as_str()),
        }
    }
}

impl fmt::Display for AddrRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AddrRule::Net(net) if net.prefix_len() == net.max_prefix_len() => {
                write!(f, "{}", net.addr())
            }
            AddrRule::Net(net) => write!(f, "{net}"),
            AddrRule::Iface(name) => f.write_str(name),
        }
    }
}

/// A rule that is neither a network nor a possible interface name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "'{0}' is not an address rule: give a network (10.8.0.0/16), an address (192.168.1.5) \
     or an interface name (wg0)"
)]
pub struct BadAddrRule(pub String);

impl FromStr for AddrRule {
    type Err = BadAddrRule;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Ok(net) = s.parse::<IpNet>() {
            return Ok(AddrRule::Net(net.trunc()));
        }
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Ok(AddrRule::Net(IpNet::from(ip)));
        }
        // Linux interface names: 1-15 bytes, no '/', no whitespace; anything that looks
        // like a mistyped address (digits and dots or colons only) is refused instead.
        let looks_numeric = s
            .chars()
            .all(|c| c.is_ascii_hexdigit() || c == '.' || c == ':' || c == '/');
        let name_ok = !s.is_empty()
            && s.len() <= 15
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.@".contains(c));
        if name_ok && !(looks_numeric && s.chars().any(|c| c == '.' || c == ':')) {
            return Ok(AddrRule::Iface(s.to_string()));
        }
        Err(BadAddrRule(s.to_string()))
    }
}

/// The configured rules (`--exclude-addr`, `--pin-addr`, `[direct_paths]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathRules {
    pub exclude: Vec<AddrRule>,
    pub pin: Vec<AddrRule>,
}

/// An interface as the rules see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iface {
    pub name: String,
    /// TUN/TAP, WireGuard, tunnels, non-PPP point-to-point links.
    pub tunnel: bool,
}

/// Why an address is not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Excluded(AddrRule),
    NotPinned,
    Tunnel(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Excluded(rule) => write!(f, "excluded by the rule '{rule}'"),
            Refusal::NotPinned => f.write_str("not matched by any pinned rule"),
            Refusal::Tunnel(name) => write!(
                f,
                "it is on or routed through tunnel interface {name} (a direct path there could \
                 run through porthole's own forward; pin {name} if it does not)"
            ),
        }
    }
}

/// The rules applied to one address: `iface` is the interface the address lives on
/// (a local address) or the kernel routes it through (a remote one); `default_iface`
/// the interface of the default route for the address's family.
pub fn judge(
    rules: &PathRules,
    ip: IpAddr,
    iface: Option<&Iface>,
    default_iface: Option<&str>,
) -> Result<(), Refusal> {
    let name = iface.map(|i| i.name.as_str());
    if let Some(rule) = rules.exclude.iter().find(|r| r.matches(ip, name)) {
        return Err(Refusal::Excluded(rule.clone()));
    }
    if !rules.pin.is_empty() {
        return if rules.pin.iter().any(|r| r.matches(ip, name)) {
            Ok(())
        } else {
            Err(Refusal::NotPinned)
        };
    }
    match iface {
        Some(i) if i.tunnel && default_iface != Some(i.name.as_str()) => {
            Err(Refusal::Tunnel(i.name.clone()))
        }
        _ => Ok(()),
    }
}

/// What the kernel says, looked up at most once per [`RECHECK`].
#[derive(Debug)]
struct Snapshot {
    generation: u64,
    /// Every local address and the interface it is on.
    addrs: Vec<(IpAddr, Iface)>,
    default_v4: Option<String>,
    default_v6: Option<String>,
    at: Instant,
}

impl Snapshot {
    fn take(generation: u64) -> Self {
        let addrs = match if_addrs::get_if_addrs() {
            Ok(list) => list
                .into_iter()
                .map(|i| {
                    let tunnel = is_tunnel(&i.name, i.is_p2p);
                    (
                        i.ip(),
                        Iface {
                            name: i.name,
                            tunnel,
                        },
                    )
                })
                .collect(),
            Err(e) => {
                warn!("cannot list network interfaces ({e}): tunnel interfaces are not recognised");
                Vec::new()
            }
        };
        let mut snap = Snapshot {
            generation,
            addrs,
            default_v4: None,
            default_v6: None,
            at: Instant::now(),
        };
        // Any public address will do: a route lookup sends nothing.
        snap.default_v4 = snap
            .route(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)))
            .map(|i| i.name.clone());
        snap.default_v6 = snap
            .route(IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)))
            .map(|i| i.name.clone());
        snap
    }

    fn fresh(&self, generation: u64, now: Instant) -> bool {
        self.generation == generation && now.duration_since(self.at) < changes::max_age()
    }

    fn iface_of(&self, local: IpAddr) -> Option<&Iface> {
        let local = local.to_canonical();
        self.addrs
            .iter()
            .find(|(ip, _)| ip.to_canonical() == local)
            .map(|(_, i)| i)
    }

    /// The interface the kernel would send to `dst` through: the one holding the source
    /// address it picks for a connected UDP socket.
    fn route(&self, dst: IpAddr) -> Option<&Iface> {
        self.iface_of(route_source(dst)?)
    }

    fn knows(&self, ip: IpAddr) -> bool {
        self.iface_of(ip).is_some()
    }

    fn default_for(&self, ip: IpAddr) -> Option<&str> {
        match ip.to_canonical() {
            IpAddr::V4(_) => self.default_v4.as_deref(),
            IpAddr::V6(_) => self.default_v6.as_deref(),
        }
    }
}

fn route_source(dst: IpAddr) -> Option<IpAddr> {
    let dst = dst.to_canonical();
    let bind: SocketAddr = match dst {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(bind).ok()?;
    sock.connect((dst, 9)).ok()?;
    let src = sock.local_addr().ok()?.ip();
    (!src.is_unspecified()).then_some(src)
}

/// Linux: ARPHRD_NONE (TUN, WireGuard), ARPHRD_TUNNEL/TUNNEL6/SIT/IPGRE/IP6GRE, any TUN/TAP
/// device (it has `tun_flags`), and point-to-point links that are not PPP (a PPP link is
/// often the machine's real uplink). Elsewhere: the point-to-point flag (utun on macOS).
fn is_tunnel(name: &str, p2p: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        let dir = std::path::Path::new("/sys/class/net").join(name);
        if dir.join("tun_flags").exists() {
            return true;
        }
        let kind = std::fs::read_to_string(dir.join("type"))
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok());
        const ARPHRD_PPP: u32 = 512;
        match kind {
            Some(65534 | 768 | 769 | 776 | 778 | 823) => true,
            Some(ARPHRD_PPP) => false,
            _ => p2p,
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = name;
        p2p
    }
}

/// A verdict on a remote address, and what it was based on.
#[derive(Debug)]
struct Remote {
    verdict: Result<(), Refusal>,
    generation: u64,
    at: Instant,
}

#[derive(Debug, Default)]
struct State {
    snapshot: Option<Snapshot>,
    /// Last verdict per remote address.
    remote: HashMap<IpAddr, Remote>,
    /// Last verdict per local address (for logging changes only).
    local: HashMap<IpAddr, Result<(), Refusal>>,
}

impl State {
    /// The kernel's view, retaken when something changed since (or it is old), or when
    /// it does not know `ip`'s interface (an address that appeared a moment ago).
    fn snapshot(&mut self, now: Instant, ip: Option<IpAddr>) -> &Snapshot {
        let generation = changes::generation();
        let stale = match &self.snapshot {
            None => true,
            Some(s) => !s.fresh(generation, now) || ip.is_some_and(|ip| !s.knows(ip)),
        };
        if stale {
            self.snapshot = Some(Snapshot::take(generation));
        }
        self.snapshot
            .get_or_insert_with(|| Snapshot::take(generation))
    }
}

/// The rules, applied to what the kernel says now. Shared by a transport's sender and its
/// address gathering; cheap to ask on every datagram.
#[derive(Debug, Default)]
pub struct PathGuard {
    rules: PathRules,
    state: Mutex<State>,
}

impl PathGuard {
    pub fn new(rules: PathRules) -> Self {
        PathGuard {
            rules,
            state: Mutex::new(State::default()),
        }
    }

    pub fn rules(&self) -> &PathRules {
        &self.rules
    }

    /// May this local interface address be offered to the peer?
    pub fn advertise(&self, local: IpAddr) -> bool {
        let local = local.to_canonical();
        if local.is_loopback() && self.rules.exclude.is_empty() && self.rules.pin.is_empty() {
            return true;
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let snap = state.snapshot(now, Some(local));
        let verdict = judge(
            &self.rules,
            local,
            snap.iface_of(local),
            snap.default_for(local),
        );
        if state.local.len() >= MAX_CACHED {
            state.local.clear();
        }
        if state.local.get(&local) != Some(&verdict) {
            match &verdict {
                Err(why) => info!(%local, "not advertising {local} for direct paths: {why}"),
                Ok(()) if state.local.contains_key(&local) => {
                    info!(%local, "advertising {local} for direct paths again")
                }
                Ok(()) => {}
            }
            state.local.insert(local, verdict.clone());
        }
        verdict.is_ok()
    }

    /// May datagrams be sent to this remote address? Asked on every send: an answer
    /// stands until the kernel's links, addresses or routes change.
    pub fn reach(&self, remote: SocketAddr) -> bool {
        let ip = remote.ip().to_canonical();
        if ip.is_loopback() && self.rules.exclude.is_empty() && self.rules.pin.is_empty() {
            return true;
        }
        let generation = changes::generation();
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if let Some(r) = state.remote.get(&ip)
            && r.generation == generation
            && now.duration_since(r.at) < changes::max_age()
        {
            return r.verdict.is_ok();
        }
        let source = route_source(ip);
        let snap = state.snapshot(now, source);
        let via = source.and_then(|src| snap.iface_of(src));
        let verdict = judge(&self.rules, ip, via, snap.default_for(ip));
        let previous = state.remote.remove(&ip).map(|r| r.verdict);
        if previous.as_ref() != Some(&verdict) {
            match (&verdict, previous) {
                (Err(why), None) => info!(remote = %ip, "not using {ip} for a direct path: {why}"),
                (Err(why), Some(_)) => warn!(
                    remote = %ip,
                    "dropping the direct path to {ip}: {why}; traffic moves to another path"
                ),
                (Ok(()), Some(_)) => info!(remote = %ip, "{ip} may carry a direct path again"),
                (Ok(()), None) => {}
            }
        }
        if state.remote.len() >= MAX_CACHED {
            state.remote.clear();
        }
        let allowed = verdict.is_ok();
        state.remote.insert(
            ip,
            Remote {
                verdict,
                generation,
                at: now,
            },
        );
        allowed
    }
}

/// Changes of links, addresses and routes, as a counter: every answer above records the
/// value it was reached at and is asked again once it moved. On Linux a thread reads the
/// kernel's rtnetlink notifications (one socket per process, started on first use);
/// elsewhere the counter never moves and answers expire after [`RECHECK`].
mod changes {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    static GENERATION: AtomicU64 = AtomicU64::new(0);
    static WATCHING: OnceLock<bool> = OnceLock::new();

    pub fn generation() -> u64 {
        WATCHING.get_or_init(start);
        GENERATION.load(Ordering::Acquire)
    }

    pub fn max_age() -> Duration {
        if WATCHING.get().copied().unwrap_or(false) {
            super::RECHECK_WATCHED
        } else {
            super::RECHECK
        }
    }

    #[cfg(target_os = "linux")]
    fn start() -> bool {
        use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_ROUTE};
        let groups = (libc::RTMGRP_LINK
            | libc::RTMGRP_IPV4_IFADDR
            | libc::RTMGRP_IPV4_ROUTE
            | libc::RTMGRP_IPV6_IFADDR
            | libc::RTMGRP_IPV6_ROUTE) as u32;
        let socket = Socket::new(NETLINK_ROUTE).and_then(|mut s| {
            s.bind(&SocketAddr::new(0, groups))?;
            Ok(s)
        });
        let socket = match socket {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(
                    "cannot watch routes and interfaces ({e}): rechecking direct paths every {:?}",
                    super::RECHECK
                );
                return false;
            }
        };
        let spawned = std::thread::Builder::new()
            .name("porthole-routes".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    // Any message (or an overflow error: something changed that we
                    // missed) moves the counter; the content does not matter.
                    let result = socket.recv(&mut &mut buf[..], 0);
                    GENERATION.fetch_add(1, Ordering::AcqRel);
                    if let Err(e) = result
                        && e.kind() != std::io::ErrorKind::Interrupted
                        && e.raw_os_error() != Some(libc::ENOBUFS)
                    {
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
            });
        spawned.is_ok()
    }

    #[cfg(not(target_os = "linux"))]
    fn start() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(s: &str) -> AddrRule {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn iface(name: &str, tunnel: bool) -> Iface {
        Iface {
            name: name.into(),
            tunnel,
        }
    }

    #[test]
    fn rules_parse_as_networks_addresses_or_interface_names() {
        assert_eq!(
            rule("10.8.0.0/16"),
            AddrRule::Net("10.8.0.0/16".parse().unwrap())
        );
        assert_eq!(
            rule("10.8.3.1/16"),
            AddrRule::Net("10.8.0.0/16".parse().unwrap())
        );
        assert_eq!(
            rule("192.168.1.5"),
            AddrRule::Net("192.168.1.5/32".parse().unwrap())
        );
        assert_eq!(rule("fd00::/8"), AddrRule::Net("fd00::/8".parse().unwrap()));
        assert_eq!(rule("wg0"), AddrRule::Iface("wg0".into()));
        assert_eq!(rule("enp0s31f6"), AddrRule::Iface("enp0s31f6".into()));
        assert_eq!(rule("br-lan.10"), AddrRule::Iface("br-lan.10".into()));
        for bad in [
            "",
            "10.0.0.0/33",
            "300.1.2.3",
            "10.0.0",
            "a b",
            "averyveryverylongname",
        ] {
            assert!(bad.parse::<AddrRule>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(rule("192.168.1.5").to_string(), "192.168.1.5");
        assert_eq!(rule("10.8.0.0/16").to_string(), "10.8.0.0/16");
    }

    #[test]
    fn tunnels_are_refused_unless_they_carry_the_default_route() {
        let none = PathRules::default();
        let wg = iface("wg0", true);
        let eth = iface("eth0", false);
        assert_eq!(
            judge(&none, ip("10.99.0.1"), Some(&wg), Some("eth0")),
            Err(Refusal::Tunnel("wg0".into()))
        );
        assert_eq!(
            judge(&none, ip("10.99.0.1"), Some(&wg), None),
            Err(Refusal::Tunnel("wg0".into()))
        );
        // A machine whose only way out is the tunnel: that is its uplink.
        assert_eq!(
            judge(&none, ip("203.0.113.7"), Some(&wg), Some("wg0")),
            Ok(())
        );
        assert_eq!(
            judge(&none, ip("192.168.1.5"), Some(&eth), Some("eth0")),
            Ok(())
        );
        assert_eq!(judge(&none, ip("192.168.1.5"), None, None), Ok(()));
    }

    #[test]
    fn exclude_wins_and_pin_narrows() {
        let wg = iface("wg0", true);
        let eth = iface("eth0", false);
        let ex = PathRules {
            exclude: vec![rule("192.168.0.0/16"), rule("eth1")],
            pin: vec![],
        };
        assert_eq!(
            judge(&ex, ip("192.168.1.5"), Some(&eth), Some("eth0")),
            Err(Refusal::Excluded(rule("192.168.0.0/16")))
        );
        assert_eq!(
            judge(
                &ex,
                ip("10.1.1.1"),
                Some(&iface("eth1", false)),
                Some("eth0")
            ),
            Err(Refusal::Excluded(rule("eth1")))
        );
        assert_eq!(judge(&ex, ip("10.1.1.1"), Some(&eth), Some("eth0")), Ok(()));

        let pin = PathRules {
            exclude: vec![rule("10.99.0.7")],
            pin: vec![rule("wg0"), rule("198.51.100.0/24")],
        };
        // Pinning a tunnel interface is how a user says "this VPN is not porthole's".
        assert_eq!(
            judge(&pin, ip("10.99.0.1"), Some(&wg), Some("eth0")),
            Ok(())
        );
        assert_eq!(
            judge(&pin, ip("198.51.100.9"), Some(&eth), Some("eth0")),
            Ok(())
        );
        assert_eq!(
            judge(&pin, ip("192.168.1.5"), Some(&eth), Some("eth0")),
            Err(Refusal::NotPinned)
        );
        assert_eq!(
            judge(&pin, ip("10.99.0.7"), Some(&wg), Some("eth0")),
            Err(Refusal::Excluded(rule("10.99.0.7")))
        );
    }

    #[test]
    fn loopback_is_usable_and_routes_through_lo() {
        let g = PathGuard::new(PathRules::default());
        assert!(g.reach("127.0.0.1:9".parse().unwrap()));
        assert!(g.advertise(ip("127.0.0.1")));
        // Loopback is subject to rules once there are any.
        let g = PathGuard::new(PathRules {
            exclude: vec![rule("lo")],
            pin: vec![],
        });
        assert!(!g.reach("127.0.0.1:9".parse().unwrap()));
        assert!(!g.advertise(ip("127.0.0.1")));
    }
}
