//! URL features: targets, slot, proxy, notcp/noudp, read, rate, dial.

use super::*;

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
    spawn_server(&server_url, stop.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    spawn_client(&client_url, vec![], stop.clone());
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

/// A lone porthole NodePass server in reverse flow with `query` added; returns its user
/// port once the listeners had time to bind.
async fn lone_server(query: &str) -> (u16, CancellationToken) {
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let stop = CancellationToken::new();
    let url = format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1{query}");
    spawn_server(&url, stop.clone());
    tokio::time::sleep(Duration::from_millis(300)).await;
    (user, stop)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn notcp_and_noudp_disable_listeners() {
    init_tracing();
    let (user, stop) = lone_server("&notcp=1").await;
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

    let (user, stop) = lone_server("&noudp=1").await;
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

/// `block=123` on the accepting side: SOCKS, HTTP and TLS openings are closed before
/// they reach the target; other bytes pass, and so does a user that waits for the
/// server to speak first (NodePass itself would wait for 8 bytes forever).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn block_refuses_socks_http_and_tls_only() {
    let target = naming_target("T").await;
    let (user, stop) = reverse_pair(&target.to_string(), "&block=123", "").await;
    let say = |first: &'static [u8]| async move {
        let mut s = TcpStream::connect(user).await.unwrap();
        s.write_all(first).await.unwrap();
        let mut out = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    // The tunnel is up once plain bytes get through.
    for _ in 0..100 {
        if say(b"hello").await.starts_with('T') {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for blocked in [
        &b"\x05\x01\x00"[..],
        b"\x04\x01\x00\x50\x7f\x00\x00\x01",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00",
    ] {
        assert_eq!(say(blocked).await, "", "{blocked:?} got through");
    }
    assert!(
        say(b"SSH-2.0-OpenSSH_9.2\r\n")
            .await
            .starts_with("T 127.0.0.1 SSH-2.0")
    );
    // Says nothing: the target's greeting still arrives.
    let silent = ask(user).await;
    assert!(silent.starts_with('T'), "a silent user got {silent:?}");
    stop.cancel();
}

/// `lbs=2` dials the first target while it answers; `lbs=1` settles on the one the probe
/// found fastest; both unlike round robin, which alternates (tested above).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lbs_primary_and_lowest_latency_pick_one_target() {
    for lbs in [2, 1] {
        let a = naming_target("A").await;
        let b = naming_target("B").await;
        let (user, stop) = reverse_pair(&format!("{a},{b}"), "", &format!("&lbs={lbs}")).await;
        eventually_answer(user).await;
        let answers: Vec<char> = {
            let mut v = Vec::new();
            for _ in 0..8 {
                v.push(ask(user).await.chars().next().unwrap_or('-'));
            }
            v
        };
        assert!(!answers.contains(&'-'), "lbs={lbs}: {answers:?}");
        if lbs == 2 {
            assert!(
                answers.iter().all(|&c| c == 'A'),
                "lbs=2 dials the first target while it answers: {answers:?}"
            );
        } else {
            // Two loopback targets are about as fast: a probe (every 5 s) may move the
            // choice once while the answers come (~2.5 s), never back and forth as
            // round robin does.
            let switches = answers.windows(2).filter(|w| w[0] != w[1]).count();
            assert!(switches <= 1, "lbs=1: {answers:?}");
        }
        stop.cancel();
    }
}
