//! The server's resumable sessions: which client holds which session, on which
//! connection now, and how long a lost one is kept.
//!
//! A session is found again only by a claim that proves its secret on the new connection
//! ([`porthole_proto::resume`]) from the same client with the same credential; anything
//! else gets a new session and leaves the claimed one as it was. A lost session is kept
//! for the grace period, then given up: its carries reset their targets' connections.

use std::any::Any;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use porthole_proto::close::CloseCode;
use porthole_proto::resume::{EXPORTER_LABEL, ResumeClaim, SessionId, SessionTicket};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use crate::access::Credential;
use crate::resume::ResumeSettings;
use crate::resume::streams::Streams;
use crate::transport::Connection;

/// One resumable session of a client.
pub(crate) struct Book<C: Connection> {
    pub ticket: SessionTicket,
    client: String,
    credential: Credential,
    pub streams: Arc<Streams<C::Send, C::Recv>>,
    /// Bumped for each connection the session moves to: a lost connection's expiry only
    /// gives up a session no newer connection took.
    generation: AtomicU64,
    /// The connection the session runs on now.
    current: Mutex<Option<C>>,
}

impl<C: Connection> Book<C> {
    pub fn id(&self) -> SessionId {
        SessionId(self.ticket.session)
    }

    /// Moves the session onto `conn`, closing the connection it ran on (its carries park
    /// and wait for the client's resume streams). Returns the new generation.
    pub fn attach(&self, conn: &C) -> u64 {
        let old = self
            .current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(conn.clone());
        if let Some(old) = old {
            old.close(CloseCode::Resumed.as_u32(), b"session resumed elsewhere");
        }
        self.generation.fetch_add(1, Ordering::AcqRel) + 1
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

/// Every resumable session of the server, by session id.
#[derive(Default)]
pub(crate) struct Registry {
    sessions: Mutex<HashMap<[u8; 16], Entry>>,
}

struct Entry {
    /// A `Book<C>` of the server's one connection type.
    book: Arc<dyn Any + Send + Sync>,
    /// When its last connection was lost, if it has none now.
    lost_at: Option<Instant>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Registry({} sessions)", self.lock().len())
    }
}

/// Whether two credentials are the same client's same proof of identity.
fn same_credential(a: &Credential, b: &Credential) -> bool {
    match (a, b) {
        (Credential::Token(a), Credential::Token(b)) => {
            a.expose().as_bytes().ct_eq(b.expose().as_bytes()).into()
        }
        (Credential::Key(a), Credential::Key(b)) => a == b,
        _ => false,
    }
}

impl Registry {
    /// The session a new connection of `client` (proved by `credential`) continues, or
    /// a new one: `(book, resumed)`. At most `max` sessions are kept; past that, the one
    /// lost longest ago is given up to make room.
    pub fn open<C: Connection>(
        &self,
        conn: &C,
        claim: Option<&ResumeClaim>,
        (client, credential): (&str, &Credential),
        settings: &ResumeSettings,
        max: usize,
    ) -> Result<(Arc<Book<C>>, bool), porthole_proto::token::RandomError> {
        if let Some(claim) = claim {
            match self.find::<C>(conn, claim, client, credential) {
                Ok(book) => {
                    self.mark(&book.ticket.session, None);
                    return Ok((book, true));
                }
                Err(why) => warn!(
                    session = %SessionId(claim.session),
                    "resume refused ({why}): starting a new session; the claimed one is left as it was"
                ),
            }
        }
        let book = Arc::new(Book {
            ticket: SessionTicket::generate()?,
            client: client.to_string(),
            credential: credential.clone(),
            streams: Arc::new(Streams::new(*settings)),
            generation: AtomicU64::new(0),
            current: Mutex::new(None),
        });
        let mut sessions = self.lock();
        if sessions.len() >= max {
            let oldest = sessions
                .iter()
                .filter_map(|(id, e)| e.lost_at.map(|at| (at, *id)))
                .min()
                .map(|(_, id)| id);
            if let Some(id) = oldest
                && let Some(e) = sessions.remove(&id)
            {
                warn!(session = %SessionId(id), "too many resumable sessions: giving up the one lost longest ago");
                if let Ok(b) = e.book.downcast::<Book<C>>() {
                    b.streams.abandon();
                }
            }
        }
        sessions.insert(
            book.ticket.session,
            Entry {
                book: Arc::clone(&book) as Arc<dyn Any + Send + Sync>,
                lost_at: None,
            },
        );
        Ok((book, false))
    }

    /// Whether `claim` on `conn` would move a session of this client here (so the new
    /// connection replaces one instead of adding one: it does not count against the
    /// session limits).
    pub fn honours<C: Connection>(
        &self,
        conn: &C,
        claim: &ResumeClaim,
        (client, credential): (&str, &Credential),
    ) -> bool {
        self.find::<C>(conn, claim, client, credential).is_ok()
    }

    fn find<C: Connection>(
        &self,
        conn: &C,
        claim: &ResumeClaim,
        client: &str,
        credential: &Credential,
    ) -> Result<Arc<Book<C>>, &'static str> {
        let exporter = conn
            .keying_material(EXPORTER_LABEL)
            .ok_or("no TLS exporter on this connection")?;
        let book = self
            .lock()
            .get(&claim.session)
            .map(|e| Arc::clone(&e.book))
            .ok_or("no such session: it ended, expired, or the server restarted")?
            .downcast::<Book<C>>()
            .map_err(|_| "no such session")?;
        // The proof first, so an unknown secret learns nothing about whose session it is.
        if !book.ticket.verify(claim, &exporter) {
            return Err("the session secret does not verify");
        }
        if book.client != client || !same_credential(&book.credential, credential) {
            return Err("the session belongs to another client");
        }
        Ok(book)
    }

    /// The session's connection of `generation` ended without the client closing it:
    /// keep the session for the grace period, then give it up unless a newer connection
    /// took it.
    pub fn lost<C: Connection>(self: &Arc<Self>, book: &Arc<Book<C>>, generation: u64) {
        if book.generation() != generation {
            return;
        }
        self.mark(&book.ticket.session, Some(Instant::now()));
        let grace = book.streams.settings().grace;
        let (registry, book) = (Arc::clone(self), Arc::clone(book));
        tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if book.generation() == generation {
                registry.end(&book, "no resume within the grace period");
            }
        });
    }

    /// Gives the session up now: its carries reset their targets' connections.
    pub fn end<C: Connection>(&self, book: &Book<C>, why: &str) {
        self.lock().remove(&book.ticket.session);
        let n = book.streams.abandon();
        if n > 0 {
            info!(session = %book.id(), "session ended ({why}): {n} connection(s) reset");
        }
    }

    fn mark(&self, id: &[u8; 16], lost_at: Option<Instant>) {
        if let Some(e) = self.lock().get_mut(id) {
            e.lost_at = lost_at;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 16], Entry>> {
        self.sessions.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
