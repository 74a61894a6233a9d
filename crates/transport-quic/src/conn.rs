//! The engine's connection and stream traits over quinn.

use porthole_engine::quic_params::QuicParams;
use porthole_engine::windows;
use quinn::Connection;

porthole_engine::quic_adapter!(
    quinn,
    QuicConn,
    QuicSend,
    QuicRecv,
    peer = |c| c.remote_address().to_string(),
    peer_key = |c| c.remote_address().ip().to_canonical().to_string(),
    rtt = |c| Some(c.rtt()),
    path = |c| Some(porthole_engine::transport::PathNow {
        kind: porthole_engine::transport::PathKind::Direct(c.remote_address()),
        rtt: Some(c.rtt()),
    }),
    heard = |s| {
        let f = &s.frame_rx;
        f.acks + f.ping + f.stream + f.datagram
    },
    read_chunks = read_chunks
);

impl QuicConn {
    /// Wraps an established connection and starts sizing its windows to the path
    /// (`porthole_engine::windows`), within `quic`'s caps. Call from within the tokio
    /// runtime.
    pub fn new(c: Connection, quic: &QuicParams) -> Self {
        let conn = Self(c);
        windows::spawn_tuner(conn.clone(), quic);
        conn
    }

    pub fn inner(&self) -> &Connection {
        &self.0
    }
}
