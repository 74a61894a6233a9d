//! `porthole relay`: one self-hosted box for the whole path.
//!
//! - plain HTTP relaying (local/dev use: relays traffic, but peers behind NATs never
//!   learn their public address from it, so they stay on the relay);
//! - HTTPS relaying plus QUIC address discovery (QAD) with a certificate from files,
//!   which lets peers learn their public addresses and hole-punch to a direct path.

pub mod certs;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use iroh_relay::server::{CertConfig, QuicConfig, RelayConfig, Server, ServerConfig, TlsConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tracing::info;

#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Plain HTTP: the relay itself when there is no TLS, else only the captive-portal probe.
    pub http_bind: SocketAddr,
    pub tls: Option<TlsOptions>,
}

#[derive(Debug, Clone)]
pub struct TlsOptions {
    pub https_bind: SocketAddr,
    pub cert: PathBuf,
    pub key: PathBuf,
    /// QUIC address discovery; `None` disables it.
    pub quic_bind: Option<SocketAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot read {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{path}: {why}")]
    Pem { path: PathBuf, why: String },
    #[error("TLS configuration: {0}")]
    Tls(String),
    #[error("cannot start the relay: {0}")]
    Spawn(String),
}

/// See [`RelayHandle::counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounters {
    pub clients: u64,
    pub accepts: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub qad_connections: u64,
}

/// A running relay; dropped or [`RelayHandle::shutdown`] stops it.
#[derive(Debug)]
pub struct RelayHandle {
    server: Server,
}

impl RelayHandle {
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.server.http_addr()
    }

    pub fn https_addr(&self) -> Option<SocketAddr> {
        self.server.https_addr()
    }

    pub fn quic_addr(&self) -> Option<SocketAddr> {
        self.server.quic_addr()
    }

    /// The URL clients pass to `--relay-url`, with the QUIC port when it is not the default.
    pub fn client_url(&self, host: &str) -> String {
        match (self.https_addr(), self.quic_addr()) {
            (Some(https), Some(quic)) => {
                format!("https://{host}:{}/?quic-port={}", https.port(), quic.port())
            }
            (Some(https), None) => format!("https://{host}:{}/?quic-port=none", https.port()),
            _ => format!(
                "http://{host}:{}/",
                self.http_addr().map(|a| a.port()).unwrap_or(80)
            ),
        }
    }

    /// What the relay has done so far: peers connected now and since the start, bytes
    /// relayed each way, QUIC address discovery connections served.
    /// Returns a reader that stays valid (and live) for as long as the relay runs.
    pub fn counters(&self) -> impl Fn() -> RelayCounters + Send + Sync + 'static {
        let m = self.server.metrics().server.clone();
        move || RelayCounters {
            clients: m.accepts.get().saturating_sub(m.disconnects.get()),
            accepts: m.accepts.get(),
            bytes_in: m.bytes_recv.get(),
            bytes_out: m.bytes_sent.get(),
            qad_connections: m.qad_connections.get(),
        }
    }

    pub async fn shutdown(self) {
        let _ = self.server.shutdown().await;
    }

    /// Waits until the relay stops on its own (an error); normally runs forever.
    pub async fn join(&mut self) {
        let _ = self.server.join().await;
    }
}

pub async fn spawn(opts: RelayOptions) -> Result<RelayHandle, RelayError> {
    let mut relay = RelayConfig::new(opts.http_bind);
    let mut quic = None;
    if let Some(tls) = &opts.tls {
        let server_config = load_tls(&tls.cert, &tls.key)?;
        quic = tls.quic_bind.map(QuicConfig::new);
        relay.tls = Some(TlsConfig::new(
            tls.https_bind,
            CertConfig::Manual { server_config },
        ));
    }
    let mut config = ServerConfig::default();
    config.relay = Some(relay);
    config.quic = quic;
    let server = Server::spawn(config)
        .await
        .map_err(|e| RelayError::Spawn(e.to_string()))?;
    let handle = RelayHandle { server };
    if let Some(a) = handle.https_addr() {
        info!(
            "relay listening on https://{a} (HTTP probe on {:?})",
            handle.http_addr()
        );
    } else if let Some(a) = handle.http_addr() {
        info!("relay listening on http://{a} (plain HTTP: relaying only, no address discovery)");
    }
    if let Some(q) = handle.quic_addr() {
        info!("QUIC address discovery on udp://{q}");
    }
    Ok(handle)
}

fn load_tls(cert: &PathBuf, key: &PathBuf) -> Result<rustls::ServerConfig, RelayError> {
    let read = |p: &PathBuf| {
        std::fs::read(p).map_err(|error| RelayError::Read {
            path: p.clone(),
            error,
        })
    };
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| RelayError::Pem {
            path: cert.clone(),
            why: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(RelayError::Pem {
            path: cert.clone(),
            why: "no certificate found".into(),
        });
    }
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| RelayError::Pem {
        path: key.clone(),
        why: format!("no private key: {e}"),
    })?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| RelayError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| RelayError::Tls(e.to_string()))
}

/// STUN binding responders (for manual mode), one per address.
#[derive(Debug)]
pub struct StunHandle {
    addrs: Vec<SocketAddr>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
    answered: Arc<AtomicU64>,
}

impl StunHandle {
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// A reader of the number of binding requests answered so far, on every address.
    pub fn answered(&self) -> Arc<AtomicU64> {
        self.answered.clone()
    }
}

impl Drop for StunHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts a STUN responder on each address.
pub async fn spawn_stun(binds: &[SocketAddr]) -> Result<StunHandle, RelayError> {
    let mut addrs = Vec::new();
    let mut tasks = Vec::new();
    let answered = Arc::new(AtomicU64::new(0));
    for b in binds {
        let socket = tokio::net::UdpSocket::bind(b)
            .await
            .map_err(|e| RelayError::Spawn(format!("STUN on {b}: {e}")))?;
        let addr = socket
            .local_addr()
            .map_err(|e| RelayError::Spawn(e.to_string()))?;
        info!("STUN responder on udp://{addr}");
        addrs.push(addr);
        let answered = answered.clone();
        tasks.push(tokio::spawn(async move {
            porthole_transport_quic::stun::respond_counting(socket, &answered).await
        }));
    }
    Ok(StunHandle {
        addrs,
        tasks,
        answered,
    })
}
