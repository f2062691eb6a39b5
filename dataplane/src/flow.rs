//! The flow hash: which flow an inner IP packet belongs to, as one keyed 64-bit number.
//!
//! [`flow_hash`] reads the flow's tuple from the packet and hashes it with SipHash-1-3 under a per-gateway
//! seed, so the scheduler can keep every packet of a flow on one tunnel (no reordering within a flow) while
//! spreading flows evenly, and so a remote sender cannot aim many flows at one tunnel without knowing the seed.
//!
//! [`flow_key`] gives what a flow table tells flows apart by without hashing each packet: an IPv4 flow's tuple
//! itself (two words), an IPv6 flow's keyed hash; [`FlowKey::hash`] is the flow hash, computed from the key
//! when a flow is placed.
//!
//! The tuple is:
//! - the 5-tuple (source, destination, protocol, source port, destination port) for unfragmented TCP, UDP,
//!   UDP-Lite, SCTP and DCCP, whose ports all sit in the first four bytes of the transport header;
//! - the 3-tuple (source, destination, protocol) for every other protocol and for **every** fragment. An IPv4
//!   packet is a fragment when MF is set or its fragment offset is not zero; the first fragment carries ports
//!   but later ones do not, so it takes the 3-tuple too and all fragments of one datagram hash alike. An IPv6
//!   packet is a fragment when its header chain holds a Fragment header (RFC 8200 4.5); its protocol is that
//!   header's Next Header, which RFC 8200 makes the same in every fragment.
//!
//! IPv6 extension headers (RFC 8200 4.1) are walked to find the transport: Hop-by-Hop Options, Routing,
//! Destination Options and the Authentication Header (RFC 4302, whose length is counted in 4-octet units). The
//! walk stops after [`MAX_EXTENSION_HEADERS`]; a longer chain hashes by the 3-tuple with the header it stopped
//! at as protocol, which is still the same for every packet of such a flow.
//!
//! Left out: the IPv6 flow label (senders may change it mid-flow, RFC 6438 is optional), ESP SPIs and
//! tunnelled inner headers (GRE, IP-in-IP hash by their outer 3-tuple).

use crate::wire::{inspect, Inner, IPV4_HEADER_LEN, IPV6_HEADER_LEN};

/// IPv6 extension headers walked before the walk gives up and hashes the 3-tuple.
pub const MAX_EXTENSION_HEADERS: usize = 8;

/// IP protocol numbers (IANA "Assigned Internet Protocol Numbers").
mod protocol {
    pub const HOP_BY_HOP: u8 = 0;
    pub const TCP: u8 = crate::wire::PROTO_TCP;
    pub const UDP: u8 = crate::wire::PROTO_UDP;
    pub const DCCP: u8 = 33;
    pub const ROUTING: u8 = 43;
    pub const FRAGMENT: u8 = 44;
    pub const AUTHENTICATION: u8 = 51;
    pub const DESTINATION_OPTIONS: u8 = 60;
    pub const SCTP: u8 = 132;
    pub const UDP_LITE: u8 = 136;
}

/// The longest tuple: two IPv6 addresses, the protocol and two ports.
const TUPLE_MAX: usize = 16 + 16 + 1 + 2 + 2;

/// Second SipHash key word, derived from the seed (the digits of pi), so one `u64` keys the whole hash.
const KEY1_TWEAK: u64 = 0x243f_6a88_85a3_08d3;

/// Whether `protocol`'s header starts with a 16-bit source port and a 16-bit destination port.
fn has_ports(protocol: u8) -> bool {
    matches!(
        protocol,
        protocol::TCP | protocol::UDP | protocol::DCCP | protocol::SCTP | protocol::UDP_LITE
    )
}

/// The keyed hash of the flow that inner IP packet `pkt` belongs to, or `None` if the packet is malformed:
/// it fails [`inspect`], or its IPv6 extension headers or its transport ports run past its length.
///
/// The same `seed` must be used by every thread of one gateway; it should be random per gateway. Bytes after
/// the packet's own length (TFC padding) are ignored. Never allocates and never panics.
pub fn flow_hash(pkt: &[u8], seed: u64) -> Option<u64> {
    flow_key(pkt, &inspect(pkt).ok()?, seed).map(|key| key.hash(seed))
}

/// A flow as a flow table tells it apart without hashing it: for IPv4 the tuple itself, as the two words
/// SipHash reads it in (the addresses; then the protocol, the ports when they count, and the tuple's length in
/// the top octet); for IPv6 (a tuple of up to 37 octets) its keyed hash, with a second word whose top octet no
/// IPv4 key has. Two flows have one key only if they are one flow (IPv4) or their 64-bit keyed hashes collide
/// (IPv6).
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowKey([u64; 2]);

/// The top octet of an IPv6 key's second word (an IPv4 key's holds its tuple's length, 9 or 13).
const IPV6_KEY: u64 = 0xff;

impl FlowKey {
    /// A key of two words, for tests that need distinct flows without packets.
    #[cfg(test)]
    pub(crate) const fn from_words(words: [u64; 2]) -> FlowKey {
        FlowKey(words)
    }

    /// The flow's keyed hash, [`flow_hash`] of its packets, under `seed` (for an IPv6 key, the seed it was
    /// made with): SipHash-1-3 of an IPv4 tuple's two words, computed only when asked for.
    pub fn hash(&self, seed: u64) -> u64 {
        if self.0[1] >> 56 == IPV6_KEY {
            self.0[0]
        } else {
            siphash_words::<1, 3>(seed, seed ^ KEY1_TWEAK, [self.0[0]], self.0[1])
        }
    }

    /// Where a table of flows keeps this one: a multiply-and-fold of its words under `seed`, a few cycles
    /// against SipHash's few dozen. Not a defence on its own: a table compares whole keys, so flows chosen to
    /// land on one index only take each other's slot (and are placed again, by their keyed hash); the seed
    /// keeps even that from being aimed at.
    #[inline]
    pub fn index(&self, seed: u64) -> u64 {
        let a = self.0[0] ^ seed;
        let b = self.0[1] ^ seed.rotate_left(32) ^ KEY1_TWEAK;
        let product = u128::from(a) * u128::from(b);
        (product as u64) ^ (product >> 64) as u64
    }
}

/// The [`FlowKey`] of a packet the caller ran through [`inspect`] (`inner` is that result), or `None` if its
/// IPv6 extension headers or its ports run past its length. `seed` keys an IPv6 flow's hash.
pub fn flow_key(pkt: &[u8], inner: &Inner, seed: u64) -> Option<FlowKey> {
    let pkt = pkt.get(..inner.len)?;
    if inner.version == 4 {
        let (addresses, last) = ipv4_words(pkt)?;
        return Some(FlowKey([addresses, last]));
    }
    let mut tuple = [0u8; TUPLE_MAX];
    let len = ipv6_tuple(pkt, &mut tuple)?;
    let hash = siphash::<1, 3>(seed, seed ^ KEY1_TWEAK, &tuple[..len]);
    Some(FlowKey([hash, IPV6_KEY << 56 | len as u64]))
}

/// A cheap, unkeyed hash of a packet's flow that is the same in both directions (source and destination
/// swapped): which TUN queue the inbound workers write a flow to. The kernel's multi-queue TUN device reads a
/// flow's packets back from the queue that last wrote that flow (its automatic steering), so writing by this
/// hash spreads flows over the outbound workers too. Not a defence against chosen flows (nothing but a queue
/// depends on it). Ports count for TCP, UDP, UDP-Lite, SCTP and DCCP when the first header is the transport
/// (unfragmented IPv4 without options or IPv6 without extension headers); otherwise addresses and protocol.
pub fn queue_hash(pkt: &[u8], inner: &Inner) -> u32 {
    fn fold(addr: std::net::IpAddr) -> u32 {
        match addr {
            std::net::IpAddr::V4(a) => u32::from(a),
            std::net::IpAddr::V6(a) => {
                let w = a.to_bits();
                (w as u32) ^ ((w >> 32) as u32) ^ ((w >> 64) as u32) ^ ((w >> 96) as u32)
            }
        }
    }
    let header_len = match inner.version {
        4 if pkt.len() >= IPV4_HEADER_LEN && pkt[6] & 0x3f == 0 && pkt[7] == 0 => {
            (pkt[0] & 0x0f) as usize * 4
        }
        6 => IPV6_HEADER_LEN,
        _ => usize::MAX,
    };
    let ports = match pkt.get(header_len..header_len.wrapping_add(4)) {
        Some(p) if has_ports(inner.protocol) => {
            u32::from(u16::from_be_bytes([p[0], p[1]]) ^ u16::from_be_bytes([p[2], p[3]]))
        }
        _ => 0,
    };
    let x = fold(inner.src) ^ fold(inner.dst) ^ (ports << 8) ^ u32::from(inner.protocol);
    // A multiplicative mix (Knuth), so that nearby addresses and ports land on different queues.
    x.wrapping_mul(0x9e37_79b1).rotate_left(16)
}

/// The hash [`flow_hash`] gives an unfragmented packet of this flow, from its tuple alone: for `braid path`,
/// which answers "which tunnel does this flow take" without a packet. `ports` count only for protocols that
/// carry them (TCP, UDP, UDP-Lite, SCTP, DCCP); the addresses must be of one family.
pub fn tuple_hash(
    src: std::net::IpAddr,
    dst: std::net::IpAddr,
    protocol: u8,
    ports: (u16, u16),
    seed: u64,
) -> Option<u64> {
    use std::net::IpAddr;
    let mut tuple = [0u8; TUPLE_MAX];
    let mut len = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            tuple[..4].copy_from_slice(&s.octets());
            tuple[4..8].copy_from_slice(&d.octets());
            8
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            tuple[..16].copy_from_slice(&s.octets());
            tuple[16..32].copy_from_slice(&d.octets());
            32
        }
        _ => return None,
    };
    tuple[len] = protocol;
    len += 1;
    if has_ports(protocol) {
        tuple[len..len + 2].copy_from_slice(&ports.0.to_be_bytes());
        tuple[len + 2..len + 4].copy_from_slice(&ports.1.to_be_bytes());
        len += 4;
    }
    Some(siphash::<1, 3>(seed, seed ^ KEY1_TWEAK, &tuple[..len]))
}

/// An IPv4 packet's tuple as the SipHash words of its octets: the addresses (octets 0-7, the first word) and
/// the last word (the protocol, then the ports when they count, and the tuple's length in the top octet), as
/// [`siphash`] forms them. `pkt` has passed [`inspect`].
fn ipv4_words(pkt: &[u8]) -> Option<(u64, u64)> {
    let header_len = (pkt[0] & 0x0f) as usize * 4;
    debug_assert!(header_len >= IPV4_HEADER_LEN);
    let addresses = u64::from_le_bytes(pkt[12..20].try_into().ok()?);
    let protocol = u64::from(pkt[9]);
    let more_fragments = pkt[6] & 0x20 != 0;
    let fragment_offset = u16::from_be_bytes([pkt[6], pkt[7]]) & 0x1fff;
    if more_fragments || fragment_offset != 0 || !has_ports(pkt[9]) {
        return Some((addresses, protocol | 9 << 56));
    }
    let ports = pkt.get(header_len..header_len + 4)?;
    let ports = u64::from(u32::from_le_bytes(ports.try_into().ok()?));
    Some((addresses, protocol | ports << 8 | 13 << 56))
}

/// Writes an IPv6 packet's tuple into `tuple`, returning its length. `pkt` has passed [`inspect`] and is cut
/// to the packet's own length.
fn ipv6_tuple(pkt: &[u8], tuple: &mut [u8; TUPLE_MAX]) -> Option<usize> {
    tuple[..32].copy_from_slice(&pkt[8..40]);
    let mut next = pkt[6];
    let mut offset = IPV6_HEADER_LEN;
    for _ in 0..MAX_EXTENSION_HEADERS {
        let header_len = match next {
            protocol::HOP_BY_HOP | protocol::ROUTING | protocol::DESTINATION_OPTIONS => {
                (*pkt.get(offset + 1)? as usize + 1) * 8
            }
            protocol::AUTHENTICATION => (*pkt.get(offset + 1)? as usize + 2) * 4,
            protocol::FRAGMENT => {
                // Every fragment: the 3-tuple, with the fragmentable part's first header as protocol.
                let fragment = pkt.get(offset..offset + 8)?;
                tuple[32] = fragment[0];
                return Some(33);
            }
            _ => break,
        };
        next = pkt[offset];
        offset += header_len;
        if offset > pkt.len() {
            return None;
        }
    }
    tuple[32] = next;
    if !has_ports(next) {
        return Some(33);
    }
    let ports = pkt.get(offset..offset + 4)?;
    tuple[33..37].copy_from_slice(ports);
    Some(37)
}

/// SipHash-c-d of `msg` under the key (`k0`, `k1`), as specified by Aumasson and Bernstein ("SipHash: a fast
/// short-input PRF", 2012): `C` compression rounds per 8-byte word, `D` finalization rounds. The flow hash uses
/// SipHash-1-3, which keeps the keyed, well-mixing output at about half the cost of SipHash-2-4 (our inputs
/// are at most 37 bytes: 5 words). The tests check SipHash-2-4 against the standard library's.
fn siphash<const C: usize, const D: usize>(k0: u64, k1: u64, msg: &[u8]) -> u64 {
    let chunks = msg.chunks_exact(8);
    // The last word: the remaining bytes, with the message length (mod 256) in the top byte.
    let mut last = (msg.len() as u64) << 56;
    for (i, &b) in chunks.remainder().iter().enumerate() {
        last |= (b as u64) << (8 * i);
    }
    let words = chunks.map(|c| u64::from_le_bytes(c.try_into().expect("8 octets")));
    siphash_words::<C, D>(k0, k1, words, last)
}

/// [`siphash`] of a message given as its whole 8-octet words (little-endian) and its `last` word (the
/// remaining octets, with the message length mod 256 in the top octet).
#[inline(always)]
fn siphash_words<const C: usize, const D: usize>(
    k0: u64,
    k1: u64,
    words: impl IntoIterator<Item = u64>,
    last: u64,
) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    for word in words {
        compress::<C>(&mut v, word);
    }
    compress::<C>(&mut v, last);
    v[2] ^= 0xff;
    for _ in 0..D {
        sip_round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

fn compress<const C: usize>(v: &mut [u64; 4], m: u64) {
    v[3] ^= m;
    for _ in 0..C {
        sip_round(v);
    }
    v[0] ^= m;
}

fn sip_round(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum;
    use etherparse::PacketBuilder;
    use std::hash::Hasher;

    const SEED: u64 = 0x5eed_0fb4_a1d0;

    fn v4_udp(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(&mut out, payload)
            .unwrap();
        out
    }

    fn v4_tcp(sport: u16, dport: u16) -> Vec<u8> {
        let mut out = Vec::new();
        PacketBuilder::ipv4([10, 0, 0, 1], [10, 0, 1, 1], 64)
            .tcp(sport, dport, 1, 65535)
            .write(&mut out, &[0; 10])
            .unwrap();
        out
    }

    #[test]
    fn queue_hash_is_the_same_both_ways_and_spreads_flows() {
        let q = |p: &[u8]| queue_hash(p, &inspect(p).unwrap());
        let there = v4_udp([192, 0, 2, 66], [198, 51, 100, 7], 40000, 5002, b"x");
        let back = v4_udp([198, 51, 100, 7], [192, 0, 2, 66], 5002, 40000, b"y");
        assert_eq!(q(&there), q(&back));
        let mut v6 = Vec::new();
        PacketBuilder::ipv6([0x20; 16], [0x30; 16], 64)
            .tcp(443, 50000, 1, 100)
            .write(&mut v6, &[1, 2, 3])
            .unwrap();
        let mut v6_back = Vec::new();
        PacketBuilder::ipv6([0x30; 16], [0x20; 16], 64)
            .tcp(50000, 443, 9, 100)
            .write(&mut v6_back, &[])
            .unwrap();
        assert_eq!(q(&v6), q(&v6_back));
        // 64 TCP flows that differ only in the source port fill both halves of two queues about evenly.
        let odd = (0..64u16)
            .filter(|i| q(&v4_tcp(40000 + i, 80)) % 2 == 1)
            .count();
        assert!((16..=48).contains(&odd), "{odd} of 64 on one queue");
    }

    #[test]
    fn flow_keys_tell_flows_apart_and_give_their_hash() {
        let key = |p: &[u8]| flow_key(p, &inspect(p).unwrap(), SEED).unwrap();
        let a = v4_udp([192, 0, 2, 66], [198, 51, 100, 7], 40000, 5002, b"x");
        let a2 = v4_udp([192, 0, 2, 66], [198, 51, 100, 7], 40000, 5002, b"longer");
        let b = v4_udp([192, 0, 2, 66], [198, 51, 100, 7], 40001, 5002, b"x");
        assert_eq!(key(&a), key(&a2), "one flow, one key");
        assert_ne!(key(&a), key(&b));
        assert_eq!(key(&a).hash(SEED), flow_hash(&a, SEED).unwrap());
        assert_ne!(key(&a).hash(SEED), key(&a).hash(SEED ^ 1), "keyed");
        let mut v6 = Vec::new();
        PacketBuilder::ipv6(V6_SRC, V6_DST, 64)
            .udp(40000, 5002)
            .write(&mut v6, b"x")
            .unwrap();
        assert_eq!(key(&v6).hash(SEED), flow_hash(&v6, SEED).unwrap());
        // An IPv6 key can never equal an IPv4 one: the top octet of its second word is no tuple length.
        assert_eq!(key(&v6).0[1] >> 56, IPV6_KEY);
        assert_eq!(key(&a).0[1] >> 56, 13);
        // The index is keyed too.
        assert_ne!(key(&a).index(1), key(&a).index(2));
        assert_ne!(key(&a).index(SEED), key(&b).index(SEED));
    }

    #[test]
    fn ipv4_hash_is_siphash_of_the_tuple_octets() {
        let key = (SEED, SEED ^ KEY1_TWEAK);
        let of = |tuple: &[u8]| siphash::<1, 3>(key.0, key.1, tuple);
        let addresses = [192, 0, 2, 7, 198, 51, 100, 8];
        let with = |rest: &[u8]| [&addresses[..], rest].concat();
        // UDP, unfragmented: the 5-tuple.
        let udp = v4_raw(17, 1, false, 0, &[0x9c, 0x40, 0x13, 0x8a, 0, 8, 0, 0]);
        assert_eq!(
            flow_hash(&udp, SEED),
            Some(of(&with(&[17, 0x9c, 0x40, 0x13, 0x8a])))
        );
        // A first fragment and a later one: the 3-tuple, though the first carries ports.
        let first = v4_raw(17, 2, true, 0, &[0x9c, 0x40, 0x13, 0x8a, 0, 8, 0, 0]);
        let later = v4_raw(17, 2, false, 1, &[0; 8]);
        assert_eq!(flow_hash(&first, SEED), Some(of(&with(&[17]))));
        assert_eq!(flow_hash(&later, SEED), Some(of(&with(&[17]))));
        // No ports: ICMP.
        let icmp = v4_raw(1, 3, false, 0, &[8, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(flow_hash(&icmp, SEED), Some(of(&with(&[1]))));
        // TCP with 4 octets of options: the ports after them.
        let mut tcp = vec![0x46, 0, 0, 32, 0, 4, 0, 0, 64, 6, 0, 0];
        tcp.extend_from_slice(&addresses);
        tcp.extend_from_slice(&[1, 1, 0, 0]); // NOP NOP EOL EOL
        tcp.extend_from_slice(&[0x04, 0xd2, 0x00, 0x50, 0, 0, 0, 0]);
        let c = checksum(0, &tcp[..24]);
        tcp[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(
            flow_hash(&tcp, SEED),
            Some(of(&with(&[6, 0x04, 0xd2, 0x00, 0x50])))
        );
        // Ports cut off by the packet's end: malformed.
        let short = v4_raw(6, 5, false, 0, &[0x04, 0xd2]);
        assert_eq!(flow_hash(&short, SEED), None);
    }

    #[test]
    fn tuple_hash_agrees_with_the_packet_hash() {
        use std::net::IpAddr;
        let v4 = v4_udp([192, 0, 2, 66], [192, 0, 2, 194], 40000, 5002, b"probe");
        let (s, d): (IpAddr, IpAddr) = (
            "192.0.2.66".parse().unwrap(),
            "192.0.2.194".parse().unwrap(),
        );
        assert_eq!(
            tuple_hash(s, d, 17, (40000, 5002), SEED),
            flow_hash(&v4, SEED)
        );
        assert_ne!(
            tuple_hash(s, d, 17, (40001, 5002), SEED),
            flow_hash(&v4, SEED)
        );
        let tcp = v4_tcp(1234, 80);
        let (s, d): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.1.1".parse().unwrap());
        assert_eq!(tuple_hash(s, d, 6, (1234, 80), SEED), flow_hash(&tcp, SEED));
        // ICMP: ports do not count.
        let icmp = v4_raw(1, 7, false, 0, &[8, 0, 0, 0, 0, 0, 0, 0]);
        let (s, d): (IpAddr, IpAddr) = (
            "192.0.2.7".parse().unwrap(),
            "198.51.100.8".parse().unwrap(),
        );
        assert_eq!(tuple_hash(s, d, 1, (9, 9), SEED), flow_hash(&icmp, SEED));
        let mut v6 = Vec::new();
        PacketBuilder::ipv6([0x20; 16], [0x30; 16], 64)
            .udp(5, 6)
            .write(&mut v6, &[1, 2, 3])
            .unwrap();
        let (s, d) = (IpAddr::from([0x20u8; 16]), IpAddr::from([0x30u8; 16]));
        assert_eq!(tuple_hash(s, d, 17, (5, 6), SEED), flow_hash(&v6, SEED));
        assert_eq!(
            tuple_hash(s, "10.0.0.1".parse().unwrap(), 17, (5, 6), SEED),
            None
        );
    }

    /// A hand-made IPv4 header with the given fragment fields, protocol and payload.
    fn v4_raw(protocol: u8, id: u16, more: bool, offset8: u16, payload: &[u8]) -> Vec<u8> {
        let total = 20 + payload.len();
        let mut p = vec![0u8; total];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        let frag = offset8 | if more { 0x2000 } else { 0 };
        p[6..8].copy_from_slice(&frag.to_be_bytes());
        p[8] = 64;
        p[9] = protocol;
        p[12..16].copy_from_slice(&[192, 0, 2, 7]);
        p[16..20].copy_from_slice(&[198, 51, 100, 8]);
        let c = checksum(0, &p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..].copy_from_slice(payload);
        p
    }

    const V6_SRC: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const V6_DST: [u8; 16] = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    /// An IPv6 packet: header, then `headers` as (type, body) chained in order, then `payload` of `last` type.
    /// Bodies are padded to the header's unit (8 octets, 4 for AH); the Fragment header body is used as is.
    fn v6_chain(headers: &[(u8, Vec<u8>)], last: u8, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[7] = 64;
        p[8..24].copy_from_slice(&V6_SRC);
        p[24..40].copy_from_slice(&V6_DST);
        p[6] = headers.first().map_or(last, |h| h.0);
        for (i, (kind, body)) in headers.iter().enumerate() {
            let next = headers.get(i + 1).map_or(last, |h| h.0);
            let mut h = vec![next, 0];
            h.extend_from_slice(body);
            match *kind {
                protocol::FRAGMENT => assert_eq!(h.len(), 8),
                protocol::AUTHENTICATION => {
                    while h.len() % 4 != 0 || h.len() < 12 {
                        h.push(0);
                    }
                    h[1] = (h.len() / 4 - 2) as u8;
                }
                _ => {
                    while h.len() % 8 != 0 {
                        h.push(0);
                    }
                    h[1] = (h.len() / 8 - 1) as u8;
                }
            }
            p.extend_from_slice(&h);
        }
        p.extend_from_slice(payload);
        let plen = (p.len() - 40) as u16;
        p[4..6].copy_from_slice(&plen.to_be_bytes());
        p
    }

    fn udp_header(sport: u16, dport: u16) -> Vec<u8> {
        let mut u = Vec::new();
        u.extend_from_slice(&sport.to_be_bytes());
        u.extend_from_slice(&dport.to_be_bytes());
        u.extend_from_slice(&[0, 8, 0, 0]);
        u
    }

    fn fragment_header(offset8: u16, more: bool, id: u32) -> (u8, Vec<u8>) {
        let mut body = Vec::new();
        body.extend_from_slice(&((offset8 << 3) | more as u16).to_be_bytes());
        body.extend_from_slice(&id.to_be_bytes());
        (protocol::FRAGMENT, body)
    }

    #[test]
    fn siphash_2_4_matches_the_standard_library() {
        let msg: Vec<u8> = (0u8..64).collect();
        for len in 0..msg.len() {
            #[allow(deprecated)]
            let mut std_hasher =
                std::hash::SipHasher::new_with_keys(0x0706050403020100, 0x0f0e0d0c0b0a0908);
            std_hasher.write(&msg[..len]);
            assert_eq!(
                siphash::<2, 4>(0x0706050403020100, 0x0f0e0d0c0b0a0908, &msg[..len]),
                std_hasher.finish(),
                "length {len}"
            );
        }
        // The paper's test vector (Appendix A): key 00..0f, message 00..0e.
        assert_eq!(
            siphash::<2, 4>(0x0706050403020100, 0x0f0e0d0c0b0a0908, &msg[..15]),
            0xa129_ca61_49be_45e5
        );
    }

    #[test]
    fn same_flow_same_hash_whatever_the_payload() {
        let a = v4_udp([10, 0, 0, 1], [10, 0, 1, 1], 40000, 53, &[1; 20]);
        let b = v4_udp([10, 0, 0, 1], [10, 0, 1, 1], 40000, 53, &[2; 900]);
        assert_eq!(flow_hash(&a, SEED), flow_hash(&b, SEED));
        assert!(flow_hash(&a, SEED).is_some());
        // Trailing padding beyond the packet's length is not part of the flow.
        let mut padded = a.clone();
        padded.extend_from_slice(&[0xff; 13]);
        assert_eq!(flow_hash(&padded, SEED), flow_hash(&a, SEED));
        // The seed keys the hash.
        assert_ne!(flow_hash(&a, SEED), flow_hash(&a, SEED + 1));
        assert_eq!(
            flow_hash(&v4_tcp(1, 2), SEED),
            flow_hash(&v4_tcp(1, 2), SEED)
        );
    }

    #[test]
    fn different_ports_addresses_or_protocols_differ() {
        let base = flow_hash(&v4_udp([10, 0, 0, 1], [10, 0, 1, 1], 40000, 53, &[]), SEED);
        let others = [
            v4_udp([10, 0, 0, 1], [10, 0, 1, 1], 40001, 53, &[]),
            v4_udp([10, 0, 0, 1], [10, 0, 1, 1], 40000, 54, &[]),
            v4_udp([10, 0, 0, 1], [10, 0, 1, 1], 53, 40000, &[]),
            v4_udp([10, 0, 0, 2], [10, 0, 1, 1], 40000, 53, &[]),
            v4_udp([10, 0, 0, 1], [10, 0, 1, 2], 40000, 53, &[]),
            v4_tcp(40000, 53),
        ];
        for o in &others {
            assert_ne!(flow_hash(o, SEED), base);
        }
        // Many consecutive source ports: all distinct hashes.
        let mut seen = std::collections::HashSet::new();
        for port in 0..=u16::MAX {
            let p = v4_udp([10, 0, 0, 1], [10, 0, 1, 1], port, 443, &[]);
            assert!(seen.insert(flow_hash(&p, SEED).unwrap()));
        }
    }

    #[test]
    fn ipv4_fragments_of_one_datagram_hash_alike() {
        // A UDP datagram split in three: the first fragment carries the UDP header and ports.
        let first = v4_raw(protocol::UDP, 7, true, 0, &[0x9c, 0x40, 0, 53, 0, 40, 0, 0]);
        let middle = v4_raw(protocol::UDP, 7, true, 1, &[0xaa; 8]);
        let last = v4_raw(protocol::UDP, 7, false, 2, &[0xbb; 8]);
        let h = flow_hash(&first, SEED).unwrap();
        assert_eq!(flow_hash(&middle, SEED), Some(h));
        assert_eq!(flow_hash(&last, SEED), Some(h));
        // The same addresses and protocol unfragmented, with ports: the 5-tuple, a different hash.
        let whole = v4_raw(protocol::UDP, 8, false, 0, &[0x9c, 0x40, 0, 53, 0, 8, 0, 0]);
        assert_ne!(flow_hash(&whole, SEED), Some(h));
        // Other protocols hash by the 3-tuple: the payload does not matter.
        let gre_a = v4_raw(47, 1, false, 0, &[1, 2, 3, 4]);
        let gre_b = v4_raw(47, 2, false, 0, &[5, 6, 7, 8, 9]);
        assert_eq!(flow_hash(&gre_a, SEED), flow_hash(&gre_b, SEED));
        // And differ from another protocol between the same addresses.
        assert_ne!(
            flow_hash(&gre_a, SEED),
            flow_hash(&v4_raw(1, 1, false, 0, &[8, 0, 0, 0]), SEED)
        );
    }

    #[test]
    fn ipv4_with_options_finds_the_ports() {
        let plain = v4_udp([192, 0, 2, 7], [198, 51, 100, 8], 1000, 2000, &[]);
        // Insert 4 bytes of options (NOPs + EOL) after the fixed header.
        let mut opts = plain[..20].to_vec();
        opts[0] = 0x46;
        opts.extend_from_slice(&[1, 1, 1, 0]);
        opts.extend_from_slice(&plain[20..]);
        let total = opts.len() as u16;
        opts[2..4].copy_from_slice(&total.to_be_bytes());
        assert_eq!(flow_hash(&opts, SEED), flow_hash(&plain, SEED));
        assert!(flow_hash(&opts, SEED).is_some());
    }

    #[test]
    fn ipv6_extension_headers_are_walked() {
        let plain = v6_chain(&[], protocol::UDP, &udp_header(5000, 53));
        let with_ext = v6_chain(
            &[
                (protocol::HOP_BY_HOP, vec![5, 2, 0, 0, 1, 0]),
                (
                    protocol::DESTINATION_OPTIONS,
                    vec![1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ),
                (protocol::ROUTING, vec![0, 0, 0, 0, 0, 0]),
                (protocol::AUTHENTICATION, vec![0; 10]),
            ],
            protocol::UDP,
            &udp_header(5000, 53),
        );
        let h = flow_hash(&plain, SEED).unwrap();
        assert_eq!(flow_hash(&with_ext, SEED), Some(h));
        // The ports behind the extension headers are used.
        let other_port = v6_chain(
            &[(protocol::HOP_BY_HOP, vec![1, 4, 0, 0, 0, 0])],
            protocol::UDP,
            &udp_header(5001, 53),
        );
        assert_ne!(flow_hash(&other_port, SEED), Some(h));
        // Same as etherparse's IPv6 UDP.
        let mut built = Vec::new();
        PacketBuilder::ipv6(V6_SRC, V6_DST, 64)
            .udp(5000, 53)
            .write(&mut built, &[])
            .unwrap();
        assert_eq!(flow_hash(&built, SEED), Some(h));
        // ICMPv6 hashes by the 3-tuple.
        let echo_a = v6_chain(&[], 58, &[128, 0, 0, 0, 0, 1, 0, 1]);
        let echo_b = v6_chain(&[], 58, &[128, 0, 0, 0, 0, 2, 0, 9, 9]);
        assert_eq!(flow_hash(&echo_a, SEED), flow_hash(&echo_b, SEED));
    }

    #[test]
    fn ipv6_fragments_of_one_datagram_hash_alike() {
        let hbh = (protocol::HOP_BY_HOP, vec![1, 4, 0, 0, 0, 0]);
        let first = v6_chain(
            &[hbh.clone(), fragment_header(0, true, 99)],
            protocol::UDP,
            &udp_header(5000, 53),
        );
        let last = v6_chain(
            &[hbh, fragment_header(1, false, 99)],
            protocol::UDP,
            &[0xcc; 8],
        );
        let h = flow_hash(&first, SEED).unwrap();
        assert_eq!(flow_hash(&last, SEED), Some(h));
        // An atomic fragment (offset 0, M=0) is a fragment too: the same 3-tuple.
        let atomic = v6_chain(
            &[fragment_header(0, false, 5)],
            protocol::UDP,
            &udp_header(1, 2),
        );
        assert_eq!(flow_hash(&atomic, SEED), Some(h));
        // The unfragmented datagram uses its ports.
        let whole = v6_chain(&[], protocol::UDP, &udp_header(5000, 53));
        assert_ne!(flow_hash(&whole, SEED), Some(h));
    }

    #[test]
    fn ipv6_chain_longer_than_the_limit_hashes_consistently() {
        let opts = (protocol::DESTINATION_OPTIONS, vec![1, 4, 0, 0, 0, 0]);
        let chain = vec![opts; MAX_EXTENSION_HEADERS + 2];
        let a = v6_chain(&chain, protocol::UDP, &udp_header(1, 2));
        let b = v6_chain(&chain, protocol::UDP, &udp_header(3, 4));
        assert!(flow_hash(&a, SEED).is_some());
        assert_eq!(flow_hash(&a, SEED), flow_hash(&b, SEED));
    }

    #[test]
    fn malformed_is_none() {
        assert_eq!(flow_hash(&[], SEED), None);
        assert_eq!(flow_hash(&[0x45; 19], SEED), None);
        assert_eq!(flow_hash(&[0x70; 60], SEED), None);
        let p = v4_udp([10, 0, 0, 1], [10, 0, 1, 1], 1, 2, &[]);
        assert_eq!(flow_hash(&p[..p.len() - 1], SEED), None);
        // UDP with fewer than 4 bytes of header: no ports to read.
        assert_eq!(
            flow_hash(&v4_raw(protocol::UDP, 1, false, 0, &[0, 1, 0]), SEED),
            None
        );
        // IPv6: an extension header whose length runs past the packet.
        let mut bad = v6_chain(
            &[(protocol::HOP_BY_HOP, vec![1, 4, 0, 0, 0, 0])],
            protocol::UDP,
            &udp_header(1, 2),
        );
        bad[41] = 3;
        assert_eq!(flow_hash(&bad, SEED), None);
        // A chain cut right after the Hop-by-Hop next-header byte.
        let cut = v6_chain(&[], protocol::HOP_BY_HOP, &[17]);
        assert_eq!(flow_hash(&cut, SEED), None);
        // A truncated Fragment header.
        let frag = v6_chain(&[], protocol::FRAGMENT, &[17, 0, 0, 0]);
        assert_eq!(flow_hash(&frag, SEED), None);
        // TCP behind extension headers, cut before its ports.
        let tcp = v6_chain(&[(protocol::ROUTING, vec![0; 6])], protocol::TCP, &[0, 80]);
        assert_eq!(flow_hash(&tcp, SEED), None);
    }
}
