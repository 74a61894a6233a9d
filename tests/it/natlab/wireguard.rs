//! Tunnel interfaces next to porthole: it must never carry its own QUIC traffic through a
//! VPN it carries.
//!
//! WireGuard over a porthole UDP forward, as users run it (wireguard-go from Debian, where
//! the kernel has no WireGuard), with AllowedIPs covering the WireGuard subnet *and the
//! server's LAN*. Before the direct-path rules (porthole_engine::direct_paths), the peers
//! learned the server's LAN address and its address inside the VPN as direct-path
//! candidates; both answer once WireGuard is up (through porthole itself), and the client
//! switched to `path=direct remote=10.99.0.1:...` and back, again and again (reproduced
//! by pinning every address, which switches the tunnel rule off).
//!
//! Behind cone NATs the tunnel runs on a punched direct path; behind symmetric NATs on
//! the relay, where a looping "direct" path would look better than the relay. Manual mode
//! gathers candidates once; its test checks the offer and answer themselves.

use std::process::Command;
use std::time::Duration;

use porthole_proto::blob::{Blob, BlobKind};

use super::lab::{HOST_B_IP, Impair, LAB_LOCK, Lab, Nat};
use super::matrix::{iroh_client, start_iroh_server, start_manual_tunnel, write_secrets};

lab_test!(
    iroh_wireguard_over_a_forward_never_routes_through_itself_cone,
    wireguard(Nat::Cone)
);
lab_test!(
    iroh_wireguard_over_a_forward_never_routes_through_itself_symmetric,
    wireguard(Nat::Symmetric)
);

lab_test!(
    manual_mode_never_offers_or_punches_tunnel_addresses,
    manual_tunnel_interfaces()
);

/// The VPN: the server's end and the client's end.
const WG_SERVER: &str = "10.99.0.1";
const WG_CLIENT: &str = "10.99.0.2";
/// Host B's LAN (the lab's side B), reached through the VPN by the client.
const SERVER_LAN: &str = "192.168.2.0/24";
/// WireGuard's port on host B, and the porthole client's UDP listener on host A.
const WG_PORT: u16 = 51820;
/// Pings per target, one every 200 ms: 60 s.
const PINGS: u32 = 300;
/// Pings that may go unanswered at the start (the first 2 s: WireGuard's handshake).
const WARMUP: u32 = 10;

/// The programs this test runs besides porthole; missing ones skip it loudly (CI
/// installs them and makes a skip a failure, as for the lab itself).
fn tools_present(test: &str) -> bool {
    let missing: Vec<&str> = ["wireguard-go", "wg", "ping"]
        .into_iter()
        .filter(|b| {
            !Command::new("sh")
                .args(["-c", &format!("command -v {b} >/dev/null")])
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{} not installed (Debian: wireguard-go wireguard-tools iputils-ping)",
        missing.join(", ")
    );
    if std::env::var("PORTHOLE_NATLAB").as_deref() == Ok("required") {
        panic!("{test}: {why}");
    }
    eprintln!("\n!!!!!!!!!! WIREGUARD TEST SKIPPED ({test}): {why} !!!!!!!!!!\n");
    false
}

fn wg_keypair() -> (String, String) {
    let out = Command::new("wg").arg("genkey").output().unwrap();
    assert!(out.status.success());
    let private = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let mut pubkey = Command::new("wg")
        .arg("pubkey")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    pubkey
        .stdin
        .take()
        .unwrap()
        .write_all(private.as_bytes())
        .unwrap();
    let out = pubkey.wait_with_output().unwrap();
    assert!(out.status.success());
    (
        private,
        String::from_utf8(out.stdout).unwrap().trim().to_string(),
    )
}

/// One end of the VPN: wireguard-go in `ns` (foreground, so the lab stops it), configured
/// with `wg` once its control socket exists, the address set and the routes of
/// `allowed` pointing into it.
struct WgEnd<'a> {
    iface: String,
    addr: &'a str,
    private: String,
    listen: u16,
    peer: String,
    allowed: &'a [&'a str],
    endpoint: Option<String>,
}

fn start_wg(lab: &mut Lab, ns: &str, end: &WgEnd<'_>) {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "wireguard-go", &end.iface])
        .env("WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD", "1")
        .env("WG_PROCESS_FOREGROUND", "1");
    lab.spawn(&format!("wireguard-go {}", end.iface), cmd);
    // The control socket directory is shared by every namespace: hence one name per end.
    let sock = format!("/var/run/wireguard/{}.sock", end.iface);
    let start = std::time::Instant::now();
    while !std::path::Path::new(&sock).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "wireguard-go {} did not create {sock}",
            end.iface
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let key_file = lab.path(&format!("{}.key", end.iface));
    std::fs::write(&key_file, &end.private).unwrap();
    let mut wg = vec![
        "wg".to_string(),
        "set".into(),
        end.iface.clone(),
        "private-key".into(),
        key_file,
        "listen-port".into(),
        end.listen.to_string(),
        "peer".into(),
        end.peer.clone(),
        "allowed-ips".into(),
        end.allowed.join(","),
        "persistent-keepalive".into(),
        "1".into(),
    ];
    if let Some(e) = &end.endpoint {
        wg.extend(["endpoint".into(), e.clone()]);
    }
    let wg: Vec<&str> = wg.iter().map(String::as_str).collect();
    lab.net.exec(ns, &wg).unwrap();
    let cidr = format!("{}/24", end.addr);
    lab.net
        .ip(ns, &["addr", "add", &cidr, "dev", &end.iface])
        .unwrap();
    lab.net.ip(ns, &["link", "set", &end.iface, "up"]).unwrap();
    for net in end.allowed.iter().filter(|n| !n.starts_with("10.99.")) {
        lab.net
            .ip(ns, &["route", "add", net, "dev", &end.iface])
            .unwrap();
    }
}

/// Sequence numbers of the answered pings.
fn answered(ping_output: &str) -> Vec<u32> {
    ping_output
        .lines()
        .filter(|l| l.contains("bytes from"))
        .filter_map(|l| l.split("icmp_seq=").nth(1))
        .filter_map(|s| s.split_whitespace().next()?.parse().ok())
        .collect()
}

fn wireguard(nat: Nat) {
    let test = format!("wireguard {nat:?}");
    if !tools_present(&test) {
        return;
    }
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
    write_secrets(&lab);
    let (s, ticket) = start_iroh_server(&mut lab);
    let mut client = iroh_client(&lab, &ticket);
    client
        .args(["--source", &format!("udp://127.0.0.1:{WG_PORT}")])
        .args(["--listen", &format!("127.0.0.1:{WG_PORT}")]);
    let c = lab.spawn("client", client);
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));
    let first_path = if nat == Nat::Symmetric {
        "path=relay"
    } else {
        "path=direct"
    };
    lab.procs[c].wait_line(first_path, Duration::from_secs(15));

    let (key_a, pub_a) = wg_keypair();
    let (key_b, pub_b) = wg_keypair();
    let tag = std::process::id() % 100_000;
    start_wg(
        &mut lab,
        &host_b,
        &WgEnd {
            iface: format!("wgs{tag}"),
            addr: WG_SERVER,
            private: key_b,
            listen: WG_PORT,
            peer: pub_a,
            allowed: &[&format!("{WG_CLIENT}/32")],
            endpoint: None,
        },
    );
    start_wg(
        &mut lab,
        &host_a,
        &WgEnd {
            iface: format!("wgc{tag}"),
            addr: WG_CLIENT,
            private: key_a,
            listen: WG_PORT + 1,
            peer: pub_b,
            // The VPN's subnet and the server's whole LAN, as a homelab user sets it.
            allowed: &["10.99.0.0/24", SERVER_LAN],
            endpoint: Some(format!("127.0.0.1:{WG_PORT}")),
        },
    );

    // 60 s of pings to the server inside the VPN and to its LAN address through the VPN.
    let pings: Vec<_> = [WG_SERVER, HOST_B_IP]
        .into_iter()
        .map(|target| {
            let mut ping = Command::new("ip");
            ping.args([
                "netns", "exec", &host_a, "ping", "-n", "-i", "0.2", "-W", "1",
            ])
            .args(["-c", &PINGS.to_string(), target]);
            (target, std::thread::spawn(move || ping.output()))
        })
        .collect();
    for (target, handle) in pings {
        let out = handle.join().unwrap().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        let got = answered(&text);
        let lost: Vec<u32> = (WARMUP + 1..=PINGS).filter(|s| !got.contains(s)).collect();
        assert!(
            lost.is_empty(),
            "{nat:?}: pings to {target} through WireGuard over porthole lost after the first \
             2 s: {} of {}, seq {lost:?}\n{text}\n---- client ----\n{}\n---- server ----\n{}",
            lost.len(),
            PINGS - WARMUP,
            lab.procs[c].output(),
            lab.procs[s].output()
        );
    }

    // No path ever named an address that exists only through the tunnel: the VPN's
    // subnet on either side, the server's LAN on the client's.
    for (p, forbidden) in [(c, vec!["10.99.", "192.168.2."]), (s, vec!["10.99."])] {
        let out = lab.procs[p].output();
        let bad: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("path="))
            .filter(|l| forbidden.iter().any(|f| l.contains(f)))
            .collect();
        assert!(
            bad.is_empty(),
            "{nat:?}: {} used a path through its own forward: {bad:#?}\n{out}",
            lab.procs[p].name
        );
    }
    // The server noticed its VPN address and kept it to itself.
    let not_advertised = format!("not advertising {WG_SERVER} for direct paths");
    lab.procs[s].wait_line(&not_advertised, Duration::from_secs(5));
    for end in [format!("wgs{tag}"), format!("wgc{tag}")] {
        let _ = std::fs::remove_file(format!("/var/run/wireguard/{end}.sock"));
    }
}

/// Manual mode gathers its candidates once: a TUN interface on each host (as a VPN client
/// would have) must stay out of the offer and the answer, and the server's LAN address,
/// which the client routes into its TUN, must not be punched.
fn manual_tunnel_interfaces() {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(Nat::Cone, Nat::Cone, None);
    let (host_a, host_b) = (lab.a.clone(), lab.b.clone());
    let tag = std::process::id() % 100_000;
    for (ns, dev, addr) in [
        (&host_a, format!("tunc{tag}"), "10.97.0.1/24"),
        (&host_b, format!("tuns{tag}"), "10.98.0.1/24"),
    ] {
        lab.net
            .ip(ns, &["tuntap", "add", "dev", &dev, "mode", "tun"])
            .unwrap();
        lab.net.ip(ns, &["addr", "add", addr, "dev", &dev]).unwrap();
        lab.net.ip(ns, &["link", "set", &dev, "up"]).unwrap();
        if ns == &host_a {
            lab.net
                .ip(ns, &["route", "add", SERVER_LAN, "dev", &dev])
                .unwrap();
        }
    }
    let stun = ["--stun-server", super::lab::STUN_ADDRS[0]];
    let stun2 = ["--stun-server", super::lab::STUN_ADDRS[1]];
    let stun: Vec<&str> = stun.iter().chain(stun2.iter()).copied().collect();
    let (_s, c, _) = start_manual_tunnel(&mut lab, &host_b, &host_a, &stun, "40s");
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));

    let now = porthole_transport_quic::session::now_unix();
    let offer = std::fs::read_to_string(lab.path("offer.txt")).unwrap();
    let offer = Blob::decode(&offer, BlobKind::Offer, now).unwrap();
    let answer = std::fs::read_to_string(lab.path("answer.txt")).unwrap();
    let answer = Blob::decode(&answer, BlobKind::Answer, now).unwrap();
    let shown = |s: &Blob| {
        s.candidates
            .iter()
            .map(|c| c.addr.ip().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        !shown(&offer).iter().any(|a| a == "10.97.0.1"),
        "the client offered its TUN address: {:?}",
        shown(&offer)
    );
    assert!(
        shown(&offer).iter().any(|a| a.starts_with("192.168.1.")),
        "the client's LAN address is missing from its offer: {:?}",
        shown(&offer)
    );
    assert!(
        !shown(&answer).iter().any(|a| a == "10.98.0.1"),
        "the server answered with its TUN address: {:?}",
        shown(&answer)
    );
    assert!(
        shown(&answer).iter().any(|a| a == HOST_B_IP),
        "the server's LAN address is missing from its answer: {:?}",
        shown(&answer)
    );
    // The server's LAN address was offered, but the client routes it into its TUN.
    lab.procs[c].wait_line(
        &format!("not using {HOST_B_IP} for a direct path"),
        Duration::from_secs(5),
    );
    let path = lab.procs[c].wait_line("path=direct", Duration::from_secs(5));
    assert!(!path.contains(HOST_B_IP), "{path}");
}
