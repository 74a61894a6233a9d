//! Reloading the server's clients without a restart: on SIGHUP, and within a second of
//! the access file or the tokens file changing on disk. A file that fails to parse or
//! check is reported (file, line, key) and the rules in force stay in force.

use std::hash::{Hash, Hasher};
use std::time::Duration;

use porthole_engine::access::AccessRules;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::access::AccessSources;

/// How often the files are looked at.
const POLL: Duration = Duration::from_millis(250);

/// Watches the sources of `rules` until `shutdown`.
pub fn spawn(sources: AccessSources, rules: AccessRules, shutdown: CancellationToken) {
    // With no file to re-read, SIGHUP is still caught (its default would end the server).
    let has_files = sources.has_files();
    tokio::spawn(async move {
        // What to watch: the files the last successful load read (a client's
        // tokens_file appears once the access file names it).
        let mut files = match sources.load_with_files() {
            Ok((_, f)) => f,
            Err(_) => sources.main_files(),
        };
        #[cfg(unix)]
        let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
        let mut seen = fingerprint(&files);
        let mut tick = tokio::time::interval(POLL);
        loop {
            #[cfg(unix)]
            let signal = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            #[cfg(not(unix))]
            let signal = std::future::pending::<Option<()>>();
            let why = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = signal => "SIGHUP",
                _ = tick.tick(), if has_files => {
                    let now = fingerprint(&files);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "a file changed"
                }
            };
            if !has_files {
                info!("{why}: nothing to reload (no --auth-tokens-file or --access-file)");
                continue;
            }
            match sources.load_with_files() {
                Ok((access, read)) => {
                    if read != files {
                        files = read;
                        seen = fingerprint(&files);
                    }
                    let changes = rules.replace(access);
                    info!("access rules reloaded ({why}): {changes}");
                }
                Err(e) => warn!(
                    "access rules NOT reloaded ({why}): {e:#}; the rules in force stay in force"
                ),
            }
        }
    });
}

/// What the files hold now (a missing file is a state too).
fn fingerprint(files: &[std::path::PathBuf]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for f in files {
        std::fs::read(f).ok().hash(&mut h);
    }
    h.finish()
}
