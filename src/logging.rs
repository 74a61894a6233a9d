//! Logging: `tracing` to stderr with an EnvFilter. `RUST_LOG` wins over `-v/-q`.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload::{self, Handle};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry};

/// Default filter for a verbosity level (`-qq` = -2 ... `-vv` = 2).
pub fn default_filter(level: i8) -> &'static str {
    match level {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => {
            "warn,porthole=info,porthole_engine=info,porthole_transport_iroh=info,porthole_relay=info,porthole_transport_quic=info,porthole_nodepass=info"
        }
        1 => {
            "warn,porthole=debug,porthole_engine=debug,porthole_transport_iroh=debug,porthole_relay=debug,porthole_transport_quic=debug,porthole_nodepass=debug"
        }
        _ => {
            "info,porthole=trace,porthole_engine=trace,porthole_transport_iroh=trace,porthole_relay=trace,porthole_transport_quic=trace,porthole_nodepass=trace,iroh=debug"
        }
    }
}

/// The filter in force, replaceable once a NodePass URL (on the command line or in a
/// config file) says its `log=`; `None` when -v/-q or RUST_LOG chose the level, which then
/// stays.
static NODEPASS_RELOAD: OnceLock<Handle<EnvFilter, Registry>> = OnceLock::new();

pub fn init(verbose: u8, quiet: u8) {
    let level = verbose.min(3) as i8 - quiet.min(3) as i8;
    let explicit = EnvFilter::try_from_default_env().ok();
    let chosen = explicit.is_some() || verbose > 0 || quiet > 0;
    let filter = explicit.unwrap_or_else(|| EnvFilter::new(default_filter(level)));
    let (filter, handle) = reload::Layer::new(filter);
    let fmt = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(level > 0);
    if tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .try_init()
        .is_ok()
        && !chosen
    {
        let _ = NODEPASS_RELOAD.set(handle);
    }
}

/// Applies a NodePass URL's `log=` (none, debug, info, warn, error, event), unless -v/-q
/// or RUST_LOG chose the level. The one place that maps NodePass levels to ours.
pub fn use_nodepass_level(level: &str) {
    let Some(handle) = NODEPASS_RELOAD.get() else {
        return;
    };
    let filter = match level {
        "none" => "off",
        "error" => default_filter(-2),
        "warn" => default_filter(-1),
        "debug" => default_filter(1),
        _ => default_filter(0),
    };
    let _ = handle.reload(EnvFilter::new(filter));
}
