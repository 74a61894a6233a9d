//! `porthole client`.

use anyhow::{Context, Result};
use porthole_engine::client::{Client, ClientConfig};
use porthole_iroh::{IrohConnector, RelaySetting};

use crate::cli::{ClientArgs, Mode};
use crate::config::resolve::{self, ClientSettings};
use crate::exit::Exit;

pub async fn run(args: &ClientArgs) -> Result<(), Exit> {
    let settings = resolve::client(args).map_err(Exit::usage)?;
    match settings.mode {
        Mode::Iroh => run_iroh(settings).await.map_err(Exit::from),
        Mode::Manual => {
            let shutdown = crate::commands::shutdown_on_signal();
            super::manual::run_client(settings, shutdown)
                .await
                .map_err(Exit::from)
        }
        other => Err(Exit::usage(anyhow::anyhow!(
            "mode {:?} is not available for `porthole client` yet",
            other.as_str()
        ))),
    }
}

pub fn engine_config(s: &ClientSettings) -> ClientConfig {
    let mut c = ClientConfig::new(s.token.clone(), s.forwards.clone());
    c.udp_idle_timeout = s.udp_idle_timeout;
    c
}

async fn run_iroh(s: ClientSettings) -> Result<()> {
    // Listeners first: a port conflict is reported before any network work.
    let client = Client::bind(engine_config(&s)).await?;
    let endpoint = porthole_iroh::bind(&s.iroh)
        .await
        .context("starting the iroh endpoint")?;
    let relays = match &s.iroh.relays {
        RelaySetting::Custom(v) => v.clone(),
        _ => Vec::new(),
    };
    let id = s.server_id.context("no server id")?;
    let addr = porthole_iroh::ticket::endpoint_addr(&id, &relays, &s.server_addrs)
        .map_err(|e| anyhow::anyhow!("server id: {e}"))?;
    let connector = IrohConnector::new(endpoint.clone(), addr);
    let shutdown = crate::commands::shutdown_on_signal();
    let result = client.run(connector, shutdown).await;
    endpoint.close().await;
    result.map_err(anyhow::Error::from)
}
