//! Published services (reverse forwards): a client asks the server to listen, and each
//! visitor rides back to the client.
//!
//! [`Publishers`] is the server's one table of who holds which address, and which names
//! on a shared TCP port. It owns the TCP listeners: each accepts, reads a PROXY header
//! when told to, peeks the name the visitor asks for when the port is shared
//! (`proto::sniff`: TLS SNI or HTTP Host, bounded in bytes and time), and queues the
//! visitor for the session that holds the route. That session opens a stream toward
//! its client for each ([`carry_visitors`]). A published UDP socket belongs to the
//! session that holds it ([`PublishedUdp`]): one flow per visitor address, datagrams
//! under the publish id.
//!
//! A route lives as long as its session: when the client goes away the server stops
//! listening there (the port is closed, visitors are refused by the OS), and takes it
//! up again when the client comes back. A newer session of the same client takes its
//! routes over (a client that restarted before the server noticed the old session
//! die); another client is refused.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use porthole_proto::message::{
    ControlResponse, FIRST_PUBLISH_ID, PublishRequest, RejectReason, clamp_detail,
};
use porthole_proto::sniff;
use porthole_proto::source::{Protocol, Source};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::policy::Refusal as PolicyRefusal;
use crate::telemetry::{ForwardLive, Refusal, Telemetry};
use crate::transport::Connection;
use crate::udp::size_socket;

mod udp;
mod visitors;

pub(crate) use udp::PublishedUdp;
pub(crate) use visitors::{Visitor, carry_visitors};

/// Visitors queued for one session before new ones are refused (the client is slow or
/// at its stream limit): bounds what a flood of visitors can hold.
pub const VISITOR_QUEUE: usize = 128;
/// Visitors of one listener whose first bytes (PROXY header, name) are still awaited.
pub const MAX_PEEKING: usize = 1024;
/// Of those, from one IP address: a flood of silent connections from one place leaves
/// room for everybody else.
pub const MAX_PEEKING_PER_IP: usize = 64;
/// How long a visitor may take to send its PROXY header and the bytes naming the
/// service on a shared port.
pub const PEEK_TIMEOUT: Duration = Duration::from_secs(5);

/// Who holds a route: a session, and the client it belongs to (the flat tokens'
/// clients by token label, named clients by name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Holder {
    pub session: u64,
    pub client: String,
}

/// One claim on an address (or a name on it).
#[derive(Clone)]
struct Route {
    holder: Holder,
    publish_id: u16,
    /// TCP: where visitors go.
    visitors: Option<mpsc::Sender<Visitor>>,
    live: Arc<ForwardLive>,
    /// Cancelled when the route is released or taken over: its visitors' streams end.
    stop: CancellationToken,
}

struct Place {
    accept_proxy: bool,
    /// `None`: the whole address; else one route per name.
    routes: HashMap<Option<String>, Route>,
    /// Ends the TCP listener.
    listener: CancellationToken,
    /// UDP: the socket, handed to whichever session holds it.
    udp: Option<Arc<UdpSocket>>,
}

type Table = Arc<Mutex<HashMap<(Protocol, SocketAddr), Place>>>;

/// The server's published addresses.
#[derive(Default)]
pub(crate) struct Publishers {
    table: Table,
}

impl std::fmt::Debug for Publishers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Publishers")
    }
}

/// What a session asks for.
#[derive(Clone)]
pub(crate) struct Claim {
    pub protocol: Protocol,
    pub addr: SocketAddr,
    pub name: Option<String>,
    pub accept_proxy: bool,
    pub holder: Holder,
    pub publish_id: u16,
    pub visitors: Option<mpsc::Sender<Visitor>>,
    pub live: Arc<ForwardLive>,
}

/// A session's hold on a route, released on drop.
pub(crate) struct Held {
    table: Table,
    key: (Protocol, SocketAddr),
    name: Option<String>,
    session: u64,
    /// Cancelled when this route is released or taken over.
    pub stop: CancellationToken,
    /// UDP: the published socket.
    pub udp: Option<Arc<UdpSocket>>,
}

impl Drop for Held {
    fn drop(&mut self) {
        self.stop.cancel();
        let mut table = lock(&self.table);
        let Some(place) = table.get_mut(&self.key) else {
            return;
        };
        if place
            .routes
            .get(&self.name)
            .is_some_and(|r| r.holder.session == self.session)
        {
            place.routes.remove(&self.name);
        }
        if place.routes.is_empty() {
            place.listener.cancel();
            table.remove(&self.key);
            info!("stopped listening on {}://{}", self.key.0, self.key.1);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Publishers {
    /// Takes the route `claim` asks for, listening first if nobody does there yet. An
    /// address released a moment ago may still be held by its listener's task for a
    /// moment: "in use" is retried for up to a second.
    pub async fn claim(&self, claim: Claim, telemetry: &Telemetry) -> Result<Held, PolicyRefusal> {
        let mut tries = 0;
        loop {
            match self.try_claim(&claim, telemetry) {
                Err((r, true)) if tries < 10 => {
                    tries += 1;
                    debug!("{}; retrying", r.detail);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other.map_err(|(r, _)| r),
            }
        }
    }

    /// One attempt; an error says whether the address was in use.
    fn try_claim(
        &self,
        claim: &Claim,
        telemetry: &Telemetry,
    ) -> Result<Held, (PolicyRefusal, bool)> {
        let claim = claim.clone();
        let refuse = |reason, detail: String| (PolicyRefusal { reason, detail }, false);
        let key = (claim.protocol, claim.addr);
        let stop = CancellationToken::new();
        let route = Route {
            holder: claim.holder.clone(),
            publish_id: claim.publish_id,
            visitors: claim.visitors,
            live: claim.live,
            stop: stop.clone(),
        };
        let mut table = lock(&self.table);
        if let Some(place) = table.get_mut(&key) {
            let what = match &claim.name {
                Some(n) => format!("{n} on {}://{}", key.0, key.1),
                None => format!("{}://{}", key.0, key.1),
            };
            if let Some(old) = place.routes.get(&claim.name) {
                if old.holder.client != claim.holder.client {
                    return Err(refuse(
                        RejectReason::AddressTaken,
                        format!("another client publishes {what}"),
                    ));
                }
                // The same client again: its older session is gone or going.
                info!("{what}: taken over by a newer session of the same client");
                old.stop.cancel();
            } else if place.routes.keys().any(Option::is_none) || claim.name.is_none() {
                let why = if claim.name.is_none() {
                    "is shared by name: publish with ?name= to join it"
                } else {
                    "is published as a whole, not by name"
                };
                return Err(refuse(
                    RejectReason::AddressTaken,
                    format!("{}://{} {why}", key.0, key.1),
                ));
            } else if place.accept_proxy != claim.accept_proxy {
                return Err(refuse(
                    RejectReason::AddressTaken,
                    format!(
                        "{}://{} is shared with accept_proxy_protocol={}",
                        key.0, key.1, place.accept_proxy as u8
                    ),
                ));
            }
            place.routes.insert(claim.name.clone(), route);
            return Ok(Held {
                table: self.table.clone(),
                key,
                name: claim.name,
                session: claim.holder.session,
                stop,
                udp: place.udp.clone(),
            });
        }
        let bind_failed = |e: std::io::Error| {
            let in_use = e.kind() == std::io::ErrorKind::AddrInUse;
            let (r, _) = refuse(
                RejectReason::BindFailed,
                format!("cannot listen on {}://{}: {e}", key.0, key.1),
            );
            (r, in_use)
        };
        let listener = CancellationToken::new();
        let udp = match claim.protocol {
            Protocol::Tcp => {
                let l = crate::net::listen_tcp(claim.addr).map_err(bind_failed)?;
                let addr = l.local_addr().unwrap_or(claim.addr);
                let span = info_span!("published", listen = %addr);
                tokio::spawn(
                    visitors::accept_loop(
                        l,
                        key,
                        self.table.clone(),
                        listener.clone(),
                        telemetry.clone(),
                    )
                    .instrument(span),
                );
                None
            }
            Protocol::Udp => {
                let s = std::net::UdpSocket::bind(claim.addr).map_err(bind_failed)?;
                s.set_nonblocking(true).map_err(bind_failed)?;
                let s = UdpSocket::from_std(s).map_err(bind_failed)?;
                size_socket(&s);
                Some(Arc::new(s))
            }
        };
        info!("listening on {}://{} for published services", key.0, key.1);
        table.insert(
            key,
            Place {
                accept_proxy: claim.accept_proxy,
                routes: HashMap::from([(claim.name.clone(), route)]),
                listener,
                udp: udp.clone(),
            },
        );
        Ok(Held {
            table: self.table.clone(),
            key,
            name: claim.name,
            session: claim.holder.session,
            stop,
            udp,
        })
    }
}

impl<C> SessionPublish<C> {
    /// Releases what `rule` no longer allows (the client's rules were narrowed):
    /// the server stops listening there and the visitors' connections end. Returns
    /// what was released, for the log.
    pub fn close_disallowed(&self, rule: &crate::access::ClientRule) -> Vec<String> {
        let mut held = lock(&self.held);
        let mut closed = Vec::new();
        held.retain(|(bind, publish_id, h)| {
            let allowed = rule.binds.check(bind, h.name.as_deref()).is_ok();
            if !allowed {
                // The UDP socket goes with it (it holds the port).
                lock(&self.udp).remove(publish_id);
                closed.push(match &h.name {
                    Some(n) => format!("{bind} ({n})"),
                    None => bind.to_string(),
                });
            }
            allowed
        });
        closed
    }
}

/// The published UDP ports of one session, by publish id: where the client's replies go.
pub(crate) type SessionUdp<C> = Mutex<HashMap<u16, Arc<PublishedUdp<C>>>>;

/// What one session publishes: its routes, its visitors' queue, its UDP ports.
pub(crate) struct SessionPublish<C> {
    pub holder: Holder,
    pub visitors: mpsc::Sender<Visitor>,
    pub udp: Arc<SessionUdp<C>>,
    /// What this session holds: what it asked for, the publish id, the hold.
    held: Mutex<Vec<(Source, u16, Held)>>,
    tasks: tokio_util::task::TaskTracker,
}

impl<C: Connection> SessionPublish<C> {
    pub fn new(
        holder: Holder,
        visitors: mpsc::Sender<Visitor>,
        tasks: tokio_util::task::TaskTracker,
    ) -> Self {
        Self {
            holder,
            visitors,
            udp: Default::default(),
            held: Default::default(),
            tasks,
        }
    }

    /// Answers one publish request: the client's bind rules, then the table.
    pub async fn publish(
        &self,
        conn: &C,
        request: (u32, PublishRequest),
        rule: &crate::access::ClientRule,
        shared: &super::Shared,
        session: &crate::telemetry::SessionGuard,
    ) -> ControlResponse {
        let (request_id, request) = request;
        let config = &shared.config;
        let rejected = |r: PolicyRefusal| {
            warn!(
                "publish {} refused: {}: {}",
                request.bind, r.reason, r.detail
            );
            config.telemetry.refused(Refusal::Forward(r.reason));
            ControlResponse::ForwardRejected {
                request_id,
                reason: r.reason,
                detail: clamp_detail(&r.detail),
            }
        };
        let bind: Source = match request.bind.parse() {
            Ok(s) => s,
            Err(e) => {
                return rejected(PolicyRefusal {
                    reason: RejectReason::InvalidSource,
                    detail: e.to_string(),
                });
            }
        };
        let name = match request.name.as_deref().map(sniff::normalize_name) {
            None => None,
            Some(Some(n)) => Some(n),
            Some(None) => {
                return rejected(PolicyRefusal {
                    reason: RejectReason::InvalidSource,
                    detail: "the name is not a DNS name".into(),
                });
            }
        };
        let addr = match rule.binds.check(&bind, name.as_deref()) {
            Ok(a) => a,
            Err(r) => return rejected(r),
        };
        // Requests come one at a time off the control stream: the count stays put.
        let count = lock(&self.held).len();
        if count
            >= config
                .max_forwards
                .min(usize::from(u16::MAX - FIRST_PUBLISH_ID))
        {
            return rejected(PolicyRefusal {
                reason: RejectReason::TooManyForwards,
                detail: format!("at most {} publishes per connection", config.max_forwards),
            });
        }
        let publish_id = FIRST_PUBLISH_ID + count as u16;
        let label = match &name {
            Some(n) => format!("publish {bind} {n}"),
            None => format!("publish {bind}"),
        };
        let live = session.forward(publish_id.into(), &label);
        let claim = Claim {
            protocol: bind.protocol,
            addr,
            name,
            accept_proxy: request.accept_proxy_protocol,
            holder: self.holder.clone(),
            publish_id,
            visitors: (bind.protocol == Protocol::Tcp).then(|| self.visitors.clone()),
            live: live.clone(),
        };
        let h = match shared.publishers.claim(claim, &config.telemetry).await {
            Ok(h) => h,
            Err(r) => return rejected(r),
        };
        if let Some(socket) = &h.udp {
            let udp = Arc::new(PublishedUdp::new(
                conn.clone(),
                socket.clone(),
                publish_id,
                live,
                config,
            ));
            lock(&self.udp).insert(publish_id, udp.clone());
            self.tasks.spawn(udp.run(h.stop.clone()).in_current_span());
        }
        lock(&self.held).push((bind, publish_id, h));
        info!(publish_id, "{label} accepted");
        ControlResponse::PublishAccepted {
            request_id,
            publish_id,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{AllowList, BindRules};

    fn rules() -> BindRules {
        BindRules {
            tcp: AllowList::parse(&["127.0.0.0/8:20000-30000"]).unwrap(),
            udp: AllowList::default(),
            names: vec!["*.example.com".into(), "exact.test".into()],
        }
    }

    #[test]
    fn bind_rules() {
        let r = rules();
        let src = |s: &str| s.parse::<Source>().unwrap();
        assert!(r.check(&src("tcp://127.0.0.1:20000"), None).is_ok());
        let e = r.check(&src("tcp://127.0.0.1:80"), None).unwrap_err();
        assert_eq!(e.reason, RejectReason::BindNotAllowed);
        assert!(e.detail.contains("--allowed-bind-tcp"), "{}", e.detail);
        let e = r.check(&src("udp://127.0.0.1:20000"), None).unwrap_err();
        assert_eq!(e.reason, RejectReason::BindNotAllowed);
        let e = r.check(&src("tcp://localhost:20000"), None).unwrap_err();
        assert_eq!(e.reason, RejectReason::InvalidSource);
        assert!(
            r.check(&src("tcp://127.0.0.1:20000"), Some("a.example.com"))
                .is_ok()
        );
        assert!(
            r.check(&src("tcp://127.0.0.1:20000"), Some("exact.test"))
                .is_ok()
        );
        let e = r
            .check(&src("tcp://127.0.0.1:20000"), Some("other.test"))
            .unwrap_err();
        assert_eq!(e.reason, RejectReason::NameNotAllowed);
        assert!(
            BindRules::default()
                .check(&src("tcp://127.0.0.1:20000"), None)
                .is_err()
        );
    }

    fn claim(client: &str, session: u64, name: Option<&str>, addr: SocketAddr) -> Claim {
        let telemetry = Telemetry::new(crate::telemetry::Role::Server);
        Claim {
            protocol: Protocol::Tcp,
            addr,
            name: name.map(str::to_string),
            accept_proxy: false,
            holder: Holder {
                session,
                client: client.into(),
            },
            publish_id: porthole_proto::message::FIRST_PUBLISH_ID,
            visitors: None,
            live: telemetry.client_forward("publish", addr),
        }
    }

    #[tokio::test]
    async fn one_holder_per_address_and_name() {
        let p = Publishers::default();
        let t = Telemetry::new(crate::telemetry::Role::Server);
        let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
        // Port 0 binds anew each time: take a real port first.
        let probe = std::net::TcpListener::bind(addr).unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let a = p.claim(claim("a", 1, None, addr), &t).await.unwrap();
        let e = p.claim(claim("b", 2, None, addr), &t).await.err().unwrap();
        assert_eq!(e.reason, RejectReason::AddressTaken);
        let e = p
            .claim(claim("b", 2, Some("x.example.com"), addr), &t)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, RejectReason::AddressTaken);
        // The same client's newer session takes over; the older one's release then
        // leaves the newer route alone.
        let a2 = p.claim(claim("a", 3, None, addr), &t).await.unwrap();
        assert!(a.stop.is_cancelled());
        drop(a);
        assert!(lock(&p.table).contains_key(&(Protocol::Tcp, addr)));
        drop(a2);
        assert!(lock(&p.table).is_empty());
        // Names share a port; each name has one holder.
        let x = p
            .claim(claim("a", 4, Some("x.example.com"), addr), &t)
            .await
            .unwrap();
        let y = p
            .claim(claim("b", 5, Some("y.example.com"), addr), &t)
            .await
            .unwrap();
        let e = p
            .claim(claim("b", 5, Some("x.example.com"), addr), &t)
            .await
            .err()
            .unwrap();
        assert_eq!(e.reason, RejectReason::AddressTaken);
        let e = p.claim(claim("c", 6, None, addr), &t).await.err().unwrap();
        assert_eq!(e.reason, RejectReason::AddressTaken);
        // The port reads a PROXY header ahead of every name or of none: the first
        // claim decided (none), so a name that wants one is refused.
        let mut z = claim("c", 7, Some("z.example.com"), addr);
        z.accept_proxy = true;
        let e = p.claim(z, &t).await.err().unwrap();
        assert_eq!(e.reason, RejectReason::AddressTaken);
        assert!(e.detail.contains("accept_proxy_protocol=0"), "{}", e.detail);
        drop(x);
        drop(y);
        assert!(lock(&p.table).is_empty());
    }
}
