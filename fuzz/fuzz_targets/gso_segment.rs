//! `gso::Plan` on arbitrary virtio-net headers and packets (the first 10 octets are the header, as a TUN read
//! delivers it): never panics, and every packet it writes is as long as it says, no longer than the read, and
//! a segment of a super-packet carries the payload in order (the payloads of all segments joined are the
//! super-packet's payload) with transport checksums that verify.

#![no_main]

use braid_dataplane::gso::{fold, sum, Plan};
use braid_dataplane::vnet::{VnetHdr, VNET_HDR_LEN};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(hdr) = VnetHdr::parse(data) else {
        return;
    };
    let pkt = &data[VNET_HDR_LEN..];
    let Ok(plan) = Plan::new(&hdr, pkt) else {
        return;
    };
    let mut out = vec![0u8; 65536];
    let mut payload = Vec::new();
    let mut headers = None;
    for i in 0..plan.count() {
        let len = plan.write(pkt, i, &mut out);
        assert_eq!(len, plan.segment_len(i));
        assert!(len <= pkt.len() || plan.is_gso());
        assert!(len <= plan.max_segment_len());
        let seg = &out[..len];
        if plan.is_gso() {
            let (l4, proto) = transport(seg);
            let hdr_len = headers.get_or_insert_with(|| {
                if proto == 6 {
                    l4 + (seg[l4 + 12] >> 4) as usize * 4
                } else {
                    l4 + 8
                }
            });
            payload.extend_from_slice(&seg[*hdr_len..]);
            assert_eq!(fold(pseudo(seg, l4, proto) + sum(0, &seg[l4..])), 0);
            if seg[0] >> 4 == 4 {
                assert_eq!(fold(sum(0, &seg[..l4])), 0, "IPv4 header checksum");
            }
        }
    }
    if let Some(hdr_len) = headers {
        let ip_len = if pkt[0] >> 4 == 4 {
            u16::from_be_bytes([pkt[2], pkt[3]]) as usize
        } else {
            40 + u16::from_be_bytes([pkt[4], pkt[5]]) as usize
        };
        assert_eq!(payload, &pkt[hdr_len..ip_len]);
    }
});

/// The transport header's offset and protocol of a segment (IPv6: past hop-by-hop and destination options).
fn transport(seg: &[u8]) -> (usize, u8) {
    if seg[0] >> 4 == 4 {
        return ((seg[0] & 15) as usize * 4, seg[9]);
    }
    let (mut next, mut at) = (seg[6], 40);
    while next == 0 || next == 60 {
        next = seg[at];
        at += (seg[at + 1] as usize + 1) * 8;
    }
    (at, next)
}

/// The pseudo-header sum of a segment whose transport header is at `l4`.
fn pseudo(seg: &[u8], l4: usize, proto: u8) -> u64 {
    let l4_len = (seg.len() - l4) as u64;
    if seg[0] >> 4 == 4 {
        sum(l4_len + proto as u64, &seg[12..20])
    } else {
        sum(l4_len + proto as u64, &seg[8..40])
    }
}
