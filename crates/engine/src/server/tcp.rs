//! A TCP data stream on the server: header, dial the checked address, splice.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use porthole_proto::close::StreamCode;
use porthole_proto::message::StreamHeader;
use porthole_proto::source::Protocol;
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use porthole_proto::message::{DYNAMIC_FORWARD, DynamicReply, DynamicTarget, Unreachable};
use porthole_proto::source::Source;
use tokio::sync::watch;

use super::forwards::Forwards;
use super::{ClientShared, Shared};
use crate::access::ClientRule;
use crate::control::read_frame;
use crate::control::write_frame;
use crate::resume::acks::ACK_INTERVAL;
use crate::resume::carry::{Alive, Link};
use crate::resume::streams::Streams;
use crate::splice::{Controls, SpliceEnd, splice, tune_tcp};
use crate::telemetry::{ForwardLive, SessionForwards};
use crate::telemetry::{Refusal, Side};
use crate::transport::{RecvStream, SendStream};
use porthole_proto::resume::ResumableHeader;
use porthole_proto::upgrade::{Declined, UpgradeAnswer};

/// What every stream of one session shares.
pub(crate) struct StreamCtx {
    pub forwards: Arc<Forwards>,
    pub client: Arc<ClientShared>,
    /// The client's rules in force (dynamic streams are checked against them).
    pub rule: watch::Receiver<Arc<ClientRule>>,
    /// The counters of the session's dynamic streams (SOCKS / HTTP CONNECT), made when
    /// the first one opens (a session without any shows none).
    pub dynamic: std::sync::OnceLock<Arc<ForwardLive>>,
    pub session: SessionForwards,
    pub shared: Arc<Shared>,
}

/// What a stream of a resumable session needs besides the session's context.
pub(crate) struct Resumable<S, R> {
    pub streams: Arc<Streams<S, R>>,
    /// Whether this connection is still up (for the links of carries on it).
    pub alive: Alive,
    /// The session's id, as logged (what a direct upgrade is keyed on).
    pub session: Arc<str>,
}

impl<S, R> Clone for Resumable<S, R> {
    fn clone(&self) -> Self {
        Self {
            streams: Arc::clone(&self.streams),
            alive: Arc::clone(&self.alive),
            session: Arc::clone(&self.session),
        }
    }
}

fn refuse<S: SendStream, R: RecvStream>(send: &mut S, recv: &mut R, code: StreamCode) {
    send.reset(code.as_u32());
    recv.stop(code.as_u32());
}

/// The stream's first frame, within the header timeout; the stream is refused otherwise.
async fn read_header<T, S, R>(send: &mut S, recv: &mut R, ctx: &StreamCtx) -> Option<T>
where
    T: serde::de::DeserializeOwned,
    S: SendStream,
    R: RecvStream,
{
    let timeout = ctx.shared.config.header_timeout;
    match tokio::time::timeout(timeout, read_frame::<T, _>(recv)).await {
        Ok(Ok(h)) => Some(h),
        Ok(Err(e)) => {
            debug!("bad stream header: {e}");
            refuse(send, recv, StreamCode::BadHeader);
            None
        }
        Err(_) => {
            debug!("stream header timed out");
            refuse(send, recv, StreamCode::BadHeader);
            None
        }
    }
}

pub(crate) async fn handle_stream<S: SendStream, R: RecvStream>(
    mut send: S,
    mut recv: R,
    ctx: Arc<StreamCtx>,
) {
    let Some(header) = read_header::<StreamHeader, _, _>(&mut send, &mut recv, &ctx).await else {
        return;
    };
    forward(send, recv, &ctx, header.forward_id, None).await
}

/// A stream of a resumable session: a new resumable TCP connection, one resumed, the
/// session's acknowledgements, or a plain (dynamic) stream.
pub(crate) async fn handle_resumable<S: SendStream, R: RecvStream>(
    mut send: S,
    mut recv: R,
    ctx: Arc<StreamCtx>,
    r: Resumable<S, R>,
) {
    let Some(header) = read_header::<ResumableHeader, _, _>(&mut send, &mut recv, &ctx).await
    else {
        return;
    };
    match header {
        ResumableHeader::Plain { forward_id } => forward(send, recv, &ctx, forward_id, None).await,
        ResumableHeader::Open { forward_id, stream } => {
            if forward_id == DYNAMIC_FORWARD || r.streams.get(stream).is_some() {
                warn!(
                    stream,
                    "resumable stream refused: dynamic, or its number is in use"
                );
                return refuse(&mut send, &mut recv, StreamCode::BadHeader);
            }
            forward(send, recv, &ctx, forward_id, Some((&r, stream))).await
        }
        ResumableHeader::Resume { stream, received } => {
            match r
                .streams
                .answer_resume(stream, received, send, recv, r.alive.clone())
                .await
            {
                Ok(true) => debug!(stream, "resumed"),
                Ok(false) => info!(stream, "resume of a connection that ended here: reset"),
                Err(e) => debug!(stream, "resume failed: {e}"),
            }
        }
        ResumableHeader::Upgrade => {
            let client = ctx.rule.borrow().name.clone();
            let session = r.session.to_string();
            match &ctx.shared.config.upgrade {
                Some(answerer) => {
                    let stream = (Box::new(send) as _, Box::new(recv) as _);
                    answerer.answer(client, session, stream).await
                }
                None => {
                    let declined = UpgradeAnswer::Declined(Declined::Disabled);
                    if let Err(e) = crate::control::write_frame(&mut send, &declined).await {
                        debug!("could not decline an upgrade: {e}");
                    }
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut send).await;
                }
            }
        }
        ResumableHeader::Acks => {
            let ledger = r.streams.ledger();
            let sending = crate::resume::acks::send(&mut send, ledger, ACK_INTERVAL);
            let receiving = crate::resume::acks::receive(&mut recv, ledger);
            // Either end: the connection is going, or the peer broke the protocol.
            tokio::select! {
                e = sending => debug!("acknowledgements not sent: {e:?}"),
                e = receiving => debug!("acknowledgements ended: {e:?}"),
            }
        }
    }
}

/// A TCP forward's stream: dial the forward's target and carry the connection (as
/// resumable stream `stream` when given).
async fn forward<S: SendStream, R: RecvStream>(
    mut send: S,
    mut recv: R,
    ctx: &Arc<StreamCtx>,
    forward_id: u16,
    resumable: Option<(&Resumable<S, R>, u64)>,
) {
    let StreamCtx {
        forwards,
        client,
        shared,
        ..
    } = &**ctx;
    let config = &shared.config;
    if forward_id == DYNAMIC_FORWARD {
        return dynamic(send, recv, ctx).await;
    }
    let Some(forward) = forwards
        .get(forward_id)
        .filter(|f| f.source.protocol == Protocol::Tcp && !f.closed.is_cancelled())
    else {
        warn!(
            forward_id,
            "stream for a forward this connection never opened"
        );
        return refuse(&mut send, &mut recv, StreamCode::UnknownForward);
    };
    let Some(_claim) = client.claim(false) else {
        warn!("stream refused: the client is at its stream limit (max_streams)");
        config.telemetry.refused(Refusal::StreamLimit);
        return refuse(&mut send, &mut recv, StreamCode::Limit);
    };
    let tcp = match crate::net::dial(&forward.addrs, config.dial_timeout).await {
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
    let end = match resumable {
        None => splice(tcp, send, recv, ctl).await,
        Some((r, stream)) => {
            let first = Link {
                send,
                recv,
                peer_received: 0,
                alive: r.alive.clone(),
            };
            match r.streams.carry(stream, tcp, first, None, ctl).await {
                Some(end) => end,
                None => return warn!(stream, "resumable stream number in use: refused"),
            }
        }
    };
    match end {
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

/// A dynamic stream: the destination comes with the stream, is checked against the
/// client's rules in force, and the answer goes back before any data.
async fn dynamic<S: SendStream, R: RecvStream>(mut send: S, mut recv: R, ctx: &StreamCtx) {
    let config = &ctx.shared.config;
    let target = match tokio::time::timeout(
        config.header_timeout,
        read_frame::<DynamicTarget, _>(&mut recv),
    )
    .await
    {
        Ok(Ok(t)) => t,
        _ => return refuse(&mut send, &mut recv, StreamCode::BadHeader),
    };
    let reply_refused = |reason, detail: String| DynamicReply::Refused {
        reason,
        detail: porthole_proto::message::clamp_detail(&detail),
    };
    let source = match target.source.parse::<Source>() {
        Ok(s) if s.protocol == Protocol::Tcp => s,
        Ok(_) => {
            let r = reply_refused(
                porthole_proto::message::RejectReason::InvalidSource,
                "dynamic streams carry TCP only".into(),
            );
            let _ = write_frame(&mut send, &r).await;
            return refuse(&mut send, &mut recv, StreamCode::UnknownForward);
        }
        Err(e) => {
            let r = reply_refused(
                porthole_proto::message::RejectReason::InvalidSource,
                e.to_string(),
            );
            let _ = write_frame(&mut send, &r).await;
            return refuse(&mut send, &mut recv, StreamCode::UnknownForward);
        }
    };
    let policy = ctx.rule.borrow().policy.clone();
    let resolved = match policy.resolve(&source, config.resolve_timeout).await {
        Ok(r) => r,
        Err(refusal) => {
            warn!(
                "dynamic {source} refused: {}: {}",
                refusal.reason, refusal.detail
            );
            config.telemetry.refused(Refusal::Forward(refusal.reason));
            let _ = write_frame(&mut send, &reply_refused(refusal.reason, refusal.detail)).await;
            let _ = send.shutdown().await;
            return;
        }
    };
    let Some(_claim) = ctx.client.claim(false) else {
        config.telemetry.refused(Refusal::StreamLimit);
        return refuse(&mut send, &mut recv, StreamCode::Limit);
    };
    let tcp = match crate::net::dial(&resolved.addrs, config.dial_timeout).await {
        Ok(tcp) => tcp,
        Err(e) => {
            debug!("dynamic {source} unreachable: {e}");
            config.telemetry.refused(Refusal::TargetUnreachable);
            let kind = match e.kind() {
                io::ErrorKind::ConnectionRefused => Unreachable::Refused,
                io::ErrorKind::TimedOut => Unreachable::TimedOut,
                _ => Unreachable::Other,
            };
            let r = DynamicReply::Unreachable {
                kind,
                detail: porthole_proto::message::clamp_detail(&e.to_string()),
            };
            let _ = write_frame(&mut send, &r).await;
            let _ = send.shutdown().await;
            return;
        }
    };
    let addr = tcp.peer_addr().map(|a| a.to_string()).unwrap_or_default();
    if write_frame(&mut send, &DynamicReply::Connected { addr: addr.clone() })
        .await
        .is_err()
    {
        return;
    }
    info!("dynamic {source} -> {addr}");
    tune_tcp(&tcp);
    let live = ctx
        .dynamic
        .get_or_init(|| ctx.session.forward(DYNAMIC_FORWARD.into(), "dynamic"));
    let meter = live.stream(Side::Server, None);
    // Rules that change while the stream runs are checked as for fixed forwards: a
    // destination they no longer allow ends the stream.
    let stop = CancellationToken::new();
    let watcher = tokio::spawn(close_when_disallowed(
        ctx.rule.clone(),
        resolved.addrs.clone(),
        source.clone(),
        stop.clone(),
    ));
    let ctl = Controls {
        meter: &meter,
        stop: Some(&stop),
        from_tcp: Some(&ctx.client.caps.down),
        to_tcp: Some(&ctx.client.caps.up),
    };
    if let SpliceEnd::Aborted { error, .. } = splice(tcp, send, recv, ctl).await {
        debug!("dynamic {source}: aborted: {error}");
    }
    watcher.abort();
}

/// Cancels `stop` once the client's rules in force no longer allow `addrs`.
async fn close_when_disallowed(
    mut rule: watch::Receiver<Arc<ClientRule>>,
    addrs: Vec<SocketAddr>,
    source: Source,
    stop: CancellationToken,
) {
    while rule.changed().await.is_ok() {
        let current = rule.borrow_and_update().clone();
        if !current.allows(Protocol::Tcp, &addrs) {
            warn!(
                "dynamic {source} closed: no longer allowed for client {}",
                current.name
            );
            stop.cancel();
            return;
        }
    }
}
