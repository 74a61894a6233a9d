//! `porthole`: the binary is glue. It parses the command line and config files, sets
//! up logging, and calls into the crates; errors become distinct exit codes.

mod cli;
mod commands;
mod config;
mod exit;
mod logging;
mod secrets;

use std::process::ExitCode;

/// jemalloc with background purging: memory freed after a burst of connections goes back
/// to the OS within seconds (glibc kept ~13 MiB per process after 500 concurrent
/// connections; tests/it/load.rs checks it).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

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
    exit::report(dispatch(cli.command, cli.threads))
}

fn dispatch(command: Command, threads: Option<usize>) -> Result<(), Exit> {
    // One QUIC connection's packets are processed by one task anyway: a single-threaded
    // runtime avoids cross-thread wakeups (measured: +20 % throughput, -10 % CPU per GB on
    // a tunnel). The relay serves many peers and uses every core.
    let runtime = |default: usize| runtime(threads.unwrap_or(default));
    if matches!(
        command,
        Command::Nodepass(_) | Command::Server(_) | Command::Client(_) | Command::Relay(_)
    ) {
        porthole_engine::socket_buffers::warn_if_capped();
    }
    match command {
        Command::GenerateToken(a) => commands::token::run(&a).map_err(Exit::from),
        Command::GenerateServerKey(a) => commands::keys::generate(&a).map_err(Exit::from),
        Command::ShowServerId(a) => commands::keys::show(&a).map_err(Exit::from),
        Command::GenerateClientKey(a) => commands::keys::generate_client(&a).map_err(Exit::from),
        Command::ShowClientId(a) => commands::keys::show_client(&a).map_err(Exit::from),
        Command::GenerateRelayCert(a) => commands::keys::relay_cert(&a).map_err(Exit::from),
        Command::Ping(a) => runtime(1)?.block_on(commands::ping::run(a)),
        Command::Completions(a) => commands::docs::completions(&a).map_err(Exit::from),
        Command::Man(a) => commands::docs::man(&a).map_err(Exit::from),
        Command::Status(a) => runtime(1)?
            .block_on(commands::status::run(&a))
            .map_err(Exit::from),
        Command::Nodepass(a) => match a.url.parse() {
            Ok(url) => runtime(1)?
                .block_on(commands::nodepass::run(url))
                .map_err(Exit::from),
            Err(e) => Err(Exit::usage(anyhow::anyhow!("invalid NodePass URL: {e}"))),
        },
        Command::Server(a) => runtime(1)?.block_on(commands::server::run(&a)),
        Command::Client(a) => runtime(1)?.block_on(commands::client::run(&a)),
        Command::Relay(a) => runtime(0)?
            .block_on(commands::relay::run(&a))
            .map_err(Exit::from),
    }
}

/// A tokio runtime: `threads == 1` single-threaded, 0 one worker per core, else N workers.
fn runtime(threads: usize) -> Result<tokio::runtime::Runtime, Exit> {
    let mut b = match threads {
        1 => tokio::runtime::Builder::new_current_thread(),
        0 => tokio::runtime::Builder::new_multi_thread(),
        n => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    b.enable_all()
        .build()
        .map_err(|e| Exit::from(anyhow::Error::from(e)))
}
