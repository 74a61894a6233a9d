//! Resumable forwards: TCP connections that outlive the QUIC connection under them.
//!
//! When a session's connection is lost, its carried TCP connections stay open on both
//! ends; once the client has a new connection and the server has matched it to the
//! session, each carried connection gets a stream of the new connection and both ends
//! send again what the other has not read. Nothing is lost, duplicated or reordered.
//!
//! - [`replay`]: one direction's sent and unacknowledged bytes, bounded per stream and
//!   per session (a full replay is backpressure, never a drop).
//! - [`carry`]: one TCP connection over a sequence of streams (the resumable splice).
//! - [`acks`]: each side's received offsets, sent to the other on a stream of their own.

pub mod acks;
pub mod carry;
pub mod replay;

#[cfg(test)]
mod tests;
