//! braid's data path: packet buffers, the TUN device and UDP uplinks, and the forwarding threads that move
//! packets between them through the ESP SAs of `braid-crypto`.
//!
//! All `unsafe` code is in [`sys`]; every other module is safe Rust. The data path runs on its own threads
//! (never on the control plane's tokio runtime) and takes no lock, allocates nothing and logs nothing per
//! packet: drops are counted by reason in [`stats`].

#![deny(unsafe_code)]

pub mod buffer;
pub mod engine;
pub mod fib;
pub mod flow;
pub mod gro;
pub mod gso;
pub mod inbound;
pub mod kernel;
pub mod outbound;
pub mod path;
pub mod prefix;
pub mod sa;
pub mod scheduler;
pub mod shaper;
pub mod stats;
#[allow(unsafe_code)]
pub mod sys;
#[cfg(test)]
mod testutil;
pub mod tun;
pub mod uplink;
pub mod vnet;
pub mod wire;

pub use engine::{Dataplane, DataplaneSpec, IkeDatagram, IkeSender, Liveness, TunnelIo, UplinkIo};
pub use fib::{Fib, FibBuilder, FibCell, GroupError, Member, NextHopGroup};
pub use kernel::{KernelRoutes, RTPROT_BRAID};
pub use prefix::{Prefix, PrefixTable};
pub use sa::{Pending, SaControl, SaError, SaInfo, TunnelSas};
pub use stats::{DropReason, TunStats, TunnelStats, UplinkStats, WorkerStats};
pub use tun::{InsideAddr, Tun};
pub use uplink::{open_uplink_socket, open_uplink_sockets, UplinkSocketSpec};

/// Bytes of outer IP + UDP header in front of an ESP packet, by the outer address family.
pub fn outer_overhead(remote_is_ipv6: bool) -> usize {
    (if remote_is_ipv6 { 40 } else { 20 }) + 8
}

/// The largest inner packet that fits an uplink of MTU `uplink_mtu` once sealed and UDP-encapsulated.
pub fn tunnel_mtu(uplink_mtu: usize, remote_is_ipv6: bool) -> usize {
    braid_crypto::max_inner_len(uplink_mtu.saturating_sub(outer_overhead(remote_is_ipv6)))
}
