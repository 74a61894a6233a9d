//! NodePass's wire (v1.14 to v2.0), free of I/O: URL grammar, tunnel key and bearer
//! token, the HTTP(S) handshake, control-channel signals, certificate fingerprints and
//! UDP framing (`proxy=1`'s PROXY v1 line is porthole_proto's `proxy_header`, shared
//! with porthole's own forwards). Every byte example of docs/NODEPASS.md ("The wire") is a unit test here.

#[doc(hidden)]
pub mod block;
pub mod exercise;
pub mod http;
pub mod key;
pub mod signal;
pub mod udp_frame;
pub mod url;

/// Pool connection IDs are 4 random bytes, written as 8 lowercase hex digits in signals.
pub type PoolId = [u8; 4];

/// The control channel's pool ID.
pub const CONTROL_ID: PoolId = [0; 4];

/// What a client writes first on a new pool stream of an HTTP/2 or QUIC pool; the server
/// answers with the stream's ID.
pub const STREAM_HELLO: u8 = 0x00;

/// How long a new pool connection (or stream) may take to get its ID (NodePass waits a
/// minute).
pub const ID_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

pub fn id_hex(id: PoolId) -> String {
    id.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn parse_id(s: &str) -> Option<PoolId> {
    if s.len() != 8 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut id = [0u8; 4];
    for (i, chunk) in s.as_bytes().chunks(2).enumerate() {
        id[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(id)
}

/// A certificate's SHA-256, as `verify` signals carry it. NodePass wrote it two ways:
/// up to v1.17 `sha256:` + uppercase colon-separated hex, from v1.18 `sha256:` +
/// lowercase hex without colons. Both parse; a peer compares the text, so we write the
/// peer's style ([`FpStyle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

/// How a fingerprint is written (see [`Fingerprint`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpStyle {
    /// `sha256:BA:78:16:...` (v1.14-v1.17).
    Colons,
    /// `sha256:ba7816...` (v1.18 and later).
    Hex,
}

impl Fingerprint {
    pub fn of(der: &[u8]) -> Self {
        use sha2::{Digest, Sha256};
        Self(Sha256::digest(der).into())
    }

    pub fn render(&self, style: FpStyle) -> String {
        let hex: Vec<String> = match style {
            FpStyle::Colons => self.0.iter().map(|b| format!("{b:02X}")).collect(),
            FpStyle::Hex => self.0.iter().map(|b| format!("{b:02x}")).collect(),
        };
        let sep = if style == FpStyle::Colons { ":" } else { "" };
        format!("sha256:{}", hex.join(sep))
    }

    /// Either style (and either case); `None` for anything else, the empty string included.
    pub fn parse(s: &str) -> Option<(Self, FpStyle)> {
        let body = s.strip_prefix("sha256:")?;
        let (digits, style) = if body.contains(':') {
            (body.replace(':', ""), FpStyle::Colons)
        } else {
            (body.to_string(), FpStyle::Hex)
        };
        if digits.len() != 64 || !digits.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if style == FpStyle::Colons && body.len() != 32 * 3 - 1 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, pair) in digits.as_bytes().chunks(2).enumerate() {
            out[i] = u8::from_str_radix(std::str::from_utf8(pair).ok()?, 16).ok()?;
        }
        Some((Self(out), style))
    }
}

/// What the handshake revealed about the peer's NodePass generation (nothing on the wire
/// names the version): a plain-HTTP handshake is v1.14 or older, an HTTPS one v1.15 or
/// later. It picks the defaults that differ between them: the fingerprint style a
/// `verify` is written in, whether UDP datagrams carry a length prefix, and whether a
/// tls=2 server sends `verify` (v1.14.0 clients wait for one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Generation {
    /// Plain-HTTP handshake: v1.14 and older.
    V1,
    /// HTTPS handshake: v1.15 and later.
    V2,
}

impl Generation {
    pub fn fp_style(self) -> FpStyle {
        match self {
            Generation::V1 => FpStyle::Colons,
            Generation::V2 => FpStyle::Hex,
        }
    }

    /// Length-prefixed UDP datagrams by default (v2.0.0-b9 and later; v1.15-v2.0.0-b8
    /// peers need `udpframe=0`).
    pub fn udp_framed(self) -> bool {
        self == Generation::V2
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip() {
        assert_eq!(id_hex(CONTROL_ID), "00000000");
        assert_eq!(parse_id("2430ac70"), Some([0x24, 0x30, 0xac, 0x70]));
        assert_eq!(id_hex([0x24, 0x30, 0xac, 0x70]), "2430ac70");
        assert_eq!(parse_id("2430ac7"), None);
        assert_eq!(parse_id("2430ac7g"), None);
    }

    #[test]
    fn fingerprint_styles_render_and_parse() {
        let fp = Fingerprint::of(b"abc");
        let colons = fp.render(FpStyle::Colons);
        assert!(colons.starts_with("sha256:BA:78:16:BF:"), "{colons}");
        assert_eq!(colons.len(), 7 + 32 * 3 - 1);
        let hex = fp.render(FpStyle::Hex);
        assert_eq!(
            hex,
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(Fingerprint::parse(&colons), Some((fp, FpStyle::Colons)));
        assert_eq!(Fingerprint::parse(&hex), Some((fp, FpStyle::Hex)));
        assert_eq!(
            Fingerprint::parse(&hex.to_uppercase().replace("SHA256", "sha256")),
            Some((fp, FpStyle::Hex))
        );
        for bad in [
            "",
            "sha256:",
            "sha256:ab",
            &hex[..70],
            &colons.replace(':', ""),
        ] {
            assert_eq!(Fingerprint::parse(bad), None, "{bad:?}");
        }
    }
}
