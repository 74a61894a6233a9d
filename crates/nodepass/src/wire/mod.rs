//! NodePass v1.14's wire, free of I/O: URL grammar, tunnel key and bearer token, the
//! HTTP handshake, control-channel signals, PROXY v1 lines and certificate
//! fingerprints. Every byte example of docs/NODEPASS.md ("The wire") is a unit test here.

#[doc(hidden)]
pub mod exercise;
pub mod http;
pub mod key;
pub mod proxy;
pub mod signal;
pub mod url;

/// Pool connection IDs are 4 random bytes, written as 8 lowercase hex digits in signals.
pub type PoolId = [u8; 4];

/// The control channel's pool ID.
pub const CONTROL_ID: PoolId = [0; 4];

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

/// `sha256:` + uppercase colon-separated SHA-256 of a certificate's DER.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    let d = Sha256::digest(der);
    let hex: Vec<String> = d.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha256:{}", hex.join(":"))
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
    fn fingerprint_format() {
        let f = fingerprint(b"abc");
        assert!(f.starts_with("sha256:BA:78:16:BF:"), "{f}");
        assert_eq!(f.len(), 7 + 32 * 3 - 1);
    }
}
