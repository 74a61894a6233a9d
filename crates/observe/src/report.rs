//! The report: what `porthole status --json` prints and `/api/status` serves. Field
//! names are a documented interface (docs/OPERATING.md): add fields, never rename.

use std::time::{SystemTime, UNIX_EPOCH};

use porthole_engine::telemetry::{ClientStatus, ServerStatus, Telemetry};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// `server`, `client` or `relay`.
    pub role: String,
    pub version: String,
    pub pid: u32,
    /// Unix seconds.
    pub started: u64,
    pub now: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub server: Option<ServerStatus>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub client: Option<ClientStatus>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub relay: Option<RelayStatus>,
}

/// What a relay has done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayStatus {
    /// Peers connected now.
    pub clients: u64,
    /// Peer connections accepted since the start.
    pub accepts: u64,
    /// Bytes relayed from peers, and to them.
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// QUIC address discovery connections served.
    pub qad_connections: u64,
    /// STUN binding requests answered (manual mode).
    pub stun_requests: u64,
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Report {
    fn base(role: &str, started: u64) -> Self {
        Self {
            role: role.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            started,
            now: unix_now(),
            server: None,
            client: None,
            relay: None,
        }
    }

    /// The report of a server or client from its telemetry.
    pub fn of(t: &Telemetry) -> Self {
        use porthole_engine::telemetry::Role;
        match t.role() {
            Role::Server => Self {
                server: Some(t.server_status()),
                ..Self::base("server", t.started())
            },
            Role::Client => Self {
                client: Some(t.client_status()),
                ..Self::base("client", t.started())
            },
        }
    }

    pub fn relay(started: u64, status: RelayStatus) -> Self {
        Self {
            relay: Some(status),
            ..Self::base("relay", started)
        }
    }
}
