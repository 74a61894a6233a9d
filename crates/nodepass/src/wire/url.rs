//! The NodePass command line: `<server|client>://[key@]host:port/target[,target...]?query`.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use super::block::BlockSet;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
}

/// An address as written: the host may be empty (all interfaces, for listeners).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostPort {
    pub host: String,
    pub port: u16,
}

impl HostPort {
    /// `host:port` for binding: an empty host means every interface.
    pub fn listen(&self) -> String {
        let host = if self.host.is_empty() {
            "0.0.0.0"
        } else {
            &self.host
        };
        join(host, self.port)
    }

    /// `host:port` for dialing (an empty host means this machine).
    pub fn dial(&self) -> String {
        let host = if self.host.is_empty() {
            "127.0.0.1"
        } else {
            &self.host
        };
        join(host, self.port)
    }

    pub fn is_ip(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }
}

fn join(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&join(&self.host, self.port))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP pool connections.
    Plain,
    /// TLS with an in-memory self-signed certificate; checked by fingerprint signals.
    SelfSigned,
    /// TLS with PEM files (`crt`, `key`); the client verifies with SNI.
    Verified,
}

impl TlsMode {
    pub fn code(self) -> &'static str {
        match self {
            TlsMode::Plain => "0",
            TlsMode::SelfSigned => "1",
            TlsMode::Verified => "2",
        }
    }

    pub fn from_code(s: &str) -> Option<Self> {
        match s {
            "0" => Some(TlsMode::Plain),
            "1" => Some(TlsMode::SelfSigned),
            "2" => Some(TlsMode::Verified),
            _ => None,
        }
    }
}

/// What pool connections are (`type=`): the server chooses and tells the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolType {
    /// 0: TCP connections (TLS under tls=1/2).
    Tcp,
    /// 1: streams of QUIC connections on the tunnel port's UDP side (TLS 1.3 always,
    /// self-signed at tls=0).
    Quic,
    /// 2: WebSockets over them.
    WebSocket,
    /// 3: streams of one HTTP/2 connection over TLS (always TLS, self-signed at tls=0).
    Http2,
}

impl PoolType {
    pub fn code(self) -> &'static str {
        match self {
            PoolType::Tcp => "0",
            PoolType::Quic => "1",
            PoolType::WebSocket => "2",
            PoolType::Http2 => "3",
        }
    }

    /// `None` for anything but 0-3.
    pub fn from_code(s: &str) -> Option<Self> {
        match s {
            "0" => Some(PoolType::Tcp),
            "1" => Some(PoolType::Quic),
            "2" => Some(PoolType::WebSocket),
            "3" => Some(PoolType::Http2),
            _ => None,
        }
    }
}

/// How a client makes its handshake (`handshake=`, a porthole parameter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandshakeChoice {
    /// HTTPS first, plain HTTP when the server does not speak TLS; what worked is kept.
    Auto,
    /// HTTPS only (NodePass v1.15 and later).
    Https,
    /// Plain HTTP only (NodePass v1.14 and older).
    Http,
}

/// NodePass's `dns=` default.
pub const DEFAULT_DNS_TTL: Duration = Duration::from_secs(300);

/// The query parameters, typed. Defaults are NodePass's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    pub tls: TlsMode,
    pub crt: Option<String>,
    pub key: Option<String>,
    pub sni: Option<String>,
    pub min: usize,
    pub max: usize,
    /// 0 auto; server: 1 reverse, 2 forward; client: 1 single-end, 2 dual-end.
    pub mode: u8,
    pub log: String,
    /// Most concurrent sessions (0 = unlimited).
    pub slot: usize,
    /// Bandwidth limit in Mbit/s (0 = unlimited).
    pub rate: u64,
    /// Close a session after this long without data (None = never).
    pub read: Option<Duration>,
    /// Send a PROXY v1 line to the target before the data.
    pub proxy: bool,
    pub notcp: bool,
    pub noudp: bool,
    /// Source address for dialing targets.
    pub dial: Option<IpAddr>,
    /// How long resolved target names are kept (`dns=`, 5 minutes; 0 = not kept).
    pub dns: Duration,
    /// Protocols refused on the accepting side (`block=`).
    pub block: BlockSet,
    /// Target selection (`lbs=`): 0 round robin, 1 lowest connect latency (probed every
    /// 5 s), 2 the first target, with fallback to the next for 5 minutes.
    pub lbs: u8,
    /// Server: what pool connections are (`type=`).
    pub pool: PoolType,
    /// Client: how to make the handshake (porthole's own parameter).
    pub handshake: HandshakeChoice,
    /// Length-prefixed UDP datagrams on pool connections: `None` (auto) follows the
    /// handshake (HTTPS: yes) and what the peer's first datagrams show under TLS.
    pub udpframe: Option<bool>,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            tls: TlsMode::Plain,
            crt: None,
            key: None,
            sni: None,
            min: 64,
            max: 1024,
            mode: 0,
            log: "info".into(),
            slot: 0,
            rate: 0,
            read: None,
            proxy: false,
            notcp: false,
            noudp: false,
            dial: None,
            dns: DEFAULT_DNS_TTL,
            block: BlockSet::default(),
            lbs: 0,
            pool: PoolType::Tcp,
            handshake: HandshakeChoice::Auto,
            udpframe: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodepassUrl {
    pub role: Role,
    /// The URL's user part; `None` means "derived from the port".
    pub tunnel_key: Option<String>,
    pub tunnel: HostPort,
    pub targets: Vec<HostPort>,
    pub params: Params,
    /// Query parameters porthole does not know (kept for a warning).
    pub unknown: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("a NodePass URL starts with server:// or client://, got {0:?}")]
    Scheme(String),
    #[error("missing tunnel address: write {0}://HOST:PORT/TARGET")]
    NoTunnel(&'static str),
    #[error("invalid address {addr:?}: {why}")]
    Address { addr: String, why: &'static str },
    #[error("no target: add one after the tunnel address, e.g. /127.0.0.1:8080")]
    NoTarget,
    #[error("invalid value {value:?} for `{param}`: {expected}")]
    Param {
        param: String,
        value: String,
        expected: &'static str,
    },
    #[error("tls=2 needs crt=FILE and key=FILE on the server")]
    TlsFiles,
    #[error("min ({min}) is larger than max ({max})")]
    MinMax { min: usize, max: usize },
    #[error("the URL is longer than 4096 characters")]
    TooLong,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn parse_hostport(s: &str, allow_empty_host: bool) -> Result<HostPort, UrlError> {
    let bad = |why| UrlError::Address {
        addr: s.to_string(),
        why,
    };
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        let p = p
            .strip_prefix(':')
            .ok_or_else(|| bad("no port after ']'"))?;
        if h.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("not an IPv6 address in brackets"));
        }
        (h.to_string(), p)
    } else {
        let (h, p) = s
            .rsplit_once(':')
            .ok_or_else(|| bad("no port: write HOST:PORT"))?;
        if h.contains(':') {
            return Err(bad("IPv6 addresses go in brackets: [::1]:80"));
        }
        (h.to_string(), p)
    };
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| bad("the port must be 1-65535"))?;
    if host.is_empty() && !allow_empty_host {
        return Err(bad("no host"));
    }
    if !host.is_empty()
        && !host.contains(':')
        && !host
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'.' || c == b'-' || c == b'_')
    {
        return Err(bad("invalid characters in the host"));
    }
    Ok(HostPort { host, port })
}

fn flag(param: &str, v: &str) -> Result<bool, UrlError> {
    match v {
        "1" | "true" => Ok(true),
        "0" | "false" | "" => Ok(false),
        _ => Err(UrlError::Param {
            param: param.into(),
            value: v.into(),
            expected: "0 or 1",
        }),
    }
}

/// A small number from 0 to `max`; anything else names the choices.
fn choice(param: &str, v: &str, max: u8, expected: &'static str) -> Result<u8, UrlError> {
    v.parse::<u8>()
        .ok()
        .filter(|n| *n <= max)
        .ok_or_else(|| UrlError::Param {
            param: param.into(),
            value: v.into(),
            expected,
        })
}

fn number<T: std::str::FromStr>(param: &str, v: &str) -> Result<T, UrlError> {
    v.parse().map_err(|_| UrlError::Param {
        param: param.into(),
        value: v.into(),
        expected: "a number",
    })
}

impl std::str::FromStr for NodepassUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > 4096 {
            return Err(UrlError::TooLong);
        }
        let (scheme, rest) = s
            .split_once("://")
            .ok_or_else(|| UrlError::Scheme(s.chars().take(20).collect()))?;
        let role = match scheme {
            "server" => Role::Server,
            "client" => Role::Client,
            other => return Err(UrlError::Scheme(other.to_string())),
        };
        let scheme_name = if role == Role::Server {
            "server"
        } else {
            "client"
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.split_once('/') {
            Some((a, p)) => (a, p),
            None => (rest, ""),
        };
        let (tunnel_key, hostport) = match authority.rsplit_once('@') {
            Some((k, h)) => (Some(percent_decode(k)).filter(|k| !k.is_empty()), h),
            None => (None, authority),
        };
        if hostport.is_empty() {
            return Err(UrlError::NoTunnel(scheme_name));
        }
        let tunnel = parse_hostport(hostport, role == Role::Server)?;
        let targets: Vec<HostPort> = path
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| parse_hostport(t, true))
            .collect::<Result<_, _>>()?;
        if targets.is_empty() {
            return Err(UrlError::NoTarget);
        }
        let mut params = Params::default();
        let mut unknown = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v);
            match k {
                "tls" => {
                    params.tls = TlsMode::from_code(&v).ok_or(UrlError::Param {
                        param: k.into(),
                        value: v.clone(),
                        expected: "0, 1 or 2",
                    })?
                }
                "crt" => params.crt = Some(v),
                "key" => params.key = Some(v),
                "sni" => params.sni = Some(v),
                "min" => params.min = number(k, &v)?,
                "max" => params.max = number(k, &v)?,
                "mode" => params.mode = choice(k, &v, 2, "0, 1 or 2")?,
                "log" => {
                    if !["none", "debug", "info", "warn", "error", "event"].contains(&v.as_str()) {
                        return Err(UrlError::Param {
                            param: k.into(),
                            value: v,
                            expected: "none, debug, info, warn, error or event",
                        });
                    }
                    params.log = v;
                }
                "slot" => params.slot = number(k, &v)?,
                "rate" => params.rate = number(k, &v)?,
                "read" => {
                    params.read = match v.as_str() {
                        "" | "0" | "0s" => None,
                        d => Some(humantime::parse_duration(d).map_err(|_| UrlError::Param {
                            param: k.into(),
                            value: v.clone(),
                            expected: "a duration like 30s, 10m or 1h",
                        })?),
                    }
                }
                "proxy" => params.proxy = flag(k, &v)?,
                "notcp" => params.notcp = flag(k, &v)?,
                "noudp" => params.noudp = flag(k, &v)?,
                "dial" => {
                    params.dial = match v.as_str() {
                        "" | "auto" => None,
                        ip => Some(ip.parse().map_err(|_| UrlError::Param {
                            param: k.into(),
                            value: v.clone(),
                            expected: "an IP address or auto",
                        })?),
                    }
                }
                "handshake" => {
                    params.handshake = match v.as_str() {
                        "auto" | "" => HandshakeChoice::Auto,
                        "https" => HandshakeChoice::Https,
                        "http" => HandshakeChoice::Http,
                        _ => {
                            return Err(UrlError::Param {
                                param: k.into(),
                                value: v,
                                expected: "auto, https (NodePass v1.15+) or http (v1.14 and older)",
                            });
                        }
                    }
                }
                "udpframe" => {
                    params.udpframe = match v.as_str() {
                        "auto" | "" => None,
                        v => Some(flag(k, v).map_err(|_| UrlError::Param {
                            param: k.into(),
                            value: v.into(),
                            expected: "auto, 1 (length-prefixed, NodePass v2.0.0-b9+) or 0 (bare)",
                        })?),
                    }
                }
                "dns" => {
                    params.dns = match v.as_str() {
                        "0" | "0s" => Duration::ZERO,
                        d => humantime::parse_duration(d).map_err(|_| UrlError::Param {
                            param: k.into(),
                            value: v.clone(),
                            expected: "a duration like 5m, 30s or 0 (no cache)",
                        })?,
                    }
                }
                "block" => {
                    params.block = BlockSet::parse(&v).map_err(|_| UrlError::Param {
                        param: k.into(),
                        value: v.clone(),
                        expected: "digits: 1 SOCKS, 2 HTTP, 3 TLS (e.g. 13), or 0",
                    })?
                }
                "lbs" => {
                    params.lbs = choice(
                        k,
                        &v,
                        2,
                        "0 (round robin), 1 (lowest latency) or 2 (primary with fallback)",
                    )?
                }
                "type" => {
                    params.pool = PoolType::from_code(&v).ok_or(UrlError::Param {
                        param: k.into(),
                        value: v,
                        expected: "0 (TCP), 1 (QUIC), 2 (WebSocket) or 3 (HTTP/2)",
                    })?
                }
                other => unknown.push(other.to_string()),
            }
        }
        if params.min == 0 || params.max == 0 {
            return Err(UrlError::Param {
                param: "min/max".into(),
                value: "0".into(),
                expected: "at least 1",
            });
        }
        if params.min > params.max {
            return Err(UrlError::MinMax {
                min: params.min,
                max: params.max,
            });
        }
        if role == Role::Server
            && params.tls == TlsMode::Verified
            && (params.crt.is_none() || params.key.is_none())
        {
            return Err(UrlError::TlsFiles);
        }
        Ok(NodepassUrl {
            role,
            tunnel_key,
            tunnel,
            targets,
            params,
            unknown,
        })
    }
}

impl NodepassUrl {
    /// The tunnel key: the URL's user part, else derived from the tunnel port.
    pub fn key(&self) -> String {
        self.tunnel_key
            .clone()
            .unwrap_or_else(|| super::key::key_for_port(self.tunnel.port))
    }

    /// The HTTP Host header and TLS server name: `sni`, else the host, or `none` for an IP.
    pub fn sni(&self) -> String {
        match &self.params.sni {
            Some(s) => s.clone(),
            None if self.tunnel.is_ip() || self.tunnel.host.is_empty() => "none".into(),
            None => self.tunnel.host.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn url(s: &str) -> NodepassUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn full_grammar() {
        let u = url(
            "server://secret@0.0.0.0:10101/127.0.0.1:8080,10.0.0.2:8080?tls=1&max=512&mode=1&log=debug&slot=100&rate=50&read=30s&proxy=1&notcp=0&noudp=1&dial=10.0.0.1",
        );
        assert_eq!(u.role, Role::Server);
        assert_eq!(u.key(), "secret");
        assert_eq!(
            u.tunnel,
            HostPort {
                host: "0.0.0.0".into(),
                port: 10101
            }
        );
        assert_eq!(u.targets.len(), 2);
        assert_eq!(u.targets[1].to_string(), "10.0.0.2:8080");
        let p = &u.params;
        assert_eq!(
            (p.tls, p.max, p.mode, p.slot, p.rate),
            (TlsMode::SelfSigned, 512, 1, 100, 50)
        );
        assert_eq!(p.read, Some(Duration::from_secs(30)));
        assert!(p.proxy && p.noudp && !p.notcp);
        assert_eq!(p.dial, Some("10.0.0.1".parse().unwrap()));
    }

    #[test]
    fn defaults_and_derived_key() {
        let u = url("client://relay.example.com:10101/127.0.0.1:22");
        assert_eq!(u.key(), "e68be2b4");
        assert_eq!(u.sni(), "relay.example.com");
        assert_eq!(
            (u.params.min, u.params.max, u.params.tls),
            (64, 1024, TlsMode::Plain)
        );
        assert_eq!(url("client://192.0.2.1:10101/:22").sni(), "none");
        assert_eq!(
            url("client://192.0.2.1:10101/:22?sni=x.example").sni(),
            "x.example"
        );
        let u = url("server://:10101/:8080");
        assert_eq!(u.tunnel.listen(), "0.0.0.0:10101");
        assert_eq!(u.targets[0].dial(), "127.0.0.1:8080");
        assert_eq!(
            url("client://[::1]:10101/[::1]:22").tunnel.dial(),
            "[::1]:10101"
        );
        assert_eq!(url("client://p%40ss@h:1/:2").key(), "p@ss");
    }

    #[test]
    fn errors_say_what_is_wrong() {
        for (bad, needle) in [
            ("http://h:1/:2", "server:// or client://"),
            ("server://h/:2", "no port"),
            ("server://h:0/:2", "1-65535"),
            ("client://:10101/:2", "no host"),
            ("server://h:1", "no target"),
            ("server://h:1/:2?tls=3", "0, 1 or 2"),
            ("server://h:1/:2?tls=2", "crt=FILE"),
            ("server://h:1/:2?min=10&max=5", "larger than max"),
            ("server://h:1/:2?read=soon", "duration"),
            ("server://h:1/:2?mode=7", "0, 1 or 2"),
            ("server://::1:1/:2", "brackets"),
        ] {
            let e = bad.parse::<NodepassUrl>().unwrap_err().to_string();
            assert!(e.contains(needle), "{bad}: {e}");
        }
    }

    #[test]
    fn unknown_params_are_kept_for_a_warning() {
        assert_eq!(
            url("server://h:1/:2?future=1").unknown,
            vec!["future".to_string()]
        );
    }

    #[test]
    fn handshake_and_udp_framing_choices() {
        let p = url("client://h:1/:2").params;
        assert_eq!((p.handshake, p.udpframe), (HandshakeChoice::Auto, None));
        let p = url("client://h:1/:2?handshake=http&udpframe=1").params;
        assert_eq!(
            (p.handshake, p.udpframe),
            (HandshakeChoice::Http, Some(true))
        );
        let p = url("client://h:1/:2?handshake=https&udpframe=0").params;
        assert_eq!(
            (p.handshake, p.udpframe),
            (HandshakeChoice::Https, Some(false))
        );
        let e = "client://h:1/:2?udpframe=yes"
            .parse::<NodepassUrl>()
            .unwrap_err();
        assert!(e.to_string().contains("udpframe"), "{e}");
        let e = "client://h:1/:2?handshake=tls"
            .parse::<NodepassUrl>()
            .unwrap_err();
        assert!(e.to_string().contains("https"), "{e}");
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,120}") {
            let _ = s.parse::<NodepassUrl>();
            let _ = format!("server://{s}").parse::<NodepassUrl>();
        }
    }
}
