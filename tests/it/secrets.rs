//! Secrets never reach the logs, at any level: tokens (right and wrong), the server key,
//! NodePass tunnel keys. Tokens on the command line draw a warning.

use std::io::{Read, Write};
use std::time::Duration;

use crate::support::process::{Offline, Proc, bin, endpoint_id, free_tcp_port, free_udp_port};
use crate::support::{OTHER_TOKEN, TOKEN};

fn forbidden_in(output: &str, secrets: &[&str], who: &str) {
    for s in secrets {
        assert!(
            !output.contains(s),
            "{who} logged a secret ({}...)",
            &s[..6]
        );
    }
}

#[test]
fn no_secret_in_trace_logs() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n).to_str().unwrap().to_string();
    std::fs::write(p("tokens.txt"), format!("{TOKEN}\n")).unwrap();
    std::fs::write(p("wrong.txt"), format!("{OTHER_TOKEN}\n")).unwrap();
    assert!(
        bin()
            .args(["generate-server-key", "--output", &p("server.key")])
            .output()
            .unwrap()
            .status
            .success()
    );
    let key_text = std::fs::read_to_string(p("server.key")).unwrap();
    let key_b64 = key_text
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap()
        .to_string();
    let key = porthole_proto::key::SecretKey::parse(&key_text).unwrap();
    let key_hex: String = key.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    // A client key too, listed in an access file.
    assert!(
        bin()
            .args(["generate-client-key", "--output", &p("client.key")])
            .output()
            .unwrap()
            .status
            .success()
    );
    let ckey =
        porthole_proto::key::SecretKey::parse(&std::fs::read_to_string(p("client.key")).unwrap())
            .unwrap();
    let ckey_b64 = std::fs::read_to_string(p("client.key"))
        .unwrap()
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap()
        .to_string();
    let ckey_hex: String = ckey.to_bytes().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        p("access.toml"),
        format!(
            "[[client]]\nname = \"keyed\"\nkeys = [\"{}\"]\nallowed_tcp = [\"127.0.0.0/8\"]\n",
            ckey.endpoint_id()
        ),
    )
    .unwrap();
    let secrets = [
        TOKEN,
        OTHER_TOKEN,
        key_b64.as_str(),
        key_hex.as_str(),
        ckey_b64.as_str(),
        ckey_hex.as_str(),
    ];

    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tport = target.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in target.incoming() {
            let Ok(mut s) = s else { continue };
            let mut b = [0u8; 16];
            if let Ok(n) = s.read(&mut b) {
                let _ = s.write_all(&b[..n]);
            }
        }
    });
    let port = free_udp_port();
    let server = Offline::server(std::path::Path::new(&p("tokens.txt")), port)
        .env("RUST_LOG", "trace")
        .args(&["-vv", "--secret-file", &p("server.key")])
        .args(&["--access-file", &p("access.toml")])
        .spawn("server");
    let id = endpoint_id(&server);

    let client = |token_file: &str, listen: u16| {
        Offline::client(&id, port, std::path::Path::new(token_file))
            .env("RUST_LOG", "trace")
            .args(&["-vv"])
            .forward(&format!("tcp://127.0.0.1:{tport}"), listen)
            .command()
    };
    let listen = free_tcp_port();
    let good = Proc::spawn("client", client(&p("tokens.txt"), listen));
    good.wait_line("tunnel up", Duration::from_secs(20));
    let mut s = std::net::TcpStream::connect(("127.0.0.1", listen)).unwrap();
    s.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).unwrap();
    let mut keyed = client(&p("wrong.txt"), free_tcp_port());
    keyed.args(["--client-key-file", &p("client.key")]);
    let keyed = Proc::spawn("keyed-client", keyed);
    keyed.wait_line("tunnel up", Duration::from_secs(20));
    let mut bad = Proc::spawn("bad-client", client(&p("wrong.txt"), free_tcp_port()));
    assert_eq!(bad.wait_exit(Duration::from_secs(30)), 3);
    server.wait_line("auth failed", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        server.output().lines().count() > 50,
        "trace logging is not on"
    );
    forbidden_in(&server.output(), &secrets, "server");
    forbidden_in(&good.output(), &secrets, "client");
    forbidden_in(&keyed.output(), &secrets, "client with a key");
    forbidden_in(&bad.output(), &secrets, "rejected client");
}

#[test]
fn nodepass_key_stays_out_of_trace_logs() {
    let tunnel = free_tcp_port();
    let user = free_tcp_port();
    let key = "n0dEpassKey";
    let mut server = bin();
    server.env("RUST_LOG", "trace").args([
        "nodepass",
        &format!("server://{key}@127.0.0.1:{tunnel}/127.0.0.1:{user}?mode=1&tls=1"),
    ]);
    let server = Proc::spawn("np-server", server);
    server.wait_line("NodePass server on", Duration::from_secs(10));
    let mut client = bin();
    client
        .env("RUST_LOG", "trace")
        .env(
            "PORTHOLE_NODEPASS_URL",
            format!("client://{key}@127.0.0.1:{tunnel}/127.0.0.1:9?min=2&mode=2"),
        )
        .arg("nodepass");
    let client = Proc::spawn("np-client", client);
    client.wait_line("control channel up", Duration::from_secs(15));
    server.wait_line("control channel up", Duration::from_secs(5));
    std::thread::sleep(Duration::from_millis(500));
    let token = porthole_nodepass::wire::key::bearer(key);
    forbidden_in(&server.output(), &[key, &token], "nodepass server");
    forbidden_in(&client.output(), &[key, &token], "nodepass client");
}

#[test]
fn token_on_the_command_line_draws_a_warning() {
    let id = porthole_proto::key::SecretKey::generate()
        .unwrap()
        .endpoint_id()
        .to_string();
    let out = bin()
        .args(["client", "--server-node-id", &id, "--auth-token", TOKEN])
        .args(["--source", "tcp://127.0.0.1:22", "--target", "127.0.0.1:0"])
        // Stops at the relay URL, after the token was read.
        .args(["--relay-url", "ftp://stop-here"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("visible to other local users"), "{stderr}");
    assert!(
        stderr.contains("--auth-token-file") || stderr.contains("PORTHOLE_AUTH_TOKEN"),
        "{stderr}"
    );
    assert!(!stderr.contains(TOKEN));
    let out = bin()
        .args([
            "server",
            "--auth-tokens",
            TOKEN,
            "--allowed-tcp",
            "127.0.0.0/8",
            "--relay-url",
            "ftp://stop-here",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("visible to other local users"), "{stderr}");
}
