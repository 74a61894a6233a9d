//! Application error codes: QUIC connection close codes and stream reset/stop codes.
//!
//! Each failure a user can meet has its own code, so the client can say exactly what
//! happened ("the server refused your token") instead of "connection lost".

/// Codes carried in a QUIC `CONNECTION_CLOSE` (application) frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Orderly shutdown by either side.
    Normal = 0,
    /// The client's token is not in the server's set.
    AuthFailed = 1,
    /// The client did not authenticate within the deadline.
    AuthTimeout = 2,
    /// A peer sent a message that does not decode, or sent it at the wrong time.
    ProtocolError = 3,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion = 4,
    /// The server is at its session limit.
    ServerBusy = 5,
    /// The server is shutting down.
    Shutdown = 6,
    /// Too many failed authentications from this peer; retry later.
    RateLimited = 7,
    /// The operator revoked this client's access, or it expired.
    AccessRevoked = 8,
    /// The client resumed this connection's session on a newer connection.
    Resumed = 9,
    /// The client gave this connection up (a handshake that took too long, a liveness
    /// probe not needed) and carries on: unlike `Normal`, its session is not over.
    Retrying = 10,
}

impl CloseCode {
    pub fn from_u64(code: u64) -> Option<Self> {
        Some(match code {
            0 => Self::Normal,
            1 => Self::AuthFailed,
            2 => Self::AuthTimeout,
            3 => Self::ProtocolError,
            4 => Self::UnsupportedVersion,
            5 => Self::ServerBusy,
            6 => Self::Shutdown,
            7 => Self::RateLimited,
            8 => Self::AccessRevoked,
            9 => Self::Resumed,
            10 => Self::Retrying,
            _ => return None,
        })
    }

    pub fn as_u32(self) -> u32 {
        self as u32
    }

    /// A sentence for users: what happened and what to do.
    pub fn explain(self) -> &'static str {
        match self {
            Self::Normal => "the peer closed the connection",
            Self::AuthFailed => "the server refused the auth token",
            Self::AuthTimeout => "authentication did not complete in time",
            Self::ProtocolError => "the peer sent an invalid message (version mismatch or bug)",
            Self::UnsupportedVersion => {
                "the server speaks a different porthole protocol version: upgrade the older side"
            }
            Self::ServerBusy => "the server is at its session limit (max_sessions); retrying",
            Self::Shutdown => "the server is shutting down",
            Self::RateLimited => {
                "too many failed authentications from this address; retrying later"
            }
            Self::AccessRevoked => {
                "access revoked: the server's operator removed this client or its token, or it expired"
            }
            Self::Resumed => "the session moved to a newer connection of the same client",
            Self::Retrying => "the client gave this connection up and is trying another",
        }
    }
}

/// Codes carried in `RESET_STREAM` / `STOP_SENDING` on a TCP data stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StreamCode {
    /// The server could not connect to the target (refused, unreachable, timed out).
    TargetUnreachable = 1,
    /// The TCP connection on the other side failed (reset or I/O error).
    PeerReset = 2,
    /// The stream named a forward that this connection never opened.
    UnknownForward = 3,
    /// The stream header was malformed or did not arrive in time.
    BadHeader = 4,
    /// Too many concurrent streams on this connection.
    Limit = 5,
    /// The tunnel is shutting down.
    Shutdown = 6,
}

impl StreamCode {
    pub fn from_u64(code: u64) -> Option<Self> {
        Some(match code {
            1 => Self::TargetUnreachable,
            2 => Self::PeerReset,
            3 => Self::UnknownForward,
            4 => Self::BadHeader,
            5 => Self::Limit,
            6 => Self::Shutdown,
            _ => return None,
        })
    }

    pub fn as_u32(self) -> u32 {
        self as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in 0..11u64 {
            assert_eq!(CloseCode::from_u64(c).unwrap().as_u32() as u64, c);
        }
        assert_eq!(CloseCode::from_u64(99), None);
        for c in 1..7u64 {
            assert_eq!(StreamCode::from_u64(c).unwrap().as_u32() as u64, c);
        }
        assert_eq!(StreamCode::from_u64(0), None);
    }
}
