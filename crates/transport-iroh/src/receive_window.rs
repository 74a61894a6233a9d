//! The engine's receive-window tuner ([`porthole_engine::receive_window`]) over an iroh
//! connection.

use std::time::Duration;

use iroh::endpoint::{Connection, VarInt};
use porthole_engine::receive_window::WindowControl;

use crate::paths;

pub use porthole_engine::receive_window::{MAX_WINDOW, MIN_WINDOW, spawn_tuner};

/// An iroh connection as the tuner sees it: the selected path's RTT.
pub struct Tuned(pub Connection);

impl WindowControl for Tuned {
    fn received_bytes(&self) -> u64 {
        self.0.stats().udp_rx.bytes
    }

    fn rtt(&self) -> Option<Duration> {
        paths::selected(&self.0).map(|p| p.rtt)
    }

    fn set_receive_window(&self, bytes: u64) {
        self.0
            .set_receive_window(VarInt::from_u64(bytes).unwrap_or(VarInt::MAX));
    }

    async fn closed(&self) {
        self.0.closed().await;
    }
}
