//! Every decoder of this crate applied to arbitrary input: the body of the fuzz targets
//! (`fuzz/`) and of the corpus regression test. Nothing here may panic, whatever the
//! input; results are checked for internal consistency where that is cheap.

use std::time::{Duration, Instant};

use crate::datagram::{Datagram, Reassembler, ReassemblyLimits};
use crate::frame;
use crate::message::{AuthRequest, AuthResponse, ControlRequest, ControlResponse, StreamHeader};

/// Control frames: every message type, framed and unframed.
pub fn frames(data: &[u8]) {
    let _ = frame::decode::<AuthRequest>(data);
    let _ = crate::message::AnyAuthRequest::decode(data);
    let _ = frame::decode::<AuthResponse>(data);
    let _ = frame::decode::<StreamHeader>(data);
    if let Ok(Some((req, used))) = frame::decode::<ControlRequest>(data) {
        assert!(used <= data.len());
        let again = frame::encode(&req).expect("a decoded request re-encodes");
        assert_eq!(
            frame::decode::<ControlRequest>(&again)
                .ok()
                .flatten()
                .map(|(r, _)| r),
            Some(req)
        );
    }
    let _ = frame::decode::<ControlResponse>(data);
    let _ = frame::decode_body::<ControlRequest>(data);
}

/// UDP datagrams: decode, and feed every fragment to one reassembler with a clock that
/// moves on, so expiry and eviction run too.
pub fn datagrams(data: &[u8]) {
    let limits = ReassemblyLimits {
        timeout: Duration::from_millis(5),
        max_packets: 8,
        max_bytes: 64 * 1024,
    };
    let mut r = Reassembler::new(limits);
    let t0 = Instant::now();
    for (i, chunk) in data.split(|&b| b == 0xA5).enumerate() {
        if let Ok(Datagram::Fragment {
            flow,
            packet_id,
            index,
            count,
            chunk,
        }) = Datagram::decode(chunk)
        {
            let now = t0 + Duration::from_millis(i as u64);
            let _ = r.push(flow, packet_id, index, count, chunk, now);
        }
    }
    assert!(r.pending() <= 8);
}

/// Every text parser: tokens, keys, ids, tickets, sources, signaling blobs.
pub fn texts(data: &[u8]) {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = s.parse::<crate::token::AuthToken>();
    let _ = crate::key::SecretKey::parse(s);
    let _ = s.parse::<crate::key::EndpointId>();
    if let Ok(t) = s.parse::<crate::ticket::Ticket>() {
        let again = t.encode().expect("a decoded ticket re-encodes");
        assert_eq!(again.parse::<crate::ticket::Ticket>().ok(), Some(t));
    }
    if let Ok(src) = s.parse::<crate::source::Source>() {
        assert_eq!(
            src.to_string().parse::<crate::source::Source>().ok(),
            Some(src)
        );
    }
    for kind in [crate::blob::BlobKind::Offer, crate::blob::BlobKind::Answer] {
        let _ = crate::blob::Blob::decode(s, kind, 0);
    }
    let _ = crate::probe::Probe::decode(data, &[0; 16]);
}
