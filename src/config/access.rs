//! The access file (`--access-file`): named clients, each with its tokens, allow-lists
//! and limits. Read at start and again on every reload (`commands::reload`); together
//! with the flat `--auth-tokens` / `--auth-tokens-file` (the client named `default`)
//! it makes the server's [`Access`].

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result, bail};
use porthole_engine::access::{Access, ClientRule, DEFAULT_CLIENT};
use porthole_engine::policy::{AllowList, BindRules, Policy};
use porthole_proto::token::AuthToken;
use serde::Deserialize;

use super::raw::Secret;
use crate::secrets;

/// The file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessFile {
    #[serde(default, rename = "client")]
    pub clients: Vec<ClientEntry>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientEntry {
    pub name: String,
    #[serde(default)]
    pub tokens: Vec<Secret>,
    /// One token per line, `#` comments; relative to the access file.
    pub tokens_file: Option<PathBuf>,
    /// Client ids (`porthole show-client-id`) whose keys this client proves.
    #[serde(default)]
    pub keys: Vec<String>,
    #[serde(default)]
    pub allowed_tcp: Vec<String>,
    #[serde(default)]
    pub allowed_udp: Vec<String>,
    /// Where this client may publish (`--publish`): CIDR:ports; names on shared ports.
    #[serde(default)]
    pub allowed_bind_tcp: Vec<String>,
    #[serde(default)]
    pub allowed_bind_udp: Vec<String>,
    #[serde(default)]
    pub allowed_bind_names: Vec<String>,
    pub max_sessions: Option<usize>,
    /// Concurrent TCP connections and UDP flows over all of the client's sessions.
    pub max_streams: Option<usize>,
    pub max_udp_flows: Option<usize>,
    /// Bandwidth cap in Mbit/s, each direction, over all of the client's sessions.
    pub max_mbps: Option<f64>,
    /// RFC 3339, e.g. `2027-01-31T18:00:00Z`.
    pub expires: Option<String>,
}

/// Where the server's clients come from: re-read on every reload.
#[derive(Debug, Clone, Default)]
pub struct AccessSources {
    pub access_file: Option<PathBuf>,
    /// The flat tokens (`default`): given on the command line or in the config file
    /// (fixed for the run), and from a file (re-read).
    pub inline_tokens: Vec<AuthToken>,
    pub tokens_file: Option<PathBuf>,
    /// The flat allow-lists, which the `default` client gets.
    pub policy: Policy,
    /// The flat bind rules (`--allowed-bind-*`), which the `default` client gets.
    pub binds: BindRules,
}

impl AccessSources {
    /// The access file and the flat tokens file, those given.
    pub fn main_files(&self) -> Vec<PathBuf> {
        self.access_file
            .iter()
            .chain(self.tokens_file.iter())
            .cloned()
            .collect()
    }

    /// Whether there is anything to re-read.
    pub fn has_files(&self) -> bool {
        self.access_file.is_some() || self.tokens_file.is_some()
    }

    /// Reads everything and builds the rules; any error leaves the caller's rules alone.
    pub fn load(&self) -> Result<Access> {
        self.load_with_files().map(|(a, _)| a)
    }

    /// [`load`](Self::load), and every file it read (the ones to watch for changes).
    pub fn load_with_files(&self) -> Result<(Access, Vec<PathBuf>)> {
        let mut files = self.main_files();
        let mut clients = Vec::new();
        let mut flat = self.inline_tokens.clone();
        if let Some(p) = &self.tokens_file {
            flat.extend(secrets::load_token_file(p)?);
        }
        if !flat.is_empty() {
            clients.push(ClientRule {
                name: DEFAULT_CLIENT.into(),
                tokens: flat,
                keys: Vec::new(),
                policy: self.policy.clone(),
                binds: self.binds.clone(),
                max_sessions: None,
                max_streams: None,
                max_udp_flows: None,
                max_rate: None,
                expires: None,
            });
        }
        if let Some(p) = &self.access_file {
            let (named, token_files) = read(p)?;
            clients.extend(named);
            files.extend(token_files);
        }
        if clients.is_empty() {
            bail!(
                "no auth tokens: give --auth-tokens-file FILE or --access-file FILE (or auth_tokens in the config); create a token with: porthole generate-token > tokens.txt"
            );
        }
        let access = Access::new(clients).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok((access, files))
    }
}

/// Reads and checks an access file; errors name the file, the line and the key.
/// Returns its clients and the `tokens_file`s they named.
pub fn read(path: &Path) -> Result<(Vec<ClientRule>, Vec<PathBuf>)> {
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path)
            .with_context(|| format!("cannot read access file {}", path.display()))?,
    );
    secrets::warn_if_readable_by_others(path);
    let base = path.parent().unwrap_or(Path::new("."));
    let clients = parse(&text, base).with_context(|| format!("access file {}", path.display()))?;
    // parse() succeeded, so the file is valid TOML with these entries.
    let files = toml::from_str::<AccessFile>(&text)
        .map(|f| {
            f.clients
                .iter()
                .filter_map(|c| c.tokens_file.as_ref())
                .map(|f| token_file_path(base, f))
                .collect()
        })
        .unwrap_or_default();
    Ok((clients, files))
}

fn token_file_path(base: &Path, f: &Path) -> PathBuf {
    if f.is_relative() {
        base.join(f)
    } else {
        f.to_path_buf()
    }
}

/// Parses an access file's text; relative `tokens_file`s are taken from `base`.
pub fn parse(text: &str, base: &Path) -> Result<Vec<ClientRule>> {
    let file: AccessFile = toml::from_str(text).map_err(|e| super::toml_error(text, &e, false))?;
    if file.clients.is_empty() {
        bail!("no [[client]] entries");
    }
    file.clients
        .iter()
        .enumerate()
        .map(|(i, c)| client(c, base).with_context(|| format!("client[{i}] ({:?})", c.name)))
        .collect()
}

fn client(c: &ClientEntry, base: &Path) -> Result<ClientRule> {
    if c.name.is_empty()
        || c.name.len() > 64
        || !c
            .name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.@".contains(ch))
    {
        bail!("name: use 1-64 letters, digits and - _ . @");
    }
    if c.name == DEFAULT_CLIENT {
        bail!(
            "name: \"{DEFAULT_CLIENT}\" is the client of --auth-tokens / --auth-tokens-file; pick another name"
        );
    }
    let mut tokens = Vec::new();
    for (i, t) in c.tokens.iter().enumerate() {
        tokens.push(
            t.0.parse::<AuthToken>()
                .with_context(|| format!("tokens[{i}]"))?,
        );
    }
    if let Some(f) = &c.tokens_file {
        tokens.extend(secrets::load_token_file(&token_file_path(base, f)).context("tokens_file")?);
    }
    let mut keys = Vec::new();
    for (i, k) in c.keys.iter().enumerate() {
        keys.push(k.parse::<porthole_proto::key::EndpointId>().map_err(|e| {
            anyhow::anyhow!("keys[{i}]: {e} (write what `porthole show-client-id` prints)")
        })?);
    }
    if tokens.is_empty() && keys.is_empty() {
        bail!("no credential: give tokens = [...], tokens_file or keys = [...]");
    }
    let policy = Policy {
        tcp: AllowList::parse(&c.allowed_tcp).context("allowed_tcp")?,
        udp: AllowList::parse(&c.allowed_udp).context("allowed_udp")?,
    };
    for (key, v) in [
        ("max_sessions", c.max_sessions),
        ("max_streams", c.max_streams),
        ("max_udp_flows", c.max_udp_flows),
    ] {
        if v == Some(0) {
            bail!("{key}: at least 1 (leave it out for no limit; remove the client to refuse it)");
        }
    }
    let max_rate = match c.max_mbps {
        Some(m) if !(0.01..=1_000_000.0).contains(&m) => {
            bail!("max_mbps: {m} is out of range (0.01 to 1000000 Mbit/s; leave it out for no cap)")
        }
        Some(m) => Some(porthole_engine::pace::mbps_to_bytes(m)),
        None => None,
    };
    let expires = match &c.expires {
        Some(s) => Some(expiry(s).context("expires")?),
        None => None,
    };
    let binds = BindRules {
        tcp: AllowList::parse(&c.allowed_bind_tcp).context("allowed_bind_tcp")?,
        udp: AllowList::parse(&c.allowed_bind_udp).context("allowed_bind_udp")?,
        names: c
            .allowed_bind_names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                n.parse::<super::raw::BindName>()
                    .map(|n| n.0)
                    .with_context(|| format!("allowed_bind_names[{i}]"))
            })
            .collect::<Result<_>>()?,
    };
    Ok(ClientRule {
        name: c.name.clone(),
        tokens,
        keys,
        policy,
        binds,
        max_sessions: c.max_sessions,
        max_streams: c.max_streams,
        max_udp_flows: c.max_udp_flows,
        max_rate,
        expires,
    })
}

fn expiry(s: &str) -> Result<SystemTime> {
    humantime::parse_rfc3339_weak(s)
        .map_err(|e| anyhow::anyhow!("{s:?}: {e} (write e.g. 2027-01-31T18:00:00Z)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "iABCDEFGHIJKLMNOPL";

    #[test]
    fn clients_parse_with_their_rules() {
        let text = format!(
            r#"
[[client]]
name = "alice"
tokens = ["{A}"]
allowed_tcp = ["10.0.0.5/32:22"]
max_sessions = 2
expires = "2030-01-01T00:00:00Z"
"#
        );
        let v = parse(&text, Path::new(".")).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(v[0].name, "alice");
        assert_eq!(v[0].max_sessions, Some(2));
        assert!(v[0].expires.is_some());
        assert!(v[0].allows(
            porthole_proto::source::Protocol::Tcp,
            &["10.0.0.5:22".parse().unwrap_or_else(|_| unreachable!())]
        ));
    }

    #[test]
    fn errors_name_the_line_and_key_and_never_quote_a_token() {
        let bad_key = format!("[[client]]\nname = \"a\"\ntokens = [\"{A}\"]\nallowed = []\n");
        let e = format!("{:#}", parse(&bad_key, Path::new(".")).unwrap_err());
        assert!(e.contains("line 4") && e.contains("allowed"), "{e}");
        let bad_syntax = format!("[[client]]\nname = \"a\"\ntokens = [\"{A}\" \n");
        let e = format!("{:#}", parse(&bad_syntax, Path::new(".")).unwrap_err());
        assert!(e.contains("line 3"), "{e}");
        assert!(!e.contains(A), "the token stays out of the error: {e}");
        let bad_rule =
            format!("[[client]]\nname = \"a\"\ntokens = [\"{A}\"]\nallowed_tcp = [\"10.0.0\"]\n");
        let e = format!("{:#}", parse(&bad_rule, Path::new(".")).unwrap_err());
        assert!(e.contains("client[0]") && e.contains("allowed_tcp"), "{e}");
        let default = format!("[[client]]\nname = \"default\"\ntokens = [\"{A}\"]\n");
        assert!(parse(&default, Path::new(".")).is_err());
    }
}
