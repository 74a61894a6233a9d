//! Test harness: local relays, echo services, and in-process servers and clients built
//! from the crates exactly as the binary builds them. Everything binds loopback.

#![allow(dead_code)]

pub mod echo;
pub mod process;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use porthole_engine::auth::TokenSet;
use porthole_engine::client::{Client, ClientConfig, ClientError, ForwardSpec, Status};
use porthole_engine::policy::{AllowList, Policy};
use porthole_engine::quic_params::QuicParams;
use porthole_engine::server::ServerConfig;
use porthole_engine::transport::Connector;
use porthole_proto::key::{EndpointId, SecretKey};
use porthole_proto::token::AuthToken;
use porthole_relay::{RelayHandle, RelayOptions, TlsOptions};
use porthole_transport_iroh::paths::PathInfo;
use porthole_transport_iroh::{
    DnsSetting, IrohAcceptor, IrohConn, IrohConnector, IrohOptions, RelaySetting, RelaySpec,
};
use rustls_pki_types::CertificateDer;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A change applied to a config before the server or client starts.
pub type Tweak<T> = Box<dyn FnOnce(&mut T) + Send>;

pub const TOKEN: &str = "iABCDEFGHIJKLMNOPL";
pub const OTHER_TOKEN: &str = "i0123456789abcdef5";

pub fn init_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let filter = tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
        let _ = tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_test_writer()
            .try_init();
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub fn token(s: &str) -> AuthToken {
    s.parse().unwrap()
}

/// A local relay and the spec peers use to reach it.
pub struct TestRelay {
    pub handle: RelayHandle,
    pub spec: RelaySpec,
    pub ca: Vec<CertificateDer<'static>>,
    pub ca_pem: String,
    _dir: Option<tempfile::TempDir>,
}

/// Plain HTTP relay on loopback (relaying only).
pub async fn http_relay() -> TestRelay {
    init_tracing();
    let handle = porthole_relay::spawn(RelayOptions {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        tls: None,
    })
    .await
    .unwrap();
    let spec = handle.client_url("127.0.0.1").parse().unwrap();
    TestRelay {
        handle,
        spec,
        ca: Vec::new(),
        ca_pem: String::new(),
        _dir: None,
    }
}

/// HTTPS relay with QUIC address discovery, certificate from a private CA.
pub async fn https_relay() -> TestRelay {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let certs = porthole_relay::certs::generate(&["127.0.0.1".into(), "localhost".into()]).unwrap();
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, &certs.cert_pem).unwrap();
    std::fs::write(&key, &certs.key_pem).unwrap();
    let handle = porthole_relay::spawn(RelayOptions {
        http_bind: "127.0.0.1:0".parse().unwrap(),
        tls: Some(TlsOptions {
            https_bind: "127.0.0.1:0".parse().unwrap(),
            cert,
            key,
            quic_bind: Some("127.0.0.1:0".parse().unwrap()),
        }),
    })
    .await
    .unwrap();
    let spec = handle.client_url("127.0.0.1").parse().unwrap();
    let ca = porthole_transport_iroh::options::parse_pem_certs(&certs.ca_pem).unwrap();
    TestRelay {
        handle,
        spec,
        ca,
        ca_pem: certs.ca_pem,
        _dir: Some(dir),
    }
}

/// How peers find each other in a test.
#[derive(Clone, Default)]
pub struct Net {
    pub relay: Option<RelaySpec>,
    pub ca: Vec<CertificateDer<'static>>,
    pub relay_only: bool,
}

impl Net {
    pub fn via(relay: &TestRelay) -> Self {
        Self {
            relay: Some(relay.spec.clone()),
            ca: relay.ca.clone(),
            relay_only: false,
        }
    }

    pub fn relay_only(mut self) -> Self {
        self.relay_only = true;
        self
    }

    pub fn options(&self, accept: bool, secret: Option<SecretKey>) -> IrohOptions {
        IrohOptions {
            secret,
            relays: match &self.relay {
                Some(r) => RelaySetting::Custom(vec![r.clone()]),
                None => RelaySetting::Disabled,
            },
            relay_ca: self.ca.clone(),
            relay_only: self.relay_only,
            dns: DnsSetting::Disabled,
            bind: vec!["127.0.0.1:0".parse().unwrap()],
            portmap: false,
            accept,
            direct_paths: Default::default(),
        }
    }
}

pub struct ServerSetup {
    pub net: Net,
    pub tcp: Vec<String>,
    pub udp: Vec<String>,
    pub tokens: Vec<AuthToken>,
    pub secret: Option<SecretKey>,
    pub tweak: Option<Tweak<ServerConfig>>,
}

impl ServerSetup {
    pub fn new(net: Net) -> Self {
        Self {
            net,
            tcp: vec!["127.0.0.0/8".into()],
            udp: vec!["127.0.0.0/8".into()],
            tokens: vec![token(TOKEN)],
            secret: None,
            tweak: None,
        }
    }
}

pub struct TestServer {
    pub endpoint: iroh::Endpoint,
    pub id: EndpointId,
    shutdown: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub fn direct_addrs(&self) -> Vec<SocketAddr> {
        self.endpoint.addr().ip_addrs().copied().collect()
    }

    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        self.endpoint.close().await;
    }
}

pub async fn start_server(setup: ServerSetup) -> TestServer {
    init_tracing();
    let endpoint = porthole_transport_iroh::bind(
        &setup.net.options(true, setup.secret),
        &QuicParams::default(),
    )
    .await
    .unwrap();
    if setup.net.relay.is_some() {
        tokio::time::timeout(Duration::from_secs(20), endpoint.online())
            .await
            .expect("server never reached the relay");
    }
    let policy = Policy {
        tcp: AllowList::parse(&setup.tcp).unwrap(),
        udp: AllowList::parse(&setup.udp).unwrap(),
    };
    let mut config = ServerConfig::new(TokenSet::new(setup.tokens).unwrap(), policy);
    if let Some(t) = setup.tweak {
        t(&mut config);
    }
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(porthole_engine::server::run(
        IrohAcceptor::new(endpoint.clone(), &QuicParams::default()),
        config,
        shutdown.clone(),
    ));
    let id = porthole_transport_iroh::ticket::to_proto_id(&endpoint.id());
    TestServer {
        endpoint,
        id,
        shutdown,
        task,
    }
}

/// Connector that remembers its connections so tests can ask which path they use.
#[derive(Clone)]
pub struct Capturing {
    inner: IrohConnector,
    pub conns: Arc<Mutex<Vec<IrohConn>>>,
}

impl Connector for Capturing {
    type Conn = IrohConn;
    async fn connect(&self) -> std::io::Result<IrohConn> {
        let c = self.inner.connect().await?;
        self.conns.lock().unwrap().push(c.clone());
        Ok(c)
    }
}

pub struct ClientSetup {
    pub net: Net,
    pub server: EndpointId,
    pub server_addrs: Vec<SocketAddr>,
    pub forwards: Vec<String>,
    pub token: AuthToken,
    pub tweak: Option<Tweak<ClientConfig>>,
}

impl ClientSetup {
    pub fn new(net: Net, server: &TestServer, forwards: &[&str]) -> Self {
        Self {
            net,
            server: server.id,
            server_addrs: Vec::new(),
            forwards: forwards.iter().map(|s| s.to_string()).collect(),
            token: token(TOKEN),
            tweak: None,
        }
    }
}

pub struct TestClient {
    /// Local listen address of each forward.
    pub addrs: Vec<SocketAddr>,
    pub status: watch::Receiver<Status>,
    pub conns: Arc<Mutex<Vec<IrohConn>>>,
    pub endpoint: iroh::Endpoint,
    shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), ClientError>>,
}

impl TestClient {
    /// Waits until the tunnel is up.
    pub async fn connected(&mut self) {
        tokio::time::timeout(
            Duration::from_secs(30),
            self.status
                .wait_for(|s| matches!(s, Status::Connected { .. })),
        )
        .await
        .expect("client did not connect within 30 s")
        .unwrap();
    }

    pub fn path(&self) -> Option<PathInfo> {
        self.conns.lock().unwrap().last().and_then(|c| c.path())
    }

    /// Waits until the selected path satisfies `f`.
    pub async fn wait_path(
        &self,
        f: impl Fn(&PathInfo) -> bool,
        limit: Duration,
    ) -> Option<PathInfo> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            if let Some(p) = self.path().filter(|p| f(p)) {
                return Some(p);
            }
            if tokio::time::Instant::now() > deadline {
                return self.path();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn stop(self) -> Result<(), ClientError> {
        self.shutdown.cancel();
        let r = tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("client did not stop")
            .unwrap();
        self.endpoint.close().await;
        r
    }
}

/// A server and a client with one forward (`source`) over `net`, once the tunnel is up.
pub async fn start_tunnel(net: Net, source: &str) -> (TestServer, TestClient) {
    let server = start_server(ServerSetup::new(net.clone())).await;
    let mut client = start_client(ClientSetup::new(net, &server, &[source])).await;
    client.connected().await;
    (server, client)
}

pub async fn start_client(setup: ClientSetup) -> TestClient {
    init_tracing();
    let forwards = setup
        .forwards
        .iter()
        .map(|s| ForwardSpec::new(s.parse().unwrap(), "127.0.0.1:0".parse().unwrap()))
        .collect();
    let mut config = ClientConfig::new(setup.token, forwards);
    config.backoff_max = Duration::from_secs(2);
    if let Some(t) = setup.tweak {
        t(&mut config);
    }
    let client = Client::bind(config).await.unwrap();
    let addrs = client.local_addrs();
    let status = client.status();
    let endpoint =
        porthole_transport_iroh::bind(&setup.net.options(false, None), &QuicParams::default())
            .await
            .unwrap();
    let relays: Vec<RelaySpec> = setup.net.relay.iter().cloned().collect();
    let addr =
        porthole_transport_iroh::ticket::endpoint_addr(&setup.server, &relays, &setup.server_addrs)
            .unwrap();
    let conns = Arc::new(Mutex::new(Vec::new()));
    let connector = Capturing {
        inner: IrohConnector::new(endpoint.clone(), addr, &QuicParams::default()),
        conns: conns.clone(),
    };
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(client.run(connector, shutdown.clone()));
    TestClient {
        addrs,
        status,
        conns,
        endpoint,
        shutdown,
        task,
    }
}
