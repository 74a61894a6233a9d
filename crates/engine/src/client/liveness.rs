//! Tells a tunnel that is only cut off (an outage: wait, it comes back by itself) from
//! one whose server is gone (it restarted: replace the connection now).
//!
//! Both look the same from inside the connection: nothing is heard. The idle timeout is
//! long so that outages pass (`QuicParams::idle_timeout`), which would leave a user whose
//! server restarted waiting that long on connections that can never work again. So once
//! the server has been silent for `silent_after`, the client dials a fresh connection
//! next to the old one. A fresh connection that authenticates proves the path works; if
//! the old connection still hears nothing, its server no longer knows it, and the fresh
//! one replaces it (its streams are reset, so users' connections end promptly with RST).
//! If the old connection hears from the server again, the fresh one is closed unused.

use std::time::Duration;

use porthole_proto::close::CloseCode;
use tokio::time::Instant;
use tracing::{debug, info};

use super::ClientConfig;
use super::session::{self, Session};
use crate::transport::{Connection, Connector};

/// How often the old connection's frame count is sampled.
const SAMPLE: Duration = Duration::from_millis(250);
/// A fresh connection that has not authenticated by then is abandoned (and retried):
/// connections started in the middle of an outage are slow to notice its end.
const PROBE_LIMIT: Duration = Duration::from_secs(10);
/// Pause between failed probes.
const PROBE_PAUSE: Duration = Duration::from_secs(1);
/// After a fresh connection authenticated, how long the old one gets at least to be heard
/// from. An outage inflates the RTT estimate (seconds after a 30 s cut of a relayed
/// path): at 3 s, relayed connections that were about to recover were replaced, and their
/// users' connections reset, for nothing.
const CONFIRM: Duration = Duration::from_secs(8);

/// How long the old connection gets once a fresh one proved the path works: at least
/// [`CONFIRM`], and as long as it has already been silent. QUIC's loss probes back off
/// exponentially while nothing is acknowledged (each about twice the last), so after a
/// silence of S the old connection's next probe may be up to ~S away; with 8 s alone, a
/// manual-mode tunnel that was about to recover from a 30 s cut was replaced (and its
/// users' connections reset) for nothing.
fn confirm_window(silent: Duration) -> Duration {
    CONFIRM.max(silent)
}

/// Resolves with the session that replaces `current` once its server is known to have
/// forgotten it; never resolves while the server keeps answering.
pub(crate) async fn replacement<K: Connector>(
    current: &K::Conn,
    connector: &K,
    config: &ClientConfig,
    book: Option<&std::sync::Arc<super::resumable::BookOf<K::Conn>>>,
) -> Session<K::Conn> {
    let mut last = current.frames_received();
    let mut heard = Instant::now();
    let mut sample = tokio::time::interval(SAMPLE);
    sample.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        sample.tick().await;
        let frames = current.frames_received();
        if frames != last {
            (last, heard) = (frames, Instant::now());
            continue;
        }
        if heard.elapsed() < config.silent_after {
            continue;
        }
        debug!(
            silent = ?heard.elapsed(),
            "nothing heard from the server: checking with a fresh connection"
        );
        let probe = tokio::time::timeout(PROBE_LIMIT, session::establish(connector, config, book));
        let fresh = match probe.await {
            Ok(Ok(fresh)) => fresh,
            Ok(Err(_)) | Err(_) => {
                // The path is still down (or the server still starting): the old
                // connection may yet come back; look again shortly.
                tokio::time::sleep(PROBE_PAUSE).await;
                continue;
            }
        };
        // A resumable session answers at once: the server either moved the session to
        // the fresh connection (closing the old one) or no longer knows it.
        if fresh.book.is_some() {
            return fresh;
        }
        tokio::time::sleep(confirm_window(heard.elapsed())).await;
        let frames = current.frames_received();
        if frames == last {
            info!(
                silent = ?heard.elapsed(),
                "the server answers a fresh connection but not the tunnel's: it restarted \
                 or dropped the tunnel; switching to the fresh connection"
            );
            return fresh;
        }
        debug!("the server answers the tunnel again: the fresh connection is not needed");
        fresh
            .conn
            .close(CloseCode::Retrying.as_u32(), b"liveness probe, not needed");
        (last, heard) = (frames, Instant::now());
    }
}
