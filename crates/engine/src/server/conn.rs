//! One client connection on the server: auth gate, control stream, streams, datagrams.

use std::sync::Arc;
use std::time::Instant;

use porthole_proto::close::CloseCode;
use porthole_proto::key::PROOF_EXPORTER_LABEL;
use porthole_proto::message::{
    AnyAuthRequest, AuthResponse, ControlRequest, ControlResponse, RejectReason, clamp_detail,
};
use porthole_proto::resume::ResumeClaim;
use porthole_proto::source::Source;
use porthole_proto::token::AuthToken;
use porthole_proto::{KEY_AUTH_VERSION, PROTOCOL_VERSION, RESUME_VERSION};
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, info, info_span, warn};

use super::forwards::Forwards;
use super::publish;
use super::udp::ServerUdp;
use super::{ClientShared, ServerConfig, Shared};
use crate::access::{ClientRule, Credential, DEFAULT_CLIENT};
use crate::control::{ControlError, read_frame_body, read_frame_or_eof, write_frame};
use crate::telemetry::{Refusal, SessionGuard, token_label};
use crate::transport::{Connection, ConnectionEnd};
use tokio::sync::watch;

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
    let (mut control_send, mut control_recv, rule, credential, claim) = match auth.await {
        Ok(Ok(streams)) => streams,
        Ok(Err(AuthFailure::Close(code, reason, log))) => {
            config.telemetry.refused(match code {
                CloseCode::AuthFailed => Refusal::AuthFailed,
                CloseCode::AccessRevoked => Refusal::AccessRevoked,
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
    // Clients from the access file go by their name; the flat token list's by a label
    // of the token (never the token itself).
    let client = match &credential {
        Credential::Token(t) if rule.name == DEFAULT_CLIENT => token_label(t),
        _ => rule.name.clone(),
    };
    tracing::Span::current().record("client", tracing::field::display(&client));
    // A connection that takes over a session of this client (a resume, a direct upgrade)
    // replaces the one it ran on, which is closed as it moves: it is not one more.
    let replacing = match &claim {
        Some(Some(c)) if config.resume.enabled() => {
            shared
                .resumable
                .honours(&conn, c, (&rule.name, &credential))
        }
        _ => false,
    };
    let Some(client_slot) = ClientSlot::take(&shared, &rule, replacing) else {
        warn!(
            "client {} is at its session limit ({}); refusing",
            rule.name,
            rule.max_sessions.unwrap_or_default()
        );
        config.telemetry.refused(Refusal::SessionLimit);
        conn.close(CloseCode::ServerBusy.as_u32(), b"client session limit");
        return;
    };

    let _session = match shared.sessions.clone().try_acquire_owned() {
        Ok(permit) => Some(permit),
        Err(_) if replacing => None,
        Err(_) => {
            warn!(
                "session limit ({}) reached; refusing client",
                config.max_sessions
            );
            config.telemetry.refused(Refusal::SessionLimit);
            conn.close(CloseCode::ServerBusy.as_u32(), b"server busy");
            return;
        }
    };
    drop(pending);

    // A client that asked for a resumable session gets one (the one it claims, if its
    // claim holds), unless this server has resuming turned off.
    let book = match claim {
        Some(claim) if config.resume.enabled() => {
            let max = config.max_sessions.saturating_mul(4).max(16);
            match shared.resumable.open(
                &conn,
                claim.as_ref(),
                (&rule.name, &credential),
                &config.resume,
                max,
            ) {
                Ok(opened) => Some(opened),
                Err(e) => {
                    warn!("no resumable session (no random numbers: {e})");
                    None
                }
            }
        }
        _ => None,
    };
    let accepted = match &book {
        Some((book, resumed)) => AuthResponse::Resumable {
            version: RESUME_VERSION,
            max_streams: config.max_streams,
            ticket: book.ticket.clone(),
            resumed: *resumed,
        },
        None => AuthResponse::Accepted {
            version: PROTOCOL_VERSION,
            max_streams: config.max_streams,
        },
    };
    if let Err(e) = write_frame(&mut control_send, &accepted).await {
        debug!("could not answer auth: {e}");
        return;
    }
    let book = book.map(|(book, resumed)| {
        let generation = book.attach(&conn);
        let parked = book.streams.len();
        match resumed {
            true => info!(session = %book.id(), "client authenticated, session resumed ({parked} connection(s) waiting)"),
            false => info!(session = %book.id(), "client authenticated (resumable session)"),
        }
        (book, generation)
    });
    if book.is_none() {
        info!("client authenticated");
    }
    let path_of = conn.clone();
    let session = config
        .telemetry
        .session(client.clone(), peer, Box::new(move || path_of.path()));

    let forwards = Arc::new(Forwards::default());
    let (rule_tx, rule_rx) = watch::channel(rule);
    let cancel = shutdown.child_token();
    let tasks = TaskTracker::new();
    let client_shared = client_slot.client.clone();
    let (visitors_tx, visitors) = tokio::sync::mpsc::channel(publish::VISITOR_QUEUE);
    let holder = publish::Holder {
        session: shared
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        client: client.clone(),
    };
    let publishing = publish::SessionPublish::new(holder, visitors_tx, tasks.clone());
    tasks.spawn(
        publish::carry_visitors(
            conn.clone(),
            visitors,
            client_shared.clone(),
            config.telemetry.clone(),
            config.max_streams as usize,
        )
        .in_current_span(),
    );
    let udp = Arc::new(ServerUdp::new(
        conn.clone(),
        forwards.clone(),
        publishing.udp.clone(),
        client_shared.clone(),
        config,
        cancel.clone(),
    ));
    tasks.spawn(udp.datagram_loop().in_current_span());

    let control = async {
        let ctl = Control {
            conn: &conn,
            forwards: &forwards,
            shared: &shared,
            session: &session,
            rule: &rule_rx,
            publishing: &publishing,
        };
        serve_control(&ctl, &mut control_send, &mut control_recv).await;
        // The control stream may end while the connection lives on: park this arm.
        std::future::pending::<ConnectionEnd>().await
    };
    let ctx = Arc::new(super::tcp::StreamCtx {
        forwards: forwards.clone(),
        client: client_shared.clone(),
        rule: rule_rx.clone(),
        dynamic: Default::default(),
        session: session.forwards(),
        shared: shared.clone(),
    });
    let resumable = book.as_ref().map(|(book, _)| super::tcp::Resumable {
        streams: book.streams.clone(),
        alive: crate::resume::streams::alive_of(&conn),
        session: book.id().to_string().into(),
    });
    let streams = async {
        let mut n: u64 = 0;
        while let Ok((send, recv)) = conn.accept_bi().await {
            n += 1;
            let span = info_span!("stream", n);
            match &resumable {
                Some(r) => tasks.spawn(
                    super::tcp::handle_resumable(send, recv, ctx.clone(), r.clone())
                        .instrument(span),
                ),
                None => {
                    tasks.spawn(super::tcp::handle_stream(send, recv, ctx.clone()).instrument(span))
                }
            };
        }
        conn.closed().await
    };
    let end = tokio::select! {
        end = control => end,
        end = streams => end,
        why = watch_access(config, &credential, &rule_tx, (&forwards, &publishing), &client_slot.client) => {
            warn!("closing the session: {why}");
            conn.close(CloseCode::AccessRevoked.as_u32(), why.as_bytes());
            ConnectionEnd::Local
        }
        _ = shutdown.cancelled() => {
            conn.close(CloseCode::Shutdown.as_u32(), b"server shutting down");
            ConnectionEnd::Local
        }
    };
    cancel.cancel();
    // Published addresses are released now: the server stops listening there.
    drop(publishing);
    tasks.close();
    info!("client disconnected: {end}");
    if let Some((book, generation)) = book {
        keep_or_end(&shared, &book, generation, &end);
    }
}

/// After a resumable session's connection ended: keep the session for the grace period
/// if the connection was lost, give it up if the client closed it, leave it alone if it
/// already moved to a newer connection.
fn keep_or_end<C: Connection>(
    shared: &Shared,
    book: &Arc<super::resumable::Book<C>>,
    generation: u64,
    end: &ConnectionEnd,
) {
    if book.generation() != generation {
        return;
    }
    // Only a client that stops closes with Normal; any other close of its (a handshake
    // it gave up, a probe) keeps the session for a resume, as a lost connection does.
    let client_stopped = matches!(end, ConnectionEnd::Peer { code, .. }
        if CloseCode::from_u64(*code) == Some(CloseCode::Normal));
    if client_stopped || matches!(end, ConnectionEnd::Local) {
        shared
            .resumable
            .end(book, &format!("connection closed: {end}"));
    } else {
        info!(
            session = %book.id(),
            "keeping the session for {:?} for the client to resume",
            book.streams.settings().grace
        );
        shared.resumable.lost(book, generation);
    }
}

/// What the control stream works on.
struct Control<'a, C: Connection> {
    conn: &'a C,
    forwards: &'a Forwards,
    shared: &'a Shared,
    session: &'a SessionGuard,
    rule: &'a watch::Receiver<Arc<ClientRule>>,
    publishing: &'a publish::SessionPublish<C>,
}

/// Answers forward and publish requests until the client finishes the control stream.
async fn serve_control<C: Connection>(
    ctl: &Control<'_, C>,
    send: &mut C::Send,
    recv: &mut C::Recv,
) {
    let Control {
        conn,
        forwards,
        shared,
        session,
        rule,
        publishing,
    } = ctl;
    let config = &shared.config;
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
        let (request_id, source) = match request {
            ControlRequest::OpenForward { request_id, source } => (request_id, source),
            ControlRequest::Publish {
                request_id,
                publish,
            } => {
                let current = rule.borrow().clone();
                let reply = publishing
                    .publish(conn, (request_id, publish), &current, shared, session)
                    .await;
                if write_frame(send, &reply).await.is_err() {
                    return;
                }
                continue;
            }
        };
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
        let policy = rule.borrow().policy.clone();
        let reply = match policy.resolve(&source, config.resolve_timeout).await {
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

/// A resumable session asked for, and the claim to an earlier one if any.
type ResumeAsk = Option<Option<ResumeClaim>>;

async fn authenticate<C: Connection>(
    conn: &C,
    config: &ServerConfig,
) -> Result<(C::Send, C::Recv, Arc<ClientRule>, Credential, ResumeAsk), AuthFailure> {
    let (send, mut recv) = conn
        .accept_bi()
        .await
        .map_err(|e| AuthFailure::Gone(e.to_string()))?;
    let malformed = |detail: String| {
        AuthFailure::Close(
            CloseCode::ProtocolError,
            b"malformed auth request",
            format!("malformed auth request: {detail}"),
        )
    };
    let request = match read_frame_body(&mut recv).await {
        Ok(body) => AnyAuthRequest::decode(&body).map_err(|e| malformed(e.to_string()))?,
        Err(ControlError::Frame(e)) => return Err(malformed(e.to_string())),
        Err(ControlError::Eof) => {
            return Err(malformed(
                "auth stream ended before a complete request".into(),
            ));
        }
        Err(e) => return Err(AuthFailure::Gone(e.to_string())),
    };
    let (token, proof, resume) = match request {
        AnyAuthRequest::V1(r) => (Some(r.token.clone()), None, None),
        AnyAuthRequest::V2(r) => (r.token.clone(), r.proof.clone(), None),
        AnyAuthRequest::V3(r) => (r.token.clone(), r.proof.clone(), Some(r.resume.clone())),
        AnyAuthRequest::Unknown(v) => {
            return Err(AuthFailure::Close(
                CloseCode::UnsupportedVersion,
                b"unsupported protocol version",
                format!(
                    "client speaks protocol version {v}, this server speaks \
                     {PROTOCOL_VERSION}, {KEY_AUTH_VERSION} and {RESUME_VERSION}"
                ),
            ));
        }
    };
    let refused =
        |what: &str| AuthFailure::Close(CloseCode::AuthFailed, b"auth failed", what.to_string());
    // A key proof, when there is one, is what counts: it is bound to this connection.
    let credential = match proof {
        Some(proof) => {
            let exporter = conn
                .keying_material(PROOF_EXPORTER_LABEL)
                .ok_or_else(|| refused("no TLS exporter on this connection"))?;
            let key = proof
                .verify(&exporter)
                .ok_or_else(|| refused("client key proof does not verify"))?;
            Credential::Key(key)
        }
        // A malformed token is simply a wrong token: the difference stays out of the reply.
        None => match token.and_then(|t| t.parse::<AuthToken>().ok()) {
            Some(t) => Credential::Token(t),
            None => return Err(refused("token not accepted")),
        },
    };
    let Some(rule) = config.access.current().identify_credential(&credential) else {
        return Err(refused(match credential {
            Credential::Token(_) => "token not accepted",
            Credential::Key(_) => "client key not accepted",
        }));
    };
    if rule.expired(std::time::SystemTime::now()) {
        return Err(AuthFailure::Close(
            CloseCode::AccessRevoked,
            b"access expired",
            format!("client {}: access expired", rule.name),
        ));
    }
    Ok((send, recv, rule, credential, resume))
}

/// A client's claim on one of its `max_sessions`, given back on drop, and what the
/// client's sessions share.
struct ClientSlot {
    shared: Arc<Shared>,
    name: String,
    client: Arc<ClientShared>,
}

impl ClientSlot {
    /// One more session of `rule`'s client, within its limit unless it is `replacing`
    /// one of them.
    fn take(shared: &Arc<Shared>, rule: &ClientRule, replacing: bool) -> Option<Self> {
        let mut open = shared.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let (n, client) = open
            .entry(rule.name.clone())
            .or_insert_with(|| (0, Arc::new(ClientShared::new(rule))));
        if !replacing && rule.max_sessions.is_some_and(|max| *n >= max) {
            return None;
        }
        *n += 1;
        client.apply(rule);
        Some(Self {
            shared: shared.clone(),
            name: rule.name.clone(),
            client: client.clone(),
        })
    }
}

impl Drop for ClientSlot {
    fn drop(&mut self) {
        let mut open = self
            .shared
            .per_client
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some((n, _)) = open.get_mut(&self.name) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.name);
            }
        }
    }
}

/// Follows the rules in force for this session's client: returns why the session must
/// end (its token or client removed, or its access expired); on any other change it
/// puts the client's new rules in force for new forwards and closes the open forwards
/// its new allow-lists no longer cover, and the publishes its bind rules no longer do.
async fn watch_access<C>(
    config: &ServerConfig,
    credential: &Credential,
    rule: &watch::Sender<Arc<ClientRule>>,
    (forwards, publishing): (&Forwards, &publish::SessionPublish<C>),
    client: &ClientShared,
) -> String {
    let mut changes = config.access.subscribe();
    // Rules replaced between this client's auth and now count too.
    changes.mark_changed();
    loop {
        let current = rule.borrow().clone();
        let until_expiry = current.expires.map(|e| {
            e.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        });
        let expiry = async {
            match until_expiry {
                Some(d) => tokio::time::sleep(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = expiry => return format!("client {}: access expired", current.name),
            r = changes.changed() => if r.is_err() {
                return std::future::pending().await;
            },
        }
        let access = changes.borrow_and_update().clone();
        let Some(new) = access
            .identify_credential(credential)
            .filter(|r| r.name == current.name)
        else {
            return format!("client {}: access revoked", current.name);
        };
        if new.expired(std::time::SystemTime::now()) {
            return format!("client {}: access expired", current.name);
        }
        if new != current {
            for source in forwards.close_disallowed(&new) {
                warn!(
                    "forward {source} closed: no longer allowed for client {}",
                    new.name
                );
            }
            for bind in publishing.close_disallowed(&new) {
                warn!(
                    "publish {bind} closed: no longer allowed for client {}",
                    new.name
                );
            }
            client.apply(&new);
            info!("client {}: new rules in force", new.name);
            rule.send_replace(new);
        }
    }
}
