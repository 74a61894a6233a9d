//! End-to-end tunnels in one process: a local relay, a server and a client built from
//! the crates, real QUIC over loopback.

use std::time::Duration;

use porthole_engine::client::ClientError;
use porthole_proto::message::RejectReason;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::echo::{
    closed_port, tcp_count_then_reply, tcp_echo, tcp_reply_then_reset, udp_echo,
};
use crate::support::*;

async fn echo_once(addr: std::net::SocketAddr, msg: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    out
}

/// Sends `total` pseudo-random bytes through an echo forward while reading the echo back,
/// and checks that every byte came back in order (same length, same SHA-256).
async fn echo_verified_by_hash(addr: std::net::SocketAddr, total: usize) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut block = vec![0u8; 256 * 1024];
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut sent = 0;
        while sent < total {
            for chunk in block.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                chunk.copy_from_slice(&x.to_le_bytes()[..chunk.len()]);
            }
            hasher.update(&block);
            w.write_all(&block).await.unwrap();
            sent += block.len();
        }
        w.shutdown().await.unwrap();
        hasher.finalize()
    });
    let reader = tokio::spawn(async move {
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 256 * 1024];
        let mut got = 0usize;
        loop {
            let n = r.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            got += n;
        }
        (got, hasher.finalize())
    });
    let sent_hash = tokio::time::timeout(Duration::from_secs(120), writer)
        .await
        .unwrap()
        .unwrap();
    let (got, got_hash) = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, total.div_ceil(256 * 1024) * 256 * 1024);
    assert_eq!(sent_hash, got_hash, "echoed bytes differ from sent bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tcp_echo_and_100mb_transfer_verified_by_hash() {
    let relay = http_relay().await;
    let target = tcp_echo().await;
    let (server, client) = start_tunnel(Net::via(&relay), &format!("tcp://{target}")).await;
    assert_eq!(
        echo_once(client.addrs[0], b"hello porthole").await,
        b"hello porthole"
    );

    echo_verified_by_hash(client.addrs[0], 100 * 1024 * 1024).await;
    client.stop().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn half_close_delivers_the_whole_reply() {
    let relay = http_relay().await;
    let target = tcp_count_then_reply().await;
    let (server, client) = start_tunnel(Net::via(&relay), &format!("tcp://{target}")).await;
    let request = vec![7u8; 300_000];
    let reply = echo_once(client.addrs[0], &request).await;
    let expected = "read 300000 bytes;".repeat(1000);
    assert_eq!(String::from_utf8(reply).unwrap(), expected);
    client.stop().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_tcp_connections() {
    let relay = http_relay().await;
    let target = tcp_echo().await;
    let (server, client) = start_tunnel(Net::via(&relay), &format!("tcp://{target}")).await;
    let addr = client.addrs[0];
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        tasks.push(tokio::spawn(async move {
            let msg: Vec<u8> = (0..20_000u32)
                .map(|j| (i.wrapping_mul(31) ^ j) as u8)
                .collect();
            let back = echo_once(addr, &msg).await;
            assert_eq!(back, msg, "connection {i} got wrong bytes");
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    client.stop().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn udp_two_local_peers_without_cross_talk() {
    let relay = http_relay().await;
    let target = udp_echo().await;
    let (server, client) = start_tunnel(Net::via(&relay), &format!("udp://{target}")).await;
    let a = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    a.connect(client.addrs[0]).await.unwrap();
    b.connect(client.addrs[0]).await.unwrap();
    let mut buf = vec![0u8; 65536];
    for round in 0..20 {
        let ma = format!("peer A round {round}");
        let mb = format!("peer B round {round}");
        a.send(ma.as_bytes()).await.unwrap();
        b.send(mb.as_bytes()).await.unwrap();
        // Datagrams may be lost; retry each round a few times before failing.
        let got_a = recv_expect(&a, ma.as_bytes(), &mut buf).await;
        let got_b = recv_expect(&b, mb.as_bytes(), &mut buf).await;
        assert!(got_a && got_b, "round {round}: a={got_a} b={got_b}");
    }
    client.stop().await.unwrap();
    server.stop().await;
}

/// Receives until `want` arrives (resending once per timeout); fails on any other payload.
async fn recv_expect(s: &UdpSocket, want: &[u8], buf: &mut [u8]) -> bool {
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(2), s.recv(buf)).await {
            Ok(Ok(n)) => {
                assert_eq!(&buf[..n], want, "received another peer's datagram");
                return true;
            }
            _ => {
                s.send(want).await.unwrap();
            }
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn udp_large_datagrams_arrive_intact() {
    let relay = http_relay().await;
    let target = udp_echo().await;
    let (server, client) = start_tunnel(Net::via(&relay), &format!("udp://{target}")).await;
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.connect(client.addrs[0]).await.unwrap();
    let mut buf = vec![0u8; 65536];
    for size in [1, 1200, 1472, 1500, 8 * 1024, 30_000, 65_507] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 13 + size) as u8).collect();
        s.send(&payload).await.unwrap();
        assert!(
            recv_expect(&s, &payload, &mut buf).await,
            "{size}-byte datagram never came back"
        );
    }
    client.stop().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_only_mode_stays_on_the_relay() {
    let relay = http_relay().await;
    let target = tcp_echo().await;
    let (server, client) =
        start_tunnel(Net::via(&relay).relay_only(), &format!("tcp://{target}")).await;
    assert_eq!(echo_once(client.addrs[0], b"via relay").await, b"via relay");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let path = client.path().expect("no path");
    assert!(
        matches!(
            path.kind,
            porthole_transport_iroh::paths::PathKind::Relay(_)
        ),
        "expected relay, got {path}"
    );
    client.stop().await.unwrap();
    server.stop().await;
}

/// Bulk data through the relay alone, both ways at once: the relay server batches many
/// datagrams into one write (vendor/iroh-relay), which must keep every byte in order.
async fn relay_only_bulk_echo(relay: TestRelay) {
    let target = tcp_echo().await;
    let (server, client) =
        start_tunnel(Net::via(&relay).relay_only(), &format!("tcp://{target}")).await;
    echo_verified_by_hash(client.addrs[0], 24 * 1024 * 1024).await;
    let path = client.path().expect("no path");
    assert!(
        matches!(
            path.kind,
            porthole_transport_iroh::paths::PathKind::Relay(_)
        ),
        "expected relay, got {path}"
    );
    client.stop().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_only_bulk_transfer_over_http_relay() {
    relay_only_bulk_echo(http_relay().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn relay_only_bulk_transfer_over_https_relay() {
    relay_only_bulk_echo(https_relay().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_path_through_https_relay_with_private_ca() {
    let relay = https_relay().await;
    let target = tcp_echo().await;
    let (server, client) = start_tunnel(Net::via(&relay), &format!("tcp://{target}")).await;
    assert_eq!(echo_once(client.addrs[0], b"direct").await, b"direct");
    let path = client
        .wait_path(|p| p.is_direct(), Duration::from_secs(15))
        .await
        .expect("no path");
    assert!(path.is_direct(), "expected a direct path, got {path}");
    client.stop().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn server_addr_without_any_relay() {
    let target = tcp_echo().await;
    let server = start_server(ServerSetup::new(Net::default())).await;
    let mut setup = ClientSetup::new(Net::default(), &server, &[&format!("tcp://{target}")]);
    setup.server_addrs = server.direct_addrs();
    assert!(!setup.server_addrs.is_empty());
    let mut client = start_client(setup).await;
    client.connected().await;
    assert_eq!(echo_once(client.addrs[0], b"lan").await, b"lan");
    assert!(client.path().unwrap().is_direct());
    client.stop().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_token_is_refused_fast() {
    let relay = http_relay().await;
    let server = start_server(ServerSetup::new(Net::via(&relay))).await;
    let mut setup = ClientSetup::new(Net::via(&relay), &server, &["tcp://127.0.0.1:9"]);
    setup.token = token(OTHER_TOKEN);
    let client = start_client(setup).await;
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), client.task)
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(r, Err(ClientError::AuthRejected)), "{r:?}");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    server.stop().await;
}

async fn refused(server_setup: ServerSetup, source: &str) -> (RejectReason, String) {
    let relay = http_relay().await;
    let mut server_setup = server_setup;
    server_setup.net = Net::via(&relay);
    let server = start_server(server_setup).await;
    let client = start_client(ClientSetup::new(Net::via(&relay), &server, &[source])).await;
    let r = tokio::time::timeout(Duration::from_secs(30), client.task)
        .await
        .unwrap()
        .unwrap();
    server.stop().await;
    match r {
        Err(ClientError::SourceRefused { reason, detail, .. }) => (reason, detail),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn empty_allow_list_refuses_the_protocol() {
    let mut setup = ServerSetup::new(Net::default());
    setup.udp = Vec::new();
    let (reason, _) = refused(setup, "udp://127.0.0.1:53").await;
    assert_eq!(reason, RejectReason::ProtocolDisabled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn source_outside_allow_list_is_refused() {
    let (reason, detail) = refused(ServerSetup::new(Net::default()), "tcp://10.1.2.3:22").await;
    assert_eq!(reason, RejectReason::NotAllowed);
    assert!(detail.contains("10.1.2.3"), "{detail}");
    let mut setup = ServerSetup::new(Net::default());
    setup.tcp = vec!["10.0.0.0/8".into()];
    let (reason, detail) = refused(setup, "tcp://localhost:22").await;
    assert_eq!(reason, RejectReason::NotAllowed);
    assert!(detail.contains("localhost"), "{detail}");
}

/// Direct TCP on Linux hands the reader every byte that arrived before a reset; through
/// the tunnel the reply must not be overtaken by the reset either.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reply_sent_just_before_a_target_reset_reaches_the_user() {
    let relay = http_relay().await;
    let target = tcp_reply_then_reset(b"busy, try later").await;
    let (server, client) = start_tunnel(Net::via(&relay), &format!("tcp://{target}")).await;
    for round in 0..5 {
        let mut s = TcpStream::connect(client.addrs[0]).await.unwrap();
        s.write_all(b"a request the target will not read")
            .await
            .unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        loop {
            match tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("the connection ends")
            {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
        assert_eq!(
            String::from_utf8_lossy(&got),
            "busy, try later",
            "round {round}"
        );
    }
    client.stop().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn target_down_resets_the_user_connection_promptly() {
    let relay = http_relay().await;
    let dead = closed_port().await;
    let (server, client) = start_tunnel(Net::via(&relay), &format!("tcp://{dead}")).await;
    let started = std::time::Instant::now();
    // Under load the reset can arrive before `connect` has even checked its socket, or
    // before the write: the kernel reports it once, to whichever call comes first (a
    // later read then sees EOF), so it may surface from any of the three.
    let user = async {
        let mut s = TcpStream::connect(client.addrs[0]).await?;
        s.write_all(b"anyone?").await?;
        let mut buf = [0u8; 16];
        s.read(&mut buf).await
    };
    let r = tokio::time::timeout(Duration::from_secs(10), user)
        .await
        .unwrap();
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "expected a reset, got {r:?}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    // The tunnel is still up.
    assert!(matches!(
        *client.status.borrow(),
        porthole_engine::client::Status::Connected { .. }
    ));
    client.stop().await.unwrap();
    server.stop().await;
}
