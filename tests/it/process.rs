//! The real binary end to end: exit codes, signals, and reconnecting after the
//! server is killed and restarted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::process::{Offline, Proc, bin, endpoint_id, free_tcp_port, free_udp_port};
use crate::support::{OTHER_TOKEN, TOKEN};

const LONG: Duration = Duration::from_secs(30);

struct Setup {
    dir: tempfile::TempDir,
    relay: Proc,
    relay_url: String,
}

impl Setup {
    fn new() -> Setup {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokens.txt"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("token.txt"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("wrong.txt"), format!("{OTHER_TOKEN}\n")).unwrap();
        let out = bin()
            .args(["generate-server-key", "--output"])
            .arg(dir.path().join("server.key"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let http = free_tcp_port();
        let mut cmd = bin();
        cmd.args(["relay", "--http-bind", &format!("127.0.0.1:{http}")]);
        let relay = Proc::spawn("relay", cmd);
        relay.wait_line("relay URL", LONG);
        Setup {
            dir,
            relay,
            relay_url: format!("http://127.0.0.1:{http}"),
        }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }

    /// The server (its key and tokens in the setup's directory) on 127.0.0.1:`bind_port`,
    /// with the setup's relay and `extra` flags.
    fn server_with(&self, bind_port: u16, extra: &[&str]) -> Offline {
        Offline::server(Path::new(&self.path("tokens.txt")), bind_port)
            .relay(&self.relay_url)
            .args(&["--secret-file", &self.path("server.key")])
            .args(extra)
    }

    fn server(&self, bind_port: u16) -> (Proc, String) {
        let p = self.server_with(bind_port, &[]).spawn("server");
        let id = endpoint_id(&p);
        p.wait_line("serving", LONG);
        (p, id)
    }

    /// A client of server `id`, through the setup's relay, with `extra` flags.
    fn client_with(&self, id: &str, server_port: u16, token_file: &str) -> Offline {
        Offline::client(id, server_port, Path::new(&self.path(token_file))).relay(&self.relay_url)
    }

    fn client(
        &self,
        id: &str,
        server_port: u16,
        token_file: &str,
        source: &str,
        listen: u16,
    ) -> Proc {
        self.client_with(id, server_port, token_file)
            .forward(source, listen)
            .spawn("client")
    }
}

fn echo_server() -> u16 {
    crate::support::echo::tcp_echo_blocking().port()
}

/// One request/response through the tunnel; `None` if it failed.
fn try_echo(port: u16, msg: &[u8]) -> Option<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(msg).ok()?;
    let mut got = vec![0u8; msg.len()];
    s.read_exact(&mut got).ok()?;
    Some(got)
}

fn eventually_echo(port: u16, limit: Duration) -> Duration {
    let start = Instant::now();
    loop {
        if try_echo(port, b"ping through porthole").as_deref()
            == Some(b"ping through porthole".as_slice())
        {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "no echo through the tunnel within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn wrong_token_exits_3_with_a_clear_message() {
    let s = Setup::new();
    let port = free_udp_port();
    let (_server, id) = s.server(port);
    let mut client = s.client(
        &id,
        port,
        "wrong.txt",
        "tcp://127.0.0.1:22",
        free_tcp_port(),
    );
    assert_eq!(client.wait_exit(LONG), 3);
    // What happened (from the engine) and what to do (in the command line's terms).
    let out = client.output();
    assert!(
        out.contains("error: the server refused the auth token"),
        "{out}"
    );
    assert!(out.contains("hint: check --auth-token-file"), "{out}");
}

#[test]
fn refused_source_exits_4_before_any_user_connection() {
    let s = Setup::new();
    let port = free_udp_port();
    let (_server, id) = s.server(port);
    let mut client = s.client(&id, port, "token.txt", "tcp://10.9.8.7:22", free_tcp_port());
    assert_eq!(client.wait_exit(LONG), 4);
    let out = client.output();
    assert!(
        out.contains("tcp://10.9.8.7:22") && out.contains("allow-list"),
        "{out}"
    );
    let mut client = s.client(
        &id,
        port,
        "token.txt",
        "udp://127.0.0.1:53",
        free_tcp_port(),
    );
    assert_eq!(client.wait_exit(LONG), 4);
    assert!(
        client.output().contains("protocol not enabled"),
        "{}",
        client.output()
    );
}

#[test]
fn reconnects_after_server_restart_and_exits_0_on_sigterm() {
    let s = Setup::new();
    let target = echo_server();
    let port = free_udp_port();
    let (mut server, id) = s.server(port);
    let listen = free_tcp_port();
    let mut client = s.client(
        &id,
        port,
        "token.txt",
        &format!("tcp://127.0.0.1:{target}"),
        listen,
    );
    client.wait_line("tunnel up", LONG);
    eventually_echo(listen, LONG);

    // Kill the server hard, with a transfer in flight, and restart it on the same
    // address with the same key. The old connection can never work again: the local
    // application must see an error (not a silent clean end of stream), and well before
    // the 90 s idle timeout: the client's liveness probe finds the restarted server.
    let mut inflight = TcpStream::connect(("127.0.0.1", listen)).unwrap();
    inflight.write_all(b"hello").unwrap();
    let mut five = [0u8; 5];
    inflight
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    inflight.read_exact(&mut five).unwrap();
    server.kill();
    let (mut server, _) = s.server(port);
    inflight
        .set_read_timeout(Some(Duration::from_secs(45)))
        .unwrap();
    let mut buf = [0u8; 16];
    let r = inflight.read(&mut buf);
    assert!(
        r.is_err(),
        "expected a reset after the server restarted, got {r:?}"
    );
    client.wait_line("no longer answers", Duration::from_secs(5));

    // The client comes back by itself.
    let took = eventually_echo(listen, Duration::from_secs(60));
    assert!(
        client.is_running(),
        "the client must survive the server restart"
    );
    assert!(client.count_lines("tunnel up") >= 2, "{}", client.output());
    eprintln!("reconnected and forwarding {took:?} after the restart");

    client.signal("TERM");
    assert_eq!(client.wait_exit(LONG), 0);
    server.signal("TERM");
    assert_eq!(server.wait_exit(LONG), 0);
    assert!(Path::new(&s.path("server.key")).exists());
    drop(s.relay);
}

#[test]
fn relay_restart_both_sides_recover() {
    let mut s = Setup::new();
    let target = echo_server();
    let relay_port = s.relay_url.rsplit(':').next().unwrap().to_string();
    let port = free_udp_port();
    let server = s.server_with(port, &["--relay-only"]).spawn("server");
    let id = endpoint_id(&server);
    let listen = free_tcp_port();
    let mut client = s
        .client_with(&id, port, "token.txt")
        .args(&["--relay-only"])
        .forward(&format!("tcp://127.0.0.1:{target}"), listen)
        .spawn("client");
    client.wait_line("tunnel up", LONG);
    eventually_echo(listen, LONG);
    assert!(
        client
            .last_line("path=")
            .unwrap_or_default()
            .contains("path=relay")
    );

    // The relay goes away and comes back on the same address.
    s.relay.kill();
    std::thread::sleep(Duration::from_secs(2));
    let mut cmd = bin();
    cmd.args(["relay", "--http-bind", &format!("127.0.0.1:{relay_port}")]);
    s.relay = Proc::spawn("relay-again", cmd);
    s.relay.wait_line("relay URL", LONG);
    let took = eventually_echo(listen, Duration::from_secs(90));
    eprintln!("forwarding again {took:?} after the relay came back");
    assert!(client.is_running());
    drop(server);
}

/// A NodePass URL's `log=` sets the level wherever the URL comes from: the `nodepass`
/// subcommand, or `[nodepass]` in a config file (which used to be ignored there).
#[test]
fn nodepass_log_level_applies_from_the_url_and_from_a_config_file() {
    let dir = tempfile::tempdir().unwrap();
    // Each run: a NodePass server (tls=0, reverse flow: users connect to `user`), with
    // the level `log`; returns whether its info line appeared once the tunnel port
    // accepts connections.
    let run = |from_file: bool, log: &str| -> bool {
        let (tunnel, user) = (free_tcp_port(), free_tcp_port());
        let url = format!("server://127.0.0.1:{tunnel}/127.0.0.1:{user}?tls=0&log={log}");
        let mut cmd = bin();
        if from_file {
            let cfg = dir.path().join(format!("np-{log}.toml"));
            std::fs::write(
                &cfg,
                format!("role = \"server\"\nmode = \"nodepass\"\n[nodepass]\nurl = \"{url}\"\n"),
            )
            .unwrap();
            cmd.arg("server").arg("-c").arg(&cfg);
        } else {
            cmd.args(["nodepass", &url]);
        }
        let p = Proc::spawn("nodepass", cmd);
        let start = Instant::now();
        while TcpStream::connect(("127.0.0.1", tunnel)).is_err() {
            assert!(start.elapsed() < LONG, "never listened:\n{}", p.output());
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(300));
        p.output().contains("NodePass server on")
    };
    assert!(run(false, "info"));
    assert!(!run(false, "warn"));
    assert!(run(true, "info"));
    assert!(!run(true, "warn"));
}

/// `porthole ping` authenticates like a client and reports the path and its RTT; it
/// fails cleanly with a wrong token (exit 3) and, with --until-direct, when only the
/// relay carries the tunnel (exit 1).
#[test]
fn ping_reports_the_path_and_its_rtt() {
    let s = Setup::new();
    let port = free_udp_port();
    let (_server, id) = s.server(port);
    let run = |token: &str, extra: &[&str]| {
        Offline::ping(&id, port, Path::new(&s.path(token)))
            .relay(&s.relay_url)
            .args(&["--count", "2"])
            .args(extra)
            .command()
            .output()
            .unwrap()
    };

    let out = run("token.txt", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pongs: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("pong from"))
        .collect();
    assert_eq!(pongs.len(), 2, "{stdout}");
    assert!(
        pongs
            .iter()
            .all(|l| l.contains("via direct 127.0.0.1:") && l.ends_with(" ms")),
        "{stdout}"
    );

    let out = run("token.txt", &["--until-direct"]);
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);

    let out = run("wrong.txt", &[]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let out = run("token.txt", &["--relay-only", "--until-direct"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("via relay http://127.0.0.1:"), "{stdout}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no direct path"));
}
