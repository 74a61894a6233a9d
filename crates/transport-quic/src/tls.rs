//! Self-signed identities that pin each other: no CA, no trust on first use. Each side's
//! certificate fingerprint travels in the signaling blob; a connection whose peer
//! presents any other certificate fails the TLS handshake.

use porthole_engine::quic_params::{Congestion, QuicParams};
use porthole_engine::windows;
use quinn::congestion;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use subtle::ConstantTimeEq;

/// The TLS server name used on the wire (the certificate is pinned, not named).
pub const SERVER_NAME: &str = "porthole.invalid";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot create a certificate")]
    Cert(#[from] rcgen::Error),
    #[error("TLS configuration")]
    Rustls(#[from] rustls::Error),
    #[error("QUIC crypto configuration: {0}")]
    Quic(String),
}

/// A fresh self-signed certificate and its key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pub fingerprint: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", hex(&self.fingerprint))
    }
}

pub fn fingerprint(der: &[u8]) -> [u8; 32] {
    Sha256::digest(der).into()
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

impl Identity {
    pub fn generate() -> Result<Self, TlsError> {
        let certified = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()])?;
        let cert = certified.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(certified.signing_key.serialize_der());
        let fingerprint = fingerprint(&cert);
        Ok(Self {
            cert,
            key,
            fingerprint,
        })
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The shared [`QuicParams`] in quinn's terms.
fn transport(p: &QuicParams) -> Arc<quinn::TransportConfig> {
    let varint = |v: u64| quinn::VarInt::from_u64(v).unwrap_or(quinn::VarInt::MAX);
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(p.max_streams.into());
    t.max_concurrent_uni_streams(0u32.into());
    t.send_fairness(p.send_fairness);
    t.keep_alive_interval(Some(p.keep_alive));
    t.max_idle_timeout(p.idle_timeout.try_into().ok());
    t.stream_receive_window(varint(p.stream_window));
    // The receive window starts at the floor; the tuner grows it to the path within
    // `p`'s caps (porthole_engine::windows).
    t.receive_window(varint(windows::MIN_WINDOW));
    t.send_window(p.send_window);
    t.datagram_receive_buffer_size(Some(p.datagram_buffer));
    t.datagram_send_buffer_size(p.datagram_buffer);
    t.congestion_controller_factory(match p.congestion {
        Congestion::Cubic => Arc::new(congestion::CubicConfig::default()),
        Congestion::NewReno => Arc::new(congestion::NewRenoConfig::default()),
        Congestion::Bbr => Arc::new(congestion::BbrConfig::default()),
    });
    Arc::new(t)
}

/// The server side: presents `identity`, requires a client certificate with `client_fp`.
pub fn server_config(
    identity: &Identity,
    client_fp: [u8; 32],
    params: &QuicParams,
) -> Result<quinn::ServerConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        fp: client_fp,
        algs: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![identity.cert.clone()], identity.key())?;
    tls.alpn_protocols = vec![porthole_proto::ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport(params));
    Ok(config)
}

/// The client side: presents `identity`, accepts only a server certificate with `server_fp`.
pub fn client_config(
    identity: &Identity,
    server_fp: [u8; 32],
    params: &QuicParams,
) -> Result<quinn::ClientConfig, TlsError> {
    let provider = provider();
    let verifier = Arc::new(Pinned {
        fp: server_fp,
        algs: provider.signature_verification_algorithms,
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_auth_cert(vec![identity.cert.clone()], identity.key())?;
    tls.alpn_protocols = vec![porthole_proto::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| TlsError::Quic(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport(params));
    Ok(config)
}

/// Accepts exactly one certificate, by SHA-256 fingerprint (compared in constant time),
/// and checks the handshake signatures against it.
#[derive(Debug)]
struct Pinned {
    fp: [u8; 32],
    algs: WebPkiSupportedAlgorithms,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if bool::from(fingerprint(cert).ct_eq(&self.fp)) {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|_| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A QUIC handshake on loopback: the server presents `server` and pins
    /// `client_pin`, the client presents `client` and pins `server_pin`.
    async fn handshake(
        server: &Identity,
        client_pin: [u8; 32],
        client: &Identity,
        server_pin: [u8; 32],
    ) -> bool {
        let params = QuicParams::default();
        let runtime = Arc::new(quinn::TokioRuntime);
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        let config = server_config(server, client_pin, &params).unwrap();
        let ep = quinn::Endpoint::new(Default::default(), Some(config), socket, runtime.clone())
            .unwrap();
        let accepted = tokio::spawn(async move {
            let incoming = ep.accept().await?;
            incoming.await.ok()
        });
        let csock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let cep = quinn::Endpoint::new(Default::default(), None, csock, runtime).unwrap();
        let config = client_config(client, server_pin, &params).unwrap();
        let dialed = cep.connect_with(config, addr, SERVER_NAME).unwrap();
        let client_ok = tokio::time::timeout(std::time::Duration::from_secs(5), dialed)
            .await
            .is_ok_and(|r| r.is_ok());
        let server_ok = tokio::time::timeout(std::time::Duration::from_secs(5), accepted)
            .await
            .is_ok_and(|r| r.is_ok_and(|c| c.is_some()));
        client_ok && server_ok
    }

    #[tokio::test]
    async fn each_side_accepts_only_the_pinned_certificate() {
        let (server, client, stranger) = (
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
            Identity::generate().unwrap(),
        );
        assert!(handshake(&server, client.fingerprint, &client, server.fingerprint).await);
        // A client with another certificate is refused by the server...
        assert!(!handshake(&server, client.fingerprint, &stranger, server.fingerprint).await);
        // ...and a server with another certificate by the client.
        assert!(!handshake(&stranger, client.fingerprint, &client, server.fingerprint).await);
    }
}
