//! What one direction of a resumable stream has sent and the peer has not yet
//! acknowledged, kept so that a new connection can send it again.
//!
//! The chunks are the same `Bytes` handed to the QUIC stream (a reference count, not a
//! copy); the QUIC stack lets go of its own reference once the peer's QUIC stack has the
//! packet, this one goes once the peer's porthole says it has read the bytes. Memory is
//! bounded twice: per stream (`limit`) and per session (a shared [`Budget`]); a sender over
//! either bound waits for acknowledgements (backpressure towards the user), it never drops.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tokio::sync::{Notify, Semaphore, TryAcquireError};

/// The bytes a session's streams may keep for replay together.
#[derive(Debug, Clone)]
pub struct Budget {
    free: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    pub fn new(bytes: usize) -> Self {
        Self {
            free: Arc::new(Semaphore::new(bytes)),
            total: bytes,
        }
    }

    /// Bytes not kept by any stream right now.
    pub fn available(&self) -> usize {
        self.free.available_permits()
    }
}

/// How far the peer has read one direction of a stream, as its acknowledgements say.
/// Written by whoever receives the peer's acknowledgements, read by the stream's sender.
#[derive(Debug, Default)]
pub struct Acked {
    at: AtomicU64,
    changed: Notify,
}

impl Acked {
    /// Moves the acknowledged offset forward (never back: acknowledgements may arrive
    /// out of order or be repeated).
    pub fn advance(&self, to: u64) {
        if self.at.fetch_max(to, Ordering::AcqRel) < to {
            self.changed.notify_one();
        }
    }

    pub fn get(&self) -> u64 {
        self.at.load(Ordering::Acquire)
    }

    /// Resolves after the next [`Acked::advance`] that moved the offset (at once if one
    /// happened since the last wait: the wake-up is stored).
    pub async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// A peer asked to resume from an offset this side cannot send from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RewindError {
    /// Below what the peer had already acknowledged (those bytes are gone).
    #[error(
        "the peer asks for bytes from offset {asked}, but it had acknowledged up to {kept_from}"
    )]
    Released { asked: u64, kept_from: u64 },
    /// Past what was ever sent.
    #[error("the peer says it has received {asked} bytes, but only {sent} were sent")]
    Beyond { asked: u64, sent: u64 },
}

/// The sent, unacknowledged bytes of one direction of one stream.
#[derive(Debug)]
pub struct Replay {
    /// Stream offset of the first byte kept.
    start: u64,
    chunks: VecDeque<Bytes>,
    held: usize,
    /// Bytes held beyond what was taken from the budget (an oversized chunk), given
    /// back first on release.
    over: usize,
    limit: usize,
    budget: Budget,
    acked: Arc<Acked>,
}

impl Replay {
    /// `limit` bytes at most for this stream, all of them taken from `budget` while kept.
    /// A limit above the budget's total is lowered to it (a chunk could never fit).
    pub fn new(limit: usize, budget: Budget, acked: Arc<Acked>) -> Self {
        Self {
            start: 0,
            chunks: VecDeque::new(),
            held: 0,
            over: 0,
            limit: limit.min(budget.total).max(1),
            budget,
            acked,
        }
    }

    /// Offset just past the last byte kept: everything ever given to [`Replay::keep`].
    pub fn end(&self) -> u64 {
        self.start + self.held as u64
    }

    /// Bytes kept now.
    pub fn held(&self) -> usize {
        self.held
    }

    /// The acknowledgements this replay follows.
    pub fn acked(&self) -> &Arc<Acked> {
        &self.acked
    }

    /// Keeps `chunk` once it fits (per stream and in the session's budget), dropping what
    /// the peer acknowledged in the meantime. Cancel-safe: if the wait is dropped, nothing
    /// was kept and nothing taken from the budget.
    ///
    /// A chunk larger than the per-stream limit is kept once nothing else is, so one
    /// oversized read cannot wedge a stream.
    pub async fn keep(&mut self, chunk: Bytes) {
        let n = chunk.len().min(self.budget.total);
        if n == 0 {
            return;
        }
        loop {
            self.release();
            let fits = self.held == 0 || self.held + n <= self.limit;
            if fits {
                match self.budget.free.try_acquire_many(n as u32) {
                    Ok(permit) => {
                        permit.forget();
                        break;
                    }
                    Err(TryAcquireError::NoPermits) => {}
                    // The semaphore is never closed.
                    Err(TryAcquireError::Closed) => unreachable!("budget closed"),
                }
            }
            let budget = Arc::clone(&self.budget.free);
            tokio::select! {
                // Acknowledgements free this stream's room and its share of the budget.
                _ = self.acked.changed() => {}
                // Other streams' acknowledgements free budget.
                permit = budget.acquire_many(n as u32), if fits => {
                    if let Ok(permit) = permit {
                        permit.forget();
                        break;
                    }
                }
            }
        }
        self.held += chunk.len();
        // Bytes above the budget's total (an oversized chunk) are not counted against it;
        // `n` is what was taken and what release gives back for this chunk.
        self.over += chunk.len() - n;
        self.chunks.push_back(chunk);
    }

    /// Drops the chunks the peer has acknowledged and gives their bytes back to the budget.
    pub fn release(&mut self) {
        let to = self.acked.get().min(self.end());
        let mut freed = 0usize;
        while self.start < to {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let drop = ((to - self.start) as usize).min(front.len());
            if drop == front.len() {
                self.chunks.pop_front();
            } else {
                let _ = front.split_to(drop);
            }
            self.start += drop as u64;
            self.held -= drop;
            freed += drop;
        }
        // The first bytes held are the first released, and an oversized chunk is only
        // ever kept alone, at the front: its uncounted part goes first.
        let over = freed.min(self.over);
        self.over -= over;
        if freed > over {
            self.budget.free.add_permits(freed - over);
        }
    }

    /// After a new connection: the peer has received `peer_received` bytes, so that much
    /// counts as acknowledged and everything after it must be sent again.
    pub fn rewind(&mut self, peer_received: u64) -> Result<(), RewindError> {
        // What the peer acknowledged before is released already; asking for less is a
        // peer that lost bytes it had confirmed (or lies).
        let kept_from = self.start.max(self.acked.get().min(self.end()));
        if peer_received < kept_from {
            return Err(RewindError::Released {
                asked: peer_received,
                kept_from,
            });
        }
        if peer_received > self.end() {
            return Err(RewindError::Beyond {
                asked: peer_received,
                sent: self.end(),
            });
        }
        self.acked.advance(peer_received);
        self.release();
        Ok(())
    }

    /// The kept bytes from stream offset `at` to the end of the chunk that holds it, or
    /// `None` when `at` is outside what is kept.
    pub fn chunk_at(&self, at: u64) -> Option<Bytes> {
        if at < self.start || at >= self.end() {
            return None;
        }
        // From the back: the sender asks for the newest chunk almost always (only a
        // resend after a resume starts further in front).
        let mut chunk_end = self.end();
        for c in self.chunks.iter().rev() {
            let chunk_start = chunk_end - c.len() as u64;
            if at >= chunk_start {
                return Some(c.slice((at - chunk_start) as usize..));
            }
            chunk_end = chunk_start;
        }
        None
    }
}

impl Drop for Replay {
    fn drop(&mut self) {
        let counted = self.held - self.over;
        if counted > 0 {
            self.budget.free.add_permits(counted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn bytes(n: usize, v: u8) -> Bytes {
        vec![v; n].into()
    }

    #[tokio::test]
    async fn acknowledged_bytes_are_released_and_the_rest_replayed() {
        let budget = Budget::new(1 << 20);
        let acked = Arc::new(Acked::default());
        let mut r = Replay::new(1 << 16, budget.clone(), acked.clone());
        r.keep(bytes(1000, 1)).await;
        r.keep(bytes(500, 2)).await;
        assert_eq!((r.end(), r.held()), (1500, 1500));
        assert_eq!(budget.available(), (1 << 20) - 1500);

        acked.advance(1200);
        r.release();
        assert_eq!(r.held(), 300);
        assert_eq!(budget.available(), (1 << 20) - 300);
        assert_eq!(r.chunk_at(1200), Some(bytes(300, 2)));
        assert_eq!(r.chunk_at(1199), None, "released");
        assert_eq!(r.chunk_at(1500), None, "nothing past the end");

        // A peer that goes back behind its own acknowledgement, or past the end, is refused.
        assert_eq!(
            r.rewind(1100),
            Err(RewindError::Released {
                asked: 1100,
                kept_from: 1200
            })
        );
        assert_eq!(
            r.rewind(1501),
            Err(RewindError::Beyond {
                asked: 1501,
                sent: 1500
            })
        );
        r.rewind(1400).unwrap();
        assert_eq!(r.chunk_at(1400), Some(bytes(100, 2)));
        drop(r);
        assert_eq!(budget.available(), 1 << 20, "everything given back");
    }

    #[tokio::test]
    async fn a_full_stream_waits_for_an_acknowledgement() {
        let budget = Budget::new(1 << 20);
        let acked = Arc::new(Acked::default());
        let mut r = Replay::new(3000, budget, acked.clone());
        r.keep(bytes(2000, 1)).await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), r.keep(bytes(2000, 2))).await;
        assert!(blocked.is_err(), "over the stream's limit: waits");
        assert_eq!(r.held(), 2000, "the cancelled wait kept nothing");

        let ack = {
            let acked = acked.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                acked.advance(1500);
            })
        };
        r.keep(bytes(2000, 2)).await;
        ack.await.unwrap();
        assert_eq!((r.held(), r.end()), (2500, 4000));
    }

    #[tokio::test]
    async fn streams_share_the_session_budget() {
        let budget = Budget::new(4000);
        let (a_acked, b_acked) = (Arc::new(Acked::default()), Arc::new(Acked::default()));
        let mut a = Replay::new(4000, budget.clone(), a_acked.clone());
        let mut b = Replay::new(4000, budget.clone(), b_acked);
        a.keep(bytes(3000, 1)).await;
        b.keep(bytes(1000, 1)).await;
        let blocked = tokio::time::timeout(Duration::from_millis(50), b.keep(bytes(500, 2))).await;
        assert!(blocked.is_err(), "the session's budget is spent");
        assert_eq!(budget.available(), 0);

        // A's acknowledgement frees budget once A looks at it (its next keep, or release).
        let freeing = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            a_acked.advance(2000);
            a.release();
            a
        });
        b.keep(bytes(500, 2)).await;
        let a = freeing.await.unwrap();
        assert_eq!(budget.available(), 1500);
        drop((a, b));
        assert_eq!(budget.available(), 4000);
    }

    #[tokio::test]
    async fn an_oversized_chunk_goes_alone_and_is_accounted() {
        let budget = Budget::new(1000);
        let acked = Arc::new(Acked::default());
        let mut r = Replay::new(500, budget.clone(), acked.clone());
        r.keep(bytes(1500, 1)).await;
        assert_eq!((r.held(), budget.available()), (1500, 0));
        acked.advance(700);
        r.release();
        assert_eq!(r.held(), 800);
        acked.advance(1500);
        r.release();
        assert_eq!((r.held(), budget.available()), (0, 1000));
    }
}
