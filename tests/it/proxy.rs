//! Dynamic forwarding: `--socks` and `--http-proxy` on the client, every destination
//! checked by the server's allow-list. Driven by curl, as users do, and by raw SOCKS5.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Output};
use std::time::Duration;

use crate::support::TOKEN;
use crate::support::process::{Offline, Proc, endpoint_id, free_tcp_port, free_udp_port};

const LONG: Duration = Duration::from_secs(30);

/// A tiny web server: answers every request with `hello from ADDR`.
fn web(bind: &str) -> Option<SocketAddr> {
    let l = TcpListener::bind(bind).ok()?;
    let addr = l.local_addr().ok()?;
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let mut head = Vec::new();
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let body = format!("hello from {addr}");
                let _ = write!(
                    s,
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    Some(addr)
}

struct Lab {
    _dir: tempfile::TempDir,
    _server: Proc,
    client: Proc,
    socks: u16,
    http: u16,
}

/// A server allowing exactly `allowed`, and a client with a SOCKS and an HTTP proxy
/// (`bind` is their address, `extra` more client flags).
fn lab(allowed: &[String], bind: &str, extra: &[&str], env: &[(&str, &str)]) -> Lab {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let port = free_udp_port();
    let server =
        Offline::server_allowing(&tokens, port, allowed).args(&["--control-socket", "none"]);
    let server = server.spawn("server");
    let id = endpoint_id(&server);
    server.wait_line("serving", LONG);
    let (socks, http) = (free_tcp_port(), free_tcp_port());
    let mut c = Offline::client(&id, port, &tokens)
        .args(&["--control-socket", "none"])
        .args(&["--socks", &format!("{bind}:{socks}")])
        .args(&["--http-proxy", &format!("{bind}:{http}")])
        .args(extra);
    for (k, v) in env {
        c = c.env(k, v);
    }
    let client = c.spawn("client");
    Lab {
        _dir: dir,
        _server: server,
        client,
        socks,
        http,
    }
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl")
        .args(["-s", "-S", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl")
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn socks_and_http_connect_reach_what_the_allow_list_allows() {
    let w4 = web("127.0.0.1:0").unwrap();
    let w6 = web("[::1]:0");
    let closed = free_tcp_port();
    let mut allowed = vec![
        format!("127.0.0.1/32:{}", w4.port()),
        format!("127.0.0.1/32:{closed}"),
    ];
    if let Some(w6) = w6 {
        allowed.push(format!("::1/128:{}", w6.port()));
    }
    let l = lab(&allowed, "127.0.0.1", &[], &[]);
    l.client.wait_line("tunnel up", LONG);
    let socks = format!("127.0.0.1:{}", l.socks);
    let proxy = format!("http://127.0.0.1:{}", l.http);

    // A name resolved on the server's side, inside the allow-list.
    let ok = curl(&[
        "--socks5-hostname",
        &socks,
        &format!("http://localhost:{}/", w4.port()),
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        format!("hello from {w4}")
    );
    // The same name, another port: outside. SOCKS reply 2, "not allowed by ruleset".
    let no = curl(&["--socks5-hostname", &socks, "http://localhost:22/"]);
    assert_eq!(no.status.code(), Some(97), "{}", text(&no));
    assert!(
        String::from_utf8_lossy(&no.stderr).contains("(2)"),
        "{}",
        text(&no)
    );
    l.client
        .wait_line("outside the server's tcp allow-list", LONG);
    // Allowed, but nothing listens: reply 5, connection refused.
    let refused = curl(&[
        "--socks5-hostname",
        &socks,
        &format!("http://localhost:{closed}/"),
    ]);
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("(5)"),
        "{}",
        text(&refused)
    );
    // IPv6, resolved locally (plain socks5).
    if let Some(w6) = w6 {
        let v6 = curl(&["--socks5", &socks, &format!("http://[::1]:{}/", w6.port())]);
        assert!(v6.status.success(), "{}", text(&v6));
        assert_eq!(
            String::from_utf8_lossy(&v6.stdout),
            format!("hello from {w6}")
        );
    } else {
        eprintln!("\n=== SKIPPED: IPv6 proxy check: no ::1 on this host ===\n");
    }

    // HTTP CONNECT: allowed, and refused with 403.
    let ok = curl(&[
        "-p",
        "-x",
        &proxy,
        &format!("http://localhost:{}/", w4.port()),
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    assert_eq!(
        String::from_utf8_lossy(&ok.stdout),
        format!("hello from {w4}")
    );
    let no = curl(&[
        "-p",
        "-x",
        &proxy,
        "-w",
        "%{http_connect}",
        "http://127.0.0.1:22/",
    ]);
    assert!(!no.status.success());
    assert_eq!(String::from_utf8_lossy(&no.stdout), "403", "{}", text(&no));
    // Without CONNECT, a proxy request is refused as such.
    let get = curl(&[
        "-x",
        &proxy,
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "http://localhost:1/",
    ]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout),
        "405",
        "{}",
        text(&get)
    );
}

/// A raw SOCKS5 exchange: greeting (no auth), then `request`; returns the reply code
/// and the stream.
fn socks_raw(port: u16, request: &[u8]) -> (Option<u8>, TcpStream) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    assert_eq!(m, [5, 0]);
    s.write_all(request).unwrap();
    let mut r = [0u8; 10];
    let code = s.read_exact(&mut r).ok().map(|_| r[1]);
    (code, s)
}

#[test]
fn bad_socks_requests_get_a_failure_or_a_close_and_two_hundred_connects_work() {
    let echo = crate::support::echo::tcp_echo_blocking();
    let l = lab(
        &[format!("127.0.0.1/32:{}", echo.port())],
        "127.0.0.1",
        &[],
        &[],
    );
    l.client.wait_line("tunnel up", LONG);
    // BIND: command not supported (7).
    let (code, _) = socks_raw(l.socks, &[5, 2, 0, 1, 127, 0, 0, 1, 0, 80]);
    assert_eq!(code, Some(7));
    // Garbage: another protocol's greeting, a bad address type, a truncated request.
    for bytes in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[4, 1, 0, 80, 127, 0, 0, 1, 0],
        &[5],
    ] {
        let mut s = TcpStream::connect(("127.0.0.1", l.socks)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
        s.write_all(bytes).unwrap();
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        assert!(rest.len() <= 2, "garbage got a real answer: {rest:?}");
    }
    let (code, _) = socks_raw(l.socks, &[5, 1, 0, 9, 1, 2, 3, 4]);
    assert_eq!(code, None, "an unknown address type closes");

    // 200 CONNECTs at once, each echoing its own bytes.
    let port = echo.port().to_be_bytes();
    let threads: Vec<_> = (0..200u32)
        .map(|i| {
            let socks = l.socks;
            std::thread::spawn(move || {
                let (code, mut s) = socks_raw(socks, &[5, 1, 0, 1, 127, 0, 0, 1, port[0], port[1]]);
                assert_eq!(code, Some(0), "connect {i}");
                let msg = format!("connection {i} says hello");
                s.write_all(msg.as_bytes()).unwrap();
                let mut back = vec![0u8; msg.len()];
                s.read_exact(&mut back).unwrap();
                assert_eq!(back, msg.as_bytes());
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert!(
        l.client.output().lines().count() < 400,
        "no error per connection"
    );
}

#[test]
fn a_proxy_off_loopback_needs_credentials() {
    let w = web("127.0.0.1:0").unwrap();
    let allowed = [format!("127.0.0.1/32:{}", w.port())];
    // Without credentials the client does not start.
    let mut open = lab(&allowed, "0.0.0.0", &[], &[]);
    assert_eq!(open.client.wait_exit(LONG), 2);
    assert!(
        open.client.output().contains("--proxy-auth-file"),
        "{}",
        open.client.output()
    );

    let l = lab(
        &allowed,
        "0.0.0.0",
        &[],
        &[("PORTHOLE_PROXY_AUTH", "alice:correct-horse")],
    );
    l.client.wait_line("tunnel up", LONG);
    let url = format!("http://localhost:{}/", w.port());
    let socks = format!("127.0.0.1:{}", l.socks);
    let ok = curl(&[
        "--socks5-hostname",
        &socks,
        "--proxy-user",
        "alice:correct-horse",
        &url,
    ]);
    assert!(ok.status.success(), "{}", text(&ok));
    let bad = curl(&[
        "--socks5-hostname",
        &socks,
        "--proxy-user",
        "alice:wrong-horse",
        &url,
    ]);
    assert!(!bad.status.success(), "{}", text(&bad));
    let none = curl(&["--socks5-hostname", &socks, &url]);
    assert!(!none.status.success(), "{}", text(&none));
    let proxy = format!("http://127.0.0.1:{}", l.http);
    let ok = curl(&["-p", "-x", &proxy, "-U", "alice:correct-horse", &url]);
    assert!(ok.status.success(), "{}", text(&ok));
    let no = curl(&["-p", "-x", &proxy, "-w", "%{http_connect}", &url]);
    assert_eq!(String::from_utf8_lossy(&no.stdout), "407", "{}", text(&no));
    assert!(
        !l.client.output().contains("correct-horse"),
        "the password is never logged"
    );
}

/// A SOCKS5 UDP association: the TCP connection that holds it and the relay address.
fn associate(socks: u16) -> (TcpStream, SocketAddr) {
    let mut s = TcpStream::connect(("127.0.0.1", socks)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut m = [0u8; 2];
    s.read_exact(&mut m).unwrap();
    s.write_all(&[5, 3, 0, 1, 0, 0, 0, 0, 0, 0]).unwrap();
    let mut r = [0u8; 10];
    s.read_exact(&mut r).unwrap();
    assert_eq!(
        (r[1], r[3]),
        (0, 1),
        "UDP ASSOCIATE succeeded with an IPv4 relay"
    );
    let relay = SocketAddr::from(([r[4], r[5], r[6], r[7]], u16::from_be_bytes([r[8], r[9]])));
    (s, relay)
}

/// One datagram to `dest` through the relay; returns the reply's payload and source.
fn socks_udp(sock: &std::net::UdpSocket, relay: SocketAddr, dest: SocketAddr, payload: &[u8]) {
    let mut d = porthole_proto::socks::udp_header(&porthole_proto::socks::Dest::Addr(dest));
    d.extend_from_slice(payload);
    sock.send_to(&d, relay).unwrap();
}

fn socks_udp_recv(sock: &std::net::UdpSocket) -> Option<(porthole_proto::socks::Dest, Vec<u8>)> {
    let mut buf = vec![0u8; 70_000];
    let (n, _) = sock.recv_from(&mut buf).ok()?;
    let (from, frag, start) = porthole_proto::socks::parse_udp(&buf[..n]).ok()??;
    assert_eq!(frag, 0);
    Some((from, buf[start..n].to_vec()))
}

#[test]
fn udp_associate_carries_datagrams_to_allowed_destinations_only() {
    // A UDP echo on the server's side.
    let echo = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let echo_addr = echo.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 70_000];
        while let Ok((n, from)) = echo.recv_from(&mut buf) {
            let _ = echo.send_to(&buf[..n], from);
        }
    });
    let forbidden = free_udp_port();
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let port = free_udp_port();
    let server = Offline::server_allowing(&tokens, port, &[])
        .args(&[
            "--allowed-udp",
            &format!("127.0.0.1/32:{}", echo_addr.port()),
        ])
        .args(&["--control-socket", "none"])
        .spawn("server");
    let id = endpoint_id(&server);
    server.wait_line("serving", LONG);
    let socks = free_tcp_port();
    let client = Offline::client(&id, port, &tokens)
        .args(&[
            "--control-socket",
            "none",
            "--socks",
            &format!("127.0.0.1:{socks}"),
        ])
        .spawn("client");
    client.wait_line("tunnel up", LONG);

    let (_hold_a, relay_a) = associate(socks);
    let (_hold_b, relay_b) = associate(socks);
    assert_ne!(
        relay_a, relay_b,
        "each association has its own relay socket"
    );
    let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    for s in [&a, &b] {
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    }
    // Interleaved, from two associations at once: each gets exactly its own replies,
    // with the echo's address in the header. One of them is 8 KB (fragmented in the tunnel).
    let big = vec![0x42u8; 8 * 1024];
    for i in 0..20u32 {
        socks_udp(&a, relay_a, echo_addr, format!("a{i}").as_bytes());
        socks_udp(&b, relay_b, echo_addr, format!("b{i}").as_bytes());
    }
    socks_udp(&a, relay_a, echo_addr, &big);
    let mut got_a = Vec::new();
    let mut got_b = Vec::new();
    while let Some((from, p)) = socks_udp_recv(&a) {
        assert_eq!(from, porthole_proto::socks::Dest::Addr(echo_addr));
        got_a.push(p);
        if got_a.len() == 21 {
            break;
        }
    }
    while let Some((_, p)) = socks_udp_recv(&b) {
        got_b.push(p);
        if got_b.len() == 20 {
            break;
        }
    }
    assert!(
        got_a.len() >= 18,
        "most of a's datagrams came back: {}",
        got_a.len()
    );
    assert!(
        got_a.iter().all(|p| p.starts_with(b"a") || *p == big),
        "a got b's datagrams"
    );
    assert!(got_a.contains(&big), "the 8 KB datagram came back whole");
    assert!(
        got_b.len() >= 18 && got_b.iter().all(|p| p.starts_with(b"b")),
        "b: {}",
        got_b.len()
    );

    // Outside the allow-list: nothing comes back, and the client says why.
    let outside = SocketAddr::from(([127, 0, 0, 1], forbidden));
    socks_udp(&a, relay_a, outside, b"let me out");
    assert!(socks_udp_recv(&a).is_none());
    client.wait_line("refused by the server", LONG);
}
