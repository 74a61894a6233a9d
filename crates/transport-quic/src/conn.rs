//! The engine's connection and stream traits over quinn.

use quinn::Connection;

porthole_engine::quic_adapter!(
    quinn,
    QuicConn,
    QuicSend,
    QuicRecv,
    peer = |c| c.remote_address().to_string()
);

impl QuicConn {
    pub fn new(c: Connection) -> Self {
        Self(c)
    }

    pub fn inner(&self) -> &Connection {
        &self.0
    }
}
