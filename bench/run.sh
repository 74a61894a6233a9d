#!/usr/bin/env bash
# porthole benchmarks: every figure is measured in the same run as a direct-loopback
# baseline (and stunnel / rathole as reference tunnels) and reported as a ratio to it.
#
#   ./bench/run.sh            # full run, rewrites docs/BENCHMARKS.md (results) and docs/img/
#   ./bench/run.sh --quick    # shorter tests, prints the table only
#   ./bench/run.sh --cases iroh-direct,stunnel
#   ./bench/run.sh --wan      # across the NAT lab over a shaped path (root): bench/wan.py
#   ./bench/run.sh --wan --quick --rtts 50 --losses 0
#
# Needs iperf3, stunnel4 and gnuplot (and for --wan: iproute2, iptables, ethtool), installed
# from Debian when run as root, python3, and cargo. rathole is built from crates.io into
# bench/out/ when possible, else skipped.
set -euo pipefail
cd "$(dirname "$0")/.."

wan=0
if [ "${1:-}" = "--wan" ]; then
  wan=1
  shift
fi

need=()
command -v iperf3 >/dev/null || need+=(iperf3)
command -v stunnel4 >/dev/null || need+=(stunnel4)
command -v gnuplot >/dev/null || need+=(gnuplot-nox)
if [ $wan = 1 ]; then
  command -v ip >/dev/null || need+=(iproute2)
  command -v iptables >/dev/null || need+=(iptables)
  command -v ethtool >/dev/null || need+=(ethtool)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 || \
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null; }
  else
    echo "bench: please install ${need[*]}" >&2
    exit 1
  fi
fi

echo "bench: building porthole (release)" >&2
cargo build --release --locked -q -p porthole --bin porthole
cargo build --release --locked -q -p porthole-labtool

if [ $wan = 1 ]; then
  exec python3 bench/wan.py "$@"
fi

mkdir -p bench/out
if [ ! -x bench/out/bin/rathole ]; then
  echo "bench: building rathole from crates.io (reference peer; skipped if it fails)" >&2
  cargo install rathole --root bench/out -q 2>bench/out/rathole-build.log || \
    echo "bench: rathole did not build (see bench/out/rathole-build.log); its rows are skipped" >&2
fi

exec python3 bench/bench.py "$@"
