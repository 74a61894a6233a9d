//! Running the real `porthole` binary: output captured line by line, waits with
//! timeouts, killed on drop.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_porthole"));
    scrub(&mut c);
    c
}

/// No inherited log filter or secrets: each test says what it means.
pub fn scrub(c: &mut Command) {
    // PORTHOLE_TEST_RUST_LOG passes a log filter to spawned binaries when debugging a test.
    match std::env::var("PORTHOLE_TEST_RUST_LOG") {
        Ok(filter) => c.env("RUST_LOG", filter),
        Err(_) => c.env_remove("RUST_LOG"),
    }
    .env_remove("PORTHOLE_AUTH_TOKEN")
    .env_remove("PORTHOLE_SECRET")
    .env_remove("PORTHOLE_METRICS_TOKEN")
    .env("NO_COLOR", "1");
}

pub struct Proc {
    pub name: String,
    child: Child,
    out: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command) -> Proc {
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let out = Arc::new(Mutex::new(Vec::new()));
        for pipe in [
            Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().unwrap()),
        ] {
            let out = out.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    out.lock().unwrap().push((Instant::now(), line));
                }
            });
        }
        Proc {
            name: name.to_string(),
            child,
            out,
        }
    }

    pub fn output(&self) -> String {
        self.out
            .lock()
            .unwrap()
            .iter()
            .map(|(_, l)| l.as_str())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// When the first line containing `needle` was read, if any.
    pub fn first_seen(&self, needle: &str) -> Option<Instant> {
        self.out
            .lock()
            .unwrap()
            .iter()
            .find(|(_, l)| l.contains(needle))
            .map(|(t, _)| *t)
    }

    /// The last line containing `needle`, if any.
    pub fn last_line(&self, needle: &str) -> Option<String> {
        self.out
            .lock()
            .unwrap()
            .iter()
            .rev()
            .find(|(_, l)| l.contains(needle))
            .map(|(_, l)| l.clone())
    }

    /// Waits for a line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str, limit: Duration) -> String {
        let start = Instant::now();
        loop {
            if let Some((_, l)) = self
                .out
                .lock()
                .unwrap()
                .iter()
                .find(|(_, l)| l.contains(needle))
            {
                return l.clone();
            }
            if start.elapsed() > limit {
                panic!(
                    "{}: no line with {needle:?} within {limit:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn count_lines(&self, needle: &str) -> usize {
        self.out
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, l)| l.contains(needle))
            .count()
    }

    /// Waits for exit; returns the exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader threads drain the pipes.
                std::thread::sleep(Duration::from_millis(100));
                return status.code().unwrap_or(-1);
            }
            if start.elapsed() > limit {
                let _ = self.child.kill();
                panic!(
                    "{} did not exit within {limit:?}; output:\n{}",
                    self.name,
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Open file descriptors of the process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .map(|d| d.count())
            .unwrap_or(0)
    }

    /// Resident set size in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- {} output ----\n{}", self.name, self.output());
        }
    }
}

/// A free loopback UDP port (and TCP: both protocols, for services on one port).
pub fn free_udp_port() -> u16 {
    free_port()
}

/// A free loopback TCP port (and UDP).
pub fn free_tcp_port() -> u16 {
    free_port()
}

/// Ports handed out below the kernel's ephemeral range (32768 and up), each once per
/// test process: a port the kernel picked for `:0` can be picked again at once for an
/// outgoing connection (tests open hundreds: NodePass pools), and a process bound to
/// it a moment later fails with "address in use".
fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 12_000;
    const LAST: u16 = 32_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        FIRST + (std::process::id() % 50) as u16 * 200,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        assert!(port < LAST, "the tests ran out of ports below 32000");
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        if tcp.is_ok() && udp.is_ok() {
            return port;
        }
    }
}

/// The real binary as a server or client on loopback that needs nothing outside the
/// machine: no relay (unless [`Offline::relay`] names one), no DNS discovery, no port
/// mapping. The one place for the flags every process test would otherwise repeat.
pub struct Offline {
    cmd: Command,
    relay: String,
}

impl Offline {
    /// `porthole server` on UDP 127.0.0.1:`port`, accepting the tokens in `tokens`,
    /// allowing TCP to loopback.
    pub fn server(tokens: &std::path::Path, port: u16) -> Self {
        Self::server_allowing(tokens, port, &["127.0.0.0/8".into()])
    }

    /// [`Offline::server`] allowing TCP to exactly `allowed`.
    pub fn server_allowing(tokens: &std::path::Path, port: u16, allowed: &[String]) -> Self {
        let mut cmd = bin();
        cmd.args(["server", "--auth-tokens-file"])
            .arg(tokens)
            .args(["--bind", &format!("127.0.0.1:{port}")]);
        for a in allowed {
            cmd.args(["--allowed-tcp", a]);
        }
        Self::with_offline_flags(cmd)
    }

    /// `porthole client` reaching server `id` at 127.0.0.1:`port` with the token in
    /// `token`.
    pub fn client(id: &str, port: u16, token: &std::path::Path) -> Self {
        Self::reaching("client", id, port, token)
    }

    /// `porthole ping` of server `id` at 127.0.0.1:`port` (a client's flags, no forwards).
    pub fn ping(id: &str, port: u16, token: &std::path::Path) -> Self {
        Self::reaching("ping", id, port, token)
    }

    fn reaching(subcommand: &str, id: &str, port: u16, token: &std::path::Path) -> Self {
        let mut cmd = bin();
        cmd.args([subcommand, "--server-node-id", id])
            .args(["--server-addr", &format!("127.0.0.1:{port}")])
            .arg("--auth-token-file")
            .arg(token);
        Self::with_offline_flags(cmd)
    }

    fn with_offline_flags(mut cmd: Command) -> Self {
        cmd.args(["--dns-server", "none", "--no-portmap"]);
        Self {
            cmd,
            relay: "none".into(),
        }
    }

    /// Through this relay instead of none.
    pub fn relay(mut self, url: &str) -> Self {
        self.relay = url.to_string();
        self
    }

    /// A client's forward: `source` on the server's side, listened for on 127.0.0.1:`listen`.
    pub fn forward(self, source: &str, listen: u16) -> Self {
        self.args(&[
            "--source",
            source,
            "--listen",
            &format!("127.0.0.1:{listen}"),
        ])
    }

    pub fn args(mut self, args: &[&str]) -> Self {
        self.cmd.args(args);
        self
    }

    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.cmd.env(key, value);
        self
    }

    pub fn command(mut self) -> Command {
        self.cmd.args(["--relay-url", &self.relay]);
        self.cmd
    }

    pub fn spawn(self, name: &str) -> Proc {
        Proc::spawn(name, self.command())
    }
}

/// A server's EndpointId, from its `EndpointId: ` line.
pub fn endpoint_id(server: &Proc) -> String {
    server
        .wait_line("EndpointId: ", Duration::from_secs(20))
        .trim_start_matches("EndpointId: ")
        .to_string()
}
