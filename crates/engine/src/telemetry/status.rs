//! The snapshots `porthole status --json` prints and `/api/status` serves.

use super::*;

// The snapshots: what `porthole status --json` prints. Field names are part of the
// documented interface (docs/OPERATING.md); add fields, do not rename them.

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PathStatus {
    /// `direct`, `relay` or `unknown`.
    pub kind: String,
    /// The peer's address (direct) or the relay's URL (relay).
    pub remote: Option<String>,
    pub rtt_ms: Option<f64>,
}

impl From<PathNow> for PathStatus {
    fn from(p: PathNow) -> Self {
        let kind = path_name(Some(&p)).to_string();
        let remote = match p.kind {
            PathKind::Direct(a) => Some(a.to_string()),
            PathKind::Relay(u) => Some(u),
            PathKind::Unknown => None,
        };
        Self {
            kind,
            remote,
            rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardStatus {
    pub id: u64,
    pub source: String,
    /// The client's local listener.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub listen: Option<String>,
    pub tcp_open: u64,
    pub tcp_total: u64,
    pub udp_flows: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionStatus {
    pub id: u64,
    /// The token's label (`token:1a2b3c4d`), never the token.
    pub client: String,
    pub peer: String,
    pub path: Option<PathStatus>,
    pub connected_since: u64,
    pub bytes_up: u64,
    pub bytes_down: u64,
    pub tcp_open: u64,
    pub udp_flows: u64,
    pub forwards: Vec<ForwardStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusalStatus {
    pub kind: String,
    pub reason: String,
    pub count: u64,
    pub last: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerStatus {
    pub sessions: Vec<SessionStatus>,
    pub refusals: Vec<RefusalStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientStatus {
    pub state: TunnelState,
    pub reason: Option<String>,
    pub next_attempt_in_ms: Option<u64>,
    pub server: Option<String>,
    pub up_since: Option<u64>,
    pub path: Option<PathStatus>,
    pub rtt_history_ms: Vec<f64>,
    pub reconnects: u64,
    pub forwards: Vec<ForwardStatus>,
}

pub(super) fn path_name(p: Option<&PathNow>) -> &'static str {
    match p.map(|p| &p.kind) {
        Some(PathKind::Direct(_)) => "direct",
        Some(PathKind::Relay(_)) => "relay",
        _ => "unknown",
    }
}
