//! The control socket: a Unix socket (mode 0600, in a 0700 directory) that answers the
//! one-line request `status` with the report as one line of JSON.
//!
//! Every instance gets its own socket, `<role>-<pid>.sock`, in [`default_dir`]
//! (`$XDG_RUNTIME_DIR/porthole`, `/run/porthole` for root, else `/tmp/porthole-<uid>`),
//! so several instances on one host never collide and `porthole status` finds them all.
//! Only the same user (or root) is answered: the file mode keeps others out and the
//! peer's credentials are checked again on every connection.

use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::{Report, Source};

/// Concurrent control connections served.
const MAX_CONNECTIONS: usize = 16;
/// A request must arrive within this, and a reply be read within it.
const TIMEOUT: Duration = Duration::from_secs(5);
/// Longest request line.
const MAX_REQUEST: u64 = 64;
/// Largest report a client accepts (thousands of sessions fit).
const MAX_REPLY: u64 = 16 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("{path}: {error}")]
    Io { path: PathBuf, error: io::Error },
    #[error(
        "{path}: owned by uid {owner}, not by you (uid {me}); pass --control-socket with a path of yours"
    )]
    NotOurs { path: PathBuf, owner: u32, me: u32 },
    #[error("{path}: the reply is not a porthole status report: {error}")]
    BadReply {
        path: PathBuf,
        error: serde_json::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ControlError + '_ {
    move |error| ControlError::Io {
        path: path.to_path_buf(),
        error,
    }
}

/// This process' effective uid (Linux: the owner of `/proc/self`).
pub fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Where instances put their sockets unless told otherwise.
pub fn default_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("porthole");
    }
    match my_uid() {
        0 => PathBuf::from("/run/porthole"),
        uid => std::env::temp_dir().join(format!("porthole-{uid}")),
    }
}

/// The socket of this process in `dir`.
pub fn socket_in(dir: &Path, role: &str) -> PathBuf {
    dir.join(format!("{role}-{}.sock", std::process::id()))
}

/// A bound control socket; the file is removed when this drops.
#[derive(Debug)]
pub struct ControlSocket {
    path: PathBuf,
    listener: Option<UnixListener>,
}

impl ControlSocket {
    /// Binds `path` (mode 0600), creating its directory (mode 0700) if needed. A
    /// directory that exists must be ours.
    pub fn bind(path: &Path) -> Result<Self, ControlError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        if !dir.as_os_str().is_empty() && !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err(dir))?;
        }
        let me = my_uid();
        let meta = std::fs::metadata(if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        })
        .map_err(io_err(dir))?;
        if meta.uid() != me && me != 0 {
            return Err(ControlError::NotOurs {
                path: dir.to_path_buf(),
                owner: meta.uid(),
                me,
            });
        }
        // A socket left by a process that died (its pid since reused) is ours to replace.
        if std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(path);
        }
        let listener = UnixListener::bind(path).map_err(io_err(path))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(io_err(path))?;
        Ok(Self {
            path: path.to_path_buf(),
            listener: Some(listener),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Answers requests until `shutdown` fires.
    pub async fn serve(mut self, source: Source, shutdown: CancellationToken) {
        let Some(listener) = self.listener.take() else {
            return;
        };
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let me = my_uid();
        loop {
            let stream = tokio::select! {
                _ = shutdown.cancelled() => break,
                a = listener.accept() => match a {
                    Ok((s, _)) => s,
                    Err(e) => {
                        warn!("control socket: accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                debug!("control socket: too many connections; closing one");
                continue;
            };
            let source = source.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = answer(stream, &source, me).await {
                    debug!("control socket: {e}");
                }
            });
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

async fn answer(stream: UnixStream, source: &Source, me: u32) -> io::Result<()> {
    let uid = stream.peer_cred()?.uid();
    if uid != me && uid != 0 {
        warn!("control socket: refused a connection from uid {uid} (only uid {me} and root)");
        return Ok(());
    }
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(r.take(MAX_REQUEST));
    let read = reader.read_line(&mut line);
    match tokio::time::timeout(TIMEOUT, read).await {
        Ok(r) => r?,
        Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "no request")),
    };
    let reply = match line.trim() {
        "status" => serde_json::to_string(&source()).map_err(io::Error::other)?,
        other => {
            let other: String = other.chars().take(32).collect();
            serde_json::json!({ "error": format!("unknown request {other:?}; try \"status\"") })
                .to_string()
        }
    };
    tokio::time::timeout(TIMEOUT, async {
        w.write_all(reply.as_bytes()).await?;
        w.write_all(b"\n").await?;
        w.shutdown().await
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "client not reading"))?
}

/// Asks the instance behind `path` for its report.
pub async fn query(path: &Path) -> Result<Report, ControlError> {
    let exchange = async {
        let mut s = UnixStream::connect(path).await?;
        s.write_all(b"status\n").await?;
        let mut buf = Vec::new();
        s.take(MAX_REPLY).read_to_end(&mut buf).await?;
        Ok::<_, io::Error>(buf)
    };
    let buf = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no reply within 5 s"))
        .and_then(|r| r)
        .map_err(io_err(path))?;
    serde_json::from_slice(&buf).map_err(|error| ControlError::BadReply {
        path: path.to_path_buf(),
        error,
    })
}

/// The sockets in `dir`, oldest name first; empty if the directory does not exist.
pub fn discover(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    v.sort();
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use porthole_engine::telemetry::{Role, Telemetry};

    #[tokio::test]
    async fn status_round_trips_and_the_socket_is_private() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = socket_in(&dir.path().join("run"), "server");
        let socket = ControlSocket::bind(&path).unwrap_or_else(|e| panic!("{e}"));
        let mode = std::fs::metadata(&path).map(|m| m.mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        let dmode = std::fs::metadata(dir.path().join("run")).map(|m| m.mode() & 0o777);
        assert_eq!(dmode.ok(), Some(0o700));
        let t = Telemetry::new(Role::Server);
        t.refused(porthole_engine::telemetry::Refusal::AuthFailed);
        let source: Source = Arc::new(move || Report::of(&t));
        let stop = CancellationToken::new();
        let task = tokio::spawn(socket.serve(source, stop.clone()));
        let report = query(&path).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(report.role, "server");
        assert_eq!(report.pid, std::process::id());
        let refusals = report.server.map(|s| s.refusals).unwrap_or_default();
        assert_eq!(refusals.len(), 1);
        assert_eq!(discover(&dir.path().join("run")), vec![path.clone()]);
        stop.cancel();
        let _ = task.await;
        assert!(!path.exists(), "the socket file goes with the instance");
    }
}
