//! Binding the iroh endpoint and handing its connections to the engine.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;

use iroh::address_lookup::{PkarrPublisher, PkarrResolver};
use iroh::endpoint::{
    Connection, IdleTimeout, IpPathFilter, PortmapperConfig, QuicTransportConfig, VarInt, presets,
};
use iroh::{Endpoint, EndpointAddr, RelayMap, RelayMode, SecretKey};
use iroh_relay::tls::CaTlsConfig;
use noq_proto::congestion::{ControllerFactory, CubicConfig, NewRenoConfig};
use porthole_engine::transport::{Acceptor, Connector};
use porthole_proto::ALPN;
use tracing::debug;

use crate::conn::IrohConn;
use crate::options::{DnsSetting, IrohOptions, RelaySetting};
use crate::{IrohError, paths};
use porthole_engine::direct_paths::PathGuard;
use porthole_engine::quic_params::{Congestion, QuicParams};
use porthole_engine::windows;

/// Binds an endpoint as `opts` describe, its connections tuned by `quic`.
///
/// Public discovery (n0's DNS/pkarr) is used only with public relays and no
/// `--dns-server`: self-hosters get no traffic to third parties unless they ask.
pub async fn bind(opts: &IrohOptions, quic: &QuicParams) -> Result<Endpoint, IrohError> {
    let public =
        matches!(opts.dns, DnsSetting::Auto) && matches!(opts.relays, RelaySetting::Public);
    let mut b = if public {
        Endpoint::builder(presets::N0)
    } else {
        Endpoint::builder(presets::Minimal)
    };
    b = match &opts.relays {
        RelaySetting::Public => b.relay_mode(RelayMode::Default),
        RelaySetting::Disabled => b.relay_mode(RelayMode::Disabled),
        RelaySetting::Custom(specs) => {
            let map = RelayMap::empty();
            for s in specs {
                map.insert(s.url.clone(), Arc::new(s.to_config()));
            }
            b.relay_mode(RelayMode::Custom(map))
        }
    };
    match &opts.dns {
        DnsSetting::Auto => {}
        DnsSetting::Disabled => b = b.clear_address_lookup(),
        DnsSetting::Pkarr(url) => {
            b = b
                .clear_address_lookup()
                .address_lookup(PkarrPublisher::builder(url.clone()))
                .address_lookup(PkarrResolver::builder(url.clone()));
        }
    }
    if !opts.relay_ca.is_empty() {
        b = b.ca_tls_config(CaTlsConfig::embedded().with_extra_roots(opts.relay_ca.clone()));
    }
    if opts.relay_only {
        b = b.clear_ip_transports();
    } else if !opts.bind.is_empty() {
        b = b.clear_ip_transports();
        for addr in &opts.bind {
            b = b
                .bind_addr(*addr)
                .map_err(|e| IrohError::BindAddr(format!("{addr}: {e}")))?;
        }
    }
    if !opts.portmap {
        b = b.portmapper_config(PortmapperConfig::Disabled);
    }
    if let Some(secret) = &opts.secret {
        b = b.secret_key(SecretKey::from_bytes(&secret.to_bytes()));
    }
    if opts.accept {
        b = b.alpns(vec![ALPN.to_vec()]);
    }
    b = b.transport_config(transport_config(quic));
    b = b.ip_path_filter(Arc::new(Guard(PathGuard::new(opts.direct_paths.clone()))));
    b.bind().await.map_err(|e| IrohError::Bind(e.to_string()))
}

/// The engine's direct-path rules as iroh's filter: local addresses it may advertise,
/// remote addresses its UDP sockets may send to (vendor/iroh's patch).
#[derive(Debug)]
struct Guard(PathGuard);

impl IpPathFilter for Guard {
    fn advertise(&self, local: std::net::IpAddr) -> bool {
        self.0.advertise(local)
    }
    fn reach(&self, remote: std::net::SocketAddr) -> bool {
        self.0.reach(remote)
    }
}

/// The shared [`QuicParams`] in iroh's terms.
fn transport_config(p: &QuicParams) -> QuicTransportConfig {
    let varint = |v: u64| VarInt::from_u64(v).unwrap_or(VarInt::MAX);
    QuicTransportConfig::builder()
        .max_idle_timeout(IdleTimeout::try_from(p.idle_timeout).ok())
        .keep_alive_interval(p.keep_alive)
        .max_concurrent_bidi_streams(VarInt::from_u32(p.max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .send_fairness(p.send_fairness)
        .stream_receive_window(varint(p.stream_window))
        // The receive window starts at the floor; the tuner grows it to the path within
        // `p`'s caps (porthole_engine::windows).
        .receive_window(varint(windows::MIN_WINDOW))
        .send_window(p.send_window)
        .datagram_receive_buffer_size(Some(p.datagram_buffer))
        .datagram_send_buffer_size(p.datagram_buffer)
        .congestion_controller_factory(congestion(p.congestion))
        .build()
}

fn congestion(c: Congestion) -> Arc<dyn ControllerFactory + Send + Sync + 'static> {
    match c {
        Congestion::Cubic => Arc::new(CubicConfig::default()),
        Congestion::NewReno => Arc::new(NewRenoConfig::default()),
        Congestion::Bbr => Arc::new(crate::bbr::BbrConfig::default()),
    }
}

/// The engine's acceptor over an iroh endpoint.
#[derive(Debug, Clone)]
pub struct IrohAcceptor {
    endpoint: Endpoint,
    quic: Arc<QuicParams>,
}

impl IrohAcceptor {
    /// `quic` must be what the endpoint was bound with (its windows' caps).
    pub fn new(endpoint: Endpoint, quic: &QuicParams) -> Self {
        Self {
            endpoint,
            quic: Arc::new(quic.clone()),
        }
    }
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<IrohConn>> + Send>>;

impl Acceptor for IrohAcceptor {
    type Conn = IrohConn;
    type Handshake = Handshake;

    async fn accept(&self) -> Option<Handshake> {
        loop {
            let incoming = self.endpoint.accept().await?;
            match incoming.accept() {
                Ok(accepting) => {
                    let quic = self.quic.clone();
                    return Some(Box::pin(async move {
                        let conn = accepting
                            .await
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        Ok(established(conn, &quic))
                    }));
                }
                Err(e) => debug!("incoming connection failed: {e}"),
            }
        }
    }
}

/// Starts the per-connection background tasks (path log, window tuner within `quic`'s
/// caps) of a connection either side just established, and wraps it for the engine.
fn established(conn: Connection, quic: &QuicParams) -> IrohConn {
    paths::spawn_monitor(conn.clone());
    let conn = IrohConn::new(conn);
    windows::spawn_tuner(conn.clone(), quic);
    conn
}

/// The engine's connector: dials one server.
#[derive(Debug, Clone)]
pub struct IrohConnector {
    endpoint: Endpoint,
    addr: EndpointAddr,
    quic: Arc<QuicParams>,
}

impl IrohConnector {
    /// `quic` must be what the endpoint was bound with (its windows' caps).
    pub fn new(endpoint: Endpoint, addr: EndpointAddr, quic: &QuicParams) -> Self {
        Self {
            endpoint,
            addr,
            quic: Arc::new(quic.clone()),
        }
    }
}

impl Connector for IrohConnector {
    type Conn = IrohConn;

    async fn connect(&self) -> io::Result<IrohConn> {
        let conn = self
            .endpoint
            .connect(self.addr.clone(), ALPN)
            .await
            .map_err(|e| io::Error::other(describe_connect_error(&e.to_string())))?;
        Ok(established(conn, &self.quic))
    }
}

fn describe_connect_error(e: &str) -> String {
    if e.contains("no application protocol") || e.contains("ALPN") {
        format!("{e} (the peer is not a porthole server, or speaks another protocol version)")
    } else {
        e.to_string()
    }
}
