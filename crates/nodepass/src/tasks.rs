//! Every task a NodePass tunnel starts (accept loops, user sessions, launches, verify
//! checks), so that shutdown ends them and waits for them, as the engine does with its
//! `TaskTracker`: when `server::run` or `client::run` returns, no session of theirs is
//! still relaying.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info};

/// How long shutdown waits for tasks to see the cancellation and end.
pub const GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Tasks that end when `shutdown` fires or [`Tasks::finish`] is called.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self {
            tracker: TaskTracker::new(),
            stop: shutdown.child_token(),
        }
    }

    /// Runs `task` until it ends or shutdown, whichever comes first; at shutdown it is
    /// dropped, which closes its sockets.
    pub fn spawn<F>(&self, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let stop = self.stop.clone();
        self.tracker.spawn(
            async move {
                tokio::select! {
                    _ = task => {}
                    _ = stop.cancelled() => {}
                }
            }
            .in_current_span(),
        );
    }

    /// Ends every task and waits (at most [`GRACE`]) for them to be gone.
    pub async fn finish(&self) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            info!(
                "{} task(s) still running {GRACE:?} after shutdown",
                self.tracker.len()
            );
        }
    }
}
