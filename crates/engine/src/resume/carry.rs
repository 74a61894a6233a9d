//! One TCP connection carried over a sequence of QUIC streams (a resumable splice).
//!
//! Like [`crate::splice`] it copies both directions at once, half-closes with FIN and
//! aborts with RST; unlike it, losing the connection under the stream is not the end:
//! the TCP connection stays open, the carry parks, and when the session attaches a
//! stream of a new connection each side sends again what the other has not read.
//!
//! - Up (TCP -> QUIC): every chunk read from TCP is kept in a [`Replay`] before it is
//!   written, until the peer acknowledges it. A full replay stops the reading (the user's
//!   TCP window closes), parked or not.
//! - Down (QUIC -> TCP): counts what it has read from the streams ([`Shared::received`]),
//!   which the session acknowledges to the peer and names when resuming. Bytes read are
//!   always written to TCP, parked or not.
//! - A stream error while the connection is up is the peer's (it reset the stream): both
//!   directions abort as a splice does. On a lost connection the direction parks.
//!
//! The carry knows nothing of sessions, acknowledgements on the wire or the resume
//! handshake: the session reads [`Shared::received`], feeds [`Shared::acked`], and
//! drives [`Handle::park`] / [`Handle::attach`].

use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use porthole_proto::close::StreamCode;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot};

use super::replay::{Acked, Replay};
use crate::splice::{
    BULK_AFTER, BULK_PRIORITY, CHUNKS_PER_WRITE, COPY_BUF, Controls, SpliceEnd, abort_tcp,
    hand_over_fairly, stopped, take_rest, write_now,
};
use crate::transport::{RecvStream, SendStream};

/// Whether the connection under a link is still up. A stream error on a live
/// connection is the peer's doing; on a lost one it is the link's.
pub type Alive = Arc<dyn Fn() -> bool + Send + Sync>;

/// A stream pair of one connection, for one carried TCP connection.
pub struct Link<S, R> {
    pub send: S,
    pub recv: R,
    /// Bytes of our sending direction the peer has read (0 on a stream's first link).
    pub peer_received: u64,
    pub alive: Alive,
}

/// What a carry and its session share.
#[derive(Debug, Default)]
pub struct Shared {
    received: AtomicU64,
    acked: Arc<Acked>,
    /// Woken each time [`NUDGE_EVERY`] more bytes were received: acknowledging them
    /// before the next tick lets the peer drop them sooner (less memory held, and on a
    /// fast path the replay never fills between ticks).
    nudge: Option<Arc<tokio::sync::Notify>>,
}

/// Received bytes between nudges of the acknowledgement sender.
pub const NUDGE_EVERY: u64 = 1 << 20;

impl Shared {
    /// State whose received bytes nudge `nudge` every [`NUDGE_EVERY`].
    pub fn nudging(nudge: Arc<tokio::sync::Notify>) -> Self {
        Self {
            nudge: Some(nudge),
            ..Self::default()
        }
    }

    /// Bytes read from the peer so far, plus one once its FIN was read: what to
    /// acknowledge, and where a resume starts.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Acquire)
    }

    pub(crate) fn add_received(&self, n: u64) {
        let before = self.received.fetch_add(n, Ordering::AcqRel);
        if let Some(nudge) = &self.nudge
            && before / NUDGE_EVERY != (before + n) / NUDGE_EVERY
        {
            nudge.notify_one();
        }
    }

    /// Where the peer's acknowledgements of our sending direction go.
    pub fn acked(&self) -> &Arc<Acked> {
        &self.acked
    }
}

enum UpCmd<S> {
    Park(oneshot::Sender<()>),
    Attach(S, u64, Alive),
}

enum DownCmd<R> {
    Park(oneshot::Sender<()>),
    Attach(R, Alive),
}

/// The session's hold on one carry. Dropping it tells the carry no resume will come: a
/// parked carry then aborts (RST to the user), a linked one aborts at its next link loss.
pub struct Handle<S, R> {
    up: mpsc::Sender<UpCmd<S>>,
    down: mpsc::Sender<DownCmd<R>>,
    shared: Arc<Shared>,
}

/// The carry's side of its [`Handle`].
pub struct Commands<S, R> {
    up: mpsc::Receiver<UpCmd<S>>,
    down: mpsc::Receiver<DownCmd<R>>,
    shared: Arc<Shared>,
}

/// A handle and the commands it sends, sharing `shared` (whose `acked` the replay of the
/// carry must follow).
pub fn channel<S, R>(shared: Arc<Shared>) -> (Handle<S, R>, Commands<S, R>) {
    let (up_tx, up) = mpsc::channel(2);
    let (down_tx, down) = mpsc::channel(2);
    (
        Handle {
            up: up_tx,
            down: down_tx,
            shared: Arc::clone(&shared),
        },
        Commands { up, down, shared },
    )
}

impl<S: SendStream, R: RecvStream> Handle<S, R> {
    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Stops both directions using their link (at once if they noticed its loss already)
    /// and returns the bytes received from the peer, which stay as they are until the next
    /// [`Handle::attach`]. A direction that has finished counts as parked.
    pub async fn park(&self) -> u64 {
        let (up_tx, up_rx) = oneshot::channel();
        let (down_tx, down_rx) = oneshot::channel();
        // A send or an answer that fails is a direction (or the carry) that has ended.
        if self.up.send(UpCmd::Park(up_tx)).await.is_ok() {
            let _ = up_rx.await;
        }
        if self.down.send(DownCmd::Park(down_tx)).await.is_ok() {
            let _ = down_rx.await;
        }
        self.shared.received()
    }

    /// Gives a parked carry its new link; the up direction sends again from what the
    /// peer has received. Returns `false` if the carry has ended (the link is dropped).
    pub async fn attach(&self, link: Link<S, R>) -> bool {
        let up = self
            .up
            .send(UpCmd::Attach(
                link.send,
                link.peer_received,
                Arc::clone(&link.alive),
            ))
            .await
            .is_ok();
        let down = self
            .down
            .send(DownCmd::Attach(link.recv, link.alive))
            .await
            .is_ok();
        up || down
    }

    /// Whether the carry has ended (both directions done or aborted).
    pub fn is_finished(&self) -> bool {
        self.up.is_closed() && self.down.is_closed()
    }
}

/// Runs until both directions are done (the peer acknowledged everything we sent, and
/// its FIN reached the user) or one fails; parks across lost connections meanwhile.
pub async fn run<S: SendStream, R: RecvStream>(
    mut tcp: TcpStream,
    first: Link<S, R>,
    replay: Replay,
    commands: Commands<S, R>,
    ctl: Controls<'_>,
) -> SpliceEnd {
    let Commands { up, down, shared } = commands;
    let mut tx = Up {
        replay,
        send: Some((first.send, Arc::clone(&first.alive))),
        sent: 0,
        unkept: None,
        eof: false,
        reset: None,
        fin_sent: false,
        count: 0,
        buf: BytesMut::new(),
    };
    let mut rx = Down {
        recv: Some((first.recv, first.alive)),
        pending: None,
        peer_fin: false,
        count: 0,
    };
    let result = {
        let (mut tcp_r, mut tcp_w) = tcp.split();
        let up_fut = pin!(tx.run(&mut tcp_r, up, ctl));
        let down_fut = pin!(rx.run(&mut tcp_w, down, &shared, ctl));
        tokio::select! {
            r = async { tokio::try_join!(up_fut, down_fut) } => r.map(|_| ()),
            _ = stopped(ctl.stop) => Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "the forward was closed",
            )),
        }
    };
    let (up, down) = (tx.count, rx.count);
    match result {
        Ok(()) => SpliceEnd::Clean { up, down },
        Err(error) => {
            if let Some((send, _)) = tx.send.as_mut() {
                send.reset(StreamCode::PeerReset.as_u32());
            }
            if let Some((recv, _)) = rx.recv.as_mut() {
                recv.stop(StreamCode::PeerReset.as_u32());
            }
            abort_tcp(&tcp);
            SpliceEnd::Aborted { up, down, error }
        }
    }
}

/// A stream of the current link failed: the peer's doing if its connection is still up
/// (the error ends the carry), else the link is lost and this direction parks.
fn link_failed<T>(half: &mut Option<(T, Alive)>, e: io::Error) -> io::Result<()> {
    if half.as_ref().is_some_and(|(_, alive)| alive()) {
        return Err(e);
    }
    *half = None;
    Ok(())
}

fn no_resume() -> io::Error {
    io::Error::new(
        io::ErrorKind::ConnectionAborted,
        "the connection was lost and the session will not resume",
    )
}

/// TCP -> QUIC.
struct Up<S> {
    replay: Replay,
    send: Option<(S, Alive)>,
    /// Stream offset up to which the current link has been written.
    sent: u64,
    /// Read from TCP, not yet kept (waiting for room in the replay).
    unkept: Option<Bytes>,
    /// TCP has ended: `replay.end()` is the whole length.
    eof: bool,
    /// The local side reset the connection after its data (reported once all is sent).
    reset: Option<io::Error>,
    /// FIN written on the current link.
    fin_sent: bool,
    count: u64,
    buf: BytesMut,
}

enum Event<C, T> {
    Cmd(Option<C>),
    Step(Result<T, Failed>),
}

/// Which side a step failed on.
enum Failed {
    Tcp(io::Error),
    Link(io::Error),
}

impl<S: SendStream> Up<S> {
    async fn run(
        &mut self,
        tcp: &mut ReadHalf<'_>,
        mut cmds: mpsc::Receiver<UpCmd<S>>,
        ctl: Controls<'_>,
    ) -> io::Result<()> {
        let mut orphan = false;
        loop {
            // The peer counts our FIN as one more byte: done once it has that too.
            if self.eof && self.fin_sent && self.replay.acked().get() > self.replay.end() {
                return self.reset.take().map_or(Ok(()), Err);
            }
            let event = match self.send.as_mut() {
                None if orphan => return Err(no_resume()),
                // Parked: a command, or (all sent) the last acknowledgement, which may
                // come over a newer connection without this stream being resumed.
                None => tokio::select! {
                    c = cmds.recv() => Event::Cmd(c),
                    _ = self.replay.acked().changed(), if self.eof && self.fin_sent => continue,
                },
                Some((send, _)) => {
                    let step = step_up(
                        tcp,
                        send,
                        &mut self.replay,
                        &mut self.sent,
                        &mut self.unkept,
                        &mut self.eof,
                        &mut self.reset,
                        &mut self.fin_sent,
                        &mut self.count,
                        &mut self.buf,
                        ctl,
                    );
                    tokio::select! {
                        // The work first: commands are rare, and polling the channel on
                        // every wake-up of a busy stream costs.
                        biased;
                        r = step => Event::Step(r),
                        c = cmds.recv(), if !orphan => Event::Cmd(c),
                    }
                }
            };
            match event {
                Event::Cmd(None) => orphan = true,
                Event::Cmd(Some(UpCmd::Park(done))) => {
                    self.send = None;
                    let _ = done.send(());
                }
                Event::Cmd(Some(UpCmd::Attach(send, peer_received, alive))) => {
                    // One past the end: the peer has our FIN as well.
                    let fin_received = self.eof && peer_received == self.replay.end() + 1;
                    let bytes_received = if fin_received {
                        self.replay.end()
                    } else {
                        peer_received
                    };
                    self.replay
                        .rewind(bytes_received)
                        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                    self.replay.acked().advance(peer_received);
                    self.sent = bytes_received;
                    self.fin_sent = fin_received;
                    let mut send = send;
                    if self.count >= BULK_AFTER {
                        send.set_priority(BULK_PRIORITY);
                    }
                    self.send = Some((send, alive));
                }
                Event::Step(Ok(())) => {}
                Event::Step(Err(Failed::Tcp(e))) => return Err(e),
                Event::Step(Err(Failed::Link(e))) => link_failed(&mut self.send, e)?,
            }
        }
    }
}

/// One unit of the up direction's work on a live link: write kept bytes the link has not
/// had, keep what was read, send FIN, wait for the last acknowledgement, or read TCP.
/// Cancelled only to park, when the link is given up anyway: kept bytes are sent again.
#[allow(clippy::too_many_arguments)]
async fn step_up<S: SendStream>(
    tcp: &mut ReadHalf<'_>,
    send: &mut S,
    replay: &mut Replay,
    sent: &mut u64,
    unkept: &mut Option<Bytes>,
    eof: &mut bool,
    reset: &mut Option<io::Error>,
    fin_sent: &mut bool,
    count: &mut u64,
    buf: &mut BytesMut,
    ctl: Controls<'_>,
) -> Result<(), Failed> {
    // Kept bytes this link has not had (after a resume) go first.
    if let Some(chunk) = replay.chunk_at(*sent) {
        let n = chunk.len() as u64;
        hand_over_fairly(send, chunk).await.map_err(Failed::Link)?;
        *sent += n;
        return Ok(());
    }
    if unkept.is_none() {
        if *eof {
            if !*fin_sent {
                send.shutdown().await.map_err(Failed::Link)?;
                *fin_sent = true;
            } else {
                replay.acked().changed().await;
                replay.release();
            }
            return Ok(());
        }
        if buf.capacity() < COPY_BUF / 4 {
            buf.reserve(COPY_BUF);
        }
        let n = match tcp.read_buf(buf).await {
            Ok(n) => n,
            // A reset ends the stream like EOF does (FIN behind the data), then is returned.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {
                *reset = Some(e);
                0
            }
            Err(e) => return Err(Failed::Tcp(e)),
        };
        if n == 0 {
            *eof = true;
            return Ok(());
        }
        let before = *count;
        *count += n as u64;
        ctl.meter.from_tcp(n as u64);
        if before < BULK_AFTER && *count >= BULK_AFTER {
            send.set_priority(BULK_PRIORITY);
        }
        *unkept = Some(buf.split().freeze());
        if let Some(cap) = ctl.from_tcp {
            cap.take(n as u64).await;
        }
    }
    // Read, kept, written in one step (one select per chunk). Everything kept before
    // was sent (above), so the chunk goes right behind it.
    if let Some(chunk) = unkept.clone() {
        replay.keep(chunk.clone()).await;
        *unkept = None;
        let n = chunk.len() as u64;
        hand_over_fairly(send, chunk).await.map_err(Failed::Link)?;
        *sent += n;
    }
    Ok(())
}

/// QUIC -> TCP.
struct Down<R> {
    recv: Option<(R, Alive)>,
    /// Received and counted, not yet taken by TCP.
    pending: Option<Bytes>,
    /// The peer finished the stream: nothing more will come on any link.
    peer_fin: bool,
    count: u64,
}

impl<R: RecvStream> Down<R> {
    async fn run(
        &mut self,
        tcp: &mut WriteHalf<'_>,
        mut cmds: mpsc::Receiver<DownCmd<R>>,
        shared: &Shared,
        ctl: Controls<'_>,
    ) -> io::Result<()> {
        let mut orphan = false;
        let mut chunks: [Bytes; CHUNKS_PER_WRITE] = std::array::from_fn(|_| Bytes::new());
        loop {
            if self.peer_fin && self.pending.is_none() {
                return tcp.shutdown().await;
            }
            if orphan && self.recv.is_none() && self.pending.is_none() {
                return Err(no_resume());
            }
            let reading = self.pending.is_none() && !self.peer_fin;
            // The work first, commands last (as on the sending side).
            let event = tokio::select! {
                biased;
                r = write_pending(tcp, &mut self.pending), if self.pending.is_some() => {
                    let n = r?;
                    self.count += n as u64;
                    ctl.meter.to_tcp(n as u64);
                    continue;
                }
                r = read_some(&mut self.recv, &mut chunks), if reading && self.recv.is_some() => Event::Step(r),
                c = cmds.recv(), if !orphan => Event::Cmd(c),
            };
            match event {
                Event::Cmd(None) => orphan = true,
                Event::Cmd(Some(DownCmd::Park(done))) => {
                    self.recv = None;
                    let _ = done.send(());
                }
                Event::Cmd(Some(DownCmd::Attach(recv, alive))) => {
                    self.recv = Some((recv, alive));
                }
                Event::Step(Ok(None)) => {
                    // The FIN counts as one byte, so the peer learns it arrived.
                    shared.add_received(1);
                    self.peer_fin = true;
                }
                Event::Step(Ok(Some(n))) => {
                    let got: u64 = chunks[..n].iter().map(|c| c.len() as u64).sum();
                    shared.add_received(got);
                    if let Some(cap) = ctl.to_tcp {
                        cap.take(got).await;
                    }
                    let taken = write_now(tcp, &chunks[..n]).await?;
                    self.count += taken as u64;
                    ctl.meter.to_tcp(taken as u64);
                    let rest = take_rest(&mut chunks[..n], taken);
                    if !rest.is_empty() {
                        self.pending = Some(rest.into());
                    }
                }
                Event::Step(Err(Failed::Tcp(e))) => return Err(e),
                Event::Step(Err(Failed::Link(e))) => link_failed(&mut self.recv, e)?,
            }
        }
    }
}

/// Reads the link's next chunks into `chunks`: how many, or `None` once the peer
/// finished the stream. Cancel-safe: the stream gives data out only when a read completes.
async fn read_some<R: RecvStream>(
    recv: &mut Option<(R, Alive)>,
    chunks: &mut [Bytes; CHUNKS_PER_WRITE],
) -> Result<Option<usize>, Failed> {
    let Some((recv, _)) = recv.as_mut() else {
        return std::future::pending().await;
    };
    recv.read_chunks(chunks).await.map_err(Failed::Link)
}

/// Writes what TCP takes of `pending` (one write, waiting until it takes something).
/// Cancel-safe: a write either happened and is accounted, or not.
async fn write_pending<W: AsyncWrite + Unpin>(
    w: &mut W,
    pending: &mut Option<Bytes>,
) -> io::Result<usize> {
    let Some(p) = pending.as_mut() else {
        return Ok(0);
    };
    let n = w.write(p).await?;
    if n == 0 {
        return Err(io::ErrorKind::WriteZero.into());
    }
    let _ = p.split_to(n);
    if p.is_empty() {
        *pending = None;
    }
    Ok(n)
}
