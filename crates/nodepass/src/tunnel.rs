//! The running tunnel as its users' side sees it: what `session` needs to start one
//! (an idle pool connection, announced to the peer over the signal channel), made by
//! `channel` for each tunnel it runs. Its own module so that `channel` (which dials
//! sessions through `session`) and `session` (which launches them here) do not import
//! each other.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::pool::{Pool, PoolConn};
use crate::stream::UdpFraming;
use crate::wire::id_hex;
use crate::wire::signal::Signal;

/// What the accepting side needs to start sessions on the current tunnel.
#[derive(Debug)]
pub struct TunnelHandle {
    pub pool: Arc<Pool>,
    /// How this tunnel's UDP sessions frame datagrams.
    pub udp_framing: Arc<UdpFraming>,
    signals: mpsc::Sender<Signal>,
    verified: watch::Receiver<bool>,
    pub errors: AtomicU64,
}

impl TunnelHandle {
    /// Takes the oldest idle pool connection and announces it (`tcp` / `udp`); the caller
    /// relays at once, without waiting for an answer.
    pub async fn launch(&self, kind: &str, remote: SocketAddr) -> Option<PoolConn> {
        let mut v = self.verified.clone();
        // Under tls=1 nothing is served before the peer's fingerprint was checked.
        if tokio::time::timeout(Duration::from_secs(15), v.wait_for(|ok| *ok))
            .await
            .is_err()
        {
            warn!("peer not verified: refusing {remote}");
            return None;
        }
        let conn = self.pool.wait_take_oldest(Duration::from_secs(2)).await;
        let Some(conn) = conn else {
            self.errors.fetch_add(1, Ordering::Relaxed);
            warn!("no idle pool connection for {remote}");
            return None;
        };
        let signal = Signal {
            action: kind.into(),
            remote: remote.to_string(),
            id: id_hex(conn.id),
            fp: String::new(),
        };
        if self.signals.send(signal).await.is_err() {
            return None;
        }
        Some(conn)
    }
}

impl TunnelHandle {
    /// `signals` goes to the signal channel's writer; `verified` turns true once
    /// the peer's fingerprint was checked (at once where nothing needs checking).
    pub(crate) fn new(
        pool: Arc<Pool>,
        udp_framing: Arc<UdpFraming>,
        signals: mpsc::Sender<Signal>,
        verified: watch::Receiver<bool>,
    ) -> Self {
        Self {
            pool,
            udp_framing,
            signals,
            verified,
            errors: AtomicU64::new(0),
        }
    }
}
