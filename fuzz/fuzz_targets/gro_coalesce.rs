//! `gro::Gro` on arbitrary packets of arbitrary tunnels: never panics, writes every packet exactly once, and
//! every super-packet is consistent with the packets it names (restated independently here). Inputs are
//! records `[tag, fix, len_hi, len_lo, bytes...]`; with `fix` odd the harness repairs the IP length fields and
//! the TCP/UDP checksum first, so the fuzzer gets past the checks into the coalescing rules.

#![no_main]

use braid_dataplane::gro::{Gro, Output, MAX_SEGMENTS, MAX_SUPER_LEN};
use braid_dataplane::vnet::{VnetHdr, F_NEEDS_CSUM, VNET_HDR_LEN};
use libfuzzer_sys::fuzz_target;

fn checksum(mut sum: u64, data: &[u8]) -> u16 {
    for c in data.chunks(2) {
        sum += u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// Sets the length fields and the transport checksum of what looks like an IPv4/IPv6 TCP/UDP packet.
fn fix(p: &mut [u8]) {
    let len = p.len();
    let (ip_hdr, proto, pseudo_addrs) = match p.first().map(|b| b >> 4) {
        Some(4) if len >= 20 => {
            let ihl = (p[0] & 15) as usize * 4;
            p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            if ihl < 20 || ihl > len {
                return;
            }
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(0, &p[..ihl]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
            (ihl, p[9], p[12..20].to_vec())
        }
        Some(6) if len >= 40 => {
            p[4..6].copy_from_slice(&((len - 40) as u16).to_be_bytes());
            (40, p[6], p[8..40].to_vec())
        }
        _ => return,
    };
    let at = match proto {
        6 if len >= ip_hdr + 20 => ip_hdr + 16,
        17 if len >= ip_hdr + 8 => {
            p[ip_hdr + 4..ip_hdr + 6].copy_from_slice(&((len - ip_hdr) as u16).to_be_bytes());
            ip_hdr + 6
        }
        _ => return,
    };
    p[at..at + 2].copy_from_slice(&[0, 0]);
    let mut pseudo = pseudo_addrs;
    pseudo.extend_from_slice(&[0, proto]);
    pseudo.extend_from_slice(&((len - ip_hdr) as u16).to_be_bytes());
    let sum: u64 = pseudo
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]) as u64)
        .sum();
    let c = checksum(sum, &p[ip_hdr..]);
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
}

fuzz_target!(|data: &[u8]| {
    let mut pkts: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut rest = data;
    while rest.len() >= 4 && pkts.len() < 512 {
        let (tag, fixit) = (rest[0] as u32 % 3, rest[1] % 2 == 1);
        let len = (u16::from_be_bytes([rest[2], rest[3]]) as usize).min(rest.len() - 4);
        let mut p = rest[4..4 + len].to_vec();
        rest = &rest[4 + len..];
        if fixit {
            fix(&mut p);
        }
        pkts.push((tag, p));
    }
    let mut seen = vec![0u32; pkts.len()];
    let mut gro = Gro::new();
    let mut sink = |out: Output<'_>| match out {
        Output::Single(id) => seen[id as usize] += 1,
        Output::Super(s) => {
            let vh = VnetHdr::parse(s.header).unwrap();
            assert_eq!(vh.flags, F_NEEDS_CSUM);
            let hdr_len = s.header.len() - VNET_HDR_LEN;
            assert_eq!(vh.hdr_len as usize, hdr_len);
            assert!(matches!(vh.csum_start, 20 | 40));
            assert_eq!(vh.csum_offset, if s.udp { 6 } else { 16 });
            assert!(s.pieces.len() >= 2 && s.pieces.len() <= MAX_SEGMENTS);
            assert!(s.ip_len <= MAX_SUPER_LEN);
            let gso = vh.gso_size as usize;
            let mut total = hdr_len;
            let mut last_id = None;
            for (i, piece) in s.pieces.iter().enumerate() {
                seen[piece.id as usize] += 1;
                assert!(last_id < Some(piece.id), "pieces in arrival order");
                last_id = Some(piece.id);
                let (tag, p) = &pkts[piece.id as usize];
                assert_eq!(*tag, s.tag);
                assert_eq!(piece.start, hdr_len);
                assert_eq!(piece.end, p.len());
                let n = piece.end - piece.start;
                assert!(n > 0 && n <= gso);
                assert!(n == gso || i + 1 == s.pieces.len(), "only the last is short");
                // Same addresses and ports as the super-packet's header.
                let h = &s.header[VNET_HDR_LEN..];
                let (a, b) = if h[0] >> 4 == 4 { (12, 20) } else { (8, 40) };
                assert_eq!(p[a..b], h[a..b]);
                let l4 = vh.csum_start as usize;
                assert_eq!(p[l4..l4 + 4], h[l4..l4 + 4]);
                total += n;
            }
            assert_eq!(total, s.ip_len);
            let h = &s.header[VNET_HDR_LEN..];
            if h[0] >> 4 == 4 {
                assert_eq!(u16::from_be_bytes([h[2], h[3]]) as usize, s.ip_len);
                assert_eq!(checksum(0, &h[..20]), 0);
            } else {
                assert_eq!(u16::from_be_bytes([h[4], h[5]]) as usize + 40, s.ip_len);
            }
        }
    };
    for (id, (tag, p)) in pkts.iter().enumerate() {
        gro.push(id as u32, *tag, p, &mut sink);
    }
    gro.flush(&mut sink);
    assert!(seen.iter().all(|&n| n == 1), "every packet exactly once");
});
