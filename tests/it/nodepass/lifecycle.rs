//! Restarts of either side mid-use, refused keys, single-end mode, and the binary.

use super::*;

// ---- restarts ----

/// A server that restarts is met again by its client, for every pool type (QUIC pools:
/// the tunnel port's UDP side is bound again at once).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_restart_mid_use_recovers() {
    init_tracing();
    for pool in [0, 1, 2, 3] {
        server_restart_round(pool).await;
    }
}

async fn server_restart_round(pool: u8) {
    let target = tcp_echo().await;
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let server_url = format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&type={pool}");
    let client_url = format!(
        "client://k@127.0.0.1:{tunnel}/127.0.0.1:{}?min=4&mode=2",
        target.port()
    );
    let user_addr = SocketAddr::from(([127, 0, 0, 1], user));
    let client_stop = CancellationToken::new();
    spawn_client(&client_url, vec![], client_stop.clone());
    for round in 0..2 {
        let stop = CancellationToken::new();
        let server = spawn_server(&server_url, stop.clone());
        eventually_tcp(user_addr, Duration::from_secs(20)).await;
        tracing::info!("type={pool} round {round}: tunnel works; stopping the server");
        stop.cancel();
        let _ = server.await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    client_stop.cancel();
}

/// A client that restarts gets the tunnel back within seconds, whether its new handshake
/// is a plain `GET` or HTTPS, on plain or TLS pool ports, TCP, QUIC or HTTP/2 pools.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_restart_mid_use_recovers() {
    init_tracing();
    for (tls, handshake, pool) in [
        (0, "http", 0),
        (0, "https", 0),
        (1, "http", 0),
        (1, "https", 0),
        (0, "http", 1),
        (1, "https", 1),
        (0, "https", 3),
        (1, "http", 3),
    ] {
        let target = tcp_echo().await;
        let tunnel = free_tcp_port();
        let user = free_tcp_port();
        let server_url =
            format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&tls={tls}&type={pool}");
        let client_url = format!(
            "client://k@127.0.0.1:{tunnel}/127.0.0.1:{}?min=4&mode=2&handshake={handshake}",
            target.port()
        );
        let user_addr = SocketAddr::from(([127, 0, 0, 1], user));
        let server_stop = CancellationToken::new();
        spawn_server(&server_url, server_stop.clone());
        for round in 0..2 {
            let stop = CancellationToken::new();
            let client = spawn_client(&client_url, vec![], stop.clone());
            let started = std::time::Instant::now();
            eventually_tcp(user_addr, Duration::from_secs(20)).await;
            if round == 1 {
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "tls={tls} handshake={handshake} type={pool}: the restarted client waited {:?}",
                    started.elapsed()
                );
            }
            stop.cancel();
            let _ = client.await;
        }
        server_stop.cancel();
    }
}

/// A connection that is dead before the server looks at it (a restarted client's
/// predecessor still dialling as it stopped: same address, connected after the new
/// handshake) does not take the control channel's place: the next connection gets ID
/// 00000000 and the tunnel stands. Both plain (its FIN seen) and TLS pool ports (its TLS
/// handshake fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_connection_does_not_take_the_control_channels_place() {
    init_tracing();
    for tls in [0, 1] {
        let tunnel = free_tcp_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], tunnel));
        let url = format!(
            "server://k@127.0.0.1:{tunnel}/127.0.0.1:{}?mode=1&tls={tls}",
            free_tcp_port()
        );
        let stop = CancellationToken::new();
        spawn_server(&url, stop.clone());
        eventually_listening(addr).await;
        // The handshake, by hand (plain HTTP, as v1.14).
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(http::request("none", "k").as_bytes())
            .await
            .unwrap();
        let mut reply = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut reply))
            .await
            .unwrap()
            .unwrap();
        let (code, _) = http::parse_response(&reply).unwrap();
        assert_eq!(code, 200, "tls={tls}: {}", String::from_utf8_lossy(&reply));
        // The dead one: connected, (the start of a ClientHello under TLS), closed.
        let mut dead = TcpStream::connect(addr).await.unwrap();
        if tls == 1 {
            dead.write_all(b"\x16\x03\x01\x00").await.unwrap();
        }
        drop(dead);
        tokio::time::sleep(Duration::from_millis(200)).await;
        // The client's real control connection.
        let tcp = TcpStream::connect(addr).await.unwrap();
        let mut id = [0xffu8; 4];
        let read = async {
            if tls == 1 {
                let name = porthole_nodepass::tls::server_name("none", "127.0.0.1").unwrap();
                let connector = porthole_nodepass::tls::client_unverified().unwrap();
                let mut io = connector.connect(name, tcp).await?;
                io.read_exact(&mut id).await.map(|_| ())
            } else {
                let mut io = tcp;
                io.read_exact(&mut id).await.map(|_| ())
            }
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .unwrap_or_else(|_| panic!("tls={tls}: no pool ID within 5 s"))
            .unwrap_or_else(|e| panic!("tls={tls}: {e}"));
        assert_eq!(
            id, [0; 4],
            "tls={tls}: the connection after a dead one is the control channel"
        );
        stop.cancel();
    }
}

/// Under tls=1 both ends send `verify` on their newest idle connection: on a pool of
/// one that is the same connection on both sides, which neither then finds in its pool.
/// Each takes the other's `verify` as naming the connection it took itself instead of
/// looking for it for 5 s, so users are served right after the check (300 ms here).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn verify_naming_the_same_connection_from_both_ends_does_not_stall() {
    init_tracing();
    let target = tcp_echo().await;
    let tunnel = free_tcp_port();
    let user = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
    let stop = CancellationToken::new();
    spawn_server(
        &format!("server://k@127.0.0.1:{tunnel}/{user}?mode=1&tls=1"),
        stop.clone(),
    );
    eventually_listening(SocketAddr::from(([127, 0, 0, 1], tunnel))).await;
    let client_url = format!(
        "client://k@127.0.0.1:{tunnel}/127.0.0.1:{}?min=1&mode=2",
        target.port()
    );
    let started = std::time::Instant::now();
    spawn_client(&client_url, vec![], stop.clone());
    eventually_tcp(user, Duration::from_secs(20)).await;
    // Without the fix this takes the 5 s lookup on top of the 300 ms wait.
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the first user waited {:?} for the fingerprint check",
        started.elapsed()
    );
    stop.cancel();
}

/// Connections that say nothing on the tunnel port (a port scanner, a stalled client)
/// do not keep the real client out: handshakes are served side by side, each within
/// its own 10 s limit, so the client's gets through at once, for a plain and an HTTPS
/// handshake alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_connections_do_not_hold_the_handshake_up() {
    init_tracing();
    for handshake in ["http", "https"] {
        let target = tcp_echo().await;
        let tunnel = free_tcp_port();
        let tunnel_addr = SocketAddr::from(([127, 0, 0, 1], tunnel));
        let user = SocketAddr::from(([127, 0, 0, 1], free_tcp_port()));
        let stop = CancellationToken::new();
        spawn_server(
            &format!("server://k@127.0.0.1:{tunnel}/{user}?mode=1"),
            stop.clone(),
        );
        eventually_listening(tunnel_addr).await;
        let mut silent = Vec::new();
        for _ in 0..3 {
            silent.push(TcpStream::connect(tunnel_addr).await.unwrap());
        }
        // One that sends half a request and stalls.
        let mut half = TcpStream::connect(tunnel_addr).await.unwrap();
        half.write_all(b"GET / HTTP/1.1\r\nHost: n").await.unwrap();
        silent.push(half);
        tokio::time::sleep(Duration::from_millis(100)).await;
        let started = std::time::Instant::now();
        spawn_client(
            &format!(
                "client://k@127.0.0.1:{tunnel}/127.0.0.1:{}?mode=2&handshake={handshake}",
                target.port()
            ),
            vec![],
            stop.clone(),
        );
        eventually_tcp(user, Duration::from_secs(40)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "handshake={handshake}: the client waited {:?} behind 4 silent connections",
            started.elapsed()
        );
        stop.cancel();
    }
}

async fn eventually_listening(addr: SocketAddr) {
    for _ in 0..100 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("nothing listens on {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_key_is_refused_with_401() {
    init_tracing();
    let tunnel = free_tcp_port();
    let stop = CancellationToken::new();
    let url = format!(
        "server://right@127.0.0.1:{tunnel}/127.0.0.1:{}?mode=2",
        free_tcp_port()
    );
    spawn_server(&url, stop.clone());
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
    spawn_client(&url, vec![], stop.clone());
    eventually_tcp(
        SocketAddr::from(([127, 0, 0, 1], listen)),
        Duration::from_secs(5),
    )
    .await;
    stop.cancel();
}

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

/// Shutdown ends every session and waits for it: once `run` has returned on both ends,
/// nothing of theirs still relays, so an open user connection is closed, not left
/// carrying bytes for a tunnel that is gone (sessions used to be detached tasks).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_ends_open_sessions_before_run_returns() {
    for forward in [false, true] {
        let p = pair(forward, 0, 0).await;
        eventually_tcp(p.user, Duration::from_secs(20)).await;
        let mut user = TcpStream::connect(p.user).await.unwrap();
        user.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), user.read_exact(&mut buf))
            .await
            .expect("no echo through the tunnel")
            .unwrap();
        assert_eq!(&buf, b"ping");

        p.shutdown.cancel();
        for end in [p.server, p.client] {
            tokio::time::timeout(Duration::from_secs(10), end)
                .await
                .expect("run did not return after shutdown")
                .unwrap();
        }
        // Both ends have returned: the session must already be gone.
        let _ = user.write_all(b"more").await;
        let mut rest = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(1), user.read_to_end(&mut rest)).await;
        assert!(
            read.is_ok(),
            "flow {}: the user connection is still open after both ends returned",
            if forward { "forward" } else { "reverse" }
        );
    }
}

/// A client that vanishes without closing anything (stopped here, as a machine that
/// lost power would be): its replacement's handshake, plain or HTTPS, on plain or TLS
/// pool ports, is noticed at once, not after the 15 s of missing pings NodePass waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_vanished_clients_replacement_is_served_at_once() {
    use crate::support::process::{Proc, bin};
    init_tracing();
    for (tls, handshake) in [(0, "http"), (0, "https"), (1, "http"), (1, "https")] {
        let target = tcp_echo().await;
        let tunnel = free_tcp_port();
        let user = free_tcp_port();
        let user_addr = SocketAddr::from(([127, 0, 0, 1], user));
        let stop = CancellationToken::new();
        spawn_server(
            &format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&tls={tls}"),
            stop.clone(),
        );
        let client_url = format!(
            "client://k@127.0.0.1:{tunnel}/127.0.0.1:{}?min=16&mode=2&handshake={handshake}",
            target.port()
        );
        let mut old = bin();
        old.args(["nodepass", &client_url]);
        let old = Proc::spawn("np-old-client", old);
        eventually_tcp(user_addr, Duration::from_secs(20)).await;
        // Let the pool fill up, then freeze the client: its sockets stay open.
        tokio::time::sleep(Duration::from_millis(500)).await;
        old.signal("STOP");
        let started = std::time::Instant::now();
        let new = spawn_client(&client_url, vec![], stop.clone());
        // A user let in before the restart would get one of the frozen client's pool
        // connections and wait out its own timeout.
        tokio::time::sleep(Duration::from_secs(1)).await;
        eventually_tcp(user_addr, Duration::from_secs(20)).await;
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "tls={tls} handshake={handshake}: the replacement waited {:?}",
            started.elapsed()
        );
        old.signal("CONT");
        stop.cancel();
        let _ = new.await;
    }
}

/// With QUIC pools the tunnel port's TCP side carries only handshakes: a connection from
/// the client's address that is no handshake (a probe, garbage) leaves the tunnel alone,
/// while one that is (a restarted client) is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quic_pool_tunnel_ignores_tcp_that_is_no_handshake() {
    init_tracing();
    let target = tcp_echo().await;
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let user_addr = SocketAddr::from(([127, 0, 0, 1], user));
    let stop = CancellationToken::new();
    spawn_server(
        &format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&type=1"),
        stop.clone(),
    );
    let client_url = format!(
        "client://k@127.0.0.1:{tunnel}/127.0.0.1:{}?min=4&mode=2",
        target.port()
    );
    let client_stop = CancellationToken::new();
    spawn_client(&client_url, vec![], client_stop.clone());
    eventually_tcp(user_addr, Duration::from_secs(20)).await;
    // Garbage on the tunnel port, held open: the tunnel goes on.
    let mut junk = TcpStream::connect(("127.0.0.1", tunnel)).await.unwrap();
    junk.write_all(b"\x00\x01 not a handshake").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    for _ in 0..5 {
        tcp_roundtrip(user_addr, 10_000)
            .await
            .expect("the tunnel broke after a stray TCP connection");
    }
    drop(junk);
    // A restarted client is still recognised.
    client_stop.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = std::time::Instant::now();
    let client = spawn_client(&client_url, vec![], stop.clone());
    eventually_tcp(user_addr, Duration::from_secs(20)).await;
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the restarted client waited {:?}",
        started.elapsed()
    );
    stop.cancel();
    let _ = client.await;
}
