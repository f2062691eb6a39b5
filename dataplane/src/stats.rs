//! Counters the data path keeps and the control plane reads: packets, bytes and drops by reason.
//!
//! Every drop has a [`DropReason`]; the data path increments a relaxed atomic and never logs per packet.
//! Counters are per tunnel (what `braid show tunnels` prints), per uplink (drops before a tunnel is known, such
//! as an unknown SPI) and for the TUN side (drops before a tunnel is chosen, such as no route).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use braid_crypto::OpenError;

macro_rules! drop_reasons {
    ($($variant:ident => $name:literal: $doc:literal,)*) => {
        /// Why the data path dropped a packet.
        #[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason {
            $(#[doc = $doc] $variant,)*
        }

        impl DropReason {
            /// All reasons, in counter order.
            pub const ALL: &'static [DropReason] = &[$(DropReason::$variant,)*];
            pub const COUNT: usize = DropReason::ALL.len();

            /// The stable snake_case name used in `braid show` JSON and metrics.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(DropReason::$variant => $name,)*
                }
            }
        }
    };
}

drop_reasons! {
    TooShort => "too_short": "An ESP datagram too short to hold header, IV, trailer and ICV.",
    Malformed => "malformed": "A UDP payload that is neither ESP nor IKE nor a NAT keepalive (e.g. a reserved SPI).",
    UnknownSpi => "unknown_spi": "An ESP packet whose SPI matches no inbound SA.",
    Replay => "replay": "A duplicate or too old sequence number (anti-replay window).",
    AuthFailed => "auth_failed": "The ICV did not verify: wrong key, corruption or forgery.",
    BadPadding => "bad_padding": "Authenticated, but the ESP padding is not what RFC 4303 2.4 says.",
    BadNextHeader => "bad_next_header": "Authenticated, but the next header is not IPv4 or IPv6.",
    Dummy => "dummy": "A TFC dummy packet (next header 59): valid, carries nothing.",
    InnerMalformed => "inner_malformed": "The inner packet's version or length is wrong.",
    InnerSource => "inner_source": "The inner source address is not allowed on the tunnel it came from.",
    NoRoute => "no_route": "A packet from the TUN device with a destination no tunnel serves.",
    NoSa => "no_sa": "A packet routed to a tunnel that has no outbound SA (before IKE's first child SA, or after it was deleted).",
    TooBig => "too_big": "Larger than the tunnel MTU with DF set: an ICMP error was sent back instead.",
    SeqExhausted => "seq_exhausted": "The outbound SA's sequence numbers are used up; it must be rekeyed.",
    SendFailed => "send_failed": "The uplink socket refused the datagram (buffer full, no route, ...).",
    CapExceeded => "cap_exceeded": "Over the uplink's egress cap for longer than its queue allows (counted per uplink).",
    TunWriteFailed => "tun_write_failed": "The TUN device refused the inner packet.",
    OffloadMalformed => "offload_malformed": "A packet from the TUN device whose offload metadata (virtio-net header) does not fit it (see `gso`).",
}

impl From<OpenError> for DropReason {
    fn from(e: OpenError) -> DropReason {
        match e {
            OpenError::TooShort => DropReason::TooShort,
            OpenError::SpiMismatch => DropReason::UnknownSpi,
            OpenError::Replay => DropReason::Replay,
            OpenError::AuthFailed => DropReason::AuthFailed,
            OpenError::BadPadding => DropReason::BadPadding,
            OpenError::BadNextHeader => DropReason::BadNextHeader,
            OpenError::Dummy => DropReason::Dummy,
            _ => DropReason::Malformed,
        }
    }
}

/// One counter per [`DropReason`].
pub struct DropCounters([AtomicU64; DropReason::COUNT]);

impl Default for DropCounters {
    fn default() -> Self {
        DropCounters(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl DropCounters {
    #[inline]
    pub fn count(&self, reason: DropReason) {
        self.0[reason as usize].fetch_add(1, Relaxed);
    }

    /// Counts `n` packets dropped for `reason` (e.g. every segment of a super-packet).
    #[inline]
    pub fn count_many(&self, reason: DropReason, n: u64) {
        self.0[reason as usize].fetch_add(n, Relaxed);
    }

    pub fn get(&self, reason: DropReason) -> u64 {
        self.0[reason as usize].load(Relaxed)
    }

    /// Non-zero counters only, with their names.
    pub fn nonzero(&self) -> impl Iterator<Item = (DropReason, u64)> + '_ {
        DropReason::ALL
            .iter()
            .map(|&r| (r, self.get(r)))
            .filter(|&(_, n)| n > 0)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }
}

/// Traffic and drop counters of one tunnel.
#[derive(Default)]
pub struct TunnelStats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub drops: DropCounters,
    /// Milliseconds since the data path started at the last authenticated inbound packet; 0 = never.
    pub last_rx_ms: AtomicU64,
    /// ICMP "too big" errors sent back through the TUN for this tunnel.
    pub icmp_too_big: AtomicU64,
    /// Packets kept while the tunnel waited for its next outbound SA (then sent, or dropped as `no_sa` when the
    /// hold ended): see [`crate::SaControl::remove_outbound`].
    pub held_for_sa: AtomicU64,
}

/// Counters of one uplink socket.
#[derive(Default)]
pub struct UplinkStats {
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// IKE messages (behind the non-ESP marker) handed to the control plane.
    pub ike_received: AtomicU64,
    /// IKE messages the control plane sent from this uplink (`IkeSender`).
    pub ike_sent: AtomicU64,
    /// RFC 3948 NAT keepalives received.
    pub nat_keepalives: AtomicU64,
    /// Datagrams the egress cap held back briefly before sending (not drops).
    pub cap_delayed: AtomicU64,
    /// Inbound: `recvmmsg` calls that returned datagrams (`rx_packets / rx_batches` is the mean batch).
    pub rx_batches: AtomicU64,
    /// Inbound: messages that carried more than one datagram (UDP GRO); their datagrams count in `rx_packets`.
    pub gro_receives: AtomicU64,
    /// Messages sent with UDP GSO (`UDP_SEGMENT`): runs of two or more datagrams in one message.
    pub gso_sends: AtomicU64,
    /// Times the kernel refused UDP GSO on this uplink, which then sends one datagram per message.
    pub gso_fallbacks: AtomicU64,
    /// Drops before a tunnel is known.
    pub drops: DropCounters,
}

/// Counters of the TUN side, before a tunnel is chosen.
#[derive(Default)]
pub struct TunStats {
    /// Reads from the device (a super-packet counts once).
    pub rx_packets: AtomicU64,
    /// Inbound: super-packets written (TCP segments or UDP datagrams of one flow coalesced, `crate::gro`).
    pub gro_writes: AtomicU64,
    /// Inbound: inner packets those super-packets carried.
    pub gro_packets: AtomicU64,
    /// Inbound: super-packets the device refused (e.g. `EINVAL` from a kernel without USO), written packet by
    /// packet instead; coalescing of that kind stops.
    pub gro_fallbacks: AtomicU64,
    /// Reads that were TCP or UDP super-packets (TSO/USO) segmented in user space.
    pub gso_reads: AtomicU64,
    /// Segments cut from those super-packets.
    pub gso_segments: AtomicU64,
    pub drops: DropCounters,
}

/// One data-path worker's share of the work: what its outbound thread read from its TUN queue and what its
/// inbound thread received on its uplink sockets. Each counter has one writer (once per batch); a worker's
/// counters sit on their own cache line.
#[derive(Debug, Default)]
#[repr(align(64))]
pub struct WorkerStats {
    /// Reads from this worker's TUN queue (a super-packet counts once).
    pub tun_reads: AtomicU64,
    /// Datagrams received on this worker's uplink sockets.
    pub uplink_datagrams: AtomicU64,
}

/// Shorthand for `counter += n` with relaxed ordering.
#[inline]
pub fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_counted() {
        let mut names: Vec<_> = DropReason::ALL.iter().map(|r| r.as_str()).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), DropReason::COUNT);
        let d = DropCounters::default();
        d.count(DropReason::Replay);
        d.count(DropReason::Replay);
        d.count(DropReason::AuthFailed);
        assert_eq!(d.get(DropReason::Replay), 2);
        assert_eq!(d.total(), 3);
        assert_eq!(d.nonzero().count(), 2);
    }

    #[test]
    fn open_errors_map_to_reasons() {
        assert_eq!(
            DropReason::from(OpenError::AuthFailed),
            DropReason::AuthFailed
        );
        assert_eq!(DropReason::from(OpenError::Replay), DropReason::Replay);
        assert_eq!(
            DropReason::from(OpenError::SpiMismatch),
            DropReason::UnknownSpi
        );
    }
}
