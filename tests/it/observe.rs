//! Watching a running tunnel: `porthole status` over the control socket, Prometheus
//! metrics and the status page (rendered by a real headless Chromium).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::process::{Offline, Proc, bin, endpoint_id, free_tcp_port, free_udp_port};
use crate::support::{OTHER_TOKEN, TOKEN};

const LONG: Duration = Duration::from_secs(30);

struct Lab {
    dir: tempfile::TempDir,
    echo: u16,
}

impl Lab {
    fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokens.txt"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("wrong.txt"), format!("{OTHER_TOKEN}\n")).unwrap();
        let echo = crate::support::echo::tcp_echo_blocking().port();
        Lab { dir, echo }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A server with a control socket in the lab's directory and, with `metrics`,
    /// the metrics listener on that port; returns it, its id and its UDP port.
    fn server(&self, metrics: Option<u16>) -> (Proc, String, u16) {
        let port = free_udp_port();
        let socket = self.path("server.sock");
        let mut s = Offline::server(&self.path("tokens.txt"), port)
            .args(&["--control-socket", socket.to_str().unwrap()]);
        if let Some(m) = metrics {
            s = s.args(&["--metrics", &format!("127.0.0.1:{m}")]);
        }
        let p = s.spawn("server");
        let id = endpoint_id(&p);
        p.wait_line("serving", LONG);
        (p, id, port)
    }

    fn client(&self, id: &str, port: u16, listen: u16, metrics: u16) -> Proc {
        let socket = self.path("client.sock");
        let p = Offline::client(id, port, &self.path("tokens.txt"))
            .forward(&format!("tcp://127.0.0.1:{}", self.echo), listen)
            .args(&["--control-socket", socket.to_str().unwrap()])
            .args(&["--metrics", &format!("127.0.0.1:{metrics}")])
            .spawn("client");
        p.wait_line("tunnel up", LONG);
        p
    }
}

/// How many refusals of `reason` a server's status report counts.
pub(crate) fn refusals(report: &Value, reason: &str) -> Option<u64> {
    report["server"]["refusals"]
        .as_array()?
        .iter()
        .find(|x| x["reason"] == reason)
        .and_then(|x| x["count"].as_u64())
}

/// `porthole status --socket PATH --json`, parsed.
pub(crate) fn status_json(socket: &Path) -> Value {
    let out = bin()
        .args(["status", "--json", "--socket"])
        .arg(socket)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "porthole status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// A plain HTTP/1.1 GET on loopback: status code and body.
fn http_get(port: u16, path: &str, bearer: Option<&str>) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let auth = bearer.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    (code, body)
}

/// The value of the metric line that starts with `series` (name and labels).
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Sends `n` bytes through the echo forward on `port` and reads them back.
fn echo_bytes(port: u16, n: usize) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let data = vec![0x5au8; n];
    let mut reader = s.try_clone().unwrap();
    let t = std::thread::spawn(move || {
        let mut got = vec![0u8; n];
        reader.read_exact(&mut got).unwrap();
        got
    });
    s.write_all(&data).unwrap();
    assert_eq!(t.join().unwrap(), data);
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_and_metrics_show_sessions_paths_bytes_and_refusals() {
    let lab = Lab::new();
    let (sm, cm) = (free_tcp_port(), free_tcp_port());
    let (mut server, id, port) = lab.server(Some(sm));
    let listen = free_tcp_port();
    let mut client = lab.client(&id, port, listen, cm);
    echo_bytes(listen, 200_000);

    // Refused: a wrong token, and a source outside the allow-list (127.0.0.0/8).
    let mut wrong = Offline::client(&id, port, &lab.path("wrong.txt"))
        .forward("tcp://127.0.0.1:9", free_tcp_port())
        .spawn("wrong-token client");
    assert_eq!(wrong.wait_exit(LONG), 3);
    let mut outside = Offline::client(&id, port, &lab.path("tokens.txt"))
        .forward("tcp://192.0.2.1:80", free_tcp_port())
        .spawn("outside client");
    assert_eq!(outside.wait_exit(LONG), 4);

    // The server's report: one session, direct, with its bytes, and both refusals.
    let r = status_json(&lab.path("server.sock"));
    assert_eq!(r["role"], "server");
    let sessions = r["server"]["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 1, "{r}");
    let s = &sessions[0];
    assert_eq!(s["path"]["kind"], "direct", "{r}");
    assert!(s["path"]["rtt_ms"].as_f64().unwrap() >= 0.0);
    assert!(s["client"].as_str().unwrap().starts_with("token:"));
    assert!(s["bytes_up"].as_u64().unwrap() >= 200_000, "{r}");
    assert!(s["bytes_down"].as_u64().unwrap() >= 200_000, "{r}");
    let fwd = &s["forwards"][0];
    assert_eq!(fwd["source"], format!("tcp://127.0.0.1:{}", lab.echo));
    assert_eq!(fwd["tcp_total"], 1);
    assert_eq!(refusals(&r, "auth_failed"), Some(1), "{r}");
    assert_eq!(refusals(&r, "not_allowed"), Some(1), "{r}");
    // Nothing secret: the token is never shown, in the report or the log.
    assert!(!r.to_string().contains(TOKEN));
    assert!(!server.output().contains(TOKEN));
    assert!(server.output().contains(s["client"].as_str().unwrap()));

    // The human table says the same.
    let out = bin()
        .args(["status", "--socket"])
        .arg(lab.path("server.sock"))
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("sessions: 1") && table.contains("direct 127.0.0.1:"),
        "{table}"
    );
    assert!(table.contains("auth_failed"), "{table}");

    // The client's report: up, with its listener and bytes.
    let c = status_json(&lab.path("client.sock"));
    assert_eq!(c["client"]["state"], "up", "{c}");
    assert_eq!(c["client"]["path"]["kind"], "direct", "{c}");
    let f = &c["client"]["forwards"][0];
    assert_eq!(f["listen"], format!("127.0.0.1:{listen}"));
    assert!(f["bytes_down"].as_u64().unwrap() >= 200_000, "{c}");

    // Prometheus metrics, both ends.
    let (code, m) = http_get(sm, "/metrics", None);
    assert_eq!(code, 200);
    assert_eq!(
        metric(&m, r#"porthole_sessions_active{path="direct"}"#),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            r#"porthole_refusals_total{kind="auth",reason="auth_failed"}"#
        ),
        Some(1.0),
        "{m}"
    );
    let up = format!(
        r#"porthole_forward_bytes_total{{forward="tcp://127.0.0.1:{}",direction="up"}}"#,
        lab.echo
    );
    assert!(metric(&m, &up).unwrap_or(0.0) >= 200_000.0, "{m}");
    assert!(
        m.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    let (code, m) = http_get(cm, "/metrics", None);
    assert_eq!(code, 200);
    assert_eq!(metric(&m, "porthole_tunnel_up"), Some(1.0), "{m}");
    assert_eq!(
        metric(&m, "porthole_first_byte_seconds_count"),
        Some(1.0),
        "{m}"
    );
    let (code, json) = http_get(sm, "/api/status", None);
    assert_eq!(code, 200);
    let api: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(api["server"]["sessions"][0]["id"], s["id"]);

    // The session leaves the table when the client goes.
    client.signal("TERM");
    assert_eq!(client.wait_exit(LONG), 0);
    wait_for("session gone from status", Duration::from_secs(10), || {
        status_json(&lab.path("server.sock"))["server"]["sessions"]
            .as_array()
            .is_some_and(|v| v.is_empty())
    });
    assert!(
        !lab.path("client.sock").exists(),
        "the client removed its socket"
    );
    server.signal("TERM");
    assert_eq!(server.wait_exit(LONG), 0);
    assert!(
        !lab.path("server.sock").exists(),
        "the server removed its socket"
    );
}

#[test]
fn the_metrics_listener_needs_a_token_off_loopback() {
    let lab = Lab::new();
    let port = free_tcp_port();
    let mut open = Offline::server(&lab.path("tokens.txt"), free_udp_port())
        .args(&["--metrics", &format!("0.0.0.0:{port}")])
        .spawn("server without a token");
    assert_eq!(open.wait_exit(LONG), 2);
    assert!(
        open.output().contains("--metrics-token-file"),
        "{}",
        open.output()
    );

    let bearer = "metrics-token-0123456789";
    std::fs::write(lab.path("metrics.token"), format!("{bearer}\n")).unwrap();
    let server = Offline::server(&lab.path("tokens.txt"), free_udp_port())
        .args(&["--metrics", &format!("0.0.0.0:{port}")])
        .args(&[
            "--metrics-token-file",
            lab.path("metrics.token").to_str().unwrap(),
        ])
        .args(&["--control-socket", "none"])
        .spawn("server");
    server.wait_line("serving", LONG);
    assert_eq!(http_get(port, "/metrics", None).0, 401);
    assert_eq!(
        http_get(port, "/metrics", Some("wrong-token-wrong-token")).0,
        401
    );
    assert_eq!(http_get(port, "/api/status", None).0, 401);
    let (code, body) = http_get(port, "/metrics", Some(bearer));
    assert_eq!(code, 200);
    assert!(body.contains("porthole_sessions_total"), "{body}");
    // The page carries no data: anyone may load it (it asks for the token itself).
    let (code, page) = http_get(port, "/", None);
    assert_eq!(code, 200);
    assert!(page.contains("porthole status"));
    assert!(
        !server.output().contains(bearer),
        "the bearer token is never logged"
    );
}

#[test]
fn other_users_cannot_use_the_control_socket() {
    let lab = Lab::new();
    // The lab directory must be reachable for the other user to even try.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(lab.dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_server, _, _) = lab.server(None);
    let socket = lab.path("server.sock");
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    if Command::new("setpriv").arg("--version").output().is_err() {
        eprintln!("\n=== SKIPPED: setpriv (util-linux) missing: cannot act as another user ===\n");
        return;
    }
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_porthole"))
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    assert!(!out.status.success(), "another user read the status");
    let err = String::from_utf8_lossy(&out.stderr);
    // Refused at the socket (the binary itself runs for that user: it printed an error).
    assert!(
        err.contains("ermission denied") && err.contains(socket.to_str().unwrap()),
        "{err}"
    );
    // The owner still can.
    assert_eq!(status_json(&socket)["role"], "server");
}

/// Headless Chromium with the flags this offline machine needs.
fn chromium(profile: &Path) -> Command {
    let mut c = Command::new("chromium");
    c.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
    ])
    .arg(format!("--user-data-dir={}", profile.display()));
    c
}

#[test]
fn status_page_renders_sessions_and_growing_counters_in_chromium() {
    if Command::new("chromium").arg("--version").output().is_err() {
        assert!(
            std::env::var("PORTHOLE_BROWSER").as_deref() != Ok("required"),
            "chromium is missing and PORTHOLE_BROWSER=required (install Debian's chromium)"
        );
        eprintln!(
            "\n=== SKIPPED: status page browser test: chromium not installed (apt-get install chromium) ===\n"
        );
        return;
    }
    let lab = Lab::new();
    let (sm, cm) = (free_tcp_port(), free_tcp_port());
    let (_server, id, port) = lab.server(Some(sm));
    let listen = free_tcp_port();
    let _client = lab.client(&id, port, listen, cm);
    echo_bytes(listen, 10_000);

    // Traffic flows for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let pump = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                echo_bytes(listen, 100_000);
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };

    let url = format!("http://127.0.0.1:{sm}/");
    let dump = |n: usize| -> String {
        let profile = lab.path(&format!("chromium-{n}"));
        let out = chromium(&profile)
            .arg("--virtual-time-budget=5000")
            .arg("--dump-dom")
            .arg(&url)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The session row as rendered: its path, and its bytes (data-down on the row).
    let session_row = |dom: &str| -> Option<(String, u64)> {
        let start = dom.find(r#"<tr class="session""#)?;
        let row = &dom[start..start + dom[start..].find("</tr>")?];
        let attr = |name: &str| {
            let at = row.find(&format!("{name}=\""))? + name.len() + 2;
            Some(row[at..at + row[at..].find('"')?].to_string())
        };
        Some((attr("data-path")?, attr("data-down")?.parse().ok()?))
    };
    let first = dump(1);
    let (path, down1) =
        session_row(&first).unwrap_or_else(|| panic!("no session row in:\n{first}"));
    assert_eq!(path, "direct");
    assert!(
        first.contains("token:"),
        "the client is named by its token label"
    );
    assert!(
        first.contains(&format!("tcp://127.0.0.1:{}", lab.echo)),
        "forward row"
    );
    std::thread::sleep(Duration::from_secs(1));
    let second = dump(2);
    let (_, down2) = session_row(&second).unwrap_or_else(|| panic!("no session row in:\n{second}"));
    assert!(
        down2 > down1,
        "the byte counter grows while traffic flows ({down1} -> {down2})"
    );

    // A screenshot for people (README, docs/OPERATING.md), kept as a test artifact.
    let artifacts = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();
    let shot = artifacts.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let out = chromium(&lab.path("chromium-shot"))
        .arg("--virtual-time-budget=8000")
        .arg("--window-size=1100,900")
        .arg(format!("--screenshot={}", shot.display()))
        .arg(&url)
        .output()
        .unwrap();
    stop.store(true, Ordering::Relaxed);
    pump.join().unwrap();
    let png = std::fs::read(&shot).unwrap_or_else(|e| {
        panic!(
            "no screenshot ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real picture"
    );
}

#[test]
fn a_client_the_server_turns_away_says_so_and_when_it_tries_again() {
    let lab = Lab::new();
    // A server that takes one client; the second is turned away (busy) and retries.
    let port = free_udp_port();
    let server = Offline::server(&lab.path("tokens.txt"), port)
        .args(&["--max-sessions", "1", "--control-socket", "none"])
        .spawn("server");
    let id = endpoint_id(&server);
    server.wait_line("serving", LONG);
    let first = Offline::client(&id, port, &lab.path("tokens.txt"))
        .forward("tcp://127.0.0.1:9", free_tcp_port())
        .args(&["--control-socket", "none"])
        .spawn("first client");
    first.wait_line("tunnel up", LONG);
    let socket = lab.path("client.sock");
    let _second = Offline::client(&id, port, &lab.path("tokens.txt"))
        .forward("tcp://127.0.0.1:9", free_tcp_port())
        .args(&["--control-socket", socket.to_str().unwrap()])
        .spawn("second client");
    let mut last = Value::Null;
    wait_for("a retry in the status", LONG, || {
        if !socket.exists() {
            return false;
        }
        last = status_json(&socket);
        last["client"]["next_attempt_in_ms"].is_u64()
    });
    let c = &last["client"];
    assert_eq!(c["state"], "connecting", "{last}");
    assert!(
        c["reason"]
            .as_str()
            .is_some_and(|r| r.contains("session limit")),
        "{last}"
    );
    assert!(c["path"].is_null(), "{last}");
    let out = bin()
        .args(["status", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("tunnel: connecting") && table.contains("next attempt in"),
        "{table}"
    );
}

#[test]
fn a_relay_reports_its_peers_and_traffic() {
    let lab = Lab::new();
    let http = free_tcp_port();
    let metrics = free_tcp_port();
    let socket = lab.path("relay.sock");
    let mut cmd = bin();
    cmd.args(["relay", "--http-bind", &format!("127.0.0.1:{http}")])
        .args(["--stun-bind", "127.0.0.1:0"])
        .args(["--control-socket", socket.to_str().unwrap()])
        .args(["--metrics", &format!("127.0.0.1:{metrics}")]);
    let relay = Proc::spawn("relay", cmd);
    relay.wait_line("relay URL", LONG);
    let url = format!("http://127.0.0.1:{http}");
    let port = free_udp_port();
    let server = Offline::server(&lab.path("tokens.txt"), port)
        .relay(&url)
        .args(&["--control-socket", "none"])
        .spawn("server");
    let id = endpoint_id(&server);
    server.wait_line("serving", LONG);
    let listen = free_tcp_port();
    let _client = Offline::client(&id, port, &lab.path("tokens.txt"))
        .relay(&url)
        .args(&["--relay-only", "--control-socket", "none"])
        .forward(&format!("tcp://127.0.0.1:{}", lab.echo), listen)
        .spawn("client");
    _client.wait_line("tunnel up", LONG);
    echo_bytes(listen, 100_000);
    let r = status_json(&socket);
    assert_eq!(r["role"], "relay");
    assert!(r["relay"]["clients"].as_u64().unwrap() >= 2, "{r}");
    assert!(r["relay"]["bytes_in"].as_u64().unwrap() >= 100_000, "{r}");
    let (code, m) = http_get(metrics, "/metrics", None);
    assert_eq!(code, 200);
    assert!(
        metric(&m, "porthole_relay_clients").unwrap_or(0.0) >= 2.0,
        "{m}"
    );
    assert!(
        metric(&m, "porthole_relay_received_bytes_total").unwrap_or(0.0) >= 100_000.0,
        "{m}"
    );
    assert!(
        metric(&m, "porthole_relay_stun_requests_total").is_some(),
        "{m}"
    );
}
