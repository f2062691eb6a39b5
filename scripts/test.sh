#!/usr/bin/env bash
# braid's whole test suite: formatting, lints, unit tests, and the network-namespace integration tests with
# real TUN devices and two real gateways. Installs what it needs. Namespace tests need root: as a normal user
# the test binaries are run through sudo. Under CI=true a namespace test that cannot run FAILS. strongSwan
# (charon-systemd + kernel-libipsec, swanctl; openssl/gcm from the standard plugins, chapoly/curve25519 from the
# extra ones) is the IKEv2 interop peer of tests/ike_interop.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh

need_pkgs iproute2 iputils-ping iperf3 nftables tcpdump procps ca-certificates bird2 frr gobgpd \
    strongswan-swanctl charon-systemd libcharon-extra-plugins libstrongswan-extra-plugins \
    libstrongswan-standard-plugins util-linux
need_rust

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --workspace --all-targets --quiet -- -D warnings
if [ -n "$SUDO" ]; then
    # Build as this user, run each test binary as root.
    export CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="sudo -E"
fi
echo "==> cargo test (unit, CLI and network-namespace tests)"
cargo test --workspace --all-targets
echo "==> kernel routes against the real kernel, in a throwaway namespace"
# These tests change routing tables, so they refuse to run outside a named namespace of their own. One at a
# time: an IPv6 route dump racing another test's route changes can come back short without NLM_F_DUMP_INTR.
if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
    ns="braid-kr-$$"
    $SUDO ip netns add "$ns"
    trap '$SUDO ip netns del "$ns" 2>/dev/null || true' EXIT
    # Built as this user; only the test binary runs (as root) inside the namespace.
    CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER="${SUDO:+$SUDO }ip netns exec $ns" \
        cargo test -p braid-dataplane --test kernel --quiet -- --ignored --test-threads=1
    $SUDO ip netns del "$ns"
    trap - EXIT
elif [ "${CI:-}" = true ]; then
    echo "CI=true and the kernel route tests need root" >&2
    exit 1
else
    echo "!!!!! SKIPPING the kernel route tests: they need root. Under CI=true this FAILS. !!!!!" >&2
fi
echo "==> benches compile"
cargo bench --workspace --no-run --quiet
