//! A published UDP port: one flow per visitor address, datagrams under the publish id.

use std::sync::Arc;

use porthole_proto::datagram::FlowKey;
use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::telemetry::{Discard, ForwardLive};
use crate::transport::Connection;
use crate::udp::{Listening, UDP_BUF, send_payload};

/// A published UDP port held by one session: one flow per visitor address.
pub(crate) struct PublishedUdp<C> {
    conn: C,
    publish_id: u16,
    visitors: Listening,
}

impl<C: Connection> PublishedUdp<C> {
    pub fn new(
        conn: C,
        socket: Arc<UdpSocket>,
        publish_id: u16,
        live: Arc<ForwardLive>,
        config: &crate::server::ServerConfig,
    ) -> Self {
        Self {
            conn,
            publish_id,
            visitors: Listening::new(
                socket,
                live,
                config.udp_idle_timeout,
                config.max_udp_flows,
                config.telemetry.clone(),
            ),
        }
    }

    /// Visitors -> client, until `stop`.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        let visitors = &self.visitors;
        let mut buf = vec![0u8; UDP_BUF];
        let mut sweep = visitors.sweep_timer();
        loop {
            let (n, flow_id) = tokio::select! {
                _ = stop.cancelled() => return,
                _ = self.conn.closed() => return,
                d = visitors.next_datagram(&mut buf, &mut sweep) => d,
            };
            let key = FlowKey {
                forward_id: self.publish_id,
                flow_id,
            };
            // Up: from the listening side's peer into the tunnel (as on the client).
            match send_payload(&self.conn, key, &visitors.packet_ids, &buf[..n]) {
                Ok(()) => visitors.live.add_up(n as u64),
                Err(e) => visitors.discard(Discard::Tunnel, &format_args!("to client: {e}")),
            }
        }
    }

    /// Client -> the visitor that owns `flow_id`.
    pub fn deliver(&self, flow_id: u32, payload: &[u8]) {
        self.visitors.to_peer(flow_id, payload);
    }
}
