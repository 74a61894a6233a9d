//! Hole-punching probes for manual mode: tiny UDP packets both sides send to every
//! candidate pair until one answers.
//!
//! ```text
//! 0x00 'p' 'h' '1' | type u8 | session_id [16] | nonce u64 (big-endian)
//! ```
//! The first byte has QUIC's fixed bit clear, so a stray probe reaching the QUIC
//! endpoint after the handover is dropped as "not QUIC".

pub const PROBE_LEN: usize = 4 + 1 + 16 + 8;
const MAGIC: [u8; 4] = [0x00, b'p', b'h', b'1'];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeType {
    /// "Can you hear me?" Sent to every candidate.
    Probe = 1,
    /// "I heard you": sent back to where a probe came from, echoing its nonce.
    Ack = 2,
    /// The client's choice of pair; the server runs QUIC on the socket that gets it.
    Select = 3,
    /// The server confirms the choice.
    SelectAck = 4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Probe {
    pub kind: ProbeType,
    pub session_id: [u8; 16],
    pub nonce: u64,
}

impl Probe {
    pub fn encode(&self) -> [u8; PROBE_LEN] {
        let mut out = [0u8; PROBE_LEN];
        out[..4].copy_from_slice(&MAGIC);
        out[4] = self.kind as u8;
        out[5..21].copy_from_slice(&self.session_id);
        out[21..].copy_from_slice(&self.nonce.to_be_bytes());
        out
    }

    /// Decodes a probe of this session; anything else (STUN, QUIC, noise, other
    /// sessions) is `None`.
    pub fn decode(buf: &[u8], session_id: &[u8; 16]) -> Option<Probe> {
        if buf.len() != PROBE_LEN || buf[..4] != MAGIC || &buf[5..21] != session_id {
            return None;
        }
        let kind = match buf[4] {
            1 => ProbeType::Probe,
            2 => ProbeType::Ack,
            3 => ProbeType::Select,
            4 => ProbeType::SelectAck,
            _ => return None,
        };
        let nonce = u64::from_be_bytes(buf[21..29].try_into().ok()?);
        Some(Probe {
            kind,
            session_id: *session_id,
            nonce,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip_and_session_filter() {
        let p = Probe {
            kind: ProbeType::Select,
            session_id: [3; 16],
            nonce: 42,
        };
        let b = p.encode();
        assert_eq!(b[0] & 0x40, 0, "QUIC fixed bit must be clear");
        assert_eq!(Probe::decode(&b, &[3; 16]), Some(p));
        assert_eq!(Probe::decode(&b, &[4; 16]), None);
        assert_eq!(Probe::decode(&b[..10], &[3; 16]), None);
    }

    proptest! {
        #[test]
        fn noise_is_never_a_probe(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Some(p) = Probe::decode(&bytes, &[0; 16]) {
                prop_assert_eq!(&p.encode()[..], &bytes[..]);
            }
        }
    }
}
