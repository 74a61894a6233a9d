//! The direct upgrade's answer and punch on loopback, in process: the server's answerer
//! declines what it should, and an offer it accepts ends in one QUIC connection between
//! the two pinned certificates, and no other. Between real NATs, with the engine moving
//! sessions: `natlab::upgrade`, `natlab::matrix`.

use std::time::Duration;

use porthole_engine::control::{read_frame, write_frame};
use porthole_engine::quic_params::QuicParams;
use porthole_engine::transport::{Connection, Connector};
use porthole_proto::blob::BlobKind;
use porthole_proto::upgrade::{Declined, UpgradeAnswer, UpgradeOffer};
use porthole_transport_iroh::IrohOptions;
use porthole_transport_quic::{ManualOptions, PreparedClient};
use porthole_upgrade::{Answerer, UpgradeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::init_tracing;

fn server_options(stun: Vec<String>) -> UpgradeOptions {
    let iroh = IrohOptions {
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        ..IrohOptions::default()
    };
    UpgradeOptions::beside(&iroh, stun, QuicParams::default())
}

async fn client(stun: &[std::net::SocketAddr]) -> PreparedClient {
    PreparedClient::new(ManualOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        stun: stun.to_vec(),
        punch_timeout: Some(Duration::from_secs(10)),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Two STUN servers on loopback (a NAT needs two to be classified), and their names.
async fn two_stun() -> (porthole_relay::StunHandle, Vec<String>) {
    let any = "127.0.0.1:0".parse().unwrap();
    let stun = porthole_relay::spawn_stun(&[any, any]).await.unwrap();
    let names = stun.addrs().iter().map(|a| a.to_string()).collect();
    (stun, names)
}

/// Hands `offer` to a run of `answerer` for session `session` over an in-memory stream,
/// and returns its answer.
async fn ask(answerer: &Answerer, session: &str, offer: &UpgradeOffer) -> UpgradeAnswer {
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let (r, w) = tokio::io::split(theirs);
    let stream = (Box::new(w) as _, Box::new(r) as _);
    tokio::spawn(answerer.clone().run("c".into(), session.into(), stream));
    let (mut r, mut w) = tokio::io::split(ours);
    write_frame(&mut w, offer).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), read_frame(&mut r))
        .await
        .expect("the answerer did not answer")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_accepted_offer_ends_in_one_pinned_connection() {
    init_tracing();
    let (stun, names) = two_stun().await;
    let (answerer, mut punched) = Answerer::new(server_options(names));

    // Loopback is no NAT at all: iroh would punch that by itself, so the server waits
    // until the session has been relayed for a while.
    let early = client(stun.addrs()).await;
    let offer = UpgradeOffer {
        offer: early.offer().clone(),
        relayed_ms: 0,
    };
    assert_eq!(
        ask(&answerer, "c", &offer).await,
        UpgradeAnswer::Declined(Declined::IrohFirst)
    );

    let prepared = client(stun.addrs()).await;
    let offer = UpgradeOffer {
        offer: prepared.offer().clone(),
        relayed_ms: 6_000,
    };
    let UpgradeAnswer::Answer(answer) = ask(&answerer, "c", &offer).await else {
        panic!("no answer to a punchable offer");
    };
    assert_eq!(answer.kind, BlobKind::Answer);
    assert_eq!(answer.session_id, prepared.offer().session_id);
    let connector = prepared.connect(answer).await.unwrap();
    let conn = connector.connect().await.unwrap();
    let server = tokio::time::timeout(Duration::from_secs(10), punched.next())
        .await
        .expect("the server did not hand the punched connection over")
        .unwrap();

    // One connection, the two ends of it.
    let (mut send, _recv) = conn.open_bi().await.unwrap();
    send.write_all(b"moved").await.unwrap();
    send.flush().await.unwrap();
    let (_s, mut recv) = server.accept_bi().await.unwrap();
    let mut got = [0u8; 5];
    recv.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, b"moved");

    // The punched endpoint took that connection and takes no other.
    let second = tokio::time::timeout(Duration::from_secs(5), connector.connect()).await;
    assert!(
        !matches!(second, Ok(Ok(_))),
        "a second connection reached the upgrade's endpoint"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_that_cannot_or_must_not_be_punched_are_declined() {
    init_tracing();
    let (stun, names) = two_stun().await;
    let (answerer, _punched) = Answerer::new(server_options(names));
    let prepared = client(stun.addrs()).await;
    let good = UpgradeOffer {
        offer: prepared.offer().clone(),
        relayed_ms: 6_000,
    };

    // Expired, or not an offer at all.
    let mut stale = good.clone();
    stale.offer.expires_unix = 1;
    assert_eq!(
        ask(&answerer, "a", &stale).await,
        UpgradeAnswer::Declined(Declined::BadOffer)
    );
    let mut answer = good.clone();
    answer.offer.kind = BlobKind::Answer;
    assert_eq!(
        ask(&answerer, "a", &answer).await,
        UpgradeAnswer::Declined(Declined::BadOffer)
    );

    // A session with an upgrade under way (its offer not even sent) gets no second one.
    let (_held, theirs) = tokio::io::duplex(1024);
    let (r, w) = tokio::io::split(theirs);
    let stream = (Box::new(w) as _, Box::new(r) as _);
    tokio::spawn(answerer.clone().run("c".into(), "b".into(), stream));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        ask(&answerer, "b", &good).await,
        UpgradeAnswer::Declined(Declined::Busy)
    );

    // A server that cannot classify its own NAT (no STUN answers) cannot punch.
    let (blind, _p) = Answerer::new(server_options(Vec::new()));
    assert_eq!(
        ask(&blind, "a", &good).await,
        UpgradeAnswer::Declined(Declined::NoPath)
    );
}
