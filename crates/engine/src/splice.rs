//! Copying between a TCP connection and a QUIC stream pair, both directions at once.
//!
//! - A clean EOF on one side finishes only that direction (TCP half-close <-> QUIC FIN),
//!   so a client that sends, shuts down its write side, then reads, gets the whole reply.
//! - An error on either side aborts both: the QUIC stream is reset and the TCP
//!   connection is closed with RST. Nobody mistakes a failure for a clean end.
//! - Except that bytes read from TCP before the local peer reset the connection are
//!   still delivered: the stream is finished (FIN after them) instead of reset, since
//!   QUIC's RESET_STREAM would discard them, and direct TCP hands a reader everything
//!   that arrived before a reset. A server that answers and then closes with unread
//!   input (its kernel sends RST: iperf3 when busy, HTTP servers refusing an upload)
//!   gets its answer through; the user then sees EOF, and RST on the next write.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use porthole_proto::close::StreamCode;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::pace::Bucket;
use crate::telemetry::StreamMeter;
use crate::transport::{RecvStream, SendStream};

/// TCP -> QUIC read buffer (64 KiB moves 10 % more per CPU second than 16 KiB).
pub const COPY_BUF: usize = 64 * 1024;

/// QUIC -> TCP: received chunks taken per read and written with one `writev`. A chunk is
/// one packet's stream data (~1.4 KB), so 64 of them are ~90 KB, more than a 64 KiB copy.
pub(crate) const CHUNKS_PER_WRITE: usize = 64;

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

/// What watches and limits a splice besides its two ends.
#[derive(Debug, Clone, Copy)]
pub struct Controls<'a> {
    /// Counts the bytes as they move (status and metrics see a transfer while it runs).
    pub meter: &'a StreamMeter,
    /// Cancelling it aborts both directions as an error does (the forward was closed).
    pub stop: Option<&'a tokio_util::sync::CancellationToken>,
    /// Bandwidth caps for the bytes read from TCP and written to it.
    pub from_tcp: Option<&'a Bucket>,
    pub to_tcp: Option<&'a Bucket>,
}

impl<'a> Controls<'a> {
    /// Counting only.
    pub fn meter(meter: &'a StreamMeter) -> Self {
        Self {
            meter,
            stop: None,
            from_tcp: None,
            to_tcp: None,
        }
    }
}

/// Runs until both directions are done or one fails. `up` is TCP -> QUIC.
pub async fn splice<S: SendStream, R: RecvStream>(
    mut tcp: TcpStream,
    mut send: S,
    mut recv: R,
    ctl: Controls<'_>,
) -> SpliceEnd {
    let meter = ctl.meter;
    let (mut up, mut down) = (0u64, 0u64);
    let mut up_finished = false;
    let result = {
        let (mut tcp_r, mut tcp_w) = tcp.split();
        let up_fut = pin!(read_then_hand_over(
            &mut tcp_r,
            &mut send,
            &mut up,
            &mut up_finished,
            meter,
            ctl.from_tcp,
        ));
        let down_fut = pin!(write_chunks_then_finish(
            &mut recv, &mut tcp_w, &mut down, meter, ctl.to_tcp,
        ));
        // Both directions to their end; the first error ends both at once.
        tokio::select! {
            r = async { tokio::try_join!(up_fut, down_fut) } => r.map(|_| ()),
            _ = stopped(ctl.stop) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the forward was closed",
            )),
        }
    };
    match result {
        Ok(()) => SpliceEnd::Clean { up, down },
        Err(error) => {
            // A finished direction keeps its data (and FIN) on the way.
            if !up_finished {
                send.reset(StreamCode::PeerReset.as_u32());
            }
            recv.stop(StreamCode::PeerReset.as_u32());
            abort_tcp(&tcp);
            SpliceEnd::Aborted { up, down, error }
        }
    }
}

/// QUIC -> TCP: writes the stream's received chunks as they are (no copy into a buffer
/// of ours), then shuts the writer down (FIN / half-close) at the end of the stream.
///
/// A chunk is a slice of the QUIC stack's receive buffer and keeps that whole buffer (a
/// batch of packets, tens of KB, shared with other streams) alive. So chunks are held for
/// one write attempt only: what TCP does not take at once is copied out and every chunk
/// released before waiting. Holding them across slow writes pinned ~10 MiB more on the
/// receiving end of 8 bulk streams.
async fn write_chunks_then_finish<R, W>(
    r: &mut R,
    w: &mut W,
    count: &mut u64,
    meter: &StreamMeter,
    cap: Option<&Bucket>,
) -> io::Result<()>
where
    R: RecvStream,
    W: AsyncWrite + Unpin + ?Sized,
{
    let mut chunks: [Bytes; CHUNKS_PER_WRITE] = std::array::from_fn(|_| Bytes::new());
    loop {
        let Some(n) = r.read_chunks(&mut chunks).await? else {
            w.shutdown().await?;
            return Ok(());
        };
        if let Some(cap) = cap {
            cap.take(chunks[..n].iter().map(|c| c.len() as u64).sum())
                .await;
        }
        let taken = write_now(w, &chunks[..n]).await?;
        *count += taken as u64;
        meter.to_tcp(taken as u64);
        let rest = take_rest(&mut chunks[..n], taken);
        if !rest.is_empty() {
            w.write_all(&rest).await?;
            *count += rest.len() as u64;
            meter.to_tcp(rest.len() as u64);
        }
    }
}

/// One vectored write that does not wait: how many bytes the writer took right away
/// (0 if it would block).
pub(crate) async fn write_now<W>(w: &mut W, chunks: &[Bytes]) -> io::Result<usize>
where
    W: AsyncWrite + Unpin + ?Sized,
{
    let slices: [IoSlice<'_>; CHUNKS_PER_WRITE] =
        std::array::from_fn(|i| IoSlice::new(chunks.get(i).map_or(&[], |c| &c[..])));
    let slices = &slices[..chunks.len().min(CHUNKS_PER_WRITE)];
    if slices.iter().all(|s| s.is_empty()) {
        return Ok(0);
    }
    std::future::poll_fn(
        |cx| match Pin::new(&mut *w).poll_write_vectored(cx, slices) {
            Poll::Pending => Poll::Ready(Ok(0)),
            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            ready => ready,
        },
    )
    .await
}

/// Releases every chunk, returning a copy of the bytes past the first `written`.
pub(crate) fn take_rest(chunks: &mut [Bytes], mut written: usize) -> Vec<u8> {
    let mut rest = Vec::new();
    for chunk in chunks {
        let chunk = std::mem::take(chunk);
        let skip = written.min(chunk.len());
        written -= skip;
        rest.extend_from_slice(&chunk[skip..]);
    }
    rest
}

/// TCP -> QUIC: reads into a buffer whose filled part is handed to the stream as is
/// (no second copy), then FIN at EOF, or at a reset after the data read before it (the
/// reset is still returned as the error). `finished` tells whether the FIN went out.
async fn read_then_hand_over<R, S>(
    r: &mut R,
    w: &mut S,
    count: &mut u64,
    finished: &mut bool,
    meter: &StreamMeter,
    cap: Option<&Bucket>,
) -> io::Result<()>
where
    R: AsyncRead + Unpin + ?Sized,
    S: SendStream,
{
    let mut buf = BytesMut::with_capacity(COPY_BUF);
    loop {
        if buf.capacity() < COPY_BUF / 4 {
            buf.reserve(COPY_BUF);
        }
        // A reset ends the stream like EOF does (FIN behind the data), then is returned.
        let (n, reset) = match r.read_buf(&mut buf).await {
            Ok(n) => (n, None),
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => (0, Some(e)),
            Err(e) => return Err(e),
        };
        if n == 0 {
            w.shutdown().await?;
            *finished = true;
            return reset.map_or(Ok(()), Err);
        }
        let before = *count;
        *count += n as u64;
        meter.from_tcp(n as u64);
        if let Some(cap) = cap {
            cap.take(n as u64).await;
        }
        if before < BULK_AFTER && *count >= BULK_AFTER {
            w.set_priority(BULK_PRIORITY);
        }
        hand_over_fairly(w, buf.split().freeze()).await?;
    }
}

/// Hands a chunk to the stream; when it had to wait for flow-control credit, lets the
/// other streams woken by the same credit take their turn before reading on.
///
/// A connection's credit (MAX_DATA) is shared by its streams and goes to whoever writes
/// first. Every blocked stream is woken when credit arrives, but on one thread the first
/// to run would otherwise keep reading and writing until the credit was gone: with
/// 16 MiB stream windows, six bulk streams over a 40 ms, 1 %-loss path moved between
/// 1.5 and 266 MB each in 10 s (`natlab::sharing`). Yielding after a blocked write
/// shares the credit 64 KiB at a time; a write that did not wait costs nothing extra.
pub(crate) async fn hand_over_fairly<S: SendStream>(
    w: &mut S,
    chunk: bytes::Bytes,
) -> io::Result<()> {
    let mut write = pin!(w.write_chunk(chunk));
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(r) => r,
        Poll::Pending => {
            write.await?;
            tokio::task::yield_now().await;
            Ok(())
        }
    }
}

/// Resolves when `stop` is cancelled; never without one.
pub(crate) async fn stopped(stop: Option<&tokio_util::sync::CancellationToken>) {
    match stop {
        Some(s) => s.cancelled().await,
        None => std::future::pending().await,
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

    /// A received stream that hands out the given chunks, a few per read.
    struct Chunks(std::collections::VecDeque<Bytes>);

    impl tokio::io::AsyncRead for Chunks {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            if let Some(mut c) = self.0.pop_front() {
                let n = c.len().min(buf.remaining());
                buf.put_slice(&c.split_to(n));
                if !c.is_empty() {
                    self.0.push_front(c);
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    impl RecvStream for Chunks {
        fn stop(&mut self, _: u32) {}
        async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> io::Result<Option<usize>> {
            if self.0.is_empty() {
                return Ok(None);
            }
            let n = bufs.len().min(3).min(self.0.len());
            for b in &mut bufs[..n] {
                *b = self.0.pop_front().unwrap_or_default();
            }
            Ok(Some(n))
        }
    }

    /// A TCP peer that takes at most `limit` bytes per write (cutting chunks) and, with
    /// `full_once`, is full the first time (the write would block).
    struct TcpPeer {
        limit: usize,
        full_once: bool,
        data: Vec<u8>,
        finished: bool,
    }

    impl TcpPeer {
        fn new(limit: usize, full_once: bool) -> Self {
            Self {
                limit,
                full_once,
                data: Vec::new(),
                finished: false,
            }
        }
    }

    impl tokio::io::AsyncWrite for TcpPeer {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            b: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.poll_write_vectored(cx, &[IoSlice::new(b)])
        }
        fn poll_write_vectored(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            if std::mem::take(&mut self.full_once) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            let mut n = 0;
            for b in bufs {
                let take = b.len().min(self.limit - n);
                self.data.extend_from_slice(&b[..take]);
                n += take;
            }
            Poll::Ready(Ok(n))
        }
        fn is_write_vectored(&self) -> bool {
            true
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.finished = true;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn chunks_reach_tcp_whole_and_in_order_through_partial_writes() {
        // Uneven chunks, an empty one among them, written 1000 bytes at a time.
        let sizes = [1400, 0, 1, 2999, 700, 1200, 5000, 13];
        let mut next = 0u8;
        let chunks: Vec<Bytes> = sizes
            .iter()
            .map(|&n| {
                (0..n)
                    .map(|_| {
                        next = next.wrapping_add(7);
                        next
                    })
                    .collect::<Vec<u8>>()
                    .into()
            })
            .collect();
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let mut r = Chunks(chunks.into());
        let mut w = TcpPeer::new(1000, false);
        let mut n = 0;
        write_chunks_then_finish(&mut r, &mut w, &mut n, &StreamMeter::detached(), None)
            .await
            .unwrap();
        assert_eq!(w.data, expected);
        assert_eq!(n, expected.len() as u64);
        assert!(w.finished, "end of stream half-closes TCP");
    }

    #[tokio::test]
    async fn a_blocked_write_keeps_every_byte() {
        let chunks: Vec<Bytes> = vec![vec![1u8; 1500].into(), vec![2u8; 10].into()];
        let expected: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        let mut r = Chunks(chunks.into());
        let mut w = TcpPeer::new(usize::MAX, true);
        let mut n = 0;
        write_chunks_then_finish(&mut r, &mut w, &mut n, &StreamMeter::detached(), None)
            .await
            .unwrap();
        assert!(!w.full_once, "the peer was full once");
        assert_eq!(w.data, expected);
        assert_eq!(n, expected.len() as u64);
    }

    #[test]
    fn chunks_are_released_and_the_unwritten_rest_copied() {
        let batch = Bytes::from(vec![9u8; 3000]);
        let mut chunks = [batch.slice(0..1000), batch.slice(1000..2500), Bytes::new()];
        let rest = take_rest(&mut chunks, 1200);
        assert_eq!(rest, vec![9u8; 1300]);
        assert!(chunks.iter().all(|c| c.is_empty()));
        // Nothing refers to the receive buffer any more.
        assert!(batch.is_unique());
    }

    /// A TCP peer that sends a reply, then resets the connection.
    struct ReplyThenReset(Option<&'static [u8]>);

    impl tokio::io::AsyncRead for ReplyThenReset {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            match self.0.take() {
                Some(reply) => {
                    buf.put_slice(reply);
                    Poll::Ready(Ok(()))
                }
                None => Poll::Ready(Err(io::ErrorKind::ConnectionReset.into())),
            }
        }
    }

    #[tokio::test]
    async fn a_reset_after_data_finishes_the_stream_behind_the_data() {
        let mut r = ReplyThenReset(Some(b"busy"));
        let mut w = Recorder::default();
        let (mut n, mut fin) = (0, false);
        let e = read_then_hand_over(
            &mut r,
            &mut w,
            &mut n,
            &mut fin,
            &StreamMeter::detached(),
            None,
        )
        .await
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionReset, "still an error");
        assert_eq!(w.data, b"busy");
        assert!(w.finished && fin, "FIN behind the data, not a reset");
    }

    #[tokio::test]
    async fn bulk_streams_are_demoted_once_small_ones_are_not() {
        let big: Vec<u8> = (0..1_000_000u32).map(|i| i as u8).collect();
        let mut w = Recorder::default();
        let (mut n, mut fin) = (0, false);
        read_then_hand_over(
            &mut &big[..],
            &mut w,
            &mut n,
            &mut fin,
            &StreamMeter::detached(),
            None,
        )
        .await
        .unwrap();
        assert!(fin);
        assert_eq!(w.data, big);
        assert!(w.finished);
        assert_eq!(w.priorities.len(), 1, "demoted exactly once");
        assert!(w.priorities[0].0 <= BULK_AFTER as usize && w.priorities[0].1 == BULK_PRIORITY);

        let small = vec![7u8; 10_000];
        let mut w = Recorder::default();
        let (mut n, mut fin) = (0, false);
        read_then_hand_over(
            &mut &small[..],
            &mut w,
            &mut n,
            &mut fin,
            &StreamMeter::detached(),
            None,
        )
        .await
        .unwrap();
        assert_eq!(w.data, small);
        assert!(w.priorities.is_empty());
    }
}
