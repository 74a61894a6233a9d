//! Dynamic forwarding on the client: a SOCKS5 proxy (`--socks`) and an HTTP CONNECT
//! proxy (`--http-proxy`). Each accepted connection names its destination; it rides a
//! dynamic stream ([`DYNAMIC_FORWARD`]) and the server decides, against the client's
//! allow-list, before any data flows. The proxies speak their protocol up to the
//! destination and map the server's answer onto their reply codes.

use std::collections::{HashMap, HashSet};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use porthole_proto::datagram::FlowKey;
use porthole_proto::message::{
    DYNAMIC_FORWARD, DynamicReply, DynamicTarget, RejectReason, Unreachable,
};
use porthole_proto::socks::{self, Reply};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info_span, warn};

use super::{Session, Sessions};
use crate::control::{read_frame, write_frame};
use crate::splice::{Controls, abort_tcp, splice, tune_tcp};
use crate::telemetry::{ForwardLive, Side};
use crate::transport::{Connection, SendStream};
use crate::udp::send_payload;

/// Connections one proxy listener serves at once.
pub const MAX_PROXY_CONNECTIONS: usize = 512;
/// The proxy handshake (up to the destination) must complete within this.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// The server's answer (resolve + dial) must come within this.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest HTTP CONNECT request head.
const MAX_HTTP_HEAD: usize = 8 * 1024;

/// Which protocol a proxy listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyKind {
    Socks5,
    HttpConnect,
}

/// Username and password a proxy requires (SOCKS5 RFC 1929, HTTP Basic).
#[derive(Clone)]
pub struct ProxyAuth {
    pub user: String,
    pub password: zeroize::Zeroizing<String>,
}

impl std::fmt::Debug for ProxyAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ProxyAuth({}, <redacted>)", self.user)
    }
}

impl ProxyAuth {
    fn matches(&self, user: &str, password: &str) -> bool {
        let u = self.user.as_bytes().ct_eq(user.as_bytes());
        let p = self.password.as_bytes().ct_eq(password.as_bytes());
        (u & p).into()
    }
}

/// A proxy listener of the client.
#[derive(Debug, Clone)]
pub struct ProxySpec {
    pub kind: ProxyKind,
    pub listen: SocketAddr,
}

/// What a proxy client asked for.
enum Ask {
    /// A TCP connection to this source, with any bytes sent past the request.
    Connect(String, Vec<u8>),
    /// A SOCKS UDP association.
    Associate,
}

/// Numbers SOCKS UDP associations: the flow id of their datagrams, unique per process.
static ASSOCIATIONS: AtomicU32 = AtomicU32::new(1);

/// Why a dynamic stream did not connect.
enum Refused {
    /// No tunnel, or the stream failed.
    Tunnel(String),
    /// The server answered no.
    Reply(DynamicReply),
}

pub(crate) struct Proxy {
    pub kind: ProxyKind,
    pub listener: TcpListener,
    pub live: Arc<ForwardLive>,
    pub auth: Option<ProxyAuth>,
    pub session_wait: Duration,
}

impl Proxy {
    pub async fn accept_loop<C: Connection>(
        self,
        sessions: Sessions<C>,
        cancel: CancellationToken,
    ) {
        let this = Arc::new(self);
        let limit = Arc::new(Semaphore::new(MAX_PROXY_CONNECTIONS));
        loop {
            let (tcp, from) = tokio::select! {
                _ = cancel.cancelled() => return,
                a = this.listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let Ok(permit) = limit.clone().try_acquire_owned() else {
                warn!("{MAX_PROXY_CONNECTIONS} proxy connections open: refusing {from}");
                abort_tcp(&tcp);
                continue;
            };
            let this = this.clone();
            let sessions = sessions.clone();
            tokio::spawn(
                async move {
                    let _permit = permit;
                    if let Err(e) = this.serve(tcp, sessions).await {
                        debug!("proxy connection ended: {e}");
                    }
                }
                .instrument(info_span!("proxy", %from)),
            );
        }
    }

    async fn serve<C: Connection>(
        &self,
        mut tcp: TcpStream,
        sessions: Sessions<C>,
    ) -> io::Result<()> {
        let handshake = async {
            match self.kind {
                ProxyKind::Socks5 => self.socks_request(&mut tcp).await,
                ProxyKind::HttpConnect => self.http_request(&mut tcp).await,
            }
        };
        let (dest, early) = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(Some(Ask::Connect(dest, early)))) => (dest, early),
            Ok(Ok(Some(Ask::Associate))) => return self.associate(tcp, sessions).await,
            Ok(Ok(None)) => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "proxy handshake timed out",
                ));
            }
        };
        match self.connect(&dest, sessions).await {
            Ok((mut send, recv, session)) => {
                self.answer_ok(&mut tcp).await?;
                if !early.is_empty() {
                    send.write_all(&early).await?;
                }
                tune_tcp(&tcp);
                let meter = self.live.stream(Side::Client, None);
                splice(tcp, send, recv, Controls::meter(&meter)).await;
                drop(session);
                Ok(())
            }
            Err(refused) => {
                let why = match &refused {
                    Refused::Tunnel(t) => t.clone(),
                    Refused::Reply(r) => describe(r),
                };
                warn!("{dest}: {why}");
                self.answer_refused(&mut tcp, &refused).await
            }
        }
    }

    /// Opens a dynamic stream to `dest` (a porthole source) and waits for the server.
    async fn connect<C: Connection>(
        &self,
        dest: &str,
        mut sessions: Sessions<C>,
    ) -> Result<(C::Send, C::Recv, Arc<Session<C>>), Refused> {
        let session = super::wait_for_session(&mut sessions, self.session_wait)
            .await
            .ok_or_else(|| {
                Refused::Tunnel(format!("tunnel not up within {:?}", self.session_wait))
            })?;
        let tunnel = |e: &dyn std::fmt::Display| Refused::Tunnel(format!("tunnel: {e}"));
        let (mut send, mut recv) = session.conn.open_bi().await.map_err(|e| tunnel(&e))?;
        session
            .plain_header(&mut send, DYNAMIC_FORWARD)
            .await
            .map_err(|e| tunnel(&e))?;
        write_frame(
            &mut send,
            &DynamicTarget {
                source: dest.to_string(),
            },
        )
        .await
        .map_err(|e| tunnel(&e))?;
        match tokio::time::timeout(ANSWER_TIMEOUT, read_frame::<DynamicReply, _>(&mut recv)).await {
            Ok(Ok(DynamicReply::Connected { addr })) => {
                debug!("{dest}: connected to {addr}");
                Ok((send, recv, session))
            }
            Ok(Ok(other)) => Err(Refused::Reply(other)),
            Ok(Err(e)) => {
                send.reset(0);
                Err(Refused::Tunnel(format!(
                    "the server reset the stream ({e}): it may predate dynamic forwarding (upgrade it)"
                )))
            }
            Err(_) => {
                send.reset(0);
                Err(Refused::Reply(DynamicReply::Unreachable {
                    kind: Unreachable::TimedOut,
                    detail: format!("no answer from the server within {ANSWER_TIMEOUT:?}"),
                }))
            }
        }
    }

    /// SOCKS5 up to the request; `None` when the connection was answered and is done.
    /// Returns the destination as a source and any bytes read past the request.
    async fn socks_request(&self, tcp: &mut TcpStream) -> io::Result<Option<Ask>> {
        let mut buf = Vec::with_capacity(300);
        let (methods, used) = read_until(tcp, &mut buf, socks::parse_greeting).await?;
        buf.drain(..used);
        let wanted = if self.auth.is_some() {
            socks::USER_PASS
        } else {
            socks::NO_AUTH
        };
        if !methods.contains(&wanted) {
            tcp.write_all(&[socks::VERSION, socks::NO_ACCEPTABLE])
                .await?;
            warn!(
                "SOCKS client offered no acceptable method ({})",
                if self.auth.is_some() {
                    "username/password required"
                } else {
                    "none offered 'no auth'"
                }
            );
            return Ok(None);
        }
        tcp.write_all(&[socks::VERSION, wanted]).await?;
        if let Some(auth) = &self.auth {
            let ((user, pass), used) = read_until(tcp, &mut buf, socks::parse_user_pass).await?;
            buf.drain(..used);
            if !auth.matches(&user, &pass) {
                tcp.write_all(&[1, 1]).await?;
                warn!("SOCKS authentication failed for user {user:?}");
                return Ok(None);
            }
            tcp.write_all(&[1, 0]).await?;
        }
        let (request, used) = read_until(tcp, &mut buf, socks::parse_request).await?;
        buf.drain(..used);
        match request.command {
            socks::CMD_CONNECT => Ok(Some(Ask::Connect(request.dest.source("tcp"), buf))),
            socks::CMD_UDP_ASSOCIATE => Ok(Some(Ask::Associate)),
            other => {
                tcp.write_all(&socks::reply(Reply::CommandNotSupported, None))
                    .await?;
                warn!("SOCKS command {other} is not supported (CONNECT and UDP ASSOCIATE)");
                Ok(None)
            }
        }
    }

    /// An HTTP CONNECT request head; `None` when answered and done.
    async fn http_request(&self, tcp: &mut TcpStream) -> io::Result<Option<Ask>> {
        let mut buf = Vec::with_capacity(1024);
        let (head_len, target, authorization) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(n)) => {
                    if req.method != Some("CONNECT") {
                        http_status(
                            tcp,
                            "405 Method Not Allowed",
                            "this proxy only tunnels (CONNECT)",
                        )
                        .await?;
                        return Ok(None);
                    }
                    let auth = req
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("proxy-authorization"))
                        .map(|h| String::from_utf8_lossy(h.value).into_owned());
                    break (n, req.path.unwrap_or_default().to_string(), auth);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HTTP_HEAD => {}
                Ok(httparse::Status::Partial) => {
                    http_status(tcp, "431 Request Header Fields Too Large", "").await?;
                    return Ok(None);
                }
                Err(e) => {
                    http_status(tcp, "400 Bad Request", &e.to_string()).await?;
                    return Ok(None);
                }
            }
            let mut chunk = [0u8; 1024];
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        if let Some(auth) = &self.auth {
            let ok = authorization
                .as_deref()
                .and_then(|v| v.strip_prefix("Basic "))
                .and_then(|b| {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD
                        .decode(b.trim())
                        .ok()
                })
                .and_then(|d| String::from_utf8(d).ok())
                .and_then(|s| s.split_once(':').map(|(u, p)| auth.matches(u, p)))
                .unwrap_or(false);
            if !ok {
                let msg = "HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"porthole\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";
                tcp.write_all(msg.as_bytes()).await?;
                warn!("HTTP proxy authentication failed");
                return Ok(None);
            }
        }
        // CONNECT host:port (IPv6 in brackets): the same text a source carries.
        let dest = format!("tcp://{target}");
        Ok(Some(Ask::Connect(dest, buf.split_off(head_len))))
    }

    /// A SOCKS UDP association, for as long as its TCP connection lives: datagrams to
    /// the bound UDP socket go to the destination each names (a forward per destination,
    /// asked of the server like any forward), replies come back with the SOCKS header.
    async fn associate<C: Connection>(
        &self,
        mut tcp: TcpStream,
        mut sessions: Sessions<C>,
    ) -> io::Result<()> {
        let Some(session) = super::wait_for_session(&mut sessions, self.session_wait).await else {
            tcp.write_all(&socks::reply(Reply::GeneralFailure, None))
                .await?;
            warn!(
                "UDP association refused: tunnel not up within {:?}",
                self.session_wait
            );
            return Ok(());
        };
        let peer = tcp.peer_addr()?;
        let ip = self.listener.local_addr()?.ip();
        let udp = UdpSocket::bind(SocketAddr::new(ip, 0)).await?;
        crate::udp::size_socket(&udp);
        tcp.write_all(&socks::reply(Reply::Succeeded, Some(udp.local_addr()?)))
            .await?;
        let flow_id = ASSOCIATIONS.fetch_add(1, Ordering::Relaxed);
        let (tx, mut rx) = mpsc::channel::<(u16, Bytes)>(1024);
        let packet_ids = AtomicU16::new(0);
        // The destination of each forward this association uses, for reply headers.
        let mut dests: HashMap<u16, socks::Dest> = HashMap::new();
        let mut refused: HashSet<String> = HashSet::new();
        let mut client: Option<SocketAddr> = None;
        let mut buf = vec![0u8; crate::udp::UDP_BUF];
        let mut control = [0u8; 64];
        debug!("UDP association {flow_id} on {}", udp.local_addr()?);
        loop {
            tokio::select! {
                r = tcp.read(&mut control) => match r {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                },
                _ = session.conn.closed() => break,
                r = udp.recv_from(&mut buf) => {
                    let Ok((n, from)) = r else { continue };
                    // Only the SOCKS client's own host may use its association.
                    if from.ip() != peer.ip() {
                        continue;
                    }
                    client = Some(from);
                    // Malformed, or a fragment (not supported): dropped.
                    let Ok(Some((dest, 0, start))) = socks::parse_udp(&buf[..n]) else {
                        continue;
                    };
                    let text = dest.source("udp");
                    let Ok(source) = text.parse::<porthole_proto::source::Source>() else {
                        continue;
                    };
                    let forward_id = match session.udp_forward(&source).await {
                        Ok(id) => id,
                        Err(why) => {
                            if refused.insert(text.clone()) {
                                warn!("{text}: {why}");
                            }
                            continue;
                        }
                    };
                    if let std::collections::hash_map::Entry::Vacant(e) = dests.entry(forward_id) {
                        e.insert(dest);
                        session.route(forward_id, flow_id, tx.clone());
                    }
                    let key = FlowKey { forward_id, flow_id };
                    match send_payload(&session.conn, key, &packet_ids, &buf[start..n]) {
                        Ok(()) => self.live.add_up((n - start) as u64),
                        Err(e) => debug!("UDP association {flow_id}: {e}"),
                    }
                }
                Some((forward_id, payload)) = rx.recv() => {
                    let (Some(to), Some(dest)) = (client, dests.get(&forward_id)) else {
                        continue;
                    };
                    let mut datagram = socks::udp_header(dest);
                    datagram.extend_from_slice(&payload);
                    if udp.send_to(&datagram, to).await.is_ok() {
                        self.live.add_down(payload.len() as u64);
                    }
                }
            }
        }
        session.unroute(flow_id);
        debug!("UDP association {flow_id} ended");
        Ok(())
    }

    async fn answer_ok(&self, tcp: &mut TcpStream) -> io::Result<()> {
        match self.kind {
            ProxyKind::Socks5 => tcp.write_all(&socks::reply(Reply::Succeeded, None)).await,
            ProxyKind::HttpConnect => {
                tcp.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
            }
        }
    }

    async fn answer_refused(&self, tcp: &mut TcpStream, refused: &Refused) -> io::Result<()> {
        let (socks_code, http) = match refused {
            Refused::Tunnel(_) => (Reply::GeneralFailure, "502 Bad Gateway"),
            Refused::Reply(DynamicReply::Refused { reason, .. }) => match reason {
                RejectReason::NotAllowed | RejectReason::ProtocolDisabled => {
                    (Reply::NotAllowed, "403 Forbidden")
                }
                RejectReason::ResolveFailed => (Reply::HostUnreachable, "502 Bad Gateway"),
                RejectReason::InvalidSource => (Reply::AddressTypeNotSupported, "400 Bad Request"),
                RejectReason::TooManyForwards => (Reply::GeneralFailure, "503 Service Unavailable"),
                // Answers to publishes, never to a dynamic stream.
                RejectReason::BindNotAllowed
                | RejectReason::NameNotAllowed
                | RejectReason::AddressTaken
                | RejectReason::BindFailed => (Reply::GeneralFailure, "502 Bad Gateway"),
            },
            Refused::Reply(DynamicReply::Unreachable { kind, .. }) => match kind {
                Unreachable::Refused => (Reply::ConnectionRefused, "502 Bad Gateway"),
                Unreachable::TimedOut => (Reply::TtlExpired, "504 Gateway Timeout"),
                Unreachable::Other => (Reply::HostUnreachable, "502 Bad Gateway"),
            },
            Refused::Reply(DynamicReply::Connected { .. }) => {
                (Reply::GeneralFailure, "502 Bad Gateway")
            }
        };
        match self.kind {
            ProxyKind::Socks5 => tcp.write_all(&socks::reply(socks_code, None)).await,
            ProxyKind::HttpConnect => {
                let why = match refused {
                    Refused::Tunnel(t) => t.clone(),
                    Refused::Reply(r) => describe(r),
                };
                http_status(tcp, http, &why).await
            }
        }
    }
}

fn describe(r: &DynamicReply) -> String {
    match r {
        DynamicReply::Connected { addr } => format!("connected to {addr}"),
        DynamicReply::Refused { reason, detail } => {
            format!("refused by the server: {reason}: {detail}")
        }
        DynamicReply::Unreachable { detail, .. } => {
            format!("unreachable from the server: {detail}")
        }
    }
}

async fn http_status(tcp: &mut TcpStream, status: &str, body: &str) -> io::Result<()> {
    let body = format!("{body}\n");
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    tcp.write_all(msg.as_bytes()).await
}

/// Reads into `buf` until `parse` finds a message; a parse error is an
/// `InvalidData` error (the connection is then dropped).
async fn read_until<T>(
    tcp: &mut TcpStream,
    buf: &mut Vec<u8>,
    parse: impl Fn(&[u8]) -> Result<Option<(T, usize)>, socks::SocksError>,
) -> io::Result<(T, usize)> {
    loop {
        match parse(buf) {
            Ok(Some(found)) => return Ok(found),
            Ok(None) => {}
            Err(e) => return Err(io::Error::new(io::ErrorKind::InvalidData, e.to_string())),
        }
        if buf.len() > 1024 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "SOCKS message too long",
            ));
        }
        let mut chunk = [0u8; 512];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}
