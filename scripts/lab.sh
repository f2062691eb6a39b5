#!/usr/bin/env bash
# Builds braid and runs `braid lab` as root: the default scenario is dual-isp (S2); also active-active (S1)
# and pair. Extra arguments go to `braid lab`, e.g. `scripts/lab.sh active-active --json`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

need_pkgs iproute2 iputils-ping iperf3 procps bird2 nftables
need_rust
cargo build --release --quiet
exec $SUDO ./target/release/braid lab "$@"
