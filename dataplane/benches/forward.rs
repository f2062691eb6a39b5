//! Per-packet cost of the forwarding decision: FIB lookup + flow hash + pick.
//!
//! For each packet of a batch of real IPv4 TCP packets (built once with etherparse, one per destination, with
//! varying ports): [`flow_hash`] of the packet, [`Fib::lookup`] of its destination address, and
//! [`pick`] among the matched group's active members. The tables are the `fib` bench's (1,000 and
//! 1,000,000 random IPv4 prefixes, /16 to /24, same seeds); every prefix maps to one of four shared
//! 4-member [`NextHopGroup`]s, with equal weights (`equal`, where `pick` skips the `ln`) or weights
//! 1000/1000/250/250 (`weighted`). Throughput is in packets, so criterion's time per element is the
//! per-packet cost. The build time of a 1M-prefix FIB is in the `fib` bench (`fib_build`).
//!
//! Measured on the shared 2-core AMD EPYC VM (ranges over runs; before = the per-length hash FIB):
//! 1k equal 76-80 ns per packet (167-177 before), 1k weighted 125-126 ns (204-214), 1M equal 119-125 ns
//! (281-531), 1M weighted 180-187 ns (392-611).
//!
//! Run: `cargo bench -p braid-dataplane --bench forward`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

use braid_dataplane::flow::flow_hash;
use braid_dataplane::scheduler::pick;
use braid_dataplane::{Fib, FibCell, Member, NextHopGroup};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use etherparse::PacketBuilder;

mod common;
use common::{destinations, v4_table, Rng};

/// Packets per criterion iteration.
const BATCH: usize = 4096;

/// The gateway's flow-hash seed.
const SEED: u64 = 0x5eed_b4a1_d000_0001;

/// Four groups of four tunnels each (tunnels 0-3, 4-7, ...), all with the given member weights.
fn groups(weights: [u32; 4]) -> Vec<Arc<NextHopGroup>> {
    (0..4u32)
        .map(|g| {
            let members = (0..4u32)
                .map(|i| Member {
                    tunnel: 4 * g + i,
                    weight: weights[i as usize],
                    backup: false,
                })
                .collect();
            Arc::new(NextHopGroup::new(members).unwrap())
        })
        .collect()
}

/// One IPv4 TCP packet (20-byte header, 20-byte TCP header, 24 bytes of payload) per destination, from
/// random ports of one source.
fn packets(dsts: &[IpAddr]) -> Vec<Vec<u8>> {
    let mut rng = Rng(7);
    dsts.iter()
        .map(|d| {
            let IpAddr::V4(d) = d else {
                unreachable!("IPv4 tables only")
            };
            let r = rng.next();
            let builder = PacketBuilder::ipv4([192, 0, 2, 10], d.octets(), 64).tcp(
                1024 + (r as u16 % 60_000),
                [443, 80, 22, 8080][(r >> 32) as usize % 4],
                r as u32,
                65_535,
            );
            let payload = [0x42u8; 24];
            let mut pkt = Vec::with_capacity(builder.size(payload.len()));
            builder.write(&mut pkt, &payload).unwrap();
            pkt
        })
        .collect()
}

/// The forwarding decision for every packet; returns a checksum of the chosen tunnels.
#[inline(never)]
fn forward_batch(fib: &Fib, pkts: &[Vec<u8>]) -> u64 {
    let mut sum = 0u64;
    for pkt in pkts {
        let Some(flow) = flow_hash(pkt, SEED) else {
            continue;
        };
        let dst = IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]));
        let Some(group) = fib.lookup(dst) else {
            continue;
        };
        if let Some(tunnel) = pick(group.active(), flow) {
            sum += u64::from(tunnel);
        }
    }
    sum
}

/// The same checksum, asserting that every packet hashes and matches a route.
fn routed_sum(fib: &Fib, pkts: &[Vec<u8>]) -> u64 {
    pkts.iter()
        .map(|pkt| {
            let flow = flow_hash(pkt, SEED).expect("a well-formed packet");
            let dst = IpAddr::V4(Ipv4Addr::new(pkt[16], pkt[17], pkt[18], pkt[19]));
            let group = fib.lookup(dst).expect("a routed destination");
            u64::from(pick(group.active(), flow).unwrap())
        })
        .sum()
}

fn forward(c: &mut Criterion) {
    let mut bench = c.benchmark_group("forward");
    bench.throughput(Throughput::Elements(BATCH as u64));
    for (size, n, seed) in [("ipv4_1k", 1_000, 1), ("ipv4_1m", 1_000_000, 2)] {
        for (kind, weights) in [
            ("equal", [1, 1, 1, 1]),
            ("weighted", [1000, 1000, 250, 250]),
        ] {
            let (builder, prefixes) = v4_table(n, seed, &groups(weights));
            let cell = FibCell::new(builder.build());
            drop(builder);
            let pkts = packets(&destinations(&prefixes, BATCH, 4));
            // Every packet is routed: the bench measures forwarding, not misses.
            assert_eq!(
                forward_batch(&cell.load(), &pkts),
                routed_sum(&cell.load(), &pkts)
            );
            // One snapshot load per batch, as a forwarding thread does.
            bench.bench_function(format!("{size}/{kind}"), |b| {
                b.iter(|| {
                    let fib = cell.load();
                    black_box(forward_batch(&fib, black_box(&pkts)))
                })
            });
        }
    }
    bench.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
