//! The resumable streams of one session, on either side: numbered carries, their
//! acknowledgement ledger and the session's replay budget. Outlives the session's
//! connections; giving it up resets every TCP connection it still holds.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use porthole_proto::resume::{ResumableHeader, ResumeReply};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use super::ResumeSettings;
use super::acks::Ledger;
use super::carry::{self, Handle, Link};
use super::replay::{Budget, Replay};
use crate::control::{ControlError, read_frame, write_frame};
use crate::splice::{Controls, SpliceEnd};
use crate::transport::{Connection, RecvStream, SendStream};

/// How long the server may take to answer one stream's resume.
const RESUME_ANSWER: std::time::Duration = std::time::Duration::from_secs(10);

/// Whether `conn` is still up, for a carry's link over it.
pub fn alive_of<C: Connection>(conn: &C) -> carry::Alive {
    let conn = conn.clone();
    Arc::new(move || conn.close_reason().is_none())
}

/// What became of a client's streams on a new connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Resumed {
    pub resumed: usize,
    /// The server no longer had them (they ended on its side meanwhile): reset.
    pub unknown: usize,
    /// Not resumed on this connection (it failed meanwhile); still parked.
    pub failed: usize,
}

pub struct Streams<S, R> {
    settings: ResumeSettings,
    ledger: Ledger,
    budget: Budget,
    carries: Mutex<HashMap<u64, Arc<Handle<S, R>>>>,
}

impl<S: SendStream, R: RecvStream> Streams<S, R> {
    pub fn new(settings: ResumeSettings) -> Self {
        Self {
            settings,
            ledger: Ledger::new(settings.grace),
            budget: Budget::new(settings.session_buffer),
            carries: Mutex::new(HashMap::new()),
        }
    }

    pub fn settings(&self) -> &ResumeSettings {
        &self.settings
    }

    pub fn ledger(&self) -> &Ledger {
        &self.ledger
    }

    /// Carries `tcp` as stream `stream` until both directions are done or it aborts,
    /// resumable meanwhile. `ahead` goes first (a PROXY header, bytes read before), as
    /// part of the stream. `None` if the number is in use (the peer reused it).
    pub async fn carry(
        &self,
        stream: u64,
        tcp: TcpStream,
        first: Link<S, R>,
        ahead: Option<Bytes>,
        ctl: Controls<'_>,
    ) -> Option<SpliceEnd> {
        let shared = self.ledger.shared();
        let mut replay = Replay::new(
            self.settings.stream_buffer,
            self.budget.clone(),
            Arc::clone(shared.acked()),
        );
        let (handle, commands) = carry::channel(Arc::clone(&shared));
        {
            let mut carries = self.lock();
            if carries.contains_key(&stream) {
                return None;
            }
            carries.insert(stream, Arc::new(handle));
        }
        self.ledger.insert(stream, shared);
        if let Some(ahead) = ahead.filter(|a| !a.is_empty()) {
            replay.keep(ahead).await;
        }
        let end = carry::run(tcp, first, replay, commands, ctl).await;
        self.lock().remove(&stream);
        match end {
            SpliceEnd::Clean { .. } => self.ledger.finish(stream),
            SpliceEnd::Aborted { .. } => self.ledger.remove(stream),
        }
        Some(end)
    }

    /// Client side: moves every stream onto `conn`. All are parked and asked for at
    /// once, then the answers are read: one round trip however many there are.
    pub async fn resume_on<C>(&self, conn: &C) -> Resumed
    where
        C: Connection<Send = S, Recv = R>,
    {
        let alive = alive_of(conn);
        let mut asked = Vec::new();
        let mut outcome = Resumed::default();
        for (stream, handle) in self.all() {
            let received = handle.park().await;
            let opened = async {
                let (mut send, recv) = conn.open_bi().await?;
                write_frame(&mut send, &ResumableHeader::Resume { stream, received }).await?;
                Ok::<_, ControlError>((send, recv))
            };
            match opened.await {
                Ok((send, recv)) => asked.push((stream, handle, send, recv)),
                Err(e) => {
                    debug!(stream, "resume not asked: {e}");
                    outcome.failed += 1;
                }
            }
        }
        for (stream, handle, send, mut recv) in asked {
            let reply =
                tokio::time::timeout(RESUME_ANSWER, read_frame::<ResumeReply, _>(&mut recv));
            match reply.await {
                Ok(Ok(ResumeReply::Resumed { received })) => {
                    let link = Link {
                        send,
                        recv,
                        peer_received: received,
                        alive: Arc::clone(&alive),
                    };
                    handle.attach(link).await;
                    outcome.resumed += 1;
                }
                Ok(Ok(ResumeReply::Unknown)) => {
                    self.forget(stream);
                    outcome.unknown += 1;
                }
                Ok(Err(e)) => {
                    debug!(stream, "no answer to the resume: {e}");
                    outcome.failed += 1;
                }
                Err(_) => {
                    debug!(stream, "no answer to the resume within {RESUME_ANSWER:?}");
                    outcome.failed += 1;
                }
            }
        }
        outcome
    }

    /// Server side: the client resumes `stream` on a new stream pair, having received
    /// `peer_received` of ours. Answers with what we received and hands the pair to the
    /// stream's carry, or answers that the stream is unknown.
    pub async fn answer_resume(
        &self,
        stream: u64,
        peer_received: u64,
        mut send: S,
        recv: R,
        alive: carry::Alive,
    ) -> Result<bool, ControlError> {
        let Some(handle) = self.get(stream) else {
            // A stream that finished here: the peer only missed our last acknowledgement.
            let reply = match self.ledger.finished(stream) {
                Some(received) => ResumeReply::Resumed { received },
                None => ResumeReply::Unknown,
            };
            write_frame(&mut send, &reply).await?;
            let _ = send.shutdown().await;
            return Ok(matches!(reply, ResumeReply::Resumed { .. }));
        };
        let received = handle.park().await;
        write_frame(&mut send, &ResumeReply::Resumed { received }).await?;
        let link = Link {
            send,
            recv,
            peer_received,
            alive,
        };
        Ok(handle.attach(link).await)
    }

    pub fn get(&self, stream: u64) -> Option<Arc<Handle<S, R>>> {
        self.lock().get(&stream).cloned()
    }

    /// Every stream open now.
    pub fn all(&self) -> Vec<(u64, Arc<Handle<S, R>>)> {
        self.lock()
            .iter()
            .map(|(&n, h)| (n, Arc::clone(h)))
            .collect()
    }

    /// Lets go of one stream: a parked carry resets its TCP connection.
    pub fn forget(&self, stream: u64) {
        self.lock().remove(&stream);
    }

    /// Lets go of every stream (no resume will come); returns how many there were.
    pub fn abandon(&self) -> usize {
        let gone = std::mem::take(&mut *self.lock());
        gone.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Handle<S, R>>>> {
        self.carries.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
