//! Who may connect and what each may reach: named clients, each with its tokens, its
//! allow-lists and its limits. The rules in force ([`AccessRules`]) are replaced as a
//! whole when the operator reloads them; every session watches them and ends itself
//! (or the forwards no longer allowed) when its client loses access.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::SystemTime;

use porthole_proto::key::EndpointId;
use porthole_proto::source::Protocol;
use porthole_proto::token::AuthToken;
use subtle::{ConditionallySelectable, ConstantTimeEq as _};
use tokio::sync::watch;

use crate::auth::TokenSet;
use crate::policy::Policy;

/// The name of the client the flat `--auth-tokens` / `--auth-tokens-file` and the
/// global allow-lists make up.
pub const DEFAULT_CLIENT: &str = "default";

/// One named client.
#[derive(Clone)]
pub struct ClientRule {
    /// In logs, status and metrics.
    pub name: String,
    pub tokens: Vec<AuthToken>,
    /// Client keys (Ed25519 public keys, `porthole show-client-id`) that prove
    /// themselves on each connection instead of showing a token.
    pub keys: Vec<EndpointId>,
    pub policy: Policy,
    /// Where this client may publish services (reverse forwards); empty: nowhere.
    pub binds: crate::policy::BindRules,
    /// Concurrent sessions of this client (the server's own limit still applies).
    pub max_sessions: Option<usize>,
    /// Concurrent TCP streams and UDP flows over all of its sessions.
    pub max_streams: Option<usize>,
    pub max_udp_flows: Option<usize>,
    /// Bandwidth cap in bytes per second, each direction, over all of its sessions.
    pub max_rate: Option<u64>,
    /// After this the client's sessions end and its tokens are refused.
    pub expires: Option<SystemTime>,
}

impl std::fmt::Debug for ClientRule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRule")
            .field("name", &self.name)
            .field("tokens", &format_args!("<{} redacted>", self.tokens.len()))
            .field("keys", &self.keys)
            .field("policy", &self.policy)
            .field("binds", &self.binds)
            .field("max_sessions", &self.max_sessions)
            .field("max_streams", &self.max_streams)
            .field("max_udp_flows", &self.max_udp_flows)
            .field("max_rate", &self.max_rate)
            .field("expires", &self.expires)
            .finish()
    }
}

/// Equal when everything is, tokens compared in constant time.
impl PartialEq for ClientRule {
    fn eq(&self, o: &Self) -> bool {
        self.name == o.name
            && self.policy == o.policy
            && self.binds == o.binds
            && self.max_sessions == o.max_sessions
            && self.max_streams == o.max_streams
            && self.max_udp_flows == o.max_udp_flows
            && self.max_rate == o.max_rate
            && self.expires == o.expires
            && self.keys == o.keys
            && self.tokens.len() == o.tokens.len()
            && self.tokens.iter().zip(&o.tokens).all(|(a, b)| a.ct_eq(b))
    }
}

impl Eq for ClientRule {}

impl ClientRule {
    pub fn expired(&self, now: SystemTime) -> bool {
        self.expires.is_some_and(|e| now >= e)
    }

    /// Whether this client may still reach every one of `addrs` over `protocol`.
    pub fn allows(&self, protocol: Protocol, addrs: &[SocketAddr]) -> bool {
        let list = self.policy.list(protocol);
        !addrs.is_empty() && addrs.iter().all(|a| list.allows(*a))
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AccessError {
    #[error("no client has a token: nobody could connect")]
    Empty,
    #[error("client {0:?} is listed twice")]
    DuplicateName(String),
    #[error("client {0:?} has no token and no key")]
    NoToken(String),
    #[error("clients {0:?} and {1:?} share a token: a token names exactly one client")]
    SharedToken(String, String),
    #[error("clients {0:?} and {1:?} share a key: a key names exactly one client")]
    SharedKey(String, String),
}

/// A complete, consistent set of clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    clients: Vec<Arc<ClientRule>>,
}

impl Access {
    pub fn new(clients: Vec<ClientRule>) -> Result<Self, AccessError> {
        if clients.is_empty() {
            return Err(AccessError::Empty);
        }
        let mut names = BTreeSet::new();
        let mut owner: BTreeMap<&str, &str> = BTreeMap::new();
        let mut key_owner: BTreeMap<EndpointId, &str> = BTreeMap::new();
        for c in &clients {
            if !names.insert(c.name.as_str()) {
                return Err(AccessError::DuplicateName(c.name.clone()));
            }
            if c.tokens.is_empty() && c.keys.is_empty() {
                return Err(AccessError::NoToken(c.name.clone()));
            }
            for k in &c.keys {
                if let Some(other) = key_owner.insert(*k, &c.name)
                    && other != c.name
                {
                    return Err(AccessError::SharedKey(other.into(), c.name.clone()));
                }
            }
            for t in &c.tokens {
                if let Some(other) = owner.insert(t.expose(), &c.name)
                    && other != c.name
                {
                    return Err(AccessError::SharedToken(other.into(), c.name.clone()));
                }
            }
        }
        Ok(Self {
            clients: clients.into_iter().map(Arc::new).collect(),
        })
    }

    /// The one implicit client of a server configured with flat tokens and allow-lists.
    pub fn single(tokens: &TokenSet, policy: Policy) -> Self {
        Self {
            clients: vec![Arc::new(ClientRule {
                name: DEFAULT_CLIENT.into(),
                tokens: tokens.tokens().to_vec(),
                keys: Vec::new(),
                policy,
                binds: Default::default(),
                max_sessions: None,
                max_streams: None,
                max_udp_flows: None,
                max_rate: None,
                expires: None,
            })],
        }
    }

    /// The client a token belongs to. Every token is compared, in constant time, so
    /// neither timing nor an early exit tells a guesser how close they came or whose
    /// token it nearly was.
    pub fn identify(&self, candidate: &AuthToken) -> Option<Arc<ClientRule>> {
        let mut found = subtle::Choice::from(0);
        let mut index = 0u32;
        for (i, c) in (0u32..).zip(&self.clients) {
            for t in &c.tokens {
                let hit = t.expose().as_bytes().ct_eq(candidate.expose().as_bytes());
                index.conditional_assign(&i, hit);
                found |= hit;
            }
        }
        bool::from(found).then(|| self.clients[index as usize].clone())
    }

    /// The client a proven key belongs to (public keys: no secret to protect).
    pub fn identify_key(&self, key: &EndpointId) -> Option<Arc<ClientRule>> {
        self.clients.iter().find(|c| c.keys.contains(key)).cloned()
    }

    /// The client behind a credential.
    pub fn identify_credential(&self, c: &Credential) -> Option<Arc<ClientRule>> {
        match c {
            Credential::Token(t) => self.identify(t),
            Credential::Key(k) => self.identify_key(k),
        }
    }

    pub fn clients(&self) -> &[Arc<ClientRule>] {
        &self.clients
    }

    pub fn token_count(&self) -> usize {
        self.clients.iter().map(|c| c.tokens.len()).sum()
    }

    /// What changed from `self` to `new`, by client name.
    pub fn changes(&self, new: &Access) -> Changes {
        let old: BTreeMap<&str, &ClientRule> = self
            .clients
            .iter()
            .map(|c| (c.name.as_str(), &**c))
            .collect();
        let now: BTreeMap<&str, &ClientRule> = new
            .clients
            .iter()
            .map(|c| (c.name.as_str(), &**c))
            .collect();
        Changes {
            added: now
                .keys()
                .filter(|n| !old.contains_key(*n))
                .map(|n| n.to_string())
                .collect(),
            removed: old
                .keys()
                .filter(|n| !now.contains_key(*n))
                .map(|n| n.to_string())
                .collect(),
            changed: now
                .iter()
                .filter(|(n, c)| old.get(*n).is_some_and(|o| o != *c))
                .map(|(n, _)| n.to_string())
                .collect(),
        }
    }
}

/// How a client proved itself: a token it showed, or a key it proved on the connection.
#[derive(Clone)]
pub enum Credential {
    Token(AuthToken),
    Key(EndpointId),
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Credential::Token(_) => f.write_str("Token(<redacted>)"),
            Credential::Key(k) => write!(f, "Key({k})"),
        }
    }
}

/// What a reload changed, by client name (never a token).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub changed: Vec<String>,
}

impl Changes {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("no change");
        }
        let mut parts = Vec::new();
        for (what, names) in [
            ("added", &self.added),
            ("removed", &self.removed),
            ("changed", &self.changed),
        ] {
            if !names.is_empty() {
                parts.push(format!("{what} {}", names.join(", ")));
            }
        }
        f.write_str(&parts.join("; "))
    }
}

/// The rules in force, shared by the server and the reloader; cheap to clone.
#[derive(Debug, Clone)]
pub struct AccessRules(Arc<watch::Sender<Arc<Access>>>);

impl AccessRules {
    pub fn new(access: Access) -> Self {
        Self(Arc::new(watch::channel(Arc::new(access)).0))
    }

    pub fn current(&self) -> Arc<Access> {
        self.0.borrow().clone()
    }

    /// Puts `access` in force at once; sessions re-check their client. Returns what
    /// changed.
    pub fn replace(&self, access: Access) -> Changes {
        let changes = self.current().changes(&access);
        self.0.send_replace(Arc::new(access));
        changes
    }

    /// Wakes on every replacement.
    pub fn subscribe(&self) -> watch::Receiver<Arc<Access>> {
        self.0.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::AllowList;

    fn token(i: u8) -> AuthToken {
        let _ = i;
        AuthToken::generate().unwrap_or_else(|_| unreachable!())
    }

    fn client(name: &str, tokens: Vec<AuthToken>, tcp: &[&str]) -> ClientRule {
        ClientRule {
            name: name.into(),
            tokens,
            keys: Vec::new(),
            policy: Policy {
                tcp: AllowList::parse(tcp).unwrap_or_else(|e| panic!("{e}")),
                udp: AllowList::default(),
            },
            binds: Default::default(),
            max_sessions: None,
            max_streams: None,
            max_udp_flows: None,
            max_rate: None,
            expires: None,
        }
    }

    #[test]
    fn a_token_names_its_client() {
        let (a, b, c) = (token(1), token(2), token(3));
        let access = Access::new(vec![
            client("alice", vec![a.clone()], &["10.0.0.1/32:22"]),
            client("bob", vec![b.clone(), c.clone()], &["10.0.0.2/32:5432"]),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            access.identify(&a).map(|c| c.name.clone()).as_deref(),
            Some("alice")
        );
        assert_eq!(
            access.identify(&c).map(|c| c.name.clone()).as_deref(),
            Some("bob")
        );
        assert!(access.identify(&token(4)).is_none());
        assert_eq!(access.token_count(), 3);
    }

    #[test]
    fn inconsistent_sets_are_refused() {
        let a = token(1);
        assert_eq!(Access::new(vec![]), Err(AccessError::Empty));
        assert_eq!(
            Access::new(vec![
                client("x", vec![a.clone()], &[]),
                client("x", vec![token(2)], &[])
            ]),
            Err(AccessError::DuplicateName("x".into()))
        );
        assert_eq!(
            Access::new(vec![client("x", vec![], &[])]),
            Err(AccessError::NoToken("x".into()))
        );
        assert_eq!(
            Access::new(vec![
                client("x", vec![a.clone()], &[]),
                client("y", vec![a], &[])
            ]),
            Err(AccessError::SharedToken("x".into(), "y".into()))
        );
    }

    #[test]
    fn changes_are_named() {
        let (a, b) = (token(1), token(2));
        let old = Access::new(vec![
            client("alice", vec![a.clone()], &["10.0.0.1/32"]),
            client("bob", vec![b.clone()], &[]),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let new = Access::new(vec![
            client("alice", vec![a], &["10.0.0.2/32"]),
            client("carol", vec![token(3)], &[]),
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let c = old.changes(&new);
        assert_eq!(c.added, vec!["carol"]);
        assert_eq!(c.removed, vec!["bob"]);
        assert_eq!(c.changed, vec!["alice"]);
        assert_eq!(c.to_string(), "added carol; removed bob; changed alice");
        assert!(old.changes(&old).is_empty());
    }
}
