//! The name a visitor's first bytes ask for, on a port that several published services
//! share: the TLS ClientHello's SNI (the TLS is passed through, never terminated) or,
//! for plain HTTP, the `Host` header. Bytes in, a verdict out; the caller bounds how
//! many bytes and how long it waits ([`MAX_PEEK`]).

/// Most bytes read from a visitor before its name must be known. A ClientHello with
/// post-quantum key shares is ~2 KB; HTTP request heads rarely exceed 8 KB.
pub const MAX_PEEK: usize = 16 * 1024;
/// Longest name taken (RFC 1035).
pub const MAX_NAME_LEN: usize = 253;

/// A fatal TLS alert `unrecognized_name` (112), as a record: what a visitor asking for
/// a name nobody publishes gets, so its TLS library reports a clean error at once.
pub const TLS_UNRECOGNIZED_NAME: [u8; 7] = [0x15, 0x03, 0x03, 0x00, 0x02, 0x02, 112];

/// The answer to an HTTP request for a name nobody publishes here.
pub const HTTP_NOT_FOUND: &[u8] = b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\
Content-Length: 35\r\nConnection: close\r\n\r\nno service is published at this name\n";

/// What the bytes so far say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sniffed {
    /// Not enough bytes yet.
    Incomplete,
    /// A TLS ClientHello, with its server name (lowercase, no trailing dot), if any.
    Tls(Option<String>),
    /// An HTTP/1 request, with its Host (lowercase, no port, no trailing dot), if any.
    Http(Option<String>),
    /// Neither (or malformed): no name can be had.
    Unknown,
}

impl Sniffed {
    /// The name asked for, if the bytes named one.
    pub fn name(&self) -> Option<&str> {
        match self {
            Sniffed::Tls(n) | Sniffed::Http(n) => n.as_deref(),
            _ => None,
        }
    }
}

/// Looks at a visitor's first bytes.
pub fn sniff(buf: &[u8]) -> Sniffed {
    match buf.first() {
        None => Sniffed::Incomplete,
        Some(0x16) => tls(buf),
        Some(b) if b.is_ascii_uppercase() => http(buf),
        Some(_) => Sniffed::Unknown,
    }
}

/// Whether `name` matches a rule: exactly, or `*.example.com` for any name that ends
/// in `.example.com` (any depth, not `example.com` itself). Both sides lowercase.
pub fn name_matches(rule: &str, name: &str) -> bool {
    match rule.strip_prefix("*.") {
        Some(suffix) => {
            name.len() > suffix.len() + 1 && name.ends_with(suffix) && {
                name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
            }
        }
        None => rule == name,
    }
}

/// A name as routing compares it: lowercase, no trailing dot; `None` if it is not a
/// plausible DNS name (empty, too long, or characters outside letters, digits, `-`,
/// `_` and `.`).
pub fn normalize_name(name: &str) -> Option<String> {
    let name = name.strip_suffix('.').unwrap_or(name);
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| name.to_ascii_lowercase())
}

fn tls(buf: &[u8]) -> Sniffed {
    // The handshake may span records: gather their payloads (record header: type,
    // version 2, length 2).
    let mut hs = Vec::new();
    let mut at = 0;
    loop {
        let Some(head) = buf.get(at..at + 5) else {
            return Sniffed::Incomplete;
        };
        if head[0] != 0x16 || head[1] != 0x03 {
            return Sniffed::Unknown;
        }
        let len = u16::from_be_bytes([head[3], head[4]]) as usize;
        if len == 0 || len > 16384 + 256 {
            return Sniffed::Unknown;
        }
        let Some(body) = buf.get(at + 5..at + 5 + len) else {
            return Sniffed::Incomplete;
        };
        hs.extend_from_slice(body);
        at += 5 + len;
        if hs.len() < 4 {
            continue;
        }
        if hs[0] != 1 {
            return Sniffed::Unknown;
        }
        let want = u32::from_be_bytes([0, hs[1], hs[2], hs[3]]) as usize;
        if want + 4 > MAX_PEEK {
            return Sniffed::Unknown;
        }
        if hs.len() >= want + 4 {
            return match client_hello_sni(&hs[4..4 + want]) {
                Some(name) => Sniffed::Tls(name),
                None => Sniffed::Unknown,
            };
        }
    }
}

/// A little reader over a byte slice: every length is checked, nothing panics.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// The SNI host name of a ClientHello body: `Some(None)` for a well-formed hello
/// without one, `None` for a malformed hello.
fn client_hello_sni(body: &[u8]) -> Option<Option<String>> {
    let mut r = Reader(body);
    r.take(2 + 32)?; // legacy_version, random
    let n = r.u8()?;
    r.take(n)?; // session id
    let n = r.u16()?;
    r.take(n)?; // cipher suites
    let n = r.u8()?;
    r.take(n)?; // compression methods
    if r.0.is_empty() {
        return Some(None); // no extensions at all
    }
    let n = r.u16()?;
    let mut exts = Reader(r.take(n)?);
    while !exts.0.is_empty() {
        let kind = exts.u16()?;
        let n = exts.u16()?;
        let data = exts.take(n)?;
        if kind != 0 {
            continue;
        }
        let mut list = Reader(data);
        let n = list.u16()?;
        let mut names = Reader(list.take(n)?);
        while !names.0.is_empty() {
            let name_type = names.u8()?;
            let n = names.u16()?;
            let name = names.take(n)?;
            if name_type == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(Some(normalize_name(name)?));
            }
        }
        return Some(None);
    }
    Some(None)
}

fn http(buf: &[u8]) -> Sniffed {
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Sniffed::Incomplete,
        Err(_) => return Sniffed::Unknown,
    }
    let host = req
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("host"))
        .and_then(|h| std::str::from_utf8(h.value).ok())
        .map(|h| h.trim())
        .and_then(|h| {
            // Strip a port; a bracketed IPv6 literal is no name to route by.
            let host = match h.rsplit_once(':') {
                Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
                _ => h,
            };
            normalize_name(host)
        });
    Sniffed::Http(host)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal ClientHello record with `sni` (and one other extension before it).
    fn client_hello(sni: Option<&str>) -> Vec<u8> {
        let mut exts = Vec::new();
        // supported_versions (43): TLS 1.3
        exts.extend_from_slice(&[0, 43, 0, 3, 2, 3, 4]);
        if let Some(name) = sni {
            let n = name.len() as u16;
            exts.extend_from_slice(&[0, 0]);
            exts.extend_from_slice(&(n + 5).to_be_bytes());
            exts.extend_from_slice(&(n + 3).to_be_bytes());
            exts.push(0);
            exts.extend_from_slice(&n.to_be_bytes());
            exts.extend_from_slice(name.as_bytes());
        }
        let mut body = vec![3, 3];
        body.extend_from_slice(&[7; 32]);
        body.push(0); // session id
        body.extend_from_slice(&[0, 2, 0x13, 0x01]); // one cipher suite
        body.extend_from_slice(&[1, 0]); // null compression
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        let mut hs = vec![1];
        hs.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        hs.extend_from_slice(&body);
        let mut rec = vec![0x16, 3, 1];
        rec.extend_from_slice(&(hs.len() as u16).to_be_bytes());
        rec.extend_from_slice(&hs);
        rec
    }

    #[test]
    fn tls_names_are_found_byte_by_byte() {
        let hello = client_hello(Some("App.Example.COM."));
        for cut in 0..hello.len() {
            assert_eq!(sniff(&hello[..cut]), Sniffed::Incomplete, "cut at {cut}");
        }
        assert_eq!(sniff(&hello), Sniffed::Tls(Some("app.example.com".into())));
        assert_eq!(sniff(&client_hello(None)), Sniffed::Tls(None));
    }

    #[test]
    fn a_hello_split_over_two_records_is_put_together() {
        let one = client_hello(Some("b.example"));
        let hs = &one[5..];
        let (a, b) = hs.split_at(20);
        let mut two = Vec::new();
        for part in [a, b] {
            two.extend_from_slice(&[0x16, 3, 3]);
            two.extend_from_slice(&(part.len() as u16).to_be_bytes());
            two.extend_from_slice(part);
        }
        assert_eq!(sniff(&two), Sniffed::Tls(Some("b.example".into())));
    }

    #[test]
    fn bad_tls_is_unknown() {
        let mut hello = client_hello(Some("a.example"));
        hello[5] = 2; // not a ClientHello
        assert_eq!(sniff(&hello), Sniffed::Unknown);
        let mut hello = client_hello(Some("a.example"));
        let n = hello.len();
        hello[n - 3] = b' '; // a space in the name
        assert_eq!(sniff(&hello), Sniffed::Unknown);
        assert_eq!(sniff(&[0x16, 3, 1, 0, 0]), Sniffed::Unknown);
        assert_eq!(sniff(&[0x16, 9, 9, 9, 9]), Sniffed::Unknown);
    }

    #[test]
    fn http_hosts() {
        let req = b"GET / HTTP/1.1\r\nHost: Web.Example:8080\r\nAccept: */*\r\n\r\n";
        for cut in 1..req.len() {
            assert_eq!(sniff(&req[..cut]), Sniffed::Incomplete, "cut at {cut}");
        }
        assert_eq!(sniff(req), Sniffed::Http(Some("web.example".into())));
        assert_eq!(
            sniff(b"GET / HTTP/1.0\r\n\r\n"),
            Sniffed::Http(None),
            "no Host"
        );
        assert_eq!(
            sniff(b"GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n"),
            Sniffed::Http(None)
        );
        assert_eq!(sniff(b"\x00\x01garbage"), Sniffed::Unknown);
        assert_eq!(sniff(b"G\x00T / HTTP/1.1\r\n\r\n"), Sniffed::Unknown);
    }

    #[test]
    fn name_rules() {
        assert!(name_matches("a.example.com", "a.example.com"));
        assert!(!name_matches("a.example.com", "b.example.com"));
        assert!(name_matches("*.example.com", "a.example.com"));
        assert!(name_matches("*.example.com", "x.a.example.com"));
        assert!(!name_matches("*.example.com", "example.com"));
        assert!(!name_matches("*.example.com", "badexample.com"));
        assert!(!name_matches("*.example.com", ".example.com"));
        assert_eq!(normalize_name("A.b."), Some("a.b".into()));
        assert_eq!(normalize_name("a b"), None);
        assert_eq!(normalize_name(&"a".repeat(254)), None);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = sniff(&bytes);
            let mut tls = vec![0x16, 3, 1];
            tls.extend_from_slice(&bytes);
            let _ = sniff(&tls);
        }

        #[test]
        fn any_valid_name_round_trips(name in "[a-z0-9]{1,20}(\\.[a-z0-9-]{1,20}){0,4}") {
            prop_assert_eq!(sniff(&client_hello(Some(&name))), Sniffed::Tls(Some(name.clone())));
            let req = format!("GET / HTTP/1.1\r\nhost: {name}\r\n\r\n");
            prop_assert_eq!(sniff(req.as_bytes()), Sniffed::Http(Some(name)));
        }
    }
}
