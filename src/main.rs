//! `porthole`: the binary is glue. It parses the command line and config files, sets
//! up logging, and calls into the crates; errors become distinct exit codes.

mod cli;
mod commands;
mod config;
mod exit;
mod logging;
mod secrets;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::exit::Exit;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
    logging::init(cli.verbose, cli.quiet, nodepass_log(&cli));
    let _ = rustls::crypto::ring::default_provider().install_default();
    exit::report(dispatch(cli.command))
}

fn dispatch(command: Command) -> Result<(), Exit> {
    match command {
        Command::GenerateToken(a) => commands::token::run(&a).map_err(Exit::from),
        Command::GenerateServerKey(a) => commands::keys::generate(&a).map_err(Exit::from),
        Command::ShowServerId(a) => commands::keys::show(&a).map_err(Exit::from),
        Command::GenerateRelayCert(a) => commands::keys::relay_cert(&a).map_err(Exit::from),
        Command::Nodepass(a) => match a.url.parse() {
            Ok(url) => runtime()?
                .block_on(commands::nodepass::run(url))
                .map_err(Exit::from),
            Err(e) => Err(Exit::usage(anyhow::anyhow!("invalid NodePass URL: {e}"))),
        },
        Command::Server(a) => runtime()?.block_on(commands::server::run(&a)),
        Command::Client(a) => runtime()?.block_on(commands::client::run(&a)),
        Command::Relay(a) => runtime()?
            .block_on(commands::relay::run(&a))
            .map_err(Exit::from),
    }
}

/// A NodePass URL's `log=` level, used when neither -v/-q nor RUST_LOG say otherwise.
fn nodepass_log(cli: &Cli) -> Option<String> {
    let Command::Nodepass(a) = &cli.command else {
        return None;
    };
    let url: porthole_nodepass::NodepassUrl = a.url.parse().ok()?;
    Some(url.params.log)
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::from(anyhow::Error::from(e)))
}
