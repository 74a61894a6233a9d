//! A minimal NFQUEUE client for the lab's delay line: metadata-only packet messages in,
//! batch verdicts out, over a plain netlink socket (`netlink-sys`, safe Rust).
//!
//! Why not a general NFQUEUE crate: the delay line releases packets in arrival order, so
//! one `NFQNL_MSG_VERDICT_BATCH` ("accept everything up to id N") replaces one verdict
//! system call per packet. With per-packet verdicts the delay process needed ~60 % of a
//! core at 350 Mbit/s, fell behind in bursts, and the kernel then dropped (or, with
//! fail-open, passed undelayed and reordered) what it could not queue.
//!
//! Wire format (`linux/netfilter/nfnetlink_queue.h`): each message is a netlink header,
//! an `nfgenmsg` (family, version, queue number in network order), then attributes.

use std::io;
use std::time::Duration;

use netlink_sys::{Socket, SocketAddr, protocols::NETLINK_NETFILTER};

const NLMSG_HDRLEN: usize = 16;
/// `recv` flag: do not block (Linux's value).
const MSG_DONTWAIT: i32 = 0x40;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;

const NFNL_SUBSYS_QUEUE: u16 = 3;
const NFQNL_MSG_PACKET: u16 = 0;
const NFQNL_MSG_VERDICT: u16 = 1;
const NFQNL_MSG_CONFIG: u16 = 2;
const NFQNL_MSG_VERDICT_BATCH: u16 = 3;

const NFQA_PACKET_HDR: u16 = 1;
const NFQA_VERDICT_HDR: u16 = 2;
const NFQA_CFG_CMD: u16 = 1;
const NFQA_CFG_PARAMS: u16 = 2;
const NFQA_CFG_QUEUE_MAXLEN: u16 = 3;
const NFQNL_CFG_CMD_BIND: u8 = 1;
const NFQNL_COPY_META: u8 = 1;

const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;

/// A bound queue. `&self` methods may be called from two threads at once (one reading,
/// one releasing): the kernel serialises a socket's sends and receives.
pub struct Queue {
    sock: Socket,
    num: u16,
}

impl Queue {
    /// Binds queue `num` (metadata only, at most `max_len` packets waiting), with a
    /// receive buffer of up to `rcvbuf` bytes (the kernel caps it at `net.core.rmem_max`).
    /// Packet ids that arrive before the kernel's acknowledgement go to `early`.
    pub fn open(num: u16, max_len: u32, rcvbuf: usize, early: &mut Vec<u32>) -> io::Result<Queue> {
        let mut sock = Socket::new(NETLINK_NETFILTER)?;
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        socket2::SockRef::from(&sock).set_recv_buffer_size(rcvbuf)?;
        let q = Queue { sock, num };
        let cmd = [NFQNL_CFG_CMD_BIND, 0, 0, 0];
        let mut params = [0u8; 5];
        params[4] = NFQNL_COPY_META;
        let msg = message(
            NFQNL_MSG_CONFIG,
            NLM_F_REQUEST | NLM_F_ACK,
            num,
            &[
                (NFQA_CFG_CMD, &cmd),
                (NFQA_CFG_PARAMS, &params),
                (NFQA_CFG_QUEUE_MAXLEN, &max_len.to_be_bytes()),
            ],
        );
        q.sock.send(&msg, 0)?;
        let mut buf = Vec::with_capacity(64 * 1024);
        loop {
            buf.clear();
            q.sock.recv(&mut buf, 0)?;
            if parse(&buf, early)? {
                return Ok(q);
            }
        }
    }

    /// Waits for the next queued packet, then takes every other one already waiting (the
    /// kernel sends each packet as a datagram of its own); appends their ids to `ids`.
    pub fn recv(&self, buf: &mut Vec<u8>, ids: &mut Vec<u32>) -> io::Result<()> {
        let mut flags = 0;
        loop {
            buf.clear();
            if buf.capacity() < 64 * 1024 {
                buf.reserve(64 * 1024);
            }
            match self.sock.recv(buf, flags) {
                Ok(_) => parse(buf, ids)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && flags != 0 => return Ok(()),
                Err(e) => return Err(e),
            };
            flags = MSG_DONTWAIT;
        }
    }

    /// Drops one packet.
    pub fn drop_packet(&self, id: u32) -> io::Result<()> {
        self.send_verdict(NFQNL_MSG_VERDICT, NF_DROP, id)
    }

    /// Releases every packet still queued with an id up to `id` (wrapping).
    pub fn accept_up_to(&self, id: u32) -> io::Result<()> {
        self.send_verdict(NFQNL_MSG_VERDICT_BATCH, NF_ACCEPT, id)
    }

    fn send_verdict(&self, kind: u16, verdict: u32, id: u32) -> io::Result<()> {
        let mut hdr = [0u8; 8];
        hdr[..4].copy_from_slice(&verdict.to_be_bytes());
        hdr[4..].copy_from_slice(&id.to_be_bytes());
        let msg = message(kind, NLM_F_REQUEST, self.num, &[(NFQA_VERDICT_HDR, &hdr)]);
        self.sock.send(&msg, 0).map(|_| ())
    }
}

/// One nfnetlink_queue message.
fn message(kind: u16, flags: u16, queue: u16, attrs: &[(u16, &[u8])]) -> Vec<u8> {
    let mut m = vec![0u8; NLMSG_HDRLEN];
    // nfgenmsg: AF_UNSPEC, NFNETLINK_V0, queue number (network order).
    m.extend_from_slice(&[0, 0]);
    m.extend_from_slice(&queue.to_be_bytes());
    for (kind, payload) in attrs {
        let len = 4 + payload.len();
        m.extend_from_slice(&(len as u16).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(payload);
        m.resize(m.len().next_multiple_of(4), 0);
    }
    let total = m.len() as u32;
    m[0..4].copy_from_slice(&total.to_ne_bytes());
    m[4..6].copy_from_slice(&((NFNL_SUBSYS_QUEUE << 8) | kind).to_ne_bytes());
    m[6..8].copy_from_slice(&flags.to_ne_bytes());
    m
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn malformed() -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, "malformed netlink message")
}

/// Walks the messages in one datagram: packet ids go to `ids`; returns whether an
/// acknowledgement (error 0) was among them, and fails on a netlink error.
fn parse(buf: &[u8], ids: &mut Vec<u32>) -> io::Result<bool> {
    let mut acked = false;
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, at).ok_or_else(malformed)? as usize;
        let kind = u16_at(buf, at + 4).ok_or_else(malformed)?;
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            return Err(malformed());
        }
        let body = &buf[at + NLMSG_HDRLEN..at + len];
        if kind == NLMSG_ERROR {
            let code = i32::from_ne_bytes(
                body.get(..4)
                    .ok_or_else(malformed)?
                    .try_into()
                    .map_err(|_| malformed())?,
            );
            if code != 0 {
                return Err(io::Error::from_raw_os_error(-code));
            }
            acked = true;
        } else if kind == (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET {
            // Skip the nfgenmsg (4 bytes), then walk the attributes for the packet header.
            let mut a = 4;
            while a + 4 <= body.len() {
                let alen = u16_at(body, a).ok_or_else(malformed)? as usize;
                let akind = u16_at(body, a + 2).ok_or_else(malformed)? & 0x3fff;
                if alen < 4 || a + alen > body.len() {
                    return Err(malformed());
                }
                if akind == NFQA_PACKET_HDR && alen >= 8 {
                    let id = body.get(a + 4..a + 8).ok_or_else(malformed)?;
                    ids.push(u32::from_be_bytes(id.try_into().map_err(|_| malformed())?));
                }
                a += alen.next_multiple_of(4);
            }
        }
        at += len.next_multiple_of(4);
    }
    Ok(acked)
}

/// How long a releaser sleeps at most when nothing is queued (it is woken on arrival).
pub const IDLE_WAIT: Duration = Duration::from_millis(100);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_verdict_is_encoded_as_the_kernel_expects() {
        let m = message(
            NFQNL_MSG_VERDICT_BATCH,
            NLM_F_REQUEST,
            7,
            &[(NFQA_VERDICT_HDR, &[0, 0, 0, 1, 0, 0, 0x30, 0x39])],
        );
        assert_eq!(m.len(), 16 + 4 + 12);
        assert_eq!(u32_at(&m, 0), Some(32));
        assert_eq!(u16_at(&m, 4), Some((3 << 8) | 3));
        assert_eq!(u16_at(&m, 6), Some(NLM_F_REQUEST));
        assert_eq!(&m[16..20], &[0, 0, 0, 7]);
        assert_eq!(u16_at(&m, 20), Some(12));
        assert_eq!(u16_at(&m, 22), Some(NFQA_VERDICT_HDR));
        assert_eq!(&m[24..32], &[0, 0, 0, 1, 0, 0, 0x30, 0x39]);
    }

    #[test]
    fn attributes_are_padded_to_four_bytes() {
        let m = message(
            NFQNL_MSG_CONFIG,
            0,
            0,
            &[(NFQA_CFG_PARAMS, &[0, 0, 0, 0, 1])],
        );
        assert_eq!(m.len(), 20 + 12);
        assert_eq!(u16_at(&m, 20), Some(9));
    }

    fn packet(id: u32) -> Vec<u8> {
        let mut hdr = id.to_be_bytes().to_vec();
        hdr.extend_from_slice(&[0x08, 0x00, 3, 0]);
        message(
            NFQNL_MSG_PACKET,
            0,
            0,
            &[(5, &[1, 2, 3, 4]), (NFQA_PACKET_HDR, &hdr)],
        )
    }

    #[test]
    fn packet_ids_are_read_from_every_message_of_a_datagram() {
        let mut buf = packet(41);
        buf.extend(packet(42));
        let mut ids = Vec::new();
        assert!(!parse(&buf, &mut ids).unwrap());
        assert_eq!(ids, [41, 42]);
    }

    #[test]
    fn acks_and_errors_are_told_apart() {
        let mut ack = vec![0u8; 16 + 4];
        ack[..4].copy_from_slice(&20u32.to_ne_bytes());
        ack[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        assert!(parse(&ack, &mut Vec::new()).unwrap());
        ack[16..20].copy_from_slice(&(-1i32).to_ne_bytes());
        assert_eq!(
            parse(&ack, &mut Vec::new()).unwrap_err().raw_os_error(),
            Some(1)
        );
    }

    #[test]
    fn truncated_messages_are_refused() {
        let buf = packet(1);
        assert!(parse(&buf[..buf.len() - 4], &mut Vec::new()).is_err());
        let mut bad = buf.clone();
        bad[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(parse(&bad, &mut Vec::new()).is_err());
    }
}
