//! Acknowledgements between the two ends of a resumable session: each side tells the
//! other, per stream, how much of the other's direction it has read, so the other can
//! drop those bytes from its replay. They ride one stream of their own (a frame of
//! [`Acks`] per batch), not the data streams: the data path stays unframed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use porthole_proto::resume::{Acks, MAX_ACKS_PER_FRAME};
use tokio::io::{AsyncRead, AsyncWrite};

use super::carry::Shared;
use crate::control::{ControlError, read_frame_or_eof, write_frame};

/// How often changed offsets are sent. A stream's replay must hold what is in flight plus
/// this much more before its sender waits: short enough to cost little of the replay
/// limit, long enough to batch a busy session's streams into one frame.
pub const ACK_INTERVAL: Duration = Duration::from_millis(20);

/// The streams of one session by number, as the acknowledgements see them.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    streams: Arc<Mutex<HashMap<u64, Arc<Shared>>>>,
}

impl Ledger {
    pub fn insert(&self, stream: u64, shared: Arc<Shared>) {
        self.lock().insert(stream, shared);
    }

    pub fn remove(&self, stream: u64) {
        self.lock().remove(&stream);
    }

    pub fn get(&self, stream: u64) -> Option<Arc<Shared>> {
        self.lock().get(&stream).cloned()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Each stream's received count now.
    fn received(&self) -> Vec<(u64, u64)> {
        self.lock()
            .iter()
            .map(|(&stream, shared)| (stream, shared.received()))
            .collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Shared>>> {
        // The map stays consistent whatever a panicking holder did.
        self.streams.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Sends, every `interval`, the received count of each stream that changed since it was
/// last sent. Returns when writing fails (the connection is gone).
pub async fn send<W: AsyncWrite + Unpin>(
    w: &mut W,
    ledger: &Ledger,
    interval: Duration,
) -> Result<(), ControlError> {
    let mut sent: HashMap<u64, u64> = HashMap::new();
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = ledger.received();
        let changed: Vec<(u64, u64)> = now
            .iter()
            .copied()
            .filter(|(stream, received)| sent.get(stream) != Some(received))
            .collect();
        // Forget streams that left the ledger.
        if sent.len() > now.len() {
            let live: HashMap<u64, u64> = now.into_iter().collect();
            sent.retain(|s, _| live.contains_key(s));
        }
        for batch in changed.chunks(MAX_ACKS_PER_FRAME) {
            write_frame(
                w,
                &Acks {
                    entries: batch.to_vec(),
                },
            )
            .await?;
        }
        sent.extend(changed);
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
        let ours = Ledger::default();
        let theirs = Ledger::default();
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

        // A later change goes too; a stream that left is not a problem.
        ours.remove(0);
        shared[7].0.add_received(100);
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
        let ledger = Ledger::default();
        assert!(receive(&mut b, &ledger).await.is_err());
    }
}
