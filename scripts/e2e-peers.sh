#!/usr/bin/env bash
# Installs what benches/e2e.py compares braid against (not used by CI): iperf3, wireguard-tools (`wg`) and
# strongSwan (charon-systemd, swanctl, kernel-libipsec; gcm/openssl from the standard plugins) from Debian, and boringtun-cli from crates.io into
# $CARGO_TARGET_DIR/peers (default target/peers), where benches/e2e.py looks for it.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
need_rust
need_pkgs iperf3 wireguard-tools iproute2 iputils-ping util-linux \
    charon-systemd strongswan-swanctl libcharon-extra-plugins libstrongswan-extra-plugins \
    libstrongswan-standard-plugins
root="${CARGO_TARGET_DIR:-target}/peers"
if [ ! -x "$root/bin/boringtun-cli" ]; then
    echo "==> cargo install boringtun-cli --root $root"
    CARGO_TARGET_DIR="$root/build" cargo install --locked boringtun-cli --root "$root"
fi
echo "peers ready: $(command -v wg) $(command -v charon-systemd) $root/bin/boringtun-cli"
