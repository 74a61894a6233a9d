//! The engine's connection and stream traits over quinn.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use porthole_engine::transport::{self, ConnectionEnd};
use quinn::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

#[derive(Debug, Clone)]
pub struct QuicConn(Connection);

impl QuicConn {
    pub fn new(c: Connection) -> Self {
        Self(c)
    }

    pub fn inner(&self) -> &Connection {
        &self.0
    }
}

#[derive(Debug)]
pub struct QuicSend(SendStream);
#[derive(Debug)]
pub struct QuicRecv(RecvStream);

pub fn connection_end(e: ConnectionError) -> ConnectionEnd {
    match e {
        ConnectionError::ApplicationClosed(c) => ConnectionEnd::Peer {
            code: c.error_code.into_inner(),
            reason: String::from_utf8_lossy(&c.reason).into_owned(),
        },
        ConnectionError::LocallyClosed => ConnectionEnd::Local,
        ConnectionError::TimedOut => ConnectionEnd::TimedOut,
        ConnectionError::Reset => ConnectionEnd::Reset,
        other => ConnectionEnd::Other(other.to_string()),
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

impl transport::Connection for QuicConn {
    type Send = QuicSend;
    type Recv = QuicRecv;

    async fn open_bi(&self) -> io::Result<(QuicSend, QuicRecv)> {
        let (s, r) = self.0.open_bi().await.map_err(io_err)?;
        Ok((QuicSend(s), QuicRecv(r)))
    }

    async fn accept_bi(&self) -> io::Result<(QuicSend, QuicRecv)> {
        let (s, r) = self.0.accept_bi().await.map_err(io_err)?;
        Ok((QuicSend(s), QuicRecv(r)))
    }

    fn send_datagram(&self, data: Bytes) -> io::Result<()> {
        self.0.send_datagram(data).map_err(io_err)
    }

    async fn read_datagram(&self) -> io::Result<Bytes> {
        self.0.read_datagram().await.map_err(io_err)
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.0.max_datagram_size()
    }

    fn close(&self, code: u32, reason: &[u8]) {
        self.0.close(VarInt::from_u32(code), reason)
    }

    async fn closed(&self) -> ConnectionEnd {
        connection_end(self.0.closed().await)
    }

    fn close_reason(&self) -> Option<ConnectionEnd> {
        self.0.close_reason().map(connection_end)
    }

    fn peer(&self) -> String {
        self.0.remote_address().to_string()
    }
}

impl transport::SendStream for QuicSend {
    fn reset(&mut self, code: u32) {
        let _ = self.0.reset(VarInt::from_u32(code));
    }

    async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        self.0.write_chunk(data).await.map_err(io_err)
    }

    fn set_priority(&mut self, priority: i32) {
        let _ = self.0.set_priority(priority);
    }
}

impl transport::RecvStream for QuicRecv {
    fn stop(&mut self, code: u32) {
        let _ = self.0.stop(VarInt::from_u32(code));
    }
}

impl AsyncWrite for QuicSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}

impl AsyncRead for QuicRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.0), cx, buf)
    }
}
