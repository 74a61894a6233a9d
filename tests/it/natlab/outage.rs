//! Outages: open connections ride out a cut uplink shorter than the idle timeout, every
//! byte intact, and move again within a few seconds of the path returning; a server that
//! restarted meanwhile is noticed by the client's liveness probe, which resets the users'
//! connections promptly instead of leaving them hanging until the idle timeout.
//!
//! With the old 20 s idle timeout, a 30 s cut ended the connection and reset every stream
//! (an SSH session died with "Broken pipe").

use std::time::{Duration, Instant};

use super::lab::{Impair, LAB_LOCK, Lab, Nat};
use super::matrix::{check, iroh_server, start_iroh_tunnel};
use super::sharing::{Mode, start_tunnel};

/// The cut. The issue asks for 60 s with default settings; 30 s is well past the old
/// idle timeout and keeps the suite short.
const OUTAGE: Duration = Duration::from_secs(30);
/// From the path's return to the interactive stream's next echo, at most, on a direct
/// path (measured: 0.3-3.8 s; noq probes a silent path at least every 2 s, and the
/// interactive line goes every 200 ms)...
const RECOVERY: Duration = Duration::from_secs(6);
/// ...and on a relayed one, where the client's relay connection must be re-established
/// first: iroh redials its relay (each dial gives up after 1.5 s) with exponential
/// backoff, jittered, which vendor/iroh caps at 2 s (measured 0.9-7.2 s; with a 4 s cap
/// once 11.3 s; with upstream's 16 s cap 4-9 s).
const RELAYED_RECOVERY: Duration = Duration::from_secs(10);
/// ...and in manual mode (plain quinn), whose only prober is QUIC's loss-probe timer: it
/// backs off exponentially while nothing is acknowledged and nothing caps it, so after a
/// cut of S the next probe may come up to ~S after the path returned (measured: 0.3 s to
/// 34.8 s after a 30 s cut; the connection and every byte survive). A known weakness
/// (issue 19 note): porthole cannot ask quinn to probe sooner.
const MANUAL_RECOVERY: Duration = Duration::from_secs(40);

lab_test!(
    iroh_open_connections_ride_out_a_30s_outage,
    ride_out(Mode::Iroh, Nat::Cone)
);
lab_test!(
    iroh_relayed_open_connections_ride_out_a_30s_outage,
    ride_out(Mode::Iroh, Nat::Symmetric)
);
lab_test!(
    manual_open_connections_ride_out_a_30s_outage,
    ride_out(Mode::Manual, Nat::Cone)
);
lab_test!(
    iroh_server_restart_during_an_outage_resets_users_promptly,
    server_restart()
);
lab_test!(
    iroh_open_connections_survive_a_new_public_ip_during_an_outage,
    new_public_ip()
);

/// Both sides behind `nat` (symmetric: the relay carries the tunnel), 20 ms RTT.
fn lab(nat: Nat) -> Lab {
    Lab::new(
        nat,
        nat,
        Some(Impair {
            delay_ms: 10,
            loss: 0.0,
        }),
    )
}

/// An interactive connection and a bulk one (paced above what the path carries, so it
/// fills every window) through the tunnel, held across a cut of the client's uplink:
/// both must come through with every byte, and the connection must not have been lost.
fn ride_out(mode: Mode, nat: Nat) {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = lab(nat);
    let host_a = lab.a.clone();
    let c = start_tunnel(&mut lab, mode);
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));
    check(
        &lab,
        &host_a,
        &["tcp-check", "127.0.0.1:8000", "--bytes", "1000"],
    );
    if nat == Nat::Symmetric {
        lab.procs[c].wait_line("path=relay", Duration::from_secs(10));
    }

    let total = OUTAGE + Duration::from_secs(15);
    let h = lab.spawn_hold_check(&host_a, 1000, total);
    std::thread::sleep(Duration::from_secs(5));
    lab.net.set_uplink('a', false).unwrap();
    std::thread::sleep(OUTAGE);
    lab.net.set_uplink('a', true).unwrap();
    let out = lab.procs[h].wait_line("\"ok\":true", total + Duration::from_secs(60));
    eprintln!("hold-check across a {OUTAGE:?} outage: {out}");
    let gap = Duration::from_millis(json_u64(&out, "max_gap_ms"));
    assert!(
        gap >= OUTAGE - Duration::from_secs(1),
        "the interactive stream never waited for the outage ({gap:?}): was the uplink cut?"
    );
    let recovery = match (mode, nat) {
        (Mode::Manual, _) => MANUAL_RECOVERY,
        (_, Nat::Symmetric) => RELAYED_RECOVERY,
        _ => RECOVERY,
    };
    assert!(
        gap <= OUTAGE + recovery,
        "traffic took {:?} to flow again after the path returned",
        gap.saturating_sub(OUTAGE)
    );
    assert!(json_u64(&out, "bulk_bytes") > 0);
    assert!(
        lab.procs[c].first_seen("tunnel lost").is_none(),
        "the connection was lost: {}",
        lab.procs[c].last_line("tunnel lost").unwrap_or_default()
    );
}

/// The server restarts (same key) while the client's uplink is cut. Its old connection
/// can never work again: once the path returns, the client must find out within seconds
/// (not after the 90 s idle timeout), reset the user's connection and serve new ones on a
/// fresh tunnel.
fn server_restart() {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = lab(Nat::Cone);
    let host_a = lab.a.clone();
    let (c, _) = start_iroh_tunnel(&mut lab);
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));
    check(
        &lab,
        &host_a,
        &["tcp-check", "127.0.0.1:8000", "--bytes", "1000"],
    );

    let h = lab.spawn_hold_check(&host_a, 0, Duration::from_secs(300));
    std::thread::sleep(Duration::from_secs(3));
    lab.net.set_uplink('a', false).unwrap();
    let server = lab
        .procs
        .iter()
        .position(|p| p.name == "server")
        .expect("the server process");
    lab.procs[server].kill();
    let restarted = lab.spawn("server", iroh_server(&lab));
    lab.procs[restarted].wait_line("serving", Duration::from_secs(30));
    std::thread::sleep(Duration::from_secs(5));
    lab.net.set_uplink('a', true).unwrap();
    let back = Instant::now();
    let code = lab.procs[h].wait_exit(Duration::from_secs(60));
    let took = back.elapsed();
    let out = lab.procs[h].output();
    eprintln!("hold-check ended after {took:?} (exit {code}): {out}");
    assert!(
        code != 0 && out.contains("interactive connection"),
        "the user's connection should have failed"
    );
    // A probe begun during the outage (up to 10 s), then a fresh one, then as long as
    // the old connection had been silent (at least 8 s) for it to speak up.
    // Measured ~29 s; the idle timeout alone would have been 90 s.
    assert!(
        took < Duration::from_secs(50),
        "the user's connection hung {took:?} after the path returned"
    );
    lab.procs[c].wait_line("no longer answers", Duration::from_secs(5));
    // New connections work on the fresh tunnel.
    check(
        &lab,
        &host_a,
        &["tcp-check", "127.0.0.1:8000", "--bytes", "1000"],
    );
}

/// The client's NAT gets a new public address during a 10 s outage (its old mappings are
/// gone): the server's NAT filters the new address until the peers punch again through the
/// relay, after which the connection carries on over a new direct path, nothing lost.
fn new_public_ip() {
    const CUT: Duration = Duration::from_secs(10);
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = lab(Nat::Cone);
    let host_a = lab.a.clone();
    let c = start_tunnel(&mut lab, Mode::Iroh);
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));
    check(
        &lab,
        &host_a,
        &["tcp-check", "127.0.0.1:8000", "--bytes", "1000"],
    );
    lab.procs[c].wait_line("path=direct", Duration::from_secs(20));

    let h = lab.spawn_hold_check(&host_a, 50, Duration::from_secs(35));
    std::thread::sleep(Duration::from_secs(5));
    lab.net.set_uplink('a', false).unwrap();
    lab.net.set_public_ip('a', NEW_IP).unwrap();
    std::thread::sleep(CUT);
    lab.net.set_uplink('a', true).unwrap();
    let out = lab.procs[h].wait_line("\"ok\":true", Duration::from_secs(120));
    eprintln!("hold-check across a new public IP: {out}");
    let gap = Duration::from_millis(json_u64(&out, "max_gap_ms"));
    assert!(
        gap <= CUT + RELAYED_RECOVERY,
        "traffic took {:?} to flow again after the path returned",
        gap.saturating_sub(CUT)
    );
    assert!(
        lab.procs[c].first_seen("tunnel lost").is_none(),
        "the connection was lost: {}",
        lab.procs[c].last_line("tunnel lost").unwrap_or_default()
    );
    // The server now sees the client at its new address.
    lab.procs[lab.procs.iter().position(|p| p.name == "server").unwrap()]
        .wait_line(&format!("remote={NEW_IP}"), Duration::from_secs(30));
}

/// The client NAT's address after [`new_public_ip`]'s renumbering.
const NEW_IP: &str = "198.18.0.21";

pub(super) fn json_u64(json: &str, key: &str) -> u64 {
    let at = json
        .find(&format!("\"{key}\":"))
        .unwrap_or_else(|| panic!("{key} in {json}"));
    json[at + key.len() + 3..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{key} in {json}"))
}
