//! NodePass mode: `porthole nodepass URL`, or `mode = "nodepass"` in a config file.

use anyhow::{Context, Result};
use porthole_nodepass::{NodepassUrl, Role};
use tracing::warn;

pub async fn run(url: NodepassUrl) -> Result<()> {
    // The URL's log level, wherever the URL came from (command line or config file).
    crate::logging::use_nodepass_level(&url.params.log);
    for p in &url.unknown {
        warn!("unknown NodePass parameter `{p}` ignored");
    }
    let shutdown = super::shutdown_on_signal();
    match url.role {
        Role::Server => porthole_nodepass::server::run(url, Default::default(), shutdown)
            .await
            .context("NodePass server"),
        Role::Client => porthole_nodepass::client::run(url, Default::default(), shutdown)
            .await
            .context("NodePass client"),
    }
}
