//! The engine's connection and stream traits over iroh's QUIC (noq) types.

use iroh::endpoint as noq;

use crate::paths::{self, PathInfo};

porthole_engine::quic_adapter!(
    noq,
    IrohConn,
    IrohSend,
    IrohRecv,
    peer = |c| c.remote_id().fmt_short().to_string(),
    peer_key = |c| c.remote_id().to_string(),
    rtt = |c| crate::paths::selected(c).map(|p| p.rtt),
    path = |c| crate::paths::selected(c).map(crate::paths::PathInfo::now),
    heard = |s| {
        let f = &s.frame_rx;
        f.acks + f.path_acks + f.ping + f.stream + f.datagram
    },
    read_chunks = read_many_chunks
);

impl IrohConn {
    pub fn new(conn: noq::Connection) -> Self {
        Self(conn)
    }

    pub fn inner(&self) -> &noq::Connection {
        &self.0
    }

    /// The path currently carrying data, with its RTT.
    pub fn path(&self) -> Option<PathInfo> {
        paths::selected(&self.0)
    }
}
