//! Tickets from and to iroh addresses.

use std::net::SocketAddr;

use iroh::{Endpoint, EndpointAddr, PublicKey};
use porthole_proto::key::EndpointId;
use porthole_proto::ticket::{MAX_ADDRS, MAX_RELAYS, Ticket};

use crate::options::{RelaySetting, RelaySpec};

/// The ticket for a running endpoint: its id, the relays clients should use, and its
/// current direct addresses.
pub fn ticket_for(endpoint: &Endpoint, relays: &RelaySetting) -> Ticket {
    let addr = endpoint.addr();
    let relay_urls: Vec<String> = match relays {
        RelaySetting::Custom(specs) => specs.iter().map(|s| s.to_string()).collect(),
        RelaySetting::Public => addr.relay_urls().map(|u| u.to_string()).collect(),
        RelaySetting::Disabled => Vec::new(),
    };
    let mut direct: Vec<SocketAddr> = addr
        .ip_addrs()
        .copied()
        .filter(|a| !a.ip().is_unspecified())
        .collect();
    direct.truncate(MAX_ADDRS);
    Ticket {
        endpoint_id: to_proto_id(&endpoint.id()),
        relay_urls: relay_urls.into_iter().take(MAX_RELAYS).collect(),
        direct_addrs: direct,
    }
}

pub fn to_proto_id(id: &PublicKey) -> EndpointId {
    // An iroh PublicKey is always a valid Ed25519 point.
    EndpointId::from_bytes(*id.as_bytes()).unwrap_or_else(|_| unreachable_id())
}

fn unreachable_id() -> EndpointId {
    porthole_proto::key::SecretKey::from_bytes([0; 32]).endpoint_id()
}

pub fn to_iroh_id(id: &EndpointId) -> Result<PublicKey, String> {
    PublicKey::from_bytes(id.as_bytes()).map_err(|e| e.to_string())
}

/// The address a client dials: the server's id plus every hint it has.
pub fn endpoint_addr(
    id: &EndpointId,
    relays: &[RelaySpec],
    direct: &[SocketAddr],
) -> Result<EndpointAddr, String> {
    let mut addr = EndpointAddr::new(to_iroh_id(id)?);
    for r in relays {
        addr = addr.with_relay_url(r.url.clone());
    }
    for d in direct {
        addr = addr.with_ip_addr(*d);
    }
    Ok(addr)
}
