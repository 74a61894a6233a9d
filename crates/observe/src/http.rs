//! The metrics and status listener (`--metrics ADDR`):
//! - `GET /metrics`: Prometheus metrics (OpenMetrics text);
//! - `GET /api/status`: the report as JSON (the same as `porthole status --json`);
//! - `GET /`: the live status page (embedded; it polls `/api/status`).
//!
//! With a bearer token, `/metrics` and `/api/status` need `Authorization: Bearer TOKEN`
//! (compared in constant time); the page itself carries no data and is served to anyone,
//! and reads the token from its URL fragment (`/#token=...`, never sent to the server).
//! The binary requires a token for any non-loopback address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use zeroize::Zeroizing;

use crate::{MetricsFn, Source};

/// Concurrent HTTP connections served.
const MAX_CONNECTIONS: usize = 32;
/// Request headers must arrive within this.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A connection (keep-alive included) lasts at most this long.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(120);

const PAGE: &str = include_str!("page.html");

/// What the listener serves.
#[derive(Clone)]
pub struct Site {
    pub source: Source,
    pub metrics: MetricsFn,
    /// Required on `/metrics` and `/api/status` when set.
    pub token: Option<Arc<Zeroizing<String>>>,
}

impl std::fmt::Debug for Site {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Site")
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Serves `listener` until `shutdown` fires.
pub async fn serve(listener: TcpListener, site: Site, shutdown: CancellationToken) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let site = Arc::new(site);
    loop {
        let (stream, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!("metrics listener: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            debug!("metrics listener: too many connections; closing one from {from}");
            continue;
        };
        let site = site.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let service = hyper::service::service_fn(move |req| {
                let site = site.clone();
                async move { Ok::<_, Infallible>(respond(&site, &req, from)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(CONNECTION_LIFETIME) => {}
                r = conn => if let Err(e) = r {
                    debug!("metrics listener: {from}: {e}");
                },
            }
        });
    }
}

fn respond(site: &Site, req: &Request<Incoming>, from: SocketAddr) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return plain(StatusCode::METHOD_NOT_ALLOWED, "only GET\n");
    }
    let path = req.uri().path();
    if path == "/" {
        return reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Bytes::from_static(PAGE.as_bytes()),
        );
    }
    if path != "/metrics" && path != "/api/status" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; try /, /metrics or /api/status\n",
        );
    }
    if let Some(token) = &site.token {
        let presented = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !bool::from(presented.as_bytes().ct_eq(token.as_bytes())) {
            debug!("metrics listener: {from}: missing or wrong bearer token for {path}");
            let mut r = plain(StatusCode::UNAUTHORIZED, "bearer token required\n");
            r.headers_mut()
                .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    if path == "/metrics" {
        let mut out = String::new();
        if (site.metrics)(&mut out).is_err() {
            return plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n");
        }
        return reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            out.into(),
        );
    }
    match serde_json::to_vec(&(site.source)()) {
        Ok(json) => reply(StatusCode::OK, "application/json", json.into()),
        Err(_) => plain(StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n"),
    }
}

fn plain(status: StatusCode, text: &'static str) -> Response<Full<Bytes>> {
    reply(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(text.as_bytes()),
    )
}

fn reply(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}
