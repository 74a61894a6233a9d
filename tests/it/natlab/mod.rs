//! The NAT lab (root only): porthole behind real Linux NATs in network namespaces.
//! See `lab.rs` for the topology and docs/NAT-TRAVERSAL.md for the measured matrix.

/// A lab test: runs `$body` only when the lab can run here (`lab::should_run`).
macro_rules! lab_test {
    ($name:ident, $body:expr) => {
        #[test]
        fn $name() {
            if $crate::natlab::lab::should_run(stringify!($name)) {
                $body;
            }
        }
    };
}

pub mod lab;
mod matrix;
mod outage;
mod publish;
mod resume;
mod sharing;
mod upgrade;
mod windows;
mod wireguard;
