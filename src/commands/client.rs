//! `porthole client`.

use anyhow::{Context, Result};
use porthole_engine::client::Client;
use porthole_transport_iroh::{IrohConnector, RelaySetting};
use porthole_upgrade::{UpgradeOptions, UpgradingConnector};
use tokio_util::sync::CancellationToken;

use crate::cli::ClientArgs;
use crate::config::resolve::{self, ClientSettings, ClientTransport, IrohClient, Plan};
use crate::exit::Exit;

pub async fn run(args: &ClientArgs) -> Result<(), Exit> {
    let settings = match resolve::client(args).map_err(Exit::usage)? {
        Plan::Nodepass(url) => return super::nodepass::run(*url).await.map_err(Exit::from),
        Plan::Peer(s) => *s,
    };
    let shutdown = crate::commands::shutdown_on_signal();
    match &settings.transport {
        ClientTransport::Manual(m) => super::manual::run_client(&settings, m, shutdown)
            .await
            .map_err(Exit::from),
        ClientTransport::Iroh(t) => run_iroh(&settings, t, shutdown).await.map_err(Exit::from),
    }
}

/// An iroh endpoint bound as the settings say, and the connector that dials their server
/// (by id, with the configured relays and direct addresses): the client's and `ping`'s.
pub async fn iroh_connector(
    s: &ClientSettings,
    t: &IrohClient,
) -> Result<(iroh::Endpoint, IrohConnector)> {
    let endpoint = porthole_transport_iroh::bind(&t.options, &s.quic)
        .await
        .context("starting the iroh endpoint")?;
    let relays = match &t.options.relays {
        RelaySetting::Custom(v) => v.clone(),
        _ => Vec::new(),
    };
    let addr = porthole_transport_iroh::ticket::endpoint_addr(&t.server, &relays, &t.server_addrs)
        .map_err(|e| anyhow::anyhow!("server id: {e}"))?;
    let connector = IrohConnector::new(endpoint.clone(), addr, &s.quic);
    Ok((endpoint, connector))
}

async fn run_iroh(s: &ClientSettings, t: &IrohClient, shutdown: CancellationToken) -> Result<()> {
    // Listeners first: a port conflict is reported before any network work.
    let config = s.engine_config();
    let telemetry = config.telemetry.clone();
    let client = Client::bind(config).await?;
    let watching = super::watch::engine(&s.watch, &telemetry, &shutdown).await?;
    let (endpoint, iroh) = iroh_connector(s, t).await?;
    let upgrade = t
        .upgrade
        .as_ref()
        .map(|stun| UpgradeOptions::beside(&t.options, stun.clone(), s.quic.clone()));
    let connector = UpgradingConnector::new(iroh, upgrade);
    let result = client.run(connector, shutdown).await;
    endpoint.close().await;
    watching.finish().await;
    result.map_err(anyhow::Error::from)
}
