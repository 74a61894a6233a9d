//! porthole against the real NodePass (Go) binaries: v1.14.0 (newest stable) and
//! v2.0.0-b10 (newest beta), porthole as server and as client, tls 0/1/2, both flows,
//! pool types 0 (TCP) and 2 (WebSocket), TCP (1 MiB, hash-checked, in both directions
//! at once) and UDP (two users at once, each must get only its own replies).
//!
//! The binaries are looked for in `PORTHOLE_NODEPASS_DIR`, then `../shared/nodepass/`
//! beside the repository. Without them the tests skip with a banner, unless
//! `PORTHOLE_NODEPASS=required` (as in `.ci/run`), where a skip is a failure.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use crate::support::echo::tcp_echo;
use crate::support::process::{Proc, bin, free_tcp_port};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Version {
    V1_14,
    V2Beta,
}

impl Version {
    fn file(self) -> &'static str {
        match self {
            Version::V1_14 => "nodepass-1.14.0",
            Version::V2Beta => "nodepass-2.0.0-b10",
        }
    }
}

/// The directory holding the real binaries, or `None` (after the banner) to skip.
fn nodepass_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PORTHOLE_NODEPASS_DIR").map(PathBuf::from),
        Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/nodepass")),
    ];
    let found = candidates.into_iter().flatten().find(|d| {
        [Version::V1_14, Version::V2Beta]
            .iter()
            .all(|v| d.join(v.file()).is_file())
    });
    if found.is_none() {
        assert!(
            std::env::var("PORTHOLE_NODEPASS").as_deref() != Ok("required"),
            "the real NodePass binaries ({} and {}) are not in PORTHOLE_NODEPASS_DIR or \
             ../shared/nodepass/, and PORTHOLE_NODEPASS=required",
            Version::V1_14.file(),
            Version::V2Beta.file()
        );
        eprintln!(
            "\n=== SKIPPED: NodePass interop tests: no real NodePass binaries \
             (set PORTHOLE_NODEPASS_DIR) ===\n"
        );
    }
    found
}

/// Which end porthole plays; the real NodePass plays the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Porthole {
    Server,
    Client,
}

#[derive(Debug, Clone, Copy)]
struct Case {
    version: Version,
    porthole: Porthole,
    tls: u8,
    /// Forward flow (`+`, server mode=2): users connect to the client. Else reverse.
    forward: bool,
    /// Pool type (`type=`): 0 TCP, 1 QUIC, 2 WebSocket, 3 HTTP/2.
    pool: u8,
}

/// tls=2 material: a CA (trusted through `SSL_CERT_FILE` by Go and by porthole) and a
/// certificate for `localhost` (the clients' `sni`) and 127.0.0.1 (the tunnel's host,
/// which Go's WebSocket pool verifies instead).
struct Certs {
    dir: tempfile::TempDir,
}

impl Certs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let certs =
            porthole_relay::certs::generate(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        std::fs::write(dir.path().join("crt.pem"), &certs.cert_pem).unwrap();
        std::fs::write(dir.path().join("key.pem"), &certs.key_pem).unwrap();
        std::fs::write(dir.path().join("ca.pem"), &certs.ca_pem).unwrap();
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).to_str().unwrap().to_string()
    }
}

/// A running tunnel of one case: both processes and where users connect.
struct Tunnel {
    user: SocketAddr,
    server: Proc,
    client: Proc,
    _certs: Certs,
}

async fn start(dir: &std::path::Path, case: Case) -> Tunnel {
    let target = tcp_echo().await;
    super::udp_echo_on(target).await;
    let (tunnel, user) = (free_tcp_port(), free_tcp_port());
    let certs = Certs::new();
    let (tls, sni) = match case.tls {
        2 => (
            format!(
                "tls=2&crt={}&key={}",
                certs.path("crt.pem"),
                certs.path("key.pem")
            ),
            "&sni=localhost",
        ),
        n => (format!("tls={n}"), ""),
    };
    let (server_target, client_target, mode) = if case.forward {
        (target.port(), user, 2)
    } else {
        (user, target.port(), 1)
    };
    let server_url = format!(
        "server://secret@127.0.0.1:{tunnel}/127.0.0.1:{server_target}?{tls}&mode={mode}&type={}",
        case.pool
    );
    let client_url =
        format!("client://secret@127.0.0.1:{tunnel}/127.0.0.1:{client_target}?min=8&mode=2{sni}");
    let real = |url: &str| {
        let mut c = Command::new(dir.join(case.version.file()));
        c.arg(url).env("SSL_CERT_FILE", certs.path("ca.pem"));
        c
    };
    let porthole = |url: &str| {
        let mut c = bin();
        c.args(["nodepass", url])
            .env("SSL_CERT_FILE", certs.path("ca.pem"))
            .env("RUST_LOG", "porthole_nodepass=debug,info");
        c
    };
    let (server, client) = match case.porthole {
        Porthole::Server => (porthole(&server_url), real(&client_url)),
        Porthole::Client => (real(&server_url), porthole(&client_url)),
    };
    let server = Proc::spawn(&format!("{case:?} server"), server);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let client = Proc::spawn(&format!("{case:?} client"), client);
    Tunnel {
        user: SocketAddr::from(([127, 0, 0, 1], user)),
        server,
        client,
        _certs: certs,
    }
}

/// 1 MiB through an echo, written while the echo comes back, compared by SHA-256. The
/// real NodePass closes pool sockets fully, so the reader counts bytes instead of
/// waiting for EOF.
async fn tcp_mib(addr: SocketAddr, seed: u8) -> Result<(), String> {
    const SIZE: usize = 1 << 20;
    let s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let (mut r, mut w) = s.into_split();
    let data: Vec<u8> = (0..SIZE)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed)
        .collect();
    let want = Sha256::digest(&data);
    let writer = tokio::spawn(async move { w.write_all(&data).await.map(|()| w) });
    let mut back = vec![0u8; SIZE];
    let read = tokio::time::timeout(Duration::from_secs(20), r.read_exact(&mut back)).await;
    let _w = writer.await.map_err(|e| e.to_string())?;
    match read {
        Err(_) => return Err("timed out reading the echo".into()),
        Ok(Err(e)) => return Err(format!("echo: {e}")),
        Ok(Ok(_)) => {}
    }
    if Sha256::digest(&back) == want {
        Ok(())
    } else {
        Err("the echo differs from what was sent".into())
    }
}

/// Two users at once, 20 datagrams each of varied sizes with the user's tag: each must
/// get back only its own datagrams, unaltered (most of them: UDP may drop).
async fn udp_two_users(addr: SocketAddr, exact: bool) -> Result<(), String> {
    let run = |tag: u8| async move {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.connect(addr).await.unwrap();
        let mut buf = vec![0u8; 65536];
        let mut got = 0;
        let mut previous = Vec::new();
        for i in 0..20u16 {
            let size = 8 + usize::from(i) * 67 % 1400;
            let mut d = vec![tag; size];
            d[1..3].copy_from_slice(&i.to_be_bytes());
            for _ in 0..5 {
                s.send(&d).await.map_err(|e| e.to_string())?;
                match tokio::time::timeout(Duration::from_millis(800), s.recv(&mut buf)).await {
                    Ok(Ok(n)) if buf[..n] == d[..] => {
                        got += 1;
                        break;
                    }
                    // A late echo of this user's previous datagram (it was resent).
                    Ok(Ok(n)) if i > 0 && buf[..n] == previous[..] => {}
                    Ok(Ok(n)) if exact => {
                        return Err(format!(
                            "user {tag} got {n} bytes that are not its datagram {i} (tag {})",
                            buf[0]
                        ));
                    }
                    // Bare datagrams on a byte stream: a piece, or two glued, counts as lost.
                    Ok(Ok(_)) => {}
                    _ => {}
                }
            }
            previous = d;
        }
        if got >= if exact { 18 } else { 15 } {
            Ok(())
        } else {
            Err(format!("user {tag}: only {got} of 20 datagrams came back"))
        }
    };
    let (a, b) = tokio::join!(run(0xA1), run(0xB2));
    a.and(b)
}

/// One short round trip through the echo.
async fn tcp_small(addr: SocketAddr) -> Result<(), String> {
    let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let msg = b"one of many short connections";
    s.write_all(msg).await.map_err(|e| e.to_string())?;
    let mut back = [0u8; 29];
    s.read_exact(&mut back)
        .await
        .map_err(|e| format!("echo: {e}"))?;
    if &back != msg {
        return Err("the echo differs".into());
    }
    Ok(())
}

async fn run_case(dir: PathBuf, case: Case) -> Result<(), String> {
    let started = tokio::time::Instant::now();
    let t = start(&dir, case).await;
    // Up within 20 s (tls=1 waits ~5 s for the fingerprint check).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tcp_mib(t.user, 0).await {
            Ok(()) => break,
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(fail(&t, &format!("no TCP round trip: {e}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    }
    // Two at once, each on its own pool connection.
    let (a, b) = tokio::join!(tcp_mib(t.user, 1), tcp_mib(t.user, 2));
    a.and(b).map_err(|e| fail(&t, &format!("TCP: {e}")))?;
    // More connections in a row than the pool holds, after the tls=1 fingerprint check
    // (the `verify` went out ~5 s in, on a pool connection the peer then owns): every
    // pool connection is used once, none may be one the peer no longer knows.
    if case.tls == 1 {
        tokio::time::sleep_until(started + Duration::from_secs(10)).await;
    }
    for i in 0..12 {
        tokio::time::timeout(Duration::from_secs(5), tcp_small(t.user))
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r)
            .map_err(|e| fail(&t, &format!("connection {i} of 12 in a row: {e}")))?;
    }
    // A Go end refills its pool on a timer (~1 s): let it, so that the UDP users below
    // are not answered late (a late echo of a resent datagram is not an error, but two
    // resends glued on a byte-stream pool, as bare datagrams are, would look like one).
    tokio::time::sleep(Duration::from_secs(3)).await;
    // v1.14 sends bare datagrams: on a byte stream without records (tls=0, a QUIC
    // stream) their boundaries are not kept, in NodePass itself neither.
    let exact = !(case.version == Version::V1_14 && (case.tls == 0 || case.pool == 1));
    udp_two_users(t.user, exact)
        .await
        .map_err(|e| fail(&t, &format!("UDP: {e}")))
}

fn fail(t: &Tunnel, what: &str) -> String {
    format!(
        "{what}\n--- {} ---\n{}\n--- {} ---\n{}",
        t.server.name,
        tail(&t.server.output()),
        t.client.name,
        tail(&t.client.output())
    )
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Every tls mode and flow for one version and porthole role, run side by side.
async fn matrix(version: Version, porthole: Porthole) {
    crate::support::init_tracing();
    let Some(dir) = nodepass_dir() else { return };
    let mut cases = Vec::new();
    for pool in [0, 1, 2, 3] {
        for tls in 0..=2 {
            for forward in [false, true] {
                let case = Case {
                    version,
                    porthole,
                    tls,
                    forward,
                    pool,
                };
                if upstream_broken(case) {
                    continue;
                }
                cases.push(case);
            }
        }
    }
    let mut runs = tokio::task::JoinSet::new();
    for c in cases {
        let dir = dir.clone();
        runs.spawn(async move { (c, run_case(dir, c).await) });
    }
    let mut failures = Vec::new();
    while let Some(r) = runs.join_next().await {
        let (c, r) = r.unwrap();
        if let Err(e) = r {
            failures.push(format!("{c:?}: {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// A real v1.14.0 server under tls=2 waits for a `verify` it cannot check (its own
/// fingerprint is empty there): real-to-real hangs too, fixed upstream in v1.14.1.
fn upstream_broken(c: Case) -> bool {
    c.version == Version::V1_14 && c.porthole == Porthole::Client && c.tls == 2 && !c.forward
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_v1_14_client_with_porthole_server() {
    matrix(Version::V1_14, Porthole::Server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_v1_14_server_with_porthole_client() {
    matrix(Version::V1_14, Porthole::Client).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_v2_beta_client_with_porthole_server() {
    matrix(Version::V2Beta, Porthole::Server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn real_v2_beta_server_with_porthole_client() {
    matrix(Version::V2Beta, Porthole::Client).await;
}
