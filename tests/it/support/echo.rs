//! Target services for the tests.

use std::future::Future;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A TCP service on a fresh loopback port: `handle` serves each connection in its own task.
fn tcp_service<F, Fut>(handle: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = porthole_engine::net::listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            // One failed accept (a connection reset while queued) must not stop the service.
            let Ok((s, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(handle(s));
        }
    });
    addr
}

/// TCP echo: copies back everything, then half-closes after the client's EOF.
pub async fn tcp_echo() -> SocketAddr {
    tcp_service(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
}

/// [`tcp_echo`] for tests without a runtime: served from a thread of its own for the
/// rest of the test process.
pub fn tcp_echo_blocking() -> SocketAddr {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let _ = tx.send(tcp_echo().await);
            std::future::pending::<()>().await
        });
    });
    rx.recv().unwrap()
}

/// Reads to EOF, then answers with a reply that names how much it read: proves that
/// a half-closed client still gets the whole answer.
pub async fn tcp_count_then_reply() -> SocketAddr {
    tcp_service(|mut s| async move {
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf).await;
        let reply = format!("read {} bytes;", buf.len()).repeat(1000);
        let _ = s.write_all(reply.as_bytes()).await;
        let _ = s.shutdown().await;
    })
}

/// Reads one byte of the client's request, answers `reply`, and closes with the rest of
/// the request unread, so its kernel ends the connection with RST instead of FIN (what
/// an iperf3 server that is busy, or an HTTP server refusing an upload, does).
pub async fn tcp_reply_then_reset(reply: &'static [u8]) -> SocketAddr {
    tcp_service(move |mut s| async move {
        let mut first = [0u8; 1];
        if s.read_exact(&mut first).await.is_ok() {
            // Let the rest of the request land unread.
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            let _ = s.write_all(reply).await;
        }
    })
}

/// UDP echo: sends each datagram back to its sender.
pub async fn udp_echo() -> SocketAddr {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    porthole_engine::udp::size_socket(&s);
    let addr = s.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// A TCP port with nothing listening on it.
pub async fn closed_port() -> SocketAddr {
    let l = porthole_engine::net::listen_tcp("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr
}

/// A UDP echo on loopback served from a thread (tests without a runtime): answers each
/// datagram with itself; its port.
pub fn udp_echo_blocking() -> u16 {
    let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = s.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let _ = s.send_to(&buf[..n], from);
        }
    });
    port
}
