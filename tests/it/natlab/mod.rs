//! The NAT lab (root only): porthole behind real Linux NATs in network namespaces.
//! See `lab.rs` for the topology and docs/NAT-TRAVERSAL.md for the measured matrix.

pub mod lab;
mod matrix;
mod sharing;
