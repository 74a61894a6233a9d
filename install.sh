#!/usr/bin/env bash
# Install porthole from this source tree.
#
#   ./install.sh                     build (cargo --locked) and install to ~/.local/bin
#   PREFIX=/usr/local ./install.sh   install to /usr/local/bin
#   ./install.sh --systemd           also write systemd units for server and client
#                                    (reading /etc/porthole/server.toml and client.toml)
#   ./install.sh --uninstall         remove what was installed (add --systemd for the units)
#
# Running it again upgrades in place. Environment: PREFIX (default ~/.local),
# SYSTEMD_DIR (default /etc/systemd/system), CONFIG_DIR (default /etc/porthole),
# INSTALL_PROFILE (cargo profile, default release).
set -euo pipefail
cd "$(dirname "$0")"

PREFIX=${PREFIX:-$HOME/.local}
SYSTEMD_DIR=${SYSTEMD_DIR:-/etc/systemd/system}
CONFIG_DIR=${CONFIG_DIR:-/etc/porthole}
INSTALL_PROFILE=${INSTALL_PROFILE:-release}
systemd=0
uninstall=0

usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }

for arg in "$@"; do
  case "$arg" in
    --systemd) systemd=1 ;;
    --uninstall) uninstall=1 ;;
    --prefix=*) PREFIX=${arg#--prefix=} ;;
    -h|--help) usage; exit 0 ;;
    *) echo "install.sh: unknown option $arg (see --help)" >&2; exit 2 ;;
  esac
done

bin_dir="$PREFIX/bin"
units=(porthole-server.service porthole-client.service)

if [ "$uninstall" = 1 ]; then
  rm -f "$bin_dir/porthole"
  echo "removed $bin_dir/porthole"
  if [ "$systemd" = 1 ]; then
    for u in "${units[@]}"; do
      rm -f "$SYSTEMD_DIR/$u" && echo "removed $SYSTEMD_DIR/$u"
    done
    command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] && systemctl daemon-reload || true
    echo "(kept $CONFIG_DIR: your configs and keys)"
  fi
  exit 0
fi

if ! command -v cargo >/dev/null 2>&1; then
  cat >&2 <<'MSG'
install.sh: cargo (the Rust toolchain) is not installed or not on PATH.
Install it from https://rustup.rs (then open a new shell), or add ~/.cargo/bin to PATH.
MSG
  exit 1
fi

echo "building porthole ($INSTALL_PROFILE profile, --locked)..."
cargo build --locked --profile "$INSTALL_PROFILE" --bin porthole
case "$INSTALL_PROFILE" in
  dev) built=target/debug/porthole ;;
  *) built="target/$INSTALL_PROFILE/porthole" ;;
esac

mkdir -p "$bin_dir"
install -m 0755 "$built" "$bin_dir/porthole.new"
mv -f "$bin_dir/porthole.new" "$bin_dir/porthole"
echo "installed $bin_dir/porthole ($("$bin_dir/porthole" --version))"
case ":$PATH:" in
  *":$bin_dir:"*) ;;
  *) echo "note: $bin_dir is not on PATH; add it: export PATH=\"$bin_dir:\$PATH\"" ;;
esac

if [ "$systemd" = 1 ]; then
  mkdir -p "$SYSTEMD_DIR" "$CONFIG_DIR"
  chmod 0750 "$CONFIG_DIR"
  for role in server client; do
    if [ ! -e "$CONFIG_DIR/$role.toml" ]; then
      install -m 0640 "$role.toml.example" "$CONFIG_DIR/$role.toml.example"
    fi
    cat >"$SYSTEMD_DIR/porthole-$role.service" <<UNIT
[Unit]
Description=porthole $role (port forwarding over QUIC)
Documentation=https://example.invalid/porthole
Wants=network-online.target
After=network-online.target
ConditionPathExists=$CONFIG_DIR/$role.toml

[Service]
ExecStart=$bin_dir/porthole $role -c $CONFIG_DIR/$role.toml
Restart=on-failure
RestartSec=5
# Exit codes 2-5 are configuration problems (bad config, token or source refused):
# restarting cannot fix them.
RestartPreventExitStatus=2 3 4 5
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=read-only
PrivateTmp=yes
ProtectKernelTunables=yes
ProtectControlGroups=yes
RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX AF_NETLINK
ReadOnlyPaths=$CONFIG_DIR

[Install]
WantedBy=multi-user.target
UNIT
    echo "wrote $SYSTEMD_DIR/porthole-$role.service (reads $CONFIG_DIR/$role.toml)"
  done
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
  fi
  cat <<NEXT
next: copy $CONFIG_DIR/<role>.toml.example to $CONFIG_DIR/<role>.toml, edit it, then
  systemctl enable --now porthole-server    (or porthole-client)
NEXT
fi
