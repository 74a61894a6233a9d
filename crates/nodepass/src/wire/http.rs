//! The handshake: plain HTTP/1.1 on the tunnel port, whatever `tls` is.
//!
//! ```text
//! client: GET / HTTP/1.1\r\nHost: <sni>\r\nAuthorization: Bearer <token>\r\n\r\n
//! server: 200, Connection: close, JSON {"flow":"-","max":1024,"tls":"1","type":"0"}\n
//!         405 for another method, 404 for another path, 401 for a wrong token
//! ```

use serde::{Deserialize, Serialize};

use super::key;

/// Largest request or response head read (everything up to the blank line).
pub const MAX_HEAD: usize = 8192;
/// Largest response body read.
pub const MAX_BODY: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HttpError {
    #[error("HTTP head larger than {MAX_HEAD} bytes")]
    TooLarge,
    #[error("malformed HTTP: {0}")]
    Malformed(&'static str),
    #[error("the handshake reply is not the expected JSON: {0}")]
    Body(String),
}

/// What the server tells the client, keys in sorted order on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    /// "-" reverse (server accepts user traffic), "+" forward (client accepts it).
    pub flow: String,
    pub max: u64,
    pub tls: String,
    #[serde(rename = "type")]
    pub pool_type: String,
}

impl Reply {
    pub fn body(&self) -> String {
        // Field order of the struct is the sorted key order NodePass writes.
        let mut b = serde_json::to_string(self).unwrap_or_default();
        b.push('\n');
        b
    }
}

/// The client's request.
pub fn request(host: &str, key: &str) -> String {
    format!(
        "GET / HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {}\r\n\r\n",
        key::bearer(key)
    )
}

/// Position just past the blank line ending the head, if the head is complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    pub bearer: Option<String>,
    /// `Sec-WebSocket-Key` of a WebSocket upgrade (`Upgrade: websocket`): a pool
    /// connection of pool type 2, not a handshake.
    pub websocket_key: Option<String>,
}

pub fn parse_request(head: &[u8]) -> Result<Request, HttpError> {
    if head.len() > MAX_HEAD {
        return Err(HttpError::TooLarge);
    }
    let text = std::str::from_utf8(head).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let first = lines.next().ok_or(HttpError::Malformed("empty request"))?;
    let mut parts = first.split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(HttpError::Malformed("bad request line"));
    };
    if !version.starts_with("HTTP/1.") || method.is_empty() {
        return Err(HttpError::Malformed("bad request line"));
    }
    let path = target.split('?').next().unwrap_or_default().to_string();
    let mut host = None;
    let mut bearer = None;
    let mut upgrade = false;
    let mut ws_key = None;
    for line in lines.take_while(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HttpError::Malformed("header without ':'"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("host") {
            host = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            ws_key = Some(value.to_string());
        } else if name.eq_ignore_ascii_case("authorization") {
            bearer = value
                .strip_prefix("Bearer ")
                .or_else(|| value.strip_prefix("bearer "))
                .map(|t| t.trim().to_string());
        }
    }
    Ok(Request {
        method: method.to_string(),
        path,
        host,
        bearer,
        websocket_key: ws_key.filter(|_| upgrade),
    })
}

/// The server's decision on a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    MethodNotAllowed,
    NotFound,
    Unauthorized,
}

impl Verdict {
    pub fn status(self) -> (u16, &'static str) {
        match self {
            Verdict::Accept => (200, "OK"),
            Verdict::MethodNotAllowed => (405, "Method Not Allowed"),
            Verdict::NotFound => (404, "Not Found"),
            Verdict::Unauthorized => (401, "Unauthorized"),
        }
    }
}

pub fn judge(req: &Request, key: &str) -> Verdict {
    if req.method != "GET" {
        return Verdict::MethodNotAllowed;
    }
    if req.path != "/" {
        return Verdict::NotFound;
    }
    match &req.bearer {
        Some(t) if key::bearer_matches(key, t) => Verdict::Accept,
        _ => Verdict::Unauthorized,
    }
}

/// A complete response: the JSON reply for 200, a short text for errors.
pub fn response(verdict: Verdict, reply: Option<&Reply>) -> String {
    let (code, reason) = verdict.status();
    let (ctype, body) = match (verdict, reply) {
        (Verdict::Accept, Some(r)) => ("application/json", r.body()),
        _ => ("text/plain; charset=utf-8", format!("{reason}\n")),
    };
    format!(
        "HTTP/1.1 {code} {reason}\r\nConnection: close\r\nContent-Length: {}\r\nContent-Type: {ctype}\r\n\r\n{body}",
        body.len()
    )
}

/// The server's answer to a WebSocket upgrade with `key` (RFC 6455 section 4.2.2).
pub fn websocket_accept(key: &str) -> String {
    use base64::Engine as _;
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.trim().as_bytes());
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let accept = base64::engine::general_purpose::STANDARD.encode(sha.digest().bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
}

/// Parses a server's response: the status and, for 200, the reply.
pub fn parse_response(bytes: &[u8]) -> Result<(u16, Option<Reply>), HttpError> {
    let end = head_end(bytes).ok_or(HttpError::Malformed("incomplete response head"))?;
    if end > MAX_HEAD {
        return Err(HttpError::TooLarge);
    }
    let head = std::str::from_utf8(&bytes[..end]).map_err(|_| HttpError::Malformed("not UTF-8"))?;
    let status_line = head.lines().next().unwrap_or_default();
    let code: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or(HttpError::Malformed("bad status line"))?;
    if code != 200 {
        return Ok((code, None));
    }
    let len = head
        .lines()
        .find_map(|l| {
            let (n, v) = l.split_once(':')?;
            n.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(bytes.len() - end);
    if len > MAX_BODY {
        return Err(HttpError::TooLarge);
    }
    let body = bytes
        .get(end..end + len)
        .ok_or(HttpError::Malformed("body shorter than Content-Length"))?;
    let reply: Reply = serde_json::from_slice(body).map_err(|e| HttpError::Body(e.to_string()))?;
    Ok((200, Some(reply)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn websocket_upgrades_are_told_from_handshakes() {
        // RFC 6455's example key and answer.
        let head = "GET / HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
        let req = parse_request(head.as_bytes()).unwrap();
        let key = req.websocket_key.unwrap();
        assert!(
            websocket_accept(&key)
                .contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n")
        );
        let plain = parse_request(request("none", "k").as_bytes()).unwrap();
        assert_eq!(plain.websocket_key, None);
    }

    fn reply() -> Reply {
        Reply {
            flow: "-".into(),
            max: 1024,
            tls: "1".into(),
            pool_type: "0".into(),
        }
    }

    #[test]
    fn documented_handshake() {
        let req = request("none", "secretkey");
        assert_eq!(
            req,
            "GET / HTTP/1.1\r\nHost: none\r\nAuthorization: Bearer 0ec2fbe02ea7c3eb6dd73c12eb2cffc9061280dfc8365cdcfa5241c6e3d9c9a7\r\n\r\n"
        );
        let parsed = parse_request(req.as_bytes()).unwrap();
        assert_eq!(judge(&parsed, "secretkey"), Verdict::Accept);
        assert_eq!(
            reply().body(),
            "{\"flow\":\"-\",\"max\":1024,\"tls\":\"1\",\"type\":\"0\"}\n"
        );
        let resp = response(Verdict::Accept, Some(&reply()));
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"));
        assert!(
            resp.contains("Connection: close\r\n")
                && resp.contains("Content-Type: application/json\r\n")
        );
        assert!(resp.contains("Content-Length: 45\r\n"));
        assert_eq!(
            parse_response(resp.as_bytes()).unwrap(),
            (200, Some(reply()))
        );
    }

    #[test]
    fn refusals() {
        let r = |s: &str| parse_request(s.as_bytes()).unwrap();
        let good = key::bearer("k");
        assert_eq!(
            judge(
                &r(&format!(
                    "POST / HTTP/1.1\r\nAuthorization: Bearer {good}\r\n\r\n"
                )),
                "k"
            ),
            Verdict::MethodNotAllowed
        );
        assert_eq!(
            judge(
                &r(&format!(
                    "GET /x HTTP/1.1\r\nAuthorization: Bearer {good}\r\n\r\n"
                )),
                "k"
            ),
            Verdict::NotFound
        );
        assert_eq!(
            judge(
                &r("GET / HTTP/1.1\r\nAuthorization: Bearer nope\r\n\r\n"),
                "k"
            ),
            Verdict::Unauthorized
        );
        assert_eq!(
            judge(&r("GET / HTTP/1.1\r\n\r\n"), "k"),
            Verdict::Unauthorized
        );
        let resp = response(Verdict::Unauthorized, None);
        assert_eq!(parse_response(resp.as_bytes()).unwrap(), (401, None));
        assert!(parse_request(b"garbage\r\n\r\n").is_err());
        assert_eq!(
            parse_request(&vec![b'a'; MAX_HEAD + 1]),
            Err(HttpError::TooLarge)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_heads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_request(&bytes);
            let _ = parse_response(&bytes);
        }
    }
}
