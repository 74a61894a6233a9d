#!/usr/bin/env bash
# The whole test suite, as CI runs it: formatting, lints, unit and integration tests.
# Installs what the tests need (Debian packages) when run as root and they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

need_pkgs=()
command -v ip >/dev/null 2>&1 || need_pkgs+=(iproute2)
command -v iptables >/dev/null 2>&1 || need_pkgs+=(iptables)
# WireGuard over a porthole forward (tests/it/natlab/wireguard.rs).
command -v wireguard-go >/dev/null 2>&1 || need_pkgs+=(wireguard-go)
command -v wg >/dev/null 2>&1 || need_pkgs+=(wireguard-tools)
command -v ping >/dev/null 2>&1 || need_pkgs+=(iputils-ping)
# The status page rendered by a real browser (tests/it/observe.rs).
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
# PROXY protocol headers read by a real nginx (tests/it/proxy_protocol.rs).
command -v nginx >/dev/null 2>&1 || need_pkgs+=(nginx)
# Published services: curl verifies the TLS backends behind a shared port (tests/it/publish.rs).
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: installing ${need_pkgs[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null || \
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_pkgs[@]}" >/dev/null; }
  else
    echo "test.sh: missing ${need_pkgs[*]} (the NAT lab tests need them; install as root)" >&2
  fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings
# Build every binary first: the NAT lab runs porthole-labtool inside namespaces.
cargo build --workspace --locked
if [ $# -gt 0 ]; then
  cargo test --workspace --locked "$@"
else
  # The NAT lab measures time (a new connection's first byte next to bulk transfers,
  # outages to the second): it runs last and alone, so that other tests competing for
  # the CPU cannot fail it (a probe once took 3.4 s of its 3 s next to the NodePass
  # matrix; alone, at most 1.8 s in six runs).
  cargo test --workspace --locked -- --skip natlab::
  cargo test --locked -p porthole --test it natlab:: -- --test-threads=1
fi
