//! Shared fixtures of the integration tests.

//!
//! Namespace tests need root and a few tools. Outside CI a test that lacks them skips with a loud message;
//! under `CI=true` it fails, so CI can never pass by skipping.

#![allow(dead_code)]

use std::path::PathBuf;

pub mod bgp;
pub mod probe;

use braid::lab::{Pair, PairOptions};
use braid::netns;
use braid::scenario::{Kind, Topology, TopologyOptions};

/// The `braid` binary cargo built for these tests.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_braid"))
}

/// Whether namespace tests can run here: root and `tools` present. Panics under CI=true if not.
pub fn netns_ready(test: &str, tools: &[&str]) -> bool {
    let mut missing: Vec<String> = Vec::new();
    if !netns::is_root() {
        missing.push("root".into());
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun".into());
    }
    for t in tools {
        if !netns::have(t) {
            missing.push((*t).into());
        }
    }
    if missing.is_empty() {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("CI=true and namespace test `{test}` cannot run: missing {missing:?}");
    }
    eprintln!("\n!!!!! SKIPPING namespace test `{test}`: missing {missing:?}. Run as root with the tools installed (scripts/test.sh does both). Under CI=true this FAILS. !!!!!\n");
    false
}

/// Polls `cond` every 20 ms until it holds and returns how long that took; after `timeout`, panics with
/// `what` and the `diag` text (logs, state).
pub fn wait_until(
    what: &str,
    timeout: std::time::Duration,
    mut cond: impl FnMut() -> bool,
    diag: impl Fn() -> String,
) -> std::time::Duration {
    let start = std::time::Instant::now();
    while !cond() {
        if start.elapsed() > timeout {
            panic!(
                "timed out after {timeout:?} waiting for: {what}\n{}",
                diag()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    start.elapsed()
}

/// A pair with default options.
pub fn pair() -> Pair {
    Pair::build(&PairOptions::new(binary())).expect("building the namespace pair")
}

pub fn pair_with(f: impl FnOnce(&mut PairOptions)) -> Pair {
    let mut o = PairOptions::new(binary());
    f(&mut o);
    Pair::build(&o).expect("building the namespace pair")
}

/// A counter of a tunnel's `braid show tunnels` entry.
pub fn counter(t: &serde_json::Value, key: &str) -> u64 {
    t[key]
        .as_u64()
        .unwrap_or_else(|| panic!("{key} missing in {t}"))
}

pub fn drop_count(t: &serde_json::Value, reason: &str) -> u64 {
    t["drops"][reason]
        .as_u64()
        .unwrap_or_else(|| panic!("drops.{reason} missing in {t}"))
}

/// A multipath topology (`braid lab` scenarios and the capped pair) with options adjusted by `f`.
pub fn topology(kind: Kind, f: impl FnOnce(&mut TopologyOptions)) -> Topology {
    let mut o = TopologyOptions::new(binary());
    f(&mut o);
    Topology::build(kind, &o).expect("building the multipath topology")
}
