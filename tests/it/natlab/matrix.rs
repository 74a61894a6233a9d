//! For every NAT pair: the client behind one NAT reaches a TCP service and a UDP echo
//! behind the other through porthole within a bounded time, and the path is direct
//! where a UDP path can exist and relayed where it cannot. Each run writes its row to
//! target/natlab/*.row (the source of docs/NAT-TRAVERSAL.md's table).

use std::process::Command;
use std::time::{Duration, Instant};

use super::lab::{Impair, LAB_LOCK, Lab, Nat, RELAY_IP, STUN_ADDRS, should_run};
use crate::support::TOKEN;

/// What a lab run measured.
#[derive(Debug)]
struct Outcome {
    mode: &'static str,
    pair: String,
    path: String,
    ttfb_ms: u128,
    direct_after_ms: Option<u128>,
    note: String,
}

fn record(o: &Outcome) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/target/natlab");
    let _ = std::fs::create_dir_all(dir);
    let report = format!(
        "{dir}/{}-{}.row",
        o.mode,
        o.pair.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
    );
    let line = format!(
        "| {} | {} | {} | {} ms | {} | {} |\n",
        o.mode,
        o.pair,
        o.path,
        o.ttfb_ms,
        o.direct_after_ms
            .map(|d| format!("{d} ms"))
            .unwrap_or_else(|| "-".into()),
        o.note
    );
    eprint!("NATLAB {line}");
    let _ = std::fs::write(report, line.as_bytes());
}

fn json_field(json: &str, key: &str) -> Option<u128> {
    let at = json.find(&format!("\"{key}\":"))? + key.len() + 3;
    json[at..]
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()
}

/// Runs a check tool inside `ns`, returning its JSON line (panics with its stderr on failure).
pub(super) fn check(lab: &Lab, ns: &str, args: &[&str]) -> String {
    let out = lab.tool(ns).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?} from {ns} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub(super) fn write_secrets(lab: &Lab) {
    std::fs::write(lab.path("tokens.txt"), format!("{TOKEN}\n")).unwrap();
    let out = crate::support::process::bin()
        .args(["generate-server-key", "--output", &lab.path("server.key")])
        .output()
        .unwrap();
    assert!(out.status.success());
}

/// Echo services on `ns`'s loopback: TCP and UDP on 7000, and on 7001 a TCP echo that
/// stalls for 3 s after its first bytes (natlab::windows).
pub(super) fn start_services(lab: &mut Lab, ns: &str) {
    let mut echo = lab.tool(ns);
    echo.args(["echo", "--tcp", "127.0.0.1:7000", "--udp", "127.0.0.1:7000"]);
    lab.spawn("echo", echo);
    let mut stalled = lab.tool(ns);
    stalled.args(["echo", "--tcp", "127.0.0.1:7001", "--stall-ms", "3000"]);
    lab.spawn("stalled-echo", stalled);
}

/// The client's forwards in both modes: 8000 -> 7000 (TCP and UDP), 8001 -> 7001 (TCP).
pub(super) const FORWARDS: [&str; 12] = [
    "--source",
    "tcp://127.0.0.1:7000",
    "--target",
    "127.0.0.1:8000",
    "--source",
    "udp://127.0.0.1:7000",
    "--target",
    "127.0.0.1:8000",
    "--source",
    "tcp://127.0.0.1:7001",
    "--target",
    "127.0.0.1:8001",
];

/// Starts an iroh server on host B (services on its loopback) and a client on host A that
/// forwards to them ([`FORWARDS`]). Returns the client's process index and when it was
/// started.
pub(super) fn start_iroh_tunnel(lab: &mut Lab) -> (usize, Instant) {
    write_secrets(lab);
    let host_b = lab.b.clone();
    start_services(lab, &host_b);
    let (_, ticket) = start_iroh_server(lab);
    let started = Instant::now();
    let mut client = iroh_client(lab, &ticket);
    client.args(FORWARDS);
    (lab.spawn("client", client), started)
}

/// Starts [`iroh_server`] (secrets written first by the caller) and waits until it
/// serves; returns its process index and its ticket.
pub(super) fn start_iroh_server(lab: &mut Lab) -> (usize, String) {
    let server = iroh_server(lab);
    start_iroh_server_with(lab, server)
}

/// [`start_iroh_server`] with `server`, an [`iroh_server`] with more flags.
pub(super) fn start_iroh_server_with(lab: &mut Lab, server: Command) -> (usize, String) {
    let s = lab.spawn("server", server);
    let ticket = lab.procs[s]
        .wait_line("Ticket: ", Duration::from_secs(30))
        .trim_start_matches("Ticket: ")
        .to_string();
    lab.procs[s].wait_line("serving", Duration::from_secs(30));
    (s, ticket)
}

/// A client on host A for `ticket` (the lab's token, relay CA, no DNS, no port
/// mapping), without forwards: the caller adds them.
pub(super) fn iroh_client(lab: &Lab, ticket: &str) -> Command {
    iroh_client_in(lab, &lab.a, ticket)
}

/// [`iroh_client`] in namespace `ns`.
pub(super) fn iroh_client_in(lab: &Lab, ns: &str, ticket: &str) -> Command {
    let mut client = lab.cmd(ns);
    client
        .args(["client", "--ticket", ticket])
        .args(["--auth-token-file", &lab.path("tokens.txt")])
        .args([
            "--relay-ca",
            &lab.ca(),
            "--dns-server",
            "none",
            "--no-portmap",
        ])
        .args(LAB_STUN);
    client
}

/// The iroh server of [`start_iroh_tunnel`] on host B (its key and tokens in the lab
/// directory), as a command: tests restart it with the same identity.
pub(super) fn iroh_server(lab: &Lab) -> Command {
    let mut server = lab.cmd(&lab.b);
    server
        .args([
            "server",
            "--secret-file",
            &lab.path("server.key"),
            "--auth-tokens-file",
            &lab.path("tokens.txt"),
        ])
        .args([
            "--relay-url",
            &lab.relay_url(),
            "--relay-ca",
            &lab.ca(),
            "--dns-server",
            "none",
            "--no-portmap",
        ])
        .args([
            "--allowed-tcp",
            "127.0.0.0/8",
            "--allowed-udp",
            "127.0.0.0/8",
        ])
        .args(LAB_STUN);
    server
}

/// 20 ms and 1 % loss on each NAT's uplink: 40 ms round trips, a lossy path.
const LOSSY: Impair = Impair {
    delay_ms: 20,
    loss: 0.01,
};

/// The first byte's budget in every iroh row, the relay's included.
const FIRST_BYTE_MS: u128 = 1000;
/// How soon after the client's start a cone : symmetric pair must be direct (upgraded).
const UPGRADED_WITHIN_MS: u128 = 2000;

/// iroh mode: server on host B, client on host A, services on host B's loopback.
fn iroh_pair(a: Nat, b: Nat, imp: Option<Impair>, expect_direct: Option<bool>) -> Outcome {
    iroh_pair_with(a, b, imp, expect_direct, &[])
}

/// [`iroh_pair`] with more server flags (`--no-upgrade`).
fn iroh_pair_with(
    a: Nat,
    b: Nat,
    imp: Option<Impair>,
    expect_direct: Option<bool>,
    server_flags: &[&str],
) -> Outcome {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(a, b, imp);
    let host_a = lab.a.clone();
    let c = {
        write_secrets(&lab);
        let host_b = lab.b.clone();
        start_services(&mut lab, &host_b);
        let mut server = iroh_server(&lab);
        server.args(server_flags);
        let (_, ticket) = start_iroh_server_with(&mut lab, server);
        let mut client = iroh_client(&lab, &ticket);
        client.args(FORWARDS);
        (lab.spawn("client", client), Instant::now())
    };
    let (c, started) = c;
    let tcp = check(
        &lab,
        &host_a,
        &[
            "tcp-check",
            "127.0.0.1:8000",
            "--bytes",
            "200000",
            "--timeout-s",
            "60",
        ],
    );
    let ttfb = json_field(&tcp, "ttfb_ms").unwrap_or_default();
    check(
        &lab,
        &host_a,
        &[
            "udp-check",
            "127.0.0.1:8000",
            "--size",
            "1472",
            "--count",
            "10",
            "--timeout-s",
            "30",
        ],
    );
    check(
        &lab,
        &host_a,
        &[
            "udp-check",
            "127.0.0.1:8000",
            "--size",
            "8192",
            "--count",
            "3",
            "--timeout-s",
            "30",
        ],
    );

    // Give hole punching its chance, then read the path the client reports.
    let wait_direct = Duration::from_secs(if expect_direct == Some(false) { 8 } else { 20 });
    let deadline = Instant::now() + wait_direct;
    while Instant::now() < deadline && lab.procs[c].first_seen("path=direct").is_none() {
        std::thread::sleep(Duration::from_millis(100));
    }
    let direct_at = lab.procs[c].first_seen("path=direct");
    let upgraded = lab.procs[c].first_seen("upgraded from the relay");
    let last = lab.procs[c].last_line("path=").unwrap_or_default();
    let path = if last.contains("path=direct") {
        "direct"
    } else if last.contains("path=relay") {
        "relay"
    } else {
        "?"
    };
    let outcome = Outcome {
        mode: "iroh",
        pair: match server_flags {
            [] => pair_name(a, b, imp),
            flags => format!("{} (server {})", pair_name(a, b, imp), flags.join(" ")),
        },
        path: path.to_string(),
        ttfb_ms: ttfb,
        direct_after_ms: direct_at.map(|t| t.duration_since(started).as_millis()),
        note: last
            .split("path=")
            .nth(1)
            .map(|s| format!("path={}", s.trim()))
            .unwrap_or_default(),
    };
    record(&outcome);
    assert!(
        outcome.ttfb_ms < FIRST_BYTE_MS,
        "first byte later than {FIRST_BYTE_MS} ms: {outcome:?}"
    );
    // Where iroh cannot punch by itself (port-restricted cone : symmetric), the upgrade
    // must, and soon.
    let needs_upgrade = matches!(
        (a, b),
        (Nat::Cone, Nat::Symmetric) | (Nat::Symmetric, Nat::Cone)
    );
    if needs_upgrade && expect_direct == Some(true) {
        let after = upgraded
            .map(|t| t.duration_since(started).as_millis())
            .unwrap_or_else(|| panic!("no upgrade: {outcome:?}"));
        assert!(
            after < UPGRADED_WITHIN_MS,
            "upgraded only after {after} ms: {outcome:?}"
        );
    }
    match expect_direct {
        Some(true) => assert_eq!(
            outcome.path, "direct",
            "expected a direct path: {outcome:?}"
        ),
        Some(false) => {
            assert!(
                direct_at.is_none(),
                "no direct path can exist here, yet: {outcome:?}"
            );
            assert_eq!(outcome.path, "relay", "{outcome:?}");
            assert!(last.contains(RELAY_IP), "{last}");
        }
        None => {}
    }
    outcome
}

fn pair_name(a: Nat, b: Nat, imp: Option<Impair>) -> String {
    let mut s = format!("{} <-> {}", a.name(), b.name());
    if let Some(i) = imp {
        s.push_str(&format!(" (+{} ms, {}% loss)", i.delay_ms, i.loss * 100.0));
    }
    s
}

lab_test!(
    iroh_cone_cone_goes_direct,
    iroh_pair(Nat::Cone, Nat::Cone, None, Some(true))
);
lab_test!(
    iroh_cone_cone_with_delay_and_loss_goes_direct,
    iroh_pair(Nat::Cone, Nat::Cone, Some(LOSSY), Some(true))
);
lab_test!(
    iroh_double_nat_to_cone_goes_direct,
    iroh_pair(Nat::DoubleCone, Nat::Cone, None, Some(true))
);
lab_test!(
    iroh_cone_symmetric_upgrades_to_direct,
    iroh_pair(Nat::Cone, Nat::Symmetric, None, Some(true))
);
lab_test!(
    iroh_symmetric_cone_upgrades_to_direct,
    iroh_pair(Nat::Symmetric, Nat::Cone, None, Some(true))
);
lab_test!(
    iroh_cone_symmetric_with_delay_and_loss_upgrades_to_direct,
    iroh_pair(Nat::Cone, Nat::Symmetric, Some(LOSSY), Some(true))
);
lab_test!(
    iroh_symmetric_cone_with_delay_and_loss_upgrades_to_direct,
    iroh_pair(Nat::Symmetric, Nat::Cone, Some(LOSSY), Some(true))
);
lab_test!(
    iroh_restricted_symmetric_goes_direct,
    iroh_pair(Nat::Restricted, Nat::Symmetric, None, Some(true))
);
lab_test!(
    iroh_symmetric_restricted_goes_direct,
    iroh_pair(Nat::Symmetric, Nat::Restricted, None, Some(true))
);
lab_test!(
    iroh_full_cone_symmetric_goes_direct,
    iroh_pair(Nat::FullCone, Nat::Symmetric, None, Some(true))
);
lab_test!(
    iroh_symmetric_full_cone_goes_direct,
    iroh_pair(Nat::Symmetric, Nat::FullCone, None, Some(true))
);
// Without the upgrade, iroh alone: the symmetric side's packets open a filter that
// looks at addresses only (or none).
lab_test!(
    iroh_restricted_symmetric_goes_direct_without_the_upgrade,
    iroh_pair_with(
        Nat::Restricted,
        Nat::Symmetric,
        None,
        Some(true),
        &["--no-upgrade"]
    )
);
lab_test!(
    iroh_full_cone_symmetric_goes_direct_without_the_upgrade,
    iroh_pair_with(
        Nat::FullCone,
        Nat::Symmetric,
        None,
        Some(true),
        &["--no-upgrade"]
    )
);
lab_test!(
    iroh_cone_symmetric_stays_relayed_when_the_server_says_no_upgrade,
    {
        let o = iroh_pair_with(
            Nat::Cone,
            Nat::Symmetric,
            None,
            Some(false),
            &["--no-upgrade"],
        );
        assert!(o.note.contains("relay"), "{o:?}");
    }
);
lab_test!(
    iroh_symmetric_symmetric_stays_relayed,
    iroh_pair(Nat::Symmetric, Nat::Symmetric, None, Some(false))
);
lab_test!(
    iroh_udp_blocked_uses_the_relay,
    iroh_pair(Nat::UdpBlocked, Nat::Cone, None, Some(false))
);

/// Manual mode's flags for the lab's two STUN servers.
pub(super) const LAB_STUN: [&str; 4] = [
    "--stun-server",
    STUN_ADDRS[0],
    "--stun-server",
    STUN_ADDRS[1],
];

/// Starts echo services and a manual-mode server in `server_ns`, and a client in
/// `client_ns` forwarding to them ([`FORWARDS`]), signalling through files in the lab
/// directory. Returns the server's and client's process indexes and the start time.
pub(super) fn start_manual_tunnel(
    lab: &mut Lab,
    server_ns: &str,
    client_ns: &str,
    stun: &[&str],
    punch_timeout: &str,
) -> (usize, usize, Instant) {
    write_secrets(lab);
    start_services(lab, server_ns);
    let (offer, answer) = (lab.path("offer.txt"), lab.path("answer.txt"));
    let mut server = lab.cmd(server_ns);
    server
        .args([
            "server",
            "--mode",
            "manual",
            "--auth-tokens-file",
            &lab.path("tokens.txt"),
        ])
        .args([
            "--allowed-tcp",
            "127.0.0.0/8",
            "--allowed-udp",
            "127.0.0.0/8",
        ])
        .args([
            "--offer-file",
            &offer,
            "--answer-file",
            &answer,
            "--punch-timeout",
            punch_timeout,
        ])
        .args(stun);
    let s = lab.spawn("manual-server", server);
    let started = Instant::now();
    let mut client = lab.cmd(client_ns);
    client
        .args([
            "client",
            "--mode",
            "manual",
            "--auth-token-file",
            &lab.path("tokens.txt"),
        ])
        .args(FORWARDS)
        .args([
            "--offer-file",
            &offer,
            "--answer-file",
            &answer,
            "--punch-timeout",
            punch_timeout,
        ])
        .args(stun);
    let c = lab.spawn("manual-client", client);
    (s, c, started)
}

/// Manual mode: offer/answer through files in the lab's shared directory.
fn manual_pair(a: Nat, b: Nat, lan_only: bool, must_work: bool) -> Option<Outcome> {
    // Where physics forbids a direct path, do not wait long to see it fail.
    let punch_timeout = if must_work { "40s" } else { "10s" };
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(a, b, None);
    // LAN-only: server and client on the same LAN (host A and host A2), no STUN.
    let (client_ns, server_ns) = if lan_only {
        (lab.a2.clone(), lab.a.clone())
    } else {
        (lab.a.clone(), lab.b.clone())
    };
    let stun: &[&str] = if lan_only {
        &["--stun-server", "none"]
    } else {
        &LAB_STUN
    };
    let (s, c, started) =
        start_manual_tunnel(&mut lab, &server_ns, &client_ns, stun, punch_timeout);

    // NAT detection is part of what is tested: cone is endpoint-independent, symmetric dependent.
    if !lan_only {
        let expect = |n: Nat| match n {
            Nat::Symmetric => "endpoint-dependent",
            _ => "endpoint-independent",
        };
        let cl = lab.procs[c].wait_line("gathered", Duration::from_secs(30));
        assert!(cl.contains(expect(a)), "client NAT detection: {cl}");
        let sl = lab.procs[s].wait_line("gathered", Duration::from_secs(30));
        assert!(sl.contains(expect(b)), "server NAT detection: {sl}");
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if lab.procs[c].first_seen("tunnel up").is_some() {
            break;
        }
        let failed = !lab.procs[c].is_running();
        if failed || Instant::now() > deadline {
            let o = Outcome {
                mode: "manual",
                pair: if lan_only {
                    "LAN only (no STUN)".into()
                } else {
                    pair_name(a, b, None)
                },
                path: "failed".into(),
                ttfb_ms: 0,
                direct_after_ms: None,
                note: lab.procs[c]
                    .last_line("failed")
                    .or(lab.procs[c].last_line("error"))
                    .unwrap_or_default(),
            };
            record(&o);
            assert!(!must_work, "manual mode failed: {o:?}");
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tcp = check(
        &lab,
        &client_ns,
        &[
            "tcp-check",
            "127.0.0.1:8000",
            "--bytes",
            "200000",
            "--timeout-s",
            "30",
        ],
    );
    check(
        &lab,
        &client_ns,
        &[
            "udp-check",
            "127.0.0.1:8000",
            "--size",
            "1472",
            "--count",
            "10",
            "--timeout-s",
            "30",
        ],
    );
    let punched = lab.procs[c].wait_line("punched in", Duration::from_secs(5));
    let o = Outcome {
        mode: "manual",
        pair: if lan_only {
            "LAN only (no STUN)".into()
        } else {
            pair_name(a, b, None)
        },
        path: "direct".into(),
        ttfb_ms: lab.procs[c]
            .first_seen("tunnel up")
            .map(|t| t.duration_since(started).as_millis())
            .unwrap_or_default()
            + json_field(&tcp, "ttfb_ms").unwrap_or_default(),
        direct_after_ms: lab.procs[c]
            .first_seen("punched in")
            .map(|t| t.duration_since(started).as_millis()),
        note: punched
            .split("punched")
            .nth(1)
            .map(|s| format!("punched{s}"))
            .unwrap_or_default(),
    };
    record(&o);
    Some(o)
}

lab_test!(
    manual_cone_cone_goes_direct,
    manual_pair(Nat::Cone, Nat::Cone, false, true)
);
lab_test!(
    manual_lan_only_without_stun,
    manual_pair(Nat::Cone, Nat::Cone, true, true)
);
lab_test!(
    manual_cone_to_symmetric_server,
    manual_pair(Nat::Cone, Nat::Symmetric, false, true)
);
lab_test!(
    manual_symmetric_client_to_cone,
    manual_pair(Nat::Symmetric, Nat::Cone, false, true)
);
lab_test!(
    manual_symmetric_both_sides_is_reported,
    manual_pair(Nat::Symmetric, Nat::Symmetric, false, false)
);

/// The lab itself: a host behind a NAT is not reachable unsolicited.
#[test]
fn lab_nat_blocks_unsolicited_inbound() {
    if !should_run("lab_nat_blocks_unsolicited_inbound") {
        return;
    }
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(Nat::Cone, Nat::Cone, None);
    let b = lab.b.clone();
    let mut echo = lab.tool(&b);
    echo.args(["echo", "--tcp", "0.0.0.0:7001", "--udp", "0.0.0.0:7001"]);
    lab.spawn("echo", echo);
    std::thread::sleep(Duration::from_millis(300));
    // From the "internet" (the relay host): neither the NAT's public address nor the
    // private address behind it answers.
    let relay_ns = lab.relay.clone();
    for target in ["198.18.0.12:7001", "192.168.2.2:7001"] {
        let out = lab
            .tool(&relay_ns)
            .args(["udp-check", target, "--count", "1", "--timeout-s", "2"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "UDP {target} reachable unsolicited");
        let out = lab
            .tool(&relay_ns)
            .args(["tcp-check", target, "--timeout-s", "2"])
            .output()
            .unwrap();
        assert!(!out.status.success(), "TCP {target} reachable unsolicited");
    }
    // Outbound works: host A reaches the relay's HTTPS port through its NAT.
    let a = lab.a.clone();
    let mut relay_echo = lab.tool(&relay_ns);
    relay_echo.args(["echo", "--tcp", "198.18.0.10:7002"]);
    lab.spawn("relay-echo", relay_echo);
    std::thread::sleep(Duration::from_millis(300));
    check(
        &lab,
        &a,
        &["tcp-check", "198.18.0.10:7002", "--timeout-s", "5"],
    );
}
