//! `porthole server`.

use std::time::Duration;

use anyhow::{Context, Result};
use iroh::Watcher;
use porthole_transport_iroh::{IrohAcceptor, RelaySetting};
use porthole_upgrade::{Answerer, UpgradeOptions, UpgradingAcceptor};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::cli::ServerArgs;
use crate::config::resolve::{self, Plan, ServerSettings, ServerTransport};
use crate::exit::Exit;

pub async fn run(args: &ServerArgs) -> Result<(), Exit> {
    let settings = match resolve::server(args).map_err(Exit::usage)? {
        Plan::Nodepass(url) => return super::nodepass::run(*url).await.map_err(Exit::from),
        Plan::Peer(s) => *s,
    };
    let shutdown = crate::commands::shutdown_on_signal();
    match &settings.transport {
        ServerTransport::Manual(m) => super::manual::run_server(&settings, m, shutdown)
            .await
            .map_err(Exit::from),
        ServerTransport::Iroh(opts, upgrade) => run_iroh(&settings, opts, upgrade, shutdown)
            .await
            .map_err(Exit::from),
    }
}

async fn run_iroh(
    s: &ServerSettings,
    opts: &porthole_transport_iroh::IrohOptions,
    upgrade: &Option<Vec<String>>,
    shutdown: CancellationToken,
) -> Result<()> {
    if s.secret.is_none() {
        warn!(
            "no --secret-file: this server gets a new EndpointId on every start; create a stable one with: porthole generate-server-key --output server.key"
        );
    }
    let (mut config, watching) = super::server::engine(s, &shutdown).await?;
    let endpoint = porthole_transport_iroh::bind(opts, &s.quic)
        .await
        .context("starting the iroh endpoint")?;
    wait_addressable(&endpoint, &opts.relays, opts.relay_only).await;
    let ticket = porthole_transport_iroh::ticket::ticket_for(&endpoint, &opts.relays)
        .encode()
        .context("building the ticket")?;
    println!("EndpointId: {}", endpoint.id());
    println!("Ticket: {ticket}");
    info!(tcp = %s.policy.tcp, udp = %s.policy.udp, max_sessions = s.max_sessions, "serving");
    log_binds(&s.binds);
    let iroh = IrohAcceptor::new(endpoint.clone(), &s.quic);
    let punched = match upgrade {
        Some(stun) => {
            let options = UpgradeOptions::beside(opts, stun.clone(), s.quic.clone());
            let (answerer, punched) = Answerer::new(options);
            config.upgrade = Some(std::sync::Arc::new(answerer));
            Some(punched)
        }
        None => {
            info!("direct upgrade off: relayed tunnels stay relayed");
            None
        }
    };
    let acceptor = UpgradingAcceptor::new(iroh, punched);
    porthole_engine::server::run(acceptor, config, shutdown).await?;
    endpoint.close().await;
    watching.finish().await;
    Ok(())
}

/// The server engine's config, with what runs beside it whichever transport serves:
/// the status windows (control socket, --metrics) and the access-rules reloader.
pub async fn engine(
    s: &ServerSettings,
    shutdown: &CancellationToken,
) -> Result<(
    porthole_engine::server::ServerConfig,
    super::watch::Watching,
)> {
    let config = s.engine_config();
    let watching = super::watch::engine(&s.watch, &config.telemetry, shutdown).await?;
    super::reload::spawn(
        s.access_sources.clone(),
        config.access.clone(),
        shutdown.clone(),
    );
    Ok((config, watching))
}

/// Waits (bounded) until clients can reach us: registered at a relay when relays are
/// on, else bound with at least one direct address.
async fn wait_addressable(endpoint: &iroh::Endpoint, relays: &RelaySetting, relay_only: bool) {
    let limit = Duration::from_secs(10);
    if !matches!(relays, RelaySetting::Disabled) {
        if tokio::time::timeout(limit, endpoint.online())
            .await
            .is_err()
        {
            warn!(
                "no relay reachable after {limit:?}; clients can still use direct addresses (--server-addr)"
            );
        }
        return;
    }
    if relay_only {
        return;
    }
    let mut watcher = endpoint.watch_addr();
    let ready = async {
        loop {
            if watcher.get().ip_addrs().next().is_some() {
                return;
            }
            if watcher.updated().await.is_err() {
                return;
            }
        }
    };
    let _ = tokio::time::timeout(limit, ready).await;
}

/// Where clients may publish, when anywhere (the default is nowhere, which says nothing).
pub fn log_binds(b: &porthole_engine::policy::BindRules) {
    if !b.tcp.is_empty() || !b.udp.is_empty() {
        info!(
            tcp = %b.tcp,
            udp = %b.udp,
            names = %b.names.join(", "),
            "clients may publish"
        );
    }
}
