//! braid: a userspace IPsec (ESP-in-UDP) site-to-site VPN gateway for Linux.
//!
//! This crate is the `braid` binary's library: configuration, daemon assembly, control socket, the `braid lab`
//! scenarios, `braid bench` and the namespace helpers the integration tests share with the lab. The ESP core is in
//! `braid-crypto`, the data path in `braid-dataplane`.

pub mod bench;
pub mod bfd;
pub mod cli;
pub mod config;
pub mod control;
pub mod daemon;
pub mod drill;
pub mod health;
pub mod ike;
pub mod kroutes;
pub mod lab;
pub mod labtool;
pub mod metrics;
pub mod netns;
pub mod pairing;
pub mod probe;
pub mod scenario;
pub mod silence;
