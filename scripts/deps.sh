#!/usr/bin/env bash
# Installs what braid's lab and tests need on Debian/Ubuntu: Debian packages via apt-get (only those missing),
# and checks the Rust toolchain. Sourced by lab.sh and test.sh.
set -euo pipefail

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

need_pkgs() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "==> installing Debian packages: ${missing[*]}"
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

need_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        echo "==> cargo not found; installing Debian's Rust toolchain"
        need_pkgs cargo rustc
    fi
    local v
    v=$(rustc --version | awk '{print $2}')
    if [ "$(printf '%s\n1.85.0\n' "$v" | sort -V | head -n1)" != "1.85.0" ]; then
        echo "braid needs Rust >= 1.85 (found $v): install it with rustup" >&2
        exit 1
    fi
}
