//! Copying between a TCP connection and a QUIC stream pair, both directions at once.
//!
//! - A clean EOF on one side finishes only that direction (TCP half-close <-> QUIC FIN),
//!   so a client that sends, shuts down its write side, then reads, gets the whole reply.
//! - An error on either side aborts both: the QUIC stream is reset and the TCP
//!   connection is closed with RST. Nobody mistakes a failure for a clean end.

use std::io;

use bytes::BytesMut;
use std::pin::pin;
use std::time::Duration;

use porthole_proto::close::StreamCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::transport::{RecvStream, SendStream};

/// Per-direction copy buffer (64 KiB moves 10 % more per CPU second than 16 KiB).
pub const COPY_BUF: usize = 64 * 1024;

/// After this many bytes a stream counts as bulk and yields to younger, interactive ones.
///
/// The transports share the path round-robin among streams of equal priority; demoting
/// bulk streams keeps an SSH keystroke from queueing behind file transfers.
pub const BULK_AFTER: u64 = 256 * 1024;
/// Priority of a stream past [`BULK_AFTER`] (new streams have 0).
pub const BULK_PRIORITY: i32 = -1;

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
        let up_fut = pin!(read_then_hand_over(&mut tcp_r, &mut send, &mut up));
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

/// TCP -> QUIC: reads into a buffer whose filled part is handed to the stream as is
/// (no second copy), then FIN at EOF.
async fn read_then_hand_over<R, S>(r: &mut R, w: &mut S, count: &mut u64) -> io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
    S: SendStream,
{
    let mut buf = BytesMut::with_capacity(COPY_BUF);
    loop {
        if buf.capacity() < COPY_BUF / 4 {
            buf.reserve(COPY_BUF);
        }
        let n = r.read_buf(&mut buf).await?;
        if n == 0 {
            w.shutdown().await?;
            return Ok(());
        }
        let before = *count;
        *count += n as u64;
        if before < BULK_AFTER && *count >= BULK_AFTER {
            w.set_priority(BULK_PRIORITY);
        }
        w.write_chunk(buf.split().freeze()).await?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    #[derive(Default)]
    struct Recorder {
        data: Vec<u8>,
        priorities: Vec<(usize, i32)>,
        finished: bool,
    }

    impl tokio::io::AsyncWrite for Recorder {
        fn poll_write(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.data.extend_from_slice(b);
            Poll::Ready(Ok(b.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.finished = true;
            Poll::Ready(Ok(()))
        }
    }

    impl SendStream for Recorder {
        fn reset(&mut self, _: u32) {}
        async fn write_chunk(&mut self, data: bytes::Bytes) -> io::Result<()> {
            self.data.extend_from_slice(&data);
            Ok(())
        }
        fn set_priority(&mut self, p: i32) {
            let at = self.data.len();
            self.priorities.push((at, p));
        }
    }

    #[tokio::test]
    async fn bulk_streams_are_demoted_once_small_ones_are_not() {
        let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let mut w = Recorder::default();
        let mut n = 0;
        read_then_hand_over(&mut &big[..], &mut w, &mut n)
            .await
            .unwrap();
        assert_eq!(w.data, big);
        assert!(w.finished);
        assert_eq!(w.priorities.len(), 1, "demoted exactly once");
        assert!(w.priorities[0].0 <= BULK_AFTER as usize && w.priorities[0].1 == BULK_PRIORITY);

        let small = vec![7u8; 10_000];
        let mut w = Recorder::default();
        let mut n = 0;
        read_then_hand_over(&mut &small[..], &mut w, &mut n)
            .await
            .unwrap();
        assert_eq!(w.data, small);
        assert!(w.priorities.is_empty());
    }
}
