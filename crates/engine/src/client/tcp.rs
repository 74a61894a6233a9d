//! Local TCP connections on the client: each rides its own stream of the current tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use porthole_proto::message::StreamHeader;
use porthole_proto::proxy_header;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::{ProxyProtocol, Sessions};
use crate::control::write_frame;
use crate::splice::{Controls, SpliceEnd, abort_tcp, splice, tune_tcp};
use crate::telemetry::{ForwardLive, Side, StreamMeter};
use crate::transport::Connection;

/// Which forward a listener serves (its index in the config) and its PROXY protocol.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TcpForward {
    pub index: usize,
    pub proxy: ProxyProtocol,
}

pub(crate) async fn accept_loop<C: Connection>(
    listener: TcpListener,
    forward: TcpForward,
    sessions: Sessions<C>,
    wait: Duration,
    live: Arc<ForwardLive>,
    first_byte: Option<prometheus_client::metrics::histogram::Histogram>,
    cancel: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((tcp, from)) => {
                let span = info_span!("tcp", %from);
                // Counted from here: time to first byte includes waiting for the tunnel.
                let meter = live.stream(Side::Client, first_byte.clone());
                tokio::spawn(
                    handle(tcp, from, forward, sessions.clone(), wait, meter).instrument(span),
                );
            }
            Err(e) => {
                // Usually out of file descriptors: back off instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle<C: Connection>(
    mut tcp: TcpStream,
    from: SocketAddr,
    TcpForward { index, proxy }: TcpForward,
    mut sessions: Sessions<C>,
    wait: Duration,
    meter: StreamMeter,
) {
    // Behind a load balancer: the user is who its header names; bytes read past the
    // header go to the target first.
    let (user, early) = if proxy.accept {
        match crate::net::read_proxy_header(&mut tcp).await {
            Ok((source, early)) => (source.unwrap_or(from), early),
            Err(e) => {
                warn!("refusing the connection from {from}: {e}");
                abort_tcp(&tcp);
                return;
            }
        }
    } else {
        (from, Vec::new())
    };
    let Some(session) = super::wait_for_session(&mut sessions, wait).await else {
        warn!("tunnel not up within {wait:?}: resetting connection from {from}");
        abort_tcp(&tcp);
        return;
    };
    let Some(&forward_id) = session.forward_ids.get(index) else {
        abort_tcp(&tcp);
        return;
    };
    let (mut send, recv) = match session.conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot open a stream: {e}");
            abort_tcp(&tcp);
            return;
        }
    };
    // The header goes out with (or just before) the user's first bytes: no round trip.
    if let Err(e) = write_frame(&mut send, &StreamHeader { forward_id }).await {
        warn!("cannot start stream: {e}");
        abort_tcp(&tcp);
        return;
    }
    // Only forwards with PROXY protocol pay for the header (and the local_addr call).
    let mut ahead = match proxy.send {
        Some(version) => tcp
            .local_addr()
            .map(|local| proxy_header::encode(version, user, local))
            .unwrap_or_default(),
        None => Vec::new(),
    };
    ahead.extend_from_slice(&early);
    if !ahead.is_empty()
        && let Err(e) = send.write_all(&ahead).await
    {
        warn!("cannot start stream: {e}");
        abort_tcp(&tcp);
        return;
    }
    tune_tcp(&tcp);
    match splice(tcp, send, recv, Controls::meter(&meter)).await {
        SpliceEnd::Clean { up, down } => debug!(sent = up, received = down, "closed"),
        SpliceEnd::Aborted { up, down, error } => {
            debug!(sent = up, received = down, "aborted: {error}")
        }
    }
}
