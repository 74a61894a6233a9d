//! Protocols used by the iroh-relay

pub mod common;
pub mod handshake;
pub mod relay;
pub mod streams;
