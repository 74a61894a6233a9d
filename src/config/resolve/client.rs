//! The client's settings: the server to reach, credentials, forwards, publishes and
//! proxies, merged from the command line over the client's config file.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use porthole_engine::client::proxy::{ProxyAuth, ProxyKind, ProxySpec};
use porthole_engine::client::{ClientConfig, ForwardSpec, PublishSpec};
use porthole_engine::direct_paths::PathRules;
use porthole_engine::quic_params::QuicParams;
use porthole_engine::resume::ResumeSettings;
use porthole_proto::key::{EndpointId, SecretKey};
use porthole_proto::token::AuthToken;
use porthole_transport_iroh::IrohOptions;
use tracing::warn;

use super::{
    ManualSettings, Plan, TransportFile, WatchSettings, config_path, direct_paths, iroh_options,
    list, manual_settings, nodepass_plan, quic_params, resume_settings, upgrade_stun,
    watch_settings,
};
use crate::cli::{ClientArgs, Mode};
use crate::config::raw::{ClientFile, check_forward, check_publish, relay_setting};
use crate::config::{Role, read_client};
use crate::secrets;

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
    /// The direct upgrade's STUN servers (`None`: off).
    pub upgrade: Option<Vec<String>>,
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
    pub resume: ResumeSettings,
    pub udp_idle_timeout: Duration,
    pub watch: WatchSettings,
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
        c.resume = self.resume;
        c
    }
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
        resume: resume_settings(&args.resume, f.map(|f| &f.resume))?,
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
    let stun = f.and_then(|f| f.stun.as_ref());
    let upgrade = upgrade_stun(&args.iroh, &args.manual, &file, stun)?;
    let options = iroh_options(&args.iroh, file, ticket_relays, rules)?;
    Ok(IrohClient {
        server,
        server_addrs,
        options,
        upgrade,
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
