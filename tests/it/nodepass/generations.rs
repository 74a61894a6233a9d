//! What differs between NodePass generations, porthole on both ends: the plain-HTTP
//! (v1.14) and HTTPS (v1.15+) handshakes, bare and length-prefixed UDP datagrams
//! (v2.0.0-b9+), and the errors that name the parameter when a choice is wrong.

use std::process::Command;

use super::*;
use crate::support::process::{Proc, bin};

/// Reverse flow, porthole on both ends, extra query parameters on each URL.
async fn reverse(tls: u8, server_q: &str, client_q: &str) -> (SocketAddr, CancellationToken) {
    init_tracing();
    let target = tcp_echo().await;
    udp_echo_on(target).await;
    let (tunnel, user) = (free_tcp_port(), free_tcp_port());
    let stop = CancellationToken::new();
    spawn_server(
        &format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&tls={tls}{server_q}"),
        stop.clone(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    spawn_client(
        &format!("client://k@127.0.0.1:{tunnel}/{target}?min=4&mode=2{client_q}"),
        vec![],
        stop.clone(),
    );
    (SocketAddr::from(([127, 0, 0, 1], user)), stop)
}

/// Both handshakes work against a porthole server; the HTTPS one brings length-prefixed
/// UDP, which keeps datagram boundaries even on plain pool sockets (tls=0), where bare
/// datagrams cannot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn both_handshakes_and_both_udp_framings() {
    for (handshake, tls) in [("http", 0), ("http", 1), ("https", 0), ("https", 1)] {
        eprintln!("handshake={handshake} tls={tls}");
        let (user, stop) = reverse(tls, "", &format!("&handshake={handshake}")).await;
        eventually_tcp(user, Duration::from_secs(20)).await;
        udp_roundtrip(user).await;
        if handshake == "https" || tls > 0 {
            udp_burst_keeps_boundaries(user).await;
        }
        stop.cancel();
    }
}

/// The porthole binary as one end of a reverse-flow tunnel, its log captured.
fn porthole(name: &str, url: &str) -> Proc {
    let mut c = bin();
    c.args(["nodepass", url]);
    Proc::spawn(name, c)
}

/// Reverse flow with both ends as processes (their logs are checked).
async fn reverse_procs(server_q: &str, client_q: &str) -> (SocketAddr, Proc, Proc) {
    let target = tcp_echo().await;
    udp_echo_on(target).await;
    let (tunnel, user) = (free_tcp_port(), free_tcp_port());
    let server = porthole(
        "np-server",
        &format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&tls=1{server_q}"),
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = porthole(
        "np-client",
        &format!("client://k@127.0.0.1:{tunnel}/{target}?min=4&mode=2{client_q}"),
    );
    (SocketAddr::from(([127, 0, 0, 1], user)), server, client)
}

/// A server sending bare datagrams (`udpframe=0`, as v1.15 to v2.0.0-b8 do) and a
/// client on auto, which expects prefixes after an HTTPS handshake: the client sees the
/// bare first record, says so, and carries the datagrams unaltered.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_udp_framing_adopts_a_bare_peer() {
    let (user, _server, client) = reverse_procs("&udpframe=0", "").await;
    eventually_tcp(user, Duration::from_secs(20)).await;
    udp_roundtrip(user).await;
    client.wait_line("using bare datagrams", Duration::from_secs(5));
}

/// An explicit `udpframe=1` facing a bare peer: the session is refused before anything
/// reaches the target, and the log names the parameter to set.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explicit_udp_framing_mismatch_names_the_parameter() {
    let (user, _server, client) = reverse_procs("&udpframe=0", "&udpframe=1").await;
    eventually_tcp(user, Duration::from_secs(20)).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(user).await.unwrap();
    let mut buf = [0u8; 2048];
    for _ in 0..3 {
        s.send(b"a datagram that is not length-prefixed")
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_millis(700), s.recv(&mut buf)).await;
        assert!(got.is_err(), "a mismatched datagram came back: {got:?}");
    }
    client.wait_line("set udpframe=0", Duration::from_secs(5));
}

/// A server that answers anything the way Go's HTTP server answers a request it cannot
/// read (what a v1.14 server says to a ClientHello, and a v1.15+ one to plain HTTP).
async fn bad_request_server() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut b = [0u8; 1024];
                let _ = s.read(&mut b).await;
                let _ = s
                    .write_all(
                        b"HTTP/1.1 400 Bad Request\r\nConnection: close\r\n\r\n400 Bad Request",
                    )
                    .await;
            });
        }
    });
    port
}

/// `handshake=https` against a server without TLS, and `handshake=http` against one
/// that refuses plain requests: the client exits with an error naming the fix.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn explicit_handshake_against_the_other_generation_names_the_parameter() {
    let port = bad_request_server().await;
    for (choice, fix) in [("https", "handshake=http"), ("http", "handshake=https")] {
        let out = tokio::task::spawn_blocking(move || {
            let mut c: Command = bin();
            c.args([
                "nodepass",
                &format!("client://k@127.0.0.1:{port}/127.0.0.1:9?mode=2&handshake={choice}"),
            ]);
            c.output().unwrap()
        })
        .await
        .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "handshake={choice}: {stderr}");
        assert!(stderr.contains(fix), "handshake={choice}: {stderr}");
    }
}

/// A tunnel port that answers for a tunnel the server still runs (a WebSocket pool's
/// 426, as a real v2 server does when the reply to a handshake was lost on the way) is
/// asked again until the server takes handshakes, not given up on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tunnel_port_busy_with_a_pool_is_asked_again() {
    init_tracing();
    let target = tcp_echo().await;
    let (tunnel, user) = (free_tcp_port(), free_tcp_port());
    let stop = CancellationToken::new();
    spawn_server(
        &format!("server://k@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&tls=0"),
        stop.clone(),
    );
    // In front of the server: the first connection gets 426, the rest pass through.
    let front = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let front_port = front.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut s, _)) = front.accept().await {
            let busy = std::mem::take(&mut first);
            tokio::spawn(async move {
                if busy {
                    let mut b = [0u8; 1024];
                    let _ = s.read(&mut b).await;
                    let _ = s
                        .write_all(b"HTTP/1.1 426 Upgrade Required\r\nConnection: close\r\n\r\n")
                        .await;
                    return;
                }
                if let Ok(mut up) = TcpStream::connect(("127.0.0.1", tunnel)).await {
                    let _ = tokio::io::copy_bidirectional(&mut s, &mut up).await;
                }
            });
        }
    });
    spawn_client(
        &format!("client://k@127.0.0.1:{front_port}/{target}?min=4&mode=2&handshake=http"),
        vec![],
        stop.clone(),
    );
    eventually_tcp(
        SocketAddr::from(([127, 0, 0, 1], user)),
        Duration::from_secs(20),
    )
    .await;
    stop.cancel();
}
