//! Pool connection streams: plain TCP or TLS (either side), and datagram framing for UDP
//! sessions.
//!
//! NodePass carries each UDP datagram as one write and takes each read on the other side
//! as one datagram. Over TLS that works because Go's `tls.Conn.Read` returns at most one
//! record per call, and each write is one record. A tokio-rustls stream happily returns
//! several records in one read, gluing datagrams together; [`DatagramStream`] therefore
//! drives rustls itself and decrypts exactly one record per datagram.

use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

/// A pool connection's byte stream.
pub enum PoolStream {
    Plain(TcpStream),
    Server(Box<tokio_rustls::server::TlsStream<TcpStream>>),
    Client(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for PoolStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PoolStream::Server(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
            PoolStream::Client(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for PoolStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PoolStream::Server(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
            PoolStream::Client(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PoolStream::Server(s) => Pin::new(s.as_mut()).poll_flush(cx),
            PoolStream::Client(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PoolStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PoolStream::Server(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
            PoolStream::Client(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// TLS record header length and the largest record body (TLS 1.3 allows 2^14 + 256).
const RECORD_HEADER: usize = 5;
const MAX_RECORD: usize = (1 << 14) + 256;

/// One datagram per read / write, with record boundaries kept under TLS.
pub enum DatagramStream {
    Plain(TcpStream),
    Tls {
        tcp: TcpStream,
        conn: Box<rustls::Connection>,
        inbuf: Vec<u8>,
    },
}

impl DatagramStream {
    pub fn new(s: PoolStream) -> Self {
        match s {
            PoolStream::Plain(t) => DatagramStream::Plain(t),
            PoolStream::Server(t) => {
                let (tcp, conn) = t.into_inner();
                DatagramStream::Tls {
                    tcp,
                    conn: Box::new(conn.into()),
                    inbuf: Vec::new(),
                }
            }
            PoolStream::Client(t) => {
                let (tcp, conn) = t.into_inner();
                DatagramStream::Tls {
                    tcp,
                    conn: Box::new(conn.into()),
                    inbuf: Vec::new(),
                }
            }
        }
    }

    /// The next datagram (`Ok(0)` at the end of the stream). Cancel-safe: bytes already
    /// read from the socket stay buffered.
    pub async fn recv(&mut self, out: &mut [u8]) -> io::Result<usize> {
        match self {
            DatagramStream::Plain(t) => t.read(out).await,
            DatagramStream::Tls { tcp, conn, inbuf } => loop {
                // Plaintext of the record processed last.
                match conn.reader().read(out) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(e),
                }
                // Exactly one more record from the socket.
                let len = loop {
                    if let Some(len) = record_len(inbuf) {
                        if len > RECORD_HEADER + MAX_RECORD {
                            return Err(io::Error::new(
                                io::ErrorKind::InvalidData,
                                "oversized TLS record",
                            ));
                        }
                        if inbuf.len() >= len {
                            break len;
                        }
                    }
                    let mut chunk = [0u8; 16 * 1024];
                    let n = tcp.read(&mut chunk).await?;
                    if n == 0 {
                        return Ok(0);
                    }
                    inbuf.extend_from_slice(&chunk[..n]);
                };
                let mut record = &inbuf[..len];
                conn.read_tls(&mut record)?;
                inbuf.drain(..len);
                // Anything rustls wants to answer (a key update) goes out with the next
                // send: writing here would not be cancel-safe.
                conn.process_new_packets()
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            },
        }
    }

    /// Sends one datagram (one TLS record under TLS).
    pub async fn send(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            DatagramStream::Plain(t) => t.write_all(data).await,
            DatagramStream::Tls { tcp, conn, .. } => {
                conn.writer().write_all(data)?;
                flush_tls(tcp, conn).await
            }
        }
    }
}

/// The whole length (header included) of the TLS record starting `buf`, once its header is in.
fn record_len(buf: &[u8]) -> Option<usize> {
    let body = u16::from_be_bytes([*buf.get(3)?, *buf.get(4)?]);
    Some(RECORD_HEADER + usize::from(body))
}

async fn flush_tls(tcp: &mut TcpStream, conn: &mut rustls::Connection) -> io::Result<()> {
    while conn.wants_write() {
        let mut out = Vec::new();
        conn.write_tls(&mut out)?;
        tcp.write_all(&out).await?;
    }
    Ok(())
}
