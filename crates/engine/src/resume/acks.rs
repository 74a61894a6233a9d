//! Acknowledgements between the two ends of a resumable session: each side tells the
//! other, per stream, how much of the other's direction it has read, so the other can
//! drop those bytes from its replay. They ride one stream of their own (a frame of
//! [`Acks`] per batch), not the data streams: the data path stays unframed.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use porthole_proto::resume::{Acks, MAX_ACKS_PER_FRAME};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::Notify;

use super::carry::Shared;
use crate::control::{ControlError, read_frame_or_eof, write_frame};

/// How often changed offsets are sent. A stream's replay must hold what is in flight plus
/// this much more before its sender waits: short enough to cost little of the replay
/// limit, long enough to batch a busy session's streams into one frame.
pub const ACK_INTERVAL: Duration = Duration::from_millis(20);

/// (stream, received offset) pairs.
type Offsets = Vec<(u64, u64)>;

/// Finished streams remembered at most (their last offsets, for a peer that missed them).
/// Only streams that finished within a round trip or so of a loss need it; the bound
/// keeps a parked session small (~40 bytes each).
const MAX_FINISHED: usize = 4096;

/// The streams of one session by number, as the acknowledgements see them: the live
/// ones, and for a while those that finished cleanly, whose last offset the peer still
/// needs (its carry ends once it knows we have its FIN).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    inner: Arc<Mutex<Inner>>,
    /// Streams that received much since the last acknowledgement wake the sender.
    nudge: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Inner {
    live: HashMap<u64, Arc<Shared>>,
    /// Final received offset of each finished stream...
    finished: HashMap<u64, u64>,
    /// ...and the finished streams in the order they finished (sent once per ack stream,
    /// so a busy session's thousands of short connections are not sent every tick).
    order: VecDeque<(Instant, u64)>,
    /// How long a finished stream's offset is kept (the session's grace period).
    keep: Duration,
}

impl Ledger {
    /// Remembers finished streams for `keep`.
    pub fn new(keep: Duration) -> Self {
        Self {
            inner: Arc::new(Mutex::new(Inner {
                keep,
                ..Inner::default()
            })),
            nudge: Arc::default(),
        }
    }

    /// New shared state for a stream of this ledger (its bytes nudge the sender).
    pub fn shared(&self) -> Arc<Shared> {
        Arc::new(Shared::nudging(Arc::clone(&self.nudge)))
    }

    pub fn insert(&self, stream: u64, shared: Arc<Shared>) {
        self.lock().live.insert(stream, shared);
    }

    /// The stream ended in error: the peer learns it from the stream (or not at all).
    pub fn remove(&self, stream: u64) {
        self.lock().live.remove(&stream);
    }

    /// The stream ended cleanly: its last offset is still sent, and answers a resume.
    pub fn finish(&self, stream: u64) {
        let now = Instant::now();
        let mut inner = self.lock();
        let Some(shared) = inner.live.remove(&stream) else {
            return;
        };
        let keep = inner.keep;
        while let Some(&(at, old)) = inner.order.front() {
            if now.saturating_duration_since(at) < keep && inner.order.len() < MAX_FINISHED {
                break;
            }
            inner.order.pop_front();
            inner.finished.remove(&old);
        }
        inner.finished.insert(stream, shared.received());
        inner.order.push_back((now, stream));
    }

    /// A live stream's shared state.
    pub fn get(&self, stream: u64) -> Option<Arc<Shared>> {
        self.lock().live.get(&stream).cloned()
    }

    /// A finished stream's last received offset.
    pub fn finished(&self, stream: u64) -> Option<u64> {
        self.lock().finished.get(&stream).copied()
    }

    /// Each live stream's received count now, and the final count of the streams that
    /// finished at or after `since` (all of them with `None`).
    fn received(&self, since: Option<Instant>) -> (Offsets, Offsets) {
        let inner = self.lock();
        let live = inner
            .live
            .iter()
            .map(|(&stream, shared)| (stream, shared.received()))
            .collect();
        let finished = inner
            .order
            .iter()
            .rev()
            .take_while(|(at, _)| since.is_none_or(|since| *at >= since))
            .filter_map(|(_, s)| inner.finished.get(s).map(|n| (*s, *n)))
            .collect();
        (live, finished)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // The maps stay consistent whatever a panicking holder did.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends, every `interval`, the received count of each stream that changed since it was
/// last sent. Returns when writing fails (the connection is gone).
pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    ledger: &Ledger,
    interval: Duration,
) -> Result<(), ControlError> {
    // What this ack stream has sent of each live stream.
    let mut sent: HashMap<u64, u64> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first batch on a stream carries every finished stream (the peer may have
    // missed them on a lost connection), later ones those finished since the last.
    let mut since = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = ledger.nudge.notified() => {}
        }
        let now = Instant::now();
        let (live, finished) = ledger.received(since);
        since = Some(now);
        let mut changed: Vec<(u64, u64)> = live
            .iter()
            .copied()
            .filter(|(stream, received)| sent.get(stream) != Some(received))
            .collect();
        // Forget streams that left the ledger.
        if sent.len() > live.len() {
            let live: HashMap<u64, u64> = live.into_iter().collect();
            sent.retain(|s, _| live.contains_key(s));
        }
        sent.extend(changed.iter().copied());
        changed.extend(finished);
        for batch in changed.chunks(MAX_ACKS_PER_FRAME) {
            write_frame(
                w,
                &Acks {
                    entries: batch.to_vec(),
                },
            )
            .await?;
        }
    }
}

/// Applies the peer's acknowledgements to our streams until its ack stream ends.
/// Acknowledgements for streams we do not know (ended meanwhile) are ignored.
pub async fn receive<R: AsyncRead + Unpin>(r: &mut R, ledger: &Ledger) -> Result<(), ControlError> {
    while let Some(acks) = read_frame_or_eof::<Acks, _>(r).await? {
        for (stream, received) in acks.entries {
            if let Some(shared) = ledger.get(stream) {
                shared.acked().advance(received);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn offsets_reach_the_peers_streams_batched_and_only_when_changed() {
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        let ours = Ledger::new(Duration::from_secs(60));
        let theirs = Ledger::new(Duration::from_secs(60));
        // Many streams: more than one frame's worth.
        let mut shared = Vec::new();
        for stream in 0..(MAX_ACKS_PER_FRAME as u64 * 2 + 5) {
            let s = Arc::new(Shared::default());
            ours.insert(stream, Arc::clone(&s));
            let t = Arc::new(Shared::default());
            theirs.insert(stream, Arc::clone(&t));
            shared.push((s, t));
        }
        for (i, (s, _)) in shared.iter().enumerate() {
            s.add_received(i as u64 * 3 + 1);
        }
        let sender = {
            let ours = ours.clone();
            tokio::spawn(async move { send(&mut a, &ours, Duration::from_millis(5)).await })
        };
        let receiver = {
            let theirs = theirs.clone();
            tokio::spawn(async move { receive(&mut b, &theirs).await })
        };
        let all_acked = || shared.iter().all(|(s, t)| t.acked().get() == s.received());
        tokio::time::timeout(Duration::from_secs(5), async {
            while !all_acked() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("every stream acknowledged");

        // A later change goes too, also for a stream that finished meanwhile; a stream
        // that left is not a problem.
        ours.remove(0);
        shared[7].0.add_received(100);
        shared[8].0.add_received(5);
        ours.finish(8);
        assert_eq!(ours.finished(8), Some(8 * 3 + 1 + 5));
        tokio::time::timeout(Duration::from_secs(5), async {
            while !all_acked() {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await
        .expect("the change acknowledged");
        assert_eq!(shared[7].1.acked().get(), 7 * 3 + 1 + 100);

        sender.abort();
        let _ = sender.await;
        // The sender's end is gone: the receiver sees the stream end cleanly.
        receiver.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_malformed_frame_ends_the_ack_stream() {
        let (mut a, mut b) = tokio::io::duplex(1024);
        use tokio::io::AsyncWriteExt;
        a.write_all(&[0, 3, 0xff, 0xff, 0xff]).await.unwrap();
        let ledger = Ledger::new(Duration::from_secs(1));
        assert!(receive(&mut b, &ledger).await.is_err());
    }
}
