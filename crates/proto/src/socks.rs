//! SOCKS5 (RFC 1928) and its username/password auth (RFC 1929), I/O-free: each parser
//! takes the bytes received so far and answers "need more", "here it is (and how many
//! bytes it used)" or "this is not SOCKS5". Nothing a peer sends can make them panic or
//! allocate more than a request can hold (a 255-byte name).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};

pub const VERSION: u8 = 5;
/// Method: no authentication.
pub const NO_AUTH: u8 = 0x00;
/// Method: username/password (RFC 1929).
pub const USER_PASS: u8 = 0x02;
/// Method reply: none of the offered methods is acceptable.
pub const NO_ACCEPTABLE: u8 = 0xff;

pub const CMD_CONNECT: u8 = 0x01;
pub const CMD_BIND: u8 = 0x02;
pub const CMD_UDP_ASSOCIATE: u8 = 0x03;

/// Reply codes (RFC 1928 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0x00,
    GeneralFailure = 0x01,
    NotAllowed = 0x02,
    NetworkUnreachable = 0x03,
    HostUnreachable = 0x04,
    ConnectionRefused = 0x05,
    TtlExpired = 0x06,
    CommandNotSupported = 0x07,
    AddressTypeNotSupported = 0x08,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SocksError {
    #[error("not SOCKS5 (version byte {0})")]
    Version(u8),
    #[error("a greeting that offers no method")]
    NoMethods,
    #[error("address type {0} is not one of IPv4 (1), name (3), IPv6 (4)")]
    AddressType(u8),
    #[error("an empty host name")]
    EmptyName,
    #[error("the host name is not UTF-8")]
    NameNotUtf8,
    #[error("username/password sub-negotiation version {0}, expected 1")]
    AuthVersion(u8),
}

/// Where a request wants to go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dest {
    Addr(SocketAddr),
    /// A name for the far side to resolve (`socks5h`), and the port.
    Name(String, u16),
}

impl Dest {
    /// As a porthole source (`tcp://host:port`, IPv6 in brackets).
    pub fn source(&self, scheme: &str) -> String {
        match self {
            Dest::Addr(a) => format!("{scheme}://{a}"),
            Dest::Name(n, p) => format!("{scheme}://{n}:{p}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub command: u8,
    pub dest: Dest,
}

/// The client's greeting: the methods it offers.
pub fn parse_greeting(buf: &[u8]) -> Result<Option<(Vec<u8>, usize)>, SocksError> {
    let [version, n, ..] = *buf else {
        return check_version(buf).map(|_| None);
    };
    if version != VERSION {
        return Err(SocksError::Version(version));
    }
    if n == 0 {
        return Err(SocksError::NoMethods);
    }
    let end = 2 + n as usize;
    Ok(buf.get(2..end).map(|m| (m.to_vec(), end)))
}

fn check_version(buf: &[u8]) -> Result<(), SocksError> {
    match buf.first() {
        Some(&v) if v != VERSION => Err(SocksError::Version(v)),
        _ => Ok(()),
    }
}

/// The request after the method is settled.
pub fn parse_request(buf: &[u8]) -> Result<Option<(Request, usize)>, SocksError> {
    if buf.len() < 4 {
        return check_version(buf).map(|_| None);
    }
    if buf[0] != VERSION {
        return Err(SocksError::Version(buf[0]));
    }
    let command = buf[1];
    Ok(parse_addr(&buf[3..])?.map(|(dest, n)| (Request { command, dest }, 3 + n)))
}

/// ATYP, address and port (the tail of a request and of a UDP header).
fn parse_addr(buf: &[u8]) -> Result<Option<(Dest, usize)>, SocksError> {
    let Some(&atyp) = buf.first() else {
        return Ok(None);
    };
    match atyp {
        1 => {
            let Some(b) = buf.get(1..7) else {
                return Ok(None);
            };
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            let port = u16::from_be_bytes([b[4], b[5]]);
            Ok(Some((Dest::Addr(SocketAddr::from((ip, port))), 7)))
        }
        4 => {
            let Some(b) = buf.get(1..19) else {
                return Ok(None);
            };
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            let port = u16::from_be_bytes([b[16], b[17]]);
            Ok(Some((
                Dest::Addr(SocketAddr::from((Ipv6Addr::from(octets), port))),
                19,
            )))
        }
        3 => {
            let Some(&len) = buf.get(1) else {
                return Ok(None);
            };
            if len == 0 {
                return Err(SocksError::EmptyName);
            }
            let end = 2 + len as usize + 2;
            let Some(b) = buf.get(2..end) else {
                return Ok(None);
            };
            let name = std::str::from_utf8(&b[..len as usize])
                .map_err(|_| SocksError::NameNotUtf8)?
                .to_string();
            let port = u16::from_be_bytes([b[len as usize], b[len as usize + 1]]);
            Ok(Some((Dest::Name(name, port), end)))
        }
        t => Err(SocksError::AddressType(t)),
    }
}

/// A UDP ASSOCIATE datagram: where it goes, its fragment number (0: whole) and where
/// its payload starts. `None` if the header is cut short.
pub fn parse_udp(buf: &[u8]) -> Result<Option<(Dest, u8, usize)>, SocksError> {
    let Some(&frag) = buf.get(2) else {
        return Ok(None);
    };
    Ok(parse_addr(&buf[3..])?.map(|(dest, n)| (dest, frag, 3 + n)))
}

/// The header of a UDP ASSOCIATE datagram from `from` back to the SOCKS client.
pub fn udp_header(from: &Dest) -> Vec<u8> {
    let mut v = vec![0, 0, 0];
    match from {
        Dest::Addr(SocketAddr::V4(a)) => {
            v.push(1);
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Addr(SocketAddr::V6(a)) => {
            v.push(4);
            v.extend_from_slice(&a.ip().octets());
            v.extend_from_slice(&a.port().to_be_bytes());
        }
        Dest::Name(n, p) => {
            let n = &n.as_bytes()[..n.len().min(255)];
            v.push(3);
            v.push(n.len() as u8);
            v.extend_from_slice(n);
            v.extend_from_slice(&p.to_be_bytes());
        }
    }
    v
}

/// RFC 1929 credentials: username and password.
pub type UserPass = (String, String);

/// RFC 1929: username and password.
pub fn parse_user_pass(buf: &[u8]) -> Result<Option<(UserPass, usize)>, SocksError> {
    let Some(&version) = buf.first() else {
        return Ok(None);
    };
    if version != 1 {
        return Err(SocksError::AuthVersion(version));
    }
    let Some(&ulen) = buf.get(1) else {
        return Ok(None);
    };
    let u_end = 2 + ulen as usize;
    let Some(&plen) = buf.get(u_end) else {
        return Ok(None);
    };
    let end = u_end + 1 + plen as usize;
    let Some(p) = buf.get(u_end + 1..end) else {
        return Ok(None);
    };
    let user = String::from_utf8_lossy(&buf[2..u_end]).into_owned();
    let pass = String::from_utf8_lossy(p).into_owned();
    Ok(Some(((user, pass), end)))
}

/// A reply to a request; `bound` is the address the proxy uses for it (zero when none).
pub fn reply(code: Reply, bound: Option<SocketAddr>) -> Vec<u8> {
    let bound = bound.unwrap_or(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
    let mut v = vec![VERSION, code as u8, 0];
    match bound {
        SocketAddr::V4(a) => {
            v.push(1);
            v.extend_from_slice(&a.ip().octets());
        }
        SocketAddr::V6(a) => {
            v.push(4);
            v.extend_from_slice(&a.ip().octets());
        }
    }
    v.extend_from_slice(&bound.port().to_be_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_parse_by_address_type() {
        let v4 = [5, 1, 0, 1, 10, 0, 0, 5, 0, 80];
        assert_eq!(
            parse_request(&v4),
            Ok(Some((
                Request {
                    command: CMD_CONNECT,
                    dest: Dest::Addr("10.0.0.5:80".parse().unwrap_or_else(|_| unreachable!()))
                },
                10
            )))
        );
        let mut v6 = vec![5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x1f, 0x90]);
        let (r, n) = parse_request(&v6)
            .ok()
            .flatten()
            .unwrap_or_else(|| unreachable!());
        assert_eq!(r.dest.source("tcp"), "tcp://[::1]:8080");
        assert_eq!(n, 22);
        let mut name = vec![5, 1, 0, 3, 9];
        name.extend_from_slice(b"localhost");
        name.extend_from_slice(&[0, 22]);
        let (r, _) = parse_request(&name)
            .ok()
            .flatten()
            .unwrap_or_else(|| unreachable!());
        assert_eq!(r.dest, Dest::Name("localhost".into(), 22));
        // Every prefix asks for more, never errs or panics.
        for i in 0..name.len() {
            assert_eq!(parse_request(&name[..i]), Ok(None), "prefix {i}");
        }
    }

    #[test]
    fn garbage_is_refused_by_what_is_wrong() {
        assert_eq!(parse_greeting(&[4, 1, 0]), Err(SocksError::Version(4)));
        assert_eq!(parse_greeting(&[5, 0]), Err(SocksError::NoMethods));
        assert_eq!(parse_greeting(&[5, 2, 0]), Ok(None));
        assert_eq!(parse_greeting(&[5, 2, 0, 2, 9]), Ok(Some((vec![0, 2], 4))));
        assert_eq!(
            parse_request(&[5, 1, 0, 7, 0, 0]),
            Err(SocksError::AddressType(7))
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 0, 0, 0]),
            Err(SocksError::EmptyName)
        );
        assert_eq!(
            parse_request(&[5, 1, 0, 3, 1, 0xff, 0, 1]),
            Err(SocksError::NameNotUtf8)
        );
        assert_eq!(parse_user_pass(&[2, 0, 0]), Err(SocksError::AuthVersion(2)));
        assert_eq!(
            parse_user_pass(&[1, 1, b'u', 2, b'p', b'w']),
            Ok(Some((("u".into(), "pw".into()), 6)))
        );
    }

    #[test]
    fn replies_carry_the_bound_address() {
        assert_eq!(
            reply(Reply::NotAllowed, None),
            vec![5, 2, 0, 1, 0, 0, 0, 0, 0, 0]
        );
        let r = reply(
            Reply::Succeeded,
            Some("[::1]:1080".parse().unwrap_or_else(|_| unreachable!())),
        );
        assert_eq!((r[1], r[3], r.len()), (0, 4, 22));
    }

    #[test]
    fn udp_headers_round_trip() {
        for dest in [
            Dest::Addr("10.0.0.1:53".parse().unwrap_or_else(|_| unreachable!())),
            Dest::Addr(
                "[2001:db8::1]:443"
                    .parse()
                    .unwrap_or_else(|_| unreachable!()),
            ),
            Dest::Name("dns.lan".into(), 53),
        ] {
            let mut d = udp_header(&dest);
            let hlen = d.len();
            d.extend_from_slice(b"payload");
            assert_eq!(parse_udp(&d), Ok(Some((dest, 0, hlen))));
        }
        assert_eq!(parse_udp(&[0, 0]), Ok(None));
        assert_eq!(parse_udp(&[0, 0, 1, 1, 10]), Ok(None));
    }

    proptest! {
        #[test]
        fn no_input_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_greeting(&bytes);
            let _ = parse_request(&bytes);
            let _ = parse_user_pass(&bytes);
            let _ = parse_udp(&bytes);
        }
    }
}
