//! Merging the command line over a config file into validated settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use porthole_engine::client::proxy::{ProxyAuth, ProxyKind, ProxySpec};
use porthole_engine::client::{ClientConfig, ForwardSpec, PublishSpec};
use porthole_engine::direct_paths::PathRules;
use porthole_engine::policy::{AllowList, Policy};
use porthole_engine::quic_params::QuicParams;
use porthole_engine::server::ServerConfig;
use porthole_proto::key::{EndpointId, SecretKey};
use porthole_proto::token::AuthToken;
use porthole_transport_iroh::options::parse_pem_certs;
use porthole_transport_iroh::{DnsSetting, IrohOptions, RelaySetting};
use tracing::warn;

use super::raw::{
    ClientFile, DirectPathsTable, QuicTable, ServerFile, StatusTable, Stun, check_forward,
    check_publish, relay_setting,
};
use super::{Role, read_client, read_server};
use crate::cli::{
    ClientArgs, ConfigArgs, DirectPathArgs, IrohArgs, ManualArgs, Mode, QuicArgs, ServerArgs,
    WatchArgs,
};
use crate::secrets;

/// Public STUN servers used by manual mode unless told otherwise.
pub const DEFAULT_STUN: [&str; 2] = ["stun.l.google.com:19302", "stun.cloudflare.com:3478"];

/// Manual mode's settings (resolved STUN addresses are looked up at start).
#[derive(Debug, Clone)]
pub struct ManualSettings {
    /// HOST:PORT entries; empty means local candidates only.
    pub stun: Vec<String>,
    pub offer_file: Option<PathBuf>,
    pub answer_file: Option<PathBuf>,
    pub punch_timeout: Option<Duration>,
    pub bind: Option<SocketAddr>,
    /// The same rules as [`IrohOptions::direct_paths`].
    pub direct_paths: PathRules,
}

/// What a config file says about manual mode.
#[derive(Default)]
struct ManualFile<'a> {
    stun: Option<&'a Stun>,
    offer_file: Option<&'a PathBuf>,
    answer_file: Option<&'a PathBuf>,
    punch_timeout: Option<Duration>,
    bind: &'a [SocketAddr],
}

fn manual_settings(
    args: &ManualArgs,
    bind_args: &[SocketAddr],
    file: ManualFile<'_>,
    direct_paths: PathRules,
) -> Result<ManualSettings> {
    let stun = match Stun::parse("--stun-server", &args.stun_servers)?.or(file.stun.cloned()) {
        None => DEFAULT_STUN.iter().map(|s| s.to_string()).collect(),
        Some(Stun::Off) => Vec::new(),
        Some(Stun::Servers(v)) => v,
    };
    let bind = list(bind_args, file.bind);
    if bind.len() > 1 {
        bail!("manual mode uses one UDP socket: give a single --bind address");
    }
    Ok(ManualSettings {
        stun,
        offer_file: args.offer_file.clone().or(file.offer_file.cloned()),
        answer_file: args.answer_file.clone().or(file.answer_file.cloned()),
        punch_timeout: args.punch_timeout.or(file.punch_timeout),
        bind: bind.first().copied(),
        direct_paths,
    })
}

/// How the server meets its clients: the mode and its settings.
#[derive(Debug)]
pub enum ServerTransport {
    Iroh(IrohOptions),
    Manual(ManualSettings),
}

/// How the client reaches its server: the mode and its settings.
#[derive(Debug)]
pub enum ClientTransport {
    Iroh(IrohClient),
    Manual(ManualSettings),
}

/// Iroh mode's client: the server to reach and the endpoint's options.
#[derive(Debug)]
pub struct IrohClient {
    pub server: EndpointId,
    /// Direct addresses to try (the command line's or file's, plus the ticket's).
    pub server_addrs: Vec<SocketAddr>,
    pub options: IrohOptions,
}

#[derive(Debug)]
pub struct ServerSettings {
    pub transport: ServerTransport,
    pub secret: Option<SecretKey>,
    /// Where the clients come from (re-read on reload), and the rules they made at start.
    pub access_sources: super::access::AccessSources,
    pub access: porthole_engine::access::Access,
    pub policy: Policy,
    /// Where clients may publish.
    pub binds: porthole_engine::policy::BindRules,
    pub max_sessions: usize,
    /// QUIC tuning, the same in iroh and manual mode.
    pub quic: QuicParams,
    pub udp_idle_timeout: Duration,
    pub watch: WatchSettings,
}

/// Where a running instance can be watched from: `--control-socket`, `--metrics`.
#[derive(Debug, Default)]
pub struct WatchSettings {
    /// `None`: no control socket. Default: ROLE-PID.sock in the default directory.
    pub control_socket: Option<PathBuf>,
    pub metrics: Option<SocketAddr>,
    /// The bearer token `--metrics` requires.
    pub metrics_token: Option<zeroize::Zeroizing<String>>,
}

/// The watch settings of a `role` instance: flags over the `[status]` table.
pub fn watch_settings(
    args: &WatchArgs,
    f: Option<&StatusTable>,
    role: &str,
) -> Result<WatchSettings> {
    let control_socket = match args
        .control_socket
        .as_deref()
        .or(f.and_then(|f| f.control_socket.as_deref()))
    {
        Some("none") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => Some(porthole_observe::control::socket_in(
            &porthole_observe::control::default_dir(),
            role,
        )),
    };
    let metrics = args.metrics.or(f.and_then(|f| f.metrics));
    let token_file = args
        .metrics_token_file
        .clone()
        .or(f.and_then(|f| f.metrics_token_file.clone()));
    let metrics_token = match token_file {
        Some(p) => Some(secrets::load_bearer_token(&p)?),
        None => match std::env::var("PORTHOLE_METRICS_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Some(zeroize::Zeroizing::new(t.trim().to_string())),
            _ => None,
        },
    };
    if let Some(a) = metrics
        && !a.ip().is_loopback()
        && metrics_token.is_none()
    {
        bail!(
            "--metrics {a} is not a loopback address: anyone who reaches it would see your sessions. \
             Give a bearer token with --metrics-token-file FILE (or PORTHOLE_METRICS_TOKEN; \
             `porthole generate-token --output FILE` makes one), or listen on 127.0.0.1"
        );
    }
    Ok(WatchSettings {
        control_socket,
        metrics,
        metrics_token,
    })
}

#[derive(Debug)]
pub struct ClientSettings {
    pub transport: ClientTransport,
    /// The token, unless a client key stands in for it.
    pub token: Option<AuthToken>,
    pub proxies: Vec<ProxySpec>,
    pub proxy_auth: Option<ProxyAuth>,
    pub key: Option<SecretKey>,
    pub forwards: Vec<ForwardSpec>,
    pub publishes: Vec<PublishSpec>,
    /// QUIC tuning, the same in iroh and manual mode.
    pub quic: QuicParams,
    pub udp_idle_timeout: Duration,
    pub watch: WatchSettings,
}

impl ServerSettings {
    /// What the server engine needs, whichever transport runs (iroh or manual mode).
    pub fn engine_config(&self) -> ServerConfig {
        let mut c = ServerConfig::with_access(porthole_engine::access::AccessRules::new(
            self.access.clone(),
        ));
        c.max_sessions = self.max_sessions;
        c.max_streams = self.quic.max_streams;
        c.udp_idle_timeout = self.udp_idle_timeout;
        c
    }
}

impl ClientSettings {
    /// What the client engine needs, whichever transport runs (iroh or manual mode).
    pub fn engine_config(&self) -> ClientConfig {
        let mut c = ClientConfig::with_credentials(
            self.token.clone(),
            self.key.clone(),
            self.forwards.clone(),
        );
        c.proxies = self.proxies.clone();
        c.publishes = self.publishes.clone();
        c.proxy_auth = self.proxy_auth.clone();
        c.udp_idle_timeout = self.udp_idle_timeout;
        c.silent_after = self.quic.silent_after();
        c
    }
}

fn config_path(args: &ConfigArgs, role: Role) -> Result<Option<PathBuf>> {
    if args.default_config {
        let p = super::default_path(role)?;
        if !p.exists() {
            bail!(
                "--default-config: {} does not exist (copy {}.toml.example there, or pass -c FILE)",
                p.display(),
                role.as_str()
            );
        }
        return Ok(Some(p));
    }
    Ok(args.config.clone())
}

/// A non-empty list on the command line replaces the file's list.
fn list<T: Clone>(cli: &[T], file: &[T]) -> Vec<T> {
    if cli.is_empty() {
        file.to_vec()
    } else {
        cli.to_vec()
    }
}

/// What a config file says about iroh mode.
#[derive(Default)]
struct IrohFile<'a> {
    relays: Option<&'a RelaySetting>,
    relay_ca: Option<&'a PathBuf>,
    dns_server: Option<&'a DnsSetting>,
    bind: &'a [SocketAddr],
    portmap: Option<bool>,
}

/// What server and client files say alike about the two transports (their keys are the
/// same; the structs stay apart for `deny_unknown_fields`).
trait TransportFile {
    fn iroh(&self) -> IrohFile<'_>;
    fn manual(&self) -> ManualFile<'_>;
}

macro_rules! transport_file {
    ($($file:ty),*) => {$(
        impl TransportFile for $file {
            fn iroh(&self) -> IrohFile<'_> {
                IrohFile {
                    relays: self.relays.as_ref(),
                    relay_ca: self.relay_ca.as_ref(),
                    dns_server: self.dns_server.as_ref(),
                    bind: &self.bind,
                    portmap: self.portmap,
                }
            }

            fn manual(&self) -> ManualFile<'_> {
                ManualFile {
                    stun: self.stun.as_ref(),
                    offer_file: self.offer_file.as_ref(),
                    answer_file: self.answer_file.as_ref(),
                    punch_timeout: self.punch_timeout,
                    bind: &self.bind,
                }
            }
        }
    )*};
}

transport_file!(ServerFile, ClientFile);

/// Iroh options: the command line over the file; relays default to `fallback` (a
/// ticket's), then iroh's public ones.
fn iroh_options(
    args: &IrohArgs,
    file: IrohFile<'_>,
    fallback: Option<RelaySetting>,
    direct_paths: PathRules,
) -> Result<IrohOptions> {
    let relays = relay_setting("--relay-url", &args.relay_urls)?
        .or(file.relays.cloned())
        .or(fallback)
        .unwrap_or(RelaySetting::Public);
    let relay_ca = match args.relay_ca.as_ref().or(file.relay_ca) {
        Some(p) => {
            let pem = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read relay CA {}", p.display()))?;
            parse_pem_certs(&pem).with_context(|| format!("relay CA {}", p.display()))?
        }
        None => Vec::new(),
    };
    if args.relay_only && matches!(relays, RelaySetting::Disabled) {
        bail!("--relay-only with --relay-url none leaves no way to connect: drop one of them");
    }
    Ok(IrohOptions {
        relays,
        relay_ca,
        relay_only: args.relay_only,
        dns: args
            .dns_server
            .clone()
            .or(file.dns_server.cloned())
            .unwrap_or_default(),
        bind: list(&args.bind, file.bind),
        portmap: !args.no_portmap && file.portmap.unwrap_or(true),
        direct_paths,
        ..IrohOptions::default()
    })
}

/// What a `server` or `client` command will run.
#[derive(Debug)]
pub enum Plan<T> {
    /// porthole's own protocol (iroh or manual mode).
    Peer(Box<T>),
    /// A NodePass tunnel, from the config's `[nodepass]` table.
    Nodepass(Box<porthole_nodepass::NodepassUrl>),
}

fn nodepass_plan<T>(url: Option<&porthole_nodepass::NodepassUrl>, role: &str) -> Result<Plan<T>> {
    let url = url.with_context(|| {
        format!("--mode nodepass needs a config file with a [nodepass] table, or use: porthole nodepass '{role}://...'")
    })?;
    Ok(Plan::Nodepass(Box::new(url.clone())))
}

pub fn server(args: &ServerArgs) -> Result<Plan<ServerSettings>> {
    let path = config_path(&args.config, Role::Server)?;
    let file = match &path {
        Some(p) => Some(read_server(p)?),
        None => None,
    };
    let f = file.as_ref();
    let mode = args
        .config
        .mode
        .or(f.and_then(|f| f.mode))
        .unwrap_or(Mode::Iroh);
    if mode == Mode::Nodepass {
        return nodepass_plan(f.and_then(|f| f.nodepass_url.as_ref()), "server");
    }
    server_settings(args, f, mode).map(|s| Plan::Peer(Box::new(s)))
}

fn server_settings(
    args: &ServerArgs,
    f: Option<&ServerFile>,
    mode: Mode,
) -> Result<ServerSettings> {
    let policy = Policy {
        tcp: AllowList(list(
            &args.allowed_tcp,
            f.map(|f| f.allowed_sources.tcp.as_slice())
                .unwrap_or_default(),
        )),
        udp: AllowList(list(
            &args.allowed_udp,
            f.map(|f| f.allowed_sources.udp.as_slice())
                .unwrap_or_default(),
        )),
    };
    if policy.tcp.is_empty() && policy.udp.is_empty() {
        warn!(
            "no allowed sources: every forward will be refused (add --allowed-tcp / --allowed-udp)"
        );
    }

    let file_binds = f.map(|f| &f.allowed_binds);
    let binds = porthole_engine::policy::BindRules {
        tcp: AllowList(list(
            &args.allowed_bind_tcp,
            file_binds.map(|b| b.tcp.as_slice()).unwrap_or_default(),
        )),
        udp: AllowList(list(
            &args.allowed_bind_udp,
            file_binds.map(|b| b.udp.as_slice()).unwrap_or_default(),
        )),
        names: list(
            &args.allowed_bind_names,
            file_binds.map(|b| b.names.as_slice()).unwrap_or_default(),
        )
        .into_iter()
        .map(|n| n.0)
        .collect(),
    };
    let access_sources = server_access(args, f, &policy, &binds)?;
    let access = access_sources.load()?;
    let secret_file = args
        .secret_file
        .clone()
        .or(f.and_then(|f| f.secret_file.clone()));
    let secret = secrets::load_server_key(secret_file.as_deref())?;

    let max_sessions = args
        .max_sessions
        .or(f.and_then(|f| f.max_sessions))
        .unwrap_or(porthole_engine::server::DEFAULT_MAX_SESSIONS);
    if max_sessions == 0 {
        bail!("--max-sessions must be at least 1");
    }
    // One set of rules for whichever transport runs.
    let rules = direct_paths(&args.direct_paths, f.map(|f| &f.direct_paths));
    let transport = match mode {
        Mode::Manual => ServerTransport::Manual(manual_settings(
            &args.manual,
            &args.iroh.bind,
            f.map(TransportFile::manual).unwrap_or_default(),
            rules,
        )?),
        _ => {
            let file = f.map(TransportFile::iroh).unwrap_or_default();
            let mut iroh = iroh_options(&args.iroh, file, None, rules)?;
            iroh.secret = secret.clone();
            iroh.accept = true;
            ServerTransport::Iroh(iroh)
        }
    };
    Ok(ServerSettings {
        transport,
        secret,
        access_sources,
        access,
        policy,
        binds,
        max_sessions,
        quic: quic_params(&args.quic, f.map(|f| &f.quic))?,
        udp_idle_timeout: args
            .iroh
            .udp_idle_timeout
            .or(f.and_then(|f| f.udp_idle_timeout))
            .unwrap_or(porthole_engine::udp::DEFAULT_IDLE_TIMEOUT),
        watch: watch_settings(&args.watch, f.map(|f| &f.status), "server")?,
    })
}

/// The server's clients: the flat tokens (the `default` client, with the global
/// allow-lists) and the access file's named clients.
fn server_access(
    args: &ServerArgs,
    f: Option<&ServerFile>,
    policy: &Policy,
    binds: &porthole_engine::policy::BindRules,
) -> Result<super::access::AccessSources> {
    let mut tokens: Vec<AuthToken> = Vec::new();
    if !args.auth_tokens.is_empty() {
        warn!(
            "auth tokens on the command line are visible to other local users (ps): prefer --auth-tokens-file"
        );
        for (i, t) in args.auth_tokens.iter().enumerate() {
            tokens.push(
                t.parse()
                    .with_context(|| format!("--auth-tokens #{}", i + 1))?,
            );
        }
    } else if let Some(f) = f {
        tokens.clone_from(&f.auth_tokens);
    }
    let file = args
        .auth_tokens_file
        .clone()
        .or(f.and_then(|f| f.auth_tokens_file.clone()));
    Ok(super::access::AccessSources {
        access_file: args
            .access_file
            .clone()
            .or(f.and_then(|f| f.access_file.clone())),
        inline_tokens: tokens,
        tokens_file: file,
        policy: policy.clone(),
        binds: binds.clone(),
    })
}

/// The client's config file (if any) and the mode: the command line's, else the file's,
/// else iroh.
fn client_file(args: &ClientArgs) -> Result<(Option<ClientFile>, Mode)> {
    let file = match config_path(&args.config, Role::Client)? {
        Some(p) => Some(read_client(&p)?),
        None => None,
    };
    let mode = args
        .config
        .mode
        .or(file.as_ref().and_then(|f| f.mode))
        .unwrap_or(Mode::Iroh);
    Ok((file, mode))
}

pub fn client(args: &ClientArgs) -> Result<Plan<ClientSettings>> {
    let (file, mode) = client_file(args)?;
    let f = file.as_ref();
    if mode == Mode::Nodepass {
        return nodepass_plan(f.and_then(|f| f.nodepass_url.as_ref()), "client");
    }
    client_settings(args, f, mode, true).map(|s| Plan::Peer(Box::new(s)))
}

/// `porthole ping`: a client's settings (command line over its config file) where the
/// forwards do not matter; iroh mode only.
pub fn ping(args: &ClientArgs) -> Result<ClientSettings> {
    let (file, mode) = client_file(args)?;
    if mode != Mode::Iroh {
        bail!("porthole ping works in iroh mode (the config or --mode says {mode:?})");
    }
    client_settings(args, file.as_ref(), mode, false)
}

fn client_settings(
    args: &ClientArgs,
    f: Option<&ClientFile>,
    mode: Mode,
    need_forwards: bool,
) -> Result<ClientSettings> {
    let (proxies, proxy_auth) = client_proxies(args, f)?;
    let publishes = if need_forwards {
        client_publishes(args, f)?
    } else {
        Vec::new()
    };
    let forwards = if need_forwards {
        client_forwards(args, f, !proxies.is_empty() || !publishes.is_empty())?
    } else {
        Vec::new()
    };
    let key_file = args
        .server
        .client_key_file
        .clone()
        .or(f.and_then(|f| f.client_key_file.clone()));
    let key = match &key_file {
        Some(p) => Some(secrets::load_key_file(p).context("--client-key-file")?),
        None => None,
    };
    // With a key, the token is optional (the key is what the client proves).
    let token = match client_token(args, f) {
        Ok(t) => Some(t),
        Err(_) if key.is_some() => None,
        Err(e) => return Err(e),
    };

    let rules = direct_paths(&args.direct_paths, f.map(|f| &f.direct_paths));
    let transport = match mode {
        Mode::Manual => ClientTransport::Manual(manual_settings(
            &args.manual,
            &args.iroh.bind,
            f.map(TransportFile::manual).unwrap_or_default(),
            rules,
        )?),
        _ => ClientTransport::Iroh(iroh_client(args, f, rules)?),
    };
    Ok(ClientSettings {
        transport,
        token,
        key,
        forwards,
        publishes,
        proxies,
        proxy_auth,
        quic: quic_params(&args.quic, f.map(|f| &f.quic))?,
        udp_idle_timeout: args
            .iroh
            .udp_idle_timeout
            .or(f.and_then(|f| f.udp_idle_timeout))
            .unwrap_or(porthole_engine::udp::DEFAULT_IDLE_TIMEOUT),
        watch: watch_settings(&args.watch, f.map(|f| &f.status), "client")?,
    })
}

/// Iroh mode's server: an id, or a ticket carrying id + relays + addresses (the
/// command line's choice over the file's), and the endpoint options.
fn iroh_client(args: &ClientArgs, f: Option<&ClientFile>, rules: PathRules) -> Result<IrohClient> {
    let a = &args.server;
    let ticket = match (&a.ticket, &a.server_node_id) {
        (Some(t), _) => Some(t),
        (None, Some(_)) => None,
        (None, None) => f.and_then(|f| f.ticket.as_ref()),
    };
    let server = a
        .server_node_id
        .or(ticket.map(|t| t.endpoint_id))
        .or(f.and_then(|f| f.server_node_id))
        .context(
            "which server? give --server-node-id ID or --ticket TICKET (both printed by `porthole server`)",
        )?;
    let mut server_addrs = list(
        &a.server_addrs,
        f.map(|f| f.server_addrs.as_slice()).unwrap_or_default(),
    );
    if let Some(t) = ticket {
        for addr in &t.direct_addrs {
            if !server_addrs.contains(addr) {
                server_addrs.push(*addr);
            }
        }
    }
    let ticket_relays = match ticket {
        Some(t) => relay_setting("--ticket relays", &t.relay_urls)?,
        None => None,
    };
    let file = f.map(TransportFile::iroh).unwrap_or_default();
    let options = iroh_options(&args.iroh, file, ticket_relays, rules)?;
    Ok(IrohClient {
        server,
        server_addrs,
        options,
    })
}

fn client_token(args: &ClientArgs, f: Option<&ClientFile>) -> Result<AuthToken> {
    if let Some(t) = &args.server.auth_token {
        warn!(
            "an auth token on the command line is visible to other local users (ps): prefer --auth-token-file or {}",
            secrets::ENV_AUTH_TOKEN
        );
        return t.parse().context("--auth-token");
    }
    if let Some(p) = &args.server.auth_token_file {
        return secrets::load_single_token(p);
    }
    if let Ok(t) = std::env::var(secrets::ENV_AUTH_TOKEN) {
        let t = zeroize::Zeroizing::new(t);
        return t
            .parse()
            .with_context(|| secrets::ENV_AUTH_TOKEN.to_string());
    }
    if let Some(f) = f {
        if let Some(t) = &f.auth_token {
            return Ok(t.clone());
        }
        if let Some(p) = &f.auth_token_file {
            return secrets::load_single_token(p);
        }
    }
    bail!(
        "no auth token: give --auth-token-file FILE, set {}, or put auth_token_file in the config \
         (or prove a client key instead: --client-key-file)",
        secrets::ENV_AUTH_TOKEN
    )
}

/// The client's SOCKS5 and HTTP CONNECT proxies, and the credentials they require
/// (required for any address but loopback).
fn client_proxies(
    args: &ClientArgs,
    f: Option<&ClientFile>,
) -> Result<(Vec<ProxySpec>, Option<ProxyAuth>)> {
    let socks = list(
        &args.socks,
        f.map(|f| f.socks.as_slice()).unwrap_or_default(),
    );
    let http = list(
        &args.http_proxy,
        f.map(|f| f.http_proxy.as_slice()).unwrap_or_default(),
    );
    let proxies: Vec<ProxySpec> = socks
        .iter()
        .map(|a| (ProxyKind::Socks5, *a))
        .chain(http.iter().map(|a| (ProxyKind::HttpConnect, *a)))
        .map(|(kind, listen)| ProxySpec { kind, listen })
        .collect();
    let file = args
        .proxy_auth_file
        .clone()
        .or(f.and_then(|f| f.proxy_auth_file.clone()));
    let text = match &file {
        Some(p) => Some(zeroize::Zeroizing::new(
            std::fs::read_to_string(p)
                .with_context(|| format!("cannot read proxy auth file {}", p.display()))?,
        )),
        None => std::env::var("PORTHOLE_PROXY_AUTH")
            .ok()
            .map(zeroize::Zeroizing::new),
    };
    if let Some(p) = &file {
        secrets::warn_if_readable_by_others(p);
    }
    let auth = match text {
        Some(t) => {
            let line = t
                .lines()
                .map(str::trim)
                .find(|l| !l.is_empty() && !l.starts_with('#'))
                .unwrap_or("");
            let Some((user, password)) = line.split_once(':') else {
                bail!(
                    "proxy credentials: write one line `user:password` (--proxy-auth-file or PORTHOLE_PROXY_AUTH)"
                );
            };
            if user.is_empty() || password.len() < 8 || user.len() > 255 || password.len() > 255 {
                bail!(
                    "proxy credentials: a user name and a password of 8 to 255 characters (SOCKS5 allows no more)"
                );
            }
            Some(ProxyAuth {
                user: user.to_string(),
                password: zeroize::Zeroizing::new(password.to_string()),
            })
        }
        None => None,
    };
    if auth.is_none()
        && let Some(open) = proxies.iter().find(|p| !p.listen.ip().is_loopback())
    {
        bail!(
            "proxy on {} is not on loopback: anyone who reaches it could use your tunnel. \
             Give credentials with --proxy-auth-file FILE (one line user:password) or \
             PORTHOLE_PROXY_AUTH, or listen on 127.0.0.1",
            open.listen
        );
    }
    Ok((proxies, auth))
}

/// The client's published services: the command line's, else the file's.
fn client_publishes(args: &ClientArgs, f: Option<&ClientFile>) -> Result<Vec<PublishSpec>> {
    let publishes: Vec<PublishSpec> = if !args.publish.is_empty() {
        args.publish
            .iter()
            .enumerate()
            .map(|(i, p)| check_publish(&format!("--publish #{}", i + 1), p))
            .collect::<Result<_>>()?
    } else {
        f.map(|f| f.publishes.clone()).unwrap_or_default()
    };
    for (i, p) in publishes.iter().enumerate() {
        if publishes[..i]
            .iter()
            .any(|o| o.bind == p.bind && o.name == p.name)
        {
            bail!("publish #{}: {} is published twice", i + 1, p.bind);
        }
    }
    Ok(publishes)
}

fn client_forwards(
    args: &ClientArgs,
    f: Option<&ClientFile>,
    have_proxies: bool,
) -> Result<Vec<ForwardSpec>> {
    if args.sources.len() != args.listens.len() {
        bail!(
            "--source and --listen come in pairs: got {} --source and {} --listen",
            args.sources.len(),
            args.listens.len()
        );
    }
    let pairs: Vec<ForwardSpec> = if !args.sources.is_empty() {
        args.sources
            .iter()
            .zip(&args.listens)
            .enumerate()
            .map(|(i, (s, l))| check_forward(&format!("forward #{}", i + 1), s, l))
            .collect::<Result<_>>()?
    } else {
        f.map(|f| f.forwards.clone()).unwrap_or_default()
    };
    if pairs.is_empty() && !have_proxies {
        bail!(
            "nothing to forward: give --source tcp://HOST:PORT --listen 127.0.0.1:PORT (repeatable), \
             a proxy: --socks 127.0.0.1:1080 / --http-proxy 127.0.0.1:3128, or a service to \
             publish: --publish tcp://0.0.0.0:8443=127.0.0.1:443"
        );
    }
    let mut out = Vec::with_capacity(pairs.len());
    for (i, spec) in pairs.into_iter().enumerate() {
        if out.iter().any(|o: &ForwardSpec| {
            o.listen == spec.listen && o.source.protocol == spec.source.protocol
        }) {
            bail!(
                "forward #{}: {} is used twice for {}",
                i + 1,
                spec.listen,
                spec.source.protocol
            );
        }
        out.push(spec);
    }
    Ok(out)
}

/// Direct-path rules: each list on the command line replaces the file's.
fn direct_paths(args: &DirectPathArgs, file: Option<&DirectPathsTable>) -> PathRules {
    PathRules {
        exclude: list(
            &args.exclude,
            file.map(|f| f.exclude.as_slice()).unwrap_or_default(),
        ),
        pin: list(
            &args.pin,
            file.map(|f| f.pin.as_slice()).unwrap_or_default(),
        ),
    }
}

/// QUIC tuning: the command line over the file's `[quic]` table over the defaults.
fn quic_params(args: &QuicArgs, file: Option<&QuicTable>) -> Result<QuicParams> {
    let mut q = QuicParams::default();
    if let Some(f) = file {
        f.apply(&mut q);
    }
    if let Some(c) = args.congestion {
        q.congestion = c;
    }
    if let Some(t) = args.idle_timeout {
        q.idle_timeout = t;
    }
    if let Some(t) = args.keep_alive {
        q.keep_alive = t;
    }
    q.check().map_err(|e| {
        anyhow::anyhow!("{e} (--idle-timeout / --keep-alive, [quic] in the config)")
    })?;
    Ok(q)
}
