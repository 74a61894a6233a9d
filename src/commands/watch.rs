//! The windows a running server, client or relay opens for its operator: the control
//! socket (`porthole status`) and the metrics/status-page listener (`--metrics`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use porthole_engine::telemetry::Telemetry;
use porthole_observe::{MetricsFn, Report, Source};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::resolve::WatchSettings;

/// The running listeners; [`Watching::finish`] waits for them to close (and the socket
/// file to be removed) after shutdown.
pub struct Watching {
    tasks: Vec<JoinHandle<()>>,
}

impl Watching {
    pub async fn finish(self) {
        for t in self.tasks {
            let _ = tokio::time::timeout(Duration::from_secs(1), t).await;
        }
    }
}

/// Opens the windows on a server's or client's telemetry.
pub async fn engine(
    s: &WatchSettings,
    telemetry: &Telemetry,
    shutdown: &CancellationToken,
) -> Result<Watching> {
    let t = telemetry.clone();
    let source: Source = Arc::new(move || Report::of(&t));
    let t = telemetry.clone();
    let metrics: MetricsFn = Arc::new(move |out: &mut String| t.encode_metrics(out));
    start(s, source, metrics, shutdown).await
}

/// Opens the windows: what to show comes from `source` and `metrics`.
pub async fn start(
    s: &WatchSettings,
    source: Source,
    metrics: MetricsFn,
    shutdown: &CancellationToken,
) -> Result<Watching> {
    let mut tasks = Vec::new();
    if let Some(addr) = s.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("--metrics {addr}: cannot listen"))?;
        let bound = listener.local_addr().unwrap_or(addr);
        info!(
            "metrics on http://{bound}/metrics, status page on http://{bound}/{}",
            if s.metrics_token.is_some() {
                " (bearer token required; open the page as /#token=TOKEN)"
            } else {
                ""
            }
        );
        let site = porthole_observe::http::Site {
            source: source.clone(),
            metrics,
            token: s.metrics_token.clone().map(Arc::new),
        };
        tasks.push(tokio::spawn(porthole_observe::http::serve(
            listener,
            site,
            shutdown.clone(),
        )));
    }
    if let Some(path) = &s.control_socket {
        // A status socket is a convenience: if it cannot be made, say so and run on.
        match porthole_observe::control::ControlSocket::bind(path) {
            Ok(socket) => {
                info!("status: porthole status --socket {}", path.display());
                tasks.push(tokio::spawn(socket.serve(source, shutdown.clone())));
            }
            Err(e) => warn!(
                "no control socket, `porthole status` will not see this instance: {e} \
                 (choose a path with --control-socket PATH, or --control-socket none)"
            ),
        }
    }
    Ok(Watching { tasks })
}
