//! The [`transport`](crate::transport) traits over a quinn-shaped QUIC library.
//!
//! quinn and noq (iroh's fork of quinn) have the same connection and stream API under
//! different type names, and no common trait. Rather than two copies of the same adapter,
//! each transport crate instantiates this macro with its library's module path.

/// Defines `$conn`, `$send` and `$recv` newtypes over `$quic::{Connection, SendStream,
/// RecvStream}` and implements the engine's transport traits (and tokio I/O) for them.
/// `$quic` is a module name in scope at the call site (`use iroh::endpoint as noq;`).
///
/// `peer = |c| expr` says how the connection names its peer in logs, `peer_key = |c| expr`
/// the peer's full identity that per-peer limits are keyed on (never truncated),
/// `rtt = |c| expr` gives the round-trip time of the path in use as an
/// `Option<Duration>`, for the [`windows`](crate::windows) tuner (`c` is
/// the library's `Connection`), `path = |c| expr` the path in use as an
/// `Option<PathNow>` (for status and metrics), `heard = |s| expr` counts the frames received that prove
/// the peer alive from the library's `ConnectionStats` `s` (ACK frames differ: multipath
/// noq acknowledges with PATH_ACK), `read_chunks = name` names the library's zero-copy
/// multi-chunk read (`read_chunks` in quinn, `read_many_chunks` in noq). The calling crate
/// adds its own inherent methods.
///
/// ```ignore
/// porthole_engine::quic_adapter!(quinn, QuicConn, QuicSend, QuicRecv,
///     peer = |c| c.remote_address().to_string(), peer_key = |c| c.remote_address().ip().to_string(),
///     rtt = |c| Some(c.rtt()),
///     path = |c| None,
///     heard = |s| s.frame_rx.acks + s.frame_rx.ping, read_chunks = read_chunks);
/// ```
#[macro_export]
macro_rules! quic_adapter {
    ($quic:ident, $conn:ident, $send:ident, $recv:ident,
     peer = |$c:ident| $peer:expr, peer_key = |$k:ident| $peer_key:expr,
     rtt = |$r:ident| $rtt:expr, path = |$pa:ident| $path:expr,
     heard = |$h:ident| $heard:expr, read_chunks = $read_chunks:ident) => {
        /// An established connection, as the engine sees it.
        #[derive(Debug, Clone)]
        pub struct $conn($quic::Connection);

        /// The sending half of a bidirectional stream.
        #[derive(Debug)]
        pub struct $send($quic::SendStream);

        /// The receiving half of a bidirectional stream.
        #[derive(Debug)]
        pub struct $recv($quic::RecvStream);

        /// Maps the library's close reason onto the engine's.
        pub fn connection_end(e: $quic::ConnectionError) -> $crate::transport::ConnectionEnd {
            use $crate::transport::ConnectionEnd;
            use $quic::ConnectionError;
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

        fn io_err(e: impl ::std::fmt::Display) -> ::std::io::Error {
            ::std::io::Error::other(e.to_string())
        }

        impl $crate::transport::Connection for $conn {
            type Send = $send;
            type Recv = $recv;

            async fn open_bi(&self) -> ::std::io::Result<($send, $recv)> {
                let (s, r) = self.0.open_bi().await.map_err(io_err)?;
                Ok(($send(s), $recv(r)))
            }

            async fn accept_bi(&self) -> ::std::io::Result<($send, $recv)> {
                let (s, r) = self.0.accept_bi().await.map_err(io_err)?;
                Ok(($send(s), $recv(r)))
            }

            fn send_datagram(&self, data: $crate::__private::Bytes) -> ::std::io::Result<()> {
                self.0.send_datagram(data).map_err(io_err)
            }

            async fn read_datagram(&self) -> ::std::io::Result<$crate::__private::Bytes> {
                self.0.read_datagram().await.map_err(io_err)
            }

            fn max_datagram_size(&self) -> Option<usize> {
                self.0.max_datagram_size()
            }

            fn close(&self, code: u32, reason: &[u8]) {
                self.0.close($quic::VarInt::from_u32(code), reason)
            }

            async fn closed(&self) -> $crate::transport::ConnectionEnd {
                connection_end(self.0.closed().await)
            }

            fn close_reason(&self) -> Option<$crate::transport::ConnectionEnd> {
                self.0.close_reason().map(connection_end)
            }

            fn peer(&self) -> String {
                let $c = &self.0;
                $peer
            }

            fn peer_key(&self) -> String {
                let $k = &self.0;
                $peer_key
            }

            fn frames_received(&self) -> u64 {
                let $h = self.0.stats();
                $heard
            }

            fn path(&self) -> Option<$crate::transport::PathNow> {
                let $pa = &self.0;
                $path
            }

            fn keying_material(&self, label: &[u8]) -> Option<[u8; 32]> {
                let mut out = [0u8; 32];
                self.0.export_keying_material(&mut out, label, b"").ok()?;
                Some(out)
            }
        }

        impl $crate::windows::WindowControl for $conn {
            fn received_bytes(&self) -> u64 {
                self.0.stats().udp_rx.bytes
            }

            fn rtt(&self) -> Option<::std::time::Duration> {
                let $r = &self.0;
                $rtt
            }

            fn set_receive_window(&self, bytes: u64) {
                self.0.set_receive_window(
                    $quic::VarInt::from_u64(bytes).unwrap_or($quic::VarInt::MAX),
                );
            }

            async fn closed(&self) {
                self.0.closed().await;
            }
        }

        impl $crate::transport::SendStream for $send {
            fn reset(&mut self, code: u32) {
                let _ = self.0.reset($quic::VarInt::from_u32(code));
            }

            async fn write_chunk(
                &mut self,
                data: $crate::__private::Bytes,
            ) -> ::std::io::Result<()> {
                self.0.write_chunk(data).await.map_err(io_err)
            }

            fn set_priority(&mut self, priority: i32) {
                let _ = self.0.set_priority(priority);
            }
        }

        impl $crate::transport::RecvStream for $recv {
            fn stop(&mut self, code: u32) {
                let _ = self.0.stop($quic::VarInt::from_u32(code));
            }

            async fn read_chunks(
                &mut self,
                bufs: &mut [$crate::__private::Bytes],
            ) -> ::std::io::Result<Option<usize>> {
                self.0
                    .$read_chunks(bufs)
                    .await
                    .map_err(::std::io::Error::from)
            }
        }

        impl $crate::__private::AsyncWrite for $send {
            fn poll_write(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &[u8],
            ) -> ::std::task::Poll<::std::io::Result<usize>> {
                $crate::__private::AsyncWrite::poll_write(
                    ::std::pin::Pin::new(&mut self.0),
                    cx,
                    buf,
                )
            }

            fn poll_flush(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                $crate::__private::AsyncWrite::poll_flush(::std::pin::Pin::new(&mut self.0), cx)
            }

            fn poll_shutdown(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                $crate::__private::AsyncWrite::poll_shutdown(::std::pin::Pin::new(&mut self.0), cx)
            }
        }

        impl $crate::__private::AsyncRead for $recv {
            fn poll_read(
                mut self: ::std::pin::Pin<&mut Self>,
                cx: &mut ::std::task::Context<'_>,
                buf: &mut $crate::__private::ReadBuf<'_>,
            ) -> ::std::task::Poll<::std::io::Result<()>> {
                $crate::__private::AsyncRead::poll_read(::std::pin::Pin::new(&mut self.0), cx, buf)
            }
        }
    };
}
