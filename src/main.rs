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
    logging::init(cli.verbose, cli.quiet);
    let _ = rustls::crypto::ring::default_provider().install_default();
    exit::report(dispatch(cli.command))
}

fn dispatch(command: Command) -> Result<(), Exit> {
    match command {
        Command::GenerateToken(a) => commands::token::run(&a).map_err(Exit::from),
        Command::GenerateServerKey(a) => commands::keys::generate(&a).map_err(Exit::from),
        Command::ShowServerId(a) => commands::keys::show(&a).map_err(Exit::from),
        Command::GenerateRelayCert(a) => commands::keys::relay_cert(&a).map_err(Exit::from),
        Command::Server(a) => runtime()?.block_on(commands::server::run(&a)),
        Command::Client(a) => runtime()?.block_on(commands::client::run(&a)),
        Command::Relay(a) => runtime()?
            .block_on(commands::relay::run(&a))
            .map_err(Exit::from),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| Exit::from(anyhow::Error::from(e)))
}
