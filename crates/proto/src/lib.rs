//! porthole's protocol as plain data: no sockets, no tokio, no clocks of its own.
//!
//! Everything a peer can send us is decoded here, with hard size limits, into typed
//! values ("parse, don't validate"). The engine and the transports drive these types
//! from the outside, the way `quinn` drives `quinn-proto`.
//!
//! - [`token`]: the 18-character checksummed auth tokens (tunnel-rs compatible).
//! - [`key`]: the server's Ed25519 secret key file and the EndpointId derived from it.
//! - [`ticket`]: one copy-pasteable string naming a server (id, relays, direct addresses).
//! - [`source`]: `tcp://host:port` / `udp://host:port` forward sources.
//! - [`message`] and [`frame`]: control messages and their length-prefixed framing.
//! - [`datagram`]: the UDP datagram header, fragmentation and reassembly, and the
//!   [`datagram::Receiver`] both ends' receive loops drive (bytes and time in, a flow's
//!   payload or a typed drop reason out).
//! - [`sniff`]: the name a visitor asks for on a shared port (TLS SNI, HTTP Host).
//! - [`close`]: application close and stream error codes.
//! - [`resume`]: session tickets, resume claims, resumable stream headers and their
//!   acknowledgements.
//! - [`blob`] and [`probe`]: manual mode's copy-paste offer/answer blobs and hole-punching probes.
//! - [`upgrade`]: the same blobs as frames, to punch a direct path beside a relayed
//!   iroh connection.

pub mod blob;
pub mod close;
pub mod datagram;
#[doc(hidden)]
pub mod exercise;
pub mod frame;
pub mod key;
pub mod message;
pub mod probe;
pub mod proxy_header;
pub mod resume;
pub mod sniff;
pub mod socks;
pub mod source;
pub mod ticket;
pub mod token;
pub mod upgrade;

/// The QUIC ALPN of porthole's peer protocol, version 1.
pub const ALPN: &[u8] = b"porthole/1";

/// The protocol version carried in the auth request. A server refuses versions it
/// does not speak with a clear reason, so old and new peers fail loudly, not oddly.
pub const PROTOCOL_VERSION: u16 = 1;
/// The version of an auth request that proves a client key ([`message::AuthRequestV2`]);
/// servers accept both, clients send it only when they have a key, so token-only
/// clients and servers of either age keep talking.
pub const KEY_AUTH_VERSION: u16 = 2;
/// The version of an auth request that asks for a resumable session, or resumes one
/// ([`message::AuthRequestV3`]). Clients fall back to 1 or 2 when a server refuses it.
pub const RESUME_VERSION: u16 = 3;
