//! Parallel bulk transfers over a slow, lossy direct path: every one of them moves data,
//! and a small request on a new connection still gets its answer while they run.
//!
//! Streams sent one after the other (first come, first served) broke both: on this path
//! the later bulk connections moved nothing for as long as the first kept sending, and
//! their data, accepted into QUIC but not sent, held the connection's flow-control credit
//! so that a new connection's first byte waited behind them (iperf3 -P 8 lost its control
//! connection). Round-robin among streams of equal priority fixed it.

use std::time::Duration;

use super::lab::{Impair, LAB_LOCK, Lab, Nat};
use super::matrix::{LAB_STUN, check, start_iroh_tunnel, start_manual_tunnel};

const STREAMS: usize = 6;

lab_test!(
    iroh_bulk_streams_share_a_lossy_path,
    bulk_streams_share(Mode::Iroh)
);
lab_test!(
    manual_bulk_streams_share_a_lossy_path,
    bulk_streams_share(Mode::Manual)
);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    Iroh,
    Manual,
}

/// Client on host A, server and echo services on host B, over an impaired path.
fn bulk_streams_share(mode: Mode) {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = impaired_lab();
    let host_a = lab.a.clone();
    start_tunnel(&mut lab, mode);
    assert_shared(&lab, &host_a);
}

/// Starts a tunnel from host A (client) to host B (server) in `mode`; returns the
/// client's process index.
pub(super) fn start_tunnel(lab: &mut Lab, mode: Mode) -> usize {
    let (host_a, host_b) = (lab.a.clone(), lab.b.clone());
    match mode {
        Mode::Iroh => start_iroh_tunnel(lab).0,
        Mode::Manual => start_manual_tunnel(lab, &host_b, &host_a, &LAB_STUN, "40s").1,
    }
}

/// Cone <-> cone, 20 ms per NAT egress (40 ms RTT), 1 % loss each way.
fn impaired_lab() -> Lab {
    Lab::new(
        Nat::Cone,
        Nat::Cone,
        Some(Impair {
            delay_ms: 20,
            loss: 0.01,
        }),
    )
}

/// From `host` (the client's namespace): bulk connections through 127.0.0.1:8000 share
/// the path, and one-byte probes on new connections come back quickly while they run.
fn assert_shared(lab: &Lab, host: &str) {
    check(
        lab,
        host,
        &["tcp-check", "127.0.0.1:8000", "--timeout-s", "60"],
    );
    let streams = STREAMS.to_string();
    let out = check(
        lab,
        host,
        &[
            "share-check",
            "127.0.0.1:8000",
            "--streams",
            &streams,
            "--seconds",
            "10",
        ],
    );
    eprintln!("share-check: {out}");
    let echoed = json_list(&out, "echoed");
    let probes = json_list(&out, "probe_ms");
    assert_eq!(echoed.len(), STREAMS, "{out}");
    let (min, max) = (echoed.iter().min().unwrap(), echoed.iter().max().unwrap());
    // The bug this guards against left later connections at zero. Over 1 % loss the
    // shares spread (manual mode, measured: up to 4.05x between the slowest and the
    // fastest of six, all moving tens of MB), so the spread allowed is 5x.
    assert!(
        *min > 0 && min * 5 >= *max,
        "bulk connections did not share the path (echoed bytes per connection {echoed:?})"
    );
    assert!(!probes.is_empty(), "{out}");
    let slowest = Duration::from_millis(*probes.iter().max().unwrap());
    assert!(
        slowest < Duration::from_secs(3),
        "a one-byte echo on a new connection took {slowest:?} next to bulk transfers \
         (probes {probes:?} ms)"
    );
}

/// `"key":[1,2,3]` from a JSON line.
fn json_list(json: &str, key: &str) -> Vec<u64> {
    let Some(at) = json.find(&format!("\"{key}\":[")) else {
        return Vec::new();
    };
    let rest = &json[at + key.len() + 4..];
    let end = rest.find(']').unwrap_or(rest.len());
    rest[..end]
        .split(',')
        .filter_map(|v| v.trim().parse().ok())
        .collect()
}
