//! `block=`: protocols the accepting side refuses, told apart by a user connection's
//! first bytes (NodePass v1.14 and later). The value is a set of digits: `1` SOCKS
//! (4 and 5), `2` HTTP, `3` TLS; `0` or nothing blocks nothing (`block=13`: SOCKS and TLS).

/// How many first bytes NodePass looks at.
pub const PEEK: usize = 8;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockSet {
    pub socks: bool,
    pub http: bool,
    pub tls: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("block: {0:?} is not a set of the digits 1 (SOCKS), 2 (HTTP), 3 (TLS), or 0 (none)")]
pub struct BadBlock(pub String);

impl BlockSet {
    pub fn parse(s: &str) -> Result<Self, BadBlock> {
        if !s.bytes().all(|b| (b'0'..=b'3').contains(&b)) {
            return Err(BadBlock(s.to_string()));
        }
        Ok(Self {
            socks: s.contains('1'),
            http: s.contains('2'),
            tls: s.contains('3'),
        })
    }

    pub fn is_empty(&self) -> bool {
        !(self.socks || self.http || self.tls)
    }

    /// The blocked protocol `first` (up to [`PEEK`] bytes) starts, if any; NodePass's rules.
    pub fn check(&self, first: &[u8]) -> Option<&'static str> {
        let b = &first[..first.len().min(PEEK)];
        if self.socks && b.len() >= 2 {
            if b[0] == 0x04 && (b[1] == 0x01 || b[1] == 0x02) {
                return Some("SOCKS4");
            }
            if b[0] == 0x05 && (0x01..=0x03).contains(&b[1]) {
                return Some("SOCKS5");
            }
        }
        // An HTTP method: uppercase letters then a space within the first 8 bytes.
        if self.http && b.len() >= 4 && b[0].is_ascii_uppercase() {
            for (i, &c) in b[1..].iter().enumerate() {
                if c == b' ' {
                    return Some("HTTP");
                }
                if !c.is_ascii_uppercase() || i >= 7 {
                    break;
                }
            }
        }
        if self.tls && b.first() == Some(&0x16) {
            return Some("TLS");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_parse_as_sets_of_digits() {
        assert!(BlockSet::parse("0").unwrap().is_empty());
        assert!(BlockSet::parse("").unwrap().is_empty());
        let all = BlockSet::parse("123").unwrap();
        assert!(all.socks && all.http && all.tls);
        let some = BlockSet::parse("31").unwrap();
        assert!(some.socks && !some.http && some.tls);
        assert!(BlockSet::parse("4").is_err());
        assert!(BlockSet::parse("socks").is_err());
    }

    #[test]
    fn first_bytes_are_told_apart() {
        let all = BlockSet::parse("123").unwrap();
        assert_eq!(all.check(b"\x05\x01\x00"), Some("SOCKS5"));
        assert_eq!(all.check(b"\x04\x01\x00\x50"), Some("SOCKS4"));
        assert_eq!(all.check(b"GET / HTTP/1.1\r\n"), Some("HTTP"));
        assert_eq!(all.check(b"CONNECT example.com:443"), Some("HTTP"));
        assert_eq!(all.check(b"OPTIONS * HTTP/1.1"), Some("HTTP"));
        assert_eq!(all.check(b"\x16\x03\x01\x02\x00"), Some("TLS"));
        // Not blocked: SSH, lowercase words, long words, other bytes, too little.
        for ok in [
            &b"SSH-2.0-OpenSSH_9.2"[..],
            b"get / http/1.1",
            b"PROPFINDX / HTTP",
            b"hello world",
            b"\x05\x00",
            b"\x05",
            b"GET",
            b"",
        ] {
            assert_eq!(all.check(ok), None, "{ok:?}");
        }
        let only_tls = BlockSet::parse("3").unwrap();
        assert_eq!(only_tls.check(b"GET / HTTP/1.1"), None);
        assert_eq!(only_tls.check(b"\x05\x01\x00"), None);
    }
}
