//! Socket helpers shared by every mode.

use std::io;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpSocket};

/// Pending-connection queue of listeners (the kernel caps it at `net.core.somaxconn`).
///
/// The default of 128 overflowed under a burst of 500 simultaneous connections: the
/// kernel fell back to SYN cookies and now and then reset a connection.
pub const LISTEN_BACKLOG: u32 = 4096;

/// A TCP listener with address reuse and a deep accept queue.
pub fn listen_tcp(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Like [`listen_tcp`] for a `host:port` string (resolved first; the first address wins).
pub async fn listen_tcp_str(addr: &str) -> io::Result<TcpListener> {
    let mut last = io::Error::new(
        io::ErrorKind::AddrNotAvailable,
        format!("{addr}: no address"),
    );
    for a in tokio::net::lookup_host(addr).await? {
        match listen_tcp(a) {
            Ok(l) => return Ok(l),
            Err(e) => last = e,
        }
    }
    Err(last)
}
