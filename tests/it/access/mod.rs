//! Named clients (`--access-file`): each reaches only what its rules allow, and the
//! rules change while the server runs: revocation, narrowing, expiry, a broken file.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::TOKEN;
use crate::support::process::{Offline, Proc, bin, free_tcp_port, free_udp_port};

const LONG: Duration = Duration::from_secs(30);

mod lab;
use lab::{Lab, Pump, status};

#[test]
fn two_clients_each_reach_only_what_their_rules_allow() {
    let lab = Lab::new();
    lab.write_access(&[lab.echo_a], &[lab.echo_b], "");
    let (server, id, port) = lab.server();
    assert!(
        server.output().contains("alice, bob") || server.output().contains("default, alice, bob"),
        "{}",
        server.output()
    );

    // Each is refused what only the other may reach (exit 4: source refused).
    let mut a = lab
        .client("alice", &id, port, &[(lab.echo('b'), free_tcp_port())])
        .spawn("alice asking for b");
    assert_eq!(a.wait_exit(LONG), 4);
    let mut b = lab
        .client("bob", &id, port, &[(lab.echo('a'), free_tcp_port())])
        .spawn("bob asking for a");
    assert_eq!(b.wait_exit(LONG), 4);

    // And each reaches its own.
    let (_alice, la, _bob, lb) = lab.alice_and_bob(&id, port);
    Pump::start(la).finish();
    Pump::start(lb).finish();

    // Logs and status name the clients; no token is ever logged.
    let r = status(&lab);
    let mut names: Vec<String> = r["server"]["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["client"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["alice", "bob"], "{r}");
    let log = server.output();
    assert!(
        log.contains("client=alice") && log.contains("client=bob"),
        "{log}"
    );
    assert!(!log.contains(&lab.alice) && !log.contains(&lab.bob));
}

#[test]
fn revoking_a_client_closes_its_session_within_a_second_and_leaves_others_alone() {
    let lab = Lab::new();
    lab.write_access(&[lab.echo_a], &[lab.echo_b], "");
    let (server, id, port) = lab.server();
    let (mut alice, la, _bob, lb) = lab.alice_and_bob(&id, port);
    let pa = Pump::start(la);
    let pb = Pump::start(lb);

    // Remove alice from the file while both transfer.
    let revoked = Instant::now();
    lab.write_access(&[], &[lab.echo_b], "");
    let start = Instant::now();
    while pa.failed().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "alice still transfers"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let took = pa.failed().unwrap() - revoked;
    assert!(
        took < Duration::from_secs(1),
        "alice's transfer ended {took:?} after the revocation"
    );
    assert_eq!(
        alice.wait_exit(LONG),
        6,
        "access revoked has its own exit code"
    );
    assert!(
        alice.output().contains("access revoked"),
        "{}",
        alice.output()
    );

    // Bob's transfer never noticed.
    pb.wait_moving();
    assert!(pb.finish() > 0);
    server.wait_line(
        "access rules reloaded (a file changed): removed alice",
        LONG,
    );

    // And alice's token is refused from now on.
    let mut again = lab
        .client("alice", &id, port, &[(lab.echo('a'), free_tcp_port())])
        .spawn("alice again");
    assert_eq!(again.wait_exit(LONG), 3);
}

#[test]
fn a_broken_file_is_rejected_and_the_rules_in_force_stay() {
    let lab = Lab::new();
    lab.write_access(&[lab.echo_a], &[lab.echo_b], "");
    let (server, id, port) = lab.server();
    let lb = free_tcp_port();
    let bob = lab
        .client("bob", &id, port, &[(lab.echo('b'), lb)])
        .spawn("bob");
    bob.wait_line("tunnel up", LONG);
    let pb = Pump::start(lb);

    lab.write_file(
        "access.toml",
        "[[client]]\nname = \"bob\"\ntokens_file = \"bob.token\"\nallowed_tcpp = []\n",
    );
    let line = server.wait_line("NOT reloaded", LONG);
    assert!(
        line.contains("line 4") && line.contains("allowed_tcpp"),
        "{line}"
    );
    pb.wait_moving();
    // A new client with the old rules still gets in, through SIGHUP too.
    server.signal("HUP");
    let lb2 = free_tcp_port();
    let bob2 = lab
        .client("bob", &id, port, &[(lab.echo('b'), lb2)])
        .spawn("bob again");
    bob2.wait_line("tunnel up", LONG);
    Pump::start(lb2).finish();
    assert!(pb.finish() > 0);
    server.wait_line("NOT reloaded (SIGHUP)", LONG);
}

#[test]
fn removing_a_token_from_the_tokens_file_revokes_it() {
    let lab = Lab::new();
    lab.write_access(&[lab.echo_a], &[lab.echo_b], "");
    // The flat tokens file holds two tokens of the `default` client.
    let out = bin().args(["generate-token"]).output().unwrap();
    let second = String::from_utf8(out.stdout).unwrap().trim().to_string();
    lab.write_file("tokens.txt", &format!("{TOKEN}\n{second}\n"));
    std::fs::write(lab.path("second.token"), format!("{second}\n")).unwrap();
    let (server, id, port) = lab.server();
    let mut keep = lab
        .client("second", &id, port, &[(lab.echo('a'), free_tcp_port())])
        .spawn("second");
    keep.wait_line("tunnel up", LONG);
    std::fs::write(lab.path("first.token"), format!("{TOKEN}\n")).unwrap();
    let mut stays = lab
        .client("first", &id, port, &[(lab.echo('a'), free_tcp_port())])
        .spawn("first");
    stays.wait_line("tunnel up", LONG);
    lab.write_file("tokens.txt", &format!("{TOKEN}\n"));
    assert_eq!(keep.wait_exit(LONG), 6, "{}", keep.output());
    server.wait_line("changed default", LONG);
    assert!(
        stays.is_running(),
        "the token still in the file keeps its session"
    );
}

/// Narrows alice's rules to echo a while `pa` (to a) and `pb` (to b) run: `pb` must end
/// within a second, `pa` carry on. `what` names them in the messages.
fn narrow_alice_to_a(lab: &Lab, pa: Pump, pb: Pump, what: &str) {
    let narrowed = Instant::now();
    lab.write_access(&[lab.echo_a], &[lab.echo_b], "");
    while pb.failed().is_none() {
        assert!(
            narrowed.elapsed() < Duration::from_secs(5),
            "{what} b is still open"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(pb.failed().unwrap() - narrowed < Duration::from_secs(1));
    pa.wait_moving();
    assert!(pa.finish() > 0, "{what} a was not left alone");
}

#[test]
fn narrowing_a_clients_rules_closes_only_the_forwards_no_longer_allowed() {
    let lab = Lab::new();
    lab.write_access(&[lab.echo_a, lab.echo_b], &[lab.echo_b], "");
    let (server, id, port) = lab.server();
    let (la, lb) = (free_tcp_port(), free_tcp_port());
    let mut alice = lab
        .client(
            "alice",
            &id,
            port,
            &[(lab.echo('a'), la), (lab.echo('b'), lb)],
        )
        .spawn("alice");
    alice.wait_line("tunnel up", LONG);
    let pa = Pump::start(la);
    let pb = Pump::start(lb);
    narrow_alice_to_a(&lab, pa, pb, "forward");
    assert!(alice.is_running(), "the session lives on");
    server.wait_line("no longer allowed for client alice", LONG);
    // A new connection to the closed forward is refused (reset), not carried.
    let mut s = TcpStream::connect(("127.0.0.1", lb)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = s.write_all(b"hello");
    let mut buf = [0u8; 5];
    assert!(
        s.read_exact(&mut buf).is_err(),
        "a closed forward carried data"
    );
}

/// A SOCKS5 CONNECT to 127.0.0.1:`target` through the proxy on `socks` (no auth).
fn socks_connect(socks: u16, target: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", socks)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(&[5, 1, 0]).unwrap();
    let mut method = [0u8; 2];
    s.read_exact(&mut method).unwrap();
    assert_eq!(method, [5, 0], "the proxy wants authentication");
    let mut request = vec![5, 1, 0, 1, 127, 0, 0, 1];
    request.extend_from_slice(&target.to_be_bytes());
    s.write_all(&request).unwrap();
    let mut reply = [0u8; 10];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(reply[1], 0, "SOCKS CONNECT to {target} refused: {reply:?}");
    s
}

/// What a reload narrows applies to SOCKS (dynamic) streams already open, as to fixed
/// forwards: the one to a destination no longer allowed ends, the other carries on.
#[test]
fn narrowing_a_clients_rules_closes_the_dynamic_streams_no_longer_allowed() {
    let lab = Lab::new();
    lab.write_access(&[lab.echo_a, lab.echo_b], &[lab.echo_b], "");
    let (server, id, port) = lab.server();
    let socks = free_tcp_port();
    let alice = lab
        .client("alice", &id, port, &[])
        .args(&["--socks", &format!("127.0.0.1:{socks}")])
        .spawn("alice");
    alice.wait_line("tunnel up", LONG);
    let pa = Pump::over(socks_connect(socks, lab.echo_a));
    let pb = Pump::over(socks_connect(socks, lab.echo_b));
    narrow_alice_to_a(&lab, pa, pb, "the SOCKS stream to");
    server.wait_line("no longer allowed for client alice", LONG);
}

#[test]
fn an_expired_client_is_disconnected_and_refused() {
    let lab = Lab::new();
    let expires =
        humantime::format_rfc3339_seconds(std::time::SystemTime::now() + Duration::from_secs(4));
    lab.write_access(
        &[lab.echo_a],
        &[lab.echo_b],
        &format!("expires = \"{expires}\""),
    );
    let (server, id, port) = lab.server();
    let la = free_tcp_port();
    let mut alice = lab
        .client("alice", &id, port, &[(lab.echo('a'), la)])
        .spawn("alice");
    alice.wait_line("tunnel up", LONG);
    Pump::start(la).finish();
    assert_eq!(alice.wait_exit(LONG), 6);
    server.wait_line("access expired", LONG);
    let mut again = lab
        .client("alice", &id, port, &[(lab.echo('a'), free_tcp_port())])
        .spawn("alice again");
    assert_eq!(
        again.wait_exit(LONG),
        6,
        "an expired client is refused as expired"
    );
}

/// Bytes a full-speed echo through `port` moves back in `secs` seconds, after a second
/// of warm-up.
fn echo_rate(port: u16, secs: u64) -> f64 {
    let conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = conn.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let w = std::thread::spawn(move || {
        let chunk = vec![7u8; 64 * 1024];
        while !s.load(Ordering::Relaxed) && writer.write_all(&chunk).is_ok() {}
    });
    let mut reader = conn;
    let mut buf = vec![0u8; 256 * 1024];
    let read_for = |reader: &mut TcpStream, buf: &mut [u8], d: Duration| {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < d {
            n += reader.read(buf).unwrap() as u64;
        }
        (n, start.elapsed())
    };
    read_for(&mut reader, &mut buf, Duration::from_secs(1));
    let (n, took) = read_for(&mut reader, &mut buf, Duration::from_secs(secs));
    stop.store(true, Ordering::Relaxed);
    let _ = reader.shutdown(std::net::Shutdown::Both);
    let _ = w.join();
    n as f64 / took.as_secs_f64()
}

#[test]
fn a_clients_bandwidth_cap_holds_and_its_stream_limit_too() {
    let lab = Lab::new();
    // alice: 16 Mbit/s (2 MB/s) each way and two TCP connections at most; bob: no cap.
    lab.write_access(
        &[lab.echo_a],
        &[lab.echo_b],
        "max_mbps = 16\nmax_streams = 2",
    );
    let (server, id, port) = lab.server();
    let (_alice, la, _bob, lb) = lab.alice_and_bob(&id, port);

    let cap = 2_000_000.0;
    let capped = echo_rate(la, 5);
    assert!(
        (capped - cap).abs() <= cap * 0.1,
        "alice moved {capped:.0} B/s against a cap of {cap:.0} B/s"
    );
    let free = echo_rate(lb, 2);
    assert!(free > 3.0 * cap, "bob, uncapped, moved only {free:.0} B/s");

    // Two connections at once are fine, the third is refused (reset). (The rate
    // test's connection must be gone on the server first.)
    std::thread::sleep(Duration::from_millis(500));
    let p1 = Pump::start(la);
    let p2 = Pump::start(la);
    let mut third = TcpStream::connect(("127.0.0.1", la)).unwrap();
    third
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = third.write_all(b"hello");
    let mut buf = [0u8; 5];
    assert!(
        third.read_exact(&mut buf).is_err(),
        "a third stream was carried"
    );
    p1.finish();
    p2.finish();
    server.wait_line("max_streams", LONG);
}

/// Whether a datagram from `sock` to `port` comes back within a few tries.
fn udp_answered(sock: &std::net::UdpSocket, port: u16) -> bool {
    sock.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 64];
    (0..6).any(|i| {
        let msg = format!("datagram {i}");
        sock.send_to(msg.as_bytes(), ("127.0.0.1", port)).unwrap();
        matches!(sock.recv(&mut buf), Ok(n) if &buf[..n] == msg.as_bytes())
    })
}

/// A client's `max_udp_flows`: two users' flows are carried, a third user's is not
/// (while the first two go on), and the server says which limit it hit.
#[test]
fn a_clients_udp_flow_limit_holds() {
    let lab = Lab::new();
    let echo = crate::support::echo::udp_echo_blocking();
    lab.write_file(
        "access.toml",
        &format!(
            "[[client]]\nname = \"alice\"\ntokens = [\"{}\"]\nallowed_udp = [\"127.0.0.1/32:{echo}\"]\nmax_udp_flows = 2\n",
            lab.alice
        ),
    );
    let (server, id, port) = lab.server();
    let listen = free_udp_port();
    let alice = lab
        .client(
            "alice",
            &id,
            port,
            &[(format!("udp://127.0.0.1:{echo}"), listen)],
        )
        .spawn("alice");
    alice.wait_line("tunnel up", LONG);
    let users: Vec<std::net::UdpSocket> = (0..3)
        .map(|_| std::net::UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    assert!(
        udp_answered(&users[0], listen),
        "the first flow was not carried"
    );
    assert!(
        udp_answered(&users[1], listen),
        "the second flow was not carried"
    );
    assert!(!udp_answered(&users[2], listen), "a third flow was carried");
    assert!(udp_answered(&users[0], listen), "the first flow stopped");
    server.wait_line("max_udp_flows", LONG);
}

#[test]
fn a_client_key_gets_in_a_wrong_key_does_not_and_rekeying_disconnects() {
    let lab = Lab::new();
    let mut ids = Vec::new();
    for k in ["k1", "k2"] {
        let out = bin()
            .args(["generate-client-key", "--output"])
            .arg(lab.path(k))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let show = bin()
            .args(["show-client-id", "--client-key-file"])
            .arg(lab.path(k))
            .output()
            .unwrap();
        let id = String::from_utf8(show.stdout).unwrap().trim().to_string();
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&id),
            "generate-client-key prints the same id"
        );
        ids.push(id);
    }
    let access = |id: &str| {
        format!(
            "[[client]]\nname = \"laptop\"\nkeys = [\"{id}\"]\nallowed_tcp = [\"127.0.0.1/32:{}\"]\n",
            lab.echo_a
        )
    };
    lab.write_file("access.toml", &access(&ids[0]));
    let (server, id, port) = lab.server();
    // The token file holds a token nobody accepts: the key alone must do.
    std::fs::write(
        lab.path("nobody.token"),
        format!("{}\n", crate::support::OTHER_TOKEN),
    )
    .unwrap();
    let client = |key: &str, listen: u16| {
        Offline::client(&id, port, &lab.path("nobody.token"))
            .args(&["--control-socket", "none"])
            .args(&["--client-key-file", lab.path(key).to_str().unwrap()])
            .forward(&lab.echo('a'), listen)
    };
    let la = free_tcp_port();
    let mut laptop = client("k1", la).spawn("laptop (k1)");
    laptop.wait_line("tunnel up", LONG);
    Pump::start(la).finish();
    assert_eq!(status(&lab)["server"]["sessions"][0]["client"], "laptop");

    let mut stranger = client("k2", free_tcp_port()).spawn("stranger (k2)");
    assert_eq!(
        stranger.wait_exit(LONG),
        3,
        "an unlisted key is refused like a wrong token"
    );

    // Re-keyed: the file now lists k2 only; k1's session is closed.
    lab.write_file("access.toml", &access(&ids[1]));
    assert_eq!(laptop.wait_exit(LONG), 6, "{}", laptop.output());
    server.wait_line("changed laptop", LONG);
    let lb = free_tcp_port();
    let rekeyed = client("k2", lb).spawn("laptop (k2)");
    rekeyed.wait_line("tunnel up", LONG);
    Pump::start(lb).finish();
    // The key never appears in logs.
    let secret = std::fs::read_to_string(lab.path("k2")).unwrap();
    let b64 = secret
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap()
        .trim()
        .to_string();
    assert!(!server.output().contains(&b64) && !rekeyed.output().contains(&b64));
}

#[test]
fn manual_mode_follows_the_same_rules() {
    let lab = Lab::new();
    let out = bin()
        .args(["generate-client-key", "--output"])
        .arg(lab.path("k1"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let id = stderr
        .lines()
        .find_map(|l| l.strip_prefix("client id: "))
        .unwrap()
        .trim()
        .to_string();
    lab.write_file(
        "access.toml",
        &format!(
            "[[client]]\nname = \"laptop\"\nkeys = [\"{id}\"]\nallowed_tcp = [\"127.0.0.1/32:{}\"]\n",
            lab.echo_a
        ),
    );
    // A manual-mode server and a key-proving client with these forwards, meeting through
    // offer and answer files (fresh ones each time).
    let pair = |forwards: &[(String, u16)]| {
        for f in ["offer.txt", "answer.txt"] {
            let _ = std::fs::remove_file(lab.path(f));
        }
        let manual = |cmd: &mut std::process::Command| {
            cmd.args(["--mode", "manual", "--stun-server", "none"])
                .args(["--bind", "127.0.0.1:0", "--control-socket", "none"])
                .args(["--offer-file", lab.path("offer.txt").to_str().unwrap()])
                .args(["--answer-file", lab.path("answer.txt").to_str().unwrap()]);
        };
        let mut server = bin();
        server
            .args(["server", "--auth-tokens-file"])
            .arg(lab.path("tokens.txt"))
            .arg("--access-file")
            .arg(lab.path("access.toml"));
        manual(&mut server);
        let mut client = bin();
        client
            .args(["client", "--client-key-file"])
            .arg(lab.path("k1"));
        for (source, listen) in forwards {
            client.args([
                "--source",
                source,
                "--listen",
                &format!("127.0.0.1:{listen}"),
            ]);
        }
        manual(&mut client);
        (
            Proc::spawn("manual server", server),
            Proc::spawn("manual client", client),
        )
    };
    let (la, lb) = (free_tcp_port(), free_tcp_port());
    let (server, mut client) = pair(&[(lab.echo('a'), la), (lab.echo('b'), lb)]);
    // echo b is not the laptop's: refused at once (exit 4), as in iroh mode.
    assert_eq!(client.wait_exit(LONG), 4, "{}", client.output());
    drop(server);

    let (server, mut client) = pair(&[(lab.echo('a'), la)]);
    client.wait_line("tunnel up", LONG);
    let pump = Pump::start(la);
    // Revoked: the laptop's key leaves the file.
    lab.write_access(&[lab.echo_a], &[lab.echo_b], "");
    let start = Instant::now();
    while pump.failed().is_none() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "still transferring"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(client.wait_exit(LONG), 6);
    server.wait_line("access revoked", LONG);
}

/// Publishing follows each named client's own bind rules: alice may publish on the port
/// her `allowed_bind_tcp` names, bob (none) may not and exits 7. Narrowing alice's
/// rules closes the published port within a second and ends the visitor's
/// connection, while her session lives on.
#[test]
fn each_client_publishes_only_where_its_bind_rules_allow() {
    let lab = Lab::new();
    let p = free_tcp_port();
    let binds = format!("allowed_bind_tcp = [\"127.0.0.1/32:{p}\"]");
    lab.write_access(&[lab.echo_a], &[lab.echo_b], &binds);
    let (server, id, port) = lab.server();
    let publish = format!("tcp://127.0.0.1:{p}=127.0.0.1:{}", lab.echo_a);
    let mut bob = lab
        .client("bob", &id, port, &[])
        .args(&["--publish", &publish])
        .spawn("bob");
    assert_eq!(bob.wait_exit(LONG), 7, "{}", bob.output());
    assert!(bob.output().contains("bind rules"), "{}", bob.output());
    let mut alice = lab
        .client("alice", &id, port, &[])
        .args(&["--publish", &publish])
        .spawn("alice");
    alice.wait_line("tunnel up", LONG);
    let mut visitor = TcpStream::connect(("127.0.0.1", p)).unwrap();
    visitor
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    visitor.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    visitor.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    let narrowed = Instant::now();
    lab.write_access(&[lab.echo_a], &[lab.echo_b], "");
    let mut rest = [0u8; 16];
    let ended = matches!(visitor.read(&mut rest), Ok(0) | Err(_));
    assert!(ended && narrowed.elapsed() < Duration::from_secs(2));
    server.wait_line(
        &format!("publish tcp://127.0.0.1:{p} closed: no longer allowed for client alice"),
        LONG,
    );
    // The listener's task ends a moment after the route is released.
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(("127.0.0.1", p)).is_ok() {
        assert!(
            Instant::now() < deadline,
            "the server still listens on a port alice may no longer publish"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(alice.is_running(), "the session lives on");
}
