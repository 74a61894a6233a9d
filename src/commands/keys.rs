//! `porthole generate-server-key` and `porthole show-server-id`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use porthole_proto::key::SecretKey;

use crate::cli::{GenerateServerKeyArgs, ShowServerIdArgs};
use crate::secrets;

pub fn generate(args: &GenerateServerKeyArgs) -> Result<()> {
    let key = SecretKey::generate()?;
    let created = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let text = key.to_file_text(&created);
    if args.output == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
    } else {
        secrets::write_private_file(&args.output, text.as_bytes(), args.force)?;
        eprintln!("wrote {} (mode 0600)", args.output.display());
    }
    eprintln!("EndpointId: {}", key.endpoint_id());
    Ok(())
}

pub fn show(args: &ShowServerIdArgs) -> Result<()> {
    let key = secrets::load_server_key(args.secret_file.as_deref())?.context(
        "no key: give --secret-file FILE or set PORTHOLE_SECRET (create a key with: porthole generate-server-key --output FILE)",
    )?;
    println!("{}", key.endpoint_id());
    Ok(())
}
