//! Pool type 2 (`type=2`): each pool connection is a WebSocket on the tunnel port (`ws://`
//! under tls=0, `wss://` under tls=1/2, path `/`, `Host: <sni>`), as NodePass's npws
//! library makes them. The server's first binary message is the 4-byte pool ID; after
//! that each write is one binary message and reads run across messages as one byte
//! stream (Go's `websocket.NetConn`), except for datagrams, which are one message each.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_websockets::{ClientBuilder, Limits, Message, ServerBuilder, WebSocketStream};

use crate::stream::PoolStream;

/// The largest message accepted (Go writes at most its 32 KiB copy buffer at a time).
const MAX_MESSAGE: usize = 1 << 20;

/// A WebSocket pool connection as a byte stream.
pub struct WsConn {
    inner: WebSocketStream<PoolStream>,
    /// The message being read, and how much of it was handed out.
    current: Vec<u8>,
    at: usize,
    /// A message queued by `poll_write` that is still being flushed: its length.
    sending: Option<usize>,
}

impl std::fmt::Debug for WsConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsConn")
    }
}

fn ws_error(e: tokio_websockets::Error) -> io::Error {
    match e {
        tokio_websockets::Error::Io(e) => e,
        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
    }
}

fn limits() -> Limits {
    Limits::default().max_payload_len(Some(MAX_MESSAGE))
}

/// Server side: answers a pool connection's upgrade request (read already, see
/// [`crate::wire::http::Request::websocket_key`]) and takes the stream over.
pub async fn accept(mut io: PoolStream, key: &str) -> io::Result<WsConn> {
    use tokio::io::AsyncWriteExt;
    io.write_all(crate::wire::http::websocket_accept(key).as_bytes())
        .await?;
    io.flush().await?;
    Ok(WsConn::new(ServerBuilder::new().limits(limits()).serve(io)))
}

/// Client side: upgrades a pool connection (already past TLS) to `scheme://host/`.
pub async fn connect(io: PoolStream, host: &str, tls: bool) -> io::Result<WsConn> {
    let scheme = if tls { "wss" } else { "ws" };
    let uri = format!("{scheme}://{host}/");
    let (inner, _response) = ClientBuilder::new()
        .uri(&uri)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e.to_string()))?
        .limits(limits())
        .connect_on(io)
        .await
        .map_err(ws_error)?;
    Ok(WsConn::new(inner))
}

impl WsConn {
    fn new(inner: WebSocketStream<PoolStream>) -> Self {
        Self {
            inner,
            current: Vec::new(),
            at: 0,
            sending: None,
        }
    }

    /// The next data message (`None` at the end): one datagram.
    fn poll_message(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<Option<Vec<u8>>>> {
        loop {
            match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None => return Poll::Ready(Ok(None)),
                Some(Err(e)) => return Poll::Ready(Err(ws_error(e))),
                Some(Ok(m)) if m.is_close() => return Poll::Ready(Ok(None)),
                Some(Ok(m)) if m.is_binary() || m.is_text() => {
                    return Poll::Ready(Ok(Some(m.into_payload().to_vec())));
                }
                // Pings are answered by the stream itself.
                Some(Ok(_)) => {}
            }
        }
    }

    /// One whole message (a datagram); `Ok(0)` at the end. A message larger than `out`
    /// is cut to it.
    pub async fn recv_message(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if self.at < self.current.len() {
            let n = (self.current.len() - self.at).min(out.len());
            out[..n].copy_from_slice(&self.current[self.at..self.at + n]);
            self.at = self.current.len();
            return Ok(n);
        }
        match std::future::poll_fn(|cx| self.poll_message(cx)).await? {
            None => Ok(0),
            Some(m) => {
                let n = m.len().min(out.len());
                out[..n].copy_from_slice(&m[..n]);
                Ok(n)
            }
        }
    }
}

impl AsyncRead for WsConn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.at >= this.current.len() {
            match ready!(this.poll_message(cx))? {
                None => return Poll::Ready(Ok(())),
                Some(m) => {
                    this.current = m;
                    this.at = 0;
                }
            }
        }
        let n = (this.current.len() - this.at).min(buf.remaining());
        buf.put_slice(&this.current[this.at..this.at + n]);
        this.at += n;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for WsConn {
    /// Each write is one message, sent before the write completes: callers that never
    /// flush (a copy loop) must not leave a message queued while they wait to read.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(n) = this.sending {
            ready!(Pin::new(&mut this.inner).poll_flush(cx)).map_err(ws_error)?;
            this.sending = None;
            return Poll::Ready(Ok(n));
        }
        ready!(Pin::new(&mut this.inner).poll_ready(cx)).map_err(ws_error)?;
        let n = buf.len().min(MAX_MESSAGE);
        Pin::new(&mut this.inner)
            .start_send(Message::binary(buf[..n].to_vec()))
            .map_err(ws_error)?;
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => Poll::Ready(r.map(|()| n).map_err(ws_error)),
            Poll::Pending => {
                // Queued: the caller calls again (with the same bytes) and gets `n` once
                // the message is out.
                this.sending = Some(n);
                Poll::Pending
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_flush(cx)
            .map_err(ws_error)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner)
            .poll_close(cx)
            .map_err(ws_error)
    }
}
