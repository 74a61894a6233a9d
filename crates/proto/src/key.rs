//! The server's identity: a 32-byte Ed25519 secret (the iroh endpoint key) and the
//! EndpointId (public key) derived from it.
//!
//! Key file format (text, created 0600 by the binary):
//! ```text
//! # porthole server secret key (Ed25519). Keep this file private.
//! # created: 2026-11-22T10:00:00Z
//! # endpoint-id: 6f1c...e2
//! <standard base64 of the 32 secret bytes>
//! ```
//! Lines starting with `#` and blank lines are ignored, so a bare base64 line (as in
//! the `PORTHOLE_SECRET` variable) parses too.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use crate::token::RandomError;

/// Length of a secret key and of an EndpointId in bytes.
pub const KEY_LEN: usize = 32;

/// An Ed25519 secret key. Debug output is masked.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct SecretKey([u8; KEY_LEN]);

/// The public identity of an endpoint: its Ed25519 public key.
///
/// Displayed as 64 lowercase hex digits, exactly as iroh prints an `EndpointId`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EndpointId([u8; KEY_LEN]);

/// Why a key file (or `PORTHOLE_SECRET`) could not be read. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyFileError {
    #[error("no key found: expected one base64 line (lines starting with '#' are comments)")]
    Empty,
    #[error("more than one key line (line {line}): a key file holds exactly one base64 line")]
    MultipleKeys { line: usize },
    #[error("line {line} is not valid base64")]
    Base64 { line: usize },
    #[error("the key is {got} bytes long, expected {KEY_LEN}")]
    Length { got: usize },
}

/// Why a string is not an EndpointId.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointIdError {
    #[error("an EndpointId is 64 hex digits (or 52 base32 characters), got {0} characters")]
    Length(usize),
    #[error("an EndpointId is 64 hex digits: found a character that is not hex")]
    Hex,
    #[error("an EndpointId in base32 may only contain a-z and 2-7")]
    Base32,
    #[error("these 32 bytes are not a valid Ed25519 public key")]
    NotAPoint,
}

impl SecretKey {
    /// Draws a fresh secret from the OS CSPRNG.
    pub fn generate() -> Result<Self, RandomError> {
        let mut bytes = [0u8; KEY_LEN];
        getrandom::fill(&mut bytes).map_err(RandomError)?;
        Ok(Self(bytes))
    }

    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw secret. Treat as secret; used to hand the key to the transport.
    pub fn to_bytes(&self) -> [u8; KEY_LEN] {
        self.0
    }

    /// The EndpointId (Ed25519 public key) of this secret.
    pub fn endpoint_id(&self) -> EndpointId {
        let signing = ed25519_dalek::SigningKey::from_bytes(&self.0);
        EndpointId(signing.verifying_key().to_bytes())
    }

    /// Parses a key file's text, or a bare base64 line.
    pub fn parse(text: &str) -> Result<Self, KeyFileError> {
        let mut found: Option<Zeroizing<Vec<u8>>> = None;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if found.is_some() {
                return Err(KeyFileError::MultipleKeys { line: i + 1 });
            }
            let decoded = STANDARD
                .decode(line)
                .map_err(|_| KeyFileError::Base64 { line: i + 1 })?;
            found = Some(Zeroizing::new(decoded));
        }
        let bytes = found.ok_or(KeyFileError::Empty)?;
        let array: [u8; KEY_LEN] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KeyFileError::Length { got: bytes.len() })?;
        Ok(Self(array))
    }

    /// Renders the key file text. `created_at` is an RFC 3339 timestamp supplied by the caller.
    pub fn to_file_text(&self, created_at: &str) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "# porthole server secret key (Ed25519, the iroh endpoint key). Keep this file private.\n\
             # created: {created_at}\n\
             # endpoint-id: {}\n\
             {}\n",
            self.endpoint_id(),
            STANDARD.encode(self.0)
        ))
    }

    /// A client key file: the same format, its id named as what servers list.
    pub fn to_client_file_text(&self, created_at: &str) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "# porthole client key (Ed25519: the client proves it to servers that list its id). Keep this file private.\n\
             # created: {created_at}\n\
             # client-id: {}\n\
             {}\n",
            self.endpoint_id(),
            STANDARD.encode(self.0)
        ))
    }
}

/// The TLS exporter label a client key proof signs ([`SecretKey::prove`]).
pub const PROOF_EXPORTER_LABEL: &[u8] = b"EXPORTER-porthole-client-key";
/// What is signed: this context, then the 32-byte exporter value.
const PROOF_CONTEXT: &[u8] = b"porthole client key proof v1\0";

impl SecretKey {
    /// Proves possession of this key on one connection: a signature over the
    /// connection's TLS exporter value (`PROOF_EXPORTER_LABEL`, 32 bytes), which no
    /// other connection shares.
    pub fn prove(&self, exporter: &[u8; 32]) -> crate::message::KeyProof {
        use ed25519_dalek::Signer as _;
        let signing = ed25519_dalek::SigningKey::from_bytes(&self.0);
        let mut msg = PROOF_CONTEXT.to_vec();
        msg.extend_from_slice(exporter);
        crate::message::KeyProof {
            key: signing.verifying_key().to_bytes(),
            signature: signing.sign(&msg).to_bytes().to_vec(),
        }
    }
}

impl crate::message::KeyProof {
    /// The client id the proof was made with, if it is valid for `exporter` (strict
    /// Ed25519 verification: no malleable or small-order keys).
    pub fn verify(&self, exporter: &[u8; 32]) -> Option<EndpointId> {
        let key = ed25519_dalek::VerifyingKey::from_bytes(&self.key).ok()?;
        let signature: [u8; 64] = self.signature.as_slice().try_into().ok()?;
        let mut msg = PROOF_CONTEXT.to_vec();
        msg.extend_from_slice(exporter);
        key.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&signature))
            .ok()?;
        Some(EndpointId(self.key))
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

impl EndpointId {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, EndpointIdError> {
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|_| EndpointIdError::NotAPoint)?;
        Ok(Self(bytes))
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The first 10 hex digits, for logs.
    pub fn short(&self) -> String {
        data_encoding::HEXLOWER.encode(&self.0[..5])
    }
}

impl fmt::Display for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&data_encoding::HEXLOWER.encode(&self.0))
    }
}

impl fmt::Debug for EndpointId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EndpointId({self})")
    }
}

impl std::str::FromStr for EndpointId {
    type Err = EndpointIdError;

    /// Accepts iroh's 64-digit hex form and the older 52-character base32 form.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let mut bytes = [0u8; KEY_LEN];
        match s.len() {
            64 => {
                let lower = s.to_ascii_lowercase();
                data_encoding::HEXLOWER
                    .decode_mut(lower.as_bytes(), &mut bytes)
                    .map_err(|_| EndpointIdError::Hex)?;
            }
            52 => {
                let upper = s.to_ascii_uppercase();
                data_encoding::BASE32_NOPAD
                    .decode_mut(upper.as_bytes(), &mut bytes)
                    .map_err(|_| EndpointIdError::Base32)?;
            }
            n => return Err(EndpointIdError::Length(n)),
        }
        Self::from_bytes(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn file_round_trip_and_id_in_comment() {
        let key = SecretKey::generate().unwrap();
        let text = key.to_file_text("2026-11-22T00:00:00Z");
        let back = SecretKey::parse(&text).unwrap();
        assert_eq!(back.to_bytes(), key.to_bytes());
        assert!(text.contains(&format!("# endpoint-id: {}", key.endpoint_id())));
        assert!(text.lines().all(|l| l.starts_with('#') || l.len() == 44));
    }

    #[test]
    fn a_proof_holds_for_its_exporter_only() {
        let key = SecretKey::generate().unwrap();
        let proof = key.prove(&[1; 32]);
        assert_eq!(proof.verify(&[1; 32]), Some(key.endpoint_id()));
        assert_eq!(
            proof.verify(&[2; 32]),
            None,
            "another connection's exporter"
        );
        let mut forged = proof.clone();
        forged.key = SecretKey::generate().unwrap().endpoint_id().0;
        assert_eq!(forged.verify(&[1; 32]), None, "someone else's key");
        let mut short = proof;
        short.signature.pop();
        assert_eq!(short.verify(&[1; 32]), None);
    }

    #[test]
    fn bare_base64_parses() {
        let key = SecretKey::from_bytes([7; 32]);
        let bare = STANDARD.encode([7u8; 32]);
        assert_eq!(SecretKey::parse(&bare).unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn errors_are_specific_and_leak_nothing() {
        let err = |s: &str| SecretKey::parse(s).unwrap_err();
        assert_eq!(err("# only\n\n"), KeyFileError::Empty);
        let two = format!(
            "{}\n{}\n",
            STANDARD.encode([1u8; 32]),
            STANDARD.encode([2u8; 32])
        );
        assert_eq!(err(&two), KeyFileError::MultipleKeys { line: 2 });
        assert_eq!(err("#c\n%%%\n"), KeyFileError::Base64 { line: 2 });
        assert_eq!(
            err(&STANDARD.encode([1u8; 16])),
            KeyFileError::Length { got: 16 }
        );
        assert_eq!(
            format!("{:?}", SecretKey::from_bytes([9; 32])),
            "SecretKey(<redacted>)"
        );
    }

    #[test]
    fn known_ed25519_vector() {
        // RFC 8032 test 1.
        let secret = data_encoding::HEXLOWER
            .decode(b"9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
            .unwrap();
        let key = SecretKey::from_bytes(secret.try_into().unwrap());
        assert_eq!(
            key.endpoint_id().to_string(),
            "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a"
        );
    }

    #[test]
    fn endpoint_id_parses_hex_and_base32() {
        let id = SecretKey::from_bytes([3; 32]).endpoint_id();
        assert_eq!(id.to_string().parse::<EndpointId>().unwrap(), id);
        assert_eq!(
            id.to_string().to_uppercase().parse::<EndpointId>().unwrap(),
            id
        );
        let b32 = data_encoding::BASE32_NOPAD
            .encode(id.as_bytes())
            .to_lowercase();
        assert_eq!(b32.parse::<EndpointId>().unwrap(), id);
        assert_eq!("abc".parse::<EndpointId>(), Err(EndpointIdError::Length(3)));
        assert_eq!(
            "z".repeat(64).parse::<EndpointId>(),
            Err(EndpointIdError::Hex)
        );
    }

    proptest! {
        #[test]
        fn parse_never_panics(s in "\\PC{0,200}") {
            let _ = SecretKey::parse(&s);
            let _ = s.parse::<EndpointId>();
        }
    }
}
