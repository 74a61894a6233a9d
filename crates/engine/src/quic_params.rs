//! One set of QUIC transport parameters, defined once and applied by both transports
//! (iroh's noq in `porthole-iroh`, quinn in `porthole-quic`).
//!
//! Each transport maps [`QuicParams`] onto its library's config type field by field and
//! nothing else; the values, their defaults and the reasons for them live here.

use std::time::Duration;

/// Concurrent bidirectional streams a peer may open on one connection: one per forwarded
/// TCP connection (plus the control stream). Also the server's per-connection TCP limit.
pub const MAX_STREAMS: u32 = 1024;

/// The congestion controller a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Congestion {
    /// CUBIC (RFC 9438), the kernel's default for TCP.
    #[default]
    Cubic,
    /// NewReno (RFC 9002's reference controller).
    NewReno,
    /// BBR: paced at the measured bottleneck rate; random loss is not taken as congestion.
    Bbr,
}

/// QUIC tuning shared by every porthole connection, whatever the transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuicParams {
    /// See [`MAX_STREAMS`]. Unidirectional streams are never used (limit 0).
    pub max_streams: u32,
    /// Per-stream receive window (MAX_STREAM_DATA): what one stream may have in flight.
    ///
    /// noq closes the whole connection when a stream's reassembly buffer holds more than
    /// 1024 separate chunks, and keeps every full packet as its own chunk: a 4 MiB window
    /// reached that during a relay -> direct path switch. 1 MiB is ~870 packets.
    pub stream_window: u64,
    /// Upper bound of the connection receive window (MAX_DATA); each connection's
    /// [`receive_window`](crate::receive_window) tuner sizes it to the path below this.
    pub connection_window: u64,
    /// Bytes sent but not yet acknowledged that one connection may hold, all streams.
    pub send_window: u64,
    /// A silent peer counts as gone after this long; its streams are reset.
    pub idle_timeout: Duration,
    /// Keep-alive interval: holds punched NAT mappings open and proves liveness.
    pub keep_alive: Duration,
    /// Datagram queue per direction (UDP forwards): bursts above it are dropped.
    pub datagram_buffer: usize,
    /// Streams of equal priority share the path round-robin (bulk ones are demoted below
    /// young ones, see [`crate::splice::BULK_AFTER`]). Sending them one after the other
    /// starved later streams on slow paths, and their unsent data held the connection's
    /// flow-control credit, so even a small new stream waited behind it.
    pub send_fairness: bool,
    pub congestion: Congestion,
}

impl Default for QuicParams {
    fn default() -> Self {
        Self {
            max_streams: MAX_STREAMS,
            stream_window: 1 << 20,
            connection_window: 32 << 20,
            send_window: 32 << 20,
            idle_timeout: Duration::from_secs(20),
            keep_alive: Duration::from_secs(5),
            datagram_buffer: 4 << 20,
            send_fairness: true,
            congestion: Congestion::default(),
        }
    }
}
