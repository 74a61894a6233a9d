//! The tunnel key and the handshake's bearer token.
//!
//! Without a key in the URL, the key is the lowercase 8-hex-digit FNV-1a-32 hash of the
//! tunnel port written in decimal, so both ends derive the same one from the port. The
//! token is the lowercase hex HMAC-SHA256 of the EMPTY message, keyed with the key.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub fn fnv1a32(data: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in data {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// The key for a tunnel port when the URL names none.
pub fn key_for_port(port: u16) -> String {
    format!("{:08x}", fnv1a32(port.to_string().as_bytes()))
}

/// The bearer token a client sends.
pub fn bearer(key: &str) -> String {
    // HMAC accepts keys of any length; this cannot fail.
    let Ok(mac) = Hmac::<Sha256>::new_from_slice(key.as_bytes()) else {
        return String::new();
    };
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Checks a presented token against the key in constant time.
pub fn bearer_matches(key: &str, presented: &str) -> bool {
    bearer(key).as_bytes().ct_eq(presented.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_examples() {
        assert_eq!(key_for_port(10101), "e68be2b4");
        assert_eq!(
            bearer("secretkey"),
            "0ec2fbe02ea7c3eb6dd73c12eb2cffc9061280dfc8365cdcfa5241c6e3d9c9a7"
        );
        assert!(bearer_matches(
            "secretkey",
            "0ec2fbe02ea7c3eb6dd73c12eb2cffc9061280dfc8365cdcfa5241c6e3d9c9a7"
        ));
        assert!(!bearer_matches(
            "secretkey",
            "0ec2fbe02ea7c3eb6dd73c12eb2cffc9061280dfc8365cdcfa5241c6e3d9c9a8"
        ));
        assert!(!bearer_matches("secretkey", ""));
    }
}
