//! The forwards one connection has opened: written by the control stream (`conn`), read
//! by every TCP stream (`tcp`) and UDP flow (`udp`) of that connection.

use std::sync::{Arc, RwLock};

use crate::policy::Resolved;

/// The forwards a connection has opened, indexed by forward id.
#[derive(Debug, Default)]
pub(crate) struct Forwards(RwLock<Vec<Arc<Resolved>>>);

impl Forwards {
    pub fn get(&self, id: u16) -> Option<Arc<Resolved>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id as usize)
            .cloned()
    }

    pub fn push(&self, r: Resolved, max: usize) -> Option<u16> {
        let mut v = self.0.write().unwrap_or_else(|e| e.into_inner());
        if v.len() >= max.min(u16::MAX as usize) {
            return None;
        }
        v.push(Arc::new(r));
        Some((v.len() - 1) as u16)
    }
}
