//! The auth gate: the server's token set, constant-time lookup, and a per-peer limiter
//! that slows down token guessing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use porthole_proto::token::AuthToken;
use subtle::{Choice, ConstantTimeEq};

/// The tokens a server accepts. Lookup compares against every token, in constant time,
/// so neither timing nor early exit tells a guesser how close they came.
#[derive(Clone)]
pub struct TokenSet(Vec<AuthToken>);

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenSet({} tokens, <redacted>)", self.0.len())
    }
}

impl TokenSet {
    /// `None` if `tokens` is empty: a server without tokens would let nobody in, which
    /// is a configuration mistake to report, not a state to run in.
    pub fn new(tokens: Vec<AuthToken>) -> Option<Self> {
        (!tokens.is_empty()).then_some(Self(tokens))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn tokens(&self) -> &[AuthToken] {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The tokens' labels (logs, status), never the tokens.
    pub fn labels(&self) -> Vec<String> {
        self.0.iter().map(crate::telemetry::token_label).collect()
    }

    pub fn contains(&self, candidate: &AuthToken) -> bool {
        let mut found = Choice::from(0);
        for t in &self.0 {
            found |= t.expose().as_bytes().ct_eq(candidate.expose().as_bytes());
        }
        found.into()
    }
}

/// Failed-auth accounting per peer key (an address or identity).
///
/// After `free_failures` failures a peer must wait before its next attempt is even
/// read; the wait doubles with each further failure, up to `max_backoff`. A success
/// clears the record. The table is bounded; when full, the stalest entry goes.
#[derive(Debug)]
pub struct AuthLimiter {
    free_failures: u32,
    base_backoff: Duration,
    max_backoff: Duration,
    capacity: usize,
    peers: Mutex<HashMap<String, Record>>,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    failures: u32,
    blocked_until: Instant,
    last: Instant,
}

impl Default for AuthLimiter {
    fn default() -> Self {
        Self::new(5, Duration::from_secs(2), Duration::from_secs(300), 4096)
    }
}

impl AuthLimiter {
    pub fn new(
        free_failures: u32,
        base_backoff: Duration,
        max_backoff: Duration,
        capacity: usize,
    ) -> Self {
        Self {
            free_failures,
            base_backoff,
            max_backoff,
            capacity,
            peers: Mutex::new(HashMap::new()),
        }
    }

    /// `Some(remaining)` if `peer` must still wait before another attempt.
    pub fn check(&self, peer: &str, now: Instant) -> Option<Duration> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        let r = peers.get(peer)?;
        (r.blocked_until > now).then(|| r.blocked_until - now)
    }

    /// Records a failure; returns the backoff now imposed, if any.
    pub fn failure(&self, peer: &str, now: Instant) -> Option<Duration> {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        if !peers.contains_key(peer)
            && peers.len() >= self.capacity
            && let Some(stalest) = peers
                .iter()
                .min_by_key(|(_, r)| r.last)
                .map(|(k, _)| k.clone())
        {
            peers.remove(&stalest);
        }
        let r = peers.entry(peer.to_string()).or_insert(Record {
            failures: 0,
            blocked_until: now,
            last: now,
        });
        // Forget failures from long ago.
        if now.saturating_duration_since(r.last) > self.max_backoff * 2 {
            r.failures = 0;
        }
        r.failures += 1;
        r.last = now;
        if r.failures <= self.free_failures {
            return None;
        }
        let exp = (r.failures - self.free_failures - 1).min(16);
        let backoff = (self.base_backoff * 2u32.pow(exp)).min(self.max_backoff);
        r.blocked_until = now + backoff;
        Some(backoff)
    }

    pub fn success(&self, peer: &str) {
        self.peers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(peer);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_set_finds_members_only() {
        let a: AuthToken = "iABCDEFGHIJKLMNOPL".parse().unwrap();
        let b: AuthToken = "i0123456789abcdef5".parse().unwrap();
        let c: AuthToken = "izzzzzzzzzzzzzzzzD".parse().unwrap();
        let set = TokenSet::new(vec![a.clone(), b.clone()]).unwrap();
        assert!(set.contains(&a) && set.contains(&b) && !set.contains(&c));
        assert!(TokenSet::new(vec![]).is_none());
        assert!(!format!("{set:?}").contains("ABCDEF"));
    }

    #[test]
    fn limiter_backs_off_after_free_failures() {
        let l = AuthLimiter::new(2, Duration::from_secs(1), Duration::from_secs(8), 10);
        let t = Instant::now();
        assert_eq!(l.failure("p", t), None);
        assert_eq!(l.failure("p", t), None);
        assert_eq!(l.failure("p", t), Some(Duration::from_secs(1)));
        assert!(l.check("p", t).is_some());
        assert!(l.check("other", t).is_none());
        assert_eq!(l.failure("p", t), Some(Duration::from_secs(2)));
        for _ in 0..10 {
            l.failure("p", t);
        }
        assert_eq!(l.failure("p", t), Some(Duration::from_secs(8)));
        assert!(l.check("p", t + Duration::from_secs(9)).is_none());
        l.success("p");
        assert_eq!(l.failure("p", t), None);
    }

    #[test]
    fn limiter_is_bounded() {
        let l = AuthLimiter::new(0, Duration::from_secs(1), Duration::from_secs(8), 3);
        let t = Instant::now();
        for i in 0..10 {
            l.failure(&format!("p{i}"), t + Duration::from_millis(i));
        }
        assert_eq!(l.peers.lock().unwrap().len(), 3);
    }
}
