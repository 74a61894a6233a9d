//! Logging: `tracing` to stderr with an EnvFilter. `RUST_LOG` wins over `-v/-q`.

use tracing_subscriber::EnvFilter;

/// Default filter for a verbosity level (`-qq` = -2 ... `-vv` = 2).
pub fn default_filter(level: i8) -> &'static str {
    match level {
        i8::MIN..=-2 => "error",
        -1 => "warn",
        0 => {
            "warn,porthole=info,porthole_engine=info,porthole_iroh=info,porthole_relay=info,porthole_quic=info,porthole_nodepass=info"
        }
        1 => {
            "warn,porthole=debug,porthole_engine=debug,porthole_iroh=debug,porthole_relay=debug,porthole_quic=debug,porthole_nodepass=debug"
        }
        _ => {
            "info,porthole=trace,porthole_engine=trace,porthole_iroh=trace,porthole_relay=trace,porthole_quic=trace,porthole_nodepass=trace,iroh=debug"
        }
    }
}

/// `nodepass_level`: a NodePass URL's `log=` (none, debug, info, warn, error, event).
pub fn init(verbose: u8, quiet: u8, nodepass_level: Option<String>) {
    let mut level = verbose.min(3) as i8 - quiet.min(3) as i8;
    if verbose == 0 && quiet == 0 {
        level = match nodepass_level.as_deref() {
            Some("none") => -3,
            Some("error") => -2,
            Some("warn") => -1,
            Some("debug") => 1,
            _ => 0,
        };
    }
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(if level <= -3 {
            "off"
        } else {
            default_filter(level)
        })
    });
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(level > 0)
        .try_init();
}
