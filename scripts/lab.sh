#!/usr/bin/env bash
# Builds braid and runs `braid lab` (default scenario: dual-isp; also active-active, pair) as root. Extra
# arguments go to `braid lab`,
# e.g. `scripts/lab.sh --json`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

need_pkgs iproute2 iputils-ping iperf3 procps
need_rust
cargo build --release --quiet
exec $SUDO ./target/release/braid lab "$@"
