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
    let stun = porthole_relay::spawn_stun(&args.stun_bind).await?;
    for a in stun.addrs() {
        println!(
            "STUN server for manual mode: --stun-server {}",
            show_host(*a)
        );
    }
    let shutdown = super::shutdown_on_signal();
    if args.stun_only {
        shutdown.cancelled().await;
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
    tokio::select! {
        _ = shutdown.cancelled() => {}
        _ = relay.join() => bail!("the relay stopped unexpectedly"),
    }
    info!("relay stopping");
    relay.shutdown().await;
    drop(stun);
    Ok(())
}

/// An address to show users: the wildcard becomes a placeholder for this host's name.
fn show_host(a: SocketAddr) -> String {
    if a.ip().is_unspecified() {
        format!("<this-host>:{}", a.port())
    } else {
        a.to_string()
    }
}
