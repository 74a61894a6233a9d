//! Establishing one tunnel: connect, authenticate, open every forward.

use std::time::Duration;

use porthole_proto::close::CloseCode;
use porthole_proto::key::PROOF_EXPORTER_LABEL;
use porthole_proto::message::{
    AuthRequest, AuthRequestV2, AuthRequestV3, AuthResponse, ControlRequest, ControlResponse,
    StreamHeader,
};
use porthole_proto::resume::{EXPORTER_LABEL, ResumableHeader};
use porthole_proto::{KEY_AUTH_VERSION, PROTOCOL_VERSION, RESUME_VERSION};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use porthole_proto::source::Source;
use tokio::sync::{Mutex, mpsc};
use tracing::debug;

use super::resumable::BookOf;
use super::{ClientConfig, ClientError};
use crate::control::{ControlError, read_frame, write_frame};
use crate::transport::{Connection, ConnectionEnd, Connector};

/// An authenticated connection with its forwards open.
pub struct Session<C: Connection> {
    pub conn: C,
    /// Server-assigned forward id of each forward, in config order.
    pub forward_ids: Vec<u16>,
    /// Server-assigned id of each publish, in config order.
    pub publish_ids: Vec<u16>,
    /// Open for the life of the session: more forwards are asked for on it later (UDP
    /// destinations of the SOCKS proxy).
    control: Mutex<(C::Send, C::Recv)>,
    next_request: AtomicU32,
    /// Forwards opened on demand, by source text, and where their datagrams go.
    dynamic: std::sync::Mutex<DynamicUdp>,
    /// The resumable session this connection carries, if the server gave one.
    pub(crate) book: Option<Arc<BookOf<C>>>,
    /// The server found the session we claimed: our kept connections move here.
    pub(crate) resumed: bool,
}

/// UDP destinations of SOCKS associations: a forward per destination (opened on the
/// control stream, so the server checks it like any forward), a route per association.
#[derive(Default)]
struct DynamicUdp {
    by_source: HashMap<String, u16>,
    routes: HashMap<(u16, u32), mpsc::Sender<(u16, Bytes)>>,
}

impl<C: Connection> Session<C> {
    fn new(conn: C, ids: Ids<C>, control: (C::Send, C::Recv)) -> Self {
        let Ids {
            forward_ids,
            publish_ids,
            book,
            resumed,
        } = ids;
        let next = (forward_ids.len() + publish_ids.len()) as u32;
        Self {
            conn,
            forward_ids,
            publish_ids,
            control: Mutex::new(control),
            next_request: AtomicU32::new(next),
            dynamic: Default::default(),
            book,
            resumed,
        }
    }

    /// Starts a stream that is not resumed (a dynamic one) with its header: a plain
    /// stream header, or its resumable-session equivalent.
    pub(crate) async fn plain_header(
        &self,
        send: &mut C::Send,
        forward_id: u16,
    ) -> Result<(), ControlError> {
        match self.book {
            Some(_) => write_frame(send, &ResumableHeader::Plain { forward_id }).await,
            None => write_frame(send, &StreamHeader { forward_id }).await,
        }
    }

    fn dynamic(&self) -> std::sync::MutexGuard<'_, DynamicUdp> {
        self.dynamic.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The forward id for `source` (a `udp://` source), asking the server the first time.
    pub(crate) async fn udp_forward(&self, source: &Source) -> Result<u16, String> {
        let text = source.to_string();
        if let Some(id) = self.dynamic().by_source.get(&text) {
            return Ok(*id);
        }
        let mut control = self.control.lock().await;
        // Asked while we waited for the lock?
        if let Some(id) = self.dynamic().by_source.get(&text) {
            return Ok(*id);
        }
        let request_id = self.next_request.fetch_add(1, Ordering::Relaxed);
        let (send, recv) = &mut *control;
        write_frame(send, &ControlRequest::open_forward(request_id, source))
            .await
            .map_err(|e| format!("control stream: {e}"))?;
        match read_frame::<ControlResponse, _>(recv).await {
            Ok(ControlResponse::ForwardAccepted { forward_id, .. }) => {
                self.dynamic().by_source.insert(text, forward_id);
                Ok(forward_id)
            }
            Ok(ControlResponse::ForwardRejected { reason, detail, .. }) => {
                Err(format!("refused by the server: {reason}: {detail}"))
            }
            Ok(other) => Err(format!("unexpected answer: {other:?}")),
            Err(e) => Err(format!("control stream: {e}")),
        }
    }

    /// Datagrams of (`forward_id`, `flow_id`) go to `to` from now on.
    pub(crate) fn route(&self, forward_id: u16, flow_id: u32, to: mpsc::Sender<(u16, Bytes)>) {
        self.dynamic().routes.insert((forward_id, flow_id), to);
    }

    pub(crate) fn unroute(&self, flow_id: u32) {
        self.dynamic().routes.retain(|(_, f), _| *f != flow_id);
    }

    /// Where a datagram of a dynamic forward goes, if anywhere.
    pub(crate) fn routed(
        &self,
        forward_id: u16,
        flow_id: u32,
    ) -> Option<mpsc::Sender<(u16, Bytes)>> {
        self.dynamic().routes.get(&(forward_id, flow_id)).cloned()
    }
}

pub(crate) enum EstablishError {
    /// Retrying cannot help (wrong token, refused source, version mismatch).
    Fatal(ClientError),
    /// Transient: try again after a backoff.
    Retry(String),
}

pub(crate) async fn establish<K: Connector>(
    connector: &K,
    config: &ClientConfig,
    book: Option<&Arc<BookOf<K::Conn>>>,
) -> Result<Session<K::Conn>, EstablishError> {
    let conn = match tokio::time::timeout(config.connect_timeout, connector.connect()).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return Err(EstablishError::Retry(format!("connect: {e}"))),
        Err(_) => {
            return Err(EstablishError::Retry(format!(
                "connect timed out after {:?}",
                config.connect_timeout
            )));
        }
    };
    establish_on(conn, config, book).await
}

/// [`establish`] on a connection already made (a direct one a transport punched).
pub(crate) async fn establish_on<C: Connection>(
    conn: C,
    config: &ClientConfig,
    book: Option<&Arc<BookOf<C>>>,
) -> Result<Session<C>, EstablishError> {
    let book = book.filter(|b| b.wanted());
    match tokio::time::timeout(config.handshake_timeout, handshake(&conn, config, book)).await {
        Ok(Ok((ids, control))) => Ok(Session::new(conn, ids, control)),
        Ok(Err(HandshakeError::Refused(e))) => {
            conn.close(CloseCode::Normal.as_u32(), b"forward refused");
            Err(EstablishError::Fatal(e))
        }
        Ok(Err(HandshakeError::Stream(e))) => {
            // The server usually closed the connection with a reason: wait briefly for it.
            let end = tokio::time::timeout(Duration::from_secs(2), conn.closed()).await;
            conn.close(CloseCode::Normal.as_u32(), b"");
            // A server that predates resumable sessions refuses their auth version: ask
            // it for a plain session next time.
            if let (Some(book), Ok(ConnectionEnd::Peer { code, .. })) = (book, &end)
                && CloseCode::from_u64(*code) == Some(CloseCode::UnsupportedVersion)
            {
                book.unsupported();
                return Err(EstablishError::Retry(
                    "the server predates resumable sessions; asking for a plain one".into(),
                ));
            }
            Err(classify(end.ok(), e, !config.publishes.is_empty()))
        }
        Err(_) => {
            // Not Normal: a server that moved our session here keeps it for a resume.
            conn.close(CloseCode::Retrying.as_u32(), b"handshake timeout");
            Err(EstablishError::Retry(format!(
                "the server did not answer the handshake within {:?}",
                config.handshake_timeout
            )))
        }
    }
}

enum HandshakeError {
    Refused(ClientError),
    Stream(ControlError),
}

impl From<ControlError> for HandshakeError {
    fn from(e: ControlError) -> Self {
        HandshakeError::Stream(e)
    }
}

/// What the server answered the handshake's requests with.
struct Ids<C: Connection> {
    forward_ids: Vec<u16>,
    publish_ids: Vec<u16>,
    book: Option<Arc<BookOf<C>>>,
    resumed: bool,
}

fn no_exporter(what: &str) -> ControlError {
    ControlError::Io(std::io::Error::other(format!(
        "the connection has no TLS exporter for the {what}"
    )))
}

async fn handshake<C: Connection>(
    conn: &C,
    config: &ClientConfig,
    book: Option<&Arc<BookOf<C>>>,
) -> Result<(Ids<C>, (C::Send, C::Recv)), HandshakeError> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(ControlError::Io)?;
    let key_proof = |key: &porthole_proto::key::SecretKey| {
        conn.keying_material(PROOF_EXPORTER_LABEL)
            .map(|exporter| key.prove(&exporter))
            .ok_or_else(|| no_exporter("key proof"))
    };
    if let Some(book) = book {
        // Resumable: the credentials of version 2, and our claim to the session.
        let exporter = conn
            .keying_material(EXPORTER_LABEL)
            .ok_or_else(|| no_exporter("session resume"))?;
        let auth = AuthRequestV3 {
            version: RESUME_VERSION,
            token: match config.key {
                Some(_) => None,
                None => config.token.as_ref().map(|t| t.expose().to_string()),
            },
            proof: config.key.as_ref().map(key_proof).transpose()?,
            resume: book.claim(&exporter),
        };
        write_frame(&mut send, &auth).await?;
    } else {
        match &config.key {
            // A key proves itself on this connection (and the token stays home).
            Some(key) => {
                let auth = AuthRequestV2 {
                    version: KEY_AUTH_VERSION,
                    token: None,
                    proof: Some(key_proof(key)?),
                };
                write_frame(&mut send, &auth).await?;
            }
            None => {
                let auth = AuthRequest {
                    version: PROTOCOL_VERSION,
                    token: config
                        .token
                        .as_ref()
                        .map(|t| t.expose().to_string())
                        .unwrap_or_default(),
                };
                write_frame(&mut send, &auth).await?;
            }
        }
    }
    // Pipeline the forward requests behind the token: one round trip for everything.
    for (i, f) in config.forwards.iter().enumerate() {
        let req = ControlRequest::open_forward(i as u32, &f.source);
        write_frame(&mut send, &req).await?;
    }
    let first_publish = config.forwards.len();
    for (i, p) in config.publishes.iter().enumerate() {
        let req = ControlRequest::Publish {
            request_id: (first_publish + i) as u32,
            publish: p.request(),
        };
        write_frame(&mut send, &req).await?;
    }
    let (session_book, resumed) = match read_frame(&mut recv).await? {
        AuthResponse::Accepted {
            version,
            max_streams,
        } => {
            debug!(version, max_streams, "authenticated");
            if let Some(book) = book {
                book.answered_plain();
            }
            (None, false)
        }
        AuthResponse::Resumable {
            version,
            max_streams,
            ticket,
            resumed,
        } => {
            debug!(
                version,
                max_streams, resumed, "authenticated (resumable session)"
            );
            match book {
                Some(book) => {
                    book.answered(ticket, resumed);
                    (Some(Arc::clone(book)), resumed)
                }
                // Not asked for: a server that answers so is broken.
                None => {
                    return Err(HandshakeError::Stream(ControlError::Io(
                        std::io::Error::other("a resumable session that was not asked for"),
                    )));
                }
            }
        }
    };
    let mut ids = Vec::with_capacity(config.forwards.len());
    for (i, f) in config.forwards.iter().enumerate() {
        match read_frame::<ControlResponse, _>(&mut recv).await? {
            ControlResponse::ForwardAccepted {
                request_id,
                forward_id,
            } if request_id == i as u32 => ids.push(forward_id),
            ControlResponse::ForwardRejected {
                request_id,
                reason,
                detail,
            } if request_id == i as u32 => {
                return Err(HandshakeError::Refused(ClientError::SourceRefused {
                    forward: f.source.clone(),
                    reason,
                    detail,
                }));
            }
            other => {
                return Err(HandshakeError::Stream(ControlError::Io(
                    std::io::Error::other(format!("unexpected answer to forward {i}: {other:?}")),
                )));
            }
        }
    }
    let mut publish_ids = Vec::with_capacity(config.publishes.len());
    for (i, p) in config.publishes.iter().enumerate() {
        let want = (first_publish + i) as u32;
        match read_frame::<ControlResponse, _>(&mut recv).await? {
            ControlResponse::PublishAccepted {
                request_id,
                publish_id,
            } if request_id == want => publish_ids.push(publish_id),
            ControlResponse::ForwardRejected {
                request_id,
                reason,
                detail,
            } if request_id == want => {
                return Err(HandshakeError::Refused(ClientError::PublishRefused {
                    publish: Box::new(p.clone()),
                    reason,
                    detail,
                }));
            }
            other => {
                return Err(HandshakeError::Stream(ControlError::Io(
                    std::io::Error::other(format!("unexpected answer to publish {i}: {other:?}")),
                )));
            }
        }
    }
    let ids = Ids {
        forward_ids: ids,
        publish_ids,
        book: session_book,
        resumed,
    };
    Ok((ids, (send, recv)))
}

fn classify(end: Option<ConnectionEnd>, e: ControlError, published: bool) -> EstablishError {
    if let Some(fatal) = end.as_ref().and_then(super::fatal_close) {
        return EstablishError::Fatal(fatal);
    }
    // A server that predates publishes cannot decode one and closes with ProtocolError:
    // retrying cannot help, upgrading can.
    if published
        && let Some(ConnectionEnd::Peer { code, .. }) = &end
        && CloseCode::from_u64(*code) == Some(CloseCode::ProtocolError)
    {
        return EstablishError::Fatal(ClientError::Version(
            "the server did not understand the request to publish: it predates --publish; \
             upgrade the server"
                .into(),
        ));
    }
    match end {
        Some(other) => EstablishError::Retry(other.to_string()),
        None => EstablishError::Retry(format!("handshake failed: {e}")),
    }
}
