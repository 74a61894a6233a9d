//! The forwards one connection has opened: written by the control stream (`conn`), read
//! by every TCP stream (`tcp`) and UDP flow (`udp`) of that connection.

use std::sync::{Arc, RwLock};

use tokio_util::sync::CancellationToken;

use crate::access::ClientRule;
use crate::policy::Resolved;
use crate::telemetry::ForwardLive;

/// One open forward: what the policy resolved, and its counters.
#[derive(Debug)]
pub(crate) struct Forward {
    pub resolved: Resolved,
    pub live: Arc<ForwardLive>,
    /// Cancelled when the client's rules no longer allow this forward: its streams and
    /// flows end, new ones are refused.
    pub closed: CancellationToken,
}

impl std::ops::Deref for Forward {
    type Target = Resolved;
    fn deref(&self) -> &Resolved {
        &self.resolved
    }
}

/// The forwards a connection has opened, indexed by forward id.
#[derive(Debug, Default)]
pub(crate) struct Forwards(RwLock<Vec<Arc<Forward>>>);

impl Forwards {
    pub fn get(&self, id: u16) -> Option<Arc<Forward>> {
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(id as usize)
            .cloned()
    }

    /// Adds a forward under the next id; `live` makes its counters for that id.
    pub fn push(
        &self,
        resolved: Resolved,
        max: usize,
        live: impl FnOnce(u16) -> Arc<ForwardLive>,
    ) -> Option<u16> {
        let mut v = self.0.write().unwrap_or_else(|e| e.into_inner());
        // Ids from FIRST_PUBLISH_ID on are published services'.
        if v.len() >= max.min(porthole_proto::message::FIRST_PUBLISH_ID as usize) {
            return None;
        }
        let id = v.len() as u16;
        v.push(Arc::new(Forward {
            resolved,
            live: live(id),
            closed: CancellationToken::new(),
        }));
        Some(id)
    }

    /// Closes every open forward `rule` no longer allows; returns their sources.
    pub fn close_disallowed(&self, rule: &ClientRule) -> Vec<String> {
        let v = self.0.read().unwrap_or_else(|e| e.into_inner());
        v.iter()
            .filter(|f| !f.closed.is_cancelled())
            .filter(|f| !rule.allows(f.source.protocol, &f.addrs))
            .map(|f| {
                f.closed.cancel();
                f.source.to_string()
            })
            .collect()
    }
}
