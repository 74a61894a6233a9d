//! Control-channel signals: one line each, `base64(json XOR key) + "\n"`.
//!
//! The JSON object has its fields in the order `action`, `remote`, `id`, `fp`, empty
//! ones omitted. Decoding is lenient about order and unknown fields (a peer may be
//! newer), strict about size and encoding.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

/// Longest signal line accepted (base64 text, without the newline).
pub const MAX_LINE: usize = 4096;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub action: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub remote: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub id: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub fp: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("signal line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("signal is not valid base64")]
    Base64,
    #[error("signal is not a JSON object after un-XORing (wrong tunnel key?): {0}")]
    Json(String),
}

impl Signal {
    pub fn action(action: &str) -> Self {
        Self {
            action: action.into(),
            ..Default::default()
        }
    }

    /// The line to send, including the trailing newline.
    pub fn encode(&self, key: &str) -> String {
        let json = serde_json::to_vec(self).unwrap_or_default();
        let mut line = STANDARD.encode(xor(&json, key.as_bytes()));
        line.push('\n');
        line
    }

    /// Decodes one line (with or without its newline).
    pub fn decode(line: &str, key: &str) -> Result<Signal, SignalError> {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.len() > MAX_LINE {
            return Err(SignalError::TooLong);
        }
        let bytes = STANDARD
            .decode(line.trim())
            .map_err(|_| SignalError::Base64)?;
        let json = xor(&bytes, key.as_bytes());
        serde_json::from_slice(&json).map_err(|e| SignalError::Json(e.to_string()))
    }
}

fn xor(data: &[u8], key: &[u8]) -> Vec<u8> {
    if key.is_empty() {
        return data.to_vec();
    }
    data.iter()
        .enumerate()
        .map(|(i, b)| b ^ key[i % key.len()])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn documented_examples() {
        assert_eq!(
            Signal::action("ping").encode("secretkey"),
            "CEcCEREdBAtbSUcTGwsTSRg=\n"
        );
        let launch = Signal {
            action: "tcp".into(),
            remote: "127.0.0.1:55344".into(),
            id: "2430ac70".into(),
            fp: String::new(),
        };
        let line =
            "CEcCEREdBAtbSUcXERVWR0cLFggMBgBWUUdIQVJNQktERVRDRlBQRlFWR0cQF0dZUFdAWFUYEFJTUBg=";
        assert_eq!(launch.encode("secretkey"), format!("{line}\n"));
        assert_eq!(Signal::decode(line, "secretkey").unwrap(), launch);
        assert_eq!(
            Signal::decode("CEcCEREdBAtbSUcTGwsTSRg=\n", "secretkey").unwrap(),
            Signal::action("ping")
        );
    }

    #[test]
    fn field_order_and_omission() {
        let s = Signal {
            action: "verify".into(),
            remote: String::new(),
            id: "0a0b0c0d".into(),
            fp: "sha256:AB".into(),
        };
        let json =
            String::from_utf8(xor(&STANDARD.decode(s.encode("k").trim()).unwrap(), b"k")).unwrap();
        assert_eq!(
            json,
            r#"{"action":"verify","id":"0a0b0c0d","fp":"sha256:AB"}"#
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        assert_eq!(
            Signal::decode("not base64!!", "k"),
            Err(SignalError::Base64)
        );
        assert!(matches!(
            Signal::decode("CEcCEREdBAtbSUcTGwsTSRg=", "wrongkey"),
            Err(SignalError::Json(_))
        ));
        assert_eq!(
            Signal::decode(&"A".repeat(MAX_LINE + 4), "k"),
            Err(SignalError::TooLong)
        );
        // Unknown fields and another order are fine.
        let odd = STANDARD.encode(xor(br#"{"id":"00000001","action":"pong","extra":1}"#, b"k"));
        let s = Signal::decode(&odd, "k").unwrap();
        assert_eq!((s.action.as_str(), s.id.as_str()), ("pong", "00000001"));
    }

    proptest! {
        #[test]
        fn round_trip(action in "[a-z]{0,8}", remote in "[0-9.:]{0,21}", key in "[ -~]{1,16}") {
            let s = Signal { action, remote, id: "deadbeef".into(), fp: String::new() };
            prop_assert_eq!(Signal::decode(&s.encode(&key), &key).unwrap(), s);
        }

        #[test]
        fn arbitrary_lines_never_panic(line in "\\PC{0,200}", key in "[ -~]{0,8}") {
            let _ = Signal::decode(&line, &key);
        }
    }
}
