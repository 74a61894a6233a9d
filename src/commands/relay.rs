//! `porthole relay`.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use porthole_relay::{RelayOptions, TlsOptions};
use tracing::info;

use std::sync::Arc;
use std::sync::atomic::Ordering;

use porthole_observe::Report;
use porthole_observe::relay::RelayStats;
use porthole_observe::report::RelayStatus;

use crate::cli::RelayArgs;

pub async fn run(args: &RelayArgs) -> Result<()> {
    let quic_bind: Option<SocketAddr> = match args.quic_bind.as_deref() {
        Some("none") => None,
        Some(a) => Some(
            a.parse()
                .with_context(|| format!("--quic-bind {a:?}: expected IP:PORT or none"))?,
        ),
        None => Some(SocketAddr::from(([0, 0, 0, 0], 7842))),
    };
    let tls = match (&args.https_bind, &args.tls_cert, &args.tls_key) {
        (Some(https), Some(cert), Some(key)) => Some(TlsOptions {
            https_bind: *https,
            cert: cert.clone(),
            key: key.clone(),
            quic_bind,
        }),
        (None, None, None) => {
            if args.quic_bind.as_deref().is_some_and(|q| q != "none") {
                bail!(
                    "--quic-bind needs HTTPS (--https-bind, --tls-cert, --tls-key): QUIC address discovery runs over TLS"
                );
            }
            None
        }
        _ => bail!("HTTPS needs all of --https-bind, --tls-cert and --tls-key"),
    };
    let watch = crate::config::resolve::watch_settings(&args.watch, None, "relay")?;
    let stun = porthole_relay::spawn_stun(&args.stun_bind).await?;
    let started = porthole_observe::report::unix_now();
    for a in stun.addrs() {
        println!(
            "STUN server for manual mode: --stun-server {}",
            show_host(*a)
        );
    }
    let shutdown = super::shutdown_on_signal();
    if args.stun_only {
        let answered = stun.answered();
        let stats: RelayStats = Arc::new(move || RelayStatus {
            stun_requests: answered.load(Ordering::Relaxed),
            ..RelayStatus::default()
        });
        let watching = watch_relay(&watch, started, stats, &shutdown).await?;
        shutdown.cancelled().await;
        watching.finish().await;
        return Ok(());
    }
    let mut relay = porthole_relay::spawn(RelayOptions {
        http_bind: args.http_bind,
        tls,
    })
    .await?;
    let host = relay
        .https_addr()
        .or(relay.http_addr())
        .map(|a| {
            if a.ip().is_unspecified() {
                "<this-host>".to_string()
            } else {
                a.ip().to_string()
            }
        })
        .unwrap_or_default();
    println!(
        "relay URL for clients and servers: --relay-url {}",
        relay.client_url(&host)
    );
    let counters = relay.counters();
    let answered = stun.answered();
    let stats: RelayStats = Arc::new(move || {
        let c = counters();
        RelayStatus {
            clients: c.clients,
            accepts: c.accepts,
            bytes_in: c.bytes_in,
            bytes_out: c.bytes_out,
            qad_connections: c.qad_connections,
            stun_requests: answered.load(Ordering::Relaxed),
        }
    });
    let watching = watch_relay(&watch, started, stats, &shutdown).await?;
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = relay.join() => bail!("the relay stopped unexpectedly"),
    }
    info!("relay stopping");
    relay.shutdown().await;
    drop(stun);
    watching.finish().await;
    Ok(())
}

async fn watch_relay(
    s: &crate::config::resolve::WatchSettings,
    started: u64,
    stats: RelayStats,
    shutdown: &tokio_util::sync::CancellationToken,
) -> Result<super::watch::Watching> {
    let reader = stats.clone();
    let source: porthole_observe::Source = Arc::new(move || Report::relay(started, reader()));
    super::watch::start(s, source, porthole_observe::relay::metrics(stats), shutdown).await
}

/// An address to show users: the wildcard becomes a placeholder for this host's name.
fn show_host(a: SocketAddr) -> String {
    if a.ip().is_unspecified() {
        format!("<this-host>:{}", a.port())
    } else {
        a.to_string()
    }
}
