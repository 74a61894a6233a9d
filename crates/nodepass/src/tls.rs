//! TLS for pool connections.
//!
//! - tls=1: the server makes an in-memory self-signed certificate (rcgen); the client
//!   accepts any certificate (no SNI, no ALPN) and both sides compare fingerprints over
//!   the control channel (`verify` signals) instead.
//! - tls=2: the server loads PEM files; the client verifies against the system roots
//!   (plus `SSL_CERT_FILE`, plus extra roots given by the caller) with SNI.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use crate::wire::Fingerprint;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {0}: {1}")]
    Read(String, std::io::Error),
    #[error("{0}: no PEM {1} found")]
    Pem(String, &'static str),
    #[error("TLS configuration: {0}")]
    Config(String),
    #[error("certificate generation: {0}")]
    Generate(String),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server's TLS side: the acceptor and the fingerprint peers must see.
#[derive(Clone)]
pub struct ServerTls {
    pub acceptor: tokio_rustls::TlsAcceptor,
    pub fingerprint: Fingerprint,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ServerTls({})",
            self.fingerprint.render(crate::wire::FpStyle::Hex)
        )
    }
}

impl ServerTls {
    /// tls=1: a fresh in-memory self-signed certificate.
    pub fn self_signed() -> Result<Self, TlsError> {
        let ck = rcgen::generate_simple_self_signed(vec!["nodepass".to_string()])
            .map_err(|e| TlsError::Generate(e.to_string()))?;
        let cert = ck.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        Self::from_parts(vec![cert], key)
    }

    /// tls=2: certificate chain and key from PEM files.
    pub fn from_files(crt: &Path, key: &Path) -> Result<Self, TlsError> {
        let read =
            |p: &Path| std::fs::read(p).map_err(|e| TlsError::Read(p.display().to_string(), e));
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&read(crt)?)
            .collect::<Result<_, _>>()
            .map_err(|_| TlsError::Pem(crt.display().to_string(), "certificate"))?;
        if chain.is_empty() {
            return Err(TlsError::Pem(crt.display().to_string(), "certificate"));
        }
        let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
            .map_err(|_| TlsError::Pem(key.display().to_string(), "private key"))?;
        Self::from_parts(chain, key_der)
    }

    /// The same certificate, offering these ALPN protocols.
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Self {
        let mut config = (**self.acceptor.config()).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            fingerprint: self.fingerprint,
        }
    }

    fn from_parts(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<Self, TlsError> {
        let fp = Fingerprint::of(&chain[0]);
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| TlsError::Config(e.to_string()))?;
        Ok(Self {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            fingerprint: fp,
        })
    }
}

/// tls=1 client: any certificate (the fingerprint is checked over the control channel),
/// no SNI, no ALPN.
pub fn client_unverified() -> Result<tokio_rustls::TlsConnector, TlsError> {
    let p = provider();
    let mut config = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAny(p.signature_verification_algorithms)))
        .with_no_client_auth();
    config.enable_sni = false;
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// tls=2 client: system roots (honouring `SSL_CERT_FILE`) plus `extra` roots.
pub fn client_verified(
    extra: &[CertificateDer<'static>],
) -> Result<tokio_rustls::TlsConnector, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    roots.add_parsable_certificates(native.certs);
    roots.add_parsable_certificates(extra.iter().cloned());
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// The fingerprint of the certificate a server presented on this connection.
pub fn server_fingerprint(
    tls: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
) -> Option<Fingerprint> {
    let certs = tls.get_ref().1.peer_certificates()?;
    certs.first().map(|c| Fingerprint::of(c))
}

/// The TLS name for `sni` (an IP when the name is `none` or an address).
pub fn server_name(sni: &str, host: &str) -> Result<ServerName<'static>, TlsError> {
    let name = if sni == "none" { host } else { sni };
    if let Ok(ip) = name.trim_matches(['[', ']']).parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(name.to_string())
        .map_err(|_| TlsError::Config(format!("{name:?} is not a valid TLS server name")))
}

/// Accepts any certificate but still checks the handshake signatures.
#[derive(Debug)]
struct AcceptAny(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}
