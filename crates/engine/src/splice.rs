//! Copying between a TCP connection and a QUIC stream pair, both directions at once.
//!
//! - A clean EOF on one side finishes only that direction (TCP half-close <-> QUIC FIN),
//!   so a client that sends, shuts down its write side, then reads, gets the whole reply.
//! - An error on either side aborts both: the QUIC stream is reset and the TCP
//!   connection is closed with RST. Nobody mistakes a failure for a clean end.

use std::io;
use std::pin::pin;
use std::time::Duration;

use porthole_proto::close::StreamCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::transport::{RecvStream, SendStream};

/// Per-direction copy buffer.
pub const COPY_BUF: usize = 16 * 1024;

/// How a splice ended.
#[derive(Debug)]
pub enum SpliceEnd {
    /// Both directions finished cleanly.
    Clean { up: u64, down: u64 },
    /// One side failed; both were aborted.
    Aborted {
        up: u64,
        down: u64,
        error: io::Error,
    },
}

/// Runs until both directions are done or one fails. `up` is TCP -> QUIC.
pub async fn splice<S: SendStream, R: RecvStream>(
    mut tcp: TcpStream,
    mut send: S,
    mut recv: R,
) -> SpliceEnd {
    let (mut up, mut down) = (0u64, 0u64);
    let result = {
        let (mut tcp_r, mut tcp_w) = tcp.split();
        let up_fut = pin!(copy_then_finish(&mut tcp_r, &mut send, &mut up));
        let down_fut = pin!(copy_then_finish(&mut recv, &mut tcp_w, &mut down));
        join_fail_fast(up_fut, down_fut).await
    };
    match result {
        Ok(()) => SpliceEnd::Clean { up, down },
        Err(error) => {
            send.reset(StreamCode::PeerReset.as_u32());
            recv.stop(StreamCode::PeerReset.as_u32());
            abort_tcp(&tcp);
            SpliceEnd::Aborted { up, down, error }
        }
    }
}

/// Copies until EOF, then shuts the writer down (FIN / half-close).
async fn copy_then_finish<R, W>(r: &mut R, w: &mut W, count: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        *count += n as u64;
    }
}

/// Waits for both futures; returns the first error as soon as it happens.
async fn join_fail_fast<A, B>(a: A, b: B) -> io::Result<()>
where
    A: std::future::Future<Output = io::Result<()>> + Unpin,
    B: std::future::Future<Output = io::Result<()>> + Unpin,
{
    let (mut a, mut b) = (Some(a), Some(b));
    loop {
        match (a.as_mut(), b.as_mut()) {
            (None, None) => return Ok(()),
            (Some(fa), None) => {
                fa.await?;
                a = None;
            }
            (None, Some(fb)) => {
                fb.await?;
                b = None;
            }
            (Some(fa), Some(fb)) => tokio::select! {
                r = fa => { r?; a = None; }
                r = fb => { r?; b = None; }
            },
        }
    }
}

/// Closes a TCP connection with RST instead of FIN, so the application sees an error.
pub fn abort_tcp(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

/// Low latency for interactive use (SSH keystrokes): disable Nagle.
pub fn tune_tcp(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
}
