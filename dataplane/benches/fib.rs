//! FIB lookups per second with 1k and 1M random IPv4 prefixes (/16 to /24) and 10k IPv6 prefixes; the time
//! to build a 1M-prefix table from scratch (`fib_build/ipv4_1m`) and to add one route to a built 1M-prefix
//! table through `to_builder` (`fib_build/ipv4_1m_incremental`).
//!
//! Run: `cargo bench -p braid-dataplane --bench fib`.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use braid_dataplane::{Fib, FibCell, NextHopGroup, Prefix};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

mod common;
use common::{destinations, v4_table, v6_table};

/// Lookups per criterion iteration: one batch of destinations.
const BATCH: usize = 4096;

fn groups() -> Vec<Arc<NextHopGroup>> {
    (0..8).map(|t| Arc::new(NextHopGroup::single(t))).collect()
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
    let groups = groups();
    let cases: [(&str, (_, Vec<Prefix>)); 3] = [
        ("ipv4_1k", v4_table(1_000, 1, &groups)),
        ("ipv4_1m", v4_table(1_000_000, 2, &groups)),
        ("ipv6_10k", v6_table(10_000, 3, &groups)),
    ];
    for (name, (builder, prefixes)) in cases {
        let fib = builder.build();
        drop(builder);
        eprintln!(
            "fib_lookup/{name}: {} routes, {:.1} MiB",
            fib.len(),
            fib.heap_bytes() as f64 / f64::from(1 << 20)
        );
        let cell = FibCell::new(fib);
        let dsts = destinations(&prefixes, BATCH, 4);
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
    let groups = groups();
    let (builder, _) = v4_table(1_000_000, 2, &groups);
    group.bench_function("ipv4_1m", |b| {
        b.iter_batched(|| (), |()| builder.build(), BatchSize::PerIteration)
    });
    // One route more on a published 1M table, the way the control plane applies a BGP update: copy the
    // routes out, insert, build the next table (the old one is dropped outside the measurement).
    let fib = builder.build();
    drop(builder);
    let extra = Prefix::new("198.51.100.0".parse().unwrap(), 25).unwrap();
    group.bench_function("ipv4_1m_incremental", |b| {
        b.iter_batched(
            || (),
            |()| {
                let mut next = fib.to_builder();
                next.insert(extra, Arc::clone(&groups[0]));
                next.build()
            },
            BatchSize::PerIteration,
        )
    });
    group.finish();
}

criterion_group!(benches, lookups, build);
criterion_main!(benches);
