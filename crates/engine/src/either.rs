//! One connection type over two transports: the session of a client or server that
//! can run on either of two kinds of connection (iroh mode's relayed iroh connection,
//! and the plain QUIC connection a direct upgrade punched beside it) keeps one type.
//!
//! `tokio_util`'s `Either` already reads and writes as whichever side it holds; this
//! adds the engine's traits the same way.

use std::io;

use bytes::Bytes;
pub use tokio_util::either::Either;

use crate::transport::{Connection, ConnectionEnd, PathNow, RecvStream, SendStream};

impl<A: SendStream, B: SendStream> SendStream for Either<A, B> {
    fn reset(&mut self, code: u32) {
        match self {
            Either::Left(s) => s.reset(code),
            Either::Right(s) => s.reset(code),
        }
    }

    async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Either::Left(s) => s.write_chunk(data).await,
            Either::Right(s) => s.write_chunk(data).await,
        }
    }

    fn set_priority(&mut self, priority: i32) {
        match self {
            Either::Left(s) => s.set_priority(priority),
            Either::Right(s) => s.set_priority(priority),
        }
    }
}

impl<A: RecvStream, B: RecvStream> RecvStream for Either<A, B> {
    fn stop(&mut self, code: u32) {
        match self {
            Either::Left(s) => s.stop(code),
            Either::Right(s) => s.stop(code),
        }
    }

    async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> io::Result<Option<usize>> {
        match self {
            Either::Left(s) => s.read_chunks(bufs).await,
            Either::Right(s) => s.read_chunks(bufs).await,
        }
    }
}

/// Calls the same method on whichever connection `$c` holds.
macro_rules! both {
    ($c:expr, $x:ident => $e:expr) => {
        match $c {
            Either::Left($x) => $e,
            Either::Right($x) => $e,
        }
    };
}

impl<A: Connection, B: Connection> Connection for Either<A, B> {
    type Send = Either<A::Send, B::Send>;
    type Recv = Either<A::Recv, B::Recv>;

    async fn open_bi(&self) -> io::Result<(Self::Send, Self::Recv)> {
        match self {
            Either::Left(c) => c
                .open_bi()
                .await
                .map(|(s, r)| (Either::Left(s), Either::Left(r))),
            Either::Right(c) => c
                .open_bi()
                .await
                .map(|(s, r)| (Either::Right(s), Either::Right(r))),
        }
    }

    async fn accept_bi(&self) -> io::Result<(Self::Send, Self::Recv)> {
        match self {
            Either::Left(c) => c
                .accept_bi()
                .await
                .map(|(s, r)| (Either::Left(s), Either::Left(r))),
            Either::Right(c) => c
                .accept_bi()
                .await
                .map(|(s, r)| (Either::Right(s), Either::Right(r))),
        }
    }

    fn send_datagram(&self, data: Bytes) -> io::Result<()> {
        both!(self, c => c.send_datagram(data))
    }

    async fn read_datagram(&self) -> io::Result<Bytes> {
        both!(self, c => c.read_datagram().await)
    }

    fn max_datagram_size(&self) -> Option<usize> {
        both!(self, c => c.max_datagram_size())
    }

    fn close(&self, code: u32, reason: &[u8]) {
        both!(self, c => c.close(code, reason))
    }

    async fn closed(&self) -> ConnectionEnd {
        both!(self, c => c.closed().await)
    }

    fn close_reason(&self) -> Option<ConnectionEnd> {
        both!(self, c => c.close_reason())
    }

    fn peer(&self) -> String {
        both!(self, c => c.peer())
    }

    fn peer_key(&self) -> String {
        both!(self, c => c.peer_key())
    }

    fn frames_received(&self) -> u64 {
        both!(self, c => c.frames_received())
    }

    fn path(&self) -> Option<PathNow> {
        both!(self, c => c.path())
    }

    fn keying_material(&self, label: &[u8]) -> Option<[u8; 32]> {
        both!(self, c => c.keying_material(label))
    }
}
