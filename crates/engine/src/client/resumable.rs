//! The client's resumable session: the server's ticket, the TCP connections carried
//! under it, and how long they wait for a new connection once the tunnel is lost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use porthole_proto::resume::{ResumeClaim, SessionId, SessionTicket};
use tracing::{info, warn};

use crate::resume::ResumeSettings;
use crate::resume::streams::Streams;
use crate::transport::Connection;

/// The client's session, across connections.
pub(crate) struct Book<S, R> {
    pub streams: Arc<Streams<S, R>>,
    ticket: Mutex<Option<SessionTicket>>,
    /// Stream numbers, never reused within a session.
    next: AtomicU64,
    /// The server refused the resumable auth once (it predates it): plain sessions now.
    unsupported: AtomicBool,
    /// Bumped each time the session is up on a connection: a lost session's grace only
    /// gives up connections no newer connection took.
    generation: AtomicU64,
}

/// The book of a connection type's streams.
pub(crate) type BookOf<C> = Book<<C as Connection>::Send, <C as Connection>::Recv>;

impl<S: crate::transport::SendStream, R: crate::transport::RecvStream> Book<S, R> {
    pub fn new(settings: ResumeSettings) -> Self {
        Self {
            streams: Arc::new(Streams::new(settings)),
            ticket: Mutex::new(None),
            next: AtomicU64::new(0),
            unsupported: AtomicBool::new(false),
            generation: AtomicU64::new(0),
        }
    }

    /// Whether to ask this server for a resumable session.
    pub fn wanted(&self) -> bool {
        !self.unsupported.load(Ordering::Acquire)
    }

    /// The server does not speak resumable sessions: stop asking.
    pub fn unsupported(&self) {
        if !self.unsupported.swap(true, Ordering::AcqRel) {
            warn!(
                "the server predates resumable sessions: connections will not survive a \
                 lost tunnel (upgrade the server to resume them)"
            );
        }
    }

    /// The claim to our session on the connection whose resume exporter value is
    /// `exporter`, if we have a session.
    pub fn claim(&self, exporter: &[u8; 32]) -> Option<ResumeClaim> {
        self.lock().as_ref().map(|t| t.claim(exporter))
    }

    /// The server's answer on a new connection: the session's ticket, and whether our
    /// claim was honoured. If it was not, the connections kept for the old session can
    /// never continue: they are reset now.
    pub fn answered(&self, ticket: SessionTicket, resumed: bool) {
        let had = self.lock().replace(ticket).map(|t| SessionId(t.session));
        if !resumed && let Some(old) = had {
            let n = self.streams.abandon();
            if n > 0 {
                warn!(
                    session = %old,
                    "the server no longer knows the session (it restarted, or the grace \
                     period passed): {n} connection(s) reset"
                );
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The server answered with a plain session (its resuming is off): nothing we kept
    /// can continue.
    pub fn answered_plain(&self) {
        self.lock().take();
        let n = self.streams.abandon();
        if n > 0 {
            warn!("the server does not resume sessions: {n} connection(s) reset");
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    pub fn next_stream(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed)
    }

    /// The tunnel was lost: its connections wait for the grace period, then are reset
    /// unless a new connection took the session.
    pub fn lost(self: &Arc<Self>) {
        let generation = self.generation.load(Ordering::Acquire);
        let grace = self.streams.settings().grace;
        if self.streams.is_empty() {
            return;
        }
        info!(
            "{} connection(s) kept open for up to {grace:?} while the tunnel is re-established",
            self.streams.len()
        );
        let book = Arc::clone(self);
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if book.generation.load(Ordering::Acquire) == generation {
                let n = book.streams.abandon();
                if n > 0 {
                    warn!("no tunnel within the grace period ({grace:?}): {n} connection(s) reset");
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<SessionTicket>> {
        self.ticket.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Carries the session's acknowledgements over one connection, both ways, until it ends.
pub(crate) async fn acknowledge<C: Connection>(conn: C, book: Arc<BookOf<C>>) {
    use crate::resume::acks::{self, ACK_INTERVAL};
    use porthole_proto::resume::ResumableHeader;
    let opened = async {
        let (mut send, recv) = conn.open_bi().await?;
        crate::control::write_frame(&mut send, &ResumableHeader::Acks).await?;
        Ok::<_, crate::control::ControlError>((send, recv))
    };
    let (mut send, mut recv) = match opened.await {
        Ok(s) => s,
        Err(e) => return tracing::debug!("no acknowledgement stream: {e}"),
    };
    let ledger = book.streams.ledger();
    tokio::select! {
        e = acks::send(&mut send, ledger, ACK_INTERVAL) => tracing::debug!("acknowledgements not sent: {e:?}"),
        e = acks::receive(&mut recv, ledger) => tracing::debug!("acknowledgements ended: {e:?}"),
    }
}
