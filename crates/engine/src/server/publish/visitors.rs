//! The TCP side of published ports: each listener accepts, reads a PROXY header when
//! told to, peeks the name on a shared port, and queues the visitor for the session
//! holding its route ([`admit`]); that session opens a stream toward its client for
//! each ([`carry_visitors`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use porthole_proto::close::StreamCode;
use porthole_proto::message::VisitorHeader;
use porthole_proto::sniff::{self, Sniffed};
use porthole_proto::source::Protocol;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::{MAX_PEEKING, MAX_PEEKING_PER_IP, PEEK_TIMEOUT, Route, Table, VISITOR_QUEUE, lock};
use crate::control::write_frame;
use crate::server::ClientShared;
use crate::splice::{Controls, SpliceEnd, abort_tcp, splice, tune_tcp};
use crate::telemetry::{ForwardLive, Refusal, Side, Telemetry};
use crate::transport::{Connection, SendStream};

/// A visitor on its way to the session holding its route.
pub(crate) struct Visitor {
    tcp: TcpStream,
    header: VisitorHeader,
    /// Bytes read while looking for the name (and past a PROXY header): sent first.
    early: Vec<u8>,
    live: Arc<ForwardLive>,
    stop: CancellationToken,
}

pub(super) async fn accept_loop(
    listener: tokio::net::TcpListener,
    key: (Protocol, SocketAddr),
    table: Table,
    stop: CancellationToken,
    telemetry: Telemetry,
) {
    let peeking = Arc::new(Peeking::default());
    loop {
        let (tcp, from) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    // Usually out of file descriptors: back off instead of spinning.
                    warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let Some(permit) = peeking.take(from.ip()) else {
            debug!("{from}: too many visitors still being read; refusing");
            telemetry.refused(Refusal::PublishQueue);
            abort_tcp(&tcp);
            continue;
        };
        let table = table.clone();
        let telemetry = telemetry.clone();
        tokio::spawn(
            async move {
                admit(tcp, from, key, &table, &telemetry).await;
                drop(permit);
            }
            .instrument(info_span!("visitor", %from)),
        );
    }
}

/// Visitors being read, in all and per IP address ([`MAX_PEEKING`], [`MAX_PEEKING_PER_IP`]).
#[derive(Default)]
struct Peeking {
    per_ip: Mutex<HashMap<std::net::IpAddr, usize>>,
    total: std::sync::atomic::AtomicUsize,
}

/// One visitor being read; counted until dropped.
struct PeekPermit {
    peeking: Arc<Peeking>,
    ip: std::net::IpAddr,
}

impl Peeking {
    fn take(self: &Arc<Self>, ip: std::net::IpAddr) -> Option<PeekPermit> {
        use std::sync::atomic::Ordering::Relaxed;
        let mut per_ip = lock(&self.per_ip);
        let n = per_ip.entry(ip).or_default();
        if *n >= MAX_PEEKING_PER_IP || self.total.load(Relaxed) >= MAX_PEEKING {
            return None;
        }
        *n += 1;
        self.total.fetch_add(1, Relaxed);
        Some(PeekPermit {
            peeking: self.clone(),
            ip,
        })
    }
}

impl Drop for PeekPermit {
    fn drop(&mut self) {
        let mut per_ip = lock(&self.peeking.per_ip);
        if let Some(n) = per_ip.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                per_ip.remove(&self.ip);
            }
        }
        self.peeking
            .total
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads what is needed to route a visitor and queues it for its session.
async fn admit(
    mut tcp: TcpStream,
    from: SocketAddr,
    key: (Protocol, SocketAddr),
    table: &Table,
    telemetry: &Telemetry,
) {
    let local = tcp.local_addr().unwrap_or(key.1);
    let (accept_proxy, shared) = match lock(table).get(&key) {
        Some(p) => (p.accept_proxy, !p.routes.contains_key(&None)),
        None => return abort_tcp(&tcp),
    };
    let routed = tokio::time::timeout(PEEK_TIMEOUT, async {
        let (visitor, mut early) = if accept_proxy {
            let (source, early) = crate::net::read_proxy_header(&mut tcp).await?;
            (source.unwrap_or(from), early)
        } else {
            (from, Vec::new())
        };
        let name = if shared {
            Some(read_name(&mut tcp, &mut early).await?)
        } else {
            None
        };
        Ok::<_, std::io::Error>((visitor, early, name))
    })
    .await;
    let (visitor, early, name) = match routed {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => {
            debug!("refused: {e}");
            return abort_tcp(&tcp);
        }
        Err(_) => {
            debug!("refused: nothing to route by within {PEEK_TIMEOUT:?}");
            return abort_tcp(&tcp);
        }
    };
    let route = match &name {
        Some(sniffed) => sniffed
            .name()
            .and_then(|n| lookup(table, key, n.to_string())),
        None => lock(table)
            .get(&key)
            .and_then(|p| p.routes.get(&None).cloned()),
    };
    let Some(route) = route else {
        if let Some(sniffed) = &name {
            debug!("no service published for {sniffed:?}");
            telemetry.refused(Refusal::UnknownName);
            let answer: &[u8] = match sniffed {
                Sniffed::Tls(_) => &sniff::TLS_UNRECOGNIZED_NAME,
                Sniffed::Http(_) => sniff::HTTP_NOT_FOUND,
                _ => &[],
            };
            // Answer, then a lingering close: what the visitor still sends is read and
            // dropped until it closes (bounded), so no reset overtakes the answer.
            let _ = tokio::time::timeout(PEEK_TIMEOUT, async {
                tcp.write_all(answer).await?;
                tcp.shutdown().await?;
                let mut sink = [0u8; 1024];
                while tcp.read(&mut sink).await? > 0 {}
                Ok::<_, std::io::Error>(())
            })
            .await;
            return;
        }
        return abort_tcp(&tcp);
    };
    let Some(queue) = &route.visitors else {
        return abort_tcp(&tcp);
    };
    let header = VisitorHeader {
        publish_id: route.publish_id,
        visitor,
        local,
    };
    let v = Visitor {
        tcp,
        header,
        early,
        live: route.live.clone(),
        stop: route.stop.clone(),
    };
    if let Err(e) = queue.try_send(v) {
        let v = match e {
            mpsc::error::TrySendError::Full(v) | mpsc::error::TrySendError::Closed(v) => v,
        };
        warn!("{VISITOR_QUEUE} visitors already wait for the client; refusing one");
        telemetry.refused(Refusal::PublishQueue);
        abort_tcp(&v.tcp);
    }
}

fn lookup(table: &Table, key: (Protocol, SocketAddr), name: String) -> Option<Route> {
    lock(table)
        .get(&key)
        .and_then(|p| p.routes.get(&Some(name)).cloned())
}

/// Reads until the visitor's first bytes name a service (or cannot), at most
/// [`sniff::MAX_PEEK`] bytes; what was read stays in `buf` for the client.
async fn read_name(tcp: &mut TcpStream, buf: &mut Vec<u8>) -> std::io::Result<Sniffed> {
    let mut chunk = [0u8; 2048];
    loop {
        match sniff::sniff(buf) {
            Sniffed::Incomplete if buf.len() < sniff::MAX_PEEK => {}
            Sniffed::Incomplete => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("no name in the first {} bytes", sniff::MAX_PEEK),
                ));
            }
            Sniffed::Unknown => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "neither a TLS ClientHello nor an HTTP request",
                ));
            }
            named => return Ok(named),
        }
        let room = (sniff::MAX_PEEK - buf.len()).min(chunk.len());
        let n = tcp.read(&mut chunk[..room]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Turns the session's queued visitors into streams toward its client, at most
/// `max_streams` at once (the QUIC stream limit: more would only wait, each holding a
/// socket); a visitor past it is refused at once.
pub(crate) async fn carry_visitors<C: Connection>(
    conn: C,
    mut visitors: mpsc::Receiver<Visitor>,
    client: Arc<ClientShared>,
    telemetry: Telemetry,
    max_streams: usize,
) {
    let carried = Arc::new(tokio::sync::Semaphore::new(max_streams));
    while let Some(v) = visitors.recv().await {
        let Ok(permit) = carried.clone().try_acquire_owned() else {
            warn!("visitor refused: {max_streams} visitors are carried already");
            telemetry.refused(Refusal::PublishQueue);
            abort_tcp(&v.tcp);
            continue;
        };
        let span = info_span!("visitor", publish = v.header.publish_id, from = %v.header.visitor);
        let carrying = carry(conn.clone(), v, client.clone(), telemetry.clone());
        tokio::spawn(
            async move {
                carrying.await;
                drop(permit);
            }
            .instrument(span),
        );
    }
}

async fn carry<C: Connection>(
    conn: C,
    v: Visitor,
    client: Arc<ClientShared>,
    telemetry: Telemetry,
) {
    let Some(_claim) = client.claim(false) else {
        warn!("visitor refused: the client is at its stream limit (max_streams)");
        telemetry.refused(Refusal::StreamLimit);
        return abort_tcp(&v.tcp);
    };
    let (mut send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => {
            debug!("cannot open a stream to the client: {e}");
            return abort_tcp(&v.tcp);
        }
    };
    if let Err(e) = write_frame(&mut send, &v.header).await {
        debug!("cannot start the stream: {e}");
        send.reset(StreamCode::PeerReset.as_u32());
        return abort_tcp(&v.tcp);
    }
    if !v.early.is_empty()
        && let Err(e) = send.write_all(&v.early).await
    {
        debug!("cannot start the stream: {e}");
        return abort_tcp(&v.tcp);
    }
    tune_tcp(&v.tcp);
    let meter = v.live.stream(Side::Server, None);
    let ctl = Controls {
        meter: &meter,
        stop: Some(&v.stop),
        from_tcp: Some(&client.caps.down),
        to_tcp: Some(&client.caps.up),
    };
    match splice(v.tcp, send, recv, ctl).await {
        SpliceEnd::Clean { up, down } => debug!(from_visitor = up, to_visitor = down, "done"),
        SpliceEnd::Aborted { up, down, error } => {
            debug!(from_visitor = up, to_visitor = down, "aborted: {error}")
        }
    }
}
