//! UDP over QUIC datagrams: the datagram header, fragmentation and reassembly.
//!
//! QUIC datagrams are small (about 1.2-1.4 KB, less on real paths) while UDP payloads
//! go up to 65,507 bytes (WireGuard sends ~1450, DNS and games more). A payload that
//! does not fit in one QUIC datagram is split into fragments and put back together on
//! the other side; incomplete packets are discarded after a timeout and counted.
//!
//! ```text
//! whole:    kind=0 | forward_id u16 | flow_id u32 | payload
//! fragment: kind=1 | forward_id u16 | flow_id u32 | packet_id u16 | index u8 | count u8 | chunk
//! ```
//! All integers are big-endian.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Largest UDP payload carried (the IPv4 maximum; IPv6 jumbograms are not).
pub const MAX_UDP_PAYLOAD: usize = 65_507;
/// Header bytes of a whole datagram.
pub const WHOLE_HEADER_LEN: usize = 7;
/// Header bytes of a fragment.
pub const FRAGMENT_HEADER_LEN: usize = 11;
/// Most fragments one packet may be split into.
pub const MAX_FRAGMENTS: usize = 255;

const KIND_WHOLE: u8 = 0;
const KIND_FRAGMENT: u8 = 1;

/// Addresses a UDP flow: which forward, and which local peer on the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub forward_id: u16,
    pub flow_id: u32,
}

/// A decoded QUIC datagram, borrowing its payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Datagram<'a> {
    Whole {
        flow: FlowKey,
        payload: &'a [u8],
    },
    Fragment {
        flow: FlowKey,
        packet_id: u16,
        index: u8,
        count: u8,
        chunk: &'a [u8],
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DatagramError {
    #[error("datagram shorter than its header ({0} bytes)")]
    Short(usize),
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    #[error("fragment {index} of {count} is out of range")]
    BadFragment { index: u8, count: u8 },
    #[error("UDP payload of {0} bytes exceeds {MAX_UDP_PAYLOAD}")]
    TooLarge(usize),
    #[error("QUIC datagrams of {0} bytes are too small to carry fragments")]
    NoRoom(usize),
}

impl<'a> Datagram<'a> {
    pub fn decode(buf: &'a [u8]) -> Result<Self, DatagramError> {
        if buf.len() < WHOLE_HEADER_LEN {
            return Err(DatagramError::Short(buf.len()));
        }
        let flow = FlowKey {
            forward_id: u16::from_be_bytes([buf[1], buf[2]]),
            flow_id: u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]),
        };
        match buf[0] {
            KIND_WHOLE => Ok(Datagram::Whole {
                flow,
                payload: &buf[WHOLE_HEADER_LEN..],
            }),
            KIND_FRAGMENT => {
                if buf.len() < FRAGMENT_HEADER_LEN {
                    return Err(DatagramError::Short(buf.len()));
                }
                let packet_id = u16::from_be_bytes([buf[7], buf[8]]);
                let (index, count) = (buf[9], buf[10]);
                if count < 2 || index >= count {
                    return Err(DatagramError::BadFragment { index, count });
                }
                Ok(Datagram::Fragment {
                    flow,
                    packet_id,
                    index,
                    count,
                    chunk: &buf[FRAGMENT_HEADER_LEN..],
                })
            }
            k => Err(DatagramError::UnknownKind(k)),
        }
    }

    pub fn flow(&self) -> FlowKey {
        match self {
            Datagram::Whole { flow, .. } | Datagram::Fragment { flow, .. } => *flow,
        }
    }
}

fn put_flow(out: &mut Vec<u8>, kind: u8, flow: FlowKey) {
    out.push(kind);
    out.extend_from_slice(&flow.forward_id.to_be_bytes());
    out.extend_from_slice(&flow.flow_id.to_be_bytes());
}

/// Encodes a UDP payload as one or more QUIC datagrams no larger than `max_datagram`.
///
/// `packet_id` tells fragments of different packets apart; callers increment it per
/// fragmented packet (wrapping).
pub fn encode(
    flow: FlowKey,
    packet_id: u16,
    payload: &[u8],
    max_datagram: usize,
) -> Result<Vec<Vec<u8>>, DatagramError> {
    if payload.len() > MAX_UDP_PAYLOAD {
        return Err(DatagramError::TooLarge(payload.len()));
    }
    if payload.len() + WHOLE_HEADER_LEN <= max_datagram {
        let mut out = Vec::with_capacity(WHOLE_HEADER_LEN + payload.len());
        put_flow(&mut out, KIND_WHOLE, flow);
        out.extend_from_slice(payload);
        return Ok(vec![out]);
    }
    let room = max_datagram.saturating_sub(FRAGMENT_HEADER_LEN);
    if room == 0 {
        return Err(DatagramError::NoRoom(max_datagram));
    }
    let count = payload.len().div_ceil(room);
    if count > MAX_FRAGMENTS {
        return Err(DatagramError::NoRoom(max_datagram));
    }
    // Spread bytes evenly so no fragment is tiny; `per <= room` because
    // `count >= len / room`, and the real chunk count is what goes on the wire.
    let per = payload.len().div_ceil(count);
    let chunks: Vec<&[u8]> = payload.chunks(per).collect();
    let count = chunks.len();
    Ok(chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let mut out = Vec::with_capacity(FRAGMENT_HEADER_LEN + chunk.len());
            put_flow(&mut out, KIND_FRAGMENT, flow);
            out.extend_from_slice(&packet_id.to_be_bytes());
            out.push(i as u8);
            out.push(count as u8);
            out.extend_from_slice(chunk);
            out
        })
        .collect())
}

/// Bounds on what the reassembler holds.
#[derive(Debug, Clone, Copy)]
pub struct ReassemblyLimits {
    /// How long an incomplete packet is kept.
    pub timeout: Duration,
    /// Most incomplete packets held at once.
    pub max_packets: usize,
    /// Most buffered fragment bytes held at once.
    pub max_bytes: usize,
}

impl Default for ReassemblyLimits {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(3),
            max_packets: 512,
            max_bytes: 8 << 20,
        }
    }
}

/// What became of a pushed fragment.
#[derive(Debug, PartialEq, Eq)]
pub enum Reassembled {
    /// The packet is complete.
    Complete(FlowKey, Vec<u8>),
    /// More fragments are needed.
    Pending,
    /// The fragment was dropped (duplicate, inconsistent, or too large).
    Rejected,
}

#[derive(Debug)]
struct Partial {
    count: u8,
    received: u8,
    bytes: usize,
    chunks: Vec<Option<Vec<u8>>>,
    started: Instant,
}

/// Puts fragments back together. Pure: the caller supplies the time.
#[derive(Debug)]
pub struct Reassembler {
    limits: ReassemblyLimits,
    partial: HashMap<(FlowKey, u16), Partial>,
    bytes: usize,
    discarded: u64,
}

impl Reassembler {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            limits,
            partial: HashMap::new(),
            bytes: 0,
            discarded: 0,
        }
    }

    /// Packets discarded so far (timed out, evicted, or inconsistent).
    pub fn discarded(&self) -> u64 {
        self.discarded
    }

    /// Incomplete packets currently held.
    pub fn pending(&self) -> usize {
        self.partial.len()
    }

    pub fn push(
        &mut self,
        flow: FlowKey,
        packet_id: u16,
        index: u8,
        count: u8,
        chunk: &[u8],
        now: Instant,
    ) -> Reassembled {
        self.expire(now);
        let key = (flow, packet_id);
        if !self.partial.contains_key(&key) {
            while self.partial.len() >= self.limits.max_packets
                || (self.bytes + chunk.len() > self.limits.max_bytes && !self.partial.is_empty())
            {
                self.evict_oldest();
            }
            self.partial.insert(
                key,
                Partial {
                    count,
                    received: 0,
                    bytes: 0,
                    chunks: vec![None; count as usize],
                    started: now,
                },
            );
        }
        let Some(p) = self.partial.get_mut(&key) else {
            return Reassembled::Rejected;
        };
        if p.count != count || index >= count {
            // A sender never changes the count of a packet: this is corrupt or hostile.
            self.remove(key);
            self.discarded += 1;
            return Reassembled::Rejected;
        }
        let slot = &mut p.chunks[index as usize];
        if slot.is_some() {
            return Reassembled::Rejected;
        }
        if p.bytes + chunk.len() > MAX_UDP_PAYLOAD {
            self.remove(key);
            self.discarded += 1;
            return Reassembled::Rejected;
        }
        *slot = Some(chunk.to_vec());
        p.received += 1;
        p.bytes += chunk.len();
        self.bytes += chunk.len();
        if p.received < p.count {
            return Reassembled::Pending;
        }
        let Some(p) = self.remove(key) else {
            return Reassembled::Rejected;
        };
        let mut out = Vec::with_capacity(p.bytes);
        for c in p.chunks.into_iter().flatten() {
            out.extend_from_slice(&c);
        }
        Reassembled::Complete(flow, out)
    }

    /// Drops incomplete packets older than the timeout; returns how many.
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.limits.timeout;
        let stale: Vec<_> = self
            .partial
            .iter()
            .filter(|(_, p)| now.saturating_duration_since(p.started) >= timeout)
            .map(|(k, _)| *k)
            .collect();
        for k in &stale {
            self.remove(*k);
        }
        self.discarded += stale.len() as u64;
        stale.len()
    }

    /// Forgets every incomplete packet of one flow (when the flow ends).
    pub fn forget_flow(&mut self, flow: FlowKey) {
        let keys: Vec<_> = self
            .partial
            .keys()
            .filter(|(f, _)| *f == flow)
            .copied()
            .collect();
        for k in keys {
            self.remove(k);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(k) = self
            .partial
            .iter()
            .min_by_key(|(_, p)| p.started)
            .map(|(k, _)| *k)
        {
            self.remove(k);
            self.discarded += 1;
        }
    }

    fn remove(&mut self, key: (FlowKey, u16)) -> Option<Partial> {
        let p = self.partial.remove(&key)?;
        self.bytes -= p.bytes;
        Some(p)
    }
}

/// Why a received datagram was dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DropReason {
    /// Not a porthole datagram (too short, unknown kind, bad fragment numbers).
    Malformed(DatagramError),
    /// A fragment that contradicts the others of its packet, repeats one, or would make
    /// the packet larger than a UDP payload.
    BadFragment,
}

impl std::fmt::Display for DropReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DropReason::Malformed(e) => write!(f, "malformed datagram: {e}"),
            DropReason::BadFragment => f.write_str("inconsistent fragment"),
        }
    }
}

/// What one received datagram came to.
#[derive(Debug, PartialEq, Eq)]
pub enum Received<'a> {
    /// A whole UDP payload for `flow`: borrowed from the datagram, or reassembled.
    Payload(FlowKey, std::borrow::Cow<'a, [u8]>),
    /// A fragment was stored; the rest of its packet is still missing.
    Pending,
    /// The datagram was dropped, and why.
    Dropped(DropReason),
}

/// One connection's incoming datagrams, I/O-free: bytes and the time in, a flow's payload
/// or a typed reason for dropping out. Both ends' receive loops drive one, the way quinn
/// drives quinn-proto; what they do with a payload (a flow's socket, a local peer) is
/// theirs.
#[derive(Debug)]
pub struct Receiver {
    reassembler: Reassembler,
    timed_out: u64,
}

impl Default for Receiver {
    fn default() -> Self {
        Self::new(ReassemblyLimits::default())
    }
}

impl Receiver {
    pub fn new(limits: ReassemblyLimits) -> Self {
        Self {
            reassembler: Reassembler::new(limits),
            timed_out: 0,
        }
    }

    /// Decodes `data` (and reassembles it, if it is a fragment). Incomplete packets older
    /// than the reassembly timeout are dropped first: [`Receiver::take_timed_out`] says
    /// how many.
    pub fn receive<'a>(&mut self, data: &'a [u8], now: Instant) -> Received<'a> {
        if self.reassembler.pending() > 0 {
            self.timed_out += self.reassembler.expire(now) as u64;
        }
        match Datagram::decode(data) {
            Ok(Datagram::Whole { flow, payload }) => {
                Received::Payload(flow, std::borrow::Cow::Borrowed(payload))
            }
            Ok(Datagram::Fragment {
                flow,
                packet_id,
                index,
                count,
                chunk,
            }) => match self
                .reassembler
                .push(flow, packet_id, index, count, chunk, now)
            {
                Reassembled::Complete(flow, payload) => {
                    Received::Payload(flow, std::borrow::Cow::Owned(payload))
                }
                Reassembled::Pending => Received::Pending,
                Reassembled::Rejected => Received::Dropped(DropReason::BadFragment),
            },
            Err(e) => Received::Dropped(DropReason::Malformed(e)),
        }
    }

    /// Incomplete packets dropped for age since the last call.
    pub fn take_timed_out(&mut self) -> u64 {
        std::mem::take(&mut self.timed_out)
    }

    /// Incomplete packets held now.
    pub fn pending(&self) -> usize {
        self.reassembler.pending()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const FLOW: FlowKey = FlowKey {
        forward_id: 2,
        flow_id: 77,
    };

    #[test]
    fn receiver_hands_out_whole_and_reassembled_payloads() {
        let mut rx = Receiver::default();
        let now = Instant::now();
        let whole = encode(FLOW, 1, b"hello", 1200).unwrap();
        assert_eq!(whole.len(), 1);
        assert_eq!(
            rx.receive(&whole[0], now),
            Received::Payload(FLOW, std::borrow::Cow::Borrowed(&b"hello"[..]))
        );
        let big: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
        let parts = encode(FLOW, 2, &big, 1200).unwrap();
        assert!(parts.len() > 1);
        for p in &parts[..parts.len() - 1] {
            assert_eq!(rx.receive(p, now), Received::Pending);
        }
        assert_eq!(rx.pending(), 1);
        match rx.receive(&parts[parts.len() - 1], now) {
            Received::Payload(flow, payload) => {
                assert_eq!(flow, FLOW);
                assert_eq!(&payload[..], &big[..]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(rx.pending(), 0);
        assert_eq!(rx.take_timed_out(), 0);
    }

    #[test]
    fn receiver_names_what_it_drops() {
        let mut rx = Receiver::default();
        let now = Instant::now();
        assert!(matches!(
            rx.receive(&[], now),
            Received::Dropped(DropReason::Malformed(DatagramError::Short(0)))
        ));
        let big = vec![7u8; 3000];
        let parts = encode(FLOW, 3, &big, 1200).unwrap();
        assert_eq!(rx.receive(&parts[0], now), Received::Pending);
        // The same fragment again.
        assert_eq!(
            rx.receive(&parts[0], now),
            Received::Dropped(DropReason::BadFragment)
        );
        assert_eq!(DropReason::BadFragment.to_string(), "inconsistent fragment");
        // An incomplete packet times out, counted once, on the next datagram.
        let later = now + ReassemblyLimits::default().timeout;
        let whole = encode(FLOW, 4, b"x", 1200).unwrap();
        assert!(matches!(
            rx.receive(&whole[0], later),
            Received::Payload(..)
        ));
        assert_eq!(rx.take_timed_out(), 1);
        assert_eq!(rx.take_timed_out(), 0);
        assert_eq!(rx.pending(), 0);
    }

    fn reassemble(datagrams: &[Vec<u8>], r: &mut Reassembler, now: Instant) -> Option<Vec<u8>> {
        let mut done = None;
        for d in datagrams {
            match Datagram::decode(d).unwrap() {
                Datagram::Whole { payload, .. } => done = Some(payload.to_vec()),
                Datagram::Fragment {
                    flow,
                    packet_id,
                    index,
                    count,
                    chunk,
                } => {
                    if let Reassembled::Complete(f, p) =
                        r.push(flow, packet_id, index, count, chunk, now)
                    {
                        assert_eq!(f, flow);
                        done = Some(p);
                    }
                }
            }
        }
        done
    }

    #[test]
    fn small_payload_is_one_whole_datagram() {
        let d = encode(FLOW, 0, b"hello", 1200).unwrap();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].len(), 5 + WHOLE_HEADER_LEN);
        assert_eq!(
            Datagram::decode(&d[0]).unwrap(),
            Datagram::Whole {
                flow: FLOW,
                payload: b"hello"
            }
        );
    }

    #[test]
    fn max_payload_fragments_and_reassembles() {
        let payload: Vec<u8> = (0..MAX_UDP_PAYLOAD).map(|i| (i * 7) as u8).collect();
        let d = encode(FLOW, 9, &payload, 1200).unwrap();
        assert!(d.len() > 50 && d.iter().all(|x| x.len() <= 1200));
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let mut rev = d.clone();
        rev.reverse();
        assert_eq!(reassemble(&rev, &mut r, Instant::now()).unwrap(), payload);
        assert_eq!(r.pending(), 0);
    }

    #[test]
    fn oversized_payload_is_refused() {
        assert_eq!(
            encode(FLOW, 0, &vec![0; MAX_UDP_PAYLOAD + 1], 1200),
            Err(DatagramError::TooLarge(MAX_UDP_PAYLOAD + 1))
        );
        assert!(matches!(
            encode(FLOW, 0, &[0; 100], 11),
            Err(DatagramError::NoRoom(11))
        ));
    }

    #[test]
    fn incomplete_packets_expire_and_are_counted() {
        let d = encode(FLOW, 1, &[5u8; 3000], 1200).unwrap();
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let t0 = Instant::now();
        assert_eq!(reassemble(&d[..1], &mut r, t0), None);
        assert_eq!(r.pending(), 1);
        assert_eq!(r.expire(t0 + Duration::from_secs(10)), 1);
        assert_eq!((r.pending(), r.discarded()), (0, 1));
    }

    #[test]
    fn limits_evict_oldest() {
        let limits = ReassemblyLimits {
            max_packets: 2,
            ..Default::default()
        };
        let mut r = Reassembler::new(limits);
        let t0 = Instant::now();
        for id in 0..3u16 {
            let d = encode(FLOW, id, &[1u8; 3000], 1200).unwrap();
            reassemble(&d[..1], &mut r, t0 + Duration::from_millis(id as u64));
        }
        assert_eq!((r.pending(), r.discarded()), (2, 1));
    }

    #[test]
    fn inconsistent_fragments_are_rejected() {
        let mut r = Reassembler::new(ReassemblyLimits::default());
        let now = Instant::now();
        assert_eq!(r.push(FLOW, 1, 0, 3, b"a", now), Reassembled::Pending);
        assert_eq!(r.push(FLOW, 1, 0, 3, b"a", now), Reassembled::Rejected);
        assert_eq!(r.push(FLOW, 1, 1, 4, b"b", now), Reassembled::Rejected);
        assert_eq!(r.pending(), 0);
        assert!(Datagram::decode(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 5, 5]).is_err());
        assert!(Datagram::decode(&[9, 0, 0, 0, 0, 0, 0]).is_err());
    }

    proptest! {
        #[test]
        fn round_trip_any_size(len in 0usize..20_000, mtu in 40usize..1500, pid in any::<u16>()) {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            match encode(FLOW, pid, &payload, mtu) {
                Ok(d) => {
                    prop_assert!(d.iter().all(|x| x.len() <= mtu));
                    let mut r = Reassembler::new(ReassemblyLimits::default());
                    prop_assert_eq!(reassemble(&d, &mut r, Instant::now()), Some(payload));
                }
                Err(DatagramError::NoRoom(_)) => prop_assert!(len.div_ceil(mtu - FRAGMENT_HEADER_LEN) > MAX_FRAGMENTS),
                Err(e) => prop_assert!(false, "{e}"),
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(Datagram::Fragment { flow, packet_id, index, count, chunk }) = Datagram::decode(&bytes) {
                let mut r = Reassembler::new(ReassemblyLimits::default());
                let _ = r.push(flow, packet_id, index, count, chunk, Instant::now());
            }
        }
    }
}
