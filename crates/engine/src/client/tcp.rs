//! Local TCP connections on the client: each rides its own stream of the current tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use porthole_proto::message::StreamHeader;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::Sessions;
use crate::control::write_frame;
use crate::splice::{Controls, SpliceEnd, abort_tcp, splice, tune_tcp};
use crate::telemetry::{ForwardLive, Side, StreamMeter};
use crate::transport::Connection;

pub(crate) async fn accept_loop<C: Connection>(
    listener: TcpListener,
    index: usize,
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
                    handle(tcp, from, index, sessions.clone(), wait, meter).instrument(span),
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
    tcp: TcpStream,
    from: SocketAddr,
    index: usize,
    mut sessions: Sessions<C>,
    wait: Duration,
    meter: StreamMeter,
) {
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
    tune_tcp(&tcp);
    match splice(tcp, send, recv, Controls::meter(&meter)).await {
        SpliceEnd::Clean { up, down } => debug!(sent = up, received = down, "closed"),
        SpliceEnd::Aborted { up, down, error } => {
            debug!(sent = up, received = down, "aborted: {error}")
        }
    }
}
