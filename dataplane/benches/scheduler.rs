//! Per-packet cost of the multipath decision, without the FIB lookup: flow hash, member pick, shaper admit.
//!
//! - `flow_hash/ipv4_udp`, `flow_hash/ipv6_ext_udp`: the keyed 5-tuple hash of a 1400-byte IPv4 UDP packet,
//!   and of an IPv6 UDP packet behind a Hop-by-Hop and a Destination Options header.
//! - `pick/N`: weighted rendezvous choice among N members of unequal weights (2, 4, 8, 16), over changing
//!   flow hashes; `pick_equal_weights/N`: the same with equal weights (no `ln`).
//! - `pick_spray/4`: the per-packet weighted round robin among 4 members.
//! - `admit`: one token-bucket decision on a 1 Gbit/s uplink at a steady clock.
//!
//! Run with `cargo bench -p braid-dataplane --bench scheduler`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use braid_dataplane::flow::flow_hash;
use braid_dataplane::scheduler::{pick, pick_spray, Member};
use braid_dataplane::shaper::TokenBucket;
use criterion::{criterion_group, criterion_main, Criterion};

fn ipv4_udp() -> Vec<u8> {
    let mut p = vec![0u8; 1400];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&1400u16.to_be_bytes());
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&[10, 0, 0, 1]);
    p[16..20].copy_from_slice(&[10, 9, 0, 1]);
    p[20..22].copy_from_slice(&40000u16.to_be_bytes());
    p[22..24].copy_from_slice(&443u16.to_be_bytes());
    p
}

fn ipv6_ext_udp() -> Vec<u8> {
    let mut p = vec![0u8; 40 + 8 + 8 + 8 + 100];
    p[0] = 0x60;
    let payload = (p.len() - 40) as u16;
    p[4..6].copy_from_slice(&payload.to_be_bytes());
    p[6] = 0; // Hop-by-Hop
    p[7] = 64;
    p[8..10].copy_from_slice(&[0x20, 0x01]);
    p[24..26].copy_from_slice(&[0x20, 0x01]);
    p[39] = 2;
    p[40] = 60; // -> Destination Options
    p[48] = 17; // -> UDP
    p[56..58].copy_from_slice(&40000u16.to_be_bytes());
    p[58..60].copy_from_slice(&443u16.to_be_bytes());
    p
}

fn bench(c: &mut Criterion) {
    let v4 = ipv4_udp();
    let v6 = ipv6_ext_udp();
    assert!(flow_hash(&v6, 1).is_some());
    c.bench_function("flow_hash/ipv4_udp", |b| {
        b.iter(|| flow_hash(black_box(&v4), black_box(0x5eed)))
    });
    c.bench_function("flow_hash/ipv6_ext_udp", |b| {
        b.iter(|| flow_hash(black_box(&v6), black_box(0x5eed)))
    });

    for n in [2u32, 4, 8, 16] {
        let members: Vec<Member> = (0..n).map(|i| (100 + i, 1 + i % 3)).collect();
        let mut flow = 0u64;
        c.bench_function(&format!("pick/{n}"), |b| {
            b.iter(|| {
                flow = flow.wrapping_add(0x9e37_79b9_7f4a_7c15);
                pick(black_box(&members), flow)
            })
        });
    }
    for n in [4u32, 8] {
        let members: Vec<Member> = (0..n).map(|i| (100 + i, 250)).collect();
        let mut flow = 0u64;
        c.bench_function(&format!("pick_equal_weights/{n}"), |b| {
            b.iter(|| {
                flow = flow.wrapping_add(0x9e37_79b9_7f4a_7c15);
                pick(black_box(&members), flow)
            })
        });
    }
    let members: Vec<Member> = vec![(1, 4), (2, 4), (3, 1), (4, 1)];
    let mut counter = 0u64;
    c.bench_function("pick_spray/4", |b| {
        b.iter(|| {
            counter += 1;
            pick_spray(black_box(&members), counter)
        })
    });

    let start = Instant::now();
    let bucket = TokenBucket::new(1_000_000_000, 64 * 1024, start);
    let mut nanos = 0u64;
    c.bench_function("admit", |b| {
        b.iter(|| {
            // 1400-byte packets arriving at exactly the cap: 11.2 us apart.
            nanos += 11_200;
            bucket.admit(start + Duration::from_nanos(nanos), black_box(1400))
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
