//! Bad input against a real server process: each attempt is refused cleanly, with a
//! clear log line, and a legitimate client served alongside never notices.

use std::net::SocketAddr;
use std::time::Duration;

use porthole_proto::close::CloseCode;
use porthole_proto::datagram;
use porthole_proto::frame;
use porthole_proto::message::{
    AuthRequest, AuthRequestV3, AuthResponse, ControlRequest, ControlResponse, RejectReason,
};
use porthole_proto::resume::{ResumableHeader, ResumeClaim, ResumeReply, SessionTicket};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::process::{Offline, Proc, endpoint_id, free_tcp_port, free_udp_port};
use crate::support::{OTHER_TOKEN, TOKEN, init_tracing};

struct Target {
    server: Proc,
    id: porthole_proto::key::EndpointId,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// A server process on loopback, no relay; TCP and UDP allowed to 127.0.0.0/8.
fn server() -> Target {
    server_with(|_| Vec::new())
}

/// [`server`] with more flags, made from its directory.
fn server_with(extra: impl FnOnce(&std::path::Path) -> Vec<String>) -> Target {
    server_with_tokens(&[TOKEN], extra)
}

/// [`server_with`] accepting `tokens`.
fn server_with_tokens(
    tokens: &[&str],
    extra: impl FnOnce(&std::path::Path) -> Vec<String>,
) -> Target {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens.txt");
    std::fs::write(&file, tokens.join("\n") + "\n").unwrap();
    let tokens = file;
    let port = free_udp_port();
    let extra = extra(dir.path());
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let server = Offline::server(&tokens, port)
        .args(&["--allowed-udp", "127.0.0.0/8"])
        .args(&extra)
        .spawn("server");
    let id = endpoint_id(&server).parse().unwrap();
    server.wait_line("serving", Duration::from_secs(20));
    Target {
        server,
        id,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        _dir: dir,
    }
}

/// A raw QUIC peer speaking porthole's ALPN, with no porthole logic at all.
struct Raw {
    endpoint: iroh::Endpoint,
    conn: iroh::endpoint::Connection,
}

async fn raw(t: &Target) -> Raw {
    init_tracing();
    raw_with(t, &offline(None)).await
}

/// An offline endpoint on loopback: a fresh identity per connection, or `secret`'s on
/// every one (so failures of one identity add up).
fn offline(secret: Option<porthole_proto::key::SecretKey>) -> porthole_transport_iroh::IrohOptions {
    porthole_transport_iroh::IrohOptions {
        secret,
        relays: porthole_transport_iroh::RelaySetting::Disabled,
        dns: porthole_transport_iroh::DnsSetting::Disabled,
        bind: vec!["127.0.0.1:0".parse().unwrap()],
        portmap: false,
        ..Default::default()
    }
}

async fn raw_with(t: &Target, opts: &porthole_transport_iroh::IrohOptions) -> Raw {
    let endpoint =
        porthole_transport_iroh::bind(opts, &porthole_engine::quic_params::QuicParams::default())
            .await
            .unwrap();
    let addr = porthole_transport_iroh::ticket::endpoint_addr(&t.id, &[], &[t.addr]).unwrap();
    let conn = endpoint.connect(addr, porthole_proto::ALPN).await.unwrap();
    Raw { endpoint, conn }
}

impl Raw {
    async fn closed_with(&self, limit: Duration) -> u64 {
        match tokio::time::timeout(limit, self.conn.closed())
            .await
            .expect("server did not close the connection")
        {
            iroh::endpoint::ConnectionError::ApplicationClosed(c) => c.error_code.into_inner(),
            other => panic!("closed without an application code: {other}"),
        }
    }

    async fn auth(
        &self,
        version: u16,
        token: &str,
    ) -> (iroh::endpoint::SendStream, iroh::endpoint::RecvStream) {
        let (mut s, r) = self.conn.open_bi().await.unwrap();
        s.write_all(
            &frame::encode(&AuthRequest {
                version,
                token: token.into(),
            })
            .unwrap(),
        )
        .await
        .unwrap();
        (s, r)
    }
}

impl Raw {
    /// Asks for a resumable session with `token`, claiming `resume`.
    async fn auth_v3(
        &self,
        token: &str,
        resume: Option<ResumeClaim>,
    ) -> (iroh::endpoint::SendStream, iroh::endpoint::RecvStream) {
        let (mut s, r) = self.conn.open_bi().await.unwrap();
        let auth = AuthRequestV3 {
            version: porthole_proto::RESUME_VERSION,
            token: Some(token.into()),
            proof: None,
            resume,
        };
        s.write_all(&frame::encode(&auth).unwrap()).await.unwrap();
        (s, r)
    }

    /// This connection's value of the resume exporter (what a claim is bound to).
    fn resume_exporter(&self) -> [u8; 32] {
        use porthole_engine::transport::Connection as _;
        porthole_transport_iroh::IrohConn::new(self.conn.clone())
            .keying_material(porthole_proto::resume::EXPORTER_LABEL)
            .unwrap()
    }

    /// Authenticates for a resumable session; returns whether the claim was honoured.
    async fn resumes(&self, token: &str, claim: Option<ResumeClaim>) -> (bool, SessionTicket) {
        let (_s, mut rx) = self.auth_v3(token, claim).await;
        match read_frame::<AuthResponse>(&mut rx).await {
            AuthResponse::Resumable {
                ticket, resumed, ..
            } => (resumed, ticket),
            other => panic!("not a resumable session: {other:?}"),
        }
    }
}

/// Claims `ticket`'s session on a fresh connection with its secret, and checks that it
/// moved there: the session's old connection `from` is closed as resumed.
async fn take_over(t: &Target, ticket: &SessionTicket, from: &Raw) -> Raw {
    let fresh = raw(t).await;
    let (resumed, again) = fresh
        .resumes(TOKEN, Some(ticket.claim(&fresh.resume_exporter())))
        .await;
    assert!(resumed && again.session == ticket.session);
    assert_eq!(
        from.closed_with(Duration::from_secs(5)).await,
        u64::from(CloseCode::Resumed.as_u32())
    );
    fresh
}

async fn read_frame<T: serde::de::DeserializeOwned>(r: &mut iroh::endpoint::RecvStream) -> T {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await.unwrap();
    let mut body = vec![0u8; u16::from_be_bytes(h) as usize];
    r.read_exact(&mut body).await.unwrap();
    frame::decode_body(&body).unwrap()
}

/// A legitimate client (the binary) with a TCP forward, checked before and after.
struct Legit {
    _client: Proc,
    listen: u16,
}

fn legit(t: &Target, target_port: u16) -> Legit {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("t");
    std::fs::write(&token, format!("{TOKEN}\n")).unwrap();
    let listen = free_tcp_port();
    let client = Offline::client(&t.id.to_string(), t.addr.port(), &token)
        .forward(&format!("tcp://127.0.0.1:{target_port}"), listen)
        .spawn("legit-client");
    client.wait_line("tunnel up", Duration::from_secs(20));
    std::mem::forget(dir);
    Legit {
        _client: client,
        listen,
    }
}

async fn legit_works(l: &Legit) {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", l.listen))
        .await
        .unwrap();
    s.write_all(b"still here").await.unwrap();
    let mut b = [0u8; 10];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&b, b"still here");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_auth_input_is_refused_cleanly() {
    let t = server();
    let echo = crate::support::echo::tcp_echo().await;
    let l = legit(&t, echo.port());
    legit_works(&l).await;

    // Garbage on the auth stream: an absurd length prefix.
    let r = raw(&t).await;
    let (mut s, _rx) = r.conn.open_bi().await.unwrap();
    s.write_all(&[0xff, 0xff, 1, 2, 3]).await.unwrap();
    assert_eq!(
        r.closed_with(Duration::from_secs(5)).await,
        CloseCode::ProtocolError.as_u32() as u64
    );
    t.server
        .wait_line("malformed auth request", Duration::from_secs(5));

    // A well-framed body that is not an AuthRequest.
    let r = raw(&t).await;
    let (mut s, _rx) = r.conn.open_bi().await.unwrap();
    s.write_all(&[0, 3, 0xff, 0xff, 0xff]).await.unwrap();
    assert_eq!(
        r.closed_with(Duration::from_secs(5)).await,
        CloseCode::ProtocolError.as_u32() as u64
    );

    // An unknown protocol version.
    let r = raw(&t).await;
    let _streams = r.auth(99, TOKEN).await;
    assert_eq!(
        r.closed_with(Duration::from_secs(5)).await,
        CloseCode::UnsupportedVersion.as_u32() as u64
    );
    t.server
        .wait_line("protocol version 99", Duration::from_secs(5));

    legit_works(&l).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn silent_auth_times_out_and_early_streams_are_not_served() {
    let t = server();
    let dialed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dialed_port = dialed.local_addr().unwrap().port();
    let r = raw(&t).await;
    // The auth stream gets one byte and stalls; a second stream tries a TCP forward.
    let (mut a, _ar) = r.conn.open_bi().await.unwrap();
    a.write_all(&[0]).await.unwrap();
    let (mut b, _br) = r.conn.open_bi().await.unwrap();
    b.write_all(&frame::encode(&porthole_proto::message::StreamHeader { forward_id: 0 }).unwrap())
        .await
        .unwrap();
    b.write_all(b"let me in").await.unwrap();
    let started = std::time::Instant::now();
    assert_eq!(
        r.closed_with(Duration::from_secs(20)).await,
        CloseCode::AuthTimeout.as_u32() as u64
    );
    assert!(
        started.elapsed() >= Duration::from_secs(8),
        "closed early: {:?}",
        started.elapsed()
    );
    t.server.wait_line("auth timed out", Duration::from_secs(5));
    // Nothing was dialed for the early stream.
    let none = tokio::time::timeout(Duration::from_millis(300), dialed.accept()).await;
    assert!(
        none.is_err(),
        "the server dialed a target before authentication"
    );
    let _ = dialed_port;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_wrong_tokens_are_slowed_down() {
    let t = server();
    let opts = offline(Some(porthole_proto::key::SecretKey::generate().unwrap()));
    let mut codes = Vec::new();
    for _ in 0..7 {
        let r = raw_with(&t, &opts).await;
        // A rate-limited peer may be closed before it can even open a stream.
        if let Ok((mut s, _r)) = r.conn.open_bi().await {
            let _ = s
                .write_all(
                    &frame::encode(&AuthRequest {
                        version: 1,
                        token: OTHER_TOKEN.into(),
                    })
                    .unwrap(),
                )
                .await;
        }
        codes.push(r.closed_with(Duration::from_secs(5)).await);
        r.endpoint.close().await;
    }
    let failed = CloseCode::AuthFailed.as_u32() as u64;
    let limited = CloseCode::RateLimited.as_u32() as u64;
    assert!(codes[..5].iter().all(|&c| c == failed), "{codes:?}");
    assert!(
        codes[5..].iter().all(|&c| c == failed || c == limited),
        "{codes:?}"
    );
    assert!(codes.contains(&limited), "never rate limited: {codes:?}");
    t.server.wait_line("peer blocked", Duration::from_secs(5));
    t.server
        .wait_line("too many failed auths", Duration::from_secs(5));
    // A malformed token is just a wrong token, and nothing about it reaches the log.
    assert!(!t.server.output().contains(OTHER_TOKEN));
}

/// The limiter's key is the peer's whole EndpointId, not the 5-byte prefix the logs show:
/// peers whose ids share a prefix (or one ground to match a victim's) get their own
/// buckets. And a peer blocked for failures does not block anybody else.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_limiter_keys_on_the_whole_identity() {
    use porthole_engine::transport::Connection as _;
    let t = server();
    let r = raw(&t).await;
    let conn = porthole_transport_iroh::IrohConn::new(r.conn.clone());
    let full = r.conn.remote_id().to_string();
    assert_eq!(conn.peer_key(), full);
    assert!(full.len() >= 64, "{full}");
    assert!(full.starts_with(&conn.peer()) && conn.peer().len() < full.len());

    // One identity blocked...
    let opts = offline(Some(porthole_proto::key::SecretKey::generate().unwrap()));
    for _ in 0..6 {
        let bad = raw_with(&t, &opts).await;
        if let Ok((mut s, _r)) = bad.conn.open_bi().await {
            let auth = AuthRequest {
                version: 1,
                token: OTHER_TOKEN.into(),
            };
            let _ = s.write_all(&frame::encode(&auth).unwrap()).await;
        }
        bad.closed_with(Duration::from_secs(5)).await;
        bad.endpoint.close().await;
    }
    t.server.wait_line("peer blocked", Duration::from_secs(5));
    // ...and a different one (same address, same machine), connecting afterwards, is
    // still served.
    let fresh = raw(&t).await;
    let (_s, mut rx) = fresh.auth(1, TOKEN).await;
    let AuthResponse::Accepted { .. } = read_frame::<AuthResponse>(&mut rx).await else {
        panic!("a plain session was asked for");
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn odd_sources_are_refused_one_by_one() {
    let t = server();
    let r = raw(&t).await;
    let (mut s, mut rx) = r.auth(1, TOKEN).await;
    let AuthResponse::Accepted { .. } = read_frame::<AuthResponse>(&mut rx).await else {
        panic!("a plain session was asked for");
    };
    let long_host = format!("tcp://{}:22", "a".repeat(300));
    let cases: Vec<(&str, Option<RejectReason>)> = vec![
        ("", Some(RejectReason::InvalidSource)),
        ("tcp://", Some(RejectReason::InvalidSource)),
        (&long_host, Some(RejectReason::InvalidSource)),
        ("tcp://[::1", Some(RejectReason::InvalidSource)),
        ("tcp://[fe80::1%eth0]:22", Some(RejectReason::InvalidSource)),
        ("tcp://127.1:22", Some(RejectReason::InvalidSource)),
        ("tcp://0x7f000001:22", Some(RejectReason::InvalidSource)),
        ("tcp://10.0.0.1:22", Some(RejectReason::NotAllowed)),
        ("tcp://[::ffff:10.0.0.1]:22", Some(RejectReason::NotAllowed)),
        ("tcp://[::1]:22", Some(RejectReason::NotAllowed)),
        ("udp://[::ffff:127.0.0.1]:53", None),
        ("tcp://localhost:22", None),
    ];
    for (i, (src, want)) in cases.iter().enumerate() {
        let req = ControlRequest::OpenForward {
            request_id: i as u32,
            source: src.to_string(),
        };
        s.write_all(&frame::encode(&req).unwrap()).await.unwrap();
        match (read_frame::<ControlResponse>(&mut rx).await, want) {
            (
                ControlResponse::ForwardRejected {
                    request_id,
                    reason,
                    detail,
                },
                Some(w),
            ) => {
                assert_eq!((request_id, reason), (i as u32, *w), "{src:?}: {detail}");
                assert!(detail.len() <= 200);
            }
            (ControlResponse::ForwardAccepted { request_id, .. }, None) => {
                assert_eq!(request_id, i as u32)
            }
            (other, _) => panic!("{src:?}: unexpected {other:?}"),
        }
    }
    // The connection is still fine.
    assert!(r.conn.close_reason().is_none());
    t.server.wait_line("invalid source", Duration::from_secs(5));
    t.server.wait_line(
        "outside the server's tcp allow-list",
        Duration::from_secs(5),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datagrams_for_unknown_flows_are_dropped_and_counted() {
    let t = server();
    let echo = crate::support::echo::udp_echo().await;
    let r = raw(&t).await;
    let (mut s, mut rx) = r.auth(1, TOKEN).await;
    let AuthResponse::Accepted { .. } = read_frame::<AuthResponse>(&mut rx).await else {
        panic!("a plain session was asked for");
    };
    s.write_all(
        &frame::encode(&ControlRequest::OpenForward {
            request_id: 0,
            source: format!("udp://{echo}"),
        })
        .unwrap(),
    )
    .await
    .unwrap();
    let ControlResponse::ForwardAccepted { forward_id, .. } =
        read_frame::<ControlResponse>(&mut rx).await
    else {
        panic!("UDP forward refused");
    };
    // Unknown forward, garbage, truncated fragments: dropped.
    let bogus = datagram::FlowKey {
        forward_id: forward_id + 9,
        flow_id: 1,
    };
    let junk: Vec<Vec<u8>> = vec![
        datagram::encode(bogus, 0, b"nobody home", 1200)
            .unwrap()
            .remove(0),
        vec![9, 9, 9, 9, 9, 9, 9, 9],
        vec![1, 0],
        datagram::encode(
            datagram::FlowKey {
                forward_id,
                flow_id: 5,
            },
            1,
            &[1u8; 5000],
            1200,
        )
        .unwrap()
        .remove(0),
    ];
    for j in junk {
        r.conn.send_datagram(j.into()).unwrap();
    }
    // A proper datagram on the real forward still echoes.
    let good = datagram::encode(
        datagram::FlowKey {
            forward_id,
            flow_id: 1,
        },
        0,
        b"echo me",
        1200,
    )
    .unwrap()
    .remove(0);
    let mut back = None;
    for _ in 0..10 {
        r.conn.send_datagram(good.clone().into()).unwrap();
        if let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_millis(500), r.conn.read_datagram()).await
        {
            back = Some(d);
            break;
        }
    }
    let back = back.expect("no echo");
    match datagram::Datagram::decode(&back).unwrap() {
        datagram::Datagram::Whole { payload, .. } => assert_eq!(payload, b"echo me"),
        other => panic!("{other:?}"),
    }
    t.server
        .wait_line("UDP datagrams discarded", Duration::from_secs(5));
}

/// Sends a version-2 auth request carrying `proof` and no token.
async fn prove(
    r: &Raw,
    proof: porthole_proto::message::KeyProof,
) -> (iroh::endpoint::SendStream, iroh::endpoint::RecvStream) {
    let (mut s, rx) = r.conn.open_bi().await.unwrap();
    let auth = porthole_proto::message::AuthRequestV2 {
        version: porthole_proto::KEY_AUTH_VERSION,
        token: None,
        proof: Some(proof),
    };
    s.write_all(&frame::encode(&auth).unwrap()).await.unwrap();
    (s, rx)
}

fn exporter(r: &Raw) -> [u8; 32] {
    let mut out = [0u8; 32];
    r.conn
        .export_keying_material(&mut out, porthole_proto::key::PROOF_EXPORTER_LABEL, b"")
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_key_proof_replayed_on_another_connection_is_refused() {
    init_tracing();
    let key = porthole_proto::key::SecretKey::generate().unwrap();
    let id = key.endpoint_id();
    let t = server_with(|dir| {
        let access = dir.join("access.toml");
        std::fs::write(
            &access,
            format!(
                "[[client]]\nname = \"keyed\"\nkeys = [\"{id}\"]\nallowed_tcp = [\"127.0.0.0/8\"]\n"
            ),
        )
        .unwrap();
        vec!["--access-file".into(), access.to_str().unwrap().into()]
    });

    // A proof made for connection A...
    let a = raw(&t).await;
    let captured = key.prove(&exporter(&a));
    // ...is worthless on connection B.
    let b = raw(&t).await;
    let _streams = prove(&b, captured.clone()).await;
    assert_eq!(
        b.closed_with(Duration::from_secs(5)).await,
        CloseCode::AuthFailed.as_u32() as u64
    );
    t.server
        .wait_line("client key proof does not verify", Duration::from_secs(5));

    // The same key, proved on its own connection, gets in; so does A with its proof.
    let c = raw(&t).await;
    let (_s, mut rx) = prove(&c, key.prove(&exporter(&c))).await;
    let accepted: AuthResponse = read_frame(&mut rx).await;
    assert!(matches!(accepted, AuthResponse::Accepted { .. }));
    let (_s, mut rx) = prove(&a, captured).await;
    let accepted: AuthResponse = read_frame(&mut rx).await;
    assert!(matches!(accepted, AuthResponse::Accepted { .. }));
    t.server.wait_line("client=keyed", Duration::from_secs(5));

    // A valid proof by a key the server does not list is refused as such.
    let stranger = porthole_proto::key::SecretKey::generate().unwrap();
    let d = raw(&t).await;
    let _streams = prove(&d, stranger.prove(&exporter(&d))).await;
    assert_eq!(
        d.closed_with(Duration::from_secs(5)).await,
        CloseCode::AuthFailed.as_u32() as u64
    );
    t.server
        .wait_line("client key not accepted", Duration::from_secs(5));
}

/// A resumable session is found again only by a claim that proves its secret on the new
/// connection, from the same client: another client's token with the right secret, a
/// wrong secret, or a claim made on another connection (a replay) each get a session of
/// their own, and the claimed one carries on untouched. The real claim moves the session
/// and its open stream, which continues where it stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_session_resumes_only_with_its_secret_and_its_client() {
    let echo = crate::support::echo::tcp_echo().await;
    let t = server_with_tokens(&[TOKEN, OTHER_TOKEN], |_| Vec::new());
    let a = raw(&t).await;
    let (mut ctl, mut rx) = a.auth_v3(TOKEN, None).await;
    let AuthResponse::Resumable {
        ticket,
        resumed: false,
        ..
    } = read_frame::<AuthResponse>(&mut rx).await
    else {
        panic!("a new resumable session was asked for");
    };
    let source = format!("tcp://{echo}").parse().unwrap();
    let open = ControlRequest::open_forward(0, &source);
    ctl.write_all(&frame::encode(&open).unwrap()).await.unwrap();
    let ControlResponse::ForwardAccepted { forward_id, .. } = read_frame(&mut rx).await else {
        panic!("forward refused");
    };
    let (mut s, mut r) = a.conn.open_bi().await.unwrap();
    let header = ResumableHeader::Open {
        forward_id,
        stream: 0,
    };
    s.write_all(&frame::encode(&header).unwrap()).await.unwrap();
    let mut buf = [0u8; 5];
    s.write_all(b"hello").await.unwrap();
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"hello");

    // Another client's token, with the right secret on its own connection.
    let b = raw(&t).await;
    let claim = ticket.claim(&b.resume_exporter());
    assert!(!b.resumes(OTHER_TOKEN, Some(claim)).await.0);
    t.server
        .wait_line("belongs to another client", Duration::from_secs(5));
    // The right token, a guessed secret.
    let c = raw(&t).await;
    let guess = SessionTicket {
        session: ticket.session,
        secret: [7; 32],
    };
    assert!(
        !c.resumes(TOKEN, Some(guess.claim(&c.resume_exporter())))
            .await
            .0
    );
    t.server
        .wait_line("the session secret does not verify", Duration::from_secs(5));
    // A claim made for the first connection, replayed on another.
    let d = raw(&t).await;
    let (resumed, other) = d
        .resumes(TOKEN, Some(ticket.claim(&a.resume_exporter())))
        .await;
    assert!(!resumed);
    assert_ne!(other.session, ticket.session, "a session of its own");
    // None of them touched the claimed session.
    s.write_all(b"still").await.unwrap();
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still");
    assert!(a.conn.close_reason().is_none());

    // The real claim: the session moves, the old connection is closed, the stream
    // continues on the new one from where each side stopped.
    let e = take_over(&t, &ticket, &a).await;
    let (mut s, mut r) = e.conn.open_bi().await.unwrap();
    let resume = ResumableHeader::Resume {
        stream: 0,
        received: 10,
    };
    s.write_all(&frame::encode(&resume).unwrap()).await.unwrap();
    let ResumeReply::Resumed { received } = read_frame(&mut r).await else {
        panic!("the stream was not resumed");
    };
    assert_eq!(received, 10, "the server had read hello and still");
    s.write_all(b"world").await.unwrap();
    r.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"world");
    // A stream the session never had is unknown.
    let (mut s, mut r) = e.conn.open_bi().await.unwrap();
    let resume = ResumableHeader::Resume {
        stream: 99,
        received: 0,
    };
    s.write_all(&frame::encode(&resume).unwrap()).await.unwrap();
    assert_eq!(
        read_frame::<ResumeReply>(&mut r).await,
        ResumeReply::Unknown
    );
}

/// A connection that takes a session over replaces the one it ran on: at the session
/// limit it is still let in (a liveness probe's, a direct upgrade's), while one more
/// session is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_moves_to_a_new_connection_even_at_the_session_limit() {
    let t = server_with_tokens(&[TOKEN], |_| vec!["--max-sessions".into(), "1".into()]);
    let a = raw(&t).await;
    let (_ctl, mut rx) = a.auth_v3(TOKEN, None).await;
    let AuthResponse::Resumable { ticket, .. } = read_frame::<AuthResponse>(&mut rx).await else {
        panic!("a new resumable session was asked for");
    };
    let b = raw(&t).await;
    let _b_auth = b.auth_v3(TOKEN, None).await;
    assert_eq!(
        b.closed_with(Duration::from_secs(5)).await,
        u64::from(CloseCode::ServerBusy.as_u32()),
        "a second session got past --max-sessions 1"
    );
    let _e = take_over(&t, &ticket, &a).await;
}
