//! Resumable sessions on loopback, the ends that give up: when no resume can come (the
//! other side is gone for good), each side keeps its TCP connections open for its grace
//! period and then resets them (RST), saying why. The resumes themselves are tested in
//! the NAT lab (`natlab::resume`), their security in `hardening`.

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use crate::support::TOKEN;
use crate::support::process::{Offline, Proc, endpoint_id, free_tcp_port, free_udp_port};

/// Both ends give a silent peer up after 5 s.
const SHORT_IDLE: [&str; 4] = ["--idle-timeout", "5s", "--keep-alive", "1s"];
const LONG: Duration = Duration::from_secs(30);

struct Tunnel {
    server: Proc,
    client: Proc,
    /// The client's listener, forwarded to `target`.
    listen: u16,
    target: TcpListener,
    _dir: tempfile::TempDir,
}

fn tunnel(server_extra: &[&str], client_extra: &[&str]) -> Tunnel {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{TOKEN}\n")).unwrap();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free_udp_port();
    let server = Offline::server(&tokens, port)
        .args(&SHORT_IDLE)
        .args(server_extra)
        .spawn("server");
    let id = endpoint_id(&server);
    let listen = free_tcp_port();
    let client = Offline::client(&id, port, &tokens)
        .forward(&format!("tcp://{}", target.local_addr().unwrap()), listen)
        .args(&SHORT_IDLE)
        .args(client_extra)
        .spawn("client");
    client.wait_line("tunnel up", LONG);
    Tunnel {
        server,
        client,
        listen,
        target,
        _dir: dir,
    }
}

/// A user connection through the tunnel and the target's end of it, bytes checked.
fn connect(t: &Tunnel) -> (TcpStream, TcpStream) {
    let mut user = TcpStream::connect(("127.0.0.1", t.listen)).unwrap();
    user.write_all(b"ping").unwrap();
    let (mut far, _) = t.target.accept().unwrap();
    let mut buf = [0u8; 4];
    far.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");
    far.write_all(b"pong").unwrap();
    user.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    (user, far)
}

/// Waits for `s` to end; returns how long it took and whether it was a reset.
fn ended(s: &mut TcpStream, limit: Duration) -> (Duration, bool) {
    let start = Instant::now();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64];
    while start.elapsed() < limit {
        match s.read(&mut buf) {
            Ok(0) => return (start.elapsed(), false),
            Ok(_) => panic!("data after the peer was gone"),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) => return (start.elapsed(), e.kind() == ErrorKind::ConnectionReset),
        }
    }
    panic!("still open after {limit:?}");
}

/// The server is gone for good: the client notices the lost tunnel after the idle
/// timeout, keeps the user's connection open for its grace period, then resets it.
#[test]
fn the_client_resets_kept_connections_after_its_grace() {
    let mut t = tunnel(&[], &["--resume-grace", "4s"]);
    let (mut user, _far) = connect(&t);
    t.server.kill();
    let (took, reset) = ended(&mut user, LONG);
    // 5 s idle timeout, then 4 s of grace.
    assert!(
        took >= Duration::from_secs(8),
        "reset after {took:?}: before the grace period was over"
    );
    assert!(took < Duration::from_secs(20), "kept {took:?}");
    assert!(reset, "the user's connection ended without a reset");
    t.client
        .wait_line("no tunnel within the grace period", LONG);
}

/// The client is gone for good: the server keeps the target's connection for its grace
/// period after the idle timeout, then resets it and says why.
#[test]
fn the_server_gives_a_lost_session_up_after_its_grace() {
    let mut t = tunnel(&["--resume-grace", "3s"], &[]);
    let (_user, mut far) = connect(&t);
    t.client.kill();
    let (took, reset) = ended(&mut far, LONG);
    assert!(
        took >= Duration::from_secs(7),
        "the target's connection ended after {took:?}: before the grace period was over"
    );
    assert!(took < Duration::from_secs(20), "kept {took:?}");
    assert!(reset, "the target's connection ended without a reset");
    t.server
        .wait_line("keeping the session for 3s", Duration::from_secs(5));
    t.server
        .wait_line("no resume within the grace period", Duration::from_secs(5));
}

/// With resuming off, a lost tunnel resets the user's connection as soon as it is lost.
#[test]
fn with_resuming_off_a_lost_tunnel_resets_at_once() {
    let mut t = tunnel(&[], &["--resume-grace", "0"]);
    let (mut user, _far) = connect(&t);
    t.server.kill();
    let (took, reset) = ended(&mut user, LONG);
    assert!(
        took < Duration::from_secs(8),
        "kept {took:?} without resuming"
    );
    assert!(reset);
}
