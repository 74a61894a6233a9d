//! Which network path a connection uses, logged when it is established and whenever
//! it changes: `path=direct remote=203.0.113.7:41641 rtt=12.3ms` or
//! `path=relay relay=https://relay.example.com/ rtt=48.0ms`.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use iroh::endpoint::{Connection, PathEvent};
use iroh::{RelayUrl, TransportAddr};
use tokio_stream::StreamExt;
use tracing::{Instrument, info};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathKind {
    Direct(SocketAddr),
    Relay(RelayUrl),
    Other(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathInfo {
    pub kind: PathKind,
    pub rtt: Duration,
}

impl PathInfo {
    pub fn is_direct(&self) -> bool {
        matches!(self.kind, PathKind::Direct(_))
    }

    /// The engine's view of it (status and metrics).
    pub fn now(self) -> porthole_engine::transport::PathNow {
        use porthole_engine::transport::PathKind as K;
        porthole_engine::transport::PathNow {
            kind: match self.kind {
                PathKind::Direct(a) => K::Direct(a),
                PathKind::Relay(u) => K::Relay(u.to_string()),
                PathKind::Other(_) => K::Unknown,
            },
            rtt: Some(self.rtt),
        }
    }
}

impl fmt::Display for PathInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rtt = self.rtt.as_secs_f64() * 1000.0;
        match &self.kind {
            PathKind::Direct(a) => write!(f, "path=direct remote={a} rtt={rtt:.1}ms"),
            PathKind::Relay(u) => write!(f, "path=relay relay={u} rtt={rtt:.1}ms"),
            PathKind::Other(o) => write!(f, "path=other remote={o} rtt={rtt:.1}ms"),
        }
    }
}

fn kind(addr: &TransportAddr) -> PathKind {
    match addr {
        TransportAddr::Ip(a) => PathKind::Direct(*a),
        TransportAddr::Relay(u) => PathKind::Relay(u.clone()),
        other => PathKind::Other(format!("{other:?}")),
    }
}

/// The selected path right now.
pub fn selected(conn: &Connection) -> Option<PathInfo> {
    let paths = conn.paths();
    let p = paths.iter().find(|p| p.is_selected())?;
    Some(PathInfo {
        kind: kind(p.remote_addr()),
        rtt: p.rtt(),
    })
}

/// Logs the selected path now and on every change, until the connection closes.
pub fn spawn_monitor(conn: Connection) {
    tokio::spawn(
        async move {
            let mut events = conn.path_events();
            let mut last: Option<PathKind> = None;
            if let Some(p) = selected(&conn) {
                info!("{p}");
                last = Some(p.kind);
            }
            while let Some(ev) = events.next().await {
                if let PathEvent::Selected { .. } | PathEvent::Lagged { .. } = ev {
                    // Give the RTT estimate a moment on a fresh path.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    if let Some(p) = selected(&conn)
                        && last.as_ref() != Some(&p.kind)
                    {
                        info!("{p}");
                        last = Some(p.kind);
                    }
                }
            }
        }
        .in_current_span(),
    );
}
