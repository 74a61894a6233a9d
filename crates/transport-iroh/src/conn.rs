//! The engine's connection and stream traits over iroh's QUIC (noq) types.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use iroh::endpoint::{Connection, ConnectionError, RecvStream, SendStream, VarInt};
use porthole_engine::transport::{self, ConnectionEnd};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::paths::{self, PathInfo};

#[derive(Debug, Clone)]
pub struct IrohConn(Connection);

impl IrohConn {
    pub fn new(conn: Connection) -> Self {
        Self(conn)
    }

    pub fn inner(&self) -> &Connection {
        &self.0
    }

    /// The path currently carrying data, with its RTT.
    pub fn path(&self) -> Option<PathInfo> {
        paths::selected(&self.0)
    }
}

#[derive(Debug)]
pub struct IrohSend(SendStream);
#[derive(Debug)]
pub struct IrohRecv(RecvStream);

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

impl transport::Connection for IrohConn {
    type Send = IrohSend;
    type Recv = IrohRecv;

    async fn open_bi(&self) -> io::Result<(IrohSend, IrohRecv)> {
        let (s, r) = self.0.open_bi().await.map_err(io_err)?;
        Ok((IrohSend(s), IrohRecv(r)))
    }

    async fn accept_bi(&self) -> io::Result<(IrohSend, IrohRecv)> {
        let (s, r) = self.0.accept_bi().await.map_err(io_err)?;
        Ok((IrohSend(s), IrohRecv(r)))
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
        self.0.remote_id().fmt_short().to_string()
    }
}

impl transport::SendStream for IrohSend {
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

impl transport::RecvStream for IrohRecv {
    fn stop(&mut self, code: u32) {
        let _ = self.0.stop(VarInt::from_u32(code));
    }
}

impl AsyncWrite for IrohSend {
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

impl AsyncRead for IrohRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.0), cx, buf)
    }
}
