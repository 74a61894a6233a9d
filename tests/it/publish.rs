//! Published services (`porthole client --publish`, reverse forwards): the server
//! listens, each visitor rides back to the client's side. With real nginx (PROXY
//! protocol; TLS backends with their own certificates behind one port, chosen by SNI)
//! and curl verifying certificates; UDP visitors kept apart; the server's bind rules;
//! two clients racing for one address; a client that dies and comes back; bad input
//! on a shared port.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::proxy_protocol::{nginx_serving, recording_target, through};
use crate::support::process::{Offline, Proc, endpoint_id, free_tcp_port, free_udp_port};
use crate::support::{OTHER_TOKEN, TOKEN};

const LONG: Duration = Duration::from_secs(30);

/// A server process on loopback (no relay) with these extra flags (bind rules), and
/// token files for two clients: `a.txt` and `b.txt`.
struct Server {
    proc: Proc,
    id: String,
    port: u16,
    dir: tempfile::TempDir,
}

fn server(flags: &[&str]) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{TOKEN}\n{OTHER_TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("a.txt"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(dir.path().join("b.txt"), format!("{OTHER_TOKEN}\n")).unwrap();
    let port = free_udp_port();
    let socket = dir.path().join("server.sock");
    let proc = Offline::server(&tokens, port)
        .args(flags)
        .args(&["--control-socket", socket.to_str().unwrap()])
        .spawn("server");
    let id = endpoint_id(&proc);
    proc.wait_line("serving", LONG);
    Server {
        proc,
        id,
        port,
        dir,
    }
}

impl Server {
    /// A client with `token` (`a` or `b`) publishing `publishes`.
    fn client(&self, token: &str, publishes: &[String]) -> Proc {
        let mut c = Offline::client(
            &self.id,
            self.port,
            &self.dir.path().join(format!("{token}.txt")),
        );
        for p in publishes {
            c = c.args(&["--publish", p]);
        }
        c.spawn(&format!("client-{token}"))
    }
}

/// Waits until a TCP connection to 127.0.0.1:`port` is refused (nobody listens).
fn wait_refused(port: u16, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_err() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

/// Reads until EOF or error; how long that took.
fn wait_closed(s: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    s.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                panic!("still open after {limit:?}")
            }
            Err(_) => return start.elapsed(),
        }
    }
}

/// A connection to 127.0.0.1:`port` from loopback address `addr`, which sent `bytes`.
fn from(addr: [u8; 4], port: u16, bytes: &[u8]) -> TcpStream {
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&SocketAddr::from((addr, 0)).into()).unwrap();
    sock.connect(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut t: TcpStream = sock.into();
    t.write_all(bytes).unwrap();
    t
}

/// Sends `line` and reads as many bytes back (an echo on the client's side).
fn round_trip(s: &mut TcpStream, line: &[u8]) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(line).unwrap();
    let mut back = vec![0u8; line.len()];
    s.read_exact(&mut back).unwrap();
    back
}

/// Real nginx behind a published port with `listen ... proxy_protocol`: its access log
/// names each visitor's address and port; the exact v1 bytes reach a recording target,
/// also for a visitor that came through a load balancer (`accept_proxy_protocol`).
#[test]
fn nginx_behind_a_published_port_logs_the_visitor() {
    let np = free_tcp_port();
    let Some(nginx) = nginx_serving(
        &format!(
            "server {{ listen 127.0.0.1:{np} proxy_protocol;\n\
             location / {{ return 200 \"visitor $proxy_protocol_addr\\n\"; }} }}\n"
        ),
        np,
        |_| {},
    ) else {
        return;
    };
    let (p1, p2, p3) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let data = b"hello from a visitor";
    let (t, got) = recording_target(data);
    let s = server(&["--allowed-bind-tcp", "127.0.0.1/32"]);
    let c = s.client(
        "a",
        &[
            format!("tcp://127.0.0.1:{p1}=127.0.0.1:{np}?proxy_protocol=v2"),
            format!("tcp://127.0.0.1:{p2}=127.0.0.1:{t}?proxy_protocol=v1"),
            format!("tcp://127.0.0.1:{p3}=127.0.0.1:{t}?proxy_protocol=v1&accept_proxy_protocol=1"),
        ],
    );
    c.wait_line("tunnel up", LONG);

    let (answer, visitor) = through(p1, b"GET /published HTTP/1.0\r\nHost: x\r\n\r\n");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("visitor 127.0.0.1"),
        "{answer}"
    );
    let want = format!(
        "127.0.0.1:{} 127.0.0.1 \"GET /published HTTP/1.0\"",
        visitor.port()
    );
    nginx.wait_log_line(&want);

    let (_, visitor) = through(p2, data);
    let seen = got.recv_timeout(LONG).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen),
        format!(
            "PROXY TCP4 127.0.0.1 127.0.0.1 {} {p2}\r\n{}",
            visitor.port(),
            String::from_utf8_lossy(data)
        )
    );

    // Behind a load balancer: the server reads its header, the target hears of the
    // balancer's visitor; a visitor without a header never reaches the target.
    let mut sent = b"PROXY TCP4 198.51.100.23 10.1.2.3 40000 443\r\n".to_vec();
    sent.extend_from_slice(data);
    through(p3, &sent);
    let seen = got.recv_timeout(LONG).unwrap();
    assert_eq!(
        String::from_utf8_lossy(&seen),
        format!(
            "PROXY TCP4 198.51.100.23 127.0.0.1 40000 {p3}\r\n{}",
            String::from_utf8_lossy(data)
        )
    );
    let mut bare = TcpStream::connect(("127.0.0.1", p3)).unwrap();
    bare.write_all(data).unwrap();
    wait_closed(&mut bare, Duration::from_secs(10));
    assert!(
        got.recv_timeout(Duration::from_secs(2)).is_err(),
        "a visitor without a PROXY header reached the target"
    );
}

/// `curl` with these arguments: (exit code, stdout, stderr).
fn curl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "15"])
        .args(args)
        .output()
        .expect("curl runs (Debian's curl)");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One public port, three services from two clients: two TLS backends (nginx, each
/// with its own certificate from its own CA) chosen by SNI and passed through, curl
/// verifying each; a plain HTTP backend chosen by Host. Unknown names get a TLS alert
/// or a 404 at once, not a hang.
#[test]
fn tls_backends_share_one_port_by_sni_and_http_by_host() {
    let (na, nb, nh) = (free_tcp_port(), free_tcp_port(), free_tcp_port());
    let a = porthole_relay::certs::generate(&["a.example.test".into()]).unwrap();
    let b = porthole_relay::certs::generate(&["b.example.test".into()]).unwrap();
    let servers = format!(
        "server {{ listen 127.0.0.1:{na} ssl; ssl_certificate {{DIR}}/a.pem; \
         ssl_certificate_key {{DIR}}/a.key; location / {{ return 200 \"backend a\\n\"; }} }}\n\
         server {{ listen 127.0.0.1:{nb} ssl; ssl_certificate {{DIR}}/b.pem; \
         ssl_certificate_key {{DIR}}/b.key; location / {{ return 200 \"backend b\\n\"; }} }}\n\
         server {{ listen 127.0.0.1:{nh}; location / {{ return 200 \"plain $host\\n\"; }} }}\n"
    );
    let Some(nginx) = nginx_serving(&servers, nh, |d| {
        for (name, c) in [("a", &a), ("b", &b)] {
            std::fs::write(d.join(format!("{name}.pem")), &c.cert_pem).unwrap();
            std::fs::write(d.join(format!("{name}.key")), &c.key_pem).unwrap();
            std::fs::write(d.join(format!("{name}-ca.pem")), &c.ca_pem).unwrap();
        }
    }) else {
        return;
    };
    let ca = |n: &str| nginx.dir.path().join(format!("{n}-ca.pem"));
    let p = free_tcp_port();
    let s = server(&[
        "--allowed-bind-tcp",
        &format!("127.0.0.1/32:{p}"),
        "--allowed-bind-name",
        "*.example.test",
    ]);
    let ca_client = s.client(
        "a",
        &[
            format!("tcp://127.0.0.1:{p}=127.0.0.1:{na}?name=a.example.test"),
            format!("tcp://127.0.0.1:{p}=127.0.0.1:{nh}?name=web.example.test"),
        ],
    );
    let cb_client = s.client(
        "b",
        &[format!(
            "tcp://127.0.0.1:{p}=127.0.0.1:{nb}?name=b.example.test"
        )],
    );
    ca_client.wait_line("tunnel up", LONG);
    cb_client.wait_line("tunnel up", LONG);

    for name in ["a", "b"] {
        let host = format!("{name}.example.test");
        let (code, out, err) = curl(&[
            "--cacert",
            ca(name).to_str().unwrap(),
            "--resolve",
            &format!("{host}:{p}:127.0.0.1"),
            &format!("https://{host}:{p}/"),
        ]);
        assert_eq!(
            (code, out.as_str()),
            (0, &*format!("backend {name}\n")),
            "{err}"
        );
    }
    let (code, out, err) = curl(&[
        "--resolve",
        &format!("web.example.test:{p}:127.0.0.1"),
        &format!("http://web.example.test:{p}/"),
    ]);
    assert_eq!(
        (code, out.as_str()),
        (0, "plain web.example.test\n"),
        "{err}"
    );

    // Names nobody publishes: an alert, a 404; both at once.
    let start = Instant::now();
    let (code, _, err) = curl(&[
        "--cacert",
        ca("a").to_str().unwrap(),
        "--resolve",
        &format!("c.example.test:{p}:127.0.0.1"),
        &format!("https://c.example.test:{p}/"),
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("unrecognized name"), "{err}");
    let (code, out, _) = curl(&[
        "-w",
        "%{http_code}",
        "--resolve",
        &format!("nobody.example.test:{p}:127.0.0.1"),
        &format!("http://nobody.example.test:{p}/"),
    ]);
    assert_eq!(code, 0);
    assert!(out.ends_with("404"), "{out}");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

/// Two visitors of a published UDP port, interleaved: each hears only its own
/// datagrams back.
#[test]
fn udp_visitors_are_kept_apart() {
    let echo = crate::support::echo::udp_echo_blocking();
    let u = free_udp_port();
    let s = server(&["--allowed-bind-udp", &format!("127.0.0.1/32:{u}")]);
    let c = s.client("a", &[format!("udp://127.0.0.1:{u}=127.0.0.1:{echo}")]);
    c.wait_line("tunnel up", LONG);
    let visitors: Vec<UdpSocket> = (0..2)
        .map(|_| {
            let v = UdpSocket::bind("127.0.0.1:0").unwrap();
            v.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            v.connect(("127.0.0.1", u)).unwrap();
            v
        })
        .collect();
    // The first datagram may race the server's socket: retry until one comes back.
    let deadline = Instant::now() + LONG;
    let mut buf = [0u8; 2048];
    loop {
        visitors[0].send(b"hello").unwrap();
        if visitors[0].recv(&mut buf).is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no echo through udp://127.0.0.1:{u}"
        );
    }
    while visitors[0].recv(&mut buf).is_ok() {}
    for i in 0..20 {
        for (n, v) in visitors.iter().enumerate() {
            v.send(format!("visitor {n} datagram {i}").as_bytes())
                .unwrap();
        }
        for (n, v) in visitors.iter().enumerate() {
            let got = v.recv(&mut buf).expect("an echo");
            assert_eq!(
                std::str::from_utf8(&buf[..got]).unwrap(),
                format!("visitor {n} datagram {i}")
            );
        }
    }
}

/// Outside the bind rules, a name outside them, an address another client holds: each
/// refused with its reason and exit code 7. Of two clients racing for one address,
/// exactly one gets it, and serves.
#[test]
fn refused_publishes_exit_7_and_one_of_two_racing_clients_wins() {
    let (p, q) = (free_tcp_port(), free_tcp_port());
    let echo = crate::support::echo::tcp_echo_blocking();
    let s = server(&["--allowed-bind-tcp", &format!("127.0.0.1/32:{p}")]);
    let to_echo = |bind: u16, opts: &str| format!("tcp://127.0.0.1:{bind}={echo}{opts}");

    let mut c = s.client("a", &[to_echo(q, "")]);
    assert_eq!(c.wait_exit(LONG), 7, "{}", c.output());
    assert!(c.output().contains("--allowed-bind-tcp"), "{}", c.output());
    let mut c = s.client("a", &[to_echo(p, "?name=x.example.test")]);
    assert_eq!(c.wait_exit(LONG), 7, "{}", c.output());
    assert!(c.output().contains("--allowed-bind-name"), "{}", c.output());

    let mut one = s.client("a", &[to_echo(p, "")]);
    let mut two = s.client("b", &[to_echo(p, "")]);
    let deadline = Instant::now() + LONG;
    let (mut winner, loser) = loop {
        if !one.is_running() {
            break (two, one);
        }
        if !two.is_running() {
            break (one, two);
        }
        assert!(
            Instant::now() < deadline,
            "neither racing client was refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut loser = loser;
    assert_eq!(loser.wait_exit(LONG), 7, "{}", loser.output());
    assert!(
        loser.output().contains("another client publishes"),
        "{}",
        loser.output()
    );
    winner.wait_line("tunnel up", LONG);
    let mut v = TcpStream::connect(("127.0.0.1", p)).unwrap();
    assert_eq!(
        round_trip(&mut v, b"the winner serves\n"),
        b"the winner serves\n"
    );
    assert!(winner.is_running());

    // What the operator sees: the publish with its visitor, and each refusal's reason.
    drop(v);
    let r = crate::observe::status_json(&s.dir.path().join("server.sock"));
    let sessions = r["server"]["sessions"].as_array().unwrap();
    let published = sessions
        .iter()
        .flat_map(|s| s["forwards"].as_array().unwrap())
        .find(|f| f["source"] == format!("publish tcp://127.0.0.1:{p}"))
        .unwrap_or_else(|| panic!("no publish in {r}"));
    assert_eq!(published["tcp_total"], 1, "{r}");
    for reason in ["bind_not_allowed", "name_not_allowed", "address_taken"] {
        assert_eq!(
            crate::observe::refusals(&r, reason),
            Some(1),
            "{reason}: {r}"
        );
    }
}

/// A client killed while a visitor is connected, then started again before the server
/// noticed: the new one takes the address back, the old visitor's connection ends at
/// once, new visitors are served. A client that stops cleanly takes the port with it;
/// the next start brings it back.
#[test]
fn a_restarted_client_takes_its_address_back() {
    let p = free_tcp_port();
    let echo = crate::support::echo::tcp_echo_blocking();
    let s = server(&["--allowed-bind-tcp", &format!("127.0.0.1/32:{p}")]);
    let publish = [format!("tcp://127.0.0.1:{p}={echo}")];
    let mut first = s.client("a", &publish);
    first.wait_line("tunnel up", LONG);
    let mut old = TcpStream::connect(("127.0.0.1", p)).unwrap();
    assert_eq!(round_trip(&mut old, b"before\n"), b"before\n");

    first.kill();
    let second = s.client("a", &publish);
    second.wait_line("tunnel up", LONG);
    s.proc.wait_line("taken over", LONG);
    let took = wait_closed(&mut old, Duration::from_secs(10));
    assert!(
        took < Duration::from_secs(5),
        "old visitor ended after {took:?}"
    );
    let mut new = TcpStream::connect(("127.0.0.1", p)).unwrap();
    assert_eq!(round_trip(&mut new, b"after\n"), b"after\n");

    let mut second = second;
    second.signal("TERM");
    second.wait_exit(LONG);
    assert!(
        wait_refused(p, Duration::from_secs(5)),
        "the server still listens on {p} after its client stopped"
    );
    let third = s.client("a", &publish);
    third.wait_line("tunnel up", LONG);
    let mut back = TcpStream::connect(("127.0.0.1", p)).unwrap();
    assert_eq!(round_trip(&mut back, b"again\n"), b"again\n");
}

/// Bad input on a shared port: hundreds of silent connections from one address, a
/// ClientHello that never finishes, garbage, a Host header past the peek limit. Each is
/// closed in bounded time, the server's memory stays bounded, and a visitor from
/// another address is served all along.
#[test]
fn floods_and_garbage_on_a_shared_port_leave_others_served() {
    let p = free_tcp_port();
    let echo = crate::support::echo::tcp_echo_blocking();
    let s = server(&[
        "--allowed-bind-tcp",
        &format!("127.0.0.1/32:{p}"),
        "--allowed-bind-name",
        "a.example.test",
    ]);
    let c = s.client(
        "a",
        &[format!("tcp://127.0.0.1:{p}={echo}?name=a.example.test")],
    );
    c.wait_line("tunnel up", LONG);
    let request = b"GET / HTTP/1.1\r\nHost: a.example.test\r\n\r\n";
    let visit = || {
        // From another loopback address than the flood's.
        let mut v = from([127, 0, 0, 2], p, b"");
        assert_eq!(round_trip(&mut v, request), request);
    };
    visit();
    let rss_before = s.proc.rss_kib();

    let mut flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", p)).ok())
        .collect();
    // A ClientHello that never finishes (from an address of its own: the flood holds
    // every slot of 127.0.0.1).
    let mut slow = from([127, 0, 0, 3], p, &[0x16, 3, 1, 0, 200, 1]);
    visit();

    let other = |addr: [u8; 4], bytes: &[u8]| from(addr, p, bytes);
    let mut garbage = other([127, 0, 0, 4], b"\x00\x01\x02\x03 not a request");
    assert!(wait_closed(&mut garbage, Duration::from_secs(10)) < Duration::from_secs(2));
    let mut huge = b"GET / HTTP/1.1\r\nHost: a.example.test\r\nX-Pad: ".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 20_000));
    let mut oversized = other([127, 0, 0, 5], &huge);
    assert!(wait_closed(&mut oversized, Duration::from_secs(10)) < Duration::from_secs(2));

    let took = wait_closed(&mut slow, Duration::from_secs(15));
    assert!(
        took > Duration::from_secs(2) && took < Duration::from_secs(10),
        "a ClientHello that never finished was closed after {took:?}"
    );
    for f in flood.iter_mut().take(5) {
        assert!(wait_closed(f, Duration::from_secs(15)) < Duration::from_secs(10));
    }
    let grown = s.proc.rss_kib().saturating_sub(rss_before);
    assert!(
        grown < 64 * 1024,
        "the server grew by {grown} KiB under the flood"
    );
    visit();
    drop(flood);
    assert!(c.output().contains("tunnel up"));
}

/// A server from before publishes closes a connection whose control stream carries one
/// with `ProtocolError`: the client names that and exits (version mismatch, 5), instead
/// of retrying for ever. The stand-in server answers the auth, then closes as an old
/// server would on the request it cannot decode.
#[tokio::test]
async fn a_server_that_predates_publishing_is_named_not_retried() {
    use porthole_engine::client::{Client, ClientConfig, ClientError, PublishSpec};
    use porthole_engine::control::{read_frame_body, write_frame};
    use porthole_engine::transport::{Acceptor, Connection};
    use porthole_proto::close::CloseCode;
    use porthole_proto::message::AuthResponse;

    let net = crate::support::Net::default();
    let params = porthole_engine::quic_params::QuicParams::default();
    let endpoint = porthole_transport_iroh::bind(&net.options(true, None), &params)
        .await
        .unwrap();
    let acceptor = porthole_transport_iroh::IrohAcceptor::new(endpoint.clone(), &params);
    let old_server = tokio::spawn(async move {
        let mut served = 0;
        while let Some(h) = acceptor.accept().await {
            let Ok(conn) = h.await else { continue };
            served += 1;
            let (mut send, mut recv) = conn.accept_bi().await.unwrap();
            read_frame_body(&mut recv).await.unwrap();
            let ok = AuthResponse::Accepted {
                version: porthole_proto::PROTOCOL_VERSION,
                max_streams: 16,
            };
            write_frame(&mut send, &ok).await.unwrap();
            let _ = read_frame_body(&mut recv).await;
            conn.close(
                CloseCode::ProtocolError.as_u32(),
                b"malformed control message",
            );
            let _ = conn.closed().await;
            if served > 3 {
                break;
            }
        }
        served
    });

    let mut config = ClientConfig::new(crate::support::token(TOKEN), Vec::new());
    config.publishes = vec![PublishSpec {
        bind: "tcp://127.0.0.1:8443".parse().unwrap(),
        name: None,
        target: "tcp://127.0.0.1:80".parse().unwrap(),
        proxy: Default::default(),
    }];
    let client = Client::bind(config).await.unwrap();
    let connector = porthole_transport_iroh::IrohConnector::new(
        porthole_transport_iroh::bind(&net.options(false, None), &params)
            .await
            .unwrap(),
        endpoint.addr(),
        &params,
    );
    let ended = tokio::time::timeout(
        Duration::from_secs(30),
        client.run(connector, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the client kept retrying an old server");
    match ended {
        Err(ClientError::Version(why)) => assert!(why.contains("--publish"), "{why}"),
        other => panic!("expected a version mismatch, got {other:?}"),
    }
    old_server.abort();
}
