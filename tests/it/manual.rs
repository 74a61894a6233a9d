//! Manual mode: copy-paste signaling, STUN, hole punching and a full tunnel over plain
//! QUIC, on loopback (in process and with the real binary exchanging files).

use std::time::Duration;

use porthole_engine::auth::TokenSet;
use porthole_engine::client::{Client, ClientConfig, ForwardSpec, Status};
use porthole_engine::policy::{AllowList, Policy};
use porthole_engine::server::ServerConfig;
use porthole_proto::blob::{Blob, BlobKind, NatKind};
use porthole_transport_quic::session::now_unix;
use porthole_transport_quic::{ManualOptions, PreparedClient, PreparedServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

use crate::support::echo::{tcp_echo, udp_echo};
use crate::support::process::{Proc, bin, free_tcp_port};
use crate::support::{TOKEN, init_tracing, token};

fn opts(stun: Vec<std::net::SocketAddr>) -> ManualOptions {
    ManualOptions {
        bind: "127.0.0.1:0".parse().unwrap(),
        stun,
        punch_timeout: Some(Duration::from_secs(20)),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn manual_tunnel_tcp_and_udp_over_loopback() {
    init_tracing();
    let stun = porthole_relay::spawn_stun(&[
        "127.0.0.1:0".parse().unwrap(),
        "127.0.0.1:0".parse().unwrap(),
    ])
    .await
    .unwrap();
    let (tcp_target, udp_target) = (tcp_echo().await, udp_echo().await);

    // Client: listeners first, then the offer, which travels as text.
    let forwards = vec![
        ForwardSpec::new(
            format!("tcp://{tcp_target}").parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ),
        ForwardSpec::new(
            format!("udp://{udp_target}").parse().unwrap(),
            "127.0.0.1:0".parse().unwrap(),
        ),
    ];
    let client = Client::bind(ClientConfig::new(token(TOKEN), forwards))
        .await
        .unwrap();
    let local = client.local_addrs();
    let mut status = client.status();
    let prepared_client = PreparedClient::new(opts(stun.addrs().to_vec()))
        .await
        .unwrap();
    let offer_text = prepared_client.offer().encode().unwrap();
    assert_eq!(
        prepared_client.offer().nat,
        NatKind::Open,
        "loopback has no NAT"
    );

    // Server: reads the offer text, answers.
    let offer = Blob::decode(&offer_text, BlobKind::Offer, now_unix()).unwrap();
    let prepared_server = PreparedServer::new(opts(stun.addrs().to_vec()), offer)
        .await
        .unwrap();
    let answer_text = prepared_server.answer().encode().unwrap();
    let answer = Blob::decode(&answer_text, BlobKind::Answer, now_unix()).unwrap();

    // Both punch at once.
    let (acceptor, connector) =
        tokio::join!(prepared_server.accept(), prepared_client.connect(answer));
    let (acceptor, connector) = (acceptor.unwrap(), connector.unwrap());

    let policy = Policy {
        tcp: AllowList::parse(&["127.0.0.0/8"]).unwrap(),
        udp: AllowList::parse(&["127.0.0.0/8"]).unwrap(),
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(porthole_engine::server::run(
        acceptor,
        ServerConfig::new(TokenSet::new(vec![token(TOKEN)]).unwrap(), policy),
        shutdown.clone(),
    ));
    let client_task = tokio::spawn(client.run(connector, shutdown.clone()));
    tokio::time::timeout(
        Duration::from_secs(20),
        status.wait_for(|s| matches!(s, Status::Connected { .. })),
    )
    .await
    .unwrap()
    .unwrap();

    let mut s = TcpStream::connect(local[0]).await.unwrap();
    let msg = vec![42u8; 200_000];
    s.write_all(&msg).await.unwrap();
    s.shutdown().await.unwrap();
    let mut back = Vec::new();
    s.read_to_end(&mut back).await.unwrap();
    assert_eq!(back, msg);

    let u = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    u.connect(local[1]).await.unwrap();
    let mut buf = vec![0u8; 65536];
    for size in [10usize, 1472, 8192] {
        let payload = vec![size as u8; size];
        let mut ok = false;
        for _ in 0..5 {
            u.send(&payload).await.unwrap();
            if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(2), u.recv(&mut buf)).await
            {
                assert_eq!(&buf[..n], &payload[..]);
                ok = true;
                break;
            }
        }
        assert!(ok, "{size}-byte UDP datagram never came back");
    }

    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), client_task).await;
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_for_another_offer_is_refused() {
    init_tracing();
    let a = PreparedClient::new(opts(vec![])).await.unwrap();
    let b = PreparedClient::new(opts(vec![])).await.unwrap();
    let server = PreparedServer::new(opts(vec![]), b.offer().clone())
        .await
        .unwrap();
    let r = a.connect(server.answer().clone()).await;
    assert!(
        matches!(
            r,
            Err(porthole_transport_quic::session::ManualError::SessionMismatch)
        ),
        "{:?}",
        r.err()
    );
}

/// The real binary, both sides, exchanging the blobs through files as a script would.
/// The binary in manual mode through offer and answer files: a forward, and a publish
/// (the server listens, the visitor reaches the client's side) over the punched path.
#[test]
fn binary_manual_mode_through_files() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(p("token.txt"), format!("{TOKEN}\n")).unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_port = target.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in target.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut b = [0u8; 1024];
                use std::io::{Read, Write};
                while let Ok(n) = s.read(&mut b) {
                    if n == 0 || s.write_all(&b[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let (listen, published) = (free_tcp_port(), free_tcp_port());
    let mut server = bin();
    server
        .args([
            "server",
            "--mode",
            "manual",
            "--stun-server",
            "none",
            "--bind",
            "127.0.0.1:0",
        ])
        .args([
            "--allowed-tcp",
            "127.0.0.0/8",
            "--auth-tokens-file",
            &p("token.txt"),
        ])
        .args(["--allowed-bind-tcp", &format!("127.0.0.1/32:{published}")])
        .args([
            "--offer-file",
            &p("offer.txt"),
            "--answer-file",
            &p("answer.txt"),
        ]);
    let server = Proc::spawn("manual-server", server);
    let mut client = bin();
    client
        .args([
            "client",
            "--mode",
            "manual",
            "--stun-server",
            "none",
            "--bind",
            "127.0.0.1:0",
        ])
        .args([
            "--source",
            &format!("tcp://127.0.0.1:{target_port}"),
            "--target",
            &format!("127.0.0.1:{listen}"),
        ])
        .args(["--auth-token-file", &p("token.txt")])
        .args([
            "--publish",
            &format!("tcp://127.0.0.1:{published}=127.0.0.1:{target_port}"),
        ])
        .args([
            "--offer-file",
            &p("offer.txt"),
            "--answer-file",
            &p("answer.txt"),
        ]);
    let mut client = Proc::spawn("manual-client", client);
    client.wait_line("tunnel up", Duration::from_secs(30));
    let line = client.wait_line("punched in", Duration::from_secs(5));
    assert!(line.contains("path=direct"), "{line}");
    server.wait_line("punched in", Duration::from_secs(5));
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"manual mode works").unwrap();
    let mut got = [0u8; 17];
    s.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"manual mode works");
    let mut v = std::net::TcpStream::connect(("127.0.0.1", published)).unwrap();
    v.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    v.write_all(b"published, manually").unwrap();
    let mut got = [0u8; 19];
    v.read_exact(&mut got).unwrap();
    assert_eq!(&got, b"published, manually");
    assert!(
        std::fs::read_to_string(p("offer.txt"))
            .unwrap()
            .contains("BEGIN PORTHOLE OFFER")
    );
    client.signal("TERM");
    assert_eq!(client.wait_exit(Duration::from_secs(15)), 0);
}
