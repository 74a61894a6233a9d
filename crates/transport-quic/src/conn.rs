//! The engine's connection and stream traits over quinn.

use std::time::Duration;

use porthole_engine::receive_window::{self, WindowControl};
use quinn::{Connection, VarInt};

porthole_engine::quic_adapter!(
    quinn,
    QuicConn,
    QuicSend,
    QuicRecv,
    peer = |c| c.remote_address().to_string()
);

impl QuicConn {
    /// Wraps an established connection and starts sizing its receive window to the path
    /// (`porthole_engine::receive_window`). Call from within the tokio runtime.
    pub fn new(c: Connection) -> Self {
        receive_window::spawn_tuner(Tuned(c.clone()));
        Self(c)
    }

    pub fn inner(&self) -> &Connection {
        &self.0
    }
}

/// A quinn connection as the receive-window tuner sees it.
struct Tuned(Connection);

impl WindowControl for Tuned {
    fn received_bytes(&self) -> u64 {
        self.0.stats().udp_rx.bytes
    }

    fn rtt(&self) -> Option<Duration> {
        Some(self.0.rtt())
    }

    fn set_receive_window(&self, bytes: u64) {
        self.0
            .set_receive_window(VarInt::from_u64(bytes).unwrap_or(VarInt::MAX));
    }

    async fn closed(&self) {
        self.0.closed().await;
    }
}
