//! `porthole relay`.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use porthole_relay::{RelayOptions, TlsOptions};
use tracing::info;

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
    let shutdown = super::shutdown_on_signal();
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = relay.join() => bail!("the relay stopped unexpectedly"),
    }
    info!("relay stopping");
    relay.shutdown().await;
    Ok(())
}
