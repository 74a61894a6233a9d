//! Local TCP connections on the client: each rides its own stream of the current tunnel.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use porthole_proto::message::StreamHeader;
use porthole_proto::proxy_header;
use porthole_proto::resume::ResumableHeader;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::{ProxyProtocol, Sessions};
use crate::control::write_frame;
use crate::resume::carry::Link;
use crate::resume::streams::alive_of;
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
    let resumable = session.book.clone().map(|b| {
        let stream = b.next_stream();
        (b, stream)
    });
    let started = match &resumable {
        Some((_, stream)) => {
            let stream = *stream;
            write_frame(&mut send, &ResumableHeader::Open { forward_id, stream }).await
        }
        None => write_frame(&mut send, &StreamHeader { forward_id }).await,
    };
    if let Err(e) = started {
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
    tune_tcp(&tcp);
    let end = match resumable {
        // Resumable: what goes ahead is part of the stream, kept for replay like the rest.
        Some((book, stream)) => {
            let first = Link {
                send,
                recv,
                peer_received: 0,
                alive: alive_of(&session.conn),
            };
            // The carry outlives this connection: it holds nothing of the session.
            drop(session);
            let ctl = Controls::meter(&meter);
            match book
                .streams
                .carry(stream, tcp, first, Some(ahead.into()), ctl)
                .await
            {
                Some(end) => end,
                None => return warn!(stream, "stream number in use (a bug): dropped"),
            }
        }
        None => {
            if !ahead.is_empty()
                && let Err(e) = send.write_all(&ahead).await
            {
                warn!("cannot start stream: {e}");
                abort_tcp(&tcp);
                return;
            }
            splice(tcp, send, recv, Controls::meter(&meter)).await
        }
    };
    match end {
        SpliceEnd::Clean { up, down } => debug!(sent = up, received = down, "closed"),
        SpliceEnd::Aborted { up, down, error } => {
            debug!(sent = up, received = down, "aborted: {error}")
        }
    }
}
