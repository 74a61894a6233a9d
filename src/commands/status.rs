//! `porthole status`: asks running instances for their report over their control sockets.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};
use porthole_observe::control;

use crate::cli::StatusArgs;

pub async fn run(args: &StatusArgs) -> Result<()> {
    loop {
        let text = once(args).await?;
        match args.watch {
            None => {
                print!("{text}");
                return Ok(());
            }
            Some(secs) => {
                // Clear the screen and home the cursor, as `watch` does.
                print!("\x1b[2J\x1b[H{text}");
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => return Ok(()),
                    _ = tokio::time::sleep(Duration::from_secs(secs)) => {}
                }
            }
        }
    }
}

async fn once(args: &StatusArgs) -> Result<String> {
    let dir = control::default_dir();
    let sockets: Vec<PathBuf> = match &args.socket {
        Some(p) => vec![p.clone()],
        None => control::discover(&dir),
    };
    if sockets.is_empty() {
        bail!(
            "no running porthole found in {} (start one, or point at its socket with --socket PATH)",
            dir.display()
        );
    }
    let mut out = String::new();
    let mut reached = 0;
    for path in &sockets {
        match control::query(path).await {
            Ok(report) => {
                reached += 1;
                if args.json {
                    out.push_str(&serde_json::to_string(&report)?);
                    out.push('\n');
                } else {
                    if reached > 1 {
                        out.push_str("\n---\n");
                    }
                    out.push_str(&porthole_observe::text::render(&report));
                }
            }
            // A socket nobody answers on was left by an instance that died: skip it
            // (and tidy it away when it is in the default directory).
            Err(control::ControlError::Io { error, .. })
                if args.socket.is_none()
                    && matches!(
                        error.kind(),
                        std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                    ) =>
            {
                let _ = std::fs::remove_file(path);
            }
            Err(e) => {
                if args.socket.is_some() {
                    bail!("{e}");
                }
                out.push_str(&format!("{}: {e}\n", path.display()));
            }
        }
    }
    if reached == 0 && args.socket.is_none() {
        bail!(
            "no running porthole answered in {} (start one, or point at its socket with --socket PATH)",
            dir.display()
        );
    }
    Ok(out)
}
