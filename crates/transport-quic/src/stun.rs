//! STUN Binding (RFC 8489) over a socket we own: stun-rs encodes and decodes, this
//! module does the I/O. The client side asks "which address do you see me from?";
//! the responder answers it (`porthole relay --stun-bind`).

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use stun_rs::attributes::stun::{MappedAddress, XorMappedAddress};
use stun_rs::methods::BINDING;
use stun_rs::{
    MessageClass, MessageDecoderBuilder, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
};
use tokio::net::UdpSocket;
use tokio_util_free::Deadline;
use tracing::{debug, trace, warn};

/// Looks up STUN servers given as HOST:PORT, keeping each one's first IPv4 address
/// (punching is over IPv4); a server that does not resolve within 5 s is skipped with a
/// warning.
pub async fn resolve(servers: &[String]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for s in servers {
        match tokio::time::timeout(Duration::from_secs(5), tokio::net::lookup_host(s.as_str()))
            .await
        {
            Ok(Ok(addrs)) => match addrs.into_iter().find(|a| a.is_ipv4()) {
                Some(a) => out.push(a),
                None => warn!("STUN server {s} has no IPv4 address; skipped"),
            },
            Ok(Err(e)) => warn!("STUN server {s}: {e}; skipped"),
            Err(_) => warn!("STUN server {s}: lookup timed out; skipped"),
        }
    }
    out
}

/// Retransmission schedule of a binding request (RFC 8489 style, shortened).
const RETRANSMIT: [u64; 5] = [0, 250, 500, 1000, 1500];

/// Sends binding requests to each server from `socket` and collects the mapped
/// addresses, in server order (`None` for servers that did not answer in time).
pub async fn bindings(
    socket: &UdpSocket,
    servers: &[SocketAddr],
    limit: Duration,
) -> Vec<Option<SocketAddr>> {
    let encoder = MessageEncoderBuilder::default().build();
    let mut pending: Vec<(SocketAddr, TransactionId, Vec<u8>)> = Vec::new();
    for &server in servers {
        let tid = TransactionId::default();
        let msg = StunMessageBuilder::new(BINDING, MessageClass::Request)
            .with_transaction_id(tid)
            .build();
        let mut buf = [0u8; 128];
        match encoder.encode(&mut buf, &msg) {
            Ok(n) => pending.push((server, tid, buf[..n].to_vec())),
            Err(e) => debug!("cannot encode STUN request: {e}"),
        }
    }
    let mut results: Vec<Option<SocketAddr>> = vec![None; servers.len()];
    let deadline = Deadline::after(limit);
    let decoder = MessageDecoderBuilder::default().build();
    let mut buf = vec![0u8; 2048];
    let start = tokio::time::Instant::now();
    let mut step = 0;
    while results.iter().any(Option::is_none) && !deadline.passed() {
        // Retransmit to servers that have not answered yet.
        if step < RETRANSMIT.len() && start.elapsed() >= Duration::from_millis(RETRANSMIT[step]) {
            for (i, (server, _, bytes)) in pending.iter().enumerate() {
                if results[i].is_none() {
                    let _ = socket.send_to(bytes, server).await;
                }
            }
            step += 1;
        }
        let wait = Duration::from_millis(50).min(deadline.remaining());
        let Ok(Ok((n, from))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await else {
            continue;
        };
        let Ok((msg, _)) = decoder.decode(&buf[..n]) else {
            trace!("non-STUN packet from {from} while gathering");
            continue;
        };
        if msg.class() != MessageClass::SuccessResponse || msg.method() != BINDING {
            continue;
        }
        let Some(i) = pending
            .iter()
            .position(|(_, tid, _)| tid == msg.transaction_id())
        else {
            continue;
        };
        let mapped = msg
            .get::<XorMappedAddress>()
            .and_then(|a| a.as_xor_mapped_address().ok())
            .map(|a| *a.socket_address())
            .or_else(|| {
                msg.get::<MappedAddress>()
                    .and_then(|a| a.as_mapped_address().ok())
                    .map(|a| *a.socket_address())
            });
        if let Some(addr) = mapped {
            debug!("STUN {} sees us as {addr}", pending[i].0);
            results[i] = Some(addr);
        }
    }
    results
}

/// Answers binding requests on `socket` forever (until the task is dropped).
pub async fn respond(socket: UdpSocket) -> io::Result<()> {
    respond_counting(socket, &std::sync::atomic::AtomicU64::new(0)).await
}

/// [`respond`], adding one to `answered` for every request answered.
pub async fn respond_counting(
    socket: UdpSocket,
    answered: &std::sync::atomic::AtomicU64,
) -> io::Result<()> {
    let decoder = MessageDecoderBuilder::default().build();
    let encoder = MessageEncoderBuilder::default().build();
    let mut buf = vec![0u8; 2048];
    let mut out = [0u8; 128];
    loop {
        let (n, from) = socket.recv_from(&mut buf).await?;
        let Ok((msg, _)) = decoder.decode(&buf[..n]) else {
            continue;
        };
        if msg.class() != MessageClass::Request || msg.method() != BINDING {
            continue;
        }
        let reply = StunMessageBuilder::new(BINDING, MessageClass::SuccessResponse)
            .with_transaction_id(*msg.transaction_id())
            .with_attribute(XorMappedAddress::from(from))
            .build();
        if let Ok(len) = encoder.encode(&mut out, &reply)
            && socket.send_to(&out[..len], from).await.is_ok()
        {
            answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// A tiny deadline helper (no extra dependency).
mod tokio_util_free {
    use std::time::Duration;
    use tokio::time::Instant;

    pub struct Deadline(Instant);

    impl Deadline {
        pub fn after(d: Duration) -> Self {
            Self(Instant::now() + d)
        }
        pub fn passed(&self) -> bool {
            Instant::now() >= self.0
        }
        pub fn remaining(&self) -> Duration {
            self.0.saturating_duration_since(Instant::now())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn responder_and_client_agree() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let task = tokio::spawn(respond(server));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let dead: SocketAddr = {
            let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
            s.local_addr().unwrap()
        };
        let r = bindings(&client, &[server_addr, dead], Duration::from_millis(800)).await;
        assert_eq!(r[0], Some(client.local_addr().unwrap()));
        assert_eq!(r[1], None);
        task.abort();
    }

    #[tokio::test]
    async fn responder_ignores_garbage() {
        let server = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let server_addr = server.local_addr().unwrap();
        let task = tokio::spawn(respond(server));
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for junk in [&b""[..], b"\x00\x01\x00\x00", &[0xffu8; 300]] {
            client.send_to(junk, server_addr).await.unwrap();
        }
        let r = bindings(&client, &[server_addr], Duration::from_secs(1)).await;
        assert_eq!(r[0], Some(client.local_addr().unwrap()));
        assert!(!task.is_finished());
        task.abort();
    }
}
