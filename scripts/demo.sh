#!/usr/bin/env bash
# Builds porthole and runs a whole tunnel on this machine, offline:
#   a local relay, a server, a client, and a request through the tunnel.
# Everything listens on 127.0.0.1 and stops when the script ends.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v cargo >/dev/null 2>&1 || { echo "demo: cargo not found: install Rust from https://rustup.rs" >&2; exit 1; }
echo "==> building porthole (first build takes a few minutes)"
cargo build --locked --quiet
P="$PWD/target/debug/porthole"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Free ports, chosen by the kernel.
free_port() { python3 - <<'PY' 2>/dev/null || echo $((20000 + RANDOM % 20000))
import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])
PY
}
relay_port=$(free_port)
local_port=$(free_port)

echo "==> creating an auth token and a server key in $work"
"$P" generate-token --output "$work/token.txt" 2>/dev/null
"$P" generate-server-key --output "$work/server.key" 2>/dev/null

echo "==> starting a relay on 127.0.0.1:$relay_port"
"$P" relay --http-bind "127.0.0.1:$relay_port" >"$work/relay.log" 2>&1 &
pids+=($!)

echo "==> starting the server (allows tcp to 127.0.0.1)"
"$P" server --secret-file "$work/server.key" --auth-tokens-file "$work/token.txt" \
  --relay-url "http://127.0.0.1:$relay_port" --allowed-tcp 127.0.0.1/32 \
  --dns-server none --no-portmap >"$work/server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '^Ticket:' "$work/server.log" && break; sleep 0.2; done
ticket=$(sed -n 's/^Ticket: //p' "$work/server.log")
[ -n "$ticket" ] || { echo "server did not start:"; cat "$work/server.log"; exit 1; }
echo "    ticket: ${ticket:0:40}..."

# The service behind the tunnel: the relay's own web page, on the server's side.
echo "==> starting the client: 127.0.0.1:$local_port -> tcp://127.0.0.1:$relay_port"
"$P" client --ticket "$ticket" --auth-token-file "$work/token.txt" \
  --source "tcp://127.0.0.1:$relay_port" --listen "127.0.0.1:$local_port" \
  --dns-server none --no-portmap >"$work/client.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q 'tunnel up' "$work/client.log" && break; sleep 0.2; done
grep -q 'tunnel up' "$work/client.log" || { echo "client did not connect:"; cat "$work/client.log"; exit 1; }

echo "==> an HTTP request through the tunnel"
exec 3<>"/dev/tcp/127.0.0.1/$local_port"
printf 'GET /healthz HTTP/1.0\r\nHost: demo\r\n\r\n' >&3
response=$(cat <&3)
exec 3<&-
echo "$response" | head -n 1
echo "$response" | head -n 1 | grep -q ' 200 ' || { echo "demo FAILED"; cat "$work/client.log"; exit 1; }

echo "==> client log:"
sed 's/^/    /' "$work/client.log"
echo "demo OK: a request crossed the tunnel. See README.md for real setups."
