//! Resumable sessions: open TCP connections outlive the QUIC connection under them. The
//! tunnel runs with a 5 s idle timeout, and the client's uplink is cut for longer: the
//! connection is lost for certain, the users' connections stay open, and once the path
//! returns the client's new connection resumes them with every byte intact (hold-check
//! verifies each echoed byte, in order).

use std::time::Duration;

use super::lab::{Impair, LAB_LOCK, Lab, Nat};
use super::matrix::{
    FORWARDS, LAB_STUN, check, iroh_client, iroh_server, start_iroh_server_with,
    start_manual_tunnel, start_services, write_secrets,
};
use super::outage::json_u64;
use super::sharing::Mode;

/// Longer than the idle timeout below, so the QUIC connection dies.
const CUT: Duration = Duration::from_secs(15);
/// From the path's return to the interactive stream's next echo: the client's next
/// connection attempt (reconnect backoff, jittered: attempts ~0.25, 0.5, 1, 2, 4, 8 s
/// apart while the path is down), its handshake, then one round trip for the resume...
const RECOVERY: Duration = Duration::from_secs(15);
/// ...when the relay carries the tunnel, whose connection the client redials first...
const RELAYED_RECOVERY: Duration = Duration::from_secs(20);
/// ...and in manual mode, whose attempts during the cut wait out the connect timeout.
const MANUAL_RECOVERY: Duration = Duration::from_secs(40);
/// Both ends: the connection is given up after 5 s of silence.
const SHORT_IDLE: [&str; 4] = ["--idle-timeout", "5s", "--keep-alive", "1s"];

lab_test!(
    iroh_connections_resume_after_an_outage_longer_than_the_idle_timeout,
    resume_after_loss(Mode::Iroh, Nat::Cone, false)
);
lab_test!(
    iroh_relayed_connections_resume_after_an_outage_longer_than_the_idle_timeout,
    resume_after_loss(Mode::Iroh, Nat::Symmetric, false)
);
lab_test!(
    iroh_connections_resume_after_a_new_public_ip_and_a_lost_connection,
    resume_after_loss(Mode::Iroh, Nat::Cone, true)
);
lab_test!(
    manual_connections_resume_after_an_outage_longer_than_the_idle_timeout,
    resume_after_loss(Mode::Manual, Nat::Cone, false)
);
lab_test!(
    iroh_relayed_connections_survive_the_loss_of_their_relay,
    relay_lost()
);
lab_test!(
    iroh_connections_resume_from_a_relayed_onto_a_direct_path,
    relay_to_direct()
);

/// Both sides behind `nat` (symmetric: the relay carries the tunnel, before and after).
/// Manual mode's client redials the punched path, whose NAT mappings outlive the cut.
fn resume_after_loss(mode: Mode, nat: Nat, renumber: bool) {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(
        nat,
        nat,
        Some(Impair {
            delay_ms: 10,
            loss: 0.0,
        }),
    );
    let (host_a, host_b) = (lab.a.clone(), lab.b.clone());
    let (s, c) = match mode {
        Mode::Iroh => {
            write_secrets(&lab);
            start_services(&mut lab, &host_b);
            let mut server = iroh_server(&lab);
            server.args(SHORT_IDLE);
            let (s, ticket) = start_iroh_server_with(&mut lab, server);
            let mut client = iroh_client(&lab, &ticket);
            client.args(FORWARDS).args(SHORT_IDLE);
            (s, lab.spawn("client", client))
        }
        Mode::Manual => {
            let extra: Vec<&str> = LAB_STUN.iter().chain(&SHORT_IDLE).copied().collect();
            let (s, c, _) = start_manual_tunnel(&mut lab, &host_b, &host_a, &extra, "40s");
            (s, c)
        }
    };
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));
    check(
        &lab,
        &host_a,
        &["tcp-check", "127.0.0.1:8000", "--bytes", "1000"],
    );
    if nat == Nat::Symmetric {
        lab.procs[c].wait_line("path=relay", Duration::from_secs(10));
    }

    let total = CUT + Duration::from_secs(25);
    let h = lab.spawn_hold_check(&host_a, 50, total);
    std::thread::sleep(Duration::from_secs(5));
    lab.net.set_uplink('a', false).unwrap();
    if renumber {
        lab.net.set_public_ip('a', "198.18.0.21").unwrap();
    }
    std::thread::sleep(CUT);
    lab.net.set_uplink('a', true).unwrap();
    let out = lab.procs[h].wait_line("\"ok\":true", total + Duration::from_secs(120));
    eprintln!("hold-check across a {CUT:?} outage (idle timeout 5 s): {out}");

    // The QUIC connection really was lost, on both ends...
    lab.procs[s].wait_line("keeping the session", Duration::from_secs(5));
    // ...and the connections moved to the new one.
    let resumed = lab.procs[c].wait_line("connections resumed", Duration::from_secs(5));
    assert!(resumed.contains("resumed=2"), "{resumed}");
    let gap = Duration::from_millis(json_u64(&out, "max_gap_ms"));
    assert!(
        gap >= CUT - Duration::from_secs(1),
        "the interactive stream never waited for the outage ({gap:?}): was the uplink cut?"
    );
    let recovery = match (mode, nat) {
        (Mode::Manual, _) => MANUAL_RECOVERY,
        (_, Nat::Symmetric) => RELAYED_RECOVERY,
        _ => RECOVERY,
    };
    assert!(
        gap <= CUT + recovery,
        "traffic took {:?} to flow again after the path returned",
        gap.saturating_sub(CUT)
    );
    assert!(json_u64(&out, "bulk_bytes") > 0);
    // New connections work too.
    check(
        &lab,
        &host_a,
        &["tcp-check", "127.0.0.1:8000", "--bytes", "1000"],
    );
}

/// The second relay's address on the lab's internet (next to the lab's relay).
const RELAY2_IP: &str = "198.18.0.14";

/// Both sides behind symmetric NATs (the relay carries everything), two relays
/// configured: the one carrying the tunnel is killed for good. The connections carry on
/// over the other relay, every byte intact: the connection is lost (iroh keeps sending to
/// the server's last relay for as long as the connection lives), the client's next
/// attempt reaches the server through the other relay, and the session resumes there.
/// The short idle timeout keeps the test short (measured with the default 90 s: resumed
/// 90-125 s after the kill, the first attempt after the loss sometimes waiting out its
/// 30 s connect timeout on the dead relay).
fn relay_lost() {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(
        Nat::Symmetric,
        Nat::Symmetric,
        Some(Impair {
            delay_ms: 10,
            loss: 0.0,
        }),
    );
    let (host_a, host_b, relay_ns) = (lab.a.clone(), lab.b.clone(), lab.relay.clone());
    // A second relay on its own address and certificate; both CAs trusted.
    let ok = std::process::Command::new("ip")
        .args(["netns", "exec", &relay_ns, "ip", "addr", "add"])
        .args([&format!("{RELAY2_IP}/24"), "dev", "eth0"])
        .status()
        .unwrap();
    assert!(ok.success(), "adding the second relay's address");
    let out = crate::support::process::bin()
        .args(["generate-relay-cert", "--name", RELAY2_IP, "--out-dir"])
        .arg(lab.path("tls2"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let cas = lab.path("cas.pem");
    let both = std::fs::read_to_string(lab.ca()).unwrap()
        + &std::fs::read_to_string(lab.path("tls2/ca.pem")).unwrap();
    std::fs::write(&cas, both).unwrap();
    let mut relay2 = lab.cmd(&relay_ns);
    relay2
        .args(["relay", "--http-bind", &format!("{RELAY2_IP}:80")])
        .args(["--https-bind", &format!("{RELAY2_IP}:443")])
        .args(["--tls-cert", &lab.path("tls2/cert.pem")])
        .args(["--tls-key", &lab.path("tls2/key.pem")])
        .args(["--quic-bind", &format!("{RELAY2_IP}:7842")]);
    let r2 = lab.spawn("relay2", relay2);
    lab.procs[r2].wait_line("relay URL", Duration::from_secs(20));
    let relays = [
        "--relay-url".to_string(),
        lab.relay_url(),
        "--relay-url".to_string(),
        format!("https://{RELAY2_IP}/?quic-port=7842"),
        "--relay-ca".to_string(),
        cas.clone(),
    ];

    write_secrets(&lab);
    start_services(&mut lab, &host_b);
    let mut server = lab.cmd(&host_b);
    server
        .args(["server", "--secret-file", &lab.path("server.key")])
        .args(["--auth-tokens-file", &lab.path("tokens.txt")])
        .args(&relays)
        .args(["--dns-server", "none", "--no-portmap"])
        .args([
            "--allowed-tcp",
            "127.0.0.0/8",
            "--allowed-udp",
            "127.0.0.0/8",
        ])
        .args(SHORT_IDLE);
    let (_, ticket) = start_iroh_server_with(&mut lab, server);
    let mut client = lab.cmd(&host_a);
    client
        .args(["client", "--ticket", &ticket])
        .args(["--auth-token-file", &lab.path("tokens.txt")])
        .args(["--relay-ca", &cas, "--dns-server", "none", "--no-portmap"])
        .args(FORWARDS)
        .args(SHORT_IDLE);
    let c = lab.spawn("client", client);
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));
    check(
        &lab,
        &host_a,
        &["tcp-check", "127.0.0.1:8000", "--bytes", "1000"],
    );
    let path = lab.procs[c].wait_line("path=relay", Duration::from_secs(10));
    let in_use = if path.contains(RELAY2_IP) { r2 } else { 0 };
    assert_eq!(
        lab.procs[0].name, "relay",
        "the lab's relay is its first process"
    );

    let total = Duration::from_secs(70);
    let h = lab.spawn_hold_check(&host_a, 50, total);
    std::thread::sleep(Duration::from_secs(5));
    eprintln!("killing {} (in use: {path})", lab.procs[in_use].name);
    lab.procs[in_use].kill();
    let out = lab.procs[h].wait_line("\"ok\":true", total + Duration::from_secs(120));
    eprintln!("hold-check across the loss of a relay: {out}");
    assert!(json_u64(&out, "bulk_bytes") > 0);
    let resumed = lab.procs[c].wait_line("connections resumed", Duration::from_secs(5));
    assert!(resumed.contains("resumed=2"), "{resumed}");
    // The tunnel runs over the other relay now; new connections work.
    let other = if in_use == 0 {
        RELAY2_IP.to_string()
    } else {
        super::lab::RELAY_IP.to_string()
    };
    lab.procs[c].wait_line(&format!("relay=https://{other}"), Duration::from_secs(5));
    check(
        &lab,
        &host_a,
        &["tcp-check", "127.0.0.1:8000", "--bytes", "1000"],
    );
}

/// Cone NATs, but UDP between them blocked: the tunnel starts on the relay. During a cut
/// longer than the idle timeout the block goes; the client's next connection punches a
/// direct path, and the connections resumed on it carry on there.
fn relay_to_direct() {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(
        Nat::Cone,
        Nat::Cone,
        Some(Impair {
            delay_ms: 10,
            loss: 0.0,
        }),
    );
    let (host_a, host_b) = (lab.a.clone(), lab.b.clone());
    lab.net.set_direct_udp('a', false).unwrap();
    write_secrets(&lab);
    start_services(&mut lab, &host_b);
    let mut server = iroh_server(&lab);
    server.args(SHORT_IDLE);
    let (_, ticket) = start_iroh_server_with(&mut lab, server);
    let mut client = iroh_client(&lab, &ticket);
    client.args(FORWARDS).args(SHORT_IDLE);
    let c = lab.spawn("client", client);
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));
    lab.procs[c].wait_line("path=relay", Duration::from_secs(10));
    check(
        &lab,
        &host_a,
        &["tcp-check", "127.0.0.1:8000", "--bytes", "1000"],
    );
    assert!(
        lab.procs[c].first_seen("path=direct").is_none(),
        "a direct path despite the block"
    );

    let total = CUT + Duration::from_secs(30);
    let h = lab.spawn_hold_check(&host_a, 50, total);
    std::thread::sleep(Duration::from_secs(5));
    lab.net.set_uplink('a', false).unwrap();
    lab.net.set_direct_udp('a', true).unwrap();
    std::thread::sleep(CUT);
    lab.net.set_uplink('a', true).unwrap();
    let out = lab.procs[h].wait_line("\"ok\":true", total + Duration::from_secs(120));
    eprintln!("hold-check from a relayed onto a direct path: {out}");
    let resumed = lab.procs[c].wait_line("connections resumed", Duration::from_secs(5));
    assert!(resumed.contains("resumed=2"), "{resumed}");
    lab.procs[c].wait_line("path=direct", Duration::from_secs(30));
    assert!(json_u64(&out, "bulk_bytes") > 0);
}
