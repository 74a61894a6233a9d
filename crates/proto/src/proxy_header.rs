//! PROXY protocol headers (HAProxy's v1 text and v2 binary): written ahead of a forwarded
//! connection's bytes so the target (nginx, HAProxy, ...) sees the user's address rather
//! than porthole's, and read from a listener's connections when porthole sits behind a
//! load balancer that sends them. Encoding and parsing are the `ppp` crate's; this module
//! adds the choices porthole makes (mixed address families, a size bound).

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use ppp::PartialResult;

/// Which header to write (`proxy_protocol=v1|v2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Version {
    V1,
    V2,
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Version::V1 => "v1",
            Version::V2 => "v2",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("PROXY protocol version {0:?}: expected v1 or v2")]
pub struct VersionError(pub String);

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "v1" | "1" => Ok(Version::V1),
            "v2" | "2" => Ok(Version::V2),
            _ => Err(VersionError(s.to_string())),
        }
    }
}

/// The longest header read from a peer. A v1 line is at most 107 bytes; a v2 header is
/// 16 bytes plus addresses (36 for IPv6) plus TLVs, which load balancers keep short (a
/// few dozen bytes). Longer ones are refused rather than buffered.
pub const MAX_HEADER: usize = 512;

/// Both addresses in one family (v4 in v6 when they differ): the headers cannot mix them.
fn one_family(user: SocketAddr, local: SocketAddr) -> (SocketAddr, SocketAddr) {
    let v6 = |a: SocketAddr| match a.ip() {
        IpAddr::V4(ip) => SocketAddr::new(IpAddr::V6(ip.to_ipv6_mapped()), a.port()),
        IpAddr::V6(_) => a,
    };
    if user.is_ipv4() == local.is_ipv4() {
        (user, local)
    } else {
        (v6(user), v6(local))
    }
}

/// The header saying a TCP connection came from `user` to `local` (the address it
/// connected to).
pub fn encode(version: Version, user: SocketAddr, local: SocketAddr) -> Vec<u8> {
    let addresses = one_family(user, local);
    match version {
        Version::V1 => ppp::v1::Addresses::from(addresses).to_string().into_bytes(),
        Version::V2 => {
            let header = ppp::v2::Builder::with_addresses(
                ppp::v2::Version::Two | ppp::v2::Command::Proxy,
                ppp::v2::Protocol::Stream,
                addresses,
            )
            .build();
            // Writing two addresses into a Vec cannot fail; should it ever, a LOCAL
            // header (no addresses) is still a valid one.
            header.unwrap_or_else(|_| {
                let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
                local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
                local
            })
        }
    }
}

/// What the start of a connection holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// Not enough bytes yet to tell.
    Incomplete,
    /// A complete header of `len` bytes; `source` is the user's address (`None` for
    /// `UNKNOWN` / `LOCAL`, e.g. a load balancer's health check).
    Header {
        len: usize,
        source: Option<SocketAddr>,
    },
    /// Not a PROXY header, or one longer than [`MAX_HEADER`].
    Invalid(String),
}

/// The longest v1 line the specification allows, CRLF included.
const MAX_V1: usize = 107;

/// Parses the header a connection starts with (v1 or v2).
pub fn parse(buf: &[u8]) -> Parsed {
    // A v1 line is judged whole: cut inside a port, `ppp` takes what it has for the port
    // and errs instead of waiting for the rest.
    let v1_prefix = &b"PROXY "[..buf.len().min(6)];
    if buf.starts_with(v1_prefix) && !buf.windows(2).any(|w| w == b"\r\n") {
        return if buf.len() >= MAX_V1 {
            Parsed::Invalid(format!("no end of a PROXY v1 line in {MAX_V1} bytes"))
        } else {
            Parsed::Incomplete
        };
    }
    let result = ppp::HeaderResult::parse(buf);
    if result.is_incomplete() {
        return if buf.len() >= MAX_HEADER {
            Parsed::Invalid(format!("no complete PROXY header in {MAX_HEADER} bytes"))
        } else {
            Parsed::Incomplete
        };
    }
    let (len, source) = match result {
        ppp::HeaderResult::V1(Ok(h)) => {
            let source = match h.addresses {
                ppp::v1::Addresses::Tcp4(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Tcp6(a) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                ppp::v1::Addresses::Unknown => None,
            };
            (h.header.len(), source)
        }
        ppp::HeaderResult::V2(Ok(h)) => {
            let source = match (h.command, h.addresses) {
                (ppp::v2::Command::Local, _) => None,
                (_, ppp::v2::Addresses::IPv4(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                (_, ppp::v2::Addresses::IPv6(a)) => {
                    Some(SocketAddr::new(a.source_address.into(), a.source_port))
                }
                _ => None,
            };
            (h.len(), source)
        }
        ppp::HeaderResult::V1(Err(e)) => return Parsed::Invalid(e.to_string()),
        ppp::HeaderResult::V2(Err(e)) => return Parsed::Invalid(e.to_string()),
    };
    if len > MAX_HEADER {
        return Parsed::Invalid(format!(
            "a PROXY header of {len} bytes (at most {MAX_HEADER})"
        ));
    }
    Parsed::Header { len, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_lines_as_haproxy_writes_them() {
        assert_eq!(
            encode(Version::V1, a("192.0.2.7:55344"), a("127.0.0.1:8080")),
            b"PROXY TCP4 192.0.2.7 127.0.0.1 55344 8080\r\n"
        );
        // Mixed families: both as IPv6.
        assert_eq!(
            encode(Version::V1, a("192.0.2.7:55344"), a("[::1]:80")),
            b"PROXY TCP6 ::ffff:192.0.2.7 ::1 55344 80\r\n"
        );
    }

    #[test]
    fn v2_header_bytes() {
        let h = encode(Version::V2, a("192.0.2.7:55344"), a("10.0.0.5:443"));
        let mut want = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        // Version 2, PROXY; TCP over IPv4; 12 address bytes.
        want.extend_from_slice(&[0x21, 0x11, 0x00, 0x0c]);
        want.extend_from_slice(&[192, 0, 2, 7, 10, 0, 0, 5]);
        want.extend_from_slice(&55344u16.to_be_bytes());
        want.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(h, want);
    }

    #[test]
    fn what_is_written_reads_back_with_the_data_behind_it() {
        for v in [Version::V1, Version::V2] {
            for (user, local) in [
                (a("192.0.2.7:55344"), a("127.0.0.1:8080")),
                (a("[2001:db8::7]:1"), a("[::1]:443")),
            ] {
                let mut buf = encode(v, user, local);
                let len = buf.len();
                buf.extend_from_slice(b"GET / HTTP/1.1\r\n");
                assert_eq!(
                    parse(&buf),
                    Parsed::Header {
                        len,
                        source: Some(user)
                    },
                    "{v}"
                );
                // Every proper prefix is incomplete, never a header or an error.
                for cut in 0..len {
                    assert_eq!(parse(&buf[..cut]), Parsed::Incomplete, "{v} cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn unknown_and_local_headers_carry_no_address() {
        assert_eq!(
            parse(b"PROXY UNKNOWN\r\nx"),
            Parsed::Header {
                len: 15,
                source: None
            }
        );
        let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0x00, 0x00]);
        assert_eq!(
            parse(&local),
            Parsed::Header {
                len: 16,
                source: None
            }
        );
    }

    #[test]
    fn garbage_and_endless_headers_are_refused() {
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n\r\n"),
            Parsed::Invalid(_)
        ));
        assert!(matches!(
            parse(b"SSH-2.0-OpenSSH_9.2\r\n"),
            Parsed::Invalid(_)
        ));
        let mut long = b"PROXY TCP4 ".to_vec();
        long.resize(MAX_HEADER, b'1');
        assert!(matches!(parse(&long), Parsed::Invalid(_)));
        // A v2 header announcing 60000 bytes of TLVs.
        let mut big = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
        big.extend_from_slice(&[0x21, 0x11, 0xea, 0x60]);
        big.resize(MAX_HEADER, 0);
        assert!(matches!(parse(&big), Parsed::Invalid(_)));
    }

    proptest::proptest! {
        /// Whatever a peer sends: no panic, and a header is never longer than the input.
        #[test]
        fn parse_is_total(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            if let Parsed::Header { len, .. } = parse(&bytes) {
                proptest::prop_assert!(len <= bytes.len());
            }
        }
    }

    #[test]
    fn versions_parse_by_name() {
        assert_eq!("v2".parse::<Version>(), Ok(Version::V2));
        assert_eq!("V1".parse::<Version>(), Ok(Version::V1));
        assert!("v3".parse::<Version>().is_err());
    }
}
