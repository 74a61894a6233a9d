//! Scripted fake NodePass peers that replay the documented byte sequences against
//! porthole's server and client.

use super::*;

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
    spawn_server(&url, shutdown.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let token = "0ec2fbe02ea7c3eb6dd73c12eb2cffc9061280dfc8365cdcfa5241c6e3d9c9a7";
    assert_eq!(key::bearer("secretkey"), token);
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

/// The next plain-HTTP handshake connection of a v1.14 server: an auto client first tries
/// HTTPS, and gets what Go's plain HTTP server answers a ClientHello with.
async fn accept_plain(listener: &TcpListener) -> TcpStream {
    loop {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut first = [0u8; 1];
        s.peek(&mut first).await.unwrap();
        if first[0] != 0x16 {
            return s;
        }
        s.write_all(b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n400 Bad Request")
            .await
            .unwrap();
    }
}

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
    spawn_client(&url, vec![], shutdown.clone());

    let expected_request = "GET / HTTP/1.1\r\nHost: none\r\nAuthorization: Bearer 0ec2fbe02ea7c3eb6dd73c12eb2cffc9061280dfc8365cdcfa5241c6e3d9c9a7\r\n\r\n";
    // v1.14 servers may close before replying: the client must retry.
    let mut first = accept_plain(&listener).await;
    let mut req = vec![0u8; expected_request.len()];
    first.read_exact(&mut req).await.unwrap();
    assert_eq!(String::from_utf8(req).unwrap(), expected_request);
    drop(first);
    let started = std::time::Instant::now();
    let mut second = tokio::time::timeout(Duration::from_secs(10), accept_plain(&listener))
        .await
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
