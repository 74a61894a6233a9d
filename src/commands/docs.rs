//! `porthole completions SHELL` and `porthole man`: generated from the command line's own
//! definition by clap's generators, so they never drift from `--help`.

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, ManArgs};

pub fn completions(args: &CompletionsArgs) -> Result<()> {
    let mut cmd = Cli::command();
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "porthole", &mut script);
    to_stdout(&script).context("writing the completion script")
}

/// Writes to stdout; a reader that went away (`| head`) is not an error.
fn to_stdout(bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// `porthole(1)`, or with a subcommand `porthole-SUBCOMMAND(1)` (as git does), each
/// with every flag of that command; with `--out-dir`, all of them as files.
pub fn man(args: &ManArgs) -> Result<()> {
    let mut cmd = Cli::command();
    // Propagates the global flags (-v, -q, --threads) into every subcommand.
    cmd.build();
    if let Some(dir) = &args.out_dir {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut pages = vec![("porthole".to_string(), cmd.clone())];
        for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
            let name = format!("porthole-{}", sub.get_name());
            pages.push((name.clone(), sub.clone().name(name)));
        }
        for (name, page) in pages {
            let path = dir.join(format!("{name}.1"));
            let mut file = std::fs::File::create(&path)
                .with_context(|| format!("writing {}", path.display()))?;
            clap_mangen::Man::new(page)
                .render(&mut file)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        return Ok(());
    }
    let page = match &args.command {
        None => cmd,
        Some(name) => {
            let names: Vec<String> = cmd
                .get_subcommands()
                .map(|s| s.get_name().to_string())
                .collect();
            cmd.find_subcommand(name)
                .cloned()
                .with_context(|| format!("no subcommand {name:?}: one of {}", names.join(", ")))?
                .name(format!("porthole-{name}"))
        }
    };
    let mut roff = Vec::new();
    clap_mangen::Man::new(page)
        .render(&mut roff)
        .context("rendering the man page")?;
    to_stdout(&roff).context("writing the man page")
}
