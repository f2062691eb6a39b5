//! FIB lookups per second with 1k and 1M random IPv4 prefixes (/16 to /24) and 10k IPv6 prefixes, and the
//! time to build a 1M-prefix table.
//!
//! Run: `cargo bench -p braid-dataplane --bench fib`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use braid_dataplane::{Fib, FibBuilder, FibCell, NextHopGroup, Prefix};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

/// splitmix64: deterministic, so every run measures the same table.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// Lookups per criterion iteration: one batch of destinations.
const BATCH: usize = 4096;

fn groups() -> Vec<Arc<NextHopGroup>> {
    (0..8).map(|t| Arc::new(NextHopGroup::single(t))).collect()
}

fn v4_table(n: usize, seed: u64) -> (FibBuilder, Vec<Prefix>) {
    let mut rng = Rng(seed);
    let groups = groups();
    let mut b = FibBuilder::new();
    let mut prefixes = Vec::with_capacity(n);
    while b.len() < n {
        let len = 16 + (rng.next() % 9) as u8;
        let addr = IpAddr::V4(Ipv4Addr::from(rng.next() as u32));
        let p = Prefix::new(addr, len).unwrap();
        if b.insert(p, Arc::clone(&groups[b.len() % 8])).is_none() {
            prefixes.push(p);
        }
    }
    (b, prefixes)
}

fn v6_table(n: usize, seed: u64) -> (FibBuilder, Vec<Prefix>) {
    let mut rng = Rng(seed);
    let groups = groups();
    let mut b = FibBuilder::new();
    let mut prefixes = Vec::with_capacity(n);
    while b.len() < n {
        let len = [32u8, 40, 44, 48, 56, 64][(rng.next() % 6) as usize];
        let addr = (0x2000_u128 << 112) | (u128::from(rng.next()) << 48);
        let p = Prefix::new(IpAddr::V6(Ipv6Addr::from(addr)), len).unwrap();
        if b.insert(p, Arc::clone(&groups[b.len() % 8])).is_none() {
            prefixes.push(p);
        }
    }
    (b, prefixes)
}

/// Destinations inside random routes of the table (traffic goes where the routes are), host bits random.
fn destinations(prefixes: &[Prefix], seed: u64) -> Vec<IpAddr> {
    let mut rng = Rng(seed);
    (0..BATCH)
        .map(|_| {
            let p = prefixes[(rng.next() % prefixes.len() as u64) as usize];
            match p.addr() {
                IpAddr::V4(a) => {
                    let host = (rng.next() as u32) >> p.len();
                    IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
                }
                IpAddr::V6(a) => {
                    let host = ((u128::from(rng.next()) << 64) | u128::from(rng.next())) >> p.len();
                    IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
                }
            }
        })
        .collect()
}

fn lookup_batch(fib: &Fib, dsts: &[IpAddr]) -> u64 {
    let mut sum = 0u64;
    for &d in dsts {
        if let Some(g) = fib.lookup(d) {
            sum += u64::from(g.active()[0].tunnel);
        }
    }
    sum
}

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("fib_lookup");
    group.throughput(Throughput::Elements(BATCH as u64));
    let cases: [(&str, (FibBuilder, Vec<Prefix>)); 3] = [
        ("ipv4_1k", v4_table(1_000, 1)),
        ("ipv4_1m", v4_table(1_000_000, 2)),
        ("ipv6_10k", v6_table(10_000, 3)),
    ];
    for (name, (builder, prefixes)) in cases {
        let cell = FibCell::new(builder.build());
        drop(builder);
        let dsts = destinations(&prefixes, 4);
        // One snapshot load per batch, as a forwarding thread does.
        group.bench_function(name, |b| {
            b.iter(|| {
                let fib = cell.load();
                black_box(lookup_batch(&fib, black_box(&dsts)))
            })
        });
    }
    group.finish();
}

fn build(c: &mut Criterion) {
    let mut group = c.benchmark_group("fib_build");
    group.sample_size(10);
    let (builder, _) = v4_table(1_000_000, 2);
    group.bench_function("ipv4_1m", |b| {
        b.iter_batched(|| (), |()| builder.build(), BatchSize::PerIteration)
    });
    group.finish();
}

criterion_group!(benches, lookups, build);
criterion_main!(benches);
