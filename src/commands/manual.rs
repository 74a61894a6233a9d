//! `--mode manual` for server and client: copy-paste signaling, hole punching, then the
//! same engine as iroh mode over plain QUIC.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use porthole_engine::client::Client;
use porthole_engine::quic_params::QuicParams;
use porthole_proto::blob::{Blob, BlobKind};
use porthole_transport_quic::session::now_unix;
use porthole_transport_quic::{ManualOptions, PreparedClient, PreparedServer};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::resolve::{ClientSettings, ManualSettings, ServerSettings};
use crate::secrets;

pub async fn run_server(
    s: &ServerSettings,
    m: &ManualSettings,
    shutdown: CancellationToken,
) -> Result<()> {
    let (config, watching) = super::server::engine(s, &shutdown).await?;
    let opts = options(m, &s.quic).await;
    let offer = tokio::select! {
        o = read_blob(BlobKind::Offer, m.offer_file.as_deref()) => o?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    info!(nat = %offer.nat, "offer received with {} candidate(s)", offer.candidates.len());
    let prepared = PreparedServer::new(opts, offer).await?;
    write_blob(
        &prepared.answer().encode()?,
        m.answer_file.as_deref(),
        "answer",
        "client",
    )?;
    let acceptor = tokio::select! {
        a = prepared.accept() => a?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    info!("{}", acceptor.punched());
    info!(tcp = %s.policy.tcp, udp = %s.policy.udp, "serving over the punched path");
    super::server::log_binds(&s.binds);
    porthole_engine::server::run(acceptor.clone(), config, shutdown).await?;
    acceptor.close().await;
    watching.finish().await;
    Ok(())
}

pub async fn run_client(
    s: &ClientSettings,
    m: &ManualSettings,
    shutdown: CancellationToken,
) -> Result<()> {
    let config = s.engine_config();
    let telemetry = config.telemetry.clone();
    let client = Client::bind(config).await?;
    let watching = super::watch::engine(&s.watch, &telemetry, &shutdown).await?;
    let prepared = PreparedClient::new(options(m, &s.quic).await).await?;
    write_blob(
        &prepared.offer().encode()?,
        m.offer_file.as_deref(),
        "offer",
        "server",
    )?;
    let answer = tokio::select! {
        a = read_blob(BlobKind::Answer, m.answer_file.as_deref()) => a?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    let connector = tokio::select! {
        c = prepared.connect(answer) => c?,
        _ = shutdown.cancelled() => return Ok(()),
    };
    info!("{}", connector.punched());
    client.run(connector, shutdown).await?;
    watching.finish().await;
    Ok(())
}

async fn options(m: &ManualSettings, quic: &QuicParams) -> ManualOptions {
    let stun = porthole_transport_quic::stun::resolve(&m.stun).await;
    if stun.is_empty() && !m.stun.is_empty() {
        warn!("no STUN server reachable: only local addresses will be offered (works on a LAN)");
    }
    ManualOptions {
        bind: m.bind.unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
        stun,
        punch_timeout: m.punch_timeout,
        quic: quic.clone(),
        direct_paths: m.direct_paths.clone(),
        ..ManualOptions::default()
    }
}

fn write_blob(text: &str, file: Option<&Path>, what: &str, peer: &str) -> Result<()> {
    match file {
        Some(path) => {
            secrets::write_private_file(path, text.as_bytes(), true)?;
            info!(
                "{what} written to {}: hand it to the {peer}",
                path.display()
            );
        }
        None => {
            eprintln!(
                "---- give this {what} to the {peer} (copy all lines, markers included) ----"
            );
            print!("{text}");
            use std::io::Write;
            std::io::stdout().flush()?;
        }
    }
    Ok(())
}

/// Reads a blob from a file (waiting for it to appear) or from stdin (pasted).
async fn read_blob(kind: BlobKind, file: Option<&Path>) -> Result<Blob> {
    let label = match kind {
        BlobKind::Offer => "offer",
        BlobKind::Answer => "answer",
    };
    if let Some(path) = file {
        info!("waiting for the {label} in {}", path.display());
        loop {
            if let Ok(text) = tokio::fs::read_to_string(path).await
                && text.contains(&format!("-----END PORTHOLE {}-----", label.to_uppercase()))
            {
                return Blob::decode(&text, kind, now_unix())
                    .with_context(|| format!("{}", path.display()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    eprintln!("---- paste the {label} here (all lines, markers included) ----");
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let end = format!("-----END PORTHOLE {}-----", label.to_uppercase());
    let mut text = String::new();
    while let Some(line) = lines.next_line().await? {
        text.push_str(&line);
        text.push('\n');
        if line.trim().trim_start_matches('>').trim() == end {
            match Blob::decode(&text, kind, now_unix()) {
                Ok(s) => return Ok(s),
                Err(e) => {
                    eprintln!("that {label} is not usable: {e}\n---- paste it again ----");
                    text.clear();
                }
            }
        }
    }
    bail!("stdin closed before a complete {label} arrived")
}
