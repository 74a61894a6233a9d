//! One client connection on the server: auth gate, control stream, streams, datagrams.

use std::sync::Arc;
use std::time::Instant;

use porthole_proto::PROTOCOL_VERSION;
use porthole_proto::close::CloseCode;
use porthole_proto::message::{
    AuthRequest, AuthResponse, ControlRequest, ControlResponse, RejectReason, clamp_detail,
};
use porthole_proto::source::Source;
use porthole_proto::token::AuthToken;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::forwards::Forwards;
use super::udp::ServerUdp;
use super::{ServerConfig, Shared};
use crate::control::{ControlError, read_frame, read_frame_or_eof, write_frame};
use crate::telemetry::{Refusal, SessionGuard, token_label};
use crate::transport::{Connection, ConnectionEnd};

enum AuthFailure {
    /// Close with this code and wire reason; log the detail (never sent to the peer).
    Close(CloseCode, &'static [u8], String),
    /// The connection went away while authenticating.
    Gone(String),
}

pub(crate) async fn serve<C: Connection>(
    conn: C,
    shared: Arc<Shared>,
    pending: OwnedSemaphorePermit,
    shutdown: CancellationToken,
) {
    let peer = conn.peer();
    tracing::Span::current().record("peer", tracing::field::display(&peer));
    let config = &shared.config;
    // The limiter's key: the full identity, not the short name in the logs.
    let key = conn.peer_key();

    if let Some(wait) = shared.limiter.check(&key, Instant::now()) {
        info!("refusing connection: too many failed auths, blocked for another {wait:?}");
        config.telemetry.refused(Refusal::RateLimited);
        conn.close(CloseCode::RateLimited.as_u32(), b"rate limited");
        return;
    }

    let auth = tokio::time::timeout(config.auth_timeout, authenticate(&conn, config));
    let (mut control_send, mut control_recv, client) = match auth.await {
        Ok(Ok(streams)) => streams,
        Ok(Err(AuthFailure::Close(code, reason, log))) => {
            config.telemetry.refused(match code {
                CloseCode::AuthFailed => Refusal::AuthFailed,
                CloseCode::UnsupportedVersion => Refusal::UnsupportedVersion,
                _ => Refusal::ProtocolError,
            });
            if code == CloseCode::AuthFailed {
                match shared.limiter.failure(&key, Instant::now()) {
                    Some(b) => warn!("auth failed ({log}); peer blocked for {b:?}"),
                    None => warn!("auth failed ({log})"),
                }
            } else {
                warn!("closing connection: {log}");
            }
            conn.close(code.as_u32(), reason);
            return;
        }
        Ok(Err(AuthFailure::Gone(e))) => {
            debug!("connection ended during auth: {e}");
            return;
        }
        Err(_) => {
            warn!("auth timed out after {:?}", config.auth_timeout);
            config.telemetry.refused(Refusal::AuthTimeout);
            conn.close(CloseCode::AuthTimeout.as_u32(), b"auth timeout");
            return;
        }
    };
    shared.limiter.success(&key);

    let Ok(_session) = shared.sessions.clone().try_acquire_owned() else {
        warn!(
            "session limit ({}) reached; refusing client",
            config.max_sessions
        );
        config.telemetry.refused(Refusal::SessionLimit);
        conn.close(CloseCode::ServerBusy.as_u32(), b"server busy");
        return;
    };
    drop(pending);

    let accepted = AuthResponse::Accepted {
        version: PROTOCOL_VERSION,
        max_streams: config.max_streams,
    };
    if let Err(e) = write_frame(&mut control_send, &accepted).await {
        debug!("could not answer auth: {e}");
        return;
    }
    info!(%client, "client authenticated");
    let path_of = conn.clone();
    let session = config
        .telemetry
        .session(client, peer, Box::new(move || path_of.path()));

    let forwards = Arc::new(Forwards::default());
    let cancel = shutdown.child_token();
    let tasks = TaskTracker::new();
    let udp = Arc::new(ServerUdp::new(
        conn.clone(),
        forwards.clone(),
        config,
        cancel.clone(),
    ));
    tasks.spawn(udp.datagram_loop().in_current_span());

    let control = async {
        serve_control(
            &conn,
            &mut control_send,
            &mut control_recv,
            &forwards,
            config,
            &session,
        )
        .await;
        // The control stream may end while the connection lives on: park this arm.
        std::future::pending::<ConnectionEnd>().await
    };
    let streams = async {
        let mut n: u64 = 0;
        while let Ok((send, recv)) = conn.accept_bi().await {
            n += 1;
            tasks.spawn(
                super::tcp::handle_stream(send, recv, forwards.clone(), shared.clone())
                    .instrument(info_span!("stream", n)),
            );
        }
        conn.closed().await
    };
    let end = tokio::select! {
        end = control => end,
        end = streams => end,
        _ = shutdown.cancelled() => {
            conn.close(CloseCode::Shutdown.as_u32(), b"server shutting down");
            ConnectionEnd::Local
        }
    };
    cancel.cancel();
    tasks.close();
    info!("client disconnected: {end}");
}

/// Answers forward requests until the client finishes the control stream.
async fn serve_control<C: Connection>(
    conn: &C,
    send: &mut C::Send,
    recv: &mut C::Recv,
    forwards: &Forwards,
    config: &ServerConfig,
    session: &SessionGuard,
) {
    loop {
        let request = match read_frame_or_eof::<ControlRequest, _>(recv).await {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(ControlError::Frame(e)) => {
                warn!("malformed control message: {e}");
                conn.close(
                    CloseCode::ProtocolError.as_u32(),
                    b"malformed control message",
                );
                return;
            }
            Err(e) => {
                debug!("control stream ended: {e}");
                return;
            }
        };
        let ControlRequest::OpenForward { request_id, source } = request;
        let source: Source = match source.parse() {
            Ok(s) => s,
            Err(e) => {
                let text: String = source.chars().take(80).collect();
                warn!("forward {text:?} refused: invalid source: {e}");
                config
                    .telemetry
                    .refused(Refusal::Forward(RejectReason::InvalidSource));
                let reply = ControlResponse::ForwardRejected {
                    request_id,
                    reason: RejectReason::InvalidSource,
                    detail: clamp_detail(&e.to_string()),
                };
                if write_frame(send, &reply).await.is_err() {
                    return;
                }
                continue;
            }
        };
        let reply = match config.policy.resolve(&source, config.resolve_timeout).await {
            Ok(resolved) => {
                let addrs = resolved.addrs.clone();
                let label = source.to_string();
                let live = |id: u16| session.forward(id.into(), &label);
                match forwards.push(resolved, config.max_forwards, live) {
                    Some(forward_id) => {
                        info!(forward_id, "forward {source} accepted -> {addrs:?}");
                        ControlResponse::ForwardAccepted {
                            request_id,
                            forward_id,
                        }
                    }
                    None => {
                        config.telemetry.refused(Refusal::ForwardLimit);
                        ControlResponse::ForwardRejected {
                            request_id,
                            reason: RejectReason::TooManyForwards,
                            detail: format!(
                                "at most {} forwards per connection",
                                config.max_forwards
                            ),
                        }
                    }
                }
            }
            Err(refusal) => {
                warn!(
                    "forward {source} refused: {}: {}",
                    refusal.reason, refusal.detail
                );
                config.telemetry.refused(Refusal::Forward(refusal.reason));
                ControlResponse::ForwardRejected {
                    request_id,
                    reason: refusal.reason,
                    detail: clamp_detail(&refusal.detail),
                }
            }
        };
        if write_frame(send, &reply).await.is_err() {
            return;
        }
    }
}

async fn authenticate<C: Connection>(
    conn: &C,
    config: &ServerConfig,
) -> Result<(C::Send, C::Recv, String), AuthFailure> {
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| AuthFailure::Gone(e.to_string()))?;
    let request: AuthRequest = match read_frame(&mut recv).await {
        Ok(r) => r,
        Err(ControlError::Frame(e)) => {
            return Err(AuthFailure::Close(
                CloseCode::ProtocolError,
                b"malformed auth request",
                format!("malformed auth request: {e}"),
            ));
        }
        Err(ControlError::Eof) => {
            return Err(AuthFailure::Close(
                CloseCode::ProtocolError,
                b"malformed auth request",
                "auth stream ended before a complete request".into(),
            ));
        }
        Err(e) => return Err(AuthFailure::Gone(e.to_string())),
    };
    if request.version != PROTOCOL_VERSION {
        return Err(AuthFailure::Close(
            CloseCode::UnsupportedVersion,
            b"unsupported protocol version",
            format!(
                "client speaks protocol version {}, this server speaks {PROTOCOL_VERSION}",
                request.version
            ),
        ));
    }
    // A malformed token is simply a wrong token: the difference stays out of the reply.
    let accepted = match request.token.parse::<AuthToken>() {
        Ok(token) if config.tokens.contains(&token) => Some(token_label(&token)),
        _ => None,
    };
    let Some(client) = accepted else {
        return Err(AuthFailure::Close(
            CloseCode::AuthFailed,
            b"auth failed",
            "token not accepted".into(),
        ));
    };
    Ok((send, recv, client))
}
