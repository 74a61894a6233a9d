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
    pub seen_fp: Option<String>,
    pub since: Instant,
}

impl std::fmt::Debug for PoolConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PoolConn({})", crate::wire::id_hex(self.id))
    }
}

#[derive(Debug, Default)]
pub struct Pool {
    idle: Mutex<VecDeque<PoolConn>>,
    added: Notify,
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
        self.lock().push_back(conn);
        self.added.notify_waiters();
    }

    pub fn take_oldest(&self) -> Option<PoolConn> {
        self.lock().pop_front()
    }

    pub fn take_newest(&self) -> Option<PoolConn> {
        self.lock().pop_back()
    }

    pub fn take(&self, id: PoolId) -> Option<PoolConn> {
        let mut q = self.lock();
        let i = q.iter().position(|c| c.id == id)?;
        q.remove(i)
    }

    /// Takes connection `id`, waiting up to `limit` for it to arrive.
    pub async fn wait_take(&self, id: PoolId, limit: Duration) -> Option<PoolConn> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let notified = self.added.notified();
            if let Some(c) = self.take(id) {
                return Some(c);
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.take(id);
            }
        }
    }

    /// Drops every idle connection (a `flush`, or a tunnel restart).
    pub fn clear(&self) -> usize {
        let drained: Vec<PoolConn> = self.lock().drain(..).collect();
        drained.len()
    }
}
