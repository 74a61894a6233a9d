//! `porthole generate-token`.

use std::io::Write;

use anyhow::Result;
use porthole_proto::token::AuthToken;

use zeroize::Zeroizing;

use crate::cli::GenerateTokenArgs;
use crate::secrets;

pub fn run(args: &GenerateTokenArgs) -> Result<()> {
    let mut text = Zeroizing::new(String::new());
    for _ in 0..args.count {
        let t = AuthToken::generate()?;
        text.push_str(t.expose());
        text.push('\n');
    }
    match &args.output {
        Some(path) => {
            secrets::write_private_file(path, text.as_bytes(), args.force)?;
            eprintln!(
                "wrote {} token(s) to {} (mode 0600)",
                args.count,
                path.display()
            );
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(text.as_bytes())?;
            out.flush()?;
        }
    }
    Ok(())
}
