//! Binding the iroh endpoint and handing its connections to the engine.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use iroh::address_lookup::{PkarrPublisher, PkarrResolver};
use iroh::endpoint::{
    Connection, IdleTimeout, PortmapperConfig, QuicTransportConfig, VarInt, presets,
};
use iroh::{Endpoint, EndpointAddr, RelayMap, RelayMode, SecretKey};
use iroh_relay::tls::CaTlsConfig;
use porthole_engine::transport::{Acceptor, Connector};
use porthole_proto::ALPN;
use tracing::debug;

use crate::conn::IrohConn;
use crate::options::{DnsSetting, IrohOptions, RelaySetting};
use crate::{IrohError, paths};
use porthole_engine::receive_window;

/// Binds an endpoint as `opts` describe.
///
/// Public discovery (n0's DNS/pkarr) is used only with public relays and no
/// `--dns-server`: self-hosters get no traffic to third parties unless they ask.
pub async fn bind(opts: &IrohOptions) -> Result<Endpoint, IrohError> {
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
    b = b.transport_config(transport_config(opts.max_streams));
    b.bind().await.map_err(|e| IrohError::Bind(e.to_string()))
}

/// QUIC settings: a stream limit that doubles as the per-connection TCP session limit,
/// no unidirectional streams, and flow-control windows sized with care.
///
/// The per-stream window must stay below ~1024 packets: noq's reassembly buffer kills
/// the whole connection ("too many gaps in stream buffer") when one stream holds more
/// than 1024 discontiguous chunks, which a 4 MiB window reached during a relay -> direct
/// path switch (packets from both paths interleave). 1 MiB is ~870 full packets.
/// Per-stream receive window (see [`transport_config`]).
pub const STREAM_WINDOW: u32 = 1 << 20;

fn transport_config(max_streams: u32) -> QuicTransportConfig {
    // A dead peer is noticed after this much silence (keep-alives flow every 5 s).
    let idle = IdleTimeout::try_from(Duration::from_secs(20)).ok();
    QuicTransportConfig::builder()
        .max_idle_timeout(idle)
        .max_concurrent_bidi_streams(VarInt::from_u32(max_streams))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        // Streams of equal priority share the path round-robin; bulk streams are demoted
        // below young ones (porthole_engine::splice::BULK_AFTER). Sending them one after
        // the other starved later streams on slow paths, and their unsent data held the
        // connection's flow-control credit, so even a small new stream waited behind it.
        .send_fairness(true)
        .stream_receive_window(VarInt::from_u32(STREAM_WINDOW))
        // The upper bound: each connection's receive_window tuner sizes it to the path.
        .receive_window(VarInt::from_u64(receive_window::MAX_WINDOW).unwrap_or(VarInt::MAX))
        .send_window(receive_window::MAX_WINDOW)
        .datagram_receive_buffer_size(Some(4 << 20))
        .datagram_send_buffer_size(4 << 20)
        .build()
}

/// The engine's acceptor over an iroh endpoint.
#[derive(Debug, Clone)]
pub struct IrohAcceptor {
    endpoint: Endpoint,
}

impl IrohAcceptor {
    pub fn new(endpoint: Endpoint) -> Self {
        Self { endpoint }
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
                    return Some(Box::pin(async move {
                        let conn = accepting
                            .await
                            .map_err(|e| io::Error::other(e.to_string()))?;
                        Ok(established(conn))
                    }));
                }
                Err(e) => debug!("incoming connection failed: {e}"),
            }
        }
    }
}

/// Starts the per-connection background tasks (path log, receive-window tuner) of a
/// connection either side just established, and wraps it for the engine.
fn established(conn: Connection) -> IrohConn {
    paths::spawn_monitor(conn.clone());
    let conn = IrohConn::new(conn);
    receive_window::spawn_tuner(conn.clone());
    conn
}

/// The engine's connector: dials one server.
#[derive(Debug, Clone)]
pub struct IrohConnector {
    endpoint: Endpoint,
    addr: EndpointAddr,
}

impl IrohConnector {
    pub fn new(endpoint: Endpoint, addr: EndpointAddr) -> Self {
        Self { endpoint, addr }
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
        Ok(established(conn))
    }
}

fn describe_connect_error(e: &str) -> String {
    if e.contains("no application protocol") || e.contains("ALPN") {
        format!("{e} (the peer is not a porthole server, or speaks another protocol version)")
    } else {
        e.to_string()
    }
}
