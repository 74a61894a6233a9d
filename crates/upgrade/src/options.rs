//! What an upgrade may do, and how often a client tries.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use porthole_engine::direct_paths::PathRules;
use porthole_engine::quic_params::QuicParams;
use porthole_proto::blob::NatKind;
use porthole_transport_iroh::IrohOptions;
use porthole_transport_quic::ManualOptions;

/// How long each side punches before it gives up (the relay carries on meanwhile).
pub const PUNCH_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the QUIC handshake on a punched path may take, each side counting.
pub const CONNECT_WAIT: Duration = Duration::from_secs(10);
/// Upgrades a server punches at once, over all clients (one per client at a time).
pub const MAX_CONCURRENT: usize = 4;
/// A client's pause after its first failed attempt; doubled after each further one.
pub const FIRST_RETRY: Duration = Duration::from_secs(30);
/// The longest pause between a client's attempts.
pub const MAX_RETRY: Duration = Duration::from_secs(15 * 60);

#[derive(Debug, Clone)]
pub struct UpgradeOptions {
    /// STUN servers (HOST:PORT, looked up at each attempt) that classify the NAT of
    /// the upgrade's socket: two that answer are needed to tell a symmetric NAT.
    pub stun: Vec<String>,
    /// Local UDP address of the upgrade's socket (port 0: a fresh one each time);
    /// see [`UpgradeOptions::beside`].
    pub bind: SocketAddr,
    /// QUIC tuning of the direct connection: the session's own.
    pub quic: QuicParams,
    /// Which addresses may be offered and punched (tunnel interfaces never are).
    pub direct_paths: PathRules,
    /// Each side's punching deadline.
    pub punch_timeout: Duration,
}

impl UpgradeOptions {
    /// The upgrade of an iroh endpoint set up with `iroh`: the same address rules, and
    /// its socket beside the endpoint's, on the IP of the first IPv4 `--bind` address (a
    /// multi-homed host's traffic leaves where the user said) and a fresh port (iroh
    /// holds its own). Without an IPv4 one: all interfaces, as iroh itself (the upgrade
    /// punches over IPv4 only).
    pub fn beside(iroh: &IrohOptions, stun: Vec<String>, quic: QuicParams) -> Self {
        let ip = iroh.bind.iter().find(|a| a.is_ipv4()).map(|a| a.ip());
        Self {
            stun,
            bind: SocketAddr::new(ip.unwrap_or(Ipv4Addr::UNSPECIFIED.into()), 0),
            quic,
            direct_paths: iroh.direct_paths.clone(),
            punch_timeout: PUNCH_TIMEOUT,
        }
    }

    /// Manual mode's settings for one upgrade: its blobs never leave the connection,
    /// so they need only live as long as the punch.
    pub(crate) async fn manual(&self) -> ManualOptions {
        ManualOptions {
            bind: self.bind,
            stun: porthole_transport_quic::stun::resolve(&self.stun).await,
            expiry: self.punch_timeout * 3,
            punch_timeout: Some(self.punch_timeout),
            quic: self.quic.clone(),
            direct_paths: self.direct_paths.clone(),
        }
    }
}

/// Whether a direct path can be punched between these NATs: each side's mapping must
/// be known (two STUN answers), and at most one side may be endpoint-dependent (two
/// symmetric NATs defeat birthday probing within any sane packet budget).
pub fn punchable(a: NatKind, b: NatKind) -> bool {
    use NatKind::*;
    !matches!(
        (a, b),
        (Unknown, _) | (_, Unknown) | (EndpointDependent, EndpointDependent)
    )
}

/// Whether the server should punch now: between two endpoint-independent NATs iroh
/// punches by itself, so only once the session has been relayed for a while.
pub fn punch_now(client: NatKind, server: NatKind, relayed: Duration) -> bool {
    use NatKind::*;
    let iroh_can = matches!(client, EndpointIndependent | Open)
        && matches!(server, EndpointIndependent | Open);
    !iroh_can || relayed >= Duration::from_millis(porthole_proto::upgrade::IROH_FIRST_MS)
}

/// The pause before attempt `failures + 1` after `failures` failed ones in a row.
pub fn retry_after(failures: u32) -> Duration {
    if failures == 0 {
        return Duration::ZERO;
    }
    let doublings = (failures - 1).min(16);
    FIRST_RETRY.saturating_mul(1 << doublings).min(MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use NatKind::*;

    #[test]
    fn only_pairs_with_a_chance_are_punched() {
        assert!(punchable(EndpointIndependent, EndpointDependent));
        assert!(punchable(EndpointDependent, EndpointIndependent));
        assert!(punchable(Open, EndpointDependent));
        assert!(punchable(EndpointIndependent, EndpointIndependent));
        assert!(!punchable(EndpointDependent, EndpointDependent));
        assert!(!punchable(Unknown, EndpointIndependent));
        assert!(!punchable(EndpointIndependent, Unknown));
    }

    #[test]
    fn iroh_punches_cone_pairs_first() {
        let soon = Duration::from_millis(100);
        let later = Duration::from_secs(6);
        assert!(!punch_now(EndpointIndependent, EndpointIndependent, soon));
        assert!(!punch_now(Open, EndpointIndependent, soon));
        assert!(punch_now(EndpointIndependent, EndpointIndependent, later));
        assert!(punch_now(EndpointIndependent, EndpointDependent, soon));
        assert!(punch_now(EndpointDependent, EndpointIndependent, soon));
    }

    #[test]
    fn the_socket_binds_beside_the_endpoint() {
        let bind = |bind: Vec<SocketAddr>| {
            let iroh = IrohOptions {
                bind,
                ..IrohOptions::default()
            };
            UpgradeOptions::beside(&iroh, Vec::new(), QuicParams::default()).bind
        };
        let any: SocketAddr = "0.0.0.0:0".parse().unwrap();
        assert_eq!(bind(vec![]), any);
        assert_eq!(bind(vec!["[::1]:7000".parse().unwrap()]), any);
        let binds = vec![
            "[::1]:7000".parse().unwrap(),
            "10.1.2.3:7000".parse().unwrap(),
        ];
        assert_eq!(bind(binds), "10.1.2.3:0".parse::<SocketAddr>().unwrap());
    }

    #[test]
    fn attempts_back_off_to_a_cap() {
        assert_eq!(retry_after(0), Duration::ZERO);
        assert_eq!(retry_after(1), FIRST_RETRY);
        assert_eq!(retry_after(2), FIRST_RETRY * 2);
        assert_eq!(retry_after(3), FIRST_RETRY * 4);
        assert_eq!(retry_after(50), MAX_RETRY);
    }
}
