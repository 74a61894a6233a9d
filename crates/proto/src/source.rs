//! Forward sources: what a client asks the server to reach, `tcp://host:port` or
//! `udp://host:port`.
//!
//! Parsing is strict so that an odd spelling never slips past the allow-list: IPv6
//! literals need brackets, zone ids and numeric-looking hostnames (`127.1`, `0x7f.1`)
//! are refused, and the port must be 1-65535. The server still checks the address a
//! name resolves to, never the name.

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Longest source string accepted (scheme + bracketed host + port).
pub const MAX_SOURCE_LEN: usize = 300;
/// Longest hostname accepted (RFC 1035).
pub const MAX_HOST_LEN: usize = 253;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The host part of a source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    Name(String),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Host::Name(n) => f.write_str(n),
        }
    }
}

/// A parsed `tcp://host:port` or `udp://host:port`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Source {
    pub protocol: Protocol,
    pub host: Host,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    #[error("source is empty: expected tcp://HOST:PORT or udp://HOST:PORT")]
    Empty,
    #[error("source is longer than {MAX_SOURCE_LEN} characters")]
    TooLong,
    #[error("source {0:?} has no scheme: write tcp://HOST:PORT or udp://HOST:PORT")]
    MissingScheme(String),
    #[error("unknown scheme {0:?}: only tcp:// and udp:// are supported")]
    UnknownScheme(String),
    #[error("source {0:?} has no port: write HOST:PORT, e.g. tcp://127.0.0.1:22")]
    MissingPort(String),
    #[error("invalid port {0:?}: a port is a number from 1 to 65535")]
    InvalidPort(String),
    #[error("source must not contain a path, query or user part: {0:?}")]
    Extra(String),
    #[error("host is empty")]
    EmptyHost,
    #[error("invalid IPv6 literal {0:?} (write it in brackets, e.g. tcp://[::1]:22)")]
    InvalidIpv6(String),
    #[error("IPv6 zone ids are not supported in {0:?}")]
    ZoneId(String),
    #[error("invalid hostname {host:?}: {why}")]
    InvalidHostname { host: String, why: &'static str },
}

impl Source {
    pub fn new(protocol: Protocol, host: Host, port: u16) -> Self {
        Self {
            protocol,
            host,
            port,
        }
    }

    /// `host:port` with IPv6 in brackets, as `ToSocketAddrs` and users expect it.
    pub fn authority(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.protocol, self.host, self.port)
    }
}

impl From<Source> for String {
    fn from(s: Source) -> String {
        s.to_string()
    }
}

impl TryFrom<String> for Source {
    type Error = SourceError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::str::FromStr for Source {
    type Err = SourceError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.is_empty() {
            return Err(SourceError::Empty);
        }
        if s.len() > MAX_SOURCE_LEN {
            return Err(SourceError::TooLong);
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| SourceError::MissingScheme(s.to_string()))?;
        let protocol = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            _ => return Err(SourceError::UnknownScheme(scheme.to_string())),
        };
        if rest.contains(['/', '?', '#', '@']) {
            return Err(SourceError::Extra(s.to_string()));
        }
        let (host, port) = split_host_port(rest)?;
        Ok(Self {
            protocol,
            host,
            port,
        })
    }
}

/// Splits `host:port` / `[v6]:port` into a typed host and a port.
pub fn split_host_port(s: &str) -> Result<(Host, u16), SourceError> {
    let (host_str, port_str) = if let Some(inner) = s.strip_prefix('[') {
        let (v6, after) = inner
            .split_once(']')
            .ok_or_else(|| SourceError::InvalidIpv6(s.to_string()))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| SourceError::MissingPort(s.to_string()))?;
        if v6.contains('%') {
            return Err(SourceError::ZoneId(s.to_string()));
        }
        let ip: Ipv6Addr = v6
            .parse()
            .map_err(|_| SourceError::InvalidIpv6(v6.to_string()))?;
        return Ok((Host::Ip(IpAddr::V6(ip)), parse_port(port)?));
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| SourceError::MissingPort(s.to_string()))?;
        if h.contains(':') {
            // An unbracketed IPv6 literal: ambiguous with the port separator.
            return Err(SourceError::InvalidIpv6(s.to_string()));
        }
        (h, p)
    };
    let port = parse_port(port_str)?;
    Ok((parse_host(host_str)?, port))
}

fn parse_port(p: &str) -> Result<u16, SourceError> {
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) || p.len() > 5 {
        return Err(SourceError::InvalidPort(p.to_string()));
    }
    match p.parse::<u16>() {
        Ok(0) | Err(_) => Err(SourceError::InvalidPort(p.to_string())),
        Ok(n) => Ok(n),
    }
}

/// Parses a bare host: an IPv4 literal in dotted-quad form or an RFC 1123 hostname.
pub fn parse_host(h: &str) -> Result<Host, SourceError> {
    if h.is_empty() {
        return Err(SourceError::EmptyHost);
    }
    if let Ok(ip) = h.parse::<IpAddr>() {
        return Ok(Host::Ip(ip));
    }
    let bad = |why| SourceError::InvalidHostname {
        host: h.chars().take(64).collect(),
        why,
    };
    if h.len() > MAX_HOST_LEN {
        return Err(bad("longer than 253 characters"));
    }
    let trimmed = h.strip_suffix('.').unwrap_or(h);
    let labels: Vec<&str> = trimmed.split('.').collect();
    for label in &labels {
        if label.is_empty() {
            return Err(bad("empty label (two dots in a row, or a leading dot)"));
        }
        if label.len() > 63 {
            return Err(bad("a label is longer than 63 characters"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad("only letters, digits, '-', '_' and '.' are allowed"));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(bad("a label may not start or end with '-'"));
        }
    }
    let last = labels.last().copied().unwrap_or_default();
    if last.bytes().all(|b| b.is_ascii_digit()) || last.to_ascii_lowercase().starts_with("0x") {
        return Err(bad(
            "looks like an IP address in a non-standard form; write the dotted-quad address",
        ));
    }
    Ok(Host::Name(h.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ok(s: &str) -> Source {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn parses_common_forms() {
        let s = ok("tcp://127.0.0.1:22");
        assert_eq!(s.protocol, Protocol::Tcp);
        assert_eq!(s.host, Host::Ip("127.0.0.1".parse().unwrap()));
        assert_eq!(s.port, 22);
        let s = ok("udp://[::1]:51820");
        assert_eq!(s.host, Host::Ip("::1".parse().unwrap()));
        assert_eq!(s.to_string(), "udp://[::1]:51820");
        let s = ok("TCP://DB.Internal:5432");
        assert_eq!(s.host, Host::Name("db.internal".into()));
        assert_eq!(s.to_string(), "tcp://db.internal:5432");
        assert_eq!(
            ok("tcp://[::ffff:10.0.0.1]:80").authority(),
            "[::ffff:10.0.0.1]:80"
        );
    }

    #[test]
    fn refuses_odd_forms() {
        for bad in [
            "",
            "127.0.0.1:22",
            "http://x:1",
            "tcp://x",
            "tcp://x:0",
            "tcp://x:65536",
            "tcp://x:+22",
            "tcp://::1:22",
            "tcp://[::1]22",
            "tcp://[fe80::1%eth0]:22",
            "tcp://127.1:22",
            "tcp://0x7f.0.0.1:22",
            "tcp://2130706433:22",
            "tcp://a..b:22",
            "tcp://-a:22",
            "tcp://a b:22",
            "tcp://user@host:22",
            "tcp://host:22/path",
            "tcp://:22",
        ] {
            assert!(bad.parse::<Source>().is_err(), "{bad:?} should be refused");
        }
        assert!(
            format!("tcp://{}:1", "a".repeat(400))
                .parse::<Source>()
                .is_err()
        );
    }

    #[test]
    fn errors_name_the_fix() {
        let e = "127.0.0.1:22".parse::<Source>().unwrap_err().to_string();
        assert!(e.contains("tcp://"), "{e}");
        let e = "tcp://x:0".parse::<Source>().unwrap_err().to_string();
        assert!(e.contains("1 to 65535"), "{e}");
    }

    #[test]
    fn serde_uses_the_string_form() {
        let s = ok("udp://dns.lan:53");
        let bytes = postcard::to_stdvec(&s).unwrap();
        let back: Source = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(back, s);
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,80}") {
            let _ = s.parse::<Source>();
        }

        #[test]
        fn display_round_trips(a in any::<[u8;4]>(), v6 in any::<[u16;8]>(), port in 1u16..) {
            let v4 = Source::new(Protocol::Tcp, Host::Ip(std::net::Ipv4Addr::from(a).into()), port);
            prop_assert_eq!(v4.to_string().parse::<Source>().unwrap(), v4);
            let v6 = Source::new(Protocol::Udp, Host::Ip(Ipv6Addr::from(v6).into()), port);
            prop_assert_eq!(v6.to_string().parse::<Source>().unwrap(), v6);
        }
    }
}
