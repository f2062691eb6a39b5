//! Segmentation offload in user space: what the kernel left undone in a packet read from the TUN device.
//!
//! With `TUNSETOFFLOAD` (TSO4/TSO6/ECN, USO4/USO6, CSUM) the kernel hands braid TCP and UDP "super-packets" of
//! up to 64 KiB with a [`VnetHdr`] that says how to cut them (`gso_type`, `gso_size`), and packets whose
//! transport checksum is still partial (`NEEDS_CSUM`). A [`Plan`] checks one such packet once and then writes
//! each of the packets that really go into the tunnel, one at a time, into a caller-owned slice: the engine
//! passes the slot of its outbound batch buffer at `slot + HEADROOM`, so a segment is copied exactly once (the
//! one user-space copy it needs) and sealed in place right there, and the sealed datagrams of a super-packet end
//! up back to back for UDP GSO. What [`Plan::write`] produces, per segment (the rules of the kernel's own
//! `tcp_gso_segment`/`__udp_gso_segment` and `inet_gso_segment`/`ipv6_gso_segment`):
//! - IPv4: total length, identification = the super-packet's + i (wrapping), header checksum recomputed;
//!   IPv6: payload length. Everything else of the IP header (options, extension headers) is copied.
//! - TCP: sequence number = the super-packet's + i * gso_size; FIN and PSH only on the last segment, CWR only
//!   on the first (RFC 3168 6.1.2: the congestion-window reduction is signalled once); the full checksum over
//!   the pseudo-header, header and payload (the payload summed in the same pass that copies it, [`copy_sum`]).
//! - UDP (USO): the UDP length and the full checksum (0 is sent as 0xffff, RFC 768).
//! - A packet with `NEEDS_CSUM` but no GSO: the checksum at `csum_start + csum_offset` completed over
//!   `csum_start..` (the kernel left the pseudo-header sum in the field), as `skb_checksum_help` does.
//!
//! Nothing of the metadata is trusted: the real IP and transport headers are parsed (`hdr_len` is a hint the
//! kernel may get wrong and is ignored), `gso_type` must match the packet (TCPV4 an IPv4 TCP packet, TCPV6 an
//! IPv6 one, UDP_L4 a UDP one), `gso_size` must be non-zero, `csum_start`/`csum_offset` must lie in the packet
//! (and, on a super-packet, point at the TCP or UDP checksum). Anything else is a [`GsoError`] the engine counts
//! as the drop `offload_malformed`, never a panic.
//!
//! Handled generically: IPv4 options (copied into every segment) and the IPv6 extension headers that may be
//! copied as they are (hop-by-hop options and destination options). Refused (a counted drop): IPv4 fragments,
//! IPv6 routing headers (the TCP/UDP checksum would be over the final destination, not the one in the header),
//! fragment headers and anything else in front of the transport header, UFO (`GSO_UDP`, which braid never
//! enables) and unknown GSO types.

use crate::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_NONE, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4};
use crate::wire::{PROTO_TCP, PROTO_UDP, TCP_CWR, TCP_FIN, TCP_PSH};

const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_DEST_OPTS: u8 = 60;
/// At most this many IPv6 extension headers are walked before the transport header.
const MAX_EXTENSIONS: usize = 4;

/// Why a packet's offload metadata does not fit the packet. Counted as `offload_malformed`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum GsoError {
    /// A GSO type braid does not take (UFO, unknown values).
    UnknownType,
    /// `gso_size` is 0.
    ZeroGsoSize,
    /// The packet is not what `gso_type` says (family or transport protocol), or is an IPv4 fragment.
    TypeMismatch,
    /// The IP or transport header is truncated or its length fields are inconsistent.
    BadHeaders,
    /// An IPv6 extension header that cannot be copied into segments as it is (routing, fragment, ...).
    UnsupportedExtension,
    /// `csum_start`/`csum_offset` outside the packet, or not at the transport checksum of a super-packet.
    BadChecksumOffsets,
}

/// What has to be done to a packet read from the TUN device.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Work {
    /// A finished packet: copied as it is.
    Plain,
    /// A finished packet but for its checksum at `start + offset`, over `start..`.
    Checksum { start: usize, offset: usize },
    /// A super-packet to cut into segments.
    Segment {
        ipv6: bool,
        tcp: bool,
        /// Offset of the transport header.
        l4: usize,
        /// Octets of IP + extension + transport headers.
        hdr_len: usize,
        /// Payload octets per segment (the last may carry fewer).
        gso_size: usize,
        count: usize,
    },
}

/// How to turn one packet read from the TUN device into the packets sealed into the tunnel (one, or one per
/// segment). Checked once by [`Plan::new`]; afterwards no method panics for `i < count()` and an `out` of at
/// least `segment_len(i)` octets.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    work: Work,
    /// The packet's length by its IP header (bytes after it are ignored).
    len: usize,
}

impl Plan {
    /// Checks `pkt` (an IP packet, possibly followed by bytes that are not part of it) against its virtio-net
    /// header.
    ///
    /// # Errors
    /// A [`GsoError`] when the metadata and the packet disagree (see the module docs).
    pub fn new(hdr: &VnetHdr, pkt: &[u8]) -> Result<Plan, GsoError> {
        let len = ip_len(pkt)?;
        let kind = hdr.gso_kind();
        if kind == GSO_NONE {
            if hdr.flags & F_NEEDS_CSUM == 0 {
                return Ok(Plan {
                    work: Work::Plain,
                    len,
                });
            }
            let (start, offset) = (hdr.csum_start as usize, hdr.csum_offset as usize);
            if start + offset + 2 > len {
                return Err(GsoError::BadChecksumOffsets);
            }
            return Ok(Plan {
                work: Work::Checksum { start, offset },
                len,
            });
        }
        let (ipv6, tcp) = match kind {
            GSO_TCPV4 => (Some(false), true),
            GSO_TCPV6 => (Some(true), true),
            GSO_UDP_L4 => (None, false),
            _ => return Err(GsoError::UnknownType),
        };
        let is_v6 = pkt[0] >> 4 == 6;
        if ipv6.is_some_and(|v6| v6 != is_v6) {
            return Err(GsoError::TypeMismatch);
        }
        let (l4, proto) = if is_v6 {
            ipv6_transport(pkt, len)?
        } else {
            ipv4_transport(pkt, len)?
        };
        if proto != if tcp { PROTO_TCP } else { PROTO_UDP } {
            return Err(GsoError::TypeMismatch);
        }
        let hdr_len = if tcp {
            let data_offset = pkt.get(l4 + 12).ok_or(GsoError::BadHeaders)? >> 4;
            if data_offset < 5 {
                return Err(GsoError::BadHeaders);
            }
            l4 + data_offset as usize * 4
        } else {
            l4 + 8
        };
        if hdr_len > len {
            return Err(GsoError::BadHeaders);
        }
        if hdr.flags & F_NEEDS_CSUM != 0
            && (hdr.csum_start as usize != l4 || hdr.csum_offset != if tcp { 16 } else { 6 })
        {
            return Err(GsoError::BadChecksumOffsets);
        }
        let gso_size = hdr.gso_size as usize;
        if gso_size == 0 {
            return Err(GsoError::ZeroGsoSize);
        }
        let count = (len - hdr_len).div_ceil(gso_size).max(1);
        Ok(Plan {
            work: Work::Segment {
                ipv6: is_v6,
                tcp,
                l4,
                hdr_len,
                gso_size,
                count,
            },
            len,
        })
    }

    /// How many packets [`write`](Self::write) produces.
    pub fn count(&self) -> usize {
        match self.work {
            Work::Segment { count, .. } => count,
            _ => 1,
        }
    }

    /// Whether the packet is a super-packet to cut into segments.
    pub fn is_gso(&self) -> bool {
        matches!(self.work, Work::Segment { .. })
    }

    /// The length of packet `i` (`i < count()`).
    pub fn segment_len(&self, i: usize) -> usize {
        match self.work {
            Work::Segment {
                hdr_len, gso_size, ..
            } => {
                let payload = self.len - hdr_len;
                hdr_len + gso_size.min(payload - (i * gso_size).min(payload))
            }
            _ => self.len,
        }
    }

    /// The length of the longest packet [`write`](Self::write) produces (the first): what the tunnel MTU is
    /// checked against.
    pub fn max_segment_len(&self) -> usize {
        self.segment_len(0)
    }

    /// Finishes a packet that is not a super-packet where it lies (`pkt`, the packet [`Plan::new`] checked):
    /// completes its checksum if it has one to complete. Returns its length, or `None` for a super-packet
    /// (its segments are written elsewhere by [`write`](Self::write)).
    pub fn finish_in_place(&self, pkt: &mut [u8]) -> Option<usize> {
        match self.work {
            Work::Plain => Some(self.len),
            Work::Checksum { start, offset } => {
                // The field holds the pseudo-header sum: the checksum over `start..` including it is the result.
                let c = fold(sum(0, &pkt[start..self.len]));
                let c = if c == 0 { 0xffff } else { c };
                pkt[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
                Some(self.len)
            }
            Work::Segment { .. } => None,
        }
    }

    /// Writes packet `i` of `pkt` (the packet [`Plan::new`] checked) into the start of `out` and returns its
    /// length, [`segment_len`](Self::segment_len)`(i)`.
    ///
    /// # Panics
    /// If `i >= count()`, `out` is shorter than `segment_len(i)` or `pkt` is not the packet the plan was made
    /// for.
    pub fn write(&self, pkt: &[u8], i: usize, out: &mut [u8]) -> usize {
        assert!(i < self.count(), "segment {i} of {}", self.count());
        match self.work {
            Work::Plain => {
                out[..self.len].copy_from_slice(&pkt[..self.len]);
                self.len
            }
            Work::Checksum { start, offset } => {
                let out = &mut out[..self.len];
                out[..start].copy_from_slice(&pkt[..start]);
                // The field holds the pseudo-header sum: the checksum over `start..` including it is the result
                // (summed while copied).
                let c = fold(copy_sum(0, &pkt[start..self.len], &mut out[start..]));
                let c = if c == 0 { 0xffff } else { c };
                out[start + offset..start + offset + 2].copy_from_slice(&c.to_be_bytes());
                self.len
            }
            Work::Segment {
                ipv6,
                tcp,
                l4,
                hdr_len,
                gso_size,
                count,
            } => {
                let seg_len = self.segment_len(i);
                let from = hdr_len + i * gso_size;
                let out = &mut out[..seg_len];
                out[..hdr_len].copy_from_slice(&pkt[..hdr_len]);
                // The payload is summed while it is copied (one pass); the transport header (an even number of
                // octets, so the sums add up) is summed below once it is rewritten.
                let payload =
                    copy_sum(0, &pkt[from..from + seg_len - hdr_len], &mut out[hdr_len..]);
                // The IP header.
                let pseudo = if ipv6 {
                    out[4..6].copy_from_slice(&((seg_len - 40) as u16).to_be_bytes());
                    let mut s = sum(0, &out[8..40]);
                    s += (seg_len - l4) as u64;
                    s + if tcp { PROTO_TCP } else { PROTO_UDP } as u64
                } else {
                    let ihl = l4;
                    out[2..4].copy_from_slice(&(seg_len as u16).to_be_bytes());
                    let id = u16::from_be_bytes([out[4], out[5]]).wrapping_add(i as u16);
                    out[4..6].copy_from_slice(&id.to_be_bytes());
                    out[10..12].copy_from_slice(&[0, 0]);
                    let c = fold(sum(0, &out[..ihl]));
                    out[10..12].copy_from_slice(&c.to_be_bytes());
                    let mut s = sum(0, &out[12..20]);
                    s += (seg_len - l4) as u64;
                    s + if tcp { PROTO_TCP } else { PROTO_UDP } as u64
                };
                // The transport header.
                let check_at = if tcp {
                    let th = &mut out[l4..];
                    let seq = u32::from_be_bytes([th[4], th[5], th[6], th[7]])
                        .wrapping_add((i * gso_size) as u32);
                    th[4..8].copy_from_slice(&seq.to_be_bytes());
                    if i + 1 < count {
                        th[13] &= !(TCP_FIN | TCP_PSH);
                    }
                    if i > 0 {
                        th[13] &= !TCP_CWR;
                    }
                    l4 + 16
                } else {
                    out[l4 + 4..l4 + 6].copy_from_slice(&((seg_len - l4) as u16).to_be_bytes());
                    l4 + 6
                };
                out[check_at..check_at + 2].copy_from_slice(&[0, 0]);
                let c = fold(sum(pseudo + payload, &out[l4..hdr_len]));
                // 0 means "no checksum" to UDP; 0xffff is the same value in ones' complement for TCP.
                let c = if c == 0 { 0xffff } else { c };
                out[check_at..check_at + 2].copy_from_slice(&c.to_be_bytes());
                seg_len
            }
        }
    }
}

/// The packet's length by its IP header.
fn ip_len(pkt: &[u8]) -> Result<usize, GsoError> {
    let len = match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => u16::from_be_bytes([pkt[2], pkt[3]]) as usize,
        Some(6) if pkt.len() >= 40 => 40 + u16::from_be_bytes([pkt[4], pkt[5]]) as usize,
        _ => return Err(GsoError::BadHeaders),
    };
    if len > pkt.len() || len < 20 {
        return Err(GsoError::BadHeaders);
    }
    Ok(len)
}

/// The transport header's offset and protocol of an IPv4 packet of `len` octets.
fn ipv4_transport(pkt: &[u8], len: usize) -> Result<(usize, u8), GsoError> {
    let ihl = (pkt[0] & 0x0f) as usize * 4;
    if ihl < 20 || ihl > len {
        return Err(GsoError::BadHeaders);
    }
    // More fragments, or a fragment offset: not a segmentable packet.
    if u16::from_be_bytes([pkt[6], pkt[7]]) & 0x3fff != 0 {
        return Err(GsoError::TypeMismatch);
    }
    Ok((ihl, pkt[9]))
}

/// The transport header's offset and protocol of an IPv6 packet of `len` octets, past the extension headers
/// that can be copied into every segment.
fn ipv6_transport(pkt: &[u8], len: usize) -> Result<(usize, u8), GsoError> {
    let mut next = pkt[6];
    let mut at = 40;
    for _ in 0..MAX_EXTENSIONS {
        match next {
            PROTO_TCP | PROTO_UDP if at <= len => return Ok((at, next)),
            PROTO_TCP | PROTO_UDP => return Err(GsoError::BadHeaders),
            IPV6_HOP_BY_HOP | IPV6_DEST_OPTS => {
                if at + 8 > len {
                    return Err(GsoError::BadHeaders);
                }
                next = pkt[at];
                at += (pkt[at + 1] as usize + 1) * 8;
            }
            _ => return Err(GsoError::UnsupportedExtension),
        }
    }
    match next {
        PROTO_TCP | PROTO_UDP if at <= len => Ok((at, next)),
        PROTO_TCP | PROTO_UDP => Err(GsoError::BadHeaders),
        _ => Err(GsoError::UnsupportedExtension),
    }
}

/// The ones' complement sum (RFC 1071) of `data` as 16-bit big-endian words, added to `initial`, not folded.
/// Fine for any `data` up to 4 GiB.
#[inline]
pub fn sum(initial: u64, data: &[u8]) -> u64 {
    // The bulk in host byte order, 32-bit words into 64-bit accumulators (no carry is lost below 2^32 words);
    // the one's complement sum is byte-order independent (RFC 1071 2.B), so folding it to 16 bits and swapping
    // the bytes gives the big-endian sum. Sixteen independent accumulators over 64-octet blocks: a reduction
    // the compiler turns into wide loads and vector adds even for the baseline x86-64 target (one accumulator
    // over 4-octet words came out 8 octets per step, ~100 ns for a 1400-octet segment; this is ~45 ns).
    let mut blocks = data.chunks_exact(64);
    let mut lanes = [0u64; 16];
    for block in &mut blocks {
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64;
        }
    }
    let mut host: u64 = lanes.iter().sum();
    let mut words = blocks.remainder().chunks_exact(4);
    for w in &mut words {
        host += u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    let mut folded = host;
    while folded > 0xffff {
        folded = (folded & 0xffff) + (folded >> 16);
    }
    let mut acc = initial + u16::from_be(folded as u16) as u64;
    let mut rest = words.remainder().chunks_exact(2);
    for w in &mut rest {
        acc += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    if let [last] = rest.remainder() {
        acc += (*last as u64) << 8;
    }
    acc
}

/// Copies `src` into `dst` (of the same length) and returns [`sum`]`(initial, src)`: the segment copy and its
/// checksum in one pass over the octets (each 64-octet block is summed from the registers it is copied
/// through, instead of read again after the copy).
///
/// # Panics
/// If `dst` and `src` differ in length.
#[inline]
pub fn copy_sum(initial: u64, src: &[u8], dst: &mut [u8]) -> u64 {
    assert_eq!(src.len(), dst.len(), "copy_sum of unequal lengths");
    let mut blocks = src.chunks_exact(64);
    let mut out = dst.chunks_exact_mut(64);
    let mut lanes = [0u64; 16];
    for (block, to) in (&mut blocks).zip(&mut out) {
        let block: &[u8; 64] = block.try_into().expect("64 octets");
        to.copy_from_slice(block);
        for (lane, w) in lanes.iter_mut().zip(block.chunks_exact(4)) {
            *lane += u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64;
        }
    }
    let rest = blocks.remainder();
    out.into_remainder().copy_from_slice(rest);
    // The blocks' sum has an even length (a multiple of 64), so it adds to the rest's.
    let host: u64 = lanes.iter().sum();
    let mut folded = host;
    while folded > 0xffff {
        folded = (folded & 0xffff) + (folded >> 16);
    }
    sum(initial + u16::from_be(folded as u16) as u64, rest)
}

/// Folds a [`sum`] to 16 bits and complements it: the checksum to put in a header.
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::XorShift;
    use crate::vnet::{GSO_ECN, GSO_UDP};

    /// The RFC 1071 checksum, written independently of [`sum`]: 16-bit words, end-around carry each step.
    fn rfc1071(parts: &[&[u8]]) -> u16 {
        let bytes: Vec<u8> = parts.concat();
        let mut s: u32 = 0;
        let mut i = 0;
        while i < bytes.len() {
            let hi = bytes[i] as u32;
            let lo = bytes.get(i + 1).copied().unwrap_or(0) as u32;
            s += (hi << 8) | lo;
            s = (s & 0xffff) + (s >> 16);
            i += 2;
        }
        !(s as u16)
    }

    /// [`sum`]'s blocked accumulation against the RFC 1071 reference and `wire::checksum`: every length from
    /// 0 to 300 and the sizes the data path sees, at every alignment, with random and all-ones octets (the
    /// carry-heavy case) and an initial value.
    #[test]
    fn sum_matches_the_reference_at_every_length_and_alignment() {
        let mut rng = XorShift(0x0c5e_11a5_0000_0001);
        let random: Vec<u8> = (0..65_600).map(|_| rng.next() as u8).collect();
        let ones = vec![0xffu8; 65_600];
        let lengths = (0..=300).chain([1379, 1380, 1400, 8960, 9000, 65_535]);
        for len in lengths {
            for data in [&random, &ones] {
                for off in 0..8 {
                    let d = &data[off..off + len];
                    assert_eq!(fold(sum(0, d)), rfc1071(&[d]), "len {len} offset {off}");
                    assert_eq!(fold(sum(0, d)), crate::wire::checksum(0, d), "len {len}");
                    let initial = 0x1_2345u64;
                    let init_bytes = [0x00, 0x01, 0x23, 0x45];
                    if len % 2 == 0 {
                        assert_eq!(
                            fold(sum(initial, d)),
                            rfc1071(&[&init_bytes, d]),
                            "len {len}"
                        );
                    }
                }
            }
        }
    }

    /// [`copy_sum`] copies exactly and sums as [`sum`] and the RFC 1071 reference do, at every length and
    /// alignment of source and destination.
    #[test]
    fn copy_sum_copies_and_matches_the_reference() {
        let mut rng = XorShift(0x0c5e_11a5_0000_0002);
        let random: Vec<u8> = (0..66_000).map(|_| rng.next() as u8).collect();
        let ones = vec![0xffu8; 66_000];
        let mut dst = vec![0u8; 66_000];
        for len in (0..=300).chain([1379, 1380, 1400, 8960, 9000, 65_535]) {
            for data in [&random, &ones] {
                for (src_off, dst_off) in [(0, 0), (1, 0), (0, 3), (5, 2), (7, 7)] {
                    let src = &data[src_off..src_off + len];
                    let out = &mut dst[dst_off..dst_off + len];
                    out.fill(0x5a);
                    let s = copy_sum(0x1_2345, src, out);
                    assert_eq!(&out[..], src, "len {len}");
                    assert_eq!(fold(s), fold(sum(0x1_2345, src)), "len {len}");
                    if len % 2 == 0 {
                        let reference = rfc1071(&[&[0x00, 0x01, 0x23, 0x45], src]);
                        assert_eq!(fold(s), reference, "len {len} offsets {src_off}/{dst_off}");
                    }
                }
            }
        }
    }

    /// Whether the transport checksum of `seg` verifies (sums to 0 over pseudo-header + segment).
    fn transport_ok(seg: &[u8]) -> bool {
        let (pseudo, l4): (Vec<u8>, usize) = if seg[0] >> 4 == 4 {
            let ihl = (seg[0] & 15) as usize * 4;
            let l4len = (seg.len() - ihl) as u16;
            let mut p = seg[12..20].to_vec();
            p.extend_from_slice(&[0, seg[9]]);
            p.extend_from_slice(&l4len.to_be_bytes());
            (p, ihl)
        } else {
            let (l4, next) = ipv6_transport(seg, seg.len()).unwrap();
            let mut p = seg[8..40].to_vec();
            p.extend_from_slice(&((seg.len() - l4) as u32).to_be_bytes());
            p.extend_from_slice(&[0, 0, 0, next]);
            (p, l4)
        };
        rfc1071(&[&pseudo, &seg[l4..]]) == 0
    }

    fn ipv4_header_ok(seg: &[u8]) -> bool {
        let ihl = (seg[0] & 15) as usize * 4;
        rfc1071(&[&seg[..ihl]]) == 0
    }

    const SRC4: [u8; 4] = [192, 0, 2, 1];
    const DST4: [u8; 4] = [198, 51, 100, 2];
    const SRC6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const DST6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn payload(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| (i as u8).wrapping_mul(7).wrapping_add(seed))
            .collect()
    }

    /// A TCP header (20 octets + `options` NOPs) with `seq` and `flags`; checksum left as the kernel leaves a
    /// partial one (garbage here: it must be recomputed).
    fn tcp(seq: u32, flags: u8, options: usize) -> Vec<u8> {
        let doff = (20 + options) / 4;
        let mut t = vec![0u8; 20 + options];
        t[0..2].copy_from_slice(&40000u16.to_be_bytes());
        t[2..4].copy_from_slice(&5201u16.to_be_bytes());
        t[4..8].copy_from_slice(&seq.to_be_bytes());
        t[8..12].copy_from_slice(&77u32.to_be_bytes());
        t[12] = (doff as u8) << 4;
        t[13] = flags;
        t[14..16].copy_from_slice(&512u16.to_be_bytes());
        t[16..18].copy_from_slice(&[0xde, 0xad]);
        for b in &mut t[20..] {
            *b = 1;
        }
        t
    }

    fn udp(len: usize) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&4433u16.to_be_bytes());
        u[2..4].copy_from_slice(&443u16.to_be_bytes());
        u[4..6].copy_from_slice(&(len as u16).to_be_bytes());
        u[6..8].copy_from_slice(&[0x12, 0x34]);
        u
    }

    /// An IPv4 packet: `options` octets of IP options, then `l4` and `data`.
    fn v4(id: u16, proto: u8, options: usize, l4: &[u8], data: &[u8]) -> Vec<u8> {
        let ihl = 20 + options;
        let total = ihl + l4.len() + data.len();
        let mut p = vec![0u8; ihl];
        p[0] = 0x40 | (ihl / 4) as u8;
        p[1] = 0x02; // ECT(0)
        p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
        p[4..6].copy_from_slice(&id.to_be_bytes());
        p[6] = 0x40; // DF
        p[8] = 64;
        p[9] = proto;
        p[12..16].copy_from_slice(&SRC4);
        p[16..20].copy_from_slice(&DST4);
        for b in &mut p[20..] {
            *b = 1; // NOP options
        }
        p.extend_from_slice(l4);
        p.extend_from_slice(data);
        p
    }

    /// An IPv6 packet with `ext` (already chained: the first octet of each is its next header) then `l4` and
    /// `data`; `first` is the fixed header's next header.
    fn v6(first: u8, ext: &[u8], l4: &[u8], data: &[u8]) -> Vec<u8> {
        let plen = ext.len() + l4.len() + data.len();
        let mut p = vec![0u8; 40];
        p[0] = 0x60;
        p[1] = 0x01;
        p[2] = 0x23;
        p[3] = 0x45;
        p[4..6].copy_from_slice(&(plen as u16).to_be_bytes());
        p[6] = first;
        p[7] = 64;
        p[8..24].copy_from_slice(&SRC6);
        p[24..40].copy_from_slice(&DST6);
        p.extend_from_slice(ext);
        p.extend_from_slice(l4);
        p.extend_from_slice(data);
        p
    }

    fn gso(kind: u8, gso_size: u16, csum_start: u16, csum_offset: u16) -> VnetHdr {
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: kind,
            hdr_len: 9999, // a lie: never used
            gso_size,
            csum_start,
            csum_offset,
        }
    }

    fn segments(plan: &Plan, pkt: &[u8]) -> Vec<Vec<u8>> {
        (0..plan.count())
            .map(|i| {
                let mut out = vec![0xeeu8; plan.segment_len(i) + 7];
                let n = plan.write(pkt, i, &mut out);
                assert_eq!(n, plan.segment_len(i));
                assert!(out[n..].iter().all(|&b| b == 0xee), "wrote past its end");
                out.truncate(n);
                out
            })
            .collect()
    }

    #[test]
    fn tcpv4_segments_fields_flags_and_checksums() {
        let data = payload(4000, 3);
        // FIN + PSH + ACK + CWR + ECE on the super-packet.
        let flags = TCP_FIN | TCP_PSH | 0x10 | TCP_CWR | 0x40;
        let pkt = v4(0xfffe, PROTO_TCP, 0, &tcp(0xffff_ff00, flags, 12), &data);
        let plan = Plan::new(&gso(GSO_TCPV4 | GSO_ECN, 1448, 20, 16), &pkt).unwrap();
        assert!(plan.is_gso());
        assert_eq!(plan.count(), 3);
        assert_eq!(plan.max_segment_len(), 20 + 32 + 1448);
        let segs = segments(&plan, &pkt);
        let mut joined = Vec::new();
        for (i, s) in segs.iter().enumerate() {
            assert_eq!(u16::from_be_bytes([s[2], s[3]]) as usize, s.len());
            assert_eq!(
                u16::from_be_bytes([s[4], s[5]]),
                0xfffeu16.wrapping_add(i as u16),
                "IP ID of segment {i}"
            );
            assert_eq!(&s[6..10], &pkt[6..10], "DF, TTL, protocol kept");
            assert_eq!(s[1], 0x02, "ECN codepoint kept");
            assert!(ipv4_header_ok(s), "IP header checksum of segment {i}");
            assert!(transport_ok(s), "TCP checksum of segment {i}");
            let seq = u32::from_be_bytes(s[24..28].try_into().unwrap());
            assert_eq!(seq, 0xffff_ff00u32.wrapping_add(1448 * i as u32), "wraps");
            let f = s[33];
            assert_eq!(f & TCP_FIN != 0, i == 2, "FIN only on the last");
            assert_eq!(f & TCP_PSH != 0, i == 2, "PSH only on the last");
            assert_eq!(f & TCP_CWR != 0, i == 0, "CWR only on the first");
            assert_eq!(f & 0x50, 0x50, "ACK and ECE on all");
            assert_eq!(&s[20 + 20..20 + 32], &[1; 12], "TCP options copied");
            joined.extend_from_slice(&s[52..]);
        }
        assert_eq!(segs[2].len(), 52 + 4000 - 2 * 1448, "the last is short");
        assert_eq!(joined, data, "payload in order, byte-exact");
    }

    #[test]
    fn tcpv4_with_ip_options_is_segmented_generically() {
        let data = payload(3000, 9);
        let pkt = v4(7, PROTO_TCP, 8, &tcp(1, 0x18, 0), &data);
        let plan = Plan::new(&gso(GSO_TCPV4, 1000, 28, 16), &pkt).unwrap();
        let segs = segments(&plan, &pkt);
        assert_eq!(segs.len(), 3);
        for s in &segs {
            assert_eq!(s[0], 0x47);
            assert_eq!(&s[20..28], &[1; 8], "options copied");
            assert!(ipv4_header_ok(s));
            assert!(transport_ok(s));
        }
        // Exactly divisible: three full segments.
        assert!(segs.iter().all(|s| s.len() == 28 + 20 + 1000));
    }

    #[test]
    fn tcpv6_segments_with_and_without_extension_headers() {
        let data = payload(5000, 1);
        let plain = v6(PROTO_TCP, &[], &tcp(1000, 0x19, 0), &data);
        // Hop-by-hop (8 octets: next = dest opts) then destination options (16 octets: next = TCP).
        let mut ext = vec![IPV6_DEST_OPTS, 0, 1, 4, 0, 0, 0, 0];
        ext.extend_from_slice(&[PROTO_TCP, 1, 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        let with_ext = v6(IPV6_HOP_BY_HOP, &ext, &tcp(1000, 0x19, 0), &data);
        for (pkt, l4) in [(plain, 40usize), (with_ext, 64)] {
            let plan = Plan::new(&gso(GSO_TCPV6, 1220, l4 as u16, 16), &pkt).unwrap();
            assert_eq!(plan.count(), 5);
            let segs = segments(&plan, &pkt);
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert_eq!(u16::from_be_bytes([s[4], s[5]]) as usize, s.len() - 40);
                assert_eq!(&s[..4], &pkt[..4], "version, traffic class, flow label");
                assert_eq!(
                    &s[6..l4],
                    &pkt[6..l4],
                    "next header, hop limit, addresses, extensions"
                );
                assert!(transport_ok(s), "TCP checksum of segment {i}");
                let seq = u32::from_be_bytes(s[l4 + 4..l4 + 8].try_into().unwrap());
                assert_eq!(seq, 1000 + 1220 * i as u32);
                assert_eq!(s[l4 + 13] & TCP_FIN != 0, i == 4);
                joined.extend_from_slice(&s[l4 + 20..]);
            }
            assert_eq!(joined, data);
        }
    }

    #[test]
    fn udp_segmentation_offload_v4_and_v6() {
        let data = payload(3500, 5);
        let p4 = v4(100, PROTO_UDP, 0, &udp(8 + 3500), &data);
        let p6 = v6(PROTO_UDP, &[], &udp(8 + 3500), &data);
        for (pkt, l4) in [(p4, 20usize), (p6, 40)] {
            let plan = Plan::new(&gso(GSO_UDP_L4, 1200, l4 as u16, 6), &pkt).unwrap();
            assert_eq!(plan.count(), 3);
            let segs = segments(&plan, &pkt);
            let mut joined = Vec::new();
            for (i, s) in segs.iter().enumerate() {
                assert_eq!(
                    u16::from_be_bytes([s[l4 + 4], s[l4 + 5]]) as usize,
                    s.len() - l4,
                    "UDP length"
                );
                assert!(transport_ok(s), "UDP checksum of segment {i}");
                if l4 == 20 {
                    assert!(ipv4_header_ok(s));
                    assert_eq!(u16::from_be_bytes([s[4], s[5]]), 100 + i as u16);
                }
                joined.extend_from_slice(&s[l4 + 8..]);
            }
            assert_eq!(segs[2].len(), l4 + 8 + 1100);
            assert_eq!(joined, data);
        }
    }

    #[test]
    fn needs_csum_only_completes_the_checksum() {
        let data = payload(301, 2);
        for (mut pkt, start, offset) in [
            (
                v4(1, PROTO_TCP, 0, &tcp(5, 0x18, 0), &data),
                20usize,
                16usize,
            ),
            (v6(PROTO_UDP, &[], &udp(8 + 301), &data), 40, 6),
        ] {
            // As the kernel leaves it: the pseudo-header sum (not complemented) in the checksum field.
            let l4len = pkt.len() - start;
            let pseudo = if start == 20 {
                sum(l4len as u64 + PROTO_TCP as u64, &pkt[12..20])
            } else {
                sum(l4len as u64 + PROTO_UDP as u64, &pkt[8..40])
            };
            let partial = !fold(pseudo);
            pkt[start + offset..start + offset + 2].copy_from_slice(&partial.to_be_bytes());
            let hdr = VnetHdr {
                flags: F_NEEDS_CSUM,
                csum_start: start as u16,
                csum_offset: offset as u16,
                ..VnetHdr::default()
            };
            let plan = Plan::new(&hdr, &pkt).unwrap();
            assert!(!plan.is_gso());
            assert_eq!(plan.count(), 1);
            let segs = segments(&plan, &pkt);
            assert!(transport_ok(&segs[0]));
            assert_eq!(segs[0][..start + offset], pkt[..start + offset]);
            assert_eq!(segs[0][start + offset + 2..], pkt[start + offset + 2..]);
            // Finished where it lies (a read straight into the batch): the same octets.
            let mut in_place = pkt.clone();
            assert_eq!(plan.finish_in_place(&mut in_place), Some(pkt.len()));
            assert_eq!(in_place, segs[0]);
        }
    }

    #[test]
    fn plain_packets_are_copied_and_trailing_bytes_ignored() {
        let mut pkt = v4(1, PROTO_UDP, 0, &udp(12), &[1, 2, 3, 4]);
        let len = pkt.len();
        pkt.extend_from_slice(&[9, 9, 9]);
        let plan = Plan::new(&VnetHdr::default(), &pkt).unwrap();
        assert_eq!(plan.count(), 1);
        assert_eq!(segments(&plan, &pkt), vec![pkt[..len].to_vec()]);
        let mut in_place = pkt.clone();
        assert_eq!(plan.finish_in_place(&mut in_place), Some(len));
        assert_eq!(in_place, pkt, "left as it is");
    }

    #[test]
    fn one_segment_super_packet_and_empty_payload() {
        let pkt = v4(
            1,
            PROTO_TCP,
            0,
            &tcp(9, TCP_FIN | TCP_PSH | TCP_CWR | 0x10, 0),
            &[7; 100],
        );
        let plan = Plan::new(&gso(GSO_TCPV4, 1448, 20, 16), &pkt).unwrap();
        assert_eq!(plan.count(), 1);
        assert_eq!(
            plan.finish_in_place(&mut pkt.clone()),
            None,
            "segmented, not finished"
        );
        let s = &segments(&plan, &pkt)[0];
        assert_eq!(s[33], TCP_FIN | TCP_PSH | TCP_CWR | 0x10, "first and last");
        assert!(transport_ok(s) && ipv4_header_ok(s));
        let empty = v4(1, PROTO_TCP, 0, &tcp(9, 0x10, 0), &[]);
        let plan = Plan::new(&gso(GSO_TCPV4, 1448, 20, 16), &empty).unwrap();
        assert_eq!(plan.count(), 1);
        assert_eq!(segments(&plan, &empty)[0].len(), 40);
    }

    #[test]
    fn malformed_metadata_is_an_error() {
        let data = payload(3000, 0);
        let t4 = v4(1, PROTO_TCP, 0, &tcp(1, 0x10, 0), &data);
        let u4 = v4(1, PROTO_UDP, 0, &udp(3008), &data);
        let t6 = v6(PROTO_TCP, &[], &tcp(1, 0x10, 0), &data);
        let e = |h: VnetHdr, p: &[u8]| Plan::new(&h, p).unwrap_err();
        assert_eq!(e(gso(GSO_TCPV4, 0, 20, 16), &t4), GsoError::ZeroGsoSize);
        assert_eq!(e(gso(GSO_TCPV6, 1000, 20, 16), &t4), GsoError::TypeMismatch);
        assert_eq!(e(gso(GSO_TCPV4, 1000, 40, 16), &t6), GsoError::TypeMismatch);
        assert_eq!(e(gso(GSO_TCPV4, 1000, 20, 6), &u4), GsoError::TypeMismatch);
        assert_eq!(e(gso(GSO_UDP_L4, 1000, 20, 6), &t4), GsoError::TypeMismatch);
        assert_eq!(e(gso(GSO_UDP, 1000, 20, 6), &u4), GsoError::UnknownType);
        assert_eq!(e(gso(0x42, 1000, 20, 6), &u4), GsoError::UnknownType);
        assert_eq!(
            e(gso(GSO_TCPV4, 1000, 20, 6), &t4),
            GsoError::BadChecksumOffsets
        );
        assert_eq!(
            e(gso(GSO_TCPV4, 1000, 34, 16), &t4),
            GsoError::BadChecksumOffsets
        );
        let csum_only = |start: u16, offset: u16| VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: start,
            csum_offset: offset,
            ..VnetHdr::default()
        };
        assert_eq!(
            e(csum_only(t4.len() as u16 - 1, 0), &t4),
            GsoError::BadChecksumOffsets
        );
        assert_eq!(
            e(csum_only(u16::MAX, u16::MAX), &t4),
            GsoError::BadChecksumOffsets
        );
        // Truncated packets and lying lengths.
        assert_eq!(
            e(gso(GSO_TCPV4, 1000, 20, 16), &t4[..30]),
            GsoError::BadHeaders
        );
        assert_eq!(e(gso(GSO_TCPV4, 1000, 20, 16), &[]), GsoError::BadHeaders);
        let mut bad_doff = t4.clone();
        bad_doff[32] = 0x40;
        assert_eq!(
            e(gso(GSO_TCPV4, 1000, 20, 16), &bad_doff),
            GsoError::BadHeaders
        );
        let mut bad_ihl = t4.clone();
        bad_ihl[0] = 0x44;
        assert_eq!(
            e(gso(GSO_TCPV4, 1000, 20, 16), &bad_ihl),
            GsoError::BadHeaders
        );
        let mut fragment = t4.clone();
        fragment[6] = 0x20; // MF
        assert_eq!(
            e(gso(GSO_TCPV4, 1000, 20, 16), &fragment),
            GsoError::TypeMismatch
        );
        // A routing header (43) and a fragment header (44) are refused.
        for next in [43u8, 44] {
            let mut ext = vec![PROTO_TCP, 0, 0, 0, 0, 0, 0, 0];
            ext[0] = PROTO_TCP;
            let p = v6(next, &ext, &tcp(1, 0x10, 0), &data);
            assert_eq!(
                e(gso(GSO_TCPV6, 1000, 48, 16), &p),
                GsoError::UnsupportedExtension
            );
        }
        // An extension header that claims to run past the packet.
        let p = v6(
            IPV6_HOP_BY_HOP,
            &[PROTO_TCP, 200, 0, 0, 0, 0, 0, 0],
            &[],
            &[],
        );
        assert_eq!(e(gso(GSO_TCPV6, 1000, 48, 16), &p), GsoError::BadHeaders);
    }

    #[test]
    fn random_super_packets_round_trip_byte_exact() {
        let mut r = XorShift(0x9e37_79b9_7f4a_7c15);
        for round in 0..300 {
            let v6_ = r.below(2) == 1;
            let is_tcp = r.below(3) != 0;
            let data = payload(r.below(9000) + 1, round as u8);
            let gso_size = r.below(2000) as u16 + 1;
            let seq = r.next() as u32;
            let l4hdr = if is_tcp {
                tcp(seq, r.next() as u8, 4 * r.below(11))
            } else {
                udp(8 + data.len())
            };
            let proto = if is_tcp { PROTO_TCP } else { PROTO_UDP };
            let (pkt, l4) = if v6_ {
                (v6(proto, &[], &l4hdr, &data), 40)
            } else {
                let opts = 4 * r.below(11);
                (v4(r.next() as u16, proto, opts, &l4hdr, &data), 20 + opts)
            };
            let kind = match (is_tcp, v6_) {
                (true, false) => GSO_TCPV4,
                (true, true) => GSO_TCPV6,
                _ => GSO_UDP_L4,
            };
            let off = if is_tcp { 16 } else { 6 };
            let plan = Plan::new(&gso(kind, gso_size, l4 as u16, off), &pkt).unwrap();
            let hdr_len = l4 + l4hdr.len();
            assert_eq!(plan.count(), data.len().div_ceil(gso_size as usize));
            let mut joined = Vec::new();
            for (i, s) in segments(&plan, &pkt).iter().enumerate() {
                assert!(transport_ok(s), "round {round} segment {i}");
                if !v6_ {
                    assert!(ipv4_header_ok(s));
                }
                assert!(s.len() - hdr_len <= gso_size as usize);
                joined.extend_from_slice(&s[hdr_len..]);
            }
            assert_eq!(joined, data, "round {round}");
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut r = XorShift(12345);
        let mut out = vec![0u8; 70_000];
        for _ in 0..20_000 {
            let n = r.below(200);
            let mut pkt: Vec<u8> = (0..n).map(|_| r.next() as u8).collect();
            if let Some(b) = pkt.first_mut() {
                *b = if r.below(2) == 0 { 0x45 } else { 0x60 };
            }
            let hdr = VnetHdr {
                flags: r.below(2) as u8,
                gso_type: [0, 1, 3, 4, 5, 0x81][r.below(6)],
                hdr_len: r.next() as u16,
                gso_size: r.below(64) as u16,
                csum_start: r.below(80) as u16,
                csum_offset: r.below(20) as u16,
            };
            if let Ok(plan) = Plan::new(&hdr, &pkt) {
                for i in 0..plan.count() {
                    assert!(plan.write(&pkt, i, &mut out) <= out.len());
                }
            }
        }
    }
}
