//! The access tests' lab: a server with an access file, two named clients (alice and
//! bob), two echo services their rules tell apart, and a checked echo pump.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::LONG;
use crate::support::TOKEN;
use crate::support::process::{Offline, Proc, bin, endpoint_id, free_tcp_port, free_udp_port};

pub(super) struct Lab {
    pub(super) dir: tempfile::TempDir,
    /// Two echo services the clients' rules tell apart by port.
    pub(super) echo_a: u16,
    pub(super) echo_b: u16,
    pub(super) alice: String,
    pub(super) bob: String,
}

impl Lab {
    pub(super) fn new() -> Lab {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tokens.txt"), format!("{TOKEN}\n")).unwrap();
        let out = bin().args(["generate-token", "-c", "2"]).output().unwrap();
        let tokens = String::from_utf8(out.stdout).unwrap();
        let mut t = tokens.lines().map(str::to_string);
        let (alice, bob) = (t.next().unwrap(), t.next().unwrap());
        for (name, token) in [("alice", &alice), ("bob", &bob)] {
            std::fs::write(
                dir.path().join(format!("{name}.token")),
                format!("{token}\n"),
            )
            .unwrap();
        }
        Lab {
            dir,
            echo_a: crate::support::echo::tcp_echo_blocking().port(),
            echo_b: crate::support::echo::tcp_echo_blocking().port(),
            alice,
            bob,
        }
    }

    pub(super) fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    pub(super) fn echo(&self, which: char) -> String {
        let port = if which == 'a' {
            self.echo_a
        } else {
            self.echo_b
        };
        format!("tcp://127.0.0.1:{port}")
    }

    /// The access file: alice and bob with `alice_tcp` / `bob_tcp`, and `extra` lines.
    pub(super) fn write_access(&self, alice_tcp: &[u16], bob_tcp: &[u16], extra: &str) {
        let rules = |ports: &[u16]| {
            ports
                .iter()
                .map(|p| format!("\"127.0.0.1/32:{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut text = String::new();
        if !alice_tcp.is_empty() {
            text += &format!(
                "[[client]]\nname = \"alice\"\ntokens = [\"{}\"]\nallowed_tcp = [{}]\n{extra}\n",
                self.alice,
                rules(alice_tcp)
            );
        }
        text += &format!(
            "[[client]]\nname = \"bob\"\ntokens_file = \"bob.token\"\nallowed_tcp = [{}]\n",
            rules(bob_tcp)
        );
        self.write_file("access.toml", &text);
    }

    /// Replaces a file in one step (as editors and config managers do).
    pub(super) fn write_file(&self, name: &str, text: &str) {
        let tmp = self.path(&format!("{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, self.path(name)).unwrap();
    }

    pub(super) fn server(&self) -> (Proc, String, u16) {
        let port = free_udp_port();
        let p = Offline::server(&self.path("tokens.txt"), port)
            .args(&["--access-file", self.path("access.toml").to_str().unwrap()])
            .args(&[
                "--control-socket",
                self.path("server.sock").to_str().unwrap(),
            ])
            .spawn("server");
        let id = endpoint_id(&p);
        p.wait_line("serving", LONG);
        (p, id, port)
    }

    /// Alice on echo a and bob on echo b, both tunnels up: each with its local port.
    pub(super) fn alice_and_bob(&self, id: &str, port: u16) -> (Proc, u16, Proc, u16) {
        let (la, lb) = (free_tcp_port(), free_tcp_port());
        let alice = self
            .client("alice", id, port, &[(self.echo('a'), la)])
            .spawn("alice");
        let bob = self
            .client("bob", id, port, &[(self.echo('b'), lb)])
            .spawn("bob");
        alice.wait_line("tunnel up", LONG);
        bob.wait_line("tunnel up", LONG);
        (alice, la, bob, lb)
    }

    pub(super) fn client(
        &self,
        who: &str,
        id: &str,
        port: u16,
        forwards: &[(String, u16)],
    ) -> Offline {
        let mut c = Offline::client(id, port, &self.path(&format!("{who}.token")))
            .args(&["--control-socket", "none"]);
        for (source, listen) in forwards {
            c = c.forward(source, *listen);
        }
        c
    }
}

/// A TCP connection that echoes 16 KiB chunks and checks every byte, until stopped
/// or it fails; `moved` counts verified bytes.
pub(super) struct Pump {
    stop: Arc<AtomicBool>,
    moved: Arc<AtomicU64>,
    failed_at: Arc<std::sync::Mutex<Option<Instant>>>,
    thread: Option<JoinHandle<()>>,
}

impl Pump {
    pub(super) fn start(port: u16) -> Pump {
        Self::over(TcpStream::connect(("127.0.0.1", port)).unwrap())
    }

    /// Pumps over a connection already made (e.g. through a SOCKS proxy).
    pub(super) fn over(mut conn: TcpStream) -> Pump {
        let stop = Arc::new(AtomicBool::new(false));
        let moved = Arc::new(AtomicU64::new(0));
        let failed_at = Arc::new(std::sync::Mutex::new(None));
        let (s, m, f) = (stop.clone(), moved.clone(), failed_at.clone());
        let thread = std::thread::spawn(move || {
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut n: u8 = 0;
            while !s.load(Ordering::Relaxed) {
                n = n.wrapping_add(1);
                let chunk = vec![n; 16 * 1024];
                let mut back = vec![0u8; chunk.len()];
                let ok = conn.write_all(&chunk).is_ok() && conn.read_exact(&mut back).is_ok();
                if !ok || back != chunk {
                    *f.lock().unwrap() = Some(Instant::now());
                    return;
                }
                m.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let pump = Pump {
            stop,
            moved,
            failed_at,
            thread: Some(thread),
        };
        pump.wait_moving();
        pump
    }

    pub(super) fn wait_moving(&self) {
        let start = self.moved.load(Ordering::Relaxed);
        let t = Instant::now();
        while self.moved.load(Ordering::Relaxed) < start + 64 * 1024 {
            assert!(self.failed().is_none(), "the transfer failed");
            assert!(t.elapsed() < LONG, "the transfer does not move");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(super) fn failed(&self) -> Option<Instant> {
        *self.failed_at.lock().unwrap()
    }

    /// Stops; panics if it had failed.
    pub(super) fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        assert!(self.failed().is_none(), "the transfer failed");
        self.moved.load(Ordering::Relaxed)
    }
}

pub(super) fn status(lab: &Lab) -> Value {
    let out = bin()
        .args(["status", "--json", "--socket"])
        .arg(lab.path("server.sock"))
        .output()
        .unwrap();
    serde_json::from_slice(&out.stdout).unwrap()
}
