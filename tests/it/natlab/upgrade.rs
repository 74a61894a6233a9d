//! Direct upgrade (iroh mode): between a port-restricted cone NAT and a symmetric one,
//! which iroh cannot punch, the tunnel starts on the relay and moves onto a path
//! punched beside it (offer and answer over the tunnel). Connections open across the
//! move keep every byte (hold-check verifies each echoed byte, in order); when the
//! direct path dies, the tunnel goes back to the relay with them. The matrix rows of
//! `natlab::matrix` time the upgrade; this follows connections through it. The server
//! runs with `--bind`: the upgrade's socket must follow it.

use std::time::Duration;

use super::lab::{HOST_B_IP, LAB_LOCK, Lab, Nat};
use super::matrix::{
    FORWARDS, iroh_client, iroh_server, start_iroh_server_with, start_services, write_secrets,
};
use super::outage::json_u64;

/// Both ends: a silent path is checked after 3 s (keep-alive x 2 + 1 s).
const FAST_PROBE: [&str; 2] = ["--keep-alive", "1s"];

lab_test!(
    iroh_connections_move_onto_an_upgraded_path_and_back_to_the_relay,
    move_and_fall_back()
);

fn blocked(lab: &Lab, blocked: bool) {
    for side in ['a', 'b'] {
        lab.net.set_direct_udp(side, !blocked).unwrap();
    }
}

/// Local addresses of the UDP sockets that processes named `name` hold in `ns`.
fn udp_sockets(ns: &str, name: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, "ss", "-uanpH"])
        .output()
        .expect("running ss");
    assert!(out.status.success(), "ss: {out:?}");
    let quoted = format!("((\"{name}\",");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains(&quoted))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect()
}

fn move_and_fall_back() {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(Nat::Cone, Nat::Symmetric, None);
    let (host_a, host_b) = (lab.a.clone(), lab.b.clone());
    // No direct UDP at first: the first upgrade fails, and the tunnel starts relayed.
    blocked(&lab, true);
    write_secrets(&lab);
    start_services(&mut lab, &host_b);
    let mut server = iroh_server(&lab);
    server
        .args(FAST_PROBE)
        .args(["--bind", &format!("{HOST_B_IP}:0")]);
    let (s, ticket) = start_iroh_server_with(&mut lab, server);
    let mut client = iroh_client(&lab, &ticket);
    client.args(FORWARDS).args(FAST_PROBE);
    let c = lab.spawn("client", client);
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));
    let failed = lab.procs[c].wait_line("no direct upgrade", Duration::from_secs(30));
    assert!(failed.contains("next attempt in 30s"), "{failed}");

    let total = Duration::from_secs(75);
    let h = lab.spawn_hold_check(&host_a, 20, total);
    std::thread::sleep(Duration::from_secs(2));
    blocked(&lab, false);

    // The next attempt punches, and the open connections move onto the direct path.
    let upgraded = lab.procs[c].wait_line("upgraded from the relay", Duration::from_secs(45));
    eprintln!("{upgraded}");
    let moved = lab.procs[c].wait_line("connections resumed", Duration::from_secs(10));
    assert!(moved.contains("resumed=2"), "{moved}");
    lab.procs[s].wait_line("direct upgrade: path=direct", Duration::from_secs(5));
    let sockets = udp_sockets(&host_b, "porthole");
    eprintln!("the server's UDP sockets: {sockets:?}");
    assert!(
        sockets.len() >= 2,
        "the server should hold iroh's socket and the upgrade's: {sockets:?}"
    );
    let beside = format!("{HOST_B_IP}:");
    assert!(
        sockets.iter().all(|local| local.starts_with(&beside)),
        "every UDP socket of the server must be on its --bind IP {HOST_B_IP}: {sockets:?}"
    );
    assert!(
        lab.procs[h].first_seen("\"ok\"").is_none(),
        "hold-check ended early"
    );

    // The direct path dies: the tunnel returns to the relay, the connections with it.
    std::thread::sleep(Duration::from_secs(5));
    blocked(&lab, true);
    let back = Duration::from_secs(30);
    let deadline = std::time::Instant::now() + back;
    while lab.procs[c].count_lines("connections resumed") < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "the connections did not move back to the relay within {back:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let last = lab.procs[c].last_line("connections resumed").unwrap();
    assert!(last.contains("resumed=2"), "{last}");

    let out = lab.procs[h].wait_line("\"ok\":true", total + Duration::from_secs(60));
    eprintln!("hold-check across an upgrade and a fall back: {out}");
    assert!(json_u64(&out, "bulk_bytes") > 0, "{out}");
    let path = lab.procs[c].last_line("path=").unwrap_or_default();
    assert!(path.contains("path=relay"), "{path}");
}
