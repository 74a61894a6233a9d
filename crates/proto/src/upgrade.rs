//! Direct upgrade of a relayed session (iroh mode): the offer and answer a client and
//! server exchange on a [`crate::resume::ResumableHeader::Upgrade`] stream of their
//! authenticated connection, to punch a direct path beside it.
//!
//! Both are manual mode's [`Blob`]s (candidates, NAT kind, a certificate fingerprint
//! the peer pins), carried in frames instead of copy and paste: the relayed connection
//! already proves who is on the other end, so what it carries can be trusted.

use serde::{Deserialize, Serialize};

use crate::blob::Blob;

/// How long iroh gets to punch by itself between two endpoint-independent NATs before
/// an upgrade is punched beside it (iroh's own direct path keeps its multipath and
/// roaming; it needs about a second in the NAT lab).
pub const IROH_FIRST_MS: u64 = 5_000;

/// The client's one frame on an upgrade stream, after the header.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradeOffer {
    /// Candidates, NAT kind and certificate fingerprint of the client's punch socket.
    pub offer: Blob,
    /// How long the session has run through the relay, in milliseconds.
    pub relayed_ms: u64,
}

/// The server's one frame on an upgrade stream, after the client's [`UpgradeOffer`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpgradeAnswer {
    /// Punch towards these candidates; the direct connection must show the offer's
    /// certificate and will see this one's.
    Answer(Blob),
    /// No upgrade this time; the client stays on the relay.
    Declined(Declined),
}

/// Why a server declined an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Declined {
    /// The server runs with `--no-upgrade`.
    Disabled,
    /// Too many upgrades are being punched at once; ask again later.
    Busy,
    /// Neither side's NAT allows a direct path to be punched (both endpoint-dependent,
    /// or a side's mapping could not be learned).
    NoPath,
    /// The offer did not hold up (wrong kind, expired, no candidates).
    BadOffer,
    /// Both NATs are endpoint-independent, which iroh punches by itself: ask again once
    /// the session has been relayed for [`IROH_FIRST_MS`].
    IrohFirst,
}

impl Declined {
    /// A sentence for logs.
    pub fn explain(self) -> &'static str {
        match self {
            Declined::Disabled => "the server does not upgrade (it runs with --no-upgrade)",
            Declined::Busy => "the server is punching other upgrades; trying later",
            Declined::NoPath => {
                "no direct path can be punched between these NATs (both symmetric, or a side without STUN answers)"
            }
            Declined::BadOffer => "the server refused the offer as malformed",
            Declined::IrohFirst => "both NATs are cone-like: iroh gets the first chance to punch",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blob::BlobKind;
    use crate::blob::tests::sample;
    use crate::frame;
    use proptest::prelude::*;

    #[test]
    fn offers_and_answers_round_trip() {
        let offer = UpgradeOffer {
            offer: sample(BlobKind::Offer),
            relayed_ms: 1234,
        };
        let bytes = frame::encode(&offer).unwrap();
        assert_eq!(
            frame::decode::<UpgradeOffer>(&bytes).unwrap().unwrap().0,
            offer
        );
        for a in [
            UpgradeAnswer::Answer(sample(BlobKind::Answer)),
            UpgradeAnswer::Declined(Declined::Disabled),
            UpgradeAnswer::Declined(Declined::Busy),
            UpgradeAnswer::Declined(Declined::NoPath),
            UpgradeAnswer::Declined(Declined::BadOffer),
            UpgradeAnswer::Declined(Declined::IrohFirst),
        ] {
            let bytes = frame::encode(&a).unwrap();
            assert_eq!(
                frame::decode::<UpgradeAnswer>(&bytes).unwrap().unwrap().0,
                a
            );
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = frame::decode::<UpgradeAnswer>(&bytes);
            let _ = frame::decode::<UpgradeOffer>(&bytes);
        }
    }
}
