//! Large stream windows on a long path. A target that stops reading lets a whole stream
//! window of contiguous packets pile up in the server's QUIC receive buffer (8 MiB:
//! ~6,000 packets). Stock noq closed the entire connection once a stream's buffer held
//! more than 1024 chunks ("too many gaps in stream buffer"), which is why the window was
//! held at 1 MiB; vendor/noq-proto lifts that (vendor/README.md). Only a path with a real
//! round trip lets the connection window grow enough for it to happen.

use std::time::Duration;

use super::lab::{Impair, LAB_LOCK, Lab, Nat};
use super::matrix::check;
use super::sharing::{Mode, start_tunnel};

lab_test!(
    iroh_a_stalled_target_behind_a_full_stream_window_keeps_the_connection,
    stalled_target(Mode::Iroh)
);
lab_test!(
    manual_a_stalled_target_behind_a_full_stream_window_keeps_the_connection,
    stalled_target(Mode::Manual)
);

fn stalled_target(mode: Mode) {
    let _g = LAB_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let mut lab = Lab::new(
        Nat::Cone,
        Nat::Cone,
        Some(Impair {
            delay_ms: 25,
            loss: 0.0,
        }),
    );
    let host_a = lab.a.clone();
    let c = start_tunnel(&mut lab, mode);
    lab.procs[c].wait_line("tunnel up", Duration::from_secs(60));
    // 48 MB through the echo on 8001, which stops reading for 3 s after the first byte:
    // every byte must come back, in order.
    let out = check(
        &lab,
        &host_a,
        &[
            "tcp-check",
            "127.0.0.1:8001",
            "--bytes",
            "48000000",
            "--timeout-s",
            "120",
        ],
    );
    eprintln!("stalled echo: {out}");
    assert!(
        lab.procs[c].first_seen("tunnel lost").is_none(),
        "the connection was lost: {}",
        lab.procs[c].last_line("tunnel lost").unwrap_or_default()
    );
}
