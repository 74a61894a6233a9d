//! Endpoint options, parsed from the CLI/config by the binary.

use std::net::SocketAddr;
use std::str::FromStr;

use iroh::RelayUrl;
use porthole_engine::direct_paths::PathRules;
use porthole_proto::key::SecretKey;
use rustls_pki_types::CertificateDer;
use url::Url;

use crate::IrohError;

/// Default QUIC address-discovery port of an iroh relay.
pub const DEFAULT_QAD_PORT: u16 = 7842;

/// One relay: its URL and the UDP port of its QUIC address discovery service.
///
/// Written as a URL with an optional `quic-port` query parameter, which porthole strips
/// before handing the URL to iroh: `https://relay.example.com`,
/// `https://10.0.0.1:8443/?quic-port=7843`, `https://relay/?quic-port=none`.
/// Plain `http://` relays never do address discovery (it needs TLS).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelaySpec {
    pub url: RelayUrl,
    pub quic_port: Option<u16>,
}

impl RelaySpec {
    pub fn to_config(&self) -> iroh::RelayConfig {
        iroh::RelayConfig::new(
            self.url.clone(),
            self.quic_port.map(iroh_relay::RelayQuicConfig::new),
        )
    }
}

impl std::fmt::Display for RelaySpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let https = self.url.scheme() == "https";
        match self.quic_port {
            Some(DEFAULT_QAD_PORT) if https => write!(f, "{}", self.url),
            Some(p) => write!(f, "{}?quic-port={p}", self.url),
            None if https => write!(f, "{}?quic-port=none", self.url),
            None => write!(f, "{}", self.url),
        }
    }
}

impl FromStr for RelaySpec {
    type Err = IrohError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |why: &str| IrohError::RelayUrl {
            url: s.to_string(),
            why: why.to_string(),
        };
        let mut url = Url::parse(s.trim()).map_err(|e| err(&e.to_string()))?;
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            _ => {
                return Err(err(
                    "a relay URL starts with https:// (or http:// for local testing)",
                ));
            }
        };
        if url.host().is_none() {
            return Err(err("no host"));
        }
        let mut quic_port = https.then_some(DEFAULT_QAD_PORT);
        let mut rest = Vec::new();
        for (k, v) in url.query_pairs() {
            if k == "quic-port" {
                quic_port = match v.as_ref() {
                    "none" => None,
                    p => Some(
                        p.parse::<u16>()
                            .ok()
                            .filter(|&p| p > 0)
                            .ok_or_else(|| err("quic-port must be a port number or 'none'"))?,
                    ),
                };
                if !https && quic_port.is_some() {
                    return Err(err("QUIC address discovery needs an https:// relay"));
                }
            } else {
                rest.push((k.into_owned(), v.into_owned()));
            }
        }
        if rest.is_empty() {
            url.set_query(None);
        } else {
            url.query_pairs_mut().clear().extend_pairs(rest);
        }
        let url: RelayUrl = url.into();
        Ok(Self { url, quic_port })
    }
}

/// Which relays to use.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RelaySetting {
    /// iroh's public relays (n0).
    #[default]
    Public,
    /// No relay at all: direct addresses only (LAN, `--server-addr`).
    Disabled,
    Custom(Vec<RelaySpec>),
}

/// How peers find each other by EndpointId alone.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum DnsSetting {
    /// Public discovery (n0 DNS/pkarr) unless custom relays are set.
    #[default]
    Auto,
    Disabled,
    /// A pkarr relay URL (e.g. `https://dns.example.com/pkarr`) to publish to and resolve from.
    Pkarr(Url),
}

impl FromStr for DnsSetting {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "none" => Ok(DnsSetting::Disabled),
            s => Url::parse(s)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .map(DnsSetting::Pkarr)
                .ok_or_else(|| format!("--dns-server takes a pkarr URL (https://dns.example.com/pkarr) or 'none', got {s:?}")),
        }
    }
}

/// Everything needed to bind an endpoint.
#[derive(Debug, Clone)]
pub struct IrohOptions {
    /// The endpoint's identity; a fresh one is generated when `None` (clients).
    pub secret: Option<SecretKey>,
    pub relays: RelaySetting,
    /// Extra CA certificates trusted for relay (and pkarr) TLS, besides the standard roots.
    pub relay_ca: Vec<CertificateDer<'static>>,
    /// Use only relays: no UDP sockets, no direct paths.
    pub relay_only: bool,
    pub dns: DnsSetting,
    /// Local addresses to bind (default: all interfaces, IPv4 and IPv6).
    pub bind: Vec<SocketAddr>,
    /// Ask the home router for a port mapping (UPnP / PCP / NAT-PMP).
    pub portmap: bool,
    /// Accept incoming porthole connections (servers).
    pub accept: bool,
    /// Which addresses direct paths may use (tunnel interfaces, `--exclude-addr`,
    /// `--pin-addr`).
    pub direct_paths: PathRules,
}

impl Default for IrohOptions {
    fn default() -> Self {
        Self {
            secret: None,
            relays: RelaySetting::Public,
            relay_ca: Vec::new(),
            relay_only: false,
            dns: DnsSetting::Auto,
            bind: Vec::new(),
            portmap: true,
            accept: false,
            direct_paths: PathRules::default(),
        }
    }
}

/// Reads PEM certificates (a CA bundle) from text.
pub fn parse_pem_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, IrohError> {
    use rustls_pki_types::pem::PemObject;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| IrohError::RelayCa(e.to_string()))?;
    if certs.is_empty() {
        return Err(IrohError::RelayCa("no PEM certificate found".into()));
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_specs_parse() {
        let r: RelaySpec = "https://relay.example.com".parse().unwrap();
        assert_eq!(r.quic_port, Some(DEFAULT_QAD_PORT));
        assert_eq!(r.to_string(), "https://relay.example.com/");
        let r: RelaySpec = "https://127.0.0.1:4443/?quic-port=7843".parse().unwrap();
        assert_eq!(r.quic_port, Some(7843));
        assert_eq!(r.url.to_string(), "https://127.0.0.1:4443/");
        assert_eq!(r.to_string().parse::<RelaySpec>().unwrap(), r);
        let r: RelaySpec = "https://r/?quic-port=none".parse().unwrap();
        assert_eq!(r.quic_port, None);
        assert_eq!(r.to_string().parse::<RelaySpec>().unwrap(), r);
        let r: RelaySpec = "http://127.0.0.1:3340".parse().unwrap();
        assert_eq!(r.quic_port, None);
        assert!("http://x/?quic-port=1".parse::<RelaySpec>().is_err());
        assert!("ftp://x".parse::<RelaySpec>().is_err());
        assert!("https://x/?quic-port=0".parse::<RelaySpec>().is_err());
    }

    #[test]
    fn dns_setting_parses() {
        assert_eq!("none".parse::<DnsSetting>().unwrap(), DnsSetting::Disabled);
        assert!(matches!(
            "https://d/pkarr".parse::<DnsSetting>().unwrap(),
            DnsSetting::Pkarr(_)
        ));
        assert!("bogus".parse::<DnsSetting>().is_err());
    }
}
