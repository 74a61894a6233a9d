//! Load through one tunnel: 10,000 sequential and 500 concurrent TCP connections, every
//! byte verified; file descriptors and memory return to their baseline afterwards.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::TOKEN;
use crate::support::echo::tcp_echo;
use crate::support::process::{Offline, Proc, endpoint_id, free_tcp_port, free_udp_port};

fn payload(seed: u32, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

async fn echo_once(port: u16, seed: u32, len: usize) {
    let data = payload(seed, len);
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap_or_else(|e| panic!("connection {seed}: connect: {e}"));
    let (mut r, mut w) = s.split();
    let write = async {
        w.write_all(&data)
            .await
            .unwrap_or_else(|e| panic!("connection {seed}: write: {e}"));
        w.shutdown()
            .await
            .unwrap_or_else(|e| panic!("connection {seed}: shutdown: {e}"));
    };
    let mut back = Vec::with_capacity(len);
    let read = r.read_to_end(&mut back);
    let (_, n) = tokio::join!(write, read);
    n.unwrap_or_else(|e| panic!("connection {seed}: read: {e}"));
    assert!(
        back == data,
        "connection {seed}: {} bytes back, content differs",
        back.len()
    );
}

/// 500 concurrent connections, 16 KiB each way, every byte checked.
async fn burst(port: u16, seed: u32) {
    let tasks: Vec<_> = (0..500u32)
        .map(|i| tokio::spawn(echo_once(port, seed + i, 16 * 1024)))
        .collect();
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(120), t)
            .await
            .unwrap()
            .unwrap();
    }
}

/// The server binary on 127.0.0.1:`port` (no relay, no DNS, no port mapping), allowing TCP
/// to loopback, with `extra` flags; returns it and its EndpointId.
fn loopback_server(tokens: &std::path::Path, port: u16, extra: &[&str]) -> (Proc, String) {
    let server = Offline::server(tokens, port).args(extra).spawn("server");
    let id = endpoint_id(&server);
    (server, id)
}

fn snapshot(p: &Proc) -> (usize, u64) {
    (p.fds(), p.rss_kib())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_sequential_and_500_concurrent_connections() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let target = tcp_echo().await;
    let port = free_udp_port();
    let (server, id) = loopback_server(&tokens, port, &["-q"]);
    let listen = free_tcp_port();
    let client = Offline::client(&id, port, &tokens)
        .forward(&format!("tcp://{target}"), listen)
        .spawn("client");
    client.wait_line("tunnel up", Duration::from_secs(20));

    // Warm up (lazy allocations, connection state), then take the baseline.
    for i in 0..300 {
        echo_once(listen, i, 1024).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (server_base, client_base) = (snapshot(&server), snapshot(&client));

    let started = std::time::Instant::now();
    for i in 0..10_000u32 {
        echo_once(listen, i, 1024).await;
    }
    let sequential = started.elapsed();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (server_seq, client_seq) = (snapshot(&server), snapshot(&client));
    // No growth from 10,000 sequential connections.
    for (name, base, seq) in [
        ("server", server_base, server_seq),
        ("client", client_base, client_seq),
    ] {
        assert!(
            seq.0 <= base.0 + 4,
            "{name}: fds {} -> {} after sequential connections",
            base.0,
            seq.0
        );
        assert!(
            seq.1 <= base.1 + 8 * 1024,
            "{name}: RSS {} -> {} KiB after sequential connections",
            base.1,
            seq.1
        );
    }

    let started = std::time::Instant::now();
    burst(listen, 1_000_000).await;
    let concurrent = started.elapsed();
    let peak = (snapshot(&server), snapshot(&client));

    // Closed streams and sockets are released at once; freed memory goes back to the OS
    // within the allocator's purge delay (jemalloc: ~10 s). Poll for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(40);
    let (mut server_after, mut client_after);
    loop {
        tokio::time::sleep(Duration::from_secs(2)).await;
        (server_after, client_after) = (snapshot(&server), snapshot(&client));
        let settled = [(server_base, server_after), (client_base, client_after)]
            .iter()
            .all(|(b, a)| a.0 <= b.0 + 4 && a.1 <= b.1 + 8 * 1024);
        if settled || std::time::Instant::now() > deadline {
            break;
        }
    }
    eprintln!(
        "10000 sequential in {sequential:.1?}, 500 concurrent in {concurrent:.1?}\n\
         server fds/RSS KiB: base {server_base:?} sequential {server_seq:?} peak {:?} after {server_after:?}\n\
         client fds/RSS KiB: base {client_base:?} sequential {client_seq:?} peak {:?} after {client_after:?}",
        peak.0, peak.1
    );
    for (name, base, after) in [
        ("server", server_base, server_after),
        ("client", client_base, client_after),
    ] {
        assert!(
            after.0 <= base.0 + 4,
            "{name} leaks file descriptors: {} -> {}",
            base.0,
            after.0
        );
        // Memory returns to the steady state (allow 8 MiB of allocator noise).
        assert!(
            after.1 <= base.1 + 8 * 1024,
            "{name} RSS grew: {} KiB -> {} KiB",
            base.1,
            after.1
        );
    }
    // Still healthy.
    echo_once(listen, 42, 100_000).await;
}

/// Stress variant (ignored by default): many bursts, to hunt rare resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore]
async fn burst_stress() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let target = tcp_echo().await;
    let port = free_udp_port();
    let (_server, id) = loopback_server(&tokens, port, &[]);
    let listen = free_tcp_port();
    let client = Offline::client(&id, port, &tokens)
        .forward(&format!("tcp://{target}"), listen)
        .spawn("client");
    client.wait_line("tunnel up", Duration::from_secs(20));
    for round in 0..40u32 {
        burst(listen, round * 1000).await;
    }
}

/// A server with 100 connected clients that do nothing must hold its memory: keep-alives,
/// the window tuner and path bookkeeping may not accumulate per tick (receive windows
/// that follow the path must not turn into buffers nobody uses).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_server_with_100_idle_clients_does_not_grow() {
    const CLIENTS: usize = 100;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let target = tcp_echo().await;
    let port = free_udp_port();
    let max_sessions = (CLIENTS + 10).to_string();
    let (server, id) = loopback_server(&tokens, port, &["-q", "--max-sessions", &max_sessions]);
    let id: porthole_proto::key::EndpointId = id.parse().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let alone = server.rss_kib();

    let mut clients = Vec::with_capacity(CLIENTS);
    for _ in 0..CLIENTS {
        let source = format!("tcp://{target}");
        let setup = crate::support::ClientSetup {
            net: crate::support::Net::default(),
            server: id,
            server_addrs: vec![format!("127.0.0.1:{port}").parse().unwrap()],
            forwards: vec![source],
            token: crate::support::token(TOKEN),
            tweak: None,
        };
        let mut c = crate::support::start_client(setup).await;
        c.connected().await;
        clients.push(c);
    }
    // Every tunnel carries a little, so windows and paths are set up as in real use.
    for (i, c) in clients.iter().enumerate() {
        echo_once(c.addrs[0].port(), i as u32, 4096).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    let connected = server.rss_kib();
    // Six keep-alive rounds and 600 window-tuner ticks per connection.
    tokio::time::sleep(Duration::from_secs(30)).await;
    let later = server.rss_kib();
    eprintln!(
        "server RSS: alone {alone} KiB, {CLIENTS} clients connected {connected} KiB \
         (~{} KiB each), 30 s later {later} KiB",
        connected.saturating_sub(alone) / CLIENTS as u64
    );
    assert!(
        later <= connected + connected / 20 + 2048,
        "an idle server grew from {connected} to {later} KiB in 30 s"
    );
    assert!(
        connected.saturating_sub(alone) / (CLIENTS as u64) < 1024,
        "an idle client costs the server {} KiB",
        connected.saturating_sub(alone) / CLIENTS as u64
    );
    for c in clients {
        c.stop().await.unwrap();
    }
}
