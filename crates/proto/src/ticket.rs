//! Server tickets: one string that names a server (EndpointId), its relay URLs and its
//! direct addresses, so a client needs a single copy-paste instead of three flags.
//!
//! Form: `pt1` + lowercase base32 (no padding) of `postcard(TicketData) || crc32`.
//! The checksum turns a truncated or mistyped ticket into a clear error.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::key::{EndpointId, KEY_LEN};

pub const PREFIX: &str = "pt1";
/// Longest ticket text accepted.
pub const MAX_TICKET_LEN: usize = 2048;
pub const MAX_RELAYS: usize = 8;
pub const MAX_ADDRS: usize = 32;
pub const MAX_URL_LEN: usize = 256;

/// What a ticket carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ticket {
    pub endpoint_id: EndpointId,
    pub relay_urls: Vec<String>,
    pub direct_addrs: Vec<SocketAddr>,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    id: [u8; KEY_LEN],
    relays: Vec<String>,
    addrs: Vec<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TicketError {
    #[error("a ticket starts with {PREFIX:?}; this does not look like a porthole ticket")]
    Prefix,
    #[error("ticket is longer than {MAX_TICKET_LEN} characters")]
    TooLong,
    #[error("ticket contains characters outside a-z and 2-7 (copy it again, whole)")]
    Encoding,
    #[error("ticket is truncated (copy it again, whole)")]
    Truncated,
    #[error("ticket checksum mismatch: it was truncated or mistyped (copy it again, whole)")]
    Checksum,
    #[error("ticket is malformed: {0}")]
    Malformed(String),
    #[error("ticket has too many relays or addresses")]
    TooMany,
}

impl Ticket {
    fn check_limits(&self) -> Result<(), TicketError> {
        if self.relay_urls.len() > MAX_RELAYS
            || self.direct_addrs.len() > MAX_ADDRS
            || self.relay_urls.iter().any(|u| u.len() > MAX_URL_LEN)
        {
            return Err(TicketError::TooMany);
        }
        Ok(())
    }

    /// Encodes the ticket; fails only if it exceeds the limits.
    pub fn encode(&self) -> Result<String, TicketError> {
        self.check_limits()?;
        let wire = Wire {
            id: *self.endpoint_id.as_bytes(),
            relays: self.relay_urls.clone(),
            addrs: self.direct_addrs.clone(),
        };
        let mut bytes =
            postcard::to_stdvec(&wire).map_err(|e| TicketError::Malformed(e.to_string()))?;
        let crc = crc32fast::hash(&bytes);
        bytes.extend_from_slice(&crc.to_be_bytes());
        let text = format!(
            "{PREFIX}{}",
            data_encoding::BASE32_NOPAD
                .encode(&bytes)
                .to_ascii_lowercase()
        );
        if text.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong);
        }
        Ok(text)
    }
}

impl fmt::Display for Ticket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.encode() {
            Ok(t) => f.write_str(&t),
            Err(_) => f.write_str("<ticket over limits>"),
        }
    }
}

impl std::str::FromStr for Ticket {
    type Err = TicketError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() > MAX_TICKET_LEN {
            return Err(TicketError::TooLong);
        }
        let body = s.strip_prefix(PREFIX).ok_or(TicketError::Prefix)?;
        let bytes = data_encoding::BASE32_NOPAD
            .decode(body.to_ascii_uppercase().as_bytes())
            .map_err(|e| match e.kind {
                data_encoding::DecodeKind::Length | data_encoding::DecodeKind::Trailing => {
                    TicketError::Truncated
                }
                _ => TicketError::Encoding,
            })?;
        if bytes.len() < 4 {
            return Err(TicketError::Checksum);
        }
        let (data, crc) = bytes.split_at(bytes.len() - 4);
        if crc32fast::hash(data).to_be_bytes() != crc {
            return Err(TicketError::Checksum);
        }
        let (wire, rest): (Wire, _) =
            postcard::take_from_bytes(data).map_err(|e| TicketError::Malformed(e.to_string()))?;
        if !rest.is_empty() {
            return Err(TicketError::Malformed("trailing bytes".into()));
        }
        let ticket = Ticket {
            endpoint_id: EndpointId::from_bytes(wire.id)
                .map_err(|e| TicketError::Malformed(e.to_string()))?,
            relay_urls: wire.relays,
            direct_addrs: wire.addrs,
        };
        ticket.check_limits()?;
        Ok(ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::SecretKey;
    use proptest::prelude::*;

    fn sample() -> Ticket {
        Ticket {
            endpoint_id: SecretKey::from_bytes([1; 32]).endpoint_id(),
            relay_urls: vec!["https://relay.example.com./".into()],
            direct_addrs: vec![
                "192.0.2.1:4433".parse().unwrap(),
                "[2001:db8::1]:4433".parse().unwrap(),
            ],
        }
    }

    #[test]
    fn round_trip() {
        let t = sample();
        let s = t.encode().unwrap();
        assert!(s.starts_with("pt1"));
        assert_eq!(s.parse::<Ticket>().unwrap(), t);
    }

    #[test]
    fn truncation_and_typos_are_detected() {
        let s = sample().encode().unwrap();
        for cut in 1..8 {
            let e = s[..s.len() - cut].parse::<Ticket>().unwrap_err();
            assert!(
                matches!(e, TicketError::Checksum | TicketError::Truncated),
                "{e}"
            );
        }
        let mut typo = s.clone().into_bytes();
        let i = typo.len() / 2;
        typo[i] = if typo[i] == b'a' { b'b' } else { b'a' };
        assert_eq!(
            String::from_utf8(typo)
                .unwrap()
                .parse::<Ticket>()
                .unwrap_err(),
            TicketError::Checksum
        );
        assert_eq!("xx".parse::<Ticket>().unwrap_err(), TicketError::Prefix);
        assert_eq!(
            "pt1!!".parse::<Ticket>().unwrap_err(),
            TicketError::Encoding
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in "pt1[a-z2-7]{0,300}") {
            let _ = s.parse::<Ticket>();
        }
    }
}
