//! Local UDP on the client: one flow per local peer address, so replies reach exactly
//! the peer that sent the request, and two peers on one forward never see each
//! other's packets.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use porthole_proto::datagram::{FlowKey, Received, Receiver};
use tokio::net::UdpSocket;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::{ClientConfig, Session};
use crate::telemetry::{Discard, ForwardLive};
use crate::transport::Connection;
use crate::udp::{DropCounter, Listening, UDP_BUF, send_payload};

/// One UDP forward's local socket, for the whole run (across reconnects).
pub(crate) struct UdpForward {
    local: Listening,
    /// Which forward it is (its index in the config): the id comes with each session.
    index: usize,
}

impl UdpForward {
    pub fn new(
        socket: Arc<UdpSocket>,
        index: usize,
        config: &ClientConfig,
        live: Arc<ForwardLive>,
    ) -> Self {
        Self {
            local: Listening::new(
                socket,
                live,
                config.udp_idle_timeout,
                config.max_udp_flows,
                config.telemetry.clone(),
            ),
            index,
        }
    }

    /// Local peers -> tunnel, for the whole run (across reconnects).
    pub async fn local_loop<C: Connection>(
        self: Arc<Self>,
        sessions: watch::Receiver<Option<Arc<Session<C>>>>,
        cancel: CancellationToken,
    ) {
        let local = &self.local;
        let mut buf = vec![0u8; UDP_BUF];
        let mut sweep = local.sweep_timer();
        loop {
            let (n, flow_id) = tokio::select! {
                _ = cancel.cancelled() => return,
                d = local.next_datagram(&mut buf, &mut sweep) => d,
            };
            let session = sessions.borrow().clone();
            let Some(session) = session else {
                local.discard(Discard::Tunnel, &"tunnel is down");
                continue;
            };
            let Some(&forward_id) = session.forward_ids.get(self.index) else {
                continue;
            };
            let key = FlowKey {
                forward_id,
                flow_id,
            };
            match send_payload(&session.conn, key, &local.packet_ids, &buf[..n]) {
                Ok(()) => local.live.add_up(n as u64),
                Err(e) => local.discard(Discard::Tunnel, &format_args!("to tunnel: {e}")),
            }
        }
    }

    /// Tunnel -> the local peer that owns `flow_id`.
    fn deliver(&self, flow_id: u32, payload: &[u8]) {
        self.local.to_peer(flow_id, payload);
    }
}

/// Reads the session's datagrams and hands each to its forward, until the session ends.
pub(crate) async fn datagram_loop<C: Connection>(
    session: Arc<Session<C>>,
    forwards: Arc<Vec<Option<Arc<UdpForward>>>>,
    published: Option<Arc<super::publish::ReverseUdp<C>>>,
) {
    let by_id: HashMap<u16, usize> = session
        .forward_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (*id, i))
        .collect();
    let unknown = DropCounter::new("UDP datagrams discarded");
    let mut rx = Receiver::default();
    let route = |flow: FlowKey, payload: &[u8]| match by_id
        .get(&flow.forward_id)
        .and_then(|i| forwards.get(*i))
        .and_then(|f| f.as_ref())
    {
        Some(f) => f.deliver(flow.flow_id, payload),
        // A SOCKS association's destination (a forward opened on demand)?
        None => match session.routed(flow.forward_id, flow.flow_id) {
            Some(to) => {
                if to
                    .try_send((flow.forward_id, Bytes::copy_from_slice(payload)))
                    .is_err()
                {
                    unknown.add(1, &"a SOCKS association is not keeping up");
                }
            }
            None => unknown.add(1, &"datagram for an unknown forward"),
        },
    };
    while let Ok(data) = session.conn.read_datagram().await {
        match rx.receive(&data, Instant::now()) {
            Received::Payload(flow, payload) if session.publish_ids.contains(&flow.forward_id) => {
                match &published {
                    Some(p) => p.deliver(flow, &payload),
                    None => unknown.add(1, &"datagram for an unknown publish"),
                }
            }
            Received::Payload(flow, payload) => route(flow, &payload),
            Received::Pending => {}
            Received::Dropped(why) => unknown.add(1, &why),
        }
        unknown.add(
            rx.take_timed_out(),
            &"incomplete fragmented datagrams timed out",
        );
    }
}
