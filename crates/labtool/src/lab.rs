//! The NAT lab's network: real Linux NATs in network namespaces on one machine, shared by
//! the integration tests (tests/it/natlab) and the WAN benchmark (`porthole-labtool lab`,
//! driven by bench/wan.py).
//!
//! ```text
//!                      ns inet: bridge br0 = the "internet", 198.18.0.0/24
//!        +------------------+--------------------+---------------------+
//!   relay 198.18.0.10   natA wan 198.18.0.11   natB wan 198.18.0.12   cgn wan 198.18.0.13
//!                        |  lan 192.168.1.1      |  lan 192.168.2.1     |  lan 172.16.0.1
//!                        |                       |                      |  home wan 172.16.0.2
//!                      hostA 192.168.1.2       hostB 192.168.2.2       |  home lan 192.168.3.1
//!                      (hostA2 192.168.1.3)    (the server's side)   hostA 192.168.3.2 (double NAT)
//! ```
//! Side A is the client's, side B the server's. Only 198.18.0.0/15 (benchmarking range)
//! for the fake internet and private ranges behind the NATs. Both ends of every veth are
//! created inside namespaces; the root namespace is never touched. Everything is torn
//! down on drop, also after a panic.
//!
//! NAT behaviours, all with INPUT policy DROP on the router and inbound forwarding only
//! for established flows (so hosts behind a NAT are unreachable unsolicited, except for
//! the TCP ports a [`Spec`] forwards to host B on purpose):
//! - `Cone`: MASQUERADE (Linux preserves ports: endpoint-independent mapping,
//!   port-restricted filtering);
//! - `Symmetric`: MASQUERADE --random-fully (a random port per destination);
//! - `UdpBlocked`: cone, plus every forwarded UDP packet dropped (only TCP gets out);
//! - `DoubleCone`: a carrier-grade NAT in front of a home NAT, both cone;
//! - `FullCone`: cone, and UDP from anyone to a mapped port reaches the host;
//! - `Restricted`: cone, and UDP to a mapped port reaches the host from any port of an
//!   address the host sent to (the `recent` match).
//!
//! The WAN uplink of each NAT (its egress towards the internet) can be impaired: this
//! kernel has no `sch_netem`, so delay and loss come from an NFQUEUE served by
//! `porthole-labtool netem`, and a rate limit from a `tbf` qdisc behind it. Every packet
//! between the two sides, direct or through the relay, crosses exactly one impaired
//! uplink in each direction, so the round-trip time is twice the delay.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::Duration;

pub const RELAY_IP: &str = "198.18.0.10";
/// The relay's two STUN servers, on [`RELAY_IP`] (two ports: NAT type detection).
pub const STUN_ADDRS: [&str; 2] = ["198.18.0.10:3478", "198.18.0.10:3479"];
/// Public (WAN) address of NAT A, the client's side.
pub const NAT_A_IP: &str = "198.18.0.11";
/// Public (WAN) address of NAT B, the server's side.
pub const NAT_B_IP: &str = "198.18.0.12";
/// Host B's LAN address (where [`Spec::server_dnat_tcp`] ports lead).
pub const HOST_B_IP: &str = "192.168.2.2";

pub type Result<T> = std::result::Result<T, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    Cone,
    Symmetric,
    UdpBlocked,
    DoubleCone,
    /// Cone mapping, and any host may send to a mapped port (endpoint-independent
    /// filtering).
    FullCone,
    /// Cone mapping, and a host the inside sent to may send from any port
    /// (address-dependent filtering).
    Restricted,
}

impl Nat {
    pub fn name(self) -> &'static str {
        match self {
            Nat::Cone => "cone",
            Nat::Symmetric => "symmetric",
            Nat::UdpBlocked => "udp-blocked",
            Nat::DoubleCone => "double-nat (cgn+cone)",
            Nat::FullCone => "full cone",
            Nat::Restricted => "restricted cone",
        }
    }
}

impl std::str::FromStr for Nat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cone" => Ok(Nat::Cone),
            "symmetric" => Ok(Nat::Symmetric),
            "udp-blocked" => Ok(Nat::UdpBlocked),
            "double-cone" => Ok(Nat::DoubleCone),
            "full-cone" => Ok(Nat::FullCone),
            "restricted" => Ok(Nat::Restricted),
            _ => Err(format!(
                "unknown NAT {s:?}: cone, symmetric, udp-blocked, double-cone, full-cone or restricted"
            )),
        }
    }
}

/// Delay and random loss on each NAT's uplink (each direction of the path).
#[derive(Debug, Clone, Copy)]
pub struct Impair {
    pub delay_ms: u64,
    /// Probability of dropping a packet (0.0 - 1.0).
    pub loss: f64,
}

/// A bottleneck on each NAT's uplink: a token bucket at `mbit` Mbit/s whose queue holds
/// `queue_ms` of traffic at that rate (what a router's buffer would).
#[derive(Debug, Clone, Copy)]
pub struct Rate {
    pub mbit: u32,
    pub queue_ms: u32,
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Spec {
    /// NAT in front of side A (the client).
    pub a: Nat,
    /// NAT in front of side B (the server).
    pub b: Nat,
    pub impair: Option<Impair>,
    pub rate: Option<Rate>,
    /// Switch GSO/GRO/TSO off on every lab link, so that a lost packet is one packet and
    /// not a 64 KB super-packet (which hits kernel TCP and QUIC differently).
    pub offloads_off: bool,
    /// TCP ports of NAT B's public address forwarded to host B (a kernel-TCP baseline
    /// across the lab: no hole punching, no tunnel).
    pub server_dnat_tcp: Vec<u16>,
    /// The kernel's TCP send-buffer limit (`net.ipv4.tcp_wmem`'s maximum, bytes) in every
    /// lab namespace, as an operator of long fat paths would raise it; `None` leaves
    /// the kernel's (4 MiB: 224 Mbit/s per connection at 150 ms).
    pub tcp_wmem_max: Option<u32>,
}

impl Spec {
    pub fn new(a: Nat, b: Nat) -> Self {
        Self {
            a,
            b,
            impair: None,
            rate: None,
            offloads_off: false,
            server_dnat_tcp: Vec::new(),
            tcp_wmem_max: None,
        }
    }
}

/// Whether the lab can run here; `Err` says why not. Probed once per process (tests call
/// this concurrently, and a shared probe namespace name would race).
pub fn available() -> Result<()> {
    static RESULT: std::sync::OnceLock<Result<()>> = std::sync::OnceLock::new();
    RESULT.get_or_init(probe).clone()
}

fn probe() -> Result<()> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root (network namespaces need root)".into());
    }
    for (tool, package) in [("ip", "iproute2"), ("iptables", "iptables")] {
        if !has_tool(tool) {
            return Err(format!(
                "`{tool}` is not installed (Debian package: {package})"
            ));
        }
    }
    let probe = format!("phprobe{}", std::process::id());
    let ok = Command::new("ip")
        .args(["netns", "add", &probe])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    let _ = Command::new("ip").args(["netns", "del", &probe]).status();
    if !ok {
        return Err("`ip netns add` failed (no namespace support here)".into());
    }
    Ok(())
}

fn has_tool(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A built lab network. Dropping it kills everything running inside and removes it.
#[derive(Debug)]
pub struct Net {
    prefix: String,
    namespaces: Vec<String>,
    /// Links (namespace, device) created so far, for the offload switch.
    links: Vec<(String, String)>,
    /// The netem processes serving the uplinks' NFQUEUEs.
    impairers: Vec<Child>,
    /// Namespaces whose WAN uplink is impaired (their delay lines' queue statistics are in
    /// their /proc/net/netfilter/nfnetlink_queue).
    pub impaired: Vec<String>,
    labtool: PathBuf,
    /// The internet bridge's namespace.
    pub inet: String,
    /// The relay host, on the internet at [`RELAY_IP`].
    pub relay: String,
    /// Host A (the client's side) and host B (the server's side).
    pub a: String,
    pub b: String,
    /// A second host on A's LAN (LAN-only tests); empty behind a double NAT.
    pub a2: String,
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Net {
    /// Builds the topology `spec` describes. `labtool` is the `porthole-labtool` binary
    /// (it serves the impaired uplinks).
    pub fn build(spec: &Spec, labtool: &Path) -> Result<Net> {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut net = Net {
            prefix: format!("ph{}{}", std::process::id() % 100_000, n),
            namespaces: Vec::new(),
            links: Vec::new(),
            impairers: Vec::new(),
            impaired: Vec::new(),
            labtool: labtool.to_path_buf(),
            inet: String::new(),
            relay: String::new(),
            a: String::new(),
            b: String::new(),
            a2: String::new(),
        };
        let inet = net.add_ns("inet")?;
        net.ip(&inet, &["link", "add", "br0", "type", "bridge"])?;
        net.ip(&inet, &["link", "set", "br0", "up"])?;
        let relay = net.add_ns("relay")?;
        net.join_internet(&inet, &relay, "eth0", "r-eth0", &format!("{RELAY_IP}/24"))?;
        let (a, a2) = net.side(&inet, 'a', spec)?;
        let (b, _) = net.side(&inet, 'b', spec)?;
        (net.inet, net.relay, net.a, net.b) = (inet, relay, a, b);
        net.a2 = a2.unwrap_or_default();
        if spec.offloads_off {
            net.offloads_off()?;
        }
        if let Some(max) = spec.tcp_wmem_max {
            for ns in &net.namespaces {
                let set = format!("net.ipv4.tcp_wmem=4096 16384 {max}");
                net.exec(ns, &["sysctl", "-qw", &set])?;
            }
        }
        Ok(net)
    }

    fn add_ns(&mut self, role: &str) -> Result<String> {
        let name = format!("{}-{role}", self.prefix);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]))?;
        self.namespaces.push(name.clone());
        self.ip(&name, &["link", "set", "lo", "up"])?;
        // Nothing in the lab may wait on DNS.
        let etc = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).map_err(|e| e.to_string())?;
        std::fs::write(etc.join("resolv.conf"), "").map_err(|e| e.to_string())?;
        Ok(name)
    }

    /// `ip -n NS ...`
    pub fn ip(&self, ns: &str, args: &[&str]) -> Result<()> {
        run(Command::new("ip").arg("-n").arg(ns).args(args))
    }

    /// Runs a command inside a namespace and waits for it.
    pub fn exec(&self, ns: &str, args: &[&str]) -> Result<()> {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args))
    }

    /// A veth pair with one end in each namespace.
    fn link(&mut self, ns1: &str, if1: &str, ns2: &str, if2: &str) -> Result<()> {
        run(Command::new("ip").args([
            "link", "add", "name", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns",
            ns2,
        ]))?;
        self.ip(ns1, &["link", "set", if1, "up"])?;
        self.ip(ns2, &["link", "set", if2, "up"])?;
        self.links.push((ns1.to_string(), if1.to_string()));
        self.links.push((ns2.to_string(), if2.to_string()));
        Ok(())
    }

    fn addr(&self, ns: &str, dev: &str, cidr: &str) -> Result<()> {
        self.ip(ns, &["addr", "add", cidr, "dev", dev])
    }

    /// Connects a namespace's interface to the internet bridge.
    fn join_internet(
        &mut self,
        inet: &str,
        ns: &str,
        dev: &str,
        port: &str,
        cidr: &str,
    ) -> Result<()> {
        self.link(ns, dev, inet, port)?;
        self.ip(inet, &["link", "set", port, "master", "br0"])?;
        self.addr(ns, dev, cidr)
    }

    fn iptables(&self, ns: &str, args: &[&str]) -> Result<()> {
        let mut full = vec!["iptables"];
        full.extend_from_slice(args);
        self.exec(ns, &full)
    }

    fn router(&self, ns: &str, nat: Nat, wan: &str, lan: &str) -> Result<()> {
        self.exec(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"])?;
        let ipt = |args: &[&str]| self.iptables(ns, args);
        // INPUT DROP: early punch packets must not create conntrack entries for the
        // router itself.
        ipt(&["-P", "INPUT", "DROP"])?;
        ipt(&["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"])?;
        ipt(&["-P", "FORWARD", "DROP"])?;
        ipt(&["-A", "FORWARD", "-i", lan, "-o", wan, "-j", "ACCEPT"])?;
        // Hosts on the same LAN talk to each other (bridged traffic may traverse FORWARD).
        ipt(&["-A", "FORWARD", "-i", lan, "-o", lan, "-j", "ACCEPT"])?;
        ipt(&[
            "-A",
            "FORWARD",
            "-i",
            wan,
            "-o",
            lan,
            "-m",
            "conntrack",
            "--ctstate",
            "ESTABLISHED,RELATED",
            "-j",
            "ACCEPT",
        ])?;
        let mut masquerade = vec![
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-o",
            wan,
            "-j",
            "MASQUERADE",
        ];
        if nat == Nat::Symmetric {
            masquerade.push("--random-fully");
        }
        ipt(&masquerade)?;
        if nat == Nat::UdpBlocked {
            ipt(&["-I", "FORWARD", "-p", "udp", "-j", "DROP"])?;
        }
        Ok(())
    }

    /// The filtering of the full and the restricted cone, for UDP to `host`: MASQUERADE
    /// keeps ports, so a packet that opens no known flow is sent on to the same port of
    /// `host` (DNAT without a port), from anyone (full cone) or only from addresses
    /// `host` has sent to (restricted: the `recent` match remembers them).
    fn open_filtering(&self, ns: &str, nat: Nat, wan: &str, lan: &str, host: &str) -> Result<()> {
        let from_known: &[&str] = match nat {
            Nat::FullCone => &[],
            Nat::Restricted => &["-m", "recent", "--name", "peers", "--rcheck", "--rsource"],
            _ => return Ok(()),
        };
        if nat == Nat::Restricted {
            self.iptables(
                ns,
                &[
                    "-I", "FORWARD", "-i", lan, "-o", wan, "-p", "udp", "-m", "recent", "--name",
                    "peers", "--rdest", "--set",
                ],
            )?;
        }
        let mut dnat = vec!["-t", "nat", "-A", "PREROUTING", "-i", wan, "-p", "udp"];
        dnat.extend_from_slice(from_known);
        dnat.extend_from_slice(&["-j", "DNAT", "--to-destination", host]);
        self.iptables(ns, &dnat)?;
        self.iptables(
            ns,
            &[
                "-A", "FORWARD", "-i", wan, "-o", lan, "-p", "udp", "-d", host, "-j", "ACCEPT",
            ],
        )
    }

    /// TCP `port` on the router's WAN address leads to `host:port` (a deliberate hole).
    fn dnat_tcp(&self, ns: &str, wan: &str, lan: &str, host: &str, port: u16) -> Result<()> {
        let port = port.to_string();
        let to = format!("{host}:{port}");
        self.iptables(
            ns,
            &[
                "-t",
                "nat",
                "-A",
                "PREROUTING",
                "-i",
                wan,
                "-p",
                "tcp",
                "--dport",
                &port,
                "-j",
                "DNAT",
                "--to-destination",
                &to,
            ],
        )?;
        self.iptables(
            ns,
            &[
                "-A", "FORWARD", "-i", wan, "-o", lan, "-p", "tcp", "-d", host, "--dport", &port,
                "-j", "ACCEPT",
            ],
        )
    }

    /// Delay, loss and rate on the router's WAN egress.
    fn impair(&mut self, ns: &str, wan: &str, spec: &Spec) -> Result<()> {
        if spec.impair.is_some() || spec.rate.is_some() {
            self.impaired.push(ns.to_string());
        }
        if let Some(imp) = spec.impair {
            self.iptables(
                ns,
                &[
                    "-t",
                    "mangle",
                    "-A",
                    "POSTROUTING",
                    "-o",
                    wan,
                    "-j",
                    "NFQUEUE",
                    "--queue-num",
                    "0",
                    "--queue-bypass",
                ],
            )?;
            // Real-time priority (where allowed): a delay line that waits for a CPU holds
            // packets longer than it should and overflows its queue.
            let mut child = Command::new("ip")
                .args(["netns", "exec", ns])
                .args(realtime())
                .arg(&self.labtool)
                .args([
                    "netem",
                    "--delay-ms",
                    &imp.delay_ms.to_string(),
                    "--loss",
                    &imp.loss.to_string(),
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .map_err(|e| format!("starting netem in {ns}: {e}"))?;
            let ready = child.stderr.take().map(first_line_containing);
            self.impairers.push(child);
            match ready.map(|rx| rx.recv_timeout(Duration::from_secs(10))) {
                Some(Ok(true)) => {}
                _ => return Err(format!("netem in {ns} did not start")),
            }
        }
        if let Some(rate) = spec.rate {
            // Queue: queue_ms of traffic at the rate; burst: ~1 ms of it (>= one packet).
            let bytes_per_ms = u64::from(rate.mbit) * 1_000_000 / 8 / 1000;
            let limit = (bytes_per_ms * u64::from(rate.queue_ms)).max(16 * 1514);
            let burst = bytes_per_ms.max(4 * 1514);
            self.exec(
                ns,
                &[
                    "tc",
                    "qdisc",
                    "replace",
                    "dev",
                    wan,
                    "root",
                    "tbf",
                    "rate",
                    &format!("{}mbit", rate.mbit),
                    "burst",
                    &burst.to_string(),
                    "limit",
                    &limit.to_string(),
                ],
            )?;
        }
        Ok(())
    }

    /// One side: a NAT router with a LAN bridge and a host (and a second host on A's side).
    fn side(&mut self, inet: &str, side: char, spec: &Spec) -> Result<(String, Option<String>)> {
        let nat = if side == 'a' { spec.a } else { spec.b };
        let (wan_ip, lan_net, wan_port) = match side {
            'a' => (NAT_A_IP, "192.168.1", "a-wan"),
            _ => (NAT_B_IP, "192.168.2", "b-wan"),
        };
        let host = self.add_ns(&format!("host{side}"))?;
        if nat == Nat::DoubleCone {
            // Carrier-grade NAT in front, home NAT behind it, host behind that.
            let cgn = self.add_ns(&format!("cgn{side}"))?;
            let home = self.add_ns(&format!("home{side}"))?;
            self.join_internet(inet, &cgn, "wan", &format!("{side}-cgn"), "198.18.0.13/24")?;
            self.link(&cgn, "lan", &home, "wan")?;
            self.addr(&cgn, "lan", "172.16.0.1/24")?;
            self.addr(&home, "wan", "172.16.0.2/24")?;
            self.ip(&home, &["route", "add", "default", "via", "172.16.0.1"])?;
            self.link(&home, "lan", &host, "eth0")?;
            self.addr(&home, "lan", "192.168.3.1/24")?;
            self.addr(&host, "eth0", "192.168.3.2/24")?;
            self.ip(&host, &["route", "add", "default", "via", "192.168.3.1"])?;
            self.router(&cgn, Nat::Cone, "wan", "lan")?;
            self.router(&home, Nat::Cone, "wan", "lan")?;
            self.impair(&cgn, "wan", spec)?;
            return Ok((host, None));
        }
        let nat_ns = self.add_ns(&format!("nat{side}"))?;
        self.join_internet(inet, &nat_ns, "wan", wan_port, &format!("{wan_ip}/24"))?;
        self.ip(&nat_ns, &["link", "add", "brlan", "type", "bridge"])?;
        self.ip(&nat_ns, &["link", "set", "brlan", "up"])?;
        self.addr(&nat_ns, "brlan", &format!("{lan_net}.1/24"))?;
        self.link(&nat_ns, "lan1", &host, "eth0")?;
        self.ip(&nat_ns, &["link", "set", "lan1", "master", "brlan"])?;
        self.addr(&host, "eth0", &format!("{lan_net}.2/24"))?;
        self.ip(
            &host,
            &["route", "add", "default", "via", &format!("{lan_net}.1")],
        )?;
        let second = if side == 'a' {
            let h2 = self.add_ns("hosta2")?;
            self.link(&nat_ns, "lan2", &h2, "eth0")?;
            self.ip(&nat_ns, &["link", "set", "lan2", "master", "brlan"])?;
            self.addr(&h2, "eth0", &format!("{lan_net}.3/24"))?;
            self.ip(
                &h2,
                &["route", "add", "default", "via", &format!("{lan_net}.1")],
            )?;
            Some(h2)
        } else {
            None
        };
        self.router(&nat_ns, nat, "wan", "brlan")?;
        self.open_filtering(&nat_ns, nat, "wan", "brlan", &format!("{lan_net}.2"))?;
        if side == 'b' {
            for &port in &spec.server_dnat_tcp {
                self.dnat_tcp(&nat_ns, "wan", "brlan", HOST_B_IP, port)?;
            }
        }
        self.impair(&nat_ns, "wan", spec)?;
        Ok((host, second))
    }

    /// Cuts (`up = false`) or restores the uplink of side `'a'` (the client's) or `'b'`:
    /// its NAT forwards nothing either way, as when a Wi-Fi drops. The NAT's mappings
    /// stay (they expire only after minutes of silence), as in a home router.
    pub fn set_uplink(&self, side: char, up: bool) -> Result<()> {
        let nat = [
            format!("{}-nat{side}", self.prefix),
            format!("{}-cgn{side}", self.prefix),
        ]
        .into_iter()
        .find(|ns| self.namespaces.contains(ns))
        .ok_or_else(|| format!("no NAT on side {side:?}"))?;
        let rule = ["FORWARD", "-j", "DROP"];
        let mut args = vec![if up { "-D" } else { "-I" }];
        args.extend_from_slice(&rule);
        self.iptables(&nat, &args)
    }

    /// Drops (`allowed` false) or stops dropping UDP from side `'a'` or `'b'`'s LAN to the
    /// other NAT's public address: the peers then cannot punch a direct path and meet
    /// through the relay (its HTTPS and QUIC address discovery stay reachable).
    pub fn set_direct_udp(&self, side: char, allowed: bool) -> Result<()> {
        let nat = format!("{}-nat{side}", self.prefix);
        if !self.namespaces.contains(&nat) {
            return Err(format!("no single NAT on side {side:?}"));
        }
        let other = if side == 'a' { NAT_B_IP } else { NAT_A_IP };
        let op = if allowed { "-D" } else { "-I" };
        self.iptables(
            &nat,
            &[op, "FORWARD", "-p", "udp", "-d", other, "-j", "DROP"],
        )
    }

    /// Gives side `'a'` or `'b'`'s NAT a new public address, as when an ISP renumbers a
    /// line or a phone moves to another network: `ip` is added, the old address removed.
    /// MASQUERADE forgets every mapping that used the old one, so each flow leaves from a
    /// new address and port. Not for a double NAT.
    pub fn set_public_ip(&self, side: char, ip: &str) -> Result<()> {
        let nat = format!("{}-nat{side}", self.prefix);
        if !self.namespaces.contains(&nat) {
            return Err(format!("no single NAT on side {side:?}"));
        }
        let old = if side == 'a' { NAT_A_IP } else { NAT_B_IP };
        // Without this, removing the primary address removes the new (secondary) one too.
        self.exec(
            &nat,
            &["sysctl", "-qw", "net.ipv4.conf.wan.promote_secondaries=1"],
        )?;
        self.ip(&nat, &["addr", "add", &format!("{ip}/24"), "dev", "wan"])?;
        self.ip(&nat, &["addr", "del", &format!("{old}/24"), "dev", "wan"])
    }

    /// GSO, GRO and TSO off on every link made so far.
    fn offloads_off(&self) -> Result<()> {
        if !has_tool("ethtool") {
            return Err("`ethtool` is not installed (Debian package: ethtool)".into());
        }
        for (ns, dev) in &self.links {
            self.exec(
                ns,
                &[
                    "ethtool", "-K", dev, "gso", "off", "gro", "off", "tso", "off",
                ],
            )?;
        }
        Ok(())
    }
}

/// `chrt -f 10` where `chrt` exists (util-linux), else nothing.
fn realtime() -> Vec<&'static str> {
    if has_tool("chrt") {
        vec!["chrt", "-f", "10"]
    } else {
        Vec::new()
    }
}

/// Reads `pipe` in a thread; sends `true` once a line mentions the netem queue (or
/// `false` at EOF), and keeps draining the pipe afterwards.
fn first_line_containing(pipe: std::process::ChildStderr) -> mpsc::Receiver<bool> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut sent = false;
        for line in BufReader::new(pipe)
            .lines()
            .map_while(std::result::Result::ok)
        {
            if !sent && line.contains("netem: queue") {
                let _ = tx.send(true);
                sent = true;
            }
        }
        let _ = tx.send(false);
    });
    rx
}

impl Drop for Net {
    fn drop(&mut self) {
        for child in &mut self.impairers {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self.namespaces.iter().rev() {
            // Anything still running inside keeps the namespace alive: kill it first.
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).output();
                }
            }
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(ns));
        }
    }
}
