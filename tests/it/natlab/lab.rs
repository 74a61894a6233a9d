//! The NAT lab: real Linux NATs in network namespaces on one machine.
//!
//! ```text
//!                      ns inet: bridge br0 = the "internet", 198.18.0.0/24
//!        +------------------+--------------------+---------------------+
//!   relay 198.18.0.10   natA wan 198.18.0.11   natB wan 198.18.0.12   cgn wan 198.18.0.13
//!   (porthole relay,     |  lan 192.168.1.1      |  lan 192.168.2.1     |  lan 172.16.0.1
//!    HTTPS + QAD +       |                       |                      |  home wan 172.16.0.2
//!    2x STUN)          hostA 192.168.1.2       hostB 192.168.2.2       |  home lan 192.168.3.1
//!                      (hostA2 192.168.1.3)    (server, services)    hostA 192.168.3.2 (double NAT)
//! ```
//! Only 198.18.0.0/15 (benchmarking range) for the fake internet and private ranges
//! behind the NATs. Both ends of every veth are created inside namespaces; the root
//! namespace is never touched. Everything is torn down on drop, also after a panic.
//!
//! NAT behaviours, all with INPUT policy DROP on the router and inbound forwarding only
//! for established flows (so hosts behind a NAT are unreachable unsolicited):
//! - `Cone`: MASQUERADE (Linux preserves ports: endpoint-independent mapping,
//!   port-restricted filtering);
//! - `Symmetric`: MASQUERADE --random-fully (a random port per destination);
//! - `UdpBlocked`: cone, plus every forwarded UDP packet dropped (only TCP gets out);
//! - `DoubleCone`: a carrier-grade NAT in front of a home NAT, both cone.
//!
//! Impairment: this kernel has no `sch_netem`, so WAN egress packets of each NAT go
//! through an NFQUEUE served by `porthole-labtool netem` (fixed delay + random loss).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::support::process::{Proc, bin, scrub};

/// Labs run one at a time: they are timing-sensitive and CPU-hungry.
pub static LAB_LOCK: Mutex<()> = Mutex::new(());

pub const RELAY_IP: &str = "198.18.0.10";
/// The relay's two STUN servers, on [`RELAY_IP`] (two ports: NAT type detection).
pub const STUN_ADDRS: [&str; 2] = ["198.18.0.10:3478", "198.18.0.10:3479"];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nat {
    Cone,
    Symmetric,
    UdpBlocked,
    DoubleCone,
}

impl Nat {
    pub fn name(self) -> &'static str {
        match self {
            Nat::Cone => "cone",
            Nat::Symmetric => "symmetric",
            Nat::UdpBlocked => "udp-blocked",
            Nat::DoubleCone => "double-nat (cgn+cone)",
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct Impair {
    pub delay_ms: u64,
    pub loss: f64,
}

/// Whether the lab can run here; `Err` says why not. Probed once per test run (tests
/// call this concurrently, and a shared probe namespace name would race).
pub fn available() -> Result<(), String> {
    static RESULT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    RESULT.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let uid = Command::new("id")
        .arg("-u")
        .output()
        .map_err(|e| e.to_string())?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Err("not root (network namespaces need root)".into());
    }
    for tool in ["ip", "iptables"] {
        let ok = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !ok {
            return Err(format!(
                "`{tool}` is not installed (Debian: iproute2, iptables)"
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

/// Returns `false` (after a loud message) when the lab cannot run here; panics instead
/// when the lab is required (CI sets PORTHOLE_NATLAB=required).
pub fn should_run(test: &str) -> bool {
    match available() {
        Ok(()) => true,
        Err(why) => {
            if std::env::var("PORTHOLE_NATLAB").as_deref() == Ok("required") {
                panic!("NAT lab required but unavailable: {why}");
            }
            eprintln!("\n!!!!!!!!!! NAT LAB SKIPPED ({test}): {why} !!!!!!!!!!\n");
            false
        }
    }
}

pub fn labtool() -> PathBuf {
    let porthole = PathBuf::from(env!("CARGO_BIN_EXE_porthole"));
    let tool = porthole.with_file_name("porthole-labtool");
    if !tool.exists() {
        // `cargo test --test it` alone does not build other packages' binaries.
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "porthole-labtool"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .status()
            .expect("cargo build porthole-labtool");
        assert!(status.success(), "building porthole-labtool failed");
    }
    tool
}

static SEQ: AtomicU32 = AtomicU32::new(0);

pub struct Lab {
    prefix: String,
    namespaces: Vec<String>,
    pub procs: Vec<Proc>,
    pub dir: tempfile::TempDir,
    /// Namespace of the client host and of the server host.
    pub a: String,
    pub b: String,
    /// A second host on A's LAN (for LAN-only tests).
    pub a2: String,
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Lab {
    fn ns(&self, role: &str) -> String {
        format!("{}-{role}", self.prefix)
    }

    fn add_ns(&mut self, role: &str) -> String {
        let name = self.ns(role);
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run(Command::new("ip").args(["netns", "add", &name]));
        self.namespaces.push(name.clone());
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]));
        // Nothing in the lab may wait on DNS.
        let etc = PathBuf::from("/etc/netns").join(&name);
        std::fs::create_dir_all(&etc).unwrap();
        std::fs::write(etc.join("resolv.conf"), "").unwrap();
        name
    }

    /// `ip -n NS ...`
    pub fn ip(&self, ns: &str, args: &[&str]) {
        run(Command::new("ip").arg("-n").arg(ns).args(args));
    }

    /// Runs a command inside a namespace and waits for it.
    pub fn exec(&self, ns: &str, args: &[&str]) {
        run(Command::new("ip").args(["netns", "exec", ns]).args(args));
    }

    /// A veth pair with one end in each namespace.
    fn link(&self, ns1: &str, if1: &str, ns2: &str, if2: &str) {
        run(Command::new("ip").args([
            "link", "add", "name", if1, "netns", ns1, "type", "veth", "peer", "name", if2, "netns",
            ns2,
        ]));
        self.ip(ns1, &["link", "set", if1, "up"]);
        self.ip(ns2, &["link", "set", if2, "up"]);
    }

    fn addr(&self, ns: &str, dev: &str, cidr: &str) {
        self.ip(ns, &["addr", "add", cidr, "dev", dev]);
    }

    /// Connects a namespace's interface to the internet bridge.
    fn to_internet(&self, inet: &str, ns: &str, dev: &str, port: &str, cidr: &str) {
        self.link(ns, dev, inet, port);
        self.ip(inet, &["link", "set", port, "master", "br0"]);
        self.addr(ns, dev, cidr);
    }

    fn router(&self, ns: &str, nat: Nat, wan: &str, lan: &str) {
        self.exec(ns, &["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        let ipt = |args: &[&str]| {
            let mut full = vec!["iptables"];
            full.extend_from_slice(args);
            self.exec(ns, &full);
        };
        // INPUT DROP: early punch packets must not create conntrack entries for the
        // router itself.
        ipt(&["-P", "INPUT", "DROP"]);
        ipt(&["-A", "INPUT", "-i", "lo", "-j", "ACCEPT"]);
        ipt(&["-P", "FORWARD", "DROP"]);
        ipt(&["-A", "FORWARD", "-i", lan, "-o", wan, "-j", "ACCEPT"]);
        // Hosts on the same LAN talk to each other (bridged traffic may traverse FORWARD).
        ipt(&["-A", "FORWARD", "-i", lan, "-o", lan, "-j", "ACCEPT"]);
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
        ]);
        match nat {
            Nat::Symmetric => ipt(&[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                wan,
                "-j",
                "MASQUERADE",
                "--random-fully",
            ]),
            _ => ipt(&[
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                wan,
                "-j",
                "MASQUERADE",
            ]),
        }
        if nat == Nat::UdpBlocked {
            ipt(&["-I", "FORWARD", "-p", "udp", "-j", "DROP"]);
        }
    }

    fn impair(&mut self, ns: &str, wan: &str, imp: Impair) {
        self.exec(
            ns,
            &[
                "iptables",
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
        );
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(labtool()).args([
            "netem",
            "--delay-ms",
            &imp.delay_ms.to_string(),
            "--loss",
            &imp.loss.to_string(),
        ]);
        let p = Proc::spawn(&format!("netem-{ns}"), cmd);
        p.wait_line("netem: queue", Duration::from_secs(10));
        self.procs.push(p);
    }

    /// One side: a NAT router with a LAN bridge and a host (and a second host on A's side).
    fn side(
        &mut self,
        inet: &str,
        side: char,
        nat: Nat,
        imp: Option<Impair>,
    ) -> (String, Option<String>) {
        let (wan_ip, lan_net, wan_port) = match side {
            'a' => ("198.18.0.11", "192.168.1", "a-wan"),
            _ => ("198.18.0.12", "192.168.2", "b-wan"),
        };
        let host = self.add_ns(&format!("host{side}"));
        if nat == Nat::DoubleCone {
            // Carrier-grade NAT in front, home NAT behind it, host behind that.
            let cgn = self.add_ns(&format!("cgn{side}"));
            let home = self.add_ns(&format!("home{side}"));
            self.to_internet(inet, &cgn, "wan", &format!("{side}-cgn"), "198.18.0.13/24");
            self.link(&cgn, "lan", &home, "wan");
            self.addr(&cgn, "lan", "172.16.0.1/24");
            self.addr(&home, "wan", "172.16.0.2/24");
            self.ip(&home, &["route", "add", "default", "via", "172.16.0.1"]);
            self.link(&home, "lan", &host, "eth0");
            self.addr(&home, "lan", "192.168.3.1/24");
            self.addr(&host, "eth0", "192.168.3.2/24");
            self.ip(&host, &["route", "add", "default", "via", "192.168.3.1"]);
            self.router(&cgn, Nat::Cone, "wan", "lan");
            self.router(&home, Nat::Cone, "wan", "lan");
            if let Some(i) = imp {
                self.impair(&cgn, "wan", i);
            }
            return (host, None);
        }
        let nat_ns = self.add_ns(&format!("nat{side}"));
        self.to_internet(inet, &nat_ns, "wan", wan_port, &format!("{wan_ip}/24"));
        self.ip(&nat_ns, &["link", "add", "brlan", "type", "bridge"]);
        self.ip(&nat_ns, &["link", "set", "brlan", "up"]);
        self.addr(&nat_ns, "brlan", &format!("{lan_net}.1/24"));
        self.link(&nat_ns, "lan1", &host, "eth0");
        self.ip(&nat_ns, &["link", "set", "lan1", "master", "brlan"]);
        self.addr(&host, "eth0", &format!("{lan_net}.2/24"));
        self.ip(
            &host,
            &["route", "add", "default", "via", &format!("{lan_net}.1")],
        );
        let second = if side == 'a' {
            let h2 = self.add_ns("hosta2");
            self.link(&nat_ns, "lan2", &h2, "eth0");
            self.ip(&nat_ns, &["link", "set", "lan2", "master", "brlan"]);
            self.addr(&h2, "eth0", &format!("{lan_net}.3/24"));
            self.ip(
                &h2,
                &["route", "add", "default", "via", &format!("{lan_net}.1")],
            );
            Some(h2)
        } else {
            None
        };
        self.router(&nat_ns, nat, "wan", "brlan");
        if let Some(i) = imp {
            self.impair(&nat_ns, "wan", i);
        }
        (host, second)
    }

    /// Builds the topology with the client's NAT `a` and the server's NAT `b`, and
    /// starts the relay (HTTPS + QUIC address discovery + two STUN ports).
    pub fn new(a: Nat, b: Nat, imp: Option<Impair>) -> Lab {
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("ph{}{}", std::process::id() % 100_000, n);
        let mut lab = Lab {
            prefix,
            namespaces: Vec::new(),
            procs: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            a: String::new(),
            b: String::new(),
            a2: String::new(),
        };
        let inet = lab.add_ns("inet");
        lab.ip(&inet, &["link", "add", "br0", "type", "bridge"]);
        lab.ip(&inet, &["link", "set", "br0", "up"]);
        let relay = lab.add_ns("relay");
        lab.to_internet(&inet, &relay, "eth0", "r-eth0", &format!("{RELAY_IP}/24"));
        let (ha, a2) = lab.side(&inet, 'a', a, imp);
        let (hb, _) = lab.side(&inet, 'b', b, imp);
        lab.a = ha;
        lab.b = hb;
        lab.a2 = a2.unwrap_or_default();
        lab.start_relay(&relay);
        lab
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    fn start_relay(&mut self, relay_ns: &str) {
        let out = bin()
            .args(["generate-relay-cert", "--name", RELAY_IP, "--out-dir"])
            .arg(self.dir.path().join("tls"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut cmd = self.cmd(relay_ns);
        cmd.args([
            "relay",
            "--http-bind",
            &format!("{RELAY_IP}:80"),
            "--https-bind",
            &format!("{RELAY_IP}:443"),
        ])
        .args([
            "--tls-cert",
            &self.path("tls/cert.pem"),
            "--tls-key",
            &self.path("tls/key.pem"),
        ])
        .args(["--quic-bind", &format!("{RELAY_IP}:7842")])
        .args(["--stun-bind", STUN_ADDRS[0], "--stun-bind", STUN_ADDRS[1]]);
        let p = Proc::spawn("relay", cmd);
        p.wait_line("relay URL", Duration::from_secs(20));
        self.procs.push(p);
    }

    /// The porthole binary, to run inside `ns`.
    pub fn cmd(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns, env!("CARGO_BIN_EXE_porthole")]);
        scrub(&mut cmd);
        cmd
    }

    /// The lab tool, to run inside `ns`.
    pub fn tool(&self, ns: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", ns]).arg(labtool());
        cmd
    }

    pub fn relay_url(&self) -> String {
        format!("https://{RELAY_IP}/?quic-port=7842")
    }

    pub fn ca(&self) -> String {
        self.path("tls/ca.pem")
    }

    pub fn spawn(&mut self, name: &str, cmd: Command) -> usize {
        self.procs.push(Proc::spawn(name, cmd));
        self.procs.len() - 1
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for p in &mut self.procs {
            p.kill();
        }
        if std::thread::panicking() {
            for p in &self.procs {
                eprintln!("---- {} ----\n{}", p.name, p.output());
            }
        }
        self.procs.clear();
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
