#!/usr/bin/env bash
# What end-to-end throughput braid's design allows on this machine whatever the AEAD costs: builds braid from
# HEAD with benches/null-aead.patch (the ESP seal and open leave the payload as it is: NO ENCRYPTION, NO
# AUTHENTICATION; a measuring instrument, never to be deployed) into target/ceiling/, then runs benches/e2e.py
# with it as the setup `braid-no-aead` beside the others, in one run (root; arguments go to e2e.py):
#
#   sudo benches/ceiling.sh [--only plain,braid,boringtun] [--secs 8] [--udp-secs 2] [--boringtun BIN] ...
#
# If braid-no-aead cannot reach a target ratio, no speed-up of braid's AEAD can: the rest of its cost is the
# kernel's (TUN and UDP copies, the inner TCP) and braid's path.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-$repo/target}/ceiling
tree=$(mktemp -d /tmp/braid-ceiling.XXXXXX)
cleanup() {
    git -C "$repo" worktree remove --force "$tree" 2>/dev/null || true
    rm -rf "$tree"
}
trap cleanup EXIT
git -C "$repo" worktree add -q --detach "$tree" HEAD
git -C "$tree" apply -3 "$repo/benches/null-aead.patch" || {
    echo "benches/null-aead.patch no longer applies to HEAD's crypto/src/esp.rs: update it" >&2
    exit 1
}
echo "building braid without its AEAD (benches/null-aead.patch) into $target ..."
CARGO_TARGET_DIR=$target cargo build --release --bin braid --manifest-path "$tree/Cargo.toml"
mkdir -p "$target/bin"
cp "$target/release/braid" "$target/bin/braid-no-aead"
python3 "$repo/benches/e2e.py" --ceiling "$target/bin/braid-no-aead" "$@"
