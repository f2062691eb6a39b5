//! Views over the inner IP packets the data path carries, and the ICMP errors it originates.
//!
//! [`inspect`] checks an inner packet once (version, header and total length) and returns what forwarding
//! needs: version, source, destination, the real length and the IPv4 don't-fragment bit. After it succeeds, no
//! accessor here can panic. [`icmp_too_big`] writes an ICMPv4 "fragmentation needed" (RFC 792, RFC 1191) or
//! an ICMPv6 "packet too big" (RFC 4443 3.2) back towards the sender, so path-MTU discovery works through
//! braid.
//!
//! Left out: IPv6 extension-header walking (not needed to forward), IPv4 options beyond skipping them, and
//! IPv6 jumbograms (a TUN never carries them).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const IPV4_HEADER_LEN: usize = 20;
pub const IPV6_HEADER_LEN: usize = 40;
/// IP protocol numbers (IANA) the data path looks inside.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
/// TCP header flags (RFC 9293 3.1, RFC 3168 for CWR).
pub const TCP_FIN: u8 = 0x01;
pub const TCP_PSH: u8 = 0x08;
pub const TCP_ACK: u8 = 0x10;
pub const TCP_CWR: u8 = 0x80;
/// IPv6's minimum link MTU (RFC 8200 section 5): no ICMPv6 error may be longer.
pub const IPV6_MIN_MTU: usize = 1280;
/// RFC 1812 4.3.2.3: an ICMPv4 error carries as much of the original as fits in 576 bytes.
const ICMPV4_MAX_LEN: usize = 576;

/// What is wrong with an inner packet.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum InnerError {
    /// Too short for its header, or the version nibble is neither 4 nor 6.
    Malformed,
    /// The header's length field claims more bytes than arrived.
    BadLength,
}

/// The facts about an inner packet that forwarding needs.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Inner {
    pub version: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    /// The packet's own length from its header; bytes after it (e.g. TFC padding) are not part of it.
    pub len: usize,
    /// IPv4 DF bit; always true for IPv6, which routers never fragment.
    pub dont_fragment: bool,
    /// IPv4 protocol / IPv6 next header (first header only).
    pub protocol: u8,
}

/// Checks an inner IP packet and reads the fields forwarding needs.
pub fn inspect(pkt: &[u8]) -> Result<Inner, InnerError> {
    let first = *pkt.first().ok_or(InnerError::Malformed)?;
    match first >> 4 {
        4 => {
            if pkt.len() < IPV4_HEADER_LEN {
                return Err(InnerError::Malformed);
            }
            let ihl = (first & 0x0f) as usize * 4;
            let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
            if ihl < IPV4_HEADER_LEN || total < ihl {
                return Err(InnerError::Malformed);
            }
            if total > pkt.len() {
                return Err(InnerError::BadLength);
            }
            Ok(Inner {
                version: 4,
                src: IpAddr::V4(Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15])),
                dst: IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19])),
                len: total,
                dont_fragment: pkt[6] & 0x40 != 0,
                protocol: pkt[9],
            })
        }
        6 => {
            if pkt.len() < IPV6_HEADER_LEN {
                return Err(InnerError::Malformed);
            }
            let payload = u16::from_be_bytes([pkt[4], pkt[5]]) as usize;
            let total = IPV6_HEADER_LEN + payload;
            if total > pkt.len() {
                return Err(InnerError::BadLength);
            }
            let mut src = [0u8; 16];
            let mut dst = [0u8; 16];
            src.copy_from_slice(&pkt[8..24]);
            dst.copy_from_slice(&pkt[24..40]);
            Ok(Inner {
                version: 6,
                src: IpAddr::V6(Ipv6Addr::from(src)),
                dst: IpAddr::V6(Ipv6Addr::from(dst)),
                len: total,
                dont_fragment: true,
                protocol: pkt[6],
            })
        }
        _ => Err(InnerError::Malformed),
    }
}

/// The Internet checksum (RFC 1071) of `data`, folded, with `initial` as a partial sum (pseudo-header).
pub fn checksum(initial: u32, data: &[u8]) -> u16 {
    let mut sum = initial as u64;
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum += u16::from_be_bytes([c[0], c[1]]) as u64;
    }
    if let [last] = chunks.remainder() {
        sum += (*last as u64) << 8;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn ipv6_pseudo_header_sum(src: &Ipv6Addr, dst: &Ipv6Addr, len: usize, next: u8) -> u32 {
    let mut sum: u32 = 0;
    for c in src
        .octets()
        .chunks_exact(2)
        .chain(dst.octets().chunks_exact(2))
    {
        sum += u16::from_be_bytes([c[0], c[1]]) as u32;
    }
    sum += (len as u32 >> 16) + (len as u32 & 0xffff);
    sum += next as u32;
    sum
}

/// Writes into `out` an ICMP error telling the sender of `original` that it is larger than `mtu`:
/// ICMPv4 type 3 code 4 with the next-hop MTU (RFC 1191), or ICMPv6 type 2 (RFC 4443 3.2).
/// `from` is the error's source address (it must be of the same family as the original and must not be one
/// of the receiving host's own addresses, or Linux drops it as a martian). Returns the error's length, or
/// `None` if `out` is too small or the families differ. The error is never sent about an ICMP error.
pub fn icmp_too_big(
    original: &[u8],
    inner: &Inner,
    from: IpAddr,
    mtu: u32,
    out: &mut [u8],
) -> Option<usize> {
    match (inner.src, from) {
        (IpAddr::V4(dst), IpAddr::V4(src)) => {
            // Never answer an ICMP error with an error (RFC 1122 3.2.2): types 3, 4, 5, 11, 12.
            if inner.protocol == 1 {
                let ihl = (original[0] & 0x0f) as usize * 4;
                if let Some(&t) = original.get(ihl) {
                    if matches!(t, 3 | 4 | 5 | 11 | 12) {
                        return None;
                    }
                }
            }
            let quoted = original
                .len()
                .min(inner.len)
                .min(ICMPV4_MAX_LEN - IPV4_HEADER_LEN - 8);
            let total = IPV4_HEADER_LEN + 8 + quoted;
            let out = out.get_mut(..total)?;
            out[0] = 0x45;
            out[1] = 0xc0; // DSCP CS6: network control
            out[2..4].copy_from_slice(&(total as u16).to_be_bytes());
            out[4..6].copy_from_slice(&0u16.to_be_bytes());
            out[6..8].copy_from_slice(&0u16.to_be_bytes());
            out[8] = 64;
            out[9] = 1;
            out[10..12].copy_from_slice(&[0, 0]);
            out[12..16].copy_from_slice(&src.octets());
            out[16..20].copy_from_slice(&dst.octets());
            let hc = checksum(0, &out[..IPV4_HEADER_LEN]);
            out[10..12].copy_from_slice(&hc.to_be_bytes());
            let icmp = &mut out[IPV4_HEADER_LEN..];
            icmp[0] = 3;
            icmp[1] = 4;
            icmp[2..4].copy_from_slice(&[0, 0]);
            icmp[4..6].copy_from_slice(&[0, 0]);
            icmp[6..8].copy_from_slice(&(mtu.min(u16::MAX as u32) as u16).to_be_bytes());
            icmp[8..8 + quoted].copy_from_slice(&original[..quoted]);
            let c = checksum(0, &icmp[..8 + quoted]);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            Some(total)
        }
        (IpAddr::V6(dst), IpAddr::V6(src)) => {
            // ICMPv6 errors (types 0-127) are never answered with errors (RFC 4443 2.4 (e)).
            if inner.protocol == 58 {
                if let Some(&t) = original.get(IPV6_HEADER_LEN) {
                    if t < 128 {
                        return None;
                    }
                }
            }
            let quoted = original
                .len()
                .min(inner.len)
                .min(IPV6_MIN_MTU - IPV6_HEADER_LEN - 8);
            let payload = 8 + quoted;
            let total = IPV6_HEADER_LEN + payload;
            let out = out.get_mut(..total)?;
            out[0] = 0x60;
            out[1..4].copy_from_slice(&[0, 0, 0]);
            out[4..6].copy_from_slice(&(payload as u16).to_be_bytes());
            out[6] = 58;
            out[7] = 64;
            out[8..24].copy_from_slice(&src.octets());
            out[24..40].copy_from_slice(&dst.octets());
            let icmp = &mut out[IPV6_HEADER_LEN..];
            icmp[0] = 2;
            icmp[1] = 0;
            icmp[2..4].copy_from_slice(&[0, 0]);
            icmp[4..8].copy_from_slice(&mtu.to_be_bytes());
            icmp[8..8 + quoted].copy_from_slice(&original[..quoted]);
            let c = checksum(
                ipv6_pseudo_header_sum(&src, &dst, payload, 58),
                &icmp[..payload],
            );
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            Some(total)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{IcmpEchoHeader, Icmpv4Type, Icmpv6Type, PacketBuilder, SlicedPacket};

    fn v4_udp(len: usize, df: bool) -> Vec<u8> {
        let b = PacketBuilder::ipv4([192, 0, 2, 1], [198, 51, 100, 9], 64).udp(1000, 2000);
        let payload = vec![0xab; len - 28];
        let mut out = Vec::new();
        b.write(&mut out, &payload).unwrap();
        if df {
            out[6] |= 0x40;
            out[10] = 0;
            out[11] = 0;
            let c = checksum(0, &out[..20]);
            out[10..12].copy_from_slice(&c.to_be_bytes());
        }
        out
    }

    #[test]
    fn inspect_v4_and_v6() {
        let p = v4_udp(100, true);
        let i = inspect(&p).unwrap();
        assert_eq!(i.version, 4);
        assert_eq!(i.len, 100);
        assert!(i.dont_fragment);
        assert_eq!(i.src, "192.0.2.1".parse::<IpAddr>().unwrap());
        assert_eq!(i.protocol, 17);
        // Trailing bytes (TFC padding) are not part of the packet.
        let mut padded = p.clone();
        padded.extend_from_slice(&[0; 7]);
        assert_eq!(inspect(&padded).unwrap().len, 100);
        assert_eq!(inspect(&p[..99]), Err(InnerError::BadLength));
        assert_eq!(inspect(&p[..19]), Err(InnerError::Malformed));
        assert_eq!(inspect(&[]), Err(InnerError::Malformed));
        let mut bad = p.clone();
        bad[0] = 0x44; // IHL 4
        assert_eq!(inspect(&bad), Err(InnerError::Malformed));
        bad[0] = 0x55; // version 5
        assert_eq!(inspect(&bad), Err(InnerError::Malformed));

        let b = PacketBuilder::ipv6(
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .tcp(1, 2, 3, 1000);
        let mut v6 = Vec::new();
        b.write(&mut v6, &[1, 2, 3]).unwrap();
        let i = inspect(&v6).unwrap();
        assert_eq!(i.version, 6);
        assert_eq!(i.len, v6.len());
        assert_eq!(i.protocol, 6);
        assert_eq!(i.dst, "2001:db8::2".parse::<IpAddr>().unwrap());
        assert_eq!(inspect(&v6[..v6.len() - 1]), Err(InnerError::BadLength));
    }

    #[test]
    fn icmpv4_frag_needed_parses_and_quotes() {
        let p = v4_udp(1500, true);
        let i = inspect(&p).unwrap();
        let mut out = [0u8; 2048];
        let n = icmp_too_big(&p, &i, "198.51.100.9".parse().unwrap(), 1438, &mut out).unwrap();
        assert_eq!(n, 576);
        let s = SlicedPacket::from_ip(&out[..n]).unwrap();
        match s.transport.unwrap() {
            etherparse::TransportSlice::Icmpv4(icmp) => {
                assert_eq!(
                    icmp.icmp_type(),
                    Icmpv4Type::DestinationUnreachable(
                        etherparse::icmpv4::DestUnreachableHeader::FragmentationNeeded {
                            next_hop_mtu: 1438
                        }
                    )
                );
                // Checksums verify.
                assert_eq!(checksum(0, &out[20..n]), 0);
                assert_eq!(checksum(0, &out[..20]), 0);
                assert_eq!(&icmp.payload()[..20], &p[..20]);
            }
            other => panic!("not ICMPv4: {other:?}"),
        }
        assert_eq!(&out[16..20], &[192, 0, 2, 1]);
    }

    #[test]
    fn icmpv6_packet_too_big() {
        let src = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
        let b = PacketBuilder::ipv6(
            src,
            [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2],
            64,
        )
        .udp(5, 6);
        let mut p = Vec::new();
        b.write(&mut p, &[7u8; 1452]).unwrap();
        let i = inspect(&p).unwrap();
        let mut out = [0u8; 2048];
        let n = icmp_too_big(&p, &i, "2001:db8::2".parse().unwrap(), 1438, &mut out).unwrap();
        assert_eq!(n, IPV6_MIN_MTU);
        let s = SlicedPacket::from_ip(&out[..n]).unwrap();
        match s.transport.unwrap() {
            etherparse::TransportSlice::Icmpv6(icmp) => {
                assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu: 1438 });
                let ip = match s.net.unwrap() {
                    etherparse::NetSlice::Ipv6(ip) => ip,
                    _ => unreachable!(),
                };
                let want = icmp
                    .header()
                    .icmp_type
                    .calc_checksum(
                        ip.header().source(),
                        ip.header().destination(),
                        icmp.payload(),
                    )
                    .unwrap();
                assert_eq!(icmp.checksum(), want);
            }
            other => panic!("not ICMPv6: {other:?}"),
        }
    }

    #[test]
    fn no_error_about_an_error_or_across_families() {
        let b = PacketBuilder::ipv4([192, 0, 2, 1], [198, 51, 100, 9], 64).icmpv4(
            Icmpv4Type::DestinationUnreachable(etherparse::icmpv4::DestUnreachableHeader::Network),
        );
        let mut p = Vec::new();
        b.write(&mut p, &[0; 40]).unwrap();
        let i = inspect(&p).unwrap();
        let mut out = [0u8; 1024];
        assert!(icmp_too_big(&p, &i, "198.51.100.9".parse().unwrap(), 1000, &mut out).is_none());
        // An echo request is fine to answer.
        let b =
            PacketBuilder::ipv4([192, 0, 2, 1], [198, 51, 100, 9], 64).icmpv4_echo_request(1, 2);
        let mut p = Vec::new();
        b.write(&mut p, &[0; 40]).unwrap();
        let i = inspect(&p).unwrap();
        assert!(icmp_too_big(&p, &i, "198.51.100.9".parse().unwrap(), 1000, &mut out).is_some());
        assert!(icmp_too_big(&p, &i, "2001:db8::1".parse().unwrap(), 1000, &mut out).is_none());
        let _ = IcmpEchoHeader { id: 0, seq: 0 };
    }
}
