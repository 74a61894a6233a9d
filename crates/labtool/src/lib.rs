//! `porthole-labtool`'s library part: the NAT lab's network ([`lab`]), built the same way
//! by the integration tests and by the WAN benchmark (`porthole-labtool lab`), and the
//! user-space delay line its impaired links use ([`netem`] over [`nfqueue`]).

pub mod lab;
pub mod netem;
pub mod nfqueue;
