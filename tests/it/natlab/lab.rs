//! The NAT lab as the tests use it: the network of `porthole_labtool::lab` (topology,
//! NAT kinds and impairment are described there), plus a relay on its internet (HTTPS +
//! QUIC address discovery + two STUN ports) and the processes a test starts inside.

use std::path::PathBuf;
use std::process::Command;
use std::sync::Mutex;
use std::time::Duration;

pub use porthole_labtool::lab::{HOST_B_IP, Impair, Nat, RELAY_IP, STUN_ADDRS};
use porthole_labtool::lab::{Net, Spec};

use crate::support::process::{Proc, bin, scrub};

/// Labs run one at a time: they are timing-sensitive and CPU-hungry.
pub static LAB_LOCK: Mutex<()> = Mutex::new(());

/// Returns `false` (after a loud message) when the lab cannot run here; panics instead
/// when the lab is required (CI sets PORTHOLE_NATLAB=required).
pub fn should_run(test: &str) -> bool {
    match porthole_labtool::lab::available() {
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

pub struct Lab {
    pub procs: Vec<Proc>,
    pub dir: tempfile::TempDir,
    /// Namespace of the client host and of the server host.
    pub a: String,
    pub b: String,
    /// A second host on A's LAN (for LAN-only tests).
    pub a2: String,
    /// The relay host on the lab's internet.
    pub relay: String,
    /// The network; declared last, so it is dropped (torn down) after `Drop for Lab` has
    /// stopped the processes.
    pub net: Net,
}

impl Lab {
    /// Builds the topology with the client's NAT `a` and the server's NAT `b`, and
    /// starts the relay.
    pub fn new(a: Nat, b: Nat, imp: Option<Impair>) -> Lab {
        let mut spec = Spec::new(a, b);
        spec.impair = imp;
        let net = Net::build(&spec, &labtool()).unwrap_or_else(|e| panic!("building the lab: {e}"));
        let mut lab = Lab {
            procs: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
            a: net.a.clone(),
            b: net.b.clone(),
            a2: net.a2.clone(),
            relay: net.relay.clone(),
            net,
        };
        let relay = lab.relay.clone();
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

    /// Starts `hold-check` in `ns` through the client's forward 127.0.0.1:8000 for
    /// `total`: a line every 200 ms and a bulk connection paced to `bulk_mbit` (0: none),
    /// every echoed byte verified. Returns its process; it prints `"ok":true` at the end.
    pub fn spawn_hold_check(&mut self, ns: &str, bulk_mbit: u32, total: Duration) -> usize {
        let mut hold = self.tool(ns);
        hold.args(["hold-check", "127.0.0.1:8000", "--interval-ms", "200"])
            .args(["--bulk-mbit", &bulk_mbit.to_string()])
            .args(["--seconds", &total.as_secs().to_string()]);
        self.spawn("hold-check", hold)
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
        // `net` (dropped next) kills what is left inside and removes the namespaces.
    }
}
