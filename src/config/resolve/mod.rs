//! Merging the command line over a config file into validated settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use porthole_engine::direct_paths::PathRules;
use porthole_engine::policy::{AllowList, Policy};
use porthole_engine::quic_params::QuicParams;
use porthole_engine::resume::ResumeSettings;
use porthole_engine::server::ServerConfig;
use porthole_proto::key::SecretKey;
use porthole_proto::token::AuthToken;
use porthole_transport_iroh::options::parse_pem_certs;
use porthole_transport_iroh::{DnsSetting, IrohOptions, RelaySetting};
use tracing::warn;

use super::raw::{
    ClientFile, DirectPathsTable, QuicTable, ResumeTable, ServerFile, StatusTable, Stun,
    relay_setting,
};
use super::{Role, read_server};
use crate::cli::{
    ConfigArgs, DirectPathArgs, IrohArgs, ManualArgs, Mode, QuicArgs, ResumeArgs, ServerArgs,
    WatchArgs,
};
use crate::secrets;

mod client;
pub use client::{ClientSettings, ClientTransport, IrohClient, client, ping};

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

/// The STUN servers: `--stun-server` over the file's `stun_servers` over the public
/// defaults; empty when turned off (`none`).
fn stun_servers(args: &ManualArgs, file: Option<&Stun>) -> Result<Vec<String>> {
    Ok(
        match Stun::parse("--stun-server", &args.stun_servers)?.or(file.cloned()) {
            None => DEFAULT_STUN.iter().map(|s| s.to_string()).collect(),
            Some(Stun::Off) => Vec::new(),
            Some(Stun::Servers(v)) => v,
        },
    )
}

/// iroh mode's direct upgrade: the STUN servers it classifies NATs with, or `None` when
/// it is off (`--no-upgrade`, `upgrade = false`, `--relay-only`, `--stun-server none`).
fn upgrade_stun(
    iroh: &IrohArgs,
    manual: &ManualArgs,
    file: &IrohFile<'_>,
    stun: Option<&Stun>,
) -> Result<Option<Vec<String>>> {
    if iroh.no_upgrade || file.upgrade == Some(false) || iroh.relay_only {
        return Ok(None);
    }
    let servers = stun_servers(manual, stun)?;
    Ok((!servers.is_empty()).then_some(servers))
}

fn manual_settings(
    args: &ManualArgs,
    bind_args: &[SocketAddr],
    file: ManualFile<'_>,
    direct_paths: PathRules,
) -> Result<ManualSettings> {
    let stun = stun_servers(args, file.stun)?;
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
    /// The endpoint's options, and the direct upgrade's STUN servers (`None`: off).
    Iroh(IrohOptions, Option<Vec<String>>),
    Manual(ManualSettings),
}

/// How the client reaches its server: the mode and its settings.
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
    pub resume: ResumeSettings,
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

impl ServerSettings {
    /// What the server engine needs, whichever transport runs (iroh or manual mode).
    pub fn engine_config(&self) -> ServerConfig {
        let mut c = ServerConfig::with_access(porthole_engine::access::AccessRules::new(
            self.access.clone(),
        ));
        c.max_sessions = self.max_sessions;
        c.max_streams = self.quic.max_streams;
        c.udp_idle_timeout = self.udp_idle_timeout;
        c.resume = self.resume;
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
    upgrade: Option<bool>,
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
                    upgrade: self.upgrade,
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
            let stun = f.and_then(|f| f.stun.as_ref());
            let upgrade = upgrade_stun(&args.iroh, &args.manual, &file, stun)?;
            let mut iroh = iroh_options(&args.iroh, file, None, rules)?;
            iroh.secret = secret.clone();
            iroh.accept = true;
            ServerTransport::Iroh(iroh, upgrade)
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
        resume: resume_settings(&args.resume, f.map(|f| &f.resume))?,
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

/// Resuming: the command line over the file's `[resume]` table over the defaults.
fn resume_settings(args: &ResumeArgs, file: Option<&ResumeTable>) -> Result<ResumeSettings> {
    const MIB: usize = 1 << 20;
    let mut r = ResumeSettings::default();
    let grace = args.resume_grace.or(file.and_then(|f| f.grace));
    if let Some(g) = grace {
        if g > Duration::from_secs(24 * 3600) {
            bail!("--resume-grace / [resume] grace: {g:?} is over the 24h limit");
        }
        r.grace = g;
    }
    let buffer = args.resume_buffer.or(file.and_then(|f| f.buffer_mib));
    if let Some(b) = buffer {
        if !(1..=1024).contains(&b) {
            bail!("--resume-buffer / [resume] buffer_mib: {b} MiB is outside 1 to 1024");
        }
        r.stream_buffer = b * MIB;
    }
    let session = args
        .resume_session_buffer
        .or(file.and_then(|f| f.session_buffer_mib));
    if let Some(b) = session {
        if !(1..=16 * 1024).contains(&b) {
            bail!(
                "--resume-session-buffer / [resume] session_buffer_mib: {b} MiB is outside 1 to 16384"
            );
        }
        r.session_buffer = b * MIB;
    }
    if r.session_buffer < r.stream_buffer {
        bail!(
            "the session's resume buffer ({} MiB) is smaller than one connection's ({} MiB): \
             raise --resume-session-buffer or lower --resume-buffer",
            r.session_buffer / MIB,
            r.stream_buffer / MIB
        );
    }
    Ok(r)
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
