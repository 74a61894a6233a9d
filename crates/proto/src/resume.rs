//! Resumable sessions on the wire: the ticket a server gives, the claim a client makes
//! on a new connection, the headers of resumable streams and their acknowledgements.
//!
//! A resume is authenticated as strongly as a first connection and then some: the new
//! connection shows the same client credentials (token or key proof) and a
//! [`ResumeClaim`] whose proof is an HMAC, keyed with the session's secret, over this new
//! connection's TLS exporter value. A session id alone, a claim captured on another
//! connection (replay) or another client's credentials attach to nothing.
//!
//! Offsets count the bytes of one direction of one stream, plus one for its FIN, so a
//! FIN that arrived before the loss is acknowledged like data.

use std::fmt;

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// The TLS exporter label a resume proof is bound to (one connection, both ends).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-porthole-resume-v1";

/// Most acknowledgements in one [`Acks`] frame: an entry takes 20 bytes at most (two
/// varints), so a full frame stays under [`crate::frame::MAX_FRAME`].
pub const MAX_ACKS_PER_FRAME: usize = 200;

/// What a server gives a client whose session may resume: the session's id and secret.
/// The secret never travels again; the client proves it holds it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SessionTicket {
    pub session: [u8; 16],
    pub secret: [u8; 32],
}

impl fmt::Debug for SessionTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SessionTicket")
            .field("session", &SessionId(self.session))
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl SessionTicket {
    /// A fresh ticket from the operating system's random source.
    pub fn generate() -> Result<Self, crate::token::RandomError> {
        let mut t = Self {
            session: [0; 16],
            secret: [0; 32],
        };
        getrandom::fill(&mut t.session).map_err(crate::token::RandomError)?;
        getrandom::fill(&mut t.secret).map_err(crate::token::RandomError)?;
        Ok(t)
    }

    /// The claim that resumes this session on the connection whose exporter value (under
    /// [`EXPORTER_LABEL`]) is `exporter`.
    pub fn claim(&self, exporter: &[u8; 32]) -> ResumeClaim {
        ResumeClaim {
            session: self.session,
            proof: proof(&self.secret, &self.session, exporter),
        }
    }

    /// Whether `claim` proves this session's secret on the connection with `exporter`
    /// (constant time in the proof).
    pub fn verify(&self, claim: &ResumeClaim, exporter: &[u8; 32]) -> bool {
        let expected = proof(&self.secret, &self.session, exporter);
        let ids = self.session.ct_eq(&claim.session);
        let proofs = expected.ct_eq(&claim.proof);
        (ids & proofs).into()
    }
}

/// A session id, for logs: the first 8 bytes in hex (not a secret).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionId(pub [u8; 16]);

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0[..8] {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

fn proof(secret: &[u8; 32], session: &[u8; 16], exporter: &[u8; 32]) -> [u8; 32] {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(b"porthole resume v1\0");
    mac.update(session);
    mac.update(exporter);
    mac.finalize().into_bytes().into()
}

/// A client's claim, in its auth request on a new connection, to an earlier session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResumeClaim {
    pub session: [u8; 16],
    /// HMAC-SHA256 under the session's secret over the session id and this connection's
    /// exporter value.
    pub proof: [u8; 32],
}

/// First frame on a data stream of a resumable session (instead of
/// [`crate::message::StreamHeader`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResumableHeader {
    /// A stream that is not resumed if the connection is lost (a dynamic SOCKS / HTTP
    /// CONNECT stream): as [`crate::message::StreamHeader`] in other sessions.
    Plain { forward_id: u16 },
    /// The stream carrying the session's [`Acks`], both ways (one per connection).
    Acks,
    /// A new TCP connection of a forward, numbered by the client (numbers are never
    /// reused within a session). The user's bytes follow.
    Open { forward_id: u16, stream: u64 },
    /// The stream `stream` continues on this connection; the client has received
    /// `received` of the server's direction. The server answers [`ResumeReply`] first.
    Resume { stream: u64, received: u64 },
    /// The client offers to punch a direct path beside this (relayed) connection: a
    /// [`crate::blob::Blob`] offer follows, the server answers
    /// [`crate::upgrade::UpgradeAnswer`] (iroh mode's direct upgrade).
    Upgrade,
}

/// The server's first frame on a resumed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ResumeReply {
    /// The server has received `received` of the client's direction; its own bytes from
    /// the client's offset follow.
    Resumed { received: u64 },
    /// The server has no such stream (it ended, or the server restarted): the client
    /// resets the user's connection.
    Unknown,
}

/// Acknowledgements on a session's ack stream, each side to the other: for each stream,
/// how much of the peer's direction has been read (cumulative; repeated and reordered
/// values are harmless).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Acks {
    pub entries: Vec<(u64, u64)>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;
    use proptest::prelude::*;

    #[test]
    fn a_claim_holds_on_its_own_connection_only() {
        let ticket = SessionTicket::generate().unwrap();
        let (conn, other) = ([1u8; 32], [2u8; 32]);
        let claim = ticket.claim(&conn);
        assert!(ticket.verify(&claim, &conn));
        assert!(
            !ticket.verify(&claim, &other),
            "replayed on another connection"
        );

        let mut wrong_id = claim.clone();
        wrong_id.session[0] ^= 1;
        assert!(!ticket.verify(&wrong_id, &conn), "another session's id");
        let mut wrong_proof = claim.clone();
        wrong_proof.proof[31] ^= 1;
        assert!(!ticket.verify(&wrong_proof, &conn));

        let stranger = SessionTicket::generate().unwrap();
        assert!(
            !ticket.verify(&stranger.claim(&conn), &conn),
            "another secret"
        );
        let guessed = SessionTicket {
            session: ticket.session,
            secret: [0; 32],
        };
        assert!(!ticket.verify(&guessed.claim(&conn), &conn), "the id alone");
    }

    #[test]
    fn the_secret_stays_out_of_logs() {
        let ticket = SessionTicket {
            session: [0xab; 16],
            secret: [0xcd; 32],
        };
        let shown = format!("{ticket:?}");
        assert!(shown.contains("abababababababab"), "{shown}");
        assert!(!shown.to_lowercase().contains("cdcd"), "{shown}");
    }

    #[test]
    fn frames_round_trip() {
        fn rt<T: Serialize + serde::de::DeserializeOwned + PartialEq + fmt::Debug>(m: T) {
            let bytes = frame::encode(&m).unwrap();
            let (back, used) = frame::decode::<T>(&bytes).unwrap().unwrap();
            assert_eq!((back, used), (m, bytes.len()));
        }
        rt(ResumableHeader::Open {
            forward_id: 3,
            stream: 1 << 40,
        });
        rt(ResumableHeader::Resume {
            stream: 9,
            received: u64::MAX,
        });
        rt(ResumableHeader::Plain { forward_id: 2 });
        rt(ResumableHeader::Acks);
        rt(ResumableHeader::Upgrade);
        rt(ResumeReply::Resumed { received: 12345 });
        rt(ResumeReply::Unknown);
        rt(Acks {
            entries: vec![(u64::MAX, u64::MAX); MAX_ACKS_PER_FRAME],
        });
        let t = SessionTicket::generate().unwrap();
        rt(t.claim(&[7; 32]));
        rt(t);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = frame::decode::<ResumableHeader>(&bytes);
            let _ = frame::decode::<ResumeReply>(&bytes);
            let _ = frame::decode::<Acks>(&bytes);
            let _ = frame::decode::<ResumeClaim>(&bytes);
            let _ = frame::decode::<SessionTicket>(&bytes);
        }
    }
}
