//! The server's half: answer an offer, punch, and hand the direct connection to the
//! engine through the acceptor it runs on.

use std::collections::HashSet;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use porthole_engine::control::{read_frame, write_frame};
use porthole_engine::either::Either;
use porthole_engine::transport::Acceptor;
use porthole_engine::upgrade::{UpgradeAnswerer, UpgradeRecv, UpgradeSend};
use porthole_proto::blob::{BlobKind, MAX_CANDIDATES};
use porthole_proto::upgrade::{Declined, UpgradeAnswer, UpgradeOffer};
use porthole_transport_iroh::IrohAcceptor;
use porthole_transport_quic::{PreparedServer, QuicConn};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Semaphore, mpsc};
use tracing::{Instrument, debug, info, info_span, warn};

use crate::Conn;
use crate::options::{self, CONNECT_WAIT, UpgradeOptions};

/// How long the client may take to send its offer once its stream is open.
const OFFER_WAIT: Duration = Duration::from_secs(10);
/// Direct connections punched but not yet taken by the engine.
const QUEUE: usize = 16;

/// Answers upgrade offers; made together with the [`UpgradingAcceptor`] it feeds.
#[derive(Debug, Clone)]
pub struct Answerer {
    options: Arc<UpgradeOptions>,
    /// Upgrades punched at once (each has up to 256 sockets and a spray of probes).
    slots: Arc<Semaphore>,
    /// Sessions with an upgrade under way: one each.
    busy: Arc<Mutex<HashSet<String>>>,
    punched: mpsc::Sender<QuicConn>,
}

/// One session's upgrade under way; its end frees the session's turn.
struct Turn {
    busy: Arc<Mutex<HashSet<String>>>,
    session: String,
}

impl Drop for Turn {
    fn drop(&mut self) {
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.session);
    }
}

impl Answerer {
    /// An answerer, and the direct connections it punches (for
    /// [`UpgradingAcceptor::new`]).
    pub fn new(options: UpgradeOptions) -> (Self, Punched) {
        let (punched, direct) = mpsc::channel(QUEUE);
        let answerer = Self {
            options: Arc::new(options),
            slots: Arc::new(Semaphore::new(options::MAX_CONCURRENT)),
            busy: Default::default(),
            punched,
        };
        (answerer, Punched(direct))
    }

    fn turn(&self, session: &str) -> Option<Turn> {
        let mut busy = self.busy.lock().unwrap_or_else(|p| p.into_inner());
        busy.insert(session.to_string()).then(|| Turn {
            busy: self.busy.clone(),
            session: session.to_string(),
        })
    }

    /// Answers the offer on `recv` (the header already read) on `send`, then punches.
    /// `client` names the session's client in logs; `session` is the session's id.
    pub async fn run(
        self,
        client: String,
        session: String,
        (mut send, mut recv): (UpgradeSend, UpgradeRecv),
    ) {
        let slot = self.slots.clone().try_acquire_owned().ok();
        let turn = self.turn(&session);
        let offer = match tokio::time::timeout(OFFER_WAIT, read_frame::<UpgradeOffer, _>(&mut recv))
            .await
        {
            Ok(Ok(offer)) => offer,
            Ok(Err(e)) => return debug!("no upgrade offer: {e}"),
            Err(_) => return debug!("no upgrade offer within {OFFER_WAIT:?}"),
        };
        let (prepared, answer) = match (slot, turn) {
            (Some(slot), Some(turn)) => match self.prepare(offer).await {
                Ok(prepared) => {
                    let answer = UpgradeAnswer::Answer(prepared.answer().clone());
                    (Some((prepared, slot, turn)), answer)
                }
                Err(d) => (None, UpgradeAnswer::Declined(d)),
            },
            _ => (None, UpgradeAnswer::Declined(Declined::Busy)),
        };
        match &answer {
            UpgradeAnswer::Declined(Declined::IrohFirst) => {
                debug!("{}", Declined::IrohFirst.explain())
            }
            UpgradeAnswer::Declined(d) => info!("direct upgrade declined: {}", d.explain()),
            UpgradeAnswer::Answer(_) => {}
        }
        if let Err(e) = write_frame(&mut send, &answer).await {
            return debug!("could not answer the upgrade: {e}");
        }
        let _ = send.shutdown().await;
        let Some((prepared, _slot, _turn)) = prepared else {
            return;
        };
        match self.punch(prepared).await {
            Ok(conn) => {
                info!(%client, "direct upgrade: path=direct remote={}", conn.inner().remote_address());
                if self.punched.send(conn).await.is_err() {
                    debug!("the server stopped before the direct connection was taken");
                }
            }
            Err(e) => warn!("direct upgrade failed: {e}; the client stays on the relay"),
        }
    }

    /// Checks the offer and gathers our side's candidates.
    async fn prepare(&self, offer: UpgradeOffer) -> Result<PreparedServer, Declined> {
        let UpgradeOffer { offer, relayed_ms } = offer;
        let now = porthole_transport_quic::session::now_unix();
        if offer.kind != BlobKind::Offer
            || offer.expires_unix < now
            || offer.candidates.is_empty()
            || offer.candidates.len() > MAX_CANDIDATES
        {
            return Err(Declined::BadOffer);
        }
        let client_nat = offer.nat;
        let prepared = PreparedServer::new(self.options.manual().await, offer)
            .await
            .map_err(|e| {
                warn!("cannot prepare a direct upgrade: {e}");
                Declined::Busy
            })?;
        let ours = prepared.answer().nat;
        if !options::punchable(client_nat, ours) {
            debug!(client = %client_nat, server = %ours, "no direct path between these NATs");
            return Err(Declined::NoPath);
        }
        if !options::punch_now(client_nat, ours, Duration::from_millis(relayed_ms)) {
            return Err(Declined::IrohFirst);
        }
        info!(client = %client_nat, server = %ours, "direct upgrade: punching");
        Ok(prepared)
    }

    async fn punch(&self, prepared: PreparedServer) -> Result<QuicConn, String> {
        let acceptor = prepared.accept().await.map_err(|e| e.to_string())?;
        debug!("{}", acceptor.punched());
        acceptor
            .accept_one(CONNECT_WAIT)
            .await
            .map_err(|e| format!("QUIC on the punched path: {e}"))
    }
}

impl UpgradeAnswerer for Answerer {
    fn answer(
        &self,
        client: String,
        session: String,
        stream: (UpgradeSend, UpgradeRecv),
    ) -> Pin<Box<dyn Future<Output = ()> + Send>> {
        let span = info_span!("upgrade", %session);
        Box::pin(self.clone().run(client, session, stream).instrument(span))
    }
}

/// The engine's acceptor in iroh mode: the endpoint's connections, and the direct ones
/// upgrades punched.
#[derive(Debug)]
pub struct UpgradingAcceptor {
    iroh: IrohAcceptor,
    /// `None` without an [`Answerer`].
    direct: tokio::sync::Mutex<Option<Punched>>,
}

/// The direct connections an [`Answerer`] punched, in the order they were.
#[derive(Debug)]
pub struct Punched(mpsc::Receiver<QuicConn>);

impl Punched {
    /// The next one; `None` once the answerer is gone.
    pub async fn next(&mut self) -> Option<QuicConn> {
        self.0.recv().await
    }
}

impl UpgradingAcceptor {
    /// `iroh`'s connections, and `punched`'s (`None`: `--no-upgrade`).
    pub fn new(iroh: IrohAcceptor, punched: Option<Punched>) -> Self {
        Self {
            iroh,
            direct: tokio::sync::Mutex::new(punched),
        }
    }
}

type Handshake = Pin<Box<dyn Future<Output = io::Result<Conn>> + Send>>;

impl Acceptor for UpgradingAcceptor {
    type Conn = Conn;
    type Handshake = Handshake;

    async fn accept(&self) -> Option<Handshake> {
        let mut direct = self.direct.lock().await;
        let punched = async {
            match direct.as_mut() {
                Some(p) => p.next().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            h = self.iroh.accept() => {
                let h = h?;
                Some(Box::pin(async move { h.await.map(Either::Left) }))
            }
            Some(conn) = punched => Some(Box::pin(std::future::ready(Ok(Either::Right(conn))))),
        }
    }
}
