//! install.sh: installs, is idempotent, writes systemd units, uninstalls, and says
//! clearly when cargo is missing. Uses the dev profile (already built by the tests).

use std::process::Command;

fn install(
    args: &[&str],
    prefix: &std::path::Path,
    units: &std::path::Path,
) -> std::process::Output {
    // A clean environment: variables cargo sets for tests would change build
    // fingerprints and force a full rebuild inside the test.
    Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/install.sh"))
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::var_os("HOME").unwrap_or_default())
        .env("PREFIX", prefix)
        .env("SYSTEMD_DIR", units)
        .env("CONFIG_DIR", units.join("etc"))
        .env("INSTALL_PROFILE", "dev")
        .output()
        .unwrap()
}

#[test]
fn install_reinstall_systemd_uninstall() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("prefix");
    let units = dir.path().join("units");
    for _ in 0..2 {
        let out = install(&[], &prefix, &units);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v = Command::new(prefix.join("bin/porthole"))
            .arg("--version")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&v.stdout).starts_with("porthole "));
    }
    // Man pages and completions, from the binary's own command line.
    let man = std::fs::read_to_string(prefix.join("share/man/man1/porthole.1")).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH porthole"),
        "{man}"
    );
    let client = std::fs::read_to_string(prefix.join("share/man/man1/porthole-client.1")).unwrap();
    assert!(
        client.contains("listen") && client.contains("auth\\-token\\-file"),
        "{client}"
    );
    let bash =
        std::fs::read_to_string(prefix.join("share/bash-completion/completions/porthole")).unwrap();
    assert!(
        bash.contains("--exclude-addr") && bash.contains("complete "),
        "{bash}"
    );
    assert!(prefix.join("share/zsh/site-functions/_porthole").exists());
    assert!(
        prefix
            .join("share/fish/vendor_completions.d/porthole.fish")
            .exists()
    );
    let out = install(&["--systemd"], &prefix, &units);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let unit = std::fs::read_to_string(units.join("porthole-server.service")).unwrap();
    assert!(
        unit.contains("porthole server -c") && unit.contains("etc/server.toml"),
        "{unit}"
    );
    assert!(
        unit.contains("ExecReload=/bin/kill -HUP $MAINPID"),
        "systemctl reload re-reads the access rules: {unit}"
    );
    assert!(
        units.join("etc/access.toml.example").exists(),
        "the access file example is installed"
    );
    assert!(
        unit.contains("RuntimeDirectory=porthole"),
        "`porthole status` needs a writable /run/porthole under ProtectSystem=strict: {unit}"
    );
    assert!(units.join("porthole-client.service").exists());
    assert!(units.join("etc/server.toml.example").exists());

    let out = install(&["--uninstall", "--systemd"], &prefix, &units);
    assert!(out.status.success());
    assert!(!prefix.join("bin/porthole").exists());
    assert!(!prefix.join("share/man/man1/porthole-client.1").exists());
    assert!(
        !prefix
            .join("share/bash-completion/completions/porthole")
            .exists()
    );
    assert!(!units.join("porthole-server.service").exists());
}

#[test]
fn missing_cargo_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    // A PATH with only what install.sh runs up to its missing-cargo message: wherever cargo
    // lives on this machine (even /usr/bin), it is not on this one.
    let path = dir.path().join("bin");
    std::fs::create_dir(&path).unwrap();
    for tool in ["dirname", "cat"] {
        let found = ["/usr/bin", "/bin"]
            .into_iter()
            .map(|d| std::path::Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} (coreutils) not found"));
        std::os::unix::fs::symlink(found, path.join(tool)).unwrap();
    }
    let out = Command::new("/bin/bash")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/install.sh"))
        .env("PATH", &path)
        .env("HOME", dir.path())
        .env("PREFIX", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("rustup.rs"));
}
