//! NodePass mode: porthole on both ends (both flows x tls 0/1/2, TCP and UDP), and the
//! helpers the other files here share. Fake peers replaying the documented bytes are in
//! `fake_peers`, restarts, refusals and the binary in `lifecycle`, URL parameters in `params`.

mod fake_peers;
mod generations;
mod lifecycle;
mod params;
mod real;

use std::net::SocketAddr;
use std::time::Duration;

use porthole_nodepass::client::ClientOptions;
use porthole_nodepass::server::ServerOptions;
use porthole_nodepass::wire::signal::Signal;
use porthole_nodepass::wire::{http, key};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::support::echo::tcp_echo;
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

/// A NodePass server for `url` with test timings until `stop`; the task panics on error.
fn spawn_server(url: &str, stop: CancellationToken) -> JoinHandle<()> {
    let url = url.parse().unwrap();
    tokio::spawn(async move {
        porthole_nodepass::server::run(url, fast_server(), stop)
            .await
            .unwrap()
    })
}

/// A NodePass client for `url` (trusting `roots` too) until `stop`; panics on error.
fn spawn_client(
    url: &str,
    roots: Vec<rustls_pki_types::CertificateDer<'static>>,
    stop: CancellationToken,
) -> JoinHandle<()> {
    let url = url.parse().unwrap();
    tokio::spawn(async move {
        porthole_nodepass::client::run(url, fast_client(roots), stop)
            .await
            .unwrap()
    })
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
    let roots = porthole_transport_iroh::options::parse_pem_certs(&certs.ca_pem).unwrap();
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
    /// The tls=2 certificate files, kept until the pair is dropped.
    _tls2: Tls2,
}

/// A porthole server and client (pool type `pool`); returns where users connect.
async fn pair(forward: bool, tls: u8, pool: u8) -> Pair {
    init_tracing();
    let tcp_target = tcp_echo().await;
    // One port for both protocols: the UDP echo next to the TCP one.
    udp_echo_on(tcp_target).await;
    let target_port = tcp_target.port();
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let tls2 = tls2_files();
    let tls_q = match tls {
        2 => format!("tls=2&crt={}&key={}&type={pool}", tls2.crt, tls2.key),
        n => format!("tls={n}&type={pool}"),
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
    let server = spawn_server(&server_url, shutdown.clone());
    tokio::time::sleep(Duration::from_millis(200)).await;
    let client = spawn_client(&client_url, tls2.roots.clone(), shutdown.clone());
    Pair {
        user: SocketAddr::from(([127, 0, 0, 1], user)),
        shutdown,
        server,
        client,
        _tls2: tls2,
    }
}

/// A UDP echo on the TCP echo's port (NodePass forwards TCP and UDP on one address).
async fn udp_echo_on(addr: SocketAddr) {
    let s = UdpSocket::bind(addr).await.unwrap();
    tokio::spawn(async move {
        let mut b = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut b).await {
            let _ = s.send_to(&b[..n], from).await;
        }
    });
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

/// `size` bytes through an echo, read back by count (no half-close), written while the
/// echo comes back.
async fn tcp_echo_by_length(addr: SocketAddr, size: usize) -> Result<(), String> {
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let sent = data.clone();
    let writer = tokio::spawn(async move { w.write_all(&sent).await.map(|()| w) });
    let mut back = vec![0u8; size];
    let read = tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut back)).await;
    let _ = writer.await;
    match read {
        Err(_) => Err("timeout".into()),
        Ok(Err(e)) => Err(e.to_string()),
        Ok(Ok(_)) if back == data => Ok(()),
        Ok(Ok(_)) => Err("the echo differs".into()),
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
    // Bursts of 20 (~15 KiB, enough for several records per read) with short gaps, so
    // a loaded test machine's socket buffers do not drop what the tunnel would carry.
    for (i, d) in sent.iter().enumerate() {
        s.send(d).await.unwrap();
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
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

async fn both_protocols(forward: bool, tls: u8, pool: u8) {
    let p = pair(forward, tls, pool).await;
    if pool == 2 {
        // A WebSocket has no half-close (a Close ends both ways, in NodePass too): the
        // echo is read back by length instead of to the end.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while let Err(e) = tcp_echo_by_length(p.user, 100_000).await {
            assert!(
                tokio::time::Instant::now() < deadline,
                "no TCP round trip through {}: {e}",
                p.user
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        for _ in 0..5 {
            tcp_echo_by_length(p.user, 50_000).await.unwrap();
        }
    } else {
        eventually_tcp(p.user, Duration::from_secs(20)).await;
        // Several sessions in a row: each uses a fresh pool connection.
        for _ in 0..5 {
            tcp_roundtrip(p.user, 50_000).await.unwrap();
        }
    }
    udp_roundtrip(p.user).await;
    if tls > 0 || pool == 3 {
        // Plain TCP (tls=0) has no boundaries on NodePass' wire either; HTTP/2 pools are
        // TLS always, one DATA frame per datagram.
        udp_burst_keeps_boundaries(p.user).await;
    }
    p.shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), p.server).await;
    let _ = tokio::time::timeout(Duration::from_secs(5), p.client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_tls0() {
    both_protocols(false, 0, 0).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_tls1() {
    both_protocols(false, 1, 0).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reverse_tls2() {
    both_protocols(false, 2, 0).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_tls0() {
    both_protocols(true, 0, 0).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_tls1() {
    both_protocols(true, 1, 0).await;
}
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forward_tls2() {
    both_protocols(true, 2, 0).await;
}

/// [`both_protocols`] over pool type `pool`, both flows and every tls mode.
async fn both_flows_every_tls(pool: u8) {
    for forward in [false, true] {
        for tls in 0..=2 {
            eprintln!("type={pool} forward={forward} tls={tls}");
            both_protocols(forward, tls, pool).await;
        }
    }
}

/// Pool type 2: every pool connection a WebSocket (ws:// or wss://), both flows and
/// every tls mode, TCP and UDP (bursts keep their boundaries: one message each).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn websocket_pool_both_flows_every_tls() {
    both_flows_every_tls(2).await;
}

/// Pool type 1: every pool connection a stream of a QUIC connection, both flows and
/// every tls mode, TCP and UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quic_pool_both_flows_every_tls() {
    both_flows_every_tls(1).await;
}

/// Pool type 3: every pool connection a stream of one HTTP/2 connection (TLS always),
/// both flows and every tls mode, TCP and UDP.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_pool_both_flows_every_tls() {
    both_flows_every_tls(3).await;
}
