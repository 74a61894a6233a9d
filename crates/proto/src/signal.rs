//! Manual mode's copy-paste signaling: the client's offer and the server's answer.
//!
//! Each is one armored, checksummed, versioned text blob:
//! ```text
//! -----BEGIN PORTHOLE OFFER-----
//! AQ... (base64, 64 columns)
//! -----END PORTHOLE OFFER-----
//! ```
//! The payload is `version (1 byte) || postcard(Signal) || crc32_be(version || postcard)`.
//! Surrounding text, indentation and mail quoting (`> `) are tolerated, so a blob
//! survives chat windows and emails; truncation, typos and tampering are caught by the
//! checksum, and a stale blob by its expiry.

use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

pub const SIGNAL_VERSION: u8 = 1;
pub const MAX_CANDIDATES: usize = 64;
/// Longest armored blob accepted.
pub const MAX_BLOB_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SignalKind {
    Offer,
    Answer,
}

impl SignalKind {
    fn label(self) -> &'static str {
        match self {
            SignalKind::Offer => "OFFER",
            SignalKind::Answer => "ANSWER",
        }
    }
}

/// How the sender's NAT maps its UDP socket, as seen by STUN.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatKind {
    /// No STUN answer (or STUN disabled): nothing known.
    Unknown,
    /// The mapped address is the local address: no NAT.
    Open,
    /// The same public address for every destination ("cone").
    EndpointIndependent,
    /// A different public port per destination ("symmetric").
    EndpointDependent,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CandidateKind {
    /// A local interface address.
    Host,
    /// The public address a STUN server saw.
    ServerReflexive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub addr: SocketAddr,
    pub kind: CandidateKind,
}

/// What each side tells the other.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signal {
    pub kind: SignalKind,
    /// Random per offer; the answer repeats it, probes carry it.
    pub session_id: [u8; 16],
    /// Unix seconds after which the blob must be refused.
    pub expires_unix: u64,
    /// SHA-256 of the sender's self-signed certificate (DER): the peer pins it.
    pub fingerprint: [u8; 32],
    pub nat: NatKind,
    pub candidates: Vec<Candidate>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error(
        "no `-----BEGIN PORTHOLE {0}-----` line found: paste the whole blob, both marker lines included"
    )]
    NoBegin(&'static str),
    #[error(
        "the blob has no `-----END PORTHOLE {0}-----` line: it was cut off; copy it again, whole"
    )]
    NoEnd(&'static str),
    #[error("this is an {found}, but an {expected} is expected here ({hint})")]
    WrongKind {
        found: &'static str,
        expected: &'static str,
        hint: &'static str,
    },
    #[error("the blob is not valid base64 (a character was changed or lost): copy it again, whole")]
    Base64,
    #[error("the blob is too short: it was cut off; copy it again, whole")]
    Truncated,
    #[error("checksum mismatch: the blob was truncated, mistyped or altered; copy it again, whole")]
    Checksum,
    #[error(
        "made by a porthole speaking signaling version {0}, this one speaks {SIGNAL_VERSION}: use the same porthole version on both sides"
    )]
    Version(u8),
    #[error("the blob is malformed: {0}")]
    Malformed(String),
    #[error("the blob expired {0} s ago: create a new offer and answer")]
    Expired(u64),
    #[error("the blob is too large")]
    TooLarge,
    #[error("too many candidates ({0}, at most {MAX_CANDIDATES})")]
    TooManyCandidates(usize),
}

impl Signal {
    /// The armored text form.
    pub fn encode(&self) -> Result<String, SignalError> {
        if self.candidates.len() > MAX_CANDIDATES {
            return Err(SignalError::TooManyCandidates(self.candidates.len()));
        }
        let mut payload = vec![SIGNAL_VERSION];
        payload
            .extend(postcard::to_stdvec(self).map_err(|e| SignalError::Malformed(e.to_string()))?);
        let crc = crc32fast::hash(&payload);
        payload.extend_from_slice(&crc.to_be_bytes());
        let b64 = STANDARD.encode(&payload);
        let label = self.kind.label();
        let mut out = format!("-----BEGIN PORTHOLE {label}-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(&format!("-----END PORTHOLE {label}-----\n"));
        Ok(out)
    }

    /// Finds and decodes a blob of `expected` kind in `text`, refusing it after its expiry.
    pub fn decode(text: &str, expected: SignalKind, now_unix: u64) -> Result<Signal, SignalError> {
        if text.len() > MAX_BLOB_LEN {
            return Err(SignalError::TooLarge);
        }
        let lines: Vec<&str> = text
            .lines()
            .map(|l| {
                l.trim_start_matches(|c: char| c == '>' || c.is_whitespace())
                    .trim_end()
            })
            .collect();
        let other = match expected {
            SignalKind::Offer => SignalKind::Answer,
            SignalKind::Answer => SignalKind::Offer,
        };
        let begin = |k: SignalKind| format!("-----BEGIN PORTHOLE {}-----", k.label());
        let Some(start) = lines.iter().position(|l| *l == begin(expected)) else {
            if lines.iter().any(|l| *l == begin(other)) {
                return Err(SignalError::WrongKind {
                    found: kind_name(other),
                    expected: kind_name(expected),
                    hint: match expected {
                        SignalKind::Offer => {
                            "an answer goes to the client; the server reads the client's offer"
                        }
                        SignalKind::Answer => {
                            "an offer goes to the server; the client reads the server's answer"
                        }
                    },
                });
            }
            return Err(SignalError::NoBegin(expected.label()));
        };
        let end_line = format!("-----END PORTHOLE {}-----", expected.label());
        let Some(len) = lines[start + 1..].iter().position(|l| *l == end_line) else {
            return Err(SignalError::NoEnd(expected.label()));
        };
        let body: String = lines[start + 1..start + 1 + len].concat();
        let payload = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| SignalError::Base64)?;
        if payload.len() < 1 + 4 {
            return Err(SignalError::Truncated);
        }
        let (data, crc) = payload.split_at(payload.len() - 4);
        if crc32fast::hash(data).to_be_bytes() != crc {
            return Err(SignalError::Checksum);
        }
        if data[0] != SIGNAL_VERSION {
            return Err(SignalError::Version(data[0]));
        }
        let (signal, rest): (Signal, _) = postcard::take_from_bytes(&data[1..])
            .map_err(|e| SignalError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(SignalError::Malformed("trailing bytes".into()));
        }
        if signal.kind != expected {
            return Err(SignalError::Malformed("marker and content disagree".into()));
        }
        if signal.candidates.len() > MAX_CANDIDATES {
            return Err(SignalError::TooManyCandidates(signal.candidates.len()));
        }
        if now_unix > signal.expires_unix {
            return Err(SignalError::Expired(now_unix - signal.expires_unix));
        }
        Ok(signal)
    }
}

fn kind_name(k: SignalKind) -> &'static str {
    match k {
        SignalKind::Offer => "offer",
        SignalKind::Answer => "answer",
    }
}

impl fmt::Display for NatKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NatKind::Unknown => "unknown",
            NatKind::Open => "none (public address)",
            NatKind::EndpointIndependent => "endpoint-independent (cone)",
            NatKind::EndpointDependent => "endpoint-dependent (symmetric)",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(kind: SignalKind) -> Signal {
        Signal {
            kind,
            session_id: [7; 16],
            expires_unix: 1_000,
            fingerprint: [9; 32],
            nat: NatKind::EndpointIndependent,
            candidates: vec![
                Candidate {
                    addr: "192.168.1.5:40000".parse().unwrap(),
                    kind: CandidateKind::Host,
                },
                Candidate {
                    addr: "203.0.113.9:51000".parse().unwrap(),
                    kind: CandidateKind::ServerReflexive,
                },
            ],
        }
    }

    #[test]
    fn round_trip_with_noise_and_quoting() {
        let s = sample(SignalKind::Offer);
        let text = s.encode().unwrap();
        assert!(
            text.lines()
                .all(|l| l.len() <= 64 || l.starts_with("-----"))
        );
        let noisy = format!(
            "hi, here it is:\n\n{}\nthanks",
            text.lines()
                .map(|l| format!(">  {l}  "))
                .collect::<Vec<_>>()
                .join("\n")
        );
        assert_eq!(Signal::decode(&noisy, SignalKind::Offer, 999).unwrap(), s);
    }

    #[test]
    fn truncation_typo_and_tampering_are_detected() {
        let text = sample(SignalKind::Answer).encode().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Missing END line.
        let cut = lines[..lines.len() - 1].join("\n");
        assert!(matches!(
            Signal::decode(&cut, SignalKind::Answer, 0),
            Err(SignalError::NoEnd(_))
        ));
        // A body line dropped.
        let mut dropped = lines.clone();
        dropped.remove(1);
        let e = Signal::decode(&dropped.join("\n"), SignalKind::Answer, 0).unwrap_err();
        assert!(
            matches!(
                e,
                SignalError::Base64 | SignalError::Checksum | SignalError::Truncated
            ),
            "{e}"
        );
        // One character changed.
        let mut body: Vec<u8> = lines[1].bytes().collect();
        body[10] = if body[10] == b'A' { b'B' } else { b'A' };
        let mut typo = lines.clone();
        let changed = String::from_utf8(body).unwrap();
        typo[1] = &changed;
        let e = Signal::decode(&typo.join("\n"), SignalKind::Answer, 0).unwrap_err();
        assert!(
            matches!(e, SignalError::Checksum | SignalError::Base64),
            "{e}"
        );
    }

    #[test]
    fn expiry_kind_and_version_are_checked() {
        let text = sample(SignalKind::Offer).encode().unwrap();
        assert_eq!(
            Signal::decode(&text, SignalKind::Offer, 1_060).unwrap_err(),
            SignalError::Expired(60)
        );
        let e = Signal::decode(&text, SignalKind::Answer, 0).unwrap_err();
        assert!(matches!(e, SignalError::WrongKind { .. }), "{e}");
        assert!(e.to_string().contains("offer"));
        assert!(matches!(
            Signal::decode("nothing here", SignalKind::Offer, 0),
            Err(SignalError::NoBegin(_))
        ));
        // A future version, correctly checksummed.
        let mut payload = vec![2u8];
        payload.extend(postcard::to_stdvec(&sample(SignalKind::Offer)).unwrap());
        let crc = crc32fast::hash(&payload);
        payload.extend_from_slice(&crc.to_be_bytes());
        let blob = format!(
            "-----BEGIN PORTHOLE OFFER-----\n{}\n-----END PORTHOLE OFFER-----\n",
            STANDARD.encode(&payload)
        );
        assert_eq!(
            Signal::decode(&blob, SignalKind::Offer, 0).unwrap_err(),
            SignalError::Version(2)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
            let _ = Signal::decode(&s, SignalKind::Offer, 0);
            let framed = format!("-----BEGIN PORTHOLE OFFER-----\n{s}\n-----END PORTHOLE OFFER-----");
            let _ = Signal::decode(&framed, SignalKind::Offer, 0);
        }

        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut payload = bytes.clone();
            let crc = crc32fast::hash(&payload);
            payload.extend_from_slice(&crc.to_be_bytes());
            let blob = format!("-----BEGIN PORTHOLE OFFER-----\n{}\n-----END PORTHOLE OFFER-----", STANDARD.encode(&payload));
            let _ = Signal::decode(&blob, SignalKind::Offer, 0);
        }
    }
}
