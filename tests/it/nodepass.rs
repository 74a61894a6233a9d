//! NodePass mode: porthole on both ends (both flows x tls 0/1/2, TCP and UDP), scripted
//! fake peers replaying the documented bytes, and recovery from restarts.

use std::net::SocketAddr;
use std::time::Duration;

use porthole_nodepass::client::ClientOptions;
use porthole_nodepass::server::ServerOptions;
use porthole_nodepass::wire::signal::Signal;
use porthole_nodepass::wire::{http, token};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::echo::{tcp_echo, udp_echo};
use crate::support::init_tracing;
use crate::support::process::free_tcp_port;

fn fast_server() -> ServerOptions {
    ServerOptions {
        verify_after: Duration::from_millis(300),
        restart_delay: Duration::from_millis(500),
    }
}

fn fast_client(roots: Vec<rustls_pki_types::CertificateDer<'static>>) -> ClientOptions {
    ClientOptions {
        verify_after: Duration::from_millis(300),
        restart_delay: Duration::from_millis(500),
        extra_roots: roots,
    }
}

struct Tls2 {
    _dir: tempfile::TempDir,
    crt: String,
    key: String,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
}

fn tls2_files() -> Tls2 {
    let dir = tempfile::tempdir().unwrap();
    let certs = porthole_relay::certs::generate(&["127.0.0.1".into()]).unwrap();
    let crt = dir.path().join("crt.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&crt, &certs.cert_pem).unwrap();
    std::fs::write(&key, &certs.key_pem).unwrap();
    let roots = porthole_iroh::options::parse_pem_certs(&certs.ca_pem).unwrap();
    Tls2 {
        crt: crt.to_str().unwrap().into(),
        key: key.to_str().unwrap().into(),
        roots,
        _dir: dir,
    }
}

struct Pair {
    user: SocketAddr,
    shutdown: CancellationToken,
    server: JoinHandle<()>,
    client: JoinHandle<()>,
}

/// A porthole server and client; returns where users connect.
async fn pair(forward: bool, tls: u8) -> Pair {
    init_tracing();
    let (tcp_target, udp_target) = (tcp_echo().await, udp_echo().await);
    // One port for both protocols: bind the UDP echo next to the TCP one.
    let udp_fwd = UdpSocket::bind(tcp_target).await;
    let (target_port, udp_ok) = match udp_fwd {
        Ok(s) => {
            tokio::spawn(async move {
                let mut b = vec![0u8; 65536];
                while let Ok((n, from)) = s.recv_from(&mut b).await {
                    let _ = s.send_to(&b[..n], from).await;
                }
            });
            (tcp_target.port(), true)
        }
        Err(_) => (tcp_target.port(), false),
    };
    let _ = (udp_target, udp_ok);
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let tls2 = tls2_files();
    let tls_q = match tls {
        2 => format!("tls=2&crt={}&key={}", tls2.crt, tls2.key),
        n => format!("tls={n}"),
    };
    let (server_url, client_url) = if forward {
        (
            format!("server://secretkey@127.0.0.1:{tunnel}/127.0.0.1:{target_port}?{tls_q}&mode=2"),
            format!("client://secretkey@127.0.0.1:{tunnel}/127.0.0.1:{user}?min=4&mode=2"),
        )
    } else {
        (
            format!("server://secretkey@127.0.0.1:{tunnel}/127.0.0.1:{user}?{tls_q}&mode=1"),
            format!("client://secretkey@127.0.0.1:{tunnel}/127.0.0.1:{target_port}?min=4&mode=2"),
        )
    };
    let shutdown = CancellationToken::new();
    let (s, c) = (shutdown.clone(), shutdown.clone());
    let server = tokio::spawn(async move {
        porthole_nodepass::server::run(server_url.parse().unwrap(), fast_server(), s)
            .await
            .unwrap();
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let roots = tls2.roots.clone();
    let client = tokio::spawn(async move {
        let _keep = tls2;
        porthole_nodepass::client::run(client_url.parse().unwrap(), fast_client(roots), c)
            .await
            .unwrap();
    });
    Pair {
        user: SocketAddr::from(([127, 0, 0, 1], user)),
        shutdown,
        server,
        client,
    }
}

async fn tcp_roundtrip(addr: SocketAddr, size: usize) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let data: Vec<u8> = (0..size).map(|i| (i % 253) as u8).collect();
    s.write_all(&data).await.map_err(|e| e.to_string())?;
    s.shutdown().await.map_err(|e| e.to_string())?;
    let mut back = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut back))
        .await
        .map_err(|_| "timeout".to_string())?
        .map_err(|e| e.to_string())?;
    if back == data {
        Ok(())
    } else {
        Err(format!("got {} of {} bytes back", back.len(), data.len()))
    }
}

/// Retries until the tunnel carries a TCP round trip (it needs a handshake, a pool and,
/// under tls=1, a fingerprint check first).
async fn eventually_tcp(addr: SocketAddr, limit: Duration) {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tcp_roundtrip(addr, 100_000).await {
            Ok(()) => return,
            Err(e) if tokio::time::Instant::now() > deadline => {
                panic!("no TCP round trip through {addr}: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

async fn udp_roundtrip(addr: SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(addr).await.unwrap();
    let mut buf = vec![0u8; 65536];
    for size in [1usize, 512, 1400] {
        let payload = vec![size as u8; size];
        let mut ok = false;
        for _ in 0..10 {
            s.send(&payload).await.unwrap();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(700), s.recv(&mut buf)).await
            {
                assert_eq!(&buf[..n], &payload[..]);
                ok = true;
                break;
            }
        }
        assert!(ok, "UDP {size} bytes never came back through {addr}");
    }
}

/// A burst of datagrams of varied sizes, sent without waiting: every echo must be exactly
/// one datagram that was sent (over TLS, records must not glue datagrams together).
async fn udp_burst_keeps_boundaries(addr: SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    porthole_engine::udp::size_socket(&s);
    s.connect(addr).await.unwrap();
    let sent: Vec<Vec<u8>> = (0..200u32)
        .map(|i| {
            let size = 100 + (i as usize * 37) % 1300;
            let mut d = vec![(i % 251) as u8; size];
            d[..4].copy_from_slice(&i.to_be_bytes());
            d
        })
        .collect();
    for d in &sent {
        s.send(d).await.unwrap();
    }
    let mut buf = vec![0u8; 65536];
    let mut got = 0;
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(1500), s.recv(&mut buf)).await
    {
        let i = u32::from_be_bytes(buf[..4].try_into().unwrap()) as usize;
        assert!(
            sent.get(i).is_some_and(|d| d[..] == buf[..n]),
            "echo of {n} bytes is not one sent datagram (glued or cut at a boundary)"
        );
        got += 1;
    }
    assert!(
        got >= 150,
        "only {got} of 200 datagrams came back through {addr}"
    );
}

async fn both_protocols(forward: bool, tls: u8) {
    let p = pair(forward, tls).await;
    eventually_tcp(p.user, Duration::from_secs(20)).await;
    // Several sessions in a row: each uses a fresh pool connection.
    for _ in 0..5 {
        tcp_roundtrip(p.user, 50_000).await.unwrap();
    }
    udp_roundtrip(p.user).await;
    if tls > 0 {
        // Plain TCP (tls=0) has no boundaries on NodePass' wire either.
        udp_burst_keeps_boundaries(p.user).await;
    }
    p.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), p.server).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), p.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_tls0() {
    both_protocols(false, 0).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_tls1() {
    both_protocols(false, 1).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_tls2() {
    both_protocols(false, 2).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_tls0() {
    both_protocols(true, 0).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_tls1() {
    both_protocols(true, 1).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_tls2() {
    both_protocols(true, 2).await;
}

// ---- a scripted fake client against porthole's server ----

async fn http_exchange(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn read_signal<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, key: &str) -> Signal {
    let mut line = String::new();
    tokio::time::timeout(Duration::from_secs(10), r.read_line(&mut line))
        .await
        .unwrap()
        .unwrap();
    Signal::decode(&line, key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_client_replays_documented_bytes() {
    init_tracing();
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let addr = SocketAddr::from(([127, 0, 0, 1], tunnel));
    let url = format!("server://secretkey@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1");
    let shutdown = CancellationToken::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        porthole_nodepass::server::run(url.parse().unwrap(), fast_server(), s)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;

    let token = "0ec2fbe02ea7c3eb6dd73c12eb2cffc9061280dfc8365cdcfa5241c6e3d9c9a7";
    assert_eq!(token::bearer_token("secretkey"), token);
    // Wrong token -> 401, another method -> 405, another path -> 404: the server keeps serving.
    let r = http_exchange(
        addr,
        b"GET / HTTP/1.1\r\nHost: none\r\nAuthorization: Bearer 00\r\n\r\n",
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 401"), "{r}");
    let r = http_exchange(
        addr,
        format!("POST / HTTP/1.1\r\nHost: none\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");
    let r = http_exchange(
        addr,
        format!("GET /admin HTTP/1.1\r\nHost: none\r\nAuthorization: Bearer {token}\r\n\r\n")
            .as_bytes(),
    )
    .await;
    assert!(r.starts_with("HTTP/1.1 404"), "{r}");
    // An oversized head is refused without harm.
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let r = http_exchange(addr, huge.as_bytes()).await;
    assert!(r.is_empty() || r.starts_with("HTTP/1.1 431"), "{r}");
    // Garbage is refused too.
    let r = http_exchange(addr, b"\x16\x03\x01garbage\r\n\r\n").await;
    assert!(!r.starts_with("HTTP/1.1 200"), "{r}");

    // The documented request gets the documented reply.
    let r = http_exchange(
        addr,
        format!("GET / HTTP/1.1\r\nHost: none\r\nAuthorization: Bearer {token}\r\n\r\n").as_bytes(),
    )
    .await;
    let (code, reply) = http::parse_response(r.as_bytes()).unwrap();
    assert_eq!(code, 200);
    assert!(r.contains("Connection: close"), "{r}");
    assert!(
        r.ends_with("{\"flow\":\"-\",\"max\":1024,\"tls\":\"0\",\"type\":\"0\"}\n"),
        "{r}"
    );
    assert_eq!(reply.unwrap().flow, "-");

    // Pool connection #1 is the control channel: ID 00000000.
    let mut control = TcpStream::connect(addr).await.unwrap();
    let mut id = [0u8; 4];
    control.read_exact(&mut id).await.unwrap();
    assert_eq!(id, [0, 0, 0, 0]);
    let mut pool = TcpStream::connect(addr).await.unwrap();
    let mut pid = [0u8; 4];
    pool.read_exact(&mut pid).await.unwrap();
    assert_ne!(pid, [0, 0, 0, 0]);

    let (r, mut w) = control.into_split();
    let mut r = BufReader::new(r);
    // The server pings at once.
    assert_eq!(read_signal(&mut r, "secretkey").await.action, "ping");
    // Malformed signals are ignored; the channel stays up and answers the documented ping.
    w.write_all(b"!!!not base64!!!\n").await.unwrap();
    w.write_all(Signal::action("ping").encode("wrongkey").as_bytes())
        .await
        .unwrap();
    w.write_all(Signal::action("teleport").encode("secretkey").as_bytes())
        .await
        .unwrap();
    w.write_all(b"CEcCEREdBAtbSUcTGwsTSRg=\n").await.unwrap();
    loop {
        let s = read_signal(&mut r, "secretkey").await;
        if s.action == "pong" {
            break;
        }
        assert_eq!(s.action, "ping");
    }

    // A user connection becomes a documented `tcp` launch naming our pool connection.
    let mut u = TcpStream::connect(("127.0.0.1", user)).await.unwrap();
    u.write_all(b"hello nodepass").await.unwrap();
    let launch = loop {
        let s = read_signal(&mut r, "secretkey").await;
        if s.action == "tcp" {
            break s;
        }
    };
    assert_eq!(launch.id, porthole_nodepass::wire::id_hex(pid));
    assert_eq!(launch.remote, u.local_addr().unwrap().to_string());
    // Raw bytes follow on that pool connection, both ways.
    let mut got = [0u8; 14];
    pool.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"hello nodepass");
    pool.write_all(b"hi user").await.unwrap();
    let mut back = [0u8; 7];
    u.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"hi user");
    shutdown.cancel();
}

// ---- a scripted fake server against porthole's client ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_server_replays_documented_bytes() {
    init_tracing();
    let target = tcp_echo().await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tunnel = listener.local_addr().unwrap();
    let url = format!(
        "client://secretkey@127.0.0.1:{}/127.0.0.1:{}?min=2&mode=2",
        tunnel.port(),
        target.port()
    );
    let shutdown = CancellationToken::new();
    let c = shutdown.clone();
    tokio::spawn(async move {
        porthole_nodepass::client::run(url.parse().unwrap(), fast_client(vec![]), c)
            .await
            .unwrap()
    });

    let expected_request = "GET / HTTP/1.1\r\nHost: none\r\nAuthorization: Bearer 0ec2fbe02ea7c3eb6dd73c12eb2cffc9061280dfc8365cdcfa5241c6e3d9c9a7\r\n\r\n";
    // v1.14 servers may close before replying: the client must retry.
    let (mut first, _) = listener.accept().await.unwrap();
    let mut req = vec![0u8; expected_request.len()];
    first.read_exact(&mut req).await.unwrap();
    assert_eq!(String::from_utf8(req).unwrap(), expected_request);
    drop(first);
    let started = std::time::Instant::now();
    let (mut second, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
        .await
        .unwrap()
        .unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "retried too fast"
    );
    let mut req = vec![0u8; expected_request.len()];
    second.read_exact(&mut req).await.unwrap();
    assert_eq!(String::from_utf8(req).unwrap(), expected_request);
    let reply = http::Reply {
        flow: "-".into(),
        max: 1024,
        tls: "0".into(),
        pool_type: "0".into(),
    };
    second
        .write_all(http::response(http::Verdict::Accept, Some(&reply)).as_bytes())
        .await
        .unwrap();
    drop(second);

    // The first pool connection gets 00000000; the next one the documented 2430ac70.
    let (mut control, _) = listener.accept().await.unwrap();
    control.write_all(&[0, 0, 0, 0]).await.unwrap();
    let (mut pool, _) = listener.accept().await.unwrap();
    pool.write_all(&[0x24, 0x30, 0xac, 0x70]).await.unwrap();
    let (r, mut w) = control.into_split();
    let mut r = BufReader::new(r);
    assert_eq!(read_signal(&mut r, "secretkey").await.action, "ping");
    w.write_all(b"CEcCEREdBAtbSUcTGwsTSRg=\n").await.unwrap();
    loop {
        if read_signal(&mut r, "secretkey").await.action == "pong" {
            break;
        }
    }
    // The documented launch line: the client dials its target and relays.
    w.write_all(
        b"CEcCEREdBAtbSUcXERVWR0cLFggMBgBWUUdIQVJNQktERVRDRlBQRlFWR0cQF0dZUFdAWFUYEFJTUBg=\n",
    )
    .await
    .unwrap();
    pool.write_all(b"through the pool").await.unwrap();
    let mut back = [0u8; 16];
    tokio::time::timeout(Duration::from_secs(10), pool.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"through the pool");
    shutdown.cancel();
}

// ---- restarts ----

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restart_mid_use_recovers() {
    init_tracing();
    let target = tcp_echo().await;
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let server_url = format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1");
    let client_url = format!(
        "client://k@127.0.0.1:{tunnel}/127.0.0.1:{}?min=4&mode=2",
        target.port()
    );
    let user_addr = SocketAddr::from(([127, 0, 0, 1], user));
    let client_stop = CancellationToken::new();
    let c = client_stop.clone();
    tokio::spawn(async move {
        porthole_nodepass::client::run(client_url.parse().unwrap(), fast_client(vec![]), c)
            .await
            .unwrap()
    });
    for round in 0..2 {
        let stop = CancellationToken::new();
        let (s, url) = (stop.clone(), server_url.clone());
        let server = tokio::spawn(async move {
            porthole_nodepass::server::run(url.parse().unwrap(), fast_server(), s)
                .await
                .unwrap()
        });
        eventually_tcp(user_addr, Duration::from_secs(20)).await;
        tracing::info!("round {round}: tunnel works; stopping the server");
        stop.cancel();
        let _ = server.await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    client_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_restart_mid_use_recovers() {
    init_tracing();
    let target = tcp_echo().await;
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let server_url = format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1");
    let client_url = format!(
        "client://k@127.0.0.1:{tunnel}/127.0.0.1:{}?min=4&mode=2",
        target.port()
    );
    let user_addr = SocketAddr::from(([127, 0, 0, 1], user));
    let server_stop = CancellationToken::new();
    let s = server_stop.clone();
    tokio::spawn(async move {
        porthole_nodepass::server::run(server_url.parse().unwrap(), fast_server(), s)
            .await
            .unwrap()
    });
    for _ in 0..2 {
        let stop = CancellationToken::new();
        let (c, url) = (stop.clone(), client_url.clone());
        let client = tokio::spawn(async move {
            porthole_nodepass::client::run(url.parse().unwrap(), fast_client(vec![]), c)
                .await
                .unwrap()
        });
        eventually_tcp(user_addr, Duration::from_secs(20)).await;
        stop.cancel();
        let _ = client.await;
    }
    server_stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused_with_401() {
    init_tracing();
    let tunnel = free_tcp_port();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let url = format!(
        "server://right@127.0.0.1:{tunnel}/127.0.0.1:{}?mode=2",
        free_tcp_port()
    );
    tokio::spawn(async move {
        porthole_nodepass::server::run(url.parse().unwrap(), fast_server(), s)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let url = format!(
        "client://wrong@127.0.0.1:{tunnel}/127.0.0.1:{}?mode=2",
        free_tcp_port()
    );
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        porthole_nodepass::client::run(
            url.parse().unwrap(),
            fast_client(vec![]),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    let e = r.unwrap_err().to_string();
    assert!(e.contains("401") && e.contains("key"), "{e}");
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_end_client_forwards_locally() {
    init_tracing();
    let target = tcp_echo().await;
    let listen = free_tcp_port();
    let url = format!(
        "client://127.0.0.1:{listen}/127.0.0.1:{}?mode=1",
        target.port()
    );
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        porthole_nodepass::client::run(url.parse().unwrap(), fast_client(vec![]), s)
            .await
            .unwrap()
    });
    eventually_tcp(
        SocketAddr::from(([127, 0, 0, 1], listen)),
        Duration::from_secs(5),
    )
    .await;
    stop.cancel();
}

// ---- URL features: targets, slot, proxy, notcp/noudp, read, rate, dial ----

/// A porthole NodePass pair in reverse flow with extra query parameters on both URLs.
async fn reverse_pair(
    targets: &str,
    server_q: &str,
    client_q: &str,
) -> (SocketAddr, CancellationToken) {
    init_tracing();
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let server_url = format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1{server_q}");
    let client_url = format!("client://k@127.0.0.1:{tunnel}/{targets}?min=4&mode=2{client_q}");
    let stop = CancellationToken::new();
    let (s, c) = (stop.clone(), stop.clone());
    tokio::spawn(async move {
        porthole_nodepass::server::run(server_url.parse().unwrap(), fast_server(), s)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    tokio::spawn(async move {
        porthole_nodepass::client::run(client_url.parse().unwrap(), fast_client(vec![]), c)
            .await
            .unwrap()
    });
    (SocketAddr::from(([127, 0, 0, 1], user)), stop)
}

/// A target that answers each connection with its name and the peer address it saw.
async fn naming_target(name: &'static str) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            tokio::spawn(async move {
                let mut first = vec![0u8; 256];
                let n = tokio::time::timeout(Duration::from_millis(300), s.read(&mut first))
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .unwrap_or(0);
                let seen = String::from_utf8_lossy(&first[..n]).into_owned();
                let _ = s
                    .write_all(format!("{name} {} {seen}", peer.ip()).as_bytes())
                    .await;
            });
        }
    });
    addr
}

async fn ask(addr: SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn eventually_answer(addr: SocketAddr) -> String {
    for _ in 0..100 {
        let a = ask(addr).await;
        if !a.is_empty() {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no answer through {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn targets_round_robin_and_failover() {
    let a = naming_target("A").await;
    let b = naming_target("B").await;
    let dead = free_tcp_port();
    let (user, stop) = reverse_pair(&format!("{a},127.0.0.1:{dead},{b}"), "", "").await;
    eventually_answer(user).await;
    let mut seen = std::collections::HashMap::new();
    for _ in 0..12 {
        let answer = ask(user).await;
        assert!(
            answer.starts_with('A') || answer.starts_with('B'),
            "failover missed: {answer:?}"
        );
        *seen.entry(answer.chars().next().unwrap()).or_insert(0) += 1;
    }
    assert!(
        seen.get(&'A').copied().unwrap_or(0) >= 3 && seen.get(&'B').copied().unwrap_or(0) >= 3,
        "not round robin: {seen:?}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn proxy_v1_and_dial_source() {
    let t = naming_target("T").await;
    let (user, stop) = reverse_pair(&t.to_string(), "", "&proxy=1&dial=127.0.0.2").await;
    let answer = eventually_answer(user).await;
    // The target saw the dial source address and a PROXY line naming the user.
    assert!(
        answer.starts_with("T 127.0.0.2 PROXY TCP4 127.0.0.1 127.0.0.1 "),
        "{answer:?}"
    );
    assert!(
        answer.ends_with(&format!(" {}\r\n", t.port())),
        "{answer:?}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn slot_limits_concurrent_sessions() {
    let target = tcp_echo().await;
    let (user, stop) = reverse_pair(&target.to_string(), "&slot=1", "").await;
    eventually_tcp(user, Duration::from_secs(20)).await;
    let mut first = TcpStream::connect(user).await.unwrap();
    first.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    first.read_exact(&mut b).await.unwrap();
    // While the first session is open, a second is refused (closed at once).
    let mut second = TcpStream::connect(user).await.unwrap();
    let _ = second.write_all(b"y").await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), second.read_to_end(&mut out))
        .await
        .unwrap();
    assert!(out.is_empty(), "second session served despite slot=1");
    drop(first);
    tokio::time::sleep(Duration::from_millis(300)).await;
    tcp_roundtrip(user, 1000).await.unwrap();
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_timeout_closes_idle_sessions() {
    let target = tcp_echo().await;
    let (user, stop) = reverse_pair(&target.to_string(), "&read=1s", "").await;
    eventually_tcp(user, Duration::from_secs(20)).await;
    let mut s = TcpStream::connect(user).await.unwrap();
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    s.read_exact(&mut b).await.unwrap();
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut rest))
        .await
        .unwrap()
        .ok();
    let idle = started.elapsed();
    assert!(
        idle >= Duration::from_millis(900) && idle < Duration::from_secs(5),
        "closed after {idle:?}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_limits_bandwidth() {
    let target = tcp_echo().await;
    // 8 Mbit/s = 1 MB/s; the bucket starts with one second of tokens.
    let (user, stop) = reverse_pair(&target.to_string(), "&rate=8", "").await;
    eventually_tcp(user, Duration::from_secs(20)).await;
    let started = std::time::Instant::now();
    tcp_roundtrip(user, 3_000_000).await.unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "3 MB each way at 1 MB/s took only {took:?}"
    );
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notcp_and_noudp_disable_listeners() {
    init_tracing();
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let url = format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&notcp=1");
    tokio::spawn(async move {
        porthole_nodepass::server::run(url.parse().unwrap(), fast_server(), s)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        TcpStream::connect(("127.0.0.1", user)).await.is_err(),
        "TCP listener despite notcp=1"
    );
    // UDP still bound: binding the same UDP port fails.
    assert!(
        UdpSocket::bind(("127.0.0.1", user)).await.is_err(),
        "no UDP listener"
    );
    stop.cancel();

    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let stop = CancellationToken::new();
    let s = stop.clone();
    let url = format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&noudp=1");
    tokio::spawn(async move {
        porthole_nodepass::server::run(url.parse().unwrap(), fast_server(), s)
            .await
            .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        UdpSocket::bind(("127.0.0.1", user)).await.is_ok(),
        "UDP listener despite noudp=1"
    );
    assert!(
        TcpStream::connect(("127.0.0.1", user)).await.is_ok(),
        "no TCP listener"
    );
    stop.cancel();
}

/// The binary: `mode = "nodepass"` in a server config, and `porthole nodepass URL` as client.
#[test]
fn binary_config_and_url() {
    use crate::support::process::{Proc, bin};
    let dir = tempfile::tempdir().unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = target.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::{Read, Write};
        for s in target.incoming() {
            let Ok(mut s) = s else { continue };
            let mut b = [0u8; 64];
            if let Ok(n) = s.read(&mut b) {
                let _ = s.write_all(&b[..n]);
            }
        }
    });
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        format!(
            "role = \"server\"\nmode = \"nodepass\"\n[nodepass]\ntunnel = \"127.0.0.1:{tunnel}\"\ntunnel_key = \"s3cret\"\ntargets = [\"127.0.0.1:{user}\"]\ntls = 1\nmode = 1\n"
        ),
    )
    .unwrap();
    let mut server = bin();
    server.args(["server", "-c", cfg.to_str().unwrap()]);
    let server = Proc::spawn("np-server", server);
    server.wait_line("NodePass server on", Duration::from_secs(10));
    let mut client = bin();
    client.args([
        "nodepass",
        &format!("client://s3cret@127.0.0.1:{tunnel}/127.0.0.1:{tport}?min=2&mode=2"),
    ]);
    let client = Proc::spawn("np-client", client);
    client.wait_line("control channel up", Duration::from_secs(15));
    // tls=1: users are served once the fingerprints were checked (5-10 s after startup).
    client.wait_line("peer verified", Duration::from_secs(20));
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", user)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s.write_all(b"over nodepass").unwrap();
    let mut got = [0u8; 13];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"over nodepass");
    // The URL holding the key never shows up in the logs.
    assert!(!client.output().contains("s3cret") && !server.output().contains("s3cret"));
}
