//! Publishing a home service on a VPS, in the lab: the server on the lab's internet
//! (the "VPS", beside the relay), the publishing client behind a symmetric NAT (B),
//! a visitor behind another NAT (A) reaching the server's public address. Every byte
//! of a TCP transfer and of UDP datagrams is checked on the way back; also over a
//! path with 20 ms delay and 1 % loss on each NAT's uplink.

use std::time::Duration;

use super::lab::{Impair, LAB_LOCK, Lab, Nat, RELAY_IP};
use super::matrix::{check, iroh_client_in, start_services, write_secrets};

lab_test!(
    a_service_behind_a_nat_is_published_on_the_internet,
    publish_from_behind_a_nat(None)
);
lab_test!(
    a_service_is_published_over_a_slow_lossy_path,
    publish_from_behind_a_nat(Some(Impair {
        delay_ms: 20,
        loss: 0.01
    }))
);

/// With `impair` on each NAT's uplink (the visitor's and the home's).
fn publish_from_behind_a_nat(impair: Option<Impair>) {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(Nat::Cone, Nat::Symmetric, impair);
    let (visitor_ns, home_ns, vps_ns) = (lab.a.clone(), lab.b.clone(), lab.relay.clone());
    write_secrets(&lab);
    start_services(&mut lab, &home_ns);

    let mut server = lab.cmd(&vps_ns);
    server
        .args(["server", "--secret-file", &lab.path("server.key")])
        .args(["--auth-tokens-file", &lab.path("tokens.txt")])
        .args(["--relay-url", &lab.relay_url(), "--relay-ca", &lab.ca()])
        .args(["--dns-server", "none", "--no-portmap"])
        .args(["--allowed-bind-tcp", "0.0.0.0/32:8443"])
        .args(["--allowed-bind-udp", "0.0.0.0/32:8443"]);
    let s = lab.spawn("server", server);
    let ticket = lab.procs[s]
        .wait_line("Ticket: ", Duration::from_secs(30))
        .trim_start_matches("Ticket: ")
        .to_string();
    lab.procs[s].wait_line("serving", Duration::from_secs(30));

    let mut client = iroh_client_in(&lab, &home_ns, &ticket);
    client
        .args(["--publish", "tcp://0.0.0.0:8443=127.0.0.1:7000"])
        .args(["--publish", "udp://0.0.0.0:8443=127.0.0.1:7000"]);
    let c = lab.spawn("client", client);
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(30));

    let public = format!("{RELAY_IP}:8443");
    let tcp = check(
        &lab,
        &visitor_ns,
        &[
            "tcp-check",
            &public,
            "--bytes",
            "1000000",
            "--timeout-s",
            "30",
        ],
    );
    eprintln!("tcp-check: {tcp}");
    let udp = check(&lab, &visitor_ns, &["udp-check", &public, "--count", "20"]);
    eprintln!("udp-check: {udp}");
}
