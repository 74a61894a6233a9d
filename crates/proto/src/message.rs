//! Control messages of the porthole peer protocol (see docs/PROTOCOL.md).
//!
//! Sequence on the client's first bidirectional stream (the control stream):
//! 1. client -> [`AuthRequest`]; server -> [`AuthResponse`] or closes the connection
//!    with [`crate::close::CloseCode::AuthFailed`] / `AuthTimeout` / `UnsupportedVersion`.
//! 2. For each forward, client -> [`ControlRequest::OpenForward`];
//!    server -> [`ControlResponse`] accepted (with a forward id) or rejected (with a reason).
//!
//! Each TCP connection then rides its own bidirectional stream that starts with a
//! [`StreamHeader`] frame, immediately followed by the user's bytes.

use std::fmt;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::source::Source;

/// Longest free-text detail in a rejection (truncated by the sender).
pub const MAX_DETAIL_LEN: usize = 200;

/// First message on the control stream. The version comes first so that any future
/// layout can still be told apart and refused cleanly.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct AuthRequest {
    pub version: u16,
    /// The token as sent; the server parses and compares it in constant time.
    pub token: String,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("version", &self.version)
            .field("token", &"<redacted>")
            .finish()
    }
}

/// An auth request that may prove possession of a client key instead of (or besides)
/// showing a token: version [`crate::KEY_AUTH_VERSION`].
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct AuthRequestV2 {
    pub version: u16,
    pub token: Option<String>,
    #[zeroize(skip)]
    pub proof: Option<KeyProof>,
}

impl fmt::Debug for AuthRequestV2 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequestV2")
            .field("version", &self.version)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("proof", &self.proof)
            .finish()
    }
}

/// An auth request that asks for a resumable session ([`crate::RESUME_VERSION`]): the
/// credentials of [`AuthRequestV2`], and the session to resume, if any. The server
/// answers [`AuthResponse::Resumable`].
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct AuthRequestV3 {
    pub version: u16,
    pub token: Option<String>,
    #[zeroize(skip)]
    pub proof: Option<KeyProof>,
    #[zeroize(skip)]
    pub resume: Option<crate::resume::ResumeClaim>,
}

impl fmt::Debug for AuthRequestV3 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequestV3")
            .field("version", &self.version)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("proof", &self.proof)
            .field(
                "resume",
                &self
                    .resume
                    .as_ref()
                    .map(|c| crate::resume::SessionId(c.session)),
            )
            .finish()
    }
}

/// A client key's signature over this very connection's TLS exporter value
/// ([`crate::key::SecretKey::prove`]): a captured proof is worthless on any other
/// connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyProof {
    /// The Ed25519 public key (the client id).
    pub key: [u8; 32],
    /// 64 bytes (serde has no 64-byte arrays); any other length fails verification.
    pub signature: Vec<u8>,
}

/// An auth request of either version, as the server reads it.
#[derive(Debug)]
pub enum AnyAuthRequest {
    V1(AuthRequest),
    V2(AuthRequestV2),
    V3(AuthRequestV3),
    /// A version this side does not know: refuse it by its number.
    Unknown(u16),
}

impl AnyAuthRequest {
    /// Decodes a frame body by its leading version.
    pub fn decode(body: &[u8]) -> Result<Self, crate::frame::FrameError> {
        let (version, _) = postcard::take_from_bytes::<u16>(body)
            .map_err(|e| crate::frame::FrameError::Malformed(e.to_string()))?;
        Ok(match version {
            crate::PROTOCOL_VERSION => Self::V1(crate::frame::decode_body(body)?),
            crate::KEY_AUTH_VERSION => Self::V2(crate::frame::decode_body(body)?),
            crate::RESUME_VERSION => Self::V3(crate::frame::decode_body(body)?),
            v => Self::Unknown(v),
        })
    }
}

/// The server's answer to a valid token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthResponse {
    Accepted {
        version: u16,
        /// Per-connection limit on concurrent TCP streams plus UDP flows.
        max_streams: u32,
    },
    /// The answer to an [`AuthRequestV3`]: the session's ticket (the same one again when
    /// the session was resumed), and whether the claimed session was found. A client
    /// whose claim was not honoured resets the connections it kept for that session.
    Resumable {
        version: u16,
        max_streams: u32,
        ticket: crate::resume::SessionTicket,
        resumed: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// `source` travels as text (`tcp://host:port`) and is parsed by the server, so a
    /// malformed source is refused as that one forward, not as a broken connection.
    OpenForward { request_id: u32, source: String },
    /// Reverse forward: listen on the server's side and carry each visitor back to the
    /// client (streams the server opens, [`VisitorHeader`]; UDP flows as datagrams
    /// under the publish id). Servers that predate it close with `ProtocolError`.
    Publish {
        request_id: u32,
        publish: PublishRequest,
    },
}

/// What a client asks the server to publish.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishRequest {
    /// `tcp://IP:PORT` or `udp://IP:PORT`: where the server listens (parsed by the
    /// server, so a malformed one is refused as that one publish).
    pub bind: String,
    /// On a shared TCP port: the name this service answers to (TLS SNI, or the HTTP
    /// Host header); `None` holds the whole address.
    pub name: Option<String>,
    /// Each visitor's connection starts with a PROXY protocol header (a load balancer
    /// in front of the server), whose address is taken as the visitor's.
    pub accept_proxy_protocol: bool,
}

/// Ids the server gives published services start here: forwards use the ids below, so
/// a stream or datagram id alone says which of the two it belongs to.
pub const FIRST_PUBLISH_ID: u16 = 0x8000;

/// First frame on a stream the server opens for a visitor of a published service,
/// immediately followed by the visitor's bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct VisitorHeader {
    pub publish_id: u16,
    /// Who connected, as the server's listener saw it (or as a PROXY header named it).
    pub visitor: std::net::SocketAddr,
    /// The server's address the visitor connected to.
    pub local: std::net::SocketAddr,
}

impl ControlRequest {
    pub fn open_forward(request_id: u32, source: &Source) -> Self {
        ControlRequest::OpenForward {
            request_id,
            source: source.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlResponse {
    ForwardAccepted {
        request_id: u32,
        forward_id: u16,
    },
    /// A forward or a publish refused.
    ForwardRejected {
        request_id: u32,
        reason: RejectReason,
        detail: String,
    },
    PublishAccepted {
        request_id: u32,
        publish_id: u16,
    },
}

/// Why the server refused a forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// The server's allow-list for this protocol is empty.
    ProtocolDisabled,
    /// The address (or every address the name resolved to) is outside the allow-list.
    NotAllowed,
    /// The hostname did not resolve.
    ResolveFailed,
    /// This connection already has the maximum number of forwards.
    TooManyForwards,
    /// The source is not a valid `tcp://host:port` / `udp://host:port`.
    InvalidSource,
    /// A publish outside the server's bind rules (`--allowed-bind-tcp/udp`).
    BindNotAllowed,
    /// A publish of a name outside the server's rules (`--allowed-bind-name`).
    NameNotAllowed,
    /// Another client holds that address (or that name on it).
    AddressTaken,
    /// The server could not listen there (in use by another program, no permission).
    BindFailed,
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RejectReason::ProtocolDisabled => "protocol not enabled on the server",
            RejectReason::NotAllowed => "address not in the server's allow-list",
            RejectReason::ResolveFailed => "host name did not resolve on the server",
            RejectReason::TooManyForwards => "too many forwards on one connection",
            RejectReason::InvalidSource => "invalid source",
            RejectReason::BindNotAllowed => "address not in the server's bind rules",
            RejectReason::NameNotAllowed => "name not in the server's bind rules",
            RejectReason::AddressTaken => "another client publishes there",
            RejectReason::BindFailed => "the server cannot listen there",
        })
    }
}

/// First frame on every TCP data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub forward_id: u16,
}

/// The forward id of a dynamic stream (a SOCKS or HTTP CONNECT proxy on the client): its
/// header is followed by a [`DynamicTarget`] frame naming the destination, which the
/// server checks against the client's allow-list and answers with a [`DynamicReply`]
/// before any data. Servers that predate it reset the stream (unknown forward).
pub const DYNAMIC_FORWARD: u16 = u16::MAX;

/// Where a dynamic stream goes: a source as text (`tcp://host:port`); a name is
/// resolved on the server, and only addresses inside the allow-list are dialed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DynamicTarget {
    pub source: String,
}

/// The server's answer on a dynamic stream, before any data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DynamicReply {
    /// Connected to this address; data follows.
    Connected { addr: String },
    /// Refused by policy (or malformed).
    Refused {
        reason: RejectReason,
        detail: String,
    },
    /// Allowed, but the target did not answer: refused, unreachable or timed out.
    Unreachable { kind: Unreachable, detail: String },
}

/// Why an allowed target could not be reached (maps to SOCKS reply codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Unreachable {
    Refused,
    TimedOut,
    Other,
}

/// Truncates a rejection detail to [`MAX_DETAIL_LEN`] characters.
pub fn clamp_detail(s: &str) -> String {
    s.chars().take(MAX_DETAIL_LEN).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{self, FrameError};
    use proptest::prelude::*;

    fn round_trip<T>(m: &T) -> T
    where
        T: Serialize + serde::de::DeserializeOwned,
    {
        let bytes = frame::encode(m).unwrap();
        let (back, used) = frame::decode::<T>(&bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        back
    }

    #[test]
    fn messages_round_trip() {
        let a = AuthRequest {
            version: 1,
            token: "iABCDEFGHIJKLMNOPL".into(),
        };
        let b = round_trip(&a);
        assert_eq!((b.version, b.token.as_str()), (1, "iABCDEFGHIJKLMNOPL"));
        assert!(!format!("{a:?}").contains("ABCDEF"));

        let r = AuthResponse::Accepted {
            version: 1,
            max_streams: 1024,
        };
        assert_eq!(round_trip(&r), r);
        let q = ControlRequest::open_forward(7, &"udp://[::1]:53".parse().unwrap());
        assert_eq!(round_trip(&q), q);
        let p = ControlResponse::ForwardRejected {
            request_id: 7,
            reason: RejectReason::NotAllowed,
            detail: "10.0.0.1 not in 127.0.0.0/8".into(),
        };
        assert_eq!(round_trip(&p), p);
        let h = StreamHeader { forward_id: 3 };
        assert_eq!(round_trip(&h), h);
        let q = ControlRequest::Publish {
            request_id: 9,
            publish: PublishRequest {
                bind: "tcp://0.0.0.0:443".into(),
                name: Some("app.example.com".into()),
                accept_proxy_protocol: true,
            },
        };
        assert_eq!(round_trip(&q), q);
        let v = VisitorHeader {
            publish_id: FIRST_PUBLISH_ID + 2,
            visitor: "[2001:db8::7]:40000".parse().unwrap(),
            local: "192.0.2.1:443".parse().unwrap(),
        };
        assert_eq!(round_trip(&v), v);
    }

    #[test]
    fn oversized_and_trailing_frames_are_refused() {
        assert_eq!(
            frame::body_len([0xff, 0xff]),
            Err(FrameError::TooLarge(65535))
        );
        assert_eq!(frame::body_len([0, 0]), Err(FrameError::Empty));
        let mut bytes = frame::encode(&StreamHeader { forward_id: 1 }).unwrap();
        bytes.push(0);
        bytes[1] += 1;
        assert!(matches!(
            frame::decode::<StreamHeader>(&bytes),
            Err(FrameError::Trailing(1))
        ));
        let huge = AuthRequest {
            version: 1,
            token: "x".repeat(5000),
        };
        assert!(matches!(frame::encode(&huge), Err(FrameError::TooLarge(_))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = frame::decode::<AuthRequest>(&bytes);
            let _ = frame::decode::<ControlRequest>(&bytes);
            let _ = frame::decode::<ControlResponse>(&bytes);
            let _ = frame::decode::<AuthResponse>(&bytes);
            let _ = frame::decode::<StreamHeader>(&bytes);
            let _ = frame::decode::<VisitorHeader>(&bytes);
            let _ = frame::decode_body::<ControlRequest>(&bytes);
        }

        #[test]
        fn open_forward_round_trips(id in any::<u32>(), port in 1u16.., a in any::<[u8;4]>()) {
            let source = format!("tcp://{}:{port}", std::net::Ipv4Addr::from(a)).parse().unwrap();
            let q = ControlRequest::open_forward(id, &source);
            prop_assert_eq!(round_trip(&q), q);
        }
    }
}
