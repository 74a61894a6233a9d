//! Manual mode's copy-paste blobs: the client's offer and the server's answer.
//!
//! Each is one armored, checksummed, versioned text blob:
//! ```text
//! -----BEGIN PORTHOLE OFFER-----
//! AQ... (base64, 64 columns)
//! -----END PORTHOLE OFFER-----
//! ```
//! The payload is `version (1 byte) || postcard(Blob) || crc32_be(version || postcard)`.
//! Surrounding text, indentation and mail quoting (`> `) are tolerated, so a blob
//! survives chat windows and emails; truncation, typos and tampering are caught by the
//! checksum, and a stale blob by its expiry.

use std::fmt;
use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

pub const BLOB_VERSION: u8 = 1;
pub const MAX_CANDIDATES: usize = 64;
/// Longest armored blob accepted.
pub const MAX_BLOB_LEN: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BlobKind {
    Offer,
    Answer,
}

impl BlobKind {
    fn label(self) -> &'static str {
        match self {
            BlobKind::Offer => "OFFER",
            BlobKind::Answer => "ANSWER",
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
pub struct Blob {
    pub kind: BlobKind,
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
pub enum BlobError {
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
        "made by a porthole speaking offer/answer version {0}, this one speaks {BLOB_VERSION}: use the same porthole version on both sides"
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

impl Blob {
    /// The armored text form.
    pub fn encode(&self) -> Result<String, BlobError> {
        if self.candidates.len() > MAX_CANDIDATES {
            return Err(BlobError::TooManyCandidates(self.candidates.len()));
        }
        let mut payload = vec![BLOB_VERSION];
        payload.extend(postcard::to_stdvec(self).map_err(|e| BlobError::Malformed(e.to_string()))?);
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
    pub fn decode(text: &str, expected: BlobKind, now_unix: u64) -> Result<Blob, BlobError> {
        if text.len() > MAX_BLOB_LEN {
            return Err(BlobError::TooLarge);
        }
        let lines: Vec<&str> = text
            .lines()
            .map(|l| {
                l.trim_start_matches(|c: char| c == '>' || c.is_whitespace())
                    .trim_end()
            })
            .collect();
        let other = match expected {
            BlobKind::Offer => BlobKind::Answer,
            BlobKind::Answer => BlobKind::Offer,
        };
        let begin = |k: BlobKind| format!("-----BEGIN PORTHOLE {}-----", k.label());
        let Some(start) = lines.iter().position(|l| *l == begin(expected)) else {
            if lines.iter().any(|l| *l == begin(other)) {
                return Err(BlobError::WrongKind {
                    found: kind_name(other),
                    expected: kind_name(expected),
                    hint: match expected {
                        BlobKind::Offer => {
                            "an answer goes to the client; the server reads the client's offer"
                        }
                        BlobKind::Answer => {
                            "an offer goes to the server; the client reads the server's answer"
                        }
                    },
                });
            }
            return Err(BlobError::NoBegin(expected.label()));
        };
        let end_line = format!("-----END PORTHOLE {}-----", expected.label());
        let Some(len) = lines[start + 1..].iter().position(|l| *l == end_line) else {
            return Err(BlobError::NoEnd(expected.label()));
        };
        let body: String = lines[start + 1..start + 1 + len].concat();
        let payload = STANDARD
            .decode(body.as_bytes())
            .map_err(|_| BlobError::Base64)?;
        if payload.len() < 1 + 4 {
            return Err(BlobError::Truncated);
        }
        let (data, crc) = payload.split_at(payload.len() - 4);
        if crc32fast::hash(data).to_be_bytes() != crc {
            return Err(BlobError::Checksum);
        }
        if data[0] != BLOB_VERSION {
            return Err(BlobError::Version(data[0]));
        }
        let (blob, rest): (Blob, _) = postcard::take_from_bytes(&data[1..])
            .map_err(|e| BlobError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(BlobError::Malformed("trailing bytes".into()));
        }
        if blob.kind != expected {
            return Err(BlobError::Malformed("marker and content disagree".into()));
        }
        if blob.candidates.len() > MAX_CANDIDATES {
            return Err(BlobError::TooManyCandidates(blob.candidates.len()));
        }
        if now_unix > blob.expires_unix {
            return Err(BlobError::Expired(now_unix - blob.expires_unix));
        }
        Ok(blob)
    }
}

fn kind_name(k: BlobKind) -> &'static str {
    match k {
        BlobKind::Offer => "offer",
        BlobKind::Answer => "answer",
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
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A blob with a host and a server-reflexive candidate (also for the frames that
    /// carry blobs).
    pub(crate) fn sample(kind: BlobKind) -> Blob {
        Blob {
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
        let s = sample(BlobKind::Offer);
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
        assert_eq!(Blob::decode(&noisy, BlobKind::Offer, 999).unwrap(), s);
    }

    #[test]
    fn truncation_typo_and_tampering_are_detected() {
        let text = sample(BlobKind::Answer).encode().unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Missing END line.
        let cut = lines[..lines.len() - 1].join("\n");
        assert!(matches!(
            Blob::decode(&cut, BlobKind::Answer, 0),
            Err(BlobError::NoEnd(_))
        ));
        // A body line dropped.
        let mut dropped = lines.clone();
        dropped.remove(1);
        let e = Blob::decode(&dropped.join("\n"), BlobKind::Answer, 0).unwrap_err();
        assert!(
            matches!(
                e,
                BlobError::Base64 | BlobError::Checksum | BlobError::Truncated
            ),
            "{e}"
        );
        // One character changed.
        let mut body: Vec<u8> = lines[1].bytes().collect();
        body[10] = if body[10] == b'A' { b'B' } else { b'A' };
        let mut typo = lines.clone();
        let changed = String::from_utf8(body).unwrap();
        typo[1] = &changed;
        let e = Blob::decode(&typo.join("\n"), BlobKind::Answer, 0).unwrap_err();
        assert!(matches!(e, BlobError::Checksum | BlobError::Base64), "{e}");
    }

    #[test]
    fn expiry_kind_and_version_are_checked() {
        let text = sample(BlobKind::Offer).encode().unwrap();
        assert_eq!(
            Blob::decode(&text, BlobKind::Offer, 1_060).unwrap_err(),
            BlobError::Expired(60)
        );
        let e = Blob::decode(&text, BlobKind::Answer, 0).unwrap_err();
        assert!(matches!(e, BlobError::WrongKind { .. }), "{e}");
        assert!(e.to_string().contains("offer"));
        assert!(matches!(
            Blob::decode("nothing here", BlobKind::Offer, 0),
            Err(BlobError::NoBegin(_))
        ));
        // A future version, correctly checksummed.
        let mut payload = vec![2u8];
        payload.extend(postcard::to_stdvec(&sample(BlobKind::Offer)).unwrap());
        let crc = crc32fast::hash(&payload);
        payload.extend_from_slice(&crc.to_be_bytes());
        let blob = format!(
            "-----BEGIN PORTHOLE OFFER-----\n{}\n-----END PORTHOLE OFFER-----\n",
            STANDARD.encode(&payload)
        );
        assert_eq!(
            Blob::decode(&blob, BlobKind::Offer, 0).unwrap_err(),
            BlobError::Version(2)
        );
    }

    proptest! {
        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
            let _ = Blob::decode(&s, BlobKind::Offer, 0);
            let framed = format!("-----BEGIN PORTHOLE OFFER-----\n{s}\n-----END PORTHOLE OFFER-----");
            let _ = Blob::decode(&framed, BlobKind::Offer, 0);
        }

        #[test]
        fn arbitrary_payloads_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let mut payload = bytes.clone();
            let crc = crc32fast::hash(&payload);
            payload.extend_from_slice(&crc.to_be_bytes());
            let blob = format!("-----BEGIN PORTHOLE OFFER-----\n{}\n-----END PORTHOLE OFFER-----", STANDARD.encode(&payload));
            let _ = Blob::decode(&blob, BlobKind::Offer, 0);
        }
    }
}
