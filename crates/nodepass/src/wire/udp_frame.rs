//! UDP datagrams on a pool connection, NodePass v2.0.0-b9 and later: each datagram is a
//! 2-byte big-endian length followed by that many bytes (a zero length is skipped).
//! Older peers write each datagram as it is and take each read as one datagram.
//!
//! ```text
//! 00 05 68 65 6c 6c 6f    "hello"
//! ```

/// The length prefix.
pub const HEADER: usize = 2;
/// The largest datagram a prefix can carry.
pub const MAX_DATAGRAM: usize = u16::MAX as usize;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a {0}-byte datagram does not fit a 2-byte length prefix (65535 at most)")]
pub struct TooLarge(pub usize);

/// One datagram with its prefix, ready to be written in one piece (one TLS record).
pub fn encode(datagram: &[u8]) -> Result<Vec<u8>, TooLarge> {
    let len = u16::try_from(datagram.len()).map_err(|_| TooLarge(datagram.len()))?;
    let mut out = Vec::with_capacity(HEADER + datagram.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(datagram);
    Ok(out)
}

/// Whether the first TLS record of a session looks length-prefixed: a Go peer writes the
/// prefix and the datagram either as one record (`2 + len` bytes) or as two (the first
/// exactly 2 bytes). A bare datagram matches only if its first two bytes happen to be
/// its own length minus two.
pub fn looks_framed(first_record: &[u8]) -> bool {
    match first_record {
        [_, _] => true,
        [hi, lo, rest @ ..] => usize::from(u16::from_be_bytes([*hi, *lo])) == rest.len(),
        _ => false,
    }
}

/// Splits a byte stream back into datagrams. Holds at most one incomplete frame besides
/// what was pushed last.
#[derive(Debug, Default)]
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
}

impl Decoder {
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next whole datagram, if one is buffered (zero-length frames are skipped).
    pub fn next_datagram(&mut self) -> Option<&[u8]> {
        loop {
            let rest = &self.buf[self.start..];
            let [hi, lo, ..] = *rest else {
                return None;
            };
            let len = usize::from(u16::from_be_bytes([hi, lo]));
            if rest.len() < HEADER + len {
                self.compact();
                return None;
            }
            let from = self.start + HEADER;
            self.start = from + len;
            if len > 0 {
                return Some(&self.buf[from..from + len]);
            }
        }
    }

    /// Bytes buffered that are not a whole datagram yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }

    fn compact(&mut self) {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_documented_example() {
        assert_eq!(encode(b"hello").unwrap(), b"\x00\x05hello");
        assert_eq!(encode(&[]).unwrap(), b"\x00\x00");
        assert_eq!(encode(&vec![0; 65536]), Err(TooLarge(65536)));
        let mut d = Decoder::default();
        d.push(b"\x00\x00\x00\x05hel");
        assert_eq!(d.next_datagram(), None);
        d.push(b"lo\x00");
        assert_eq!(d.next_datagram(), Some(&b"hello"[..]));
        assert_eq!(d.next_datagram(), None);
        assert_eq!(d.pending(), 1);
    }

    #[test]
    fn first_records_are_classified() {
        assert!(looks_framed(b"\x00\x05hello"));
        assert!(looks_framed(b"\x04\xd2"));
        assert!(!looks_framed(b"hello"));
        assert!(!looks_framed(b"\x00\x05hell"));
        assert!(!looks_framed(b"x"));
        assert!(!looks_framed(b""));
    }

    proptest! {
        /// Any datagrams, encoded and cut into any chunks, come back whole and in order.
        #[test]
        fn round_trip(datagrams in proptest::collection::vec(
            proptest::collection::vec(any::<u8>(), 0..2000), 0..20),
            cuts in proptest::collection::vec(1usize..3000, 1..40)) {
            let wire: Vec<u8> = datagrams.iter().flat_map(|d| encode(d).unwrap()).collect();
            let mut d = Decoder::default();
            let mut out = Vec::new();
            let (mut at, mut i) = (0, 0);
            while at < wire.len() {
                let n = cuts[i % cuts.len()].min(wire.len() - at);
                d.push(&wire[at..at + n]);
                at += n;
                i += 1;
                while let Some(x) = d.next_datagram() {
                    out.push(x.to_vec());
                }
            }
            let sent: Vec<Vec<u8>> = datagrams.into_iter().filter(|d| !d.is_empty()).collect();
            prop_assert_eq!(out, sent);
            prop_assert_eq!(d.pending(), 0);
        }
    }
}
