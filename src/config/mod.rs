//! Configuration files: `raw` (serde, strict; every value parsed once, as the file is
//! read), then merged with the command line in `resolve` (flags win; a non-empty list on
//! the command line replaces the file's list) into per-mode settings.
//!
//! Relative paths inside a file are relative to the file's own directory.

pub mod access;
pub mod raw;
pub mod resolve;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

pub use raw::{ClientFile, ServerFile};

/// Which subcommand is reading the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
        }
    }
}

/// `$XDG_CONFIG_HOME/porthole/<role>.toml`, else `~/.config/porthole/<role>.toml`.
pub fn default_path(role: Role) -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => {
            let home =
                std::env::var_os("HOME").context("neither XDG_CONFIG_HOME nor HOME is set")?;
            PathBuf::from(home).join(".config")
        }
    };
    Ok(base
        .join("porthole")
        .join(format!("{}.toml", role.as_str())))
}

/// Reads and parses a file for `role`; errors name the file, the key and the fix.
pub fn read_server(path: &Path) -> Result<ServerFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut file =
        parse_server(&text).with_context(|| format!("config file {}", path.display()))?;
    file.rebase(path.parent().unwrap_or(Path::new(".")));
    Ok(file)
}

pub fn read_client(path: &Path) -> Result<ClientFile> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let mut file =
        parse_client(&text).with_context(|| format!("config file {}", path.display()))?;
    file.rebase(path.parent().unwrap_or(Path::new(".")));
    Ok(file)
}

pub fn parse_server(text: &str) -> Result<ServerFile> {
    check_role(text, Role::Server)?;
    let mut file: ServerFile = toml::from_str(text).map_err(|e| explain_toml(text, e))?;
    file.finish()?;
    Ok(file)
}

pub fn parse_client(text: &str) -> Result<ClientFile> {
    check_role(text, Role::Client)?;
    let mut file: ClientFile = toml::from_str(text).map_err(|e| explain_toml(text, e))?;
    file.finish()?;
    Ok(file)
}

/// `role` is required and must match the subcommand, so a client file handed to
/// `porthole server` fails with a sentence, not with a dozen unknown keys.
fn check_role(text: &str, expected: Role) -> Result<()> {
    let table: toml::Table = toml::from_str(text).map_err(|e| explain_toml(text, e))?;
    match table.get("role") {
        None => bail!(
            "missing key `role`: add `role = \"{}\"` at the top of the file",
            expected.as_str()
        ),
        Some(toml::Value::String(r)) if r == expected.as_str() => Ok(()),
        Some(toml::Value::String(r)) if r == "server" || r == "client" => bail!(
            "`role = \"{r}\"` but this is `porthole {}`: use a {} config file, or run `porthole {r}`",
            expected.as_str(),
            expected.as_str()
        ),
        Some(other) => bail!("`role` must be \"server\" or \"client\", got {other}"),
    }
}

/// A TOML error for a file's `text`. toml quotes the offending line; when `quote` is
/// false, or that line may hold a secret (a token, a key, a NodePass URL with its key),
/// the quote is left out and the error says only where (one line: line, column and what
/// is wrong).
pub(crate) fn toml_error(text: &str, e: &toml::de::Error, quote: bool) -> anyhow::Error {
    let Some(span) = e.span() else {
        return anyhow::anyhow!("{}", e.message());
    };
    let start = span.start.min(text.len());
    let before = &text[..start];
    let line_no = before.matches('\n').count() + 1;
    let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    let line = text[before.rfind('\n').map_or(0, |i| i + 1)..]
        .lines()
        .next()
        .unwrap_or("");
    // The keys whose values are secrets; a line without a key (inside a multi-line
    // array) might be one of their values.
    let secret = match line.split_once('=') {
        Some((key, _)) => matches!(
            key.trim(),
            "auth_token" | "auth_tokens" | "tokens" | "url" | "tunnel_key" | "key"
        ),
        None => true,
    };
    if secret || !quote {
        anyhow::anyhow!("line {line_no}, column {col}: {}", e.message())
    } else {
        anyhow::anyhow!("{e}")
    }
}

fn explain_toml(text: &str, e: toml::de::Error) -> anyhow::Error {
    let msg = toml_error(text, &e, true).to_string();
    if msg.contains("relay_only") {
        anyhow::anyhow!(
            "`relay_only` cannot be set in a config file (it would silently change how peers meet): use --relay-only on the command line\n{msg}"
        )
    } else {
        anyhow::anyhow!("{msg}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixtures(kind: &str) -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config")
            .join(kind);
        let mut v: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        v.sort();
        assert!(!v.is_empty(), "no fixtures in {}", dir.display());
        v
    }

    fn parse_any(path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path)?;
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("server") {
            parse_server(&text).map(|_| ())
        } else if name.starts_with("client") {
            parse_client(&text).map(|_| ())
        } else {
            panic!("fixture {name} must start with server or client")
        }
    }

    #[test]
    fn toml_errors_never_quote_a_line_with_a_secret() {
        let text = "role = \"client\"\nauth_token = \"iABCDEFGHIJKLMNOPL\n";
        let e = format!("{:#}", parse_client(text).unwrap_err());
        assert!(e.contains("line 2"), "{e}");
        assert!(!e.contains("iABCDEFGHIJKLMNOPL"), "{e}");
        // Lines without secrets keep toml's helpful quote.
        let text = "role = \"client\"\nrelay_urls = [\"x\" \n";
        let e = format!("{:#}", parse_client(text).unwrap_err());
        assert!(e.contains("relay_urls = "), "{e}");
    }

    #[test]
    fn examples_parse() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let s = std::fs::read_to_string(root.join("server.toml.example")).unwrap();
        parse_server(&s).unwrap();
        let c = std::fs::read_to_string(root.join("client.toml.example")).unwrap();
        parse_client(&c).unwrap();
        let a = std::fs::read_to_string(root.join("access.toml.example")).unwrap();
        let clients = access::parse(&a, root).unwrap();
        assert_eq!(clients.len(), 3);
        assert_eq!(clients[0].binds.names, ["*.alice.example.com"]);
        assert_eq!(clients[0].binds.tcp.to_string(), "0.0.0.0/32:8080");
        assert_eq!(clients[1].keys.len(), 1, "the laptop proves a key");
        assert_eq!(clients[2].max_sessions, Some(2));
        assert_eq!(clients[2].max_rate, Some(12_500_000), "100 Mbit/s in bytes");
    }

    #[test]
    fn direct_path_rules_are_typed_at_parse() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/config/valid/server-full.toml");
        let f = parse_server(&std::fs::read_to_string(p).unwrap()).unwrap();
        let shown = |v: &[porthole_engine::direct_paths::AddrRule]| {
            v.iter().map(|r| r.to_string()).collect::<Vec<_>>()
        };
        assert_eq!(
            shown(&f.direct_paths.exclude),
            ["192.168.100.0/24", "docker0"]
        );
        assert_eq!(shown(&f.direct_paths.pin), ["eth0", "10.0.0.0/8"]);
    }

    #[test]
    fn publishes_and_bind_rules_are_typed_at_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/config/valid");
        let c = parse_client(&std::fs::read_to_string(dir.join("client-publish.toml")).unwrap())
            .unwrap();
        let shown: Vec<String> = c.publishes.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            shown,
            [
                "tcp://0.0.0.0:8443 -> 127.0.0.1:443",
                "tcp://0.0.0.0:443 (photos.home.example.com) -> localhost:8080",
                "udp://[::]:27015 -> 127.0.0.1:27015",
            ]
        );
        assert_eq!(
            c.publishes[1].proxy.send,
            Some(porthole_proto::proxy_header::Version::V2)
        );
        let s = parse_server(&std::fs::read_to_string(dir.join("server-publish.toml")).unwrap())
            .unwrap();
        let b = &s.allowed_binds;
        assert_eq!(b.tcp.len(), 2);
        assert_eq!(b.udp[0].to_string(), "::/128:27015");
        assert_eq!(b.names[0].0, "*.home.example.com");
    }

    #[test]
    fn listen_is_also_spelled_target() {
        let new = parse_client(
            "role = \"client\"\n[[forwards]]\nsource = \"tcp://127.0.0.1:22\"\nlisten = \"127.0.0.1:2222\"\n",
        )
        .unwrap();
        let old = parse_client(
            "role = \"client\"\n[[forwards]]\nsource = \"tcp://127.0.0.1:22\"\ntarget = \"127.0.0.1:2222\"\n",
        )
        .unwrap();
        assert_eq!(new.forwards, old.forwards);
        assert_eq!(new.forwards[0].listen, "127.0.0.1:2222".parse().unwrap());
    }

    #[test]
    fn valid_fixtures_parse() {
        for p in fixtures("valid") {
            parse_any(&p).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
        }
    }

    /// Each invalid fixture starts with `# expect: <text>`: the error must contain it.
    #[test]
    fn invalid_fixtures_fail_with_their_message() {
        for p in fixtures("invalid") {
            let text = std::fs::read_to_string(&p).unwrap();
            let expect = text
                .lines()
                .next()
                .and_then(|l| l.strip_prefix("# expect: "))
                .unwrap_or_else(|| panic!("{} lacks a `# expect:` first line", p.display()));
            match parse_any(&p) {
                Ok(()) => panic!("{} parsed but should fail", p.display()),
                Err(e) => {
                    let msg = format!("{e:#}");
                    assert!(
                        msg.contains(expect),
                        "{}: expected {expect:?} in:\n{msg}",
                        p.display()
                    );
                }
            }
        }
    }

    #[test]
    fn secrets_are_masked_in_debug() {
        let f =
            parse_server("role = \"server\"\nauth_tokens = [\"iABCDEFGHIJKLMNOPL\"]\n").unwrap();
        assert!(!format!("{f:?}").contains("ABCDEF"));
        let f = parse_client("role = \"client\"\nauth_token = \"iABCDEFGHIJKLMNOPL\"\n").unwrap();
        assert!(!format!("{f:?}").contains("ABCDEF"));
    }
}
