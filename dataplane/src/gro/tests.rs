//! The eligibility matrix and a random round trip, verified by an independent re-segmenter that does what the
//! kernel does with a super-packet, with RFC 1071 checksums from `crate::wire`.

use super::*;
use crate::testutil::XorShift;
use crate::vnet::{VnetHdr, GSO_NONE};
use crate::wire::checksum;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const PSH: u8 = 0x08;
const ACK: u8 = 0x10;
const URG: u8 = 0x20;
const ECE: u8 = 0x40;
const CWR: u8 = 0x80;

const ON: Offloads = Offloads {
    tcp: true,
    udp: true,
};

#[derive(Clone, Debug)]
struct Spec {
    v6: bool,
    udp: bool,
    src: u8,
    sport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
    id: u16,
    df: bool,
    ttl: u8,
    tos: u8,
    window: u16,
    opts: Vec<u8>,
    payload: Vec<u8>,
    /// Spoil the transport checksum.
    bad_csum: bool,
    /// IPv4 fragment offset/MF bits.
    frag: u16,
}

fn tcp4(seq: u32, len: usize) -> Spec {
    Spec {
        v6: false,
        udp: false,
        src: 1,
        sport: 40000,
        seq,
        ack: 777,
        flags: ACK,
        id: 100 + (seq / 1000) as u16,
        df: true,
        ttl: 64,
        tos: 0,
        window: 500,
        // NOP NOP timestamps.
        opts: vec![1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
        payload: (0..len).map(|i| (seq as usize + i) as u8).collect(),
        bad_csum: false,
        frag: 0,
    }
}

fn tcp6(seq: u32, len: usize) -> Spec {
    Spec {
        v6: true,
        ..tcp4(seq, len)
    }
}

fn udp4(n: u16, len: usize) -> Spec {
    Spec {
        udp: true,
        id: 300 + n,
        opts: vec![],
        payload: (0..len).map(|i| (i as u16 ^ n) as u8).collect(),
        ..tcp4(0, 0)
    }
}

fn pseudo(ip: &[u8], v6: bool, proto: u8, l4_len: usize) -> Vec<u8> {
    let mut p = Vec::new();
    if v6 {
        p.extend_from_slice(&ip[8..40]);
        p.extend_from_slice(&(l4_len as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, proto]);
    } else {
        p.extend_from_slice(&ip[12..20]);
        p.extend_from_slice(&[0, proto]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
    }
    p
}

/// The transport checksum of a finished packet (field zeroed first), as RFC 793/768 define it.
fn l4_checksum(pkt: &[u8], ip_hdr: usize, v6: bool, udp: bool) -> u16 {
    let proto = if udp { 17 } else { 6 };
    let at = ip_hdr + if udp { 6 } else { 16 };
    let mut data = pseudo(pkt, v6, proto, pkt.len() - ip_hdr);
    let mut l4 = pkt[ip_hdr..].to_vec();
    l4[at - ip_hdr..at - ip_hdr + 2].copy_from_slice(&[0, 0]);
    data.extend_from_slice(&l4);
    let c = checksum(0, &data);
    if udp && c == 0 {
        0xffff
    } else {
        c
    }
}

fn build(s: &Spec) -> Vec<u8> {
    let l4_hdr = if s.udp { 8 } else { 20 + s.opts.len() };
    let l4_len = l4_hdr + s.payload.len();
    let mut p = Vec::new();
    if s.v6 {
        p.extend_from_slice(&[0x60 | (s.tos >> 4), s.tos << 4, 0x12, 0x34]);
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        p.push(if s.udp { 17 } else { 6 });
        p.push(s.ttl);
        p.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, s.src]);
        p.extend_from_slice(&[0x20, 1, 0xd, 0xb8, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9]);
    } else {
        p.extend_from_slice(&[0x45, s.tos]);
        p.extend_from_slice(&((20 + l4_len) as u16).to_be_bytes());
        p.extend_from_slice(&s.id.to_be_bytes());
        p.extend_from_slice(&(if s.df { 0x4000u16 } else { 0 } | s.frag).to_be_bytes());
        p.extend_from_slice(&[s.ttl, if s.udp { 17 } else { 6 }, 0, 0]);
        p.extend_from_slice(&[192, 0, 2, s.src, 198, 51, 100, 9]);
        let c = checksum(0, &p);
        p[10..12].copy_from_slice(&c.to_be_bytes());
    }
    let ip_hdr = p.len();
    p.extend_from_slice(&s.sport.to_be_bytes());
    p.extend_from_slice(&443u16.to_be_bytes());
    if s.udp {
        p.extend_from_slice(&(l4_len as u16).to_be_bytes());
        p.extend_from_slice(&[0, 0]);
    } else {
        p.extend_from_slice(&s.seq.to_be_bytes());
        p.extend_from_slice(&s.ack.to_be_bytes());
        p.push(((l4_hdr / 4) as u8) << 4);
        p.push(s.flags);
        p.extend_from_slice(&s.window.to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        p.extend_from_slice(&s.opts);
    }
    p.extend_from_slice(&s.payload);
    let c = l4_checksum(&p, ip_hdr, s.v6, s.udp) ^ if s.bad_csum { 0x0101 } else { 0 };
    let at = ip_hdr + if s.udp { 6 } else { 16 };
    p[at..at + 2].copy_from_slice(&c.to_be_bytes());
    p
}

/// What came out, with super-packets assembled (header and payload concatenated).
#[derive(Debug, PartialEq)]
enum Got {
    Single(u32),
    Super {
        ids: Vec<u32>,
        header: Vec<u8>,
        payload: Vec<u8>,
        tag: u32,
        ip_len: usize,
    },
}

impl Got {
    fn ids(&self) -> Vec<u32> {
        match self {
            Got::Single(id) => vec![*id],
            Got::Super { ids, .. } => ids.clone(),
        }
    }
}

fn coalesce_with(pkts: &[(u32, Vec<u8>)], offloads: Offloads) -> Vec<Got> {
    let mut gro = Gro::new();
    gro.set_offloads(offloads);
    let mut got = Vec::new();
    let mut sink = |o: Output<'_>| {
        got.push(match o {
            Output::Single(id) => Got::Single(id),
            Output::Super(s) => {
                let mut payload = Vec::new();
                for p in s.pieces {
                    payload.extend_from_slice(&pkts[p.id as usize].1[p.start..p.end]);
                }
                Got::Super {
                    ids: s.pieces.iter().map(|p| p.id).collect(),
                    header: s.header.to_vec(),
                    payload,
                    tag: s.tag,
                    ip_len: s.ip_len,
                }
            }
        })
    };
    for (i, (tag, p)) in pkts.iter().enumerate() {
        gro.push(i as u32, *tag, p, &mut sink);
    }
    gro.flush(&mut sink);
    got
}

fn coalesce(specs: &[Spec]) -> (Vec<(u32, Vec<u8>)>, Vec<Got>) {
    let pkts: Vec<(u32, Vec<u8>)> = specs.iter().map(|s| (0, build(s))).collect();
    let got = coalesce_with(&pkts, ON);
    (pkts, got)
}

fn shape(got: &[Got]) -> Vec<Vec<u32>> {
    got.iter().map(Got::ids).collect()
}

/// What the kernel does with a super-packet written with `NEEDS_CSUM` and a GSO type: checks the header, then
/// cuts the payload into `gso_size` pieces, each with the header, lengths, IPv4 ID (+1 each), TCP sequence
/// number, flags (PSH only on the last) and fresh checksums.
fn resegment(header: &[u8], payload: &[u8]) -> Vec<Vec<u8>> {
    let vh = VnetHdr::parse(header).unwrap();
    let hdrs = &header[VNET_HDR_LEN..];
    assert_eq!(vh.flags, F_NEEDS_CSUM);
    assert_eq!(
        hdrs.len(),
        vh.hdr_len as usize,
        "hdr_len is the header length"
    );
    let ip_hdr = vh.csum_start as usize;
    let v6 = hdrs[0] >> 4 == 6;
    let udp = match vh.gso_type {
        GSO_UDP_L4 => true,
        GSO_TCPV4 => {
            assert!(!v6);
            false
        }
        GSO_TCPV6 => {
            assert!(v6);
            false
        }
        other => panic!("gso_type {other}"),
    };
    assert_eq!(ip_hdr, if v6 { 40 } else { 20 });
    assert_eq!(vh.csum_offset, if udp { 6 } else { 16 });
    let total = hdrs.len() + payload.len();
    let l4_len = total - ip_hdr;
    if v6 {
        assert_eq!(u16::from_be_bytes([hdrs[4], hdrs[5]]) as usize, l4_len);
    } else {
        assert_eq!(u16::from_be_bytes([hdrs[2], hdrs[3]]) as usize, total);
        assert_eq!(checksum(0, &hdrs[..20]), 0, "IPv4 header checksum");
    }
    if udp {
        assert_eq!(
            u16::from_be_bytes([hdrs[24 - 20 + ip_hdr], hdrs[25 - 20 + ip_hdr]]) as usize,
            l4_len
        );
    }
    // The checksum field holds the pseudo-header sum (folded, not inverted) over the whole transport length.
    let at = ip_hdr + vh.csum_offset as usize;
    let field = u16::from_be_bytes([hdrs[at], hdrs[at + 1]]);
    assert_eq!(
        field,
        !checksum(0, &pseudo(hdrs, v6, if udp { 17 } else { 6 }, l4_len)),
        "pseudo-header sum"
    );
    let gso = vh.gso_size as usize;
    assert!(gso > 0);
    let n = payload.len().div_ceil(gso);
    let mut out = Vec::new();
    for (i, chunk) in payload.chunks(gso).enumerate() {
        let mut p = hdrs.to_vec();
        p.extend_from_slice(chunk);
        let l4 = p.len() - ip_hdr;
        if v6 {
            p[4..6].copy_from_slice(&(l4 as u16).to_be_bytes());
        } else {
            let len = p.len() as u16;
            p[2..4].copy_from_slice(&len.to_be_bytes());
            let id = u16::from_be_bytes([p[4], p[5]]).wrapping_add(i as u16);
            p[4..6].copy_from_slice(&id.to_be_bytes());
            p[10..12].copy_from_slice(&[0, 0]);
            let c = checksum(0, &p[..20]);
            p[10..12].copy_from_slice(&c.to_be_bytes());
        }
        if udp {
            p[ip_hdr + 4..ip_hdr + 6].copy_from_slice(&(l4 as u16).to_be_bytes());
        } else {
            let seq = u32::from_be_bytes(p[ip_hdr + 4..ip_hdr + 8].try_into().unwrap())
                .wrapping_add((i * gso) as u32);
            p[ip_hdr + 4..ip_hdr + 8].copy_from_slice(&seq.to_be_bytes());
            if i + 1 < n {
                p[ip_hdr + 13] &= !(PSH | FIN);
            }
        }
        let c = l4_checksum(&p, ip_hdr, v6, udp);
        p[at..at + 2].copy_from_slice(&c.to_be_bytes());
        out.push(p);
    }
    out
}

/// Every packet of `got`, re-segmented, in output order, each with its id.
fn expand(pkts: &[(u32, Vec<u8>)], got: &[Got]) -> Vec<(u32, Vec<u8>)> {
    let mut out = Vec::new();
    for g in got {
        match g {
            Got::Single(id) => out.push((*id, pkts[*id as usize].1.clone())),
            Got::Super {
                ids,
                header,
                payload,
                ip_len,
                ..
            } => {
                assert_eq!(*ip_len, header.len() - VNET_HDR_LEN + payload.len());
                let segs = resegment(header, payload);
                assert_eq!(segs.len(), ids.len());
                out.extend(ids.iter().copied().zip(segs));
            }
        }
    }
    out
}

/// Asserts that the re-segmented output is the input, packet by packet (IPv4 IDs and header checksum aside
/// where `ignore_ids`), and returns the output shape.
fn round_trip(specs: &[Spec], ignore_ids: bool) -> Vec<Vec<u32>> {
    let (pkts, got) = coalesce(specs);
    let mut seen: Vec<u32> = got.iter().flat_map(Got::ids).collect();
    seen.sort();
    assert_eq!(
        seen,
        (0..pkts.len() as u32).collect::<Vec<_>>(),
        "each packet once"
    );
    for (id, p) in expand(&pkts, &got) {
        let want = &pkts[id as usize].1;
        let mask = |x: &[u8]| {
            let mut x = x.to_vec();
            if ignore_ids && x[0] >> 4 == 4 {
                x[4..6].copy_from_slice(&[0, 0]);
                x[10..12].copy_from_slice(&[0, 0]);
            }
            x
        };
        assert_eq!(mask(&p), mask(want), "packet {id}");
    }
    shape(&got)
}

fn run_of(n: usize, size: usize, f: impl Fn(&mut Spec, usize)) -> Vec<Spec> {
    (0..n)
        .map(|i| {
            let mut s = tcp4((i * size) as u32 + 1000, size);
            s.id = 100 + i as u16;
            f(&mut s, i);
            s
        })
        .collect()
}

#[test]
fn tcp4_run_coalesces_into_one_super_packet() {
    let mut specs = run_of(10, 1000, |_, _| {});
    specs[9].payload.truncate(400);
    specs[9].flags = ACK | PSH;
    let (pkts, got) = coalesce(&specs);
    assert_eq!(shape(&got), vec![(0..10).collect::<Vec<u32>>()]);
    let Got::Super {
        header, payload, ..
    } = &got[0]
    else {
        panic!()
    };
    let vh = VnetHdr::parse(header).unwrap();
    assert_eq!(
        vh,
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4,
            hdr_len: 20 + 32,
            gso_size: 1000,
            csum_start: 20,
            csum_offset: 16,
        }
    );
    assert_eq!(payload.len(), 9400);
    assert_eq!(
        header[VNET_HDR_LEN + 20 + 13],
        ACK | PSH,
        "PSH of the last segment"
    );
    assert_eq!(
        u16::from_be_bytes([header[VNET_HDR_LEN + 4], header[VNET_HDR_LEN + 5]]),
        100,
        "the first packet's ID"
    );
    drop(pkts);
    round_trip(&specs, false);
}

#[test]
fn tcp6_run_coalesces() {
    let specs: Vec<Spec> = (0..5).map(|i| tcp6(i * 1200, 1200)).collect();
    let (_, got) = coalesce(&specs);
    let Got::Super { header, .. } = &got[0] else {
        panic!("{got:?}")
    };
    let vh = VnetHdr::parse(header).unwrap();
    assert_eq!(
        (vh.gso_type, vh.csum_start, vh.hdr_len),
        (GSO_TCPV6, 40, 72)
    );
    assert_eq!(round_trip(&specs, false), vec![vec![0, 1, 2, 3, 4]]);
}

#[test]
fn interleaved_flows_coalesce_separately_in_order() {
    let mut specs = Vec::new();
    for i in 0..4u32 {
        specs.push(tcp4(i * 1000, 1000));
        let mut b = tcp4(50_000 + i * 1000, 1000);
        b.sport = 40001;
        specs.push(b);
        let mut c = tcp6(i * 1000, 1000);
        c.src = 7;
        specs.push(c);
    }
    assert_eq!(
        round_trip(&specs, false),
        vec![vec![0, 3, 6, 9], vec![1, 4, 7, 10], vec![2, 5, 8, 11]]
    );
    // The tunnel (tag) is part of the flow.
    let pkts: Vec<(u32, Vec<u8>)> = (0..3)
        .map(|i| (i % 2, build(&tcp4(i * 1000, 1000))))
        .collect();
    assert_eq!(
        shape(&coalesce_with(&pkts, ON)),
        vec![vec![0], vec![1], vec![2]]
    );
}

#[test]
fn sequence_gaps_end_a_run() {
    let mut specs = run_of(5, 1000, |_, _| {});
    specs[3].seq += 1;
    specs[4].seq += 1;
    assert_eq!(round_trip(&specs, false), vec![vec![0, 1, 2], vec![3, 4]]);
    // A retransmission (going back) too.
    let mut specs = run_of(4, 1000, |_, _| {});
    specs[2] = specs[0].clone();
    specs[2].id = 102;
    assert_eq!(
        shape(&coalesce(&specs).1),
        vec![vec![0, 1], vec![2], vec![3]]
    );
}

#[test]
fn only_ack_and_a_final_psh_are_coalesced() {
    for flag in [
        SYN | ACK,
        FIN | ACK,
        RST | ACK,
        URG | ACK,
        ECE | ACK,
        CWR | ACK,
        0,
        PSH,
    ] {
        let mut specs = run_of(4, 1000, |_, _| {});
        specs[2].flags = flag;
        assert_eq!(
            round_trip(&specs, false),
            vec![vec![0, 1], vec![2], vec![3]],
            "flags {flag:#x}"
        );
    }
    // PSH ends the run it is in.
    let mut specs = run_of(5, 1000, |_, _| {});
    specs[1].flags = ACK | PSH;
    assert_eq!(round_trip(&specs, false), vec![vec![0, 1], vec![2, 3, 4]]);
    // A PSH packet on its own is written at once.
    let mut specs = run_of(1, 1000, |_, _| {});
    specs[0].flags = ACK | PSH;
    assert_eq!(round_trip(&specs, false), vec![vec![0]]);
}

#[test]
fn header_fields_must_match() {
    type Change = fn(&mut Spec);
    let cases: Vec<(&str, Change)> = vec![
        ("timestamp", |s| s.opts[11] = 3),
        ("options length", |s| s.opts = vec![1, 1, 1, 1]),
        ("ack", |s| s.ack += 1),
        ("window", |s| s.window += 1),
        ("ttl", |s| s.ttl = 63),
        ("tos", |s| s.tos = 0x02),
        ("df", |s| s.df = false),
    ];
    for (what, change) in cases {
        let specs = run_of(4, 1000, |s, i| {
            if i >= 2 {
                change(s)
            }
        });
        let got = round_trip(&specs, false);
        assert_eq!(got, vec![vec![0, 1], vec![2, 3]], "{what}");
    }
    // IPv6: traffic class and hop limit.
    for change in [|s: &mut Spec| s.tos = 0x20, |s: &mut Spec| s.ttl = 1] {
        let specs: Vec<Spec> = (0..4)
            .map(|i| {
                let mut s = tcp6(i * 1000, 1000);
                if i >= 2 {
                    change(&mut s);
                }
                s
            })
            .collect();
        assert_eq!(round_trip(&specs, false), vec![vec![0, 1], vec![2, 3]]);
    }
}

#[test]
fn segment_sizes() {
    // A shorter segment ends the run.
    let mut specs = run_of(4, 1000, |_, _| {});
    specs[1].payload.truncate(600);
    for s in &mut specs[2..] {
        s.seq -= 400;
    }
    assert_eq!(round_trip(&specs, false), vec![vec![0, 1], vec![2, 3]]);
    // A larger one cannot join.
    let specs = vec![tcp4(0, 500), tcp4(500, 1000), tcp4(1500, 1000)];
    assert_eq!(round_trip(&specs, false), vec![vec![0], vec![1, 2]]);
    // No payload: a pure ACK is never coalesced.
    let specs = vec![tcp4(0, 1000), tcp4(1000, 0), tcp4(1000, 1000)];
    assert_eq!(shape(&coalesce(&specs).1), vec![vec![0], vec![1], vec![2]]);
}

#[test]
fn limits_on_segments_and_length() {
    let specs = run_of(MAX_SEGMENTS + 3, 100, |_, _| {});
    let got = round_trip(&specs, false);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0].len(), MAX_SEGMENTS);
    // 1400-octet segments: at most 46 fit 64 KiB with 52 octets of headers.
    let specs = run_of(50, 1400, |_, _| {});
    let (_, g) = coalesce(&specs);
    let got = round_trip(&specs, false);
    assert_eq!(got[0].len(), (MAX_SUPER_LEN - 52) / 1400);
    for s in &g {
        if let Got::Super { ip_len, .. } = s {
            assert!(*ip_len <= MAX_SUPER_LEN);
        }
    }
}

#[test]
fn ipv4_ids_equal_or_incrementing() {
    // Incrementing (across the 16-bit wrap).
    let specs = run_of(4, 1000, |s, i| s.id = 65534u16.wrapping_add(i as u16));
    assert_eq!(round_trip(&specs, false), vec![vec![0, 1, 2, 3]]);
    // All equal with DF: coalesced; the kernel numbers the segments upwards, which DF makes harmless.
    let specs = run_of(4, 1000, |s, _| s.id = 7);
    assert_eq!(round_trip(&specs, true), vec![vec![0, 1, 2, 3]]);
    // All equal without DF: not.
    let specs = run_of(3, 1000, |s, _| {
        s.id = 7;
        s.df = false
    });
    assert_eq!(round_trip(&specs, false), vec![vec![0], vec![1], vec![2]]);
    // Equal, then incrementing: the mode is fixed by the second packet.
    let specs = run_of(4, 1000, |s, i| s.id = [7, 7, 8, 9][i]);
    assert_eq!(round_trip(&specs, true), vec![vec![0, 1], vec![2, 3]]);
    // Decreasing or jumping.
    let specs = run_of(3, 1000, |s, i| s.id = [9, 8, 20][i]);
    assert_eq!(round_trip(&specs, false), vec![vec![0], vec![1], vec![2]]);
}

#[test]
fn bad_checksums_are_written_alone() {
    let specs = run_of(5, 1000, |s, i| s.bad_csum = i == 2);
    assert_eq!(
        round_trip(&specs, false),
        vec![vec![0, 1], vec![2], vec![3, 4]]
    );
}

#[test]
fn udp_datagrams_of_one_flow() {
    let mut specs: Vec<Spec> = (0..6).map(|i| udp4(i, 1200)).collect();
    specs[5].payload.truncate(10);
    let (_, got) = coalesce(&specs);
    let Got::Super { header, .. } = &got[0] else {
        panic!("{got:?}")
    };
    let vh = VnetHdr::parse(header).unwrap();
    assert_eq!(
        (vh.gso_type, vh.gso_size, vh.csum_offset, vh.hdr_len),
        (GSO_UDP_L4, 1200, 6, 28)
    );
    assert_eq!(round_trip(&specs, false), vec![vec![0, 1, 2, 3, 4, 5]]);
    let v6: Vec<Spec> = (0..3)
        .map(|i| Spec {
            v6: true,
            ..udp4(i, 800)
        })
        .collect();
    assert_eq!(round_trip(&v6, false), vec![vec![0, 1, 2]]);
    // UDP off (the kernel refused USO): one by one, TCP still coalesced.
    let mut mixed: Vec<(u32, Vec<u8>)> = (0..3).map(|i| (0, build(&udp4(i, 800)))).collect();
    mixed.extend((0..3).map(|i| (0, build(&tcp4(i * 1000, 1000)))));
    let got = coalesce_with(
        &mixed,
        Offloads {
            tcp: true,
            udp: false,
        },
    );
    assert_eq!(shape(&got), vec![vec![0], vec![1], vec![2], vec![3, 4, 5]]);
    let none = coalesce_with(
        &mixed,
        Offloads {
            tcp: false,
            udp: false,
        },
    );
    assert_eq!(none.len(), 6);
}

#[test]
fn udp_without_checksum_is_not_coalesced() {
    let pkts: Vec<(u32, Vec<u8>)> = (0..3)
        .map(|i| {
            let mut p = build(&udp4(i, 500));
            p[26..28].copy_from_slice(&[0, 0]);
            (0, p)
        })
        .collect();
    assert_eq!(
        shape(&coalesce_with(&pkts, ON)),
        vec![vec![0], vec![1], vec![2]]
    );
}

#[test]
fn fragments_end_runs_between_the_same_hosts_and_icmp_ends_none() {
    let mut specs = run_of(2, 1000, |_, _| {});
    let mut other = tcp4(0, 1000);
    other.src = 2;
    specs.push(other.clone());
    let mut frag = udp4(0, 100);
    frag.frag = 0x2000; // MF
    specs.push(frag);
    specs.extend(run_of(4, 1000, |s, _| s.seq += 2000).into_iter().skip(2));
    other.seq = 1000;
    specs.push(other);
    // Packets: 0 1 (flow A), 2 (flow B), 3 (fragment A-hosts), 4 5 (flow A), 6 (flow B).
    assert_eq!(
        shape(&coalesce(&specs).1),
        vec![vec![0, 1], vec![3], vec![2, 6], vec![4, 5]]
    );
    // ICMP between the same hosts leaves the run alone.
    let mut pkts: Vec<(u32, Vec<u8>)> = (0..2).map(|i| (0, build(&tcp4(i * 1000, 1000)))).collect();
    let mut icmp = build(&udp4(0, 20));
    icmp[9] = 1;
    pkts.insert(1, (0, icmp));
    assert_eq!(shape(&coalesce_with(&pkts, ON)), vec![vec![1], vec![0, 2]]);
    // IPv4 options: never coalesced, and they end their flow's run.
    let mut with_options: Vec<(u32, Vec<u8>)> =
        (0..3).map(|i| (0, build(&tcp4(i * 1000, 1000)))).collect();
    let p = &mut with_options[2].1;
    p.splice(20..20, [1, 1, 1, 0]);
    p[0] = 0x46;
    let len = p.len() as u16;
    p[2..4].copy_from_slice(&len.to_be_bytes());
    assert_eq!(
        shape(&coalesce_with(&with_options, ON)),
        vec![vec![0, 1], vec![2]]
    );
}

#[test]
fn more_flows_than_runs_write_the_oldest() {
    // Flow 0 sends two segments, then flows 1..=MAX_RUNS one each: the last needs a run, flow 0's is written.
    let mut specs = run_of(2, 1000, |_, _| {});
    for f in 1..=MAX_RUNS as u16 {
        let mut s = tcp4(0, 1000);
        s.sport = 1000 + f;
        specs.push(s);
    }
    let got = round_trip(&specs, false);
    assert_eq!(got[0], vec![0, 1]);
    assert_eq!(got.len(), 1 + MAX_RUNS);
}

#[test]
fn garbage_never_panics() {
    let mut rng = XorShift(0x1234_5678_9abc_def1);
    let mut gro = Gro::new();
    let base = build(&tcp4(0, 64));
    for _ in 0..20_000 {
        let mut p = if rng.next() % 2 == 0 {
            base.clone()
        } else {
            (0..rng.below(120)).map(|_| rng.next() as u8).collect()
        };
        for _ in 0..rng.below(4) {
            if !p.is_empty() {
                let i = rng.below(p.len());
                p[i] = rng.next() as u8;
            }
        }
        let len = rng.below(p.len() + 1);
        gro.push(0, 0, &p[..len], &mut |_| {});
    }
    gro.flush(&mut |_| {});
}

/// Random flows (IPv4/IPv6, TCP/UDP), mostly well-behaved with occasional gaps, flag changes, short segments
/// and TTL changes, interleaved at random: whatever is coalesced re-segments to exactly the input, every
/// packet comes out once, and each flow's packets come out in order.
#[test]
fn random_round_trip() {
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut supers = 0;
    for _ in 0..300 {
        let flows = 1 + rng.below(12);
        let mut queues: Vec<Vec<Spec>> = Vec::new();
        let mut equal_ids = false;
        for f in 0..flows {
            let v6 = rng.next() % 2 == 0;
            let udp = rng.next() % 4 == 0;
            let size = [1, 100, 536, 1200, 1400, 1448][rng.below(6)];
            let same_id = !v6 && rng.next() % 4 == 0;
            equal_ids |= same_id;
            let mut seq = rng.next() as u32;
            let mut id = rng.next() as u16;
            let mut q = Vec::new();
            for n in 0..rng.below(80) {
                let mut s = if udp {
                    udp4(n as u16, size)
                } else {
                    tcp4(0, size)
                };
                s.v6 = v6;
                s.sport = 2000 + f as u16;
                s.src = (f % 3) as u8;
                s.seq = seq;
                s.id = id;
                match rng.below(40) {
                    0 => s.payload.truncate(rng.below(size)),
                    1 => s.flags |= PSH,
                    2 => s.flags = [SYN, FIN | ACK, RST, ECE | ACK][rng.below(4)],
                    3 => s.seq = s.seq.wrapping_add(1),
                    4 => s.ttl = 1,
                    5 => s.bad_csum = true,
                    _ => {}
                }
                seq = s.seq.wrapping_add(s.payload.len() as u32);
                if !same_id {
                    id = id.wrapping_add(1);
                }
                q.push(s);
            }
            queues.push(q);
        }
        let mut specs = Vec::new();
        let mut flow_of = Vec::new();
        let mut next = vec![0; flows];
        loop {
            let open: Vec<usize> = (0..flows).filter(|&f| next[f] < queues[f].len()).collect();
            if open.is_empty() {
                break;
            }
            let f = open[rng.below(open.len())];
            for _ in 0..1 + rng.below(6) {
                if next[f] < queues[f].len() {
                    specs.push(queues[f][next[f]].clone());
                    flow_of.push(f);
                    next[f] += 1;
                }
            }
        }
        let shape = round_trip(&specs, equal_ids);
        supers += shape.iter().filter(|s| s.len() > 1).count();
        let order: Vec<u32> = shape.concat();
        for f in 0..flows {
            let mine: Vec<u32> = order
                .iter()
                .copied()
                .filter(|&id| flow_of[id as usize] == f)
                .collect();
            assert!(mine.windows(2).all(|w| w[0] < w[1]), "flow {f} reordered");
        }
    }
    assert!(
        supers > 500,
        "only {supers} super-packets: the generator is too hostile"
    );
}

#[test]
fn single_packets_keep_a_zero_header_promise() {
    // A Single is the caller's packet untouched: check the plain header constant the engine writes.
    assert_eq!(VnetHdr::default().gso_type, GSO_NONE);
}
