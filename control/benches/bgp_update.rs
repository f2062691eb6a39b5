//! UPDATE decode and encode throughput of the wire codec, in prefixes per second.
//!
//! - `decode/ipv4_500`: one UPDATE with 500 IPv4 /24s in the NLRI field and realistic eBGP attributes
//!   (ORIGIN, a 4-AS AS_PATH, NEXT_HOP, MED, three communities, a link-bandwidth extended community), as a
//!   full-table feeder sends them; 4-octet-ASN session.
//! - `decode/ipv4_500_2octet`: the same on a 2-octet-ASN session with a 4-octet ASN in the path (AS_PATH with
//!   AS_TRANS + AS4_PATH merge).
//! - `decode/ipv6_200`: one UPDATE with 200 IPv6 /48s in MP_REACH_NLRI (global + link-local next hop).
//! - `encode/ipv4_500`, `encode/ipv6_200`: `encode_announce` of the same prefixes and attributes (what the
//!   Adj-RIB-Out does), into a reused buffer.
//!
//! Run with `cargo bench -p braid-control --bench bgp_update`.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use braid_control::bgp::types::*;
use braid_control::bgp::wire::*;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn attrs(as_path: &[Asn]) -> PathAttributes {
    PathAttributes {
        origin: Origin::Igp,
        as_path: AsPath::from_sequence(as_path),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
        med: Some(100),
        local_pref: None,
        atomic_aggregate: false,
        aggregator: None,
        communities: vec![0xfde9_0064, 0xfde9_0065, 0xfde9_00c8],
        ext_communities: vec![ExtCommunity::new_link_bandwidth(65001, 125_000_000.0)],
        unknown: vec![],
    }
}

fn v4_prefixes(n: u32) -> Vec<Prefix> {
    (0..n)
        .map(|i| Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + (i << 8))), 24).unwrap())
        .collect()
}

fn v6_prefixes(n: u32) -> Vec<Prefix> {
    (0..n)
        .map(|i| {
            let a = Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(i) << 80));
            Prefix::new(IpAddr::V6(a), 48).unwrap()
        })
        .collect()
}

fn one_message(
    attrs: &PathAttributes,
    family: Family,
    nh: &[IpAddr],
    prefixes: &[Prefix],
    ctx: &Negotiated,
) -> Vec<u8> {
    let mut out = Vec::new();
    assert_eq!(
        encode_announce(attrs, family, nh, prefixes, ctx, &mut out),
        1
    );
    out
}

fn bench(c: &mut Criterion) {
    let four = Negotiated::default_for_tests();
    let two = Negotiated {
        four_octet_asn: false,
        ..four.clone()
    };
    let a4 = attrs(&[65001, 64512, 4_200_000_001, 65010]);
    let v4 = v4_prefixes(500);
    let v6 = v6_prefixes(200);
    let nh6: Vec<IpAddr> = vec!["2001:db8::1".parse().unwrap(), "fe80::1".parse().unwrap()];
    let a6 = PathAttributes {
        next_hop: None,
        ..a4.clone()
    };

    let msg4 = one_message(&a4, Family::Ipv4Unicast, &[], &v4, &four);
    let msg4_2 = one_message(&a4, Family::Ipv4Unicast, &[], &v4, &two);
    let msg6 = one_message(&a6, Family::Ipv6Unicast, &nh6, &v6, &four);
    for (m, ctx, n) in [
        (&msg4, &four, 500),
        (&msg4_2, &two, 500),
        (&msg6, &four, 200),
    ] {
        match decode(m, Some(ctx)) {
            Ok(Message::Update(u)) => {
                assert!(u.errors.is_empty());
                assert_eq!(u.nlri.len() + u.mp_reach.map_or(0, |r| r.nlri.len()), n);
            }
            other => panic!("{other:?}"),
        }
    }

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(500));
    g.bench_function("ipv4_500", |b| {
        b.iter(|| decode(black_box(&msg4), Some(&four)))
    });
    g.bench_function("ipv4_500_2octet", |b| {
        b.iter(|| decode(black_box(&msg4_2), Some(&two)))
    });
    g.throughput(Throughput::Elements(200));
    g.bench_function("ipv6_200", |b| {
        b.iter(|| decode(black_box(&msg6), Some(&four)))
    });
    g.finish();

    let mut g = c.benchmark_group("encode");
    let mut out = Vec::with_capacity(8192);
    g.throughput(Throughput::Elements(500));
    g.bench_function("ipv4_500", |b| {
        b.iter(|| {
            out.clear();
            encode_announce(
                black_box(&a4),
                Family::Ipv4Unicast,
                &[],
                black_box(&v4),
                &four,
                &mut out,
            )
        })
    });
    g.throughput(Throughput::Elements(200));
    g.bench_function("ipv6_200", |b| {
        b.iter(|| {
            out.clear();
            encode_announce(
                black_box(&a6),
                Family::Ipv6Unicast,
                &nh6,
                black_box(&v6),
                &four,
                &mut out,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
