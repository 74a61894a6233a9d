//! The binary's utilities and its handling of bad input: tokens, keys, configs, exit codes.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use crate::support::process::bin;

fn run(args: &[&str]) -> Output {
    bin().args(args).output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn generate_token_prints_valid_distinct_tokens() {
    let out = run(&["generate-token", "-c", "50"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let stdout = text(&out.stdout);
    let tokens: Vec<&str> = stdout.lines().collect();
    assert_eq!(tokens.len(), 50);
    let distinct: HashSet<_> = tokens.iter().collect();
    assert_eq!(distinct.len(), 50);
    for t in &tokens {
        t.parse::<porthole_proto::token::AuthToken>()
            .unwrap_or_else(|e| panic!("{t}: {e}"));
    }
    assert!(out.stderr.is_empty(), "tokens go to stdout only");
    assert_eq!(run(&["generate-token", "-c", "0"]).status.code(), Some(2));
}

#[test]
fn generate_token_to_private_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("tokens.txt");
    let out = run(&["generate-token", "-c", "3", "--output", p.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(std::fs::read_to_string(&p).unwrap().lines().count(), 3);
    assert!(out.stdout.is_empty());
}

#[test]
fn server_key_is_private_and_its_id_matches() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("server.key");
    let out = run(&["generate-server-key", "--output", key.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let stderr = text(&out.stderr);
    let printed = stderr
        .lines()
        .find_map(|l| l.strip_prefix("EndpointId: "))
        .expect("EndpointId on stderr")
        .to_string();
    assert_eq!(printed.len(), 64);
    let content = std::fs::read_to_string(&key).unwrap();
    assert!(content.contains(&format!("# endpoint-id: {printed}")));
    assert!(content.contains("# created: "));

    let shown = run(&["show-server-id", "--secret-file", key.to_str().unwrap()]);
    assert!(shown.status.success());
    assert_eq!(text(&shown.stdout).trim(), printed);

    // The id is iroh's own: derive it with iroh from the same bytes.
    let secret = porthole_proto::key::SecretKey::parse(&content).unwrap();
    let iroh_id = iroh::SecretKey::from_bytes(&secret.to_bytes())
        .public()
        .to_string();
    assert_eq!(iroh_id, printed);

    // No overwrite without --force.
    let again = run(&["generate-server-key", "--output", key.to_str().unwrap()]);
    assert_eq!(again.status.code(), Some(1));
    assert!(text(&again.stderr).contains("--force"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), content);
    let forced = run(&[
        "generate-server-key",
        "--output",
        key.to_str().unwrap(),
        "--force",
    ]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read_to_string(&key).unwrap(), content);
}

#[test]
fn server_key_to_stdout_and_env() {
    let out = run(&["generate-server-key", "--output", "-"]);
    assert!(out.status.success());
    let file = text(&out.stdout);
    let id = text(&out.stderr)
        .lines()
        .find_map(|l| l.strip_prefix("EndpointId: ").map(String::from))
        .unwrap();
    let bare = file
        .lines()
        .find(|l| !l.starts_with('#'))
        .unwrap()
        .to_string();
    for value in [file.as_str(), bare.as_str()] {
        let shown = bin()
            .args(["show-server-id"])
            .env("PORTHOLE_SECRET", value)
            .output()
            .unwrap();
        assert!(shown.status.success(), "{}", text(&shown.stderr));
        assert_eq!(text(&shown.stdout).trim(), id);
    }
}

#[test]
fn readable_key_file_gets_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("k");
    assert!(
        run(&["generate-server-key", "--output", key.to_str().unwrap()])
            .status
            .success()
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = run(&["show-server-id", "--secret-file", key.to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_config_names_file_key_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("server.toml");
    std::fs::write(
        &cfg,
        "role = \"server\"\n[allowed_sources]\ntcp = [\"10.0.0.1/8\"]\n",
    )
    .unwrap();
    let out = run(&["server", "-c", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        e.contains("server.toml")
            && e.contains("allowed_sources.tcp[0]")
            && e.contains("10.0.0.0/8"),
        "{e}"
    );

    std::fs::write(&cfg, "role = \"client\"\n").unwrap();
    let out = run(&["server", "-c", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("porthole client"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bad_command_lines_are_usage_errors() {
    let out = run(&[
        "client",
        "--server-node-id",
        "abc",
        "--source",
        "tcp://127.0.0.1:22",
        "--target",
        "127.0.0.1:0",
        "--auth-token-file",
        "/nonexistent",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let out = run(&["client", "--source", "tcp://127.0.0.1:22"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("pairs"), "{}", text(&out.stderr));
    let out = run(&["server", "--allowed-tcp", "127.0.0.0/8"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("generate-token"),
        "{}",
        text(&out.stderr)
    );
    let out = run(&["bogus"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn a_bad_direct_path_rule_names_the_flag_and_the_forms() {
    let out = run(&[
        "client",
        "--exclude-addr",
        "192.168.1",
        "--server-node-id",
        "x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        e.contains("--exclude-addr") && e.contains("an interface name (wg0)"),
        "{e}"
    );
    let out = run(&["server", "--pin-addr", "10.0.0.0/40"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("--pin-addr"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn quic_timers_out_of_bounds_name_the_flags_and_the_range() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, format!("{}\n", crate::support::TOKEN)).unwrap();
    let tokens = tokens.to_str().unwrap();
    let out = run(&[
        "server",
        "--auth-tokens-file",
        tokens,
        "--keep-alive",
        "40s",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(
        e.contains("use 1s to 25s") && e.contains("--keep-alive"),
        "{e}"
    );
    let out = run(&[
        "server",
        "--auth-tokens-file",
        tokens,
        "--idle-timeout",
        "20s",
        "--keep-alive",
        "10s",
    ]);
    assert_eq!(out.status.code(), Some(2));
    let e = text(&out.stderr);
    assert!(e.contains("a third of the idle timeout"), "{e}");
}

#[test]
fn help_teaches() {
    for sub in [
        "server",
        "client",
        "relay",
        "generate-token",
        "generate-server-key",
        "show-server-id",
        "generate-relay-cert",
    ] {
        let out = run(&[sub, "--help"]);
        assert!(out.status.success(), "{sub}");
        assert!(!out.stdout.is_empty());
    }
    let out = run(&["--help"]);
    assert!(text(&out.stdout).contains("Quick start"));
    let out = run(&["client", "--help"]);
    assert!(text(&out.stdout).contains("Exit codes"));
}

/// Completions and man pages come from the command line's own definition: a flag added
/// to the CLI shows up in both without anyone editing them.
#[test]
fn completions_and_man_pages_follow_the_command_line() {
    for (shell, marker) in [
        ("bash", "complete "),
        ("zsh", "#compdef porthole"),
        ("fish", "complete -c porthole"),
    ] {
        let out = run(&["completions", shell]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(
            script.contains("exclude-addr"),
            "{shell}: no --exclude-addr"
        );
    }
    let out = run(&["man"]);
    assert!(out.status.success());
    let page = text(&out.stdout);
    assert!(page.contains(".TH porthole 1"), "{page}");
    let out = run(&["man", "client"]);
    let page = text(&out.stdout);
    assert!(page.contains(".TH porthole-client 1"), "{page}");
    assert!(page.contains("pin\\-addr"), "{page}");
    let out = run(&["man", "nosuch"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("one of server, client"),
        "{}",
        text(&out.stderr)
    );
}
