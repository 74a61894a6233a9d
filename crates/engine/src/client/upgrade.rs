//! Moving a running session onto a direct path the transport punched beside its
//! relayed connection (see [`crate::upgrade`]).

use std::sync::Arc;
use std::time::Duration;

use porthole_proto::close::CloseCode;
use tracing::{info, warn};

use super::ClientConfig;
use super::resumable::BookOf;
use super::session::{self, Session};
use crate::transport::{Connection, Connector};

/// After a direct connection the session could not move onto, how long until the
/// transport is asked again (its own pacing of punch attempts comes on top).
const AFTER_FAILED_MOVE: Duration = Duration::from_secs(60);

/// Resolves with the session moved onto a direct connection; never resolves for a
/// session that cannot move without dropping its connections (not resumable), or while
/// the transport has no direct path to offer.
pub(crate) async fn direct<K: Connector>(
    current: &Session<K::Conn>,
    connector: &K,
    config: &ClientConfig,
    book: Option<&Arc<BookOf<K::Conn>>>,
) -> Session<K::Conn> {
    let (Some(book), Some(_)) = (book, &current.book) else {
        return std::future::pending().await;
    };
    loop {
        let conn = connector.upgrade(&current.conn).await;
        match session::establish_on(conn, config, Some(book)).await {
            Ok(fresh) if fresh.resumed => {
                info!("the tunnel moved onto the direct path; its connections continue there");
                return fresh;
            }
            Ok(fresh) => {
                // The server did not recognise the claim: a second session is not what
                // was asked for; the tunnel stays where it is.
                warn!(
                    "the server did not move the session onto the direct path; staying on the relay"
                );
                fresh.conn.close(CloseCode::Normal.as_u32(), b"not moved");
            }
            Err(e) => {
                let e = match e {
                    session::EstablishError::Fatal(e) => e.to_string(),
                    session::EstablishError::Retry(e) => e,
                };
                warn!(
                    "the direct path was punched but the session could not move onto it: {e}; staying on the relay"
                );
            }
        }
        tokio::time::sleep(AFTER_FAILED_MOVE).await;
    }
}
