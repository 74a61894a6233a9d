//! Carries over an in-memory link that can be cut like a lost connection: data on the
//! way is lost, both ends' streams fail, and the session attaches a new link.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::carry::{self, Handle, Link};
use super::replay::{Budget, Replay};
use crate::splice::{Controls, SpliceEnd};
use crate::telemetry::StreamMeter;
use crate::transport::{RecvStream, SendStream};

enum Msg {
    Data(Bytes),
    Fin,
    Reset,
}

/// One direction of an in-memory stream; everything fails once `dead` is cancelled.
struct WireSend {
    tx: mpsc::UnboundedSender<Msg>,
    dead: CancellationToken,
}

struct WireRecv {
    rx: mpsc::UnboundedReceiver<Msg>,
    dead: CancellationToken,
    fin: bool,
}

fn lost() -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionAborted, "connection lost")
}

impl WireSend {
    fn put(&self, m: Msg) -> io::Result<()> {
        if self.dead.is_cancelled() {
            return Err(lost());
        }
        self.tx.send(m).map_err(|_| lost())
    }
}

impl tokio::io::AsyncWrite for WireSend {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(
            self.put(Msg::Data(Bytes::copy_from_slice(b)))
                .map(|()| b.len()),
        )
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.put(Msg::Fin))
    }
}

impl SendStream for WireSend {
    fn reset(&mut self, _: u32) {
        let _ = self.put(Msg::Reset);
    }
    async fn write_chunk(&mut self, data: Bytes) -> io::Result<()> {
        // Let the other side run now and then, as a real stream's flow control would.
        tokio::task::yield_now().await;
        self.put(Msg::Data(data))
    }
    fn set_priority(&mut self, _: i32) {}
}

impl tokio::io::AsyncRead for WireRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Not used by carries; enough for the trait.
        if self.dead.is_cancelled() {
            return Poll::Ready(Err(lost()));
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(Msg::Data(d))) => {
                buf.put_slice(&d[..d.len().min(buf.remaining())]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(_) => Poll::Ready(Ok(())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl RecvStream for WireRecv {
    fn stop(&mut self, _: u32) {}
    async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> io::Result<Option<usize>> {
        if self.fin {
            return Ok(None);
        }
        let first = tokio::select! {
            biased;
            _ = self.dead.cancelled() => return Err(lost()),
            m = self.rx.recv() => m,
        };
        let mut n = 0;
        let mut next = first;
        loop {
            match next {
                Some(Msg::Data(d)) => {
                    bufs[n] = d;
                    n += 1;
                }
                Some(Msg::Fin) => {
                    self.fin = true;
                    break;
                }
                Some(Msg::Reset) => {
                    return Err(io::Error::new(io::ErrorKind::ConnectionReset, "reset"));
                }
                None => return Err(lost()),
            }
            if n == bufs.len() {
                break;
            }
            match self.rx.try_recv() {
                Ok(m) => next = Some(m),
                Err(_) => break,
            }
        }
        if n == 0 { Ok(None) } else { Ok(Some(n)) }
    }
}

type TestLink = Link<WireSend, WireRecv>;

/// A new "connection": a stream pair for each end, and the token that loses it.
fn wire(a_received: u64, b_received: u64) -> (TestLink, TestLink, CancellationToken) {
    let dead = CancellationToken::new();
    let (ab_tx, ab_rx) = mpsc::unbounded_channel();
    let (ba_tx, ba_rx) = mpsc::unbounded_channel();
    let alive = |d: &CancellationToken| -> carry::Alive {
        let d = d.clone();
        Arc::new(move || !d.is_cancelled())
    };
    let a = Link {
        send: WireSend {
            tx: ab_tx,
            dead: dead.clone(),
        },
        recv: WireRecv {
            rx: ba_rx,
            dead: dead.clone(),
            fin: false,
        },
        peer_received: b_received,
        alive: alive(&dead),
    };
    let b = Link {
        send: WireSend {
            tx: ba_tx,
            dead: dead.clone(),
        },
        recv: WireRecv {
            rx: ab_rx,
            dead: dead.clone(),
            fin: false,
        },
        peer_received: a_received,
        alive: alive(&dead),
    };
    (a, b, dead)
}

async fn tcp_pair() -> (TcpStream, TcpStream) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    (c, s)
}

type TestHandle = Handle<WireSend, WireRecv>;

/// A carry between a fresh TCP pair's inner end and `link`; returns the user's end.
async fn start(
    link: TestLink,
    budget: &Budget,
    limit: usize,
) -> (TcpStream, TestHandle, tokio::task::JoinHandle<SpliceEnd>) {
    let (user, inner) = tcp_pair().await;
    let shared = Arc::new(carry::Shared::default());
    let replay = Replay::new(limit, budget.clone(), Arc::clone(shared.acked()));
    let (handle, commands) = carry::channel(shared);
    let task = tokio::spawn(async move {
        let meter = StreamMeter::detached();
        carry::run(inner, link, replay, commands, Controls::meter(&meter)).await
    });
    (user, handle, task)
}

/// Stands in for the session's acknowledgements: each side's received count is the
/// other side's acknowledged offset, every few milliseconds.
fn ack_pump(a: &TestHandle, b: &TestHandle) -> tokio::task::JoinHandle<()> {
    let (a, b) = (Arc::clone(a.shared()), Arc::clone(b.shared()));
    tokio::spawn(async move {
        loop {
            a.acked().advance(b.received());
            b.acked().advance(a.received());
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

/// Deterministic, not repeating at any short period.
fn pattern(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` in pieces, half-closes, and returns everything read until EOF.
async fn exchange(user: TcpStream, data: Vec<u8>) -> Vec<u8> {
    let (mut r, mut w) = user.into_split();
    let writer = tokio::spawn(async move {
        for piece in data.chunks(7919) {
            w.write_all(piece).await.unwrap();
        }
        w.shutdown().await.unwrap();
        w
    });
    let mut got = Vec::new();
    r.read_to_end(&mut got).await.unwrap();
    let _w = writer.await.unwrap();
    got
}

/// Loses the link under both carries and gives them a new one, as a session would;
/// returns the new link's token.
async fn cut_and_resume(
    a: &TestHandle,
    b: &TestHandle,
    dead: &CancellationToken,
) -> CancellationToken {
    dead.cancel();
    let a_received = a.park().await;
    let b_received = b.park().await;
    let (la, lb, next) = wire(a_received, b_received);
    assert!(a.attach(la).await || a.is_finished());
    assert!(b.attach(lb).await || b.is_finished());
    next
}

#[tokio::test]
async fn both_directions_arrive_whole_across_lost_connections() {
    let budget = Budget::new(64 << 20);
    let (la, lb, dead) = wire(0, 0);
    let (user_a, a, task_a) = start(la, &budget, 1 << 20).await;
    let (user_b, b, task_b) = start(lb, &budget, 1 << 20).await;
    let pump = ack_pump(&a, &b);

    let (to_b, to_a) = (pattern(24 << 20, 1), pattern(20 << 20, 2));
    let got_b = tokio::spawn(exchange(user_b, to_a.clone()));
    let got_a = tokio::spawn(exchange(user_a, to_b.clone()));

    // Cut while data moves, five times.
    let mut dead = dead;
    let mut cuts_mid_transfer = 0;
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if !got_a.is_finished() || !got_b.is_finished() {
            cuts_mid_transfer += 1;
        }
        dead = cut_and_resume(&a, &b, &dead).await;
    }

    let (got_a, got_b) = (got_a.await.unwrap(), got_b.await.unwrap());
    assert!(
        got_a.len() == to_a.len() && got_a == to_a,
        "A got {} of {} bytes, or out of order",
        got_a.len(),
        to_a.len()
    );
    assert!(
        got_b == to_b,
        "B got {} of {} bytes",
        got_b.len(),
        to_b.len()
    );
    assert!(cuts_mid_transfer >= 2, "the cuts came after the transfer");
    for task in [task_a, task_b] {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(SpliceEnd::Clean { .. })) => {}
            other => panic!("carry did not end cleanly: {other:?}"),
        }
    }
    pump.abort();
    assert_eq!(budget.available(), 64 << 20, "every kept byte given back");
}

#[tokio::test]
async fn a_full_replay_holds_the_user_back_until_acknowledged() {
    let budget = Budget::new(64 << 20);
    let (la, lb, _dead) = wire(0, 0);
    let limit = 128 * 1024;
    let (mut user_a, a, _ta) = start(la, &budget, limit).await;
    let (mut user_b, b, _tb) = start(lb, &budget, limit).await;

    let data = pattern(4 << 20, 3);
    let writer = {
        let data = data.clone();
        tokio::spawn(async move {
            user_a.write_all(&data).await.unwrap();
            user_a
        })
    };
    // No acknowledgements: B gets what A could keep (its limit, one read more at most).
    let mut got = vec![0u8; data.len()];
    let mut n = 0;
    while let Ok(Ok(k)) =
        tokio::time::timeout(Duration::from_millis(300), user_b.read(&mut got[n..])).await
    {
        n += k;
    }
    assert!(
        n >= limit && n <= limit + 64 * 1024,
        "without acknowledgements {n} bytes went through (limit {limit})"
    );
    assert!(!writer.is_finished(), "the user was held back");

    let _pump = ack_pump(&a, &b);
    user_b.read_exact(&mut got[n..]).await.unwrap();
    assert!(got == data);
    writer.await.unwrap();
}

#[tokio::test]
async fn a_peer_reset_on_a_live_connection_aborts_as_a_splice_does() {
    let budget = Budget::new(1 << 20);
    let (la, mut lb, _dead) = wire(0, 0);
    let (mut user_a, _a, task_a) = start(la, &budget, 1 << 20).await;
    lb.send.reset(0);
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), user_a.read(&mut buf))
        .await
        .expect("the user's connection ended");
    assert_eq!(
        read.map_err(|e| e.kind()).unwrap_err(),
        io::ErrorKind::ConnectionReset,
        "RST, not EOF"
    );
    assert!(matches!(task_a.await.unwrap(), SpliceEnd::Aborted { .. }));
}

#[tokio::test]
async fn a_parked_carry_whose_session_gives_up_resets_the_user() {
    let budget = Budget::new(1 << 20);
    let (la, _lb, dead) = wire(0, 0);
    let (mut user_a, a, task_a) = start(la, &budget, 1 << 20).await;
    user_a.write_all(b"kept while parked").await.unwrap();
    dead.cancel();
    a.park().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(!task_a.is_finished(), "a parked carry waits");
    drop(a);
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(5), user_a.read(&mut buf))
        .await
        .expect("the user's connection ended");
    assert_eq!(
        read.map_err(|e| e.kind()).unwrap_err(),
        io::ErrorKind::ConnectionReset
    );
    let end = task_a.await.unwrap();
    assert!(matches!(end, SpliceEnd::Aborted { .. }), "{end:?}");
    assert_eq!(budget.available(), 1 << 20);
}

#[tokio::test]
async fn a_resume_from_before_the_acknowledged_offset_is_refused() {
    let budget = Budget::new(1 << 20);
    let (la, lb, dead) = wire(0, 0);
    let (user_a, a, task_a) = start(la, &budget, 1 << 20).await;
    let (user_b, b, _tb) = start(lb, &budget, 1 << 20).await;
    let pump = ack_pump(&a, &b);
    let (_ra, mut wa) = user_a.into_split();
    let (mut rb, _wb) = user_b.into_split();
    wa.write_all(&[7u8; 10_000]).await.unwrap();
    let mut got = [0u8; 10_000];
    rb.read_exact(&mut got).await.unwrap();
    while a.shared().acked().get() < 10_000 {
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    pump.abort();
    dead.cancel();
    a.park().await;
    // A peer claiming it has only 5,000 of the 10,000 bytes it acknowledged.
    let (la, _lb, _next) = wire(0, 5_000);
    a.attach(la).await;
    let end = tokio::time::timeout(Duration::from_secs(5), task_a)
        .await
        .unwrap()
        .unwrap();
    match end {
        SpliceEnd::Aborted { error, .. } => {
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{error}")
        }
        other => panic!("{other:?}"),
    }
}

/// The FIN counts in what a peer says it has received: a FIN that arrived before the
/// loss is acknowledged by the resume itself, and a carry waiting for its last
/// acknowledgement then ends cleanly.
#[tokio::test]
async fn a_fin_received_before_the_loss_completes_the_direction() {
    let budget = Budget::new(1 << 20);
    let (la, lb, dead) = wire(0, 0);
    let (mut user_a, a, task_a) = start(la, &budget, 1 << 20).await;
    let (mut user_b, b, task_b) = start(lb, &budget, 1 << 20).await;
    user_a.write_all(b"hello").await.unwrap();
    user_a.shutdown().await.unwrap();
    let mut got = Vec::new();
    user_b.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"hello");
    // No acknowledgement went back: A still waits for one when the connection is lost.
    assert_eq!(b.shared().received(), 6, "five bytes and the FIN");
    assert_eq!(a.shared().acked().get(), 0);
    let next = cut_and_resume(&a, &b, &dead).await;

    let _pump = ack_pump(&a, &b);
    user_b.write_all(b"bye").await.unwrap();
    user_b.shutdown().await.unwrap();
    let mut got = Vec::new();
    user_a.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"bye");
    for task in [task_a, task_b] {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(SpliceEnd::Clean { .. })) => {}
            other => panic!("carry did not end cleanly: {other:?}"),
        }
    }
    drop(next);
}
