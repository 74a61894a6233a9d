//! A TCP data stream on the server: header, dial the checked address, splice.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use porthole_proto::close::StreamCode;
use porthole_proto::message::StreamHeader;
use porthole_proto::source::Protocol;
use tokio::net::TcpStream;
use tracing::{debug, warn};

use super::forwards::Forwards;
use super::{ClientShared, Shared};
use crate::control::read_frame;
use crate::splice::{Controls, SpliceEnd, splice, tune_tcp};
use crate::telemetry::{Refusal, Side};
use crate::transport::{RecvStream, SendStream};

pub(crate) async fn handle_stream<S: SendStream, R: RecvStream>(
    mut send: S,
    mut recv: R,
    forwards: Arc<Forwards>,
    client: Arc<ClientShared>,
    shared: Arc<Shared>,
) {
    let config = &shared.config;
    let refuse = |send: &mut S, recv: &mut R, code: StreamCode| {
        send.reset(code.as_u32());
        recv.stop(code.as_u32());
    };
    let header = match tokio::time::timeout(
        config.header_timeout,
        read_frame::<StreamHeader, _>(&mut recv),
    )
    .await
    {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            debug!("bad stream header: {e}");
            return refuse(&mut send, &mut recv, StreamCode::BadHeader);
        }
        Err(_) => {
            debug!("stream header timed out");
            return refuse(&mut send, &mut recv, StreamCode::BadHeader);
        }
    };
    let Some(forward) = forwards
        .get(header.forward_id)
        .filter(|f| f.source.protocol == Protocol::Tcp && !f.closed.is_cancelled())
    else {
        warn!(
            forward_id = header.forward_id,
            "stream for a forward this connection never opened"
        );
        return refuse(&mut send, &mut recv, StreamCode::UnknownForward);
    };
    let Some(_claim) = client.claim(false) else {
        warn!("stream refused: the client is at its stream limit (max_streams)");
        config.telemetry.refused(Refusal::StreamLimit);
        return refuse(&mut send, &mut recv, StreamCode::Limit);
    };
    let tcp = match dial(&forward.addrs, config.dial_timeout).await {
        Ok(tcp) => tcp,
        Err(e) => {
            warn!("target {} unreachable: {e}", forward.source);
            config.telemetry.refused(Refusal::TargetUnreachable);
            return refuse(&mut send, &mut recv, StreamCode::TargetUnreachable);
        }
    };
    tune_tcp(&tcp);
    let meter = forward.live.stream(Side::Server, None);
    // Seen from the target: read from TCP is down (toward the client), written is up.
    let ctl = Controls {
        meter: &meter,
        stop: Some(&forward.closed),
        from_tcp: Some(&client.caps.down),
        to_tcp: Some(&client.caps.up),
    };
    match splice(tcp, send, recv, ctl).await {
        SpliceEnd::Clean { up, down } => debug!(to_target = down, from_target = up, "stream done"),
        SpliceEnd::Aborted { up, down, error } => {
            debug!(
                to_target = down,
                from_target = up,
                "stream aborted: {error}"
            )
        }
    }
}

/// Connects to the first address that answers, each attempt bounded by `timeout`.
pub(crate) async fn dial(addrs: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to dial");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{addr}: connect timed out"),
                )
            }
        }
    }
    Err(last)
}
