//! The engine's connection and stream traits over quinn.

use porthole_engine::receive_window;
use quinn::Connection;

porthole_engine::quic_adapter!(
    quinn,
    QuicConn,
    QuicSend,
    QuicRecv,
    peer = |c| c.remote_address().to_string(),
    rtt = |c| Some(c.rtt()),
    read_chunks = read_chunks
);

impl QuicConn {
    /// Wraps an established connection and starts sizing its receive window to the path
    /// (`porthole_engine::receive_window`), up to `window`. Call from within the tokio
    /// runtime.
    pub fn new(c: Connection, window: u64) -> Self {
        let conn = Self(c);
        receive_window::spawn_tuner(conn.clone(), window);
        conn
    }

    pub fn inner(&self) -> &Connection {
        &self.0
    }
}
