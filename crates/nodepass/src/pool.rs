//! Idle pool connections by ID, oldest first. Each carries exactly one session, then
//! is closed (one-time use).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::wire::PoolId;

pub struct PoolConn {
    pub id: PoolId,
    pub io: crate::stream::PoolStream,
    /// The server certificate fingerprint this side saw on the connection (clients, TLS).
    pub seen_fp: Option<crate::wire::Fingerprint>,
    pub since: Instant,
}

impl std::fmt::Debug for PoolConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolConn({})", crate::wire::id_hex(self.id))
    }
}

/// Where a server's multiplexed pool (HTTP/2 streams, QUIC streams) puts new pool
/// connections: the tunnel's first becomes the control channel, the rest join the pool
/// while it holds fewer than `max`.
#[derive(Clone)]
pub struct Intake {
    pub pool: std::sync::Arc<Pool>,
    pub control: std::sync::Arc<Mutex<Option<tokio::sync::oneshot::Sender<PoolConn>>>>,
    pub max: usize,
    /// A fresh pool ID (never the control channel's); `None` if there is none to give.
    pub new_id: fn() -> Option<PoolId>,
}

/// A place taken in an [`Intake`]: the ID to send, then [`Intake::deliver`].
pub struct Claim {
    pub id: PoolId,
    control: Option<tokio::sync::oneshot::Sender<PoolConn>>,
}

impl Claim {
    /// Whether this is the control channel's place.
    pub fn is_control(&self) -> bool {
        self.control.is_some()
    }
}

impl Intake {
    /// The next connection's place: the control channel's if it is still open, else a
    /// fresh ID; `None` while the pool is full.
    pub fn claim(&self) -> Option<Claim> {
        if let Some(tx) = self.control.lock().ok().and_then(|mut c| c.take()) {
            return Some(Claim {
                id: crate::wire::CONTROL_ID,
                control: Some(tx),
            });
        }
        if self.pool.len() >= self.max {
            return None;
        }
        Some(Claim {
            id: (self.new_id)()?,
            control: None,
        })
    }

    /// Whether a new connection would be refused for want of room: the control channel
    /// is placed and the pool holds `max` (a check before costly work; [`claim`](Self::claim)
    /// decides).
    pub fn full(&self) -> bool {
        let control_open = self.control.lock().map(|c| c.is_some()).unwrap_or(false);
        !control_open && self.pool.len() >= self.max
    }

    /// Gives a place back whose ID never reached the peer: the control channel's place
    /// goes to the next connection instead of ending the tunnel.
    pub fn release(&self, claim: Claim) {
        if let Some(tx) = claim.control
            && let Ok(mut slot) = self.control.lock()
            && slot.is_none()
        {
            *slot = Some(tx);
        }
    }

    /// Hands a connection whose ID was sent to the control channel or the pool.
    pub fn deliver(&self, claim: Claim, io: crate::stream::PoolStream) {
        let conn = PoolConn {
            id: claim.id,
            io,
            seen_fp: None,
            since: Instant::now(),
        };
        match claim.control {
            Some(tx) => {
                let _ = tx.send(conn);
            }
            None => self.pool.push(conn),
        }
    }
}

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<VecDeque<PoolConn>>,
    added: Notify,
    /// Wakes the refilling side as soon as a connection is used, rather than at its next
    /// periodic check: a burst of user connections otherwise drains the pool and waits.
    taken: Notify,
    /// The most connections ever idle at once (about the client's `min`).
    most: std::sync::atomic::AtomicUsize,
    /// When a connection was last taken.
    last_take: Mutex<Option<std::time::Instant>>,
}

impl Pool {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<PoolConn>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    pub fn contains(&self, id: PoolId) -> bool {
        self.lock().iter().any(|c| c.id == id)
    }

    pub fn push(&self, conn: PoolConn) {
        let len = {
            let mut q = self.lock();
            q.push_back(conn);
            q.len()
        };
        self.most
            .fetch_max(len, std::sync::atomic::Ordering::Relaxed);
        self.added.notify_waiters();
    }

    /// Whether the pool is (nearly) as full as it has ever been and no connection was
    /// taken for `quiet`: nobody is using it just now.
    pub fn at_rest(&self, quiet: std::time::Duration) -> bool {
        let most = self.most.load(std::sync::atomic::Ordering::Relaxed);
        let last = *self.last_take.lock().unwrap_or_else(|e| e.into_inner());
        self.len() + 1 >= most && last.is_none_or(|t| t.elapsed() >= quiet)
    }

    pub fn take_oldest(&self) -> Option<PoolConn> {
        let c = self.lock().pop_front();
        self.on_take(c)
    }

    pub fn take_newest(&self) -> Option<PoolConn> {
        let c = self.lock().pop_back();
        self.on_take(c)
    }

    pub fn take(&self, id: PoolId) -> Option<PoolConn> {
        let c = {
            let mut q = self.lock();
            q.iter().position(|c| c.id == id).and_then(|i| q.remove(i))
        };
        self.on_take(c)
    }

    fn on_take(&self, c: Option<PoolConn>) -> Option<PoolConn> {
        if c.is_some() {
            *self.last_take.lock().unwrap_or_else(|e| e.into_inner()) =
                Some(std::time::Instant::now());
            self.taken.notify_one();
        }
        c
    }

    /// Resolves once a connection was taken since the last call (or now, if one was).
    pub async fn taken(&self) {
        self.taken.notified().await
    }

    /// Takes connection `id`, waiting up to `limit` for it to arrive.
    pub async fn wait_take(&self, id: PoolId, limit: Duration) -> Option<PoolConn> {
        self.wait_for(limit, |p| p.take(id)).await
    }

    /// Takes the oldest connection, waiting up to `limit` for one to arrive.
    pub async fn wait_take_oldest(&self, limit: Duration) -> Option<PoolConn> {
        self.wait_for(limit, Pool::take_oldest).await
    }

    /// Retries `pick` whenever a connection arrives, until it yields one or `limit` passes.
    async fn wait_for(
        &self,
        limit: Duration,
        pick: impl Fn(&Self) -> Option<PoolConn>,
    ) -> Option<PoolConn> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.added.notified();
            if let Some(c) = pick(self) {
                return Some(c);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return pick(self);
            }
        }
    }

    /// Drops every idle connection (a `flush`, or a tunnel restart).
    pub fn clear(&self) -> usize {
        let drained: Vec<PoolConn> = self.lock().drain(..).collect();
        drained.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::PoolStream;

    async fn conn(id: u8) -> PoolConn {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap())
            .await
            .unwrap();
        PoolConn {
            id: [id; 4],
            io: PoolStream::Plain(s),
            seen_fp: None,
            since: Instant::now(),
        }
    }

    #[tokio::test]
    async fn a_take_wakes_the_refiller() {
        let pool = Pool::default();
        pool.push(conn(1).await);
        // Nothing taken yet: no wakeup.
        assert!(
            tokio::time::timeout(Duration::from_millis(50), pool.taken())
                .await
                .is_err()
        );
        assert!(pool.take([1; 4]).is_some());
        tokio::time::timeout(Duration::from_secs(1), pool.taken())
            .await
            .expect("take did not wake the refiller");
        // A miss is not a take.
        assert!(pool.take_oldest().is_none());
        assert!(
            tokio::time::timeout(Duration::from_millis(50), pool.taken())
                .await
                .is_err()
        );
    }

    #[tokio::test]
    async fn waiting_for_the_oldest_gets_one_pushed_later() {
        let pool = std::sync::Arc::new(Pool::default());
        let p = pool.clone();
        let waiter = tokio::spawn(async move { p.wait_take_oldest(Duration::from_secs(5)).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        pool.push(conn(7).await);
        let got = waiter.await.unwrap().expect("no connection");
        assert_eq!(got.id, [7; 4]);
        assert!(
            pool.wait_take_oldest(Duration::from_millis(30))
                .await
                .is_none()
        );
    }
}
