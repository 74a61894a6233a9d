//! Windows into a running porthole (server, client or relay):
//! - [`control`]: a Unix socket only this user can use, answering `status` with a
//!   [`Report`] (what `porthole status` shows);
//! - [`http`]: an HTTP listener (`--metrics ADDR`) with Prometheus metrics at `/metrics`,
//!   the same report as JSON at `/api/status`, and a live status page at `/`;
//! - [`text`]: the report as the human table `porthole status` prints.
//!
//! Nothing here counts anything: the engine's [`telemetry`](porthole_engine::telemetry)
//! does, and a [`Source`] turns it into a report when asked.

pub mod control;
pub mod http;
pub mod relay;
pub mod report;
pub mod text;

use std::sync::Arc;

pub use report::Report;

/// Builds the current report on demand.
pub type Source = Arc<dyn Fn() -> Report + Send + Sync>;

/// Writes the current metrics in the OpenMetrics text format.
pub type MetricsFn = Arc<dyn Fn(&mut String) -> std::fmt::Result + Send + Sync>;
