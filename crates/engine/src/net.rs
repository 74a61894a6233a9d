//! Socket helpers shared by every mode.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use porthole_proto::proxy_header::{self, Parsed};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

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

/// How long a connection behind a load balancer may take to send its PROXY header.
pub(crate) const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Reads the PROXY header (v1 or v2) a connection starts with: the user's address it
/// names (`None` for a health check's UNKNOWN / LOCAL) and any bytes read past it.
/// Bounded in bytes ([`proxy_header::MAX_HEADER`]) and time.
pub(crate) async fn read_proxy_header(
    tcp: &mut TcpStream,
) -> std::io::Result<(Option<SocketAddr>, Vec<u8>)> {
    let read = async {
        let mut buf = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        loop {
            match proxy_header::parse(&buf) {
                Parsed::Header { len, source } => return Ok((source, buf.split_off(len))),
                Parsed::Invalid(why) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!("no PROXY protocol header ({why}); accept_proxy_protocol is set"),
                    ));
                }
                Parsed::Incomplete => {}
            }
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(PROXY_HEADER_TIMEOUT, read)
        .await
        .map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no PROXY protocol header within {PROXY_HEADER_TIMEOUT:?}"),
            )
        })?
}

/// Connects to the first address that answers, each attempt bounded by `timeout`.
pub(crate) async fn dial(addrs: &[SocketAddr], timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::AddrNotAvailable, "no address to dial");
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return Ok(s),
            Ok(Err(e)) => last = io::Error::new(e.kind(), format!("{addr}: {e}")),
            Err(_) => {
                last = io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("{addr}: connect timed out"),
                )
            }
        }
    }
    Err(last)
}
