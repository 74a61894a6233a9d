//! PROXY protocol on forwards (`--source 'tcp://...?proxy_protocol=v1|v2'`): the target
//! sees the user's address, also when porthole itself sits behind a load balancer that
//! sends one (`accept_proxy_protocol=1`); and with real nginx (`listen ... proxy_protocol`,
//! `$proxy_protocol_addr` in its access log).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::support::TOKEN;
use crate::support::process::{Offline, Proc, endpoint_id, free_tcp_port, free_udp_port};

const LONG: Duration = Duration::from_secs(30);

/// A server process on loopback (no relay) and where clients find it.
struct Server {
    _proc: Proc,
    id: String,
    port: u16,
    dir: tempfile::TempDir,
}

fn server() -> Server {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tokens.txt"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("token.txt"), format!("{TOKEN}\n")).unwrap();
    let port = free_udp_port();
    let proc = Offline::server(&dir.path().join("tokens.txt"), port).spawn("server");
    let id = endpoint_id(&proc);
    proc.wait_line("serving", LONG);
    Server {
        _proc: proc,
        id,
        port,
        dir,
    }
}

impl Server {
    /// A client with these `(source, listen port)` forwards.
    fn client(&self, forwards: &[(&str, u16)]) -> Proc {
        let mut c = Offline::client(&self.id, self.port, &self.dir.path().join("token.txt"));
        for (source, listen) in forwards {
            c = c.forward(source, *listen);
        }
        c.spawn("client")
    }
}

/// A target that sends back, per connection, everything it read once it ends with `end`
/// (or the peer closed), and reports it.
pub(crate) fn recording_target(end: &[u8]) -> (u16, mpsc::Receiver<Vec<u8>>) {
    let end = end.to_vec();
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let (tx, end) = (tx.clone(), end.clone());
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut got = Vec::new();
                let mut buf = [0u8; 4096];
                while !got.ends_with(&end) {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = s.write_all(&got);
                let _ = tx.send(got);
            });
        }
    });
    (port, rx)
}

/// Connects to `listen` until the tunnel answers: `send` goes out, as many bytes come
/// back; returns them and the user's own address.
pub(crate) fn through(listen: u16, send: &[u8]) -> (Vec<u8>, SocketAddr) {
    let deadline = Instant::now() + LONG;
    loop {
        let attempt = (|| {
            let mut s = TcpStream::connect(("127.0.0.1", listen)).ok()?;
            s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            s.write_all(send).ok()?;
            let mut back = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => back.extend_from_slice(&buf[..n]),
                }
            }
            (!back.is_empty()).then(|| (back, s.local_addr().unwrap()))
        })();
        if let Some(r) = attempt {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "no answer through 127.0.0.1:{listen}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// v1 and v2 headers reach the target ahead of the user's bytes, naming the user's
/// address and port and the listener's.
#[test]
fn the_target_sees_the_users_address_in_v1_and_v2() {
    let s = server();
    let data = b"hello through porthole";
    let (t1, got1) = recording_target(data);
    let (t2, got2) = recording_target(data);
    let (l1, l2) = (free_tcp_port(), free_tcp_port());
    let _client = s.client(&[
        (&format!("tcp://127.0.0.1:{t1}?proxy_protocol=v1"), l1),
        (&format!("tcp://127.0.0.1:{t2}?proxy_protocol=v2"), l2),
    ]);

    let (_, user) = through(l1, data);
    let seen = got1.recv_timeout(LONG).unwrap();
    let line = format!("PROXY TCP4 127.0.0.1 127.0.0.1 {} {l1}\r\n", user.port());
    assert_eq!(
        String::from_utf8_lossy(&seen),
        format!("{line}{}", String::from_utf8_lossy(data))
    );

    let (_, user) = through(l2, data);
    let seen = got2.recv_timeout(LONG).unwrap();
    let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    // Version 2, PROXY command; TCP over IPv4; 12 bytes of addresses and ports.
    want.extend_from_slice(&[0x21, 0x11, 0, 12, 127, 0, 0, 1, 127, 0, 0, 1]);
    want.extend_from_slice(&user.port().to_be_bytes());
    want.extend_from_slice(&l2.to_be_bytes());
    want.extend_from_slice(data);
    assert_eq!(seen, want);
}

/// Behind a load balancer: the header the balancer sent is read off and its address
/// passed on; a connection without one never reaches the target.
#[test]
fn an_accepted_header_names_the_user_and_a_missing_one_is_refused() {
    let s = server();
    let data = b"GET / HTTP/1.0\r\n\r\n";
    let (t, got) = recording_target(data);
    let l = free_tcp_port();
    let _client = s.client(&[(
        &format!("tcp://127.0.0.1:{t}?proxy_protocol=v1&accept_proxy_protocol=1"),
        l,
    )]);
    let mut sent = b"PROXY TCP4 198.51.100.23 10.1.2.3 40000 443\r\n".to_vec();
    sent.extend_from_slice(data);
    through(l, &sent);
    let seen = got.recv_timeout(LONG).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen),
        format!(
            "PROXY TCP4 198.51.100.23 127.0.0.1 40000 {l}\r\n{}",
            String::from_utf8_lossy(data)
        )
    );

    // No header: closed without a byte reaching the target.
    let mut c = TcpStream::connect(("127.0.0.1", l)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(data).unwrap();
    let mut buf = [0u8; 64];
    let n = c.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "a connection without a PROXY header was answered");
    assert!(
        got.recv_timeout(Duration::from_secs(2)).is_err(),
        "a connection without a PROXY header reached the target"
    );
}

/// nginx in its own prefix directory, listening with `proxy_protocol` and logging
/// `$proxy_protocol_addr:$proxy_protocol_port`.
pub(crate) struct Nginx {
    child: std::process::Child,
    log: std::path::PathBuf,
    pub dir: tempfile::TempDir,
}

impl Nginx {
    /// Waits (10 s at most) for `want` as a whole line of the access log.
    pub fn wait_log_line(&self, want: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            if log.lines().any(|l| l == want) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nginx's log lacks {want:?}:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx(port: u16) -> Option<Nginx> {
    nginx_serving(
        &format!(
            "server {{ listen 127.0.0.1:{port} proxy_protocol;\n\
             location / {{ return 200 \"visitor $proxy_protocol_addr\\n\"; }} }}\n"
        ),
        port,
        |_| {},
    )
}

/// nginx with these `server` blocks (`files` writes what they need into its directory,
/// which `{DIR}` in the blocks names), once `port` answers; `None` (with a banner) when
/// nginx is not installed and not required.
pub(crate) fn nginx_serving(servers: &str, port: u16, files: impl FnOnce(&Path)) -> Option<Nginx> {
    if Command::new("nginx").arg("-v").output().is_err() {
        assert!(
            std::env::var("PORTHOLE_NGINX").as_deref() != Ok("required"),
            "nginx is missing and PORTHOLE_NGINX=required (install Debian's nginx)"
        );
        eprintln!(
            "\n=== SKIPPED: a test with nginx: nginx not installed (apt-get install nginx) ===\n"
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    files(dir.path());
    let d = dir.path().display();
    let servers = servers.replace("{DIR}", &d.to_string());
    let conf = format!(
        "pid {d}/nginx.pid;\nerror_log {d}/error.log;\nevents {{}}\nhttp {{\n\
         client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
         fastcgi_temp_path {d}/fastcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
         log_format pp '$proxy_protocol_addr:$proxy_protocol_port $remote_addr \"$request\"';\n\
         access_log {d}/access.log pp;\n{servers}}}\n"
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir.path())
        .arg("-c")
        .arg(dir.path().join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + LONG;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start: {}", {
            std::fs::read_to_string(Path::new(&dir.path().join("error.log"))).unwrap_or_default()
        });
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(Nginx {
        child,
        log: dir.path().join("access.log"),
        dir,
    })
}

/// Real nginx behind porthole forwards with v1 and v2 headers: its access log names each
/// user's address and port, the ones the user connected from.
#[test]
fn nginx_logs_the_users_address_from_v1_and_v2() {
    let port = free_tcp_port();
    let Some(nginx) = nginx(port) else { return };
    let s = server();
    let (l1, l2) = (free_tcp_port(), free_tcp_port());
    let _client = s.client(&[
        (&format!("tcp://127.0.0.1:{port}?proxy_protocol=v1"), l1),
        (&format!("tcp://127.0.0.1:{port}?proxy_protocol=v2"), l2),
    ]);
    for (listen, path) in [(l1, "/v1"), (l2, "/v2")] {
        let request = format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n");
        let (answer, user) = through(listen, request.as_bytes());
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 200") && answer.contains("visitor 127.0.0.1"),
            "{path}: {answer}"
        );
        let want = format!(
            "127.0.0.1:{} 127.0.0.1 \"GET {path} HTTP/1.0\"",
            user.port()
        );
        nginx.wait_log_line(&want);
    }
}
