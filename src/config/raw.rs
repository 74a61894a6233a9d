//! The config files as written: strict serde structs (unknown keys are errors) with
//! secrets masked in Debug, plus checks that need no I/O.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use porthole_engine::direct_paths::AddrRule;
use porthole_engine::policy::AllowRule;
use porthole_engine::quic_params::{Congestion, QuicParams};
use porthole_proto::key::EndpointId;
use porthole_proto::source::Source;
use porthole_proto::ticket::Ticket;
use porthole_proto::token::AuthToken;
use porthole_transport_iroh::{DnsSetting, RelaySpec};
use serde::Deserialize;

use crate::cli::Mode;

/// A secret string: deserialized as-is, never shown by Debug.
#[derive(Clone, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.0);
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedSources {
    #[serde(default)]
    pub tcp: Vec<String>,
    #[serde(default)]
    pub udp: Vec<String>,
}

/// `[nodepass]`: a NodePass tunnel, either as one `url` or field by field (the same
/// fields as the URL's parts and query parameters).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodepassTable {
    /// The whole NodePass URL (`server://...` / `client://...`); excludes the fields below.
    pub url: Option<Secret>,
    /// host:port of the tunnel (the server listens, the client dials).
    pub tunnel: Option<String>,
    /// The tunnel key (the URL's user part); default: derived from the tunnel port.
    pub tunnel_key: Option<Secret>,
    #[serde(default)]
    pub targets: Vec<String>,
    pub tls: Option<u8>,
    pub crt: Option<String>,
    pub key: Option<String>,
    pub sni: Option<String>,
    pub min: Option<usize>,
    pub max: Option<usize>,
    pub mode: Option<u8>,
    pub log: Option<String>,
    pub slot: Option<usize>,
    pub rate: Option<u64>,
    pub read: Option<String>,
    pub proxy: Option<bool>,
    pub notcp: Option<bool>,
    pub noudp: Option<bool>,
    pub dial: Option<String>,
    pub dns: Option<String>,
    pub block: Option<String>,
    pub lbs: Option<u8>,
    pub handshake: Option<String>,
    pub udpframe: Option<String>,
}

fn url_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl NodepassTable {
    /// The NodePass URL this table describes, for `role` ("server" or "client").
    pub fn to_url(&self, role: &str) -> Result<porthole_nodepass::NodepassUrl> {
        if let Some(url) = &self.url {
            let fields_too =
                self.tunnel.is_some() || !self.targets.is_empty() || self.tunnel_key.is_some();
            if fields_too {
                bail!("nodepass: give either `url` or `tunnel`/`targets`/... fields, not both");
            }
            let parsed: porthole_nodepass::NodepassUrl = url.0.parse().context("nodepass.url")?;
            let url_role = if parsed.role == porthole_nodepass::Role::Server {
                "server"
            } else {
                "client"
            };
            if url_role != role {
                bail!("nodepass.url is a {url_role}:// URL but role = \"{role}\"");
            }
            return Ok(parsed);
        }
        let tunnel = self
            .tunnel
            .as_deref()
            .context("nodepass.tunnel: missing (host:port of the tunnel), or give nodepass.url")?;
        if self.targets.is_empty() {
            bail!("nodepass.targets: missing (at least one host:port)");
        }
        let key = self
            .tunnel_key
            .as_ref()
            .map(|k| format!("{}@", url_escape(&k.0)))
            .unwrap_or_default();
        let mut q: Vec<String> = Vec::new();
        let mut put = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                q.push(format!("{k}={}", url_escape(&v)));
            }
        };
        let b = |v: Option<bool>| v.map(|b| if b { "1".to_string() } else { "0".to_string() });
        put("tls", self.tls.map(|v| v.to_string()));
        put("crt", self.crt.clone());
        put("key", self.key.clone());
        put("sni", self.sni.clone());
        put("min", self.min.map(|v| v.to_string()));
        put("max", self.max.map(|v| v.to_string()));
        put("mode", self.mode.map(|v| v.to_string()));
        put("log", self.log.clone());
        put("slot", self.slot.map(|v| v.to_string()));
        put("rate", self.rate.map(|v| v.to_string()));
        put("read", self.read.clone());
        put("proxy", b(self.proxy));
        put("notcp", b(self.notcp));
        put("noudp", b(self.noudp));
        put("dial", self.dial.clone());
        put("dns", self.dns.clone());
        put("block", self.block.clone());
        put("lbs", self.lbs.map(|v| v.to_string()));
        put("handshake", self.handshake.clone());
        put("udpframe", self.udpframe.clone());
        let text = format!(
            "{role}://{key}{tunnel}/{}?{}",
            self.targets.join(","),
            q.join("&")
        );
        text.parse().context("nodepass")
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerFile {
    /// Checked by `check_role` before this struct is parsed.
    #[serde(rename = "role")]
    pub _role: String,
    pub mode: Option<Mode>,
    pub secret_file: Option<PathBuf>,
    #[serde(default)]
    pub auth_tokens: Vec<Secret>,
    pub auth_tokens_file: Option<PathBuf>,
    /// Named clients with their own tokens, allow-lists and limits.
    pub access_file: Option<PathBuf>,
    pub max_sessions: Option<usize>,
    #[serde(default)]
    pub allowed_sources: AllowedSources,
    #[serde(default)]
    pub relay_urls: Vec<String>,
    pub relay_ca: Option<PathBuf>,
    pub dns_server: Option<String>,
    #[serde(default)]
    pub bind: Vec<SocketAddr>,
    pub portmap: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub udp_idle_timeout: Option<Duration>,
    /// Manual mode: STUN servers (`["none"]` for LAN only).
    #[serde(default)]
    pub stun_servers: Vec<String>,
    /// Manual mode: where the offer is written / read.
    pub offer_file: Option<PathBuf>,
    /// Manual mode: where the answer is written / read.
    pub answer_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub punch_timeout: Option<Duration>,
    #[serde(default)]
    pub quic: QuicTable,
    #[serde(default)]
    pub direct_paths: DirectPathsTable,
    #[serde(default)]
    pub status: StatusTable,
    /// mode = "nodepass": the tunnel.
    pub nodepass: Option<NodepassTable>,
}

/// `[quic]`: QUIC tuning, the same in iroh and manual mode.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicTable {
    #[serde(default, deserialize_with = "from_str")]
    pub congestion: Option<Congestion>,
    #[serde(default, with = "humantime_serde")]
    pub idle_timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    pub keep_alive: Option<Duration>,
}

impl QuicTable {
    /// Sets what the table gives on `q`.
    pub fn apply(&self, q: &mut QuicParams) {
        if let Some(c) = self.congestion {
            q.congestion = c;
        }
        if let Some(t) = self.idle_timeout {
            q.idle_timeout = t;
        }
        if let Some(t) = self.keep_alive {
            q.keep_alive = t;
        }
    }

    /// The file's timers must make sense on their own (the command line may still
    /// override them; the merged values are checked again).
    pub fn validate(&self) -> Result<()> {
        let mut q = QuicParams::default();
        self.apply(&mut q);
        q.check().map_err(|e| anyhow::anyhow!("[quic]: {e}"))
    }
}

/// `[direct_paths]`: which addresses direct paths may use, the same in iroh and manual
/// mode (`--exclude-addr` / `--pin-addr`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectPathsTable {
    #[serde(default, deserialize_with = "rules")]
    pub exclude: Vec<AddrRule>,
    #[serde(default, deserialize_with = "rules")]
    pub pin: Vec<AddrRule>,
}

/// A list of address rules, each parsed with its `FromStr` (the error names the entry).
fn rules<'de, D>(d: D) -> Result<Vec<AddrRule>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// An optional value written as a string and parsed with its `FromStr` (the parse error
/// becomes the TOML error, with its line).
fn from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// `[status]`: where a running server or client can be watched from (the flags of
/// the same names win).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatusTable {
    /// A path, or `none`.
    pub control_socket: Option<String>,
    pub metrics: Option<SocketAddr>,
    pub metrics_token_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForwardEntry {
    pub source: String,
    /// Where to listen locally (`target` is the older name).
    #[serde(alias = "target")]
    pub listen: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFile {
    /// Checked by `check_role` before this struct is parsed.
    #[serde(rename = "role")]
    pub _role: String,
    pub mode: Option<Mode>,
    pub server_node_id: Option<String>,
    pub ticket: Option<String>,
    #[serde(default)]
    pub server_addrs: Vec<SocketAddr>,
    pub auth_token: Option<Secret>,
    pub auth_token_file: Option<PathBuf>,
    /// A client key to prove instead of a token (the server's access file lists its id).
    pub client_key_file: Option<PathBuf>,
    /// Shorthand for a single forward (`target` is the older name of `listen`).
    pub source: Option<String>,
    #[serde(alias = "target")]
    pub listen: Option<String>,
    #[serde(default)]
    pub forwards: Vec<ForwardEntry>,
    /// SOCKS5 proxies (dynamic forwarding), e.g. ["127.0.0.1:1080"].
    #[serde(default)]
    pub socks: Vec<SocketAddr>,
    /// HTTP CONNECT proxies, e.g. ["127.0.0.1:3128"].
    #[serde(default)]
    pub http_proxy: Vec<SocketAddr>,
    /// `user:password` the proxies require (needed off loopback).
    pub proxy_auth_file: Option<PathBuf>,
    #[serde(default)]
    pub relay_urls: Vec<String>,
    pub relay_ca: Option<PathBuf>,
    pub dns_server: Option<String>,
    #[serde(default)]
    pub bind: Vec<SocketAddr>,
    pub portmap: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub udp_idle_timeout: Option<Duration>,
    /// Manual mode: STUN servers (`["none"]` for LAN only).
    #[serde(default)]
    pub stun_servers: Vec<String>,
    /// Manual mode: where the offer is written / read.
    pub offer_file: Option<PathBuf>,
    /// Manual mode: where the answer is written / read.
    pub answer_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub punch_timeout: Option<Duration>,
    #[serde(default)]
    pub quic: QuicTable,
    #[serde(default)]
    pub direct_paths: DirectPathsTable,
    #[serde(default)]
    pub status: StatusTable,
    /// mode = "nodepass": the tunnel.
    pub nodepass: Option<NodepassTable>,
}

fn rebase(base: &Path, p: &mut Option<PathBuf>) {
    if let Some(path) = p
        && path.is_relative()
    {
        *path = base.join(&*path);
    }
}

/// Checks a list of relay URLs (`none` alone disables relays).
pub fn check_relays(key: &str, urls: &[String]) -> Result<()> {
    if urls.iter().any(|u| u == "none") {
        if urls.len() > 1 {
            bail!("{key}: \"none\" disables relays and cannot be combined with relay URLs");
        }
        return Ok(());
    }
    for (i, u) in urls.iter().enumerate() {
        u.parse::<RelaySpec>()
            .with_context(|| format!("{key}[{i}]"))?;
    }
    Ok(())
}

pub fn check_dns(key: &str, dns: Option<&String>) -> Result<()> {
    if let Some(d) = dns {
        d.parse::<DnsSetting>()
            .map_err(|e| anyhow::anyhow!("{key}: {e}"))?;
    }
    Ok(())
}

impl ServerFile {
    pub fn validate(&self) -> Result<()> {
        for (proto, rules) in [
            ("tcp", &self.allowed_sources.tcp),
            ("udp", &self.allowed_sources.udp),
        ] {
            for (i, r) in rules.iter().enumerate() {
                r.parse::<AllowRule>()
                    .with_context(|| format!("allowed_sources.{proto}[{i}]"))?;
            }
        }
        for (i, t) in self.auth_tokens.iter().enumerate() {
            t.0.parse::<AuthToken>().with_context(|| {
                format!(
                    "auth_tokens[{i}]: invalid token (generate one with: porthole generate-token)"
                )
            })?;
        }
        if self.max_sessions == Some(0) {
            bail!("max_sessions: must be at least 1");
        }
        check_relays("relay_urls", &self.relay_urls)?;
        check_dns("dns_server", self.dns_server.as_ref())?;
        check_stun("stun_servers", &self.stun_servers)?;
        self.quic.validate()?;
        if let Some(np) = &self.nodepass {
            np.to_url("server")?;
        }
        if self.mode == Some(Mode::Nodepass) && self.nodepass.is_none() {
            bail!(
                "mode = \"nodepass\" needs a [nodepass] table (url = \"server://...\", or tunnel/targets/...)"
            );
        }
        Ok(())
    }

    pub fn rebase(&mut self, base: &Path) {
        rebase(base, &mut self.secret_file);
        rebase(base, &mut self.auth_tokens_file);
        rebase(base, &mut self.access_file);
        rebase(base, &mut self.status.metrics_token_file);
        rebase(base, &mut self.relay_ca);
        rebase(base, &mut self.offer_file);
        rebase(base, &mut self.answer_file);
    }
}

impl ClientFile {
    pub fn validate(&self) -> Result<()> {
        if let Some(id) = &self.server_node_id {
            id.parse::<EndpointId>().context("server_node_id")?;
        }
        if let Some(t) = &self.ticket {
            t.parse::<Ticket>().context("ticket")?;
        }
        if self.server_node_id.is_some() && self.ticket.is_some() {
            bail!(
                "server_node_id and ticket: give one or the other (a ticket already names the server)"
            );
        }
        if let Some(t) = &self.auth_token {
            t.0.parse::<AuthToken>().context("auth_token")?;
        }
        if self.auth_token.is_some() && self.auth_token_file.is_some() {
            bail!("auth_token and auth_token_file: give one or the other");
        }
        match (&self.source, &self.listen) {
            (Some(_), None) => bail!(
                "source without listen: add `listen = \"127.0.0.1:PORT\"` (where to listen locally)"
            ),
            (None, Some(_)) => bail!(
                "listen without source: add `source = \"tcp://HOST:PORT\"` (what to reach on the server's side)"
            ),
            _ => {}
        }
        if self.source.is_some() && !self.forwards.is_empty() {
            bail!(
                "source/listen and [[forwards]]: use one form (put the single forward in [[forwards]])"
            );
        }
        if let (Some(s), Some(t)) = (&self.source, &self.listen) {
            check_forward("source/listen", s, t)?;
        }
        for (i, f) in self.forwards.iter().enumerate() {
            check_forward(&format!("forwards[{i}]"), &f.source, &f.listen)?;
        }
        check_relays("relay_urls", &self.relay_urls)?;
        check_dns("dns_server", self.dns_server.as_ref())?;
        check_stun("stun_servers", &self.stun_servers)?;
        self.quic.validate()?;
        if let Some(np) = &self.nodepass {
            np.to_url("client")?;
        }
        if self.mode == Some(Mode::Nodepass) && self.nodepass.is_none() {
            bail!(
                "mode = \"nodepass\" needs a [nodepass] table (url = \"client://...\", or tunnel/targets/...)"
            );
        }
        Ok(())
    }

    pub fn rebase(&mut self, base: &Path) {
        rebase(base, &mut self.auth_token_file);
        rebase(base, &mut self.client_key_file);
        rebase(base, &mut self.proxy_auth_file);
        rebase(base, &mut self.status.metrics_token_file);
        rebase(base, &mut self.relay_ca);
        rebase(base, &mut self.offer_file);
        rebase(base, &mut self.answer_file);
    }

    /// The file's forwards as (source, listen) pairs.
    pub fn forward_pairs(&self) -> Vec<(String, String)> {
        match (&self.source, &self.listen) {
            (Some(s), Some(t)) => vec![(s.clone(), t.clone())],
            _ => self
                .forwards
                .iter()
                .map(|f| (f.source.clone(), f.listen.clone()))
                .collect(),
        }
    }
}

/// Checks STUN server entries: HOST:PORT, or `none` alone.
pub fn check_stun(key: &str, servers: &[String]) -> Result<()> {
    if servers.iter().any(|s| s == "none") {
        if servers.len() > 1 {
            bail!("{key}: \"none\" disables STUN and cannot be combined with servers");
        }
        return Ok(());
    }
    for (i, s) in servers.iter().enumerate() {
        let ok = s
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            bail!(
                "{key}[{i}]: {s:?} is not HOST:PORT (e.g. stun.example.com:3478 or 192.0.2.1:3478)"
            );
        }
    }
    Ok(())
}

/// Parses a forward pair; used for the file and the command line alike.
pub fn check_forward(key: &str, source: &str, listen: &str) -> Result<(Source, SocketAddr)> {
    let s: Source = source.parse().with_context(|| format!("{key}: source"))?;
    let t: SocketAddr = listen.parse().map_err(|_| {
        anyhow::anyhow!(
            "{key}: listen address {listen:?} is not a local address: write IP:PORT, e.g. 127.0.0.1:2222 or [::1]:2222"
        )
    })?;
    Ok((s, t))
}
