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
//! - [`streams`]: one session's carries by number, moved onto a new connection.

pub mod acks;
pub mod carry;
pub mod replay;
pub mod streams;

#[cfg(test)]
mod tests;

use std::time::Duration;

/// How sessions resume, on either side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeSettings {
    /// How long a lost session's TCP connections are kept open for a resume; zero turns
    /// resuming off (connections are reset when the QUIC connection is lost, as before).
    pub grace: Duration,
    /// Unacknowledged bytes one direction of one stream may hold before its sender waits.
    /// Below a path's bandwidth-delay product it caps that stream's rate.
    pub stream_buffer: usize,
    /// The same over all streams of one session.
    pub session_buffer: usize,
}

/// Default grace: long enough for a laptop lid closed over coffee or a train tunnel.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);
/// Default per stream: above the 8 MiB stream window, so a stream that fills its window
/// on a long path is not held back by its replay as well.
pub const DEFAULT_STREAM_BUFFER: usize = 16 << 20;
/// Default per session.
pub const DEFAULT_SESSION_BUFFER: usize = 64 << 20;

impl Default for ResumeSettings {
    fn default() -> Self {
        Self {
            grace: DEFAULT_GRACE,
            stream_buffer: DEFAULT_STREAM_BUFFER,
            session_buffer: DEFAULT_SESSION_BUFFER,
        }
    }
}

impl ResumeSettings {
    /// No resuming.
    pub fn off() -> Self {
        Self {
            grace: Duration::ZERO,
            ..Self::default()
        }
    }

    pub fn enabled(&self) -> bool {
        !self.grace.is_zero()
    }
}
