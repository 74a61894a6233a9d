//! The config files: strict serde structs (unknown keys are errors) whose values are
//! parsed once, when the file is read: plain values by their deserializers (a bad one is
//! a TOML error naming the key), secrets and what depends on the role or on other keys
//! by `finish` (so a secret never appears in a TOML error). `resolve` only merges.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use porthole_engine::client::{ForwardSpec, ProxyProtocol, PublishSpec};
use porthole_engine::direct_paths::AddrRule;
use porthole_engine::policy::AllowRule;
use porthole_engine::quic_params::{Congestion, QuicParams};
use porthole_nodepass::NodepassUrl;
use porthole_proto::key::EndpointId;
use porthole_proto::source::{Protocol, Source};
use porthole_proto::ticket::Ticket;
use porthole_proto::token::AuthToken;
use porthole_transport_iroh::{DnsSetting, RelaySetting, RelaySpec};
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
    #[serde(default, deserialize_with = "tcp_rules")]
    pub tcp: Vec<AllowRule>,
    #[serde(default, deserialize_with = "udp_rules")]
    pub udp: Vec<AllowRule>,
}

/// The server's `[allowed_binds]` table: where clients may publish.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedBinds {
    #[serde(default, deserialize_with = "bind_tcp_rules")]
    pub tcp: Vec<AllowRule>,
    #[serde(default, deserialize_with = "bind_udp_rules")]
    pub udp: Vec<AllowRule>,
    #[serde(default, deserialize_with = "bind_names")]
    pub names: Vec<BindName>,
}

fn bind_tcp_rules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<AllowRule>, D::Error> {
    indexed(d, "allowed_binds.tcp")
}

fn bind_udp_rules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<AllowRule>, D::Error> {
    indexed(d, "allowed_binds.udp")
}

fn bind_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<BindName>, D::Error> {
    indexed(d, "allowed_binds.names")
}

/// A name clients may publish on a shared port: `app.example.com` or `*.example.com`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BindName(pub String);

impl std::str::FromStr for BindName {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        let (wild, rest) = match s.strip_prefix("*.") {
            Some(rest) => ("*.", rest),
            None => ("", s),
        };
        match porthole_proto::sniff::normalize_name(rest) {
            Some(n) if !n.contains('*') => Ok(Self(format!("{wild}{n}"))),
            _ => bail!(
                "{s:?} is not a host name or a wildcard like *.example.com (letters, digits, \
                 '-', '.')"
            ),
        }
    }
}

fn tcp_rules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<AllowRule>, D::Error> {
    indexed(d, "allowed_sources.tcp")
}

fn udp_rules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<AllowRule>, D::Error> {
    indexed(d, "allowed_sources.udp")
}

/// A list whose entries parse with `FromStr`; an error names `key[index]`.
fn indexed<'de, D, T>(d: D, key: &str) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: fmt::Display,
{
    Vec::<String>::deserialize(d)?
        .iter()
        .enumerate()
        .map(|(i, s)| {
            s.parse()
                .map_err(|e| serde::de::Error::custom(format!("{key}[{i}]: {e}")))
        })
        .collect()
}

/// `relay_urls`: relay URLs, or `["none"]` (no relays); empty: not given.
fn relays<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<RelaySetting>, D::Error> {
    let urls = Vec::<String>::deserialize(d)?;
    relay_setting("relay_urls", &urls).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
}

/// `stun_servers`: HOST:PORT entries, or `["none"]` (local candidates only); empty: not given.
fn stun<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Stun>, D::Error> {
    let servers = Vec::<String>::deserialize(d)?;
    Stun::parse("stun_servers", &servers).map_err(|e| serde::de::Error::custom(format!("{e:#}")))
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
    /// As written; parsed into `auth_tokens` by `finish`.
    #[serde(default, rename = "auth_tokens")]
    auth_token_texts: Vec<Secret>,
    #[serde(skip)]
    pub auth_tokens: Vec<AuthToken>,
    pub auth_tokens_file: Option<PathBuf>,
    /// Named clients with their own tokens, allow-lists and limits.
    pub access_file: Option<PathBuf>,
    pub max_sessions: Option<usize>,
    #[serde(default)]
    pub allowed_sources: AllowedSources,
    /// Where clients may publish services (reverse forwards).
    #[serde(default)]
    pub allowed_binds: AllowedBinds,
    #[serde(default, rename = "relay_urls", deserialize_with = "relays")]
    pub relays: Option<RelaySetting>,
    pub relay_ca: Option<PathBuf>,
    #[serde(default, deserialize_with = "from_str")]
    pub dns_server: Option<DnsSetting>,
    #[serde(default)]
    pub bind: Vec<SocketAddr>,
    pub portmap: Option<bool>,
    /// iroh mode: punch a direct path beside a relayed tunnel (default true).
    pub upgrade: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub udp_idle_timeout: Option<Duration>,
    /// Manual mode: STUN servers (`["none"]` for LAN only).
    #[serde(default, rename = "stun_servers", deserialize_with = "stun")]
    pub stun: Option<Stun>,
    /// Manual mode: where the offer is written / read.
    pub offer_file: Option<PathBuf>,
    /// Manual mode: where the answer is written / read.
    pub answer_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub punch_timeout: Option<Duration>,
    #[serde(default)]
    pub quic: QuicTable,
    #[serde(default)]
    pub resume: ResumeTable,
    #[serde(default)]
    pub direct_paths: DirectPathsTable,
    #[serde(default)]
    pub status: StatusTable,
    /// mode = "nodepass": the tunnel, as written; its URL is made by `finish`.
    nodepass: Option<NodepassTable>,
    #[serde(skip)]
    pub nodepass_url: Option<NodepassUrl>,
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

/// `[resume]`: resuming TCP connections after a lost tunnel (`--resume-grace`,
/// `--resume-buffer`, `--resume-session-buffer`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResumeTable {
    #[serde(default, with = "humantime_serde")]
    pub grace: Option<Duration>,
    pub buffer_mib: Option<usize>,
    pub session_buffer_mib: Option<usize>,
}

/// `[direct_paths]`: which addresses direct paths may use, the same in iroh and manual
/// mode (`--exclude-addr` / `--pin-addr`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectPathsTable {
    #[serde(default, deserialize_with = "exclude_rules")]
    pub exclude: Vec<AddrRule>,
    #[serde(default, deserialize_with = "pin_rules")]
    pub pin: Vec<AddrRule>,
}

fn exclude_rules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<AddrRule>, D::Error> {
    indexed(d, "direct_paths.exclude")
}

fn pin_rules<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<AddrRule>, D::Error> {
    indexed(d, "direct_paths.pin")
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
    #[serde(default, deserialize_with = "from_str")]
    pub server_node_id: Option<EndpointId>,
    #[serde(default, deserialize_with = "from_str")]
    pub ticket: Option<Ticket>,
    #[serde(default)]
    pub server_addrs: Vec<SocketAddr>,
    /// As written; parsed into `auth_token` by `finish`.
    #[serde(rename = "auth_token")]
    auth_token_text: Option<Secret>,
    #[serde(skip)]
    pub auth_token: Option<AuthToken>,
    pub auth_token_file: Option<PathBuf>,
    /// A client key to prove instead of a token (the server's access file lists its id).
    pub client_key_file: Option<PathBuf>,
    /// Shorthand for a single forward (`target` is the older name of `listen`).
    source: Option<String>,
    #[serde(alias = "target")]
    listen: Option<String>,
    #[serde(default, rename = "forwards")]
    forward_entries: Vec<ForwardEntry>,
    /// The forwards (the shorthand or `[[forwards]]`), parsed by `finish`.
    #[serde(skip)]
    pub forwards: Vec<ForwardSpec>,
    /// Published services as written (`--publish`'s syntax), parsed by `finish`.
    #[serde(default, rename = "publish")]
    publish_texts: Vec<String>,
    #[serde(skip)]
    pub publishes: Vec<PublishSpec>,
    /// SOCKS5 proxies (dynamic forwarding), e.g. ["127.0.0.1:1080"].
    #[serde(default)]
    pub socks: Vec<SocketAddr>,
    /// HTTP CONNECT proxies, e.g. ["127.0.0.1:3128"].
    #[serde(default)]
    pub http_proxy: Vec<SocketAddr>,
    /// `user:password` the proxies require (needed off loopback).
    pub proxy_auth_file: Option<PathBuf>,
    #[serde(default, rename = "relay_urls", deserialize_with = "relays")]
    pub relays: Option<RelaySetting>,
    pub relay_ca: Option<PathBuf>,
    #[serde(default, deserialize_with = "from_str")]
    pub dns_server: Option<DnsSetting>,
    #[serde(default)]
    pub bind: Vec<SocketAddr>,
    pub portmap: Option<bool>,
    /// iroh mode: punch a direct path beside a relayed tunnel (default true).
    pub upgrade: Option<bool>,
    #[serde(default, with = "humantime_serde")]
    pub udp_idle_timeout: Option<Duration>,
    /// Manual mode: STUN servers (`["none"]` for LAN only).
    #[serde(default, rename = "stun_servers", deserialize_with = "stun")]
    pub stun: Option<Stun>,
    /// Manual mode: where the offer is written / read.
    pub offer_file: Option<PathBuf>,
    /// Manual mode: where the answer is written / read.
    pub answer_file: Option<PathBuf>,
    #[serde(default, with = "humantime_serde")]
    pub punch_timeout: Option<Duration>,
    #[serde(default)]
    pub quic: QuicTable,
    #[serde(default)]
    pub resume: ResumeTable,
    #[serde(default)]
    pub direct_paths: DirectPathsTable,
    #[serde(default)]
    pub status: StatusTable,
    /// mode = "nodepass": the tunnel, as written; its URL is made by `finish`.
    nodepass: Option<NodepassTable>,
    #[serde(skip)]
    pub nodepass_url: Option<NodepassUrl>,
}

fn rebase(base: &Path, p: &mut Option<PathBuf>) {
    if let Some(path) = p
        && path.is_relative()
    {
        *path = base.join(&*path);
    }
}

/// Relay URLs as written (in a file, on the command line, in a ticket): `None` when
/// there are none, `none` alone disables relays.
pub fn relay_setting(key: &str, urls: &[String]) -> Result<Option<RelaySetting>> {
    if urls.is_empty() {
        return Ok(None);
    }
    if urls.iter().any(|u| u == "none") {
        if urls.len() > 1 {
            bail!("{key}: \"none\" disables relays and cannot be combined with relay URLs");
        }
        return Ok(Some(RelaySetting::Disabled));
    }
    let specs = urls
        .iter()
        .enumerate()
        .map(|(i, u)| {
            u.parse::<RelaySpec>()
                .with_context(|| format!("{key}[{i}]"))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(RelaySetting::Custom(specs)))
}

/// Manual mode's STUN servers, as given (not given: the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stun {
    /// `none`: local candidates only.
    Off,
    /// HOST:PORT entries.
    Servers(Vec<String>),
}

impl Stun {
    /// `None` when the list is empty; `none` alone turns STUN off.
    pub fn parse(key: &str, servers: &[String]) -> Result<Option<Self>> {
        if servers.is_empty() {
            return Ok(None);
        }
        if servers.iter().any(|s| s == "none") {
            if servers.len() > 1 {
                bail!("{key}: \"none\" disables STUN and cannot be combined with servers");
            }
            return Ok(Some(Stun::Off));
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
        Ok(Some(Stun::Servers(servers.to_vec())))
    }
}

/// `mode = "nodepass"` needs the table; the table, when there, is made into its URL.
fn nodepass_url(
    mode: Option<Mode>,
    table: Option<&NodepassTable>,
    role: &str,
) -> Result<Option<NodepassUrl>> {
    if mode == Some(Mode::Nodepass) && table.is_none() {
        bail!(
            "mode = \"nodepass\" needs a [nodepass] table (url = \"{role}://...\", or tunnel/targets/...)"
        );
    }
    table.map(|t| t.to_url(role)).transpose()
}

impl ServerFile {
    /// Parses what the deserializers left as written (tokens, the NodePass table) and
    /// checks what spans keys.
    pub fn finish(&mut self) -> Result<()> {
        self.auth_tokens = self
            .auth_token_texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                t.0.parse::<AuthToken>().with_context(|| {
                    format!(
                        "auth_tokens[{i}]: invalid token (generate one with: porthole generate-token)"
                    )
                })
            })
            .collect::<Result<_>>()?;
        self.auth_token_texts.clear();
        if self.max_sessions == Some(0) {
            bail!("max_sessions: must be at least 1");
        }
        self.quic.validate()?;
        self.nodepass_url = nodepass_url(self.mode, self.nodepass.as_ref(), "server")?;
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
    /// Parses what the deserializers left as written (the token, the forwards, the
    /// NodePass table) and checks what spans keys.
    pub fn finish(&mut self) -> Result<()> {
        if self.server_node_id.is_some() && self.ticket.is_some() {
            bail!(
                "server_node_id and ticket: give one or the other (a ticket already names the server)"
            );
        }
        if let Some(t) = self.auth_token_text.take() {
            self.auth_token = Some(t.0.parse::<AuthToken>().context("auth_token")?);
        }
        if self.auth_token.is_some() && self.auth_token_file.is_some() {
            bail!("auth_token and auth_token_file: give one or the other");
        }
        self.forwards = match (&self.source, &self.listen) {
            (Some(_), None) => bail!(
                "source without listen: add `listen = \"127.0.0.1:PORT\"` (where to listen locally)"
            ),
            (None, Some(_)) => bail!(
                "listen without source: add `source = \"tcp://HOST:PORT\"` (what to reach on the server's side)"
            ),
            (Some(_), Some(_)) if !self.forward_entries.is_empty() => bail!(
                "source/listen and [[forwards]]: use one form (put the single forward in [[forwards]])"
            ),
            (Some(s), Some(t)) => vec![check_forward("source/listen", s, t)?],
            (None, None) => self
                .forward_entries
                .iter()
                .enumerate()
                .map(|(i, f)| check_forward(&format!("forwards[{i}]"), &f.source, &f.listen))
                .collect::<Result<_>>()?,
        };
        self.publishes = self
            .publish_texts
            .iter()
            .enumerate()
            .map(|(i, p)| check_publish(&format!("publish[{i}]"), p))
            .collect::<Result<_>>()?;
        self.quic.validate()?;
        self.nodepass_url = nodepass_url(self.mode, self.nodepass.as_ref(), "client")?;
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
}

/// Parses a forward pair; used for the file and the command line alike. The source may
/// carry options after `?` (PROXY protocol), which stay on this side.
pub fn check_forward(key: &str, source: &str, listen: &str) -> Result<ForwardSpec> {
    let (address, options) = match source.split_once('?') {
        Some((a, o)) => (a, Some(o)),
        None => (source, None),
    };
    let s: Source = address.parse().with_context(|| format!("{key}: source"))?;
    let t: SocketAddr = listen.parse().map_err(|_| {
        anyhow::anyhow!(
            "{key}: listen address {listen:?} is not a local address: write IP:PORT, e.g. 127.0.0.1:2222 or [::1]:2222"
        )
    })?;
    let mut spec = ForwardSpec::new(s, t);
    for pair in options.into_iter().flat_map(|o| o.split('&')) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "proxy_protocol" => {
                spec.proxy.send = Some(v.parse().with_context(|| format!("{key}: source"))?)
            }
            "accept_proxy_protocol" => {
                spec.proxy.accept = match v {
                    "" | "1" | "true" => true,
                    "0" | "false" => false,
                    _ => bail!("{key}: accept_proxy_protocol={v:?}: write 1 or 0"),
                }
            }
            _ => bail!(
                "{key}: unknown source option {k:?}: the options are proxy_protocol=v1|v2 \
                 (send a PROXY header to the target) and accept_proxy_protocol=1 (read one from \
                 each local connection)"
            ),
        }
    }
    if spec.proxy != ProxyProtocol::default() && spec.source.protocol != Protocol::Tcp {
        bail!("{key}: PROXY protocol options apply to tcp:// sources only");
    }
    Ok(spec)
}

/// Parses a publish (`--publish` and the client file's `publish` list alike):
/// `tcp://BIND_IP:PORT=TARGET_HOST:PORT?name=...&proxy_protocol=v1|v2&accept_proxy_protocol=1`.
pub fn check_publish(key: &str, text: &str) -> Result<PublishSpec> {
    let (spec, options) = match text.split_once('?') {
        Some((a, o)) => (a, Some(o)),
        None => (text, None),
    };
    let Some((bind, target)) = spec.split_once('=') else {
        bail!(
            "{key}: write SERVER_SIDE=CLIENT_SIDE, e.g. tcp://0.0.0.0:8443=127.0.0.1:443 \
             (listen on the server's port 8443, carry visitors to 127.0.0.1:443 here)"
        );
    };
    let bind: Source = bind
        .parse()
        .with_context(|| format!("{key}: the server's side"))?;
    if !matches!(bind.host, porthole_proto::source::Host::Ip(_)) {
        bail!(
            "{key}: the server listens on an IP address (0.0.0.0 for all), not {}",
            bind.host
        );
    }
    let target: Source = format!("{}://{target}", bind.protocol)
        .parse()
        .with_context(|| format!("{key}: the client's side (HOST:PORT)"))?;
    let mut out = PublishSpec {
        bind,
        name: None,
        target,
        proxy: ProxyProtocol::default(),
    };
    for pair in options.into_iter().flat_map(|o| o.split('&')) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "name" => {
                out.name = Some(
                    porthole_proto::sniff::normalize_name(v)
                        .with_context(|| format!("{key}: name={v:?} is not a host name"))?,
                )
            }
            "proxy_protocol" => {
                out.proxy.send = Some(v.parse().with_context(|| format!("{key}: publish"))?)
            }
            "accept_proxy_protocol" => {
                out.proxy.accept = match v {
                    "" | "1" | "true" => true,
                    "0" | "false" => false,
                    _ => bail!("{key}: accept_proxy_protocol={v:?}: write 1 or 0"),
                }
            }
            _ => bail!(
                "{key}: unknown publish option {k:?}: the options are name=HOST (share the \
                 server's port by TLS SNI / HTTP Host), proxy_protocol=v1|v2 (send the target a \
                 PROXY header naming the visitor) and accept_proxy_protocol=1 (visitors come \
                 through a load balancer that sends one)"
            ),
        }
    }
    if out.bind.protocol != Protocol::Tcp
        && (out.name.is_some() || out.proxy != ProxyProtocol::default())
    {
        bail!("{key}: name= and PROXY protocol options apply to tcp:// publishes only");
    }
    Ok(out)
}
