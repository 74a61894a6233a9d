//! Secrets at the edge: key files (created 0600 atomically), token files, environment
//! variables. Nothing here ever logs a secret's value.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use porthole_proto::key::SecretKey;
use porthole_proto::token::AuthToken;
use tracing::warn;
use zeroize::Zeroizing;

pub const ENV_SECRET: &str = "PORTHOLE_SECRET";
pub const ENV_AUTH_TOKEN: &str = "PORTHOLE_AUTH_TOKEN";

/// Reads a key file, warning when group or others may read it.
pub fn load_key_file(path: &Path) -> Result<SecretKey> {
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .with_context(|| format!("cannot read secret key file {}", path.display()))?,
    );
    warn_if_readable_by_others(path);
    SecretKey::parse(&text).with_context(|| {
        format!(
            "{} is not a porthole key file (create one with: porthole generate-server-key --output {})",
            path.display(),
            path.display()
        )
    })
}

/// The server key from `--secret-file`, else `PORTHOLE_SECRET` (bare base64 or a whole file).
pub fn load_server_key(file: Option<&Path>) -> Result<Option<SecretKey>> {
    if let Some(path) = file {
        return load_key_file(path).map(Some);
    }
    match std::env::var(ENV_SECRET) {
        Ok(v) => {
            let v = Zeroizing::new(v);
            SecretKey::parse(&v)
                .map(Some)
                .with_context(|| format!("{ENV_SECRET} does not hold a valid key"))
        }
        Err(_) => Ok(None),
    }
}

pub fn warn_if_readable_by_others(path: &Path) {
    if let Ok(meta) = fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            warn!(
                "{} is readable by group/others (mode {:o}); run: chmod 600 {}",
                path.display(),
                mode & 0o777,
                path.display()
            );
        }
    }
}

/// Writes `contents` to `path` with mode 0600 from the first byte: a temporary file
/// created 0600 in the same directory is filled, synced, then linked into place (no
/// clobbering) or renamed over the target (`force`).
pub fn write_private_file(path: &Path, contents: &[u8], force: bool) -> Result<()> {
    if !force && path.exists() {
        bail!(
            "{} already exists; pass --force to replace it",
            path.display()
        );
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .with_context(|| format!("{} is not a file path", path.display()))?
        .to_string_lossy()
        .into_owned();
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| anyhow::anyhow!("random source failed: {e}"))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", hex(&suffix)));
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("cannot create {}", tmp.display()))?;
    let result = (|| -> Result<()> {
        file.write_all(contents)?;
        file.sync_all()?;
        if force {
            fs::rename(&tmp, path)?;
        } else {
            fs::hard_link(&tmp, path).with_context(|| {
                format!(
                    "{} already exists; pass --force to replace it",
                    path.display()
                )
            })?;
            fs::remove_file(&tmp)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {}", path.display()))
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{:02x}", x)).collect()
}

/// Parses a token file: one token per line, `#` comments and blank lines ignored.
pub fn load_token_file(path: &Path) -> Result<Vec<AuthToken>> {
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?,
    );
    warn_if_readable_by_others(path);
    let mut tokens = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let token = line
            .parse::<AuthToken>()
            .with_context(|| format!("{}:{}: invalid token", path.display(), i + 1))?;
        tokens.push(token);
    }
    if tokens.is_empty() {
        bail!(
            "{} holds no token (generate one with: porthole generate-token)",
            path.display()
        );
    }
    Ok(tokens)
}

/// A file holding exactly one token (the client's `--auth-token-file`).
pub fn load_single_token(path: &Path) -> Result<AuthToken> {
    let mut tokens = load_token_file(path)?;
    if tokens.len() > 1 {
        bail!(
            "{} holds {} tokens; a client uses exactly one",
            path.display(),
            tokens.len()
        );
    }
    Ok(tokens.remove(0))
}

/// The metrics listener's bearer token: the first non-comment line of `path`, at least
/// 16 characters (a `porthole generate-token` token is 18).
pub fn load_bearer_token(path: &Path) -> Result<Zeroizing<String>> {
    let text = Zeroizing::new(
        fs::read_to_string(path)
            .with_context(|| format!("cannot read token file {}", path.display()))?,
    );
    warn_if_readable_by_others(path);
    let token = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .unwrap_or("");
    if token.chars().count() < 16 || token.contains(char::is_whitespace) {
        bail!(
            "{}: the bearer token must be one line of at least 16 characters without spaces \
             (make one with: porthole generate-token --output {})",
            path.display(),
            path.display()
        );
    }
    Ok(Zeroizing::new(token.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_file_is_0600_and_not_clobbered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        write_private_file(&p, b"one", false).unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let e = write_private_file(&p, b"two", false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--force"), "{e}");
        assert_eq!(fs::read(&p).unwrap(), b"one");
        write_private_file(&p, b"two", true).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn token_files_parse_with_comments_and_report_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("t");
        fs::write(&p, "# tokens\niABCDEFGHIJKLMNOPL\n\n i0123456789abcdef5 \n").unwrap();
        assert_eq!(load_token_file(&p).unwrap().len(), 2);
        fs::write(&p, "iABCDEFGHIJKLMNOPL\niABCDEF1234567890X\n").unwrap();
        let e = format!("{:#}", load_token_file(&p).unwrap_err());
        assert!(
            e.contains(":2: invalid token") && e.contains("checksum"),
            "{e}"
        );
        assert!(load_single_token(&p).is_err());
    }
}
