//! `porthole generate-server-key` and `porthole show-server-id`.

use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use porthole_proto::key::SecretKey;

use crate::cli::{
    GenerateRelayCertArgs, GenerateServerKeyArgs, ShowClientIdArgs, ShowServerIdArgs,
};
use crate::secrets;

pub fn generate(args: &GenerateServerKeyArgs) -> Result<()> {
    let key = SecretKey::generate()?;
    write_key(args, &key.to_file_text(&now()))?;
    eprintln!("EndpointId: {}", key.endpoint_id());
    Ok(())
}

/// `porthole generate-client-key`: like the server's, with the id servers list.
pub fn generate_client(args: &GenerateServerKeyArgs) -> Result<()> {
    let key = SecretKey::generate()?;
    write_key(args, &key.to_client_file_text(&now()))?;
    eprintln!("client id: {}", key.endpoint_id());
    Ok(())
}

fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Writes a key file (mode 0600), or to stdout for `-`.
fn write_key(args: &GenerateServerKeyArgs, text: &str) -> Result<()> {
    if args.output == Path::new("-") {
        let mut out = std::io::stdout().lock();
        out.write_all(text.as_bytes())?;
        out.flush()?;
    } else {
        secrets::write_private_file(&args.output, text.as_bytes(), args.force)?;
        eprintln!("wrote {} (mode 0600)", args.output.display());
    }
    Ok(())
}

pub fn show_client(args: &ShowClientIdArgs) -> Result<()> {
    let key = secrets::load_key_file(&args.client_key_file)?;
    println!("{}", key.endpoint_id());
    Ok(())
}

pub fn show(args: &ShowServerIdArgs) -> Result<()> {
    let key = secrets::load_server_key(args.secret_file.as_deref())?.context(
        "no key: give --secret-file FILE or set PORTHOLE_SECRET (create a key with: porthole generate-server-key --output FILE)",
    )?;
    println!("{}", key.endpoint_id());
    Ok(())
}

pub fn relay_cert(args: &GenerateRelayCertArgs) -> Result<()> {
    let certs = porthole_relay::certs::generate(&args.names).context("generating certificates")?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let ca = args.out_dir.join("ca.pem");
    let cert = args.out_dir.join("cert.pem");
    let key = args.out_dir.join("key.pem");
    for p in [&ca, &cert, &key] {
        if p.exists() && !args.force {
            anyhow::bail!("{} already exists; pass --force to replace it", p.display());
        }
    }
    secrets::write_private_file(&key, certs.key_pem.as_bytes(), args.force)?;
    std::fs::write(&cert, &certs.cert_pem)
        .with_context(|| format!("cannot write {}", cert.display()))?;
    std::fs::write(&ca, &certs.ca_pem).with_context(|| format!("cannot write {}", ca.display()))?;
    eprintln!(
        "wrote {} (give to peers: --relay-ca), {} and {} (for porthole relay --tls-cert/--tls-key)",
        ca.display(),
        cert.display(),
        key.display()
    );
    Ok(())
}
