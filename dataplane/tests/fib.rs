//! The forwarding table: longest match for IPv4 and IPv6 against hand-written and randomized references,
//! next-hop group semantics, and publication to concurrent readers.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use braid_dataplane::{Fib, FibBuilder, FibCell, GroupError, Member, NextHopGroup, Prefix};

/// A small deterministic PRNG (splitmix64), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn group(tunnel: u32) -> Arc<NextHopGroup> {
    Arc::new(NextHopGroup::single(tunnel))
}

fn tunnel_of(fib: &Fib, dst: IpAddr) -> Option<u32> {
    fib.lookup(dst).map(|g| g.members()[0].tunnel)
}

/// The reference: the longest containing prefix by linear scan.
fn naive(routes: &[(Prefix, u32)], dst: IpAddr) -> Option<u32> {
    routes
        .iter()
        .filter(|(p, _)| p.contains(dst))
        .max_by_key(|(p, _)| p.len())
        .map(|(_, t)| *t)
}

#[test]
fn longest_match_wins_at_every_ipv4_length() {
    // One prefix of every length 0..=32 along the path of one address: each length must win for the
    // addresses it covers and its longer neighbour does not.
    let a: u32 = 0xc000_02a5; // 192.0.2.165
    let mut b = FibBuilder::new();
    for len in 0..=32u8 {
        b.insert(
            Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), len).unwrap(),
            group(u32::from(len)),
        );
    }
    let fib = b.build();
    assert_eq!(fib.len(), 33);
    assert_eq!(tunnel_of(&fib, IpAddr::V4(Ipv4Addr::from(a))), Some(32));
    for len in 0..32u8 {
        // Flip the bit just after the prefix: still inside the /len, outside the /len+1.
        let other = a ^ (1u32 << (31 - u32::from(len)));
        assert_eq!(
            tunnel_of(&fib, IpAddr::V4(Ipv4Addr::from(other))),
            Some(u32::from(len)),
            "address {} should match /{len}",
            Ipv4Addr::from(other)
        );
    }
    // IPv4 routes never answer IPv6 lookups.
    assert_eq!(tunnel_of(&fib, ip("2001:db8::1")), None);
}

#[test]
fn longest_match_wins_at_every_ipv6_length() {
    let a: u128 = 0x2001_0db8_1234_5678_9abc_def0_1357_9bdf;
    let mut b = FibBuilder::new();
    for len in 0..=128u8 {
        b.insert(
            Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), len).unwrap(),
            group(u32::from(len)),
        );
    }
    let fib = b.build();
    assert_eq!(fib.len(), 129);
    assert_eq!(tunnel_of(&fib, IpAddr::V6(Ipv6Addr::from(a))), Some(128));
    for len in 0..128u8 {
        let other = a ^ (1u128 << (127 - u32::from(len)));
        assert_eq!(
            tunnel_of(&fib, IpAddr::V6(Ipv6Addr::from(other))),
            Some(u32::from(len)),
            "address {} should match /{len}",
            Ipv6Addr::from(other)
        );
    }
    assert_eq!(tunnel_of(&fib, ip("192.0.2.1")), None);
}

#[test]
fn default_routes_per_family() {
    let mut b = FibBuilder::new();
    b.insert(p("0.0.0.0/0"), group(4));
    let fib = b.build();
    assert_eq!(tunnel_of(&fib, ip("203.0.113.9")), Some(4));
    assert_eq!(tunnel_of(&fib, ip("0.0.0.0")), Some(4));
    assert_eq!(tunnel_of(&fib, ip("255.255.255.255")), Some(4));
    assert_eq!(tunnel_of(&fib, ip("2001:db8::1")), None);

    b.insert(p("::/0"), group(6));
    b.insert(p("10.0.0.0/8"), group(10));
    let fib = b.build();
    assert_eq!(tunnel_of(&fib, ip("2001:db8::1")), Some(6));
    assert_eq!(tunnel_of(&fib, ip("::")), Some(6));
    assert_eq!(tunnel_of(&fib, ip("10.1.2.3")), Some(10));
    assert_eq!(tunnel_of(&fib, ip("11.1.2.3")), Some(4));
}

#[test]
fn empty_table_misses() {
    let fib = Fib::new();
    assert!(fib.is_empty());
    assert_eq!(fib.lookup(ip("192.0.2.1")), None);
    assert_eq!(fib.lookup(ip("2001:db8::1")), None);
    assert!(FibBuilder::new().build().lookup(ip("::1")).is_none());
}

#[test]
fn host_routes() {
    let mut b = FibBuilder::new();
    b.insert(p("169.254.10.0/30"), group(1));
    b.insert(Prefix::host(ip("169.254.10.2")), group(2));
    b.insert(p("fd00:10::/127"), group(3));
    b.insert(Prefix::host(ip("fd00:10::1")), group(4));
    let fib = b.build();
    assert_eq!(tunnel_of(&fib, ip("169.254.10.2")), Some(2));
    assert_eq!(tunnel_of(&fib, ip("169.254.10.1")), Some(1));
    assert_eq!(tunnel_of(&fib, ip("169.254.10.3")), Some(1));
    assert_eq!(tunnel_of(&fib, ip("169.254.10.4")), None);
    assert_eq!(tunnel_of(&fib, ip("fd00:10::1")), Some(4));
    assert_eq!(tunnel_of(&fib, ip("fd00:10::")), Some(3));
    assert_eq!(tunnel_of(&fib, ip("fd00:10::2")), None);
}

#[test]
fn remove_and_replace_through_to_builder() {
    let mut b = FibBuilder::new();
    b.insert(p("10.0.0.0/8"), group(1));
    b.insert(p("10.1.0.0/16"), group(2));
    b.insert(p("2001:db8::/32"), group(3));
    let old = b.build();
    assert_eq!(tunnel_of(&old, ip("10.1.2.3")), Some(2));

    let mut b = old.to_builder();
    assert_eq!(b.len(), 3);
    assert!(b.remove(&p("10.1.0.0/16")).is_some());
    assert!(b.remove(&p("10.1.0.0/16")).is_none());
    assert!(b.insert(p("2001:db8::/32"), group(5)).is_some());
    let new = b.build();
    assert_eq!(new.len(), 2);
    assert_eq!(tunnel_of(&new, ip("10.1.2.3")), Some(1));
    assert_eq!(tunnel_of(&new, ip("2001:db8::9")), Some(5));
    // The old table is untouched.
    assert_eq!(old.len(), 3);
    assert_eq!(tunnel_of(&old, ip("10.1.2.3")), Some(2));
    assert_eq!(tunnel_of(&old, ip("2001:db8::9")), Some(3));

    let listed: Vec<String> = new.iter().map(|(p, _)| p.to_string()).collect();
    assert_eq!(listed, ["10.0.0.0/8", "2001:db8::/32"]);
}

#[test]
fn groups_are_shared_not_copied() {
    let g = group(7);
    let mut b = FibBuilder::new();
    b.insert(p("10.0.0.0/8"), Arc::clone(&g));
    b.insert(p("fd00::/8"), Arc::clone(&g));
    let fib = b.build();
    assert!(Arc::ptr_eq(fib.lookup(ip("10.9.9.9")).unwrap(), &g));
    assert!(Arc::ptr_eq(fib.lookup(ip("fd00::9")).unwrap(), &g));
}

/// Prefixes clustered in a few /8s so that many of them nest, with lengths across the whole range.
fn random_v4(rng: &mut Rng) -> Prefix {
    let top = [10u32, 172, 192, 203][rng.below(4) as usize] << 24;
    let addr = top | (rng.next() as u32 & 0x00ff_ffff);
    let len = match rng.below(4) {
        0 => rng.below(33) as u8,
        _ => 8 + rng.below(25) as u8,
    };
    Prefix::new(IpAddr::V4(Ipv4Addr::from(addr)), len).unwrap()
}

fn random_v6(rng: &mut Rng) -> Prefix {
    let top = [0x2001_0db8u128, 0xfd00_0000][rng.below(2) as usize] << 96;
    let addr = top | (u128::from(rng.next()) << 32) | u128::from(rng.next() as u32);
    let len = match rng.below(4) {
        0 => rng.below(129) as u8,
        _ => 16 + rng.below(49) as u8,
    };
    Prefix::new(IpAddr::V6(Ipv6Addr::from(addr)), len).unwrap()
}

/// A lookup address: either inside a random route (so it matches at some depth) or anywhere.
fn probe_addr(rng: &mut Rng, routes: &[(Prefix, u32)]) -> IpAddr {
    let (pfx, _) = routes[rng.below(routes.len() as u64) as usize];
    let anywhere = rng.below(8) == 0;
    match pfx.addr() {
        IpAddr::V4(a) => {
            let host = rng.next() as u32;
            let keep = if pfx.is_empty() || anywhere {
                0
            } else {
                u32::MAX << (32 - u32::from(pfx.len()))
            };
            IpAddr::V4(Ipv4Addr::from((u32::from(a) & keep) | (host & !keep)))
        }
        IpAddr::V6(a) => {
            let host = (u128::from(rng.next()) << 64) | u128::from(rng.next());
            let keep = if pfx.is_empty() || anywhere {
                0
            } else {
                u128::MAX << (128 - u32::from(pfx.len()))
            };
            IpAddr::V6(Ipv6Addr::from((u128::from(a) & keep) | (host & !keep)))
        }
    }
}

#[test]
fn randomized_against_linear_reference() {
    let mut rng = Rng(0x5eed_f1b0);
    let mut b = FibBuilder::new();
    let mut reference: Vec<(Prefix, u32)> = Vec::new();
    for t in 0..4000u32 {
        let pfx = if t % 3 == 0 {
            random_v6(&mut rng)
        } else {
            random_v4(&mut rng)
        };
        b.insert(pfx, group(t));
        match reference.iter_mut().find(|(q, _)| *q == pfx) {
            Some(e) => e.1 = t,
            None => reference.push((pfx, t)),
        }
    }
    // Withdraw a tenth, as BGP would.
    for _ in 0..400 {
        let i = rng.below(reference.len() as u64) as usize;
        let (pfx, _) = reference.swap_remove(i);
        assert!(b.remove(&pfx).is_some());
    }
    let fib = b.build();
    assert_eq!(fib.len(), reference.len());
    let mut hits = 0;
    for _ in 0..20_000 {
        let dst = probe_addr(&mut rng, &reference);
        let want = naive(&reference, dst);
        assert_eq!(tunnel_of(&fib, dst), want, "lookup of {dst}");
        hits += usize::from(want.is_some());
    }
    // The probes exercise real matches, not only misses.
    assert!(hits > 15_000, "only {hits} hits");
}

#[test]
fn group_validation_and_backup_semantics() {
    let m = |tunnel, weight, backup| Member {
        tunnel,
        weight,
        backup,
    };
    assert_eq!(NextHopGroup::new(vec![]), Err(GroupError::Empty));
    assert_eq!(
        NextHopGroup::new(vec![m(1, 4, false), m(2, 0, false)]),
        Err(GroupError::ZeroWeight { tunnel: 2 })
    );

    // Primaries (ISP1) carry everything; prepended backups (ISP2) carry nothing.
    let g = NextHopGroup::new(vec![
        m(5, 1, true),
        m(1, 4, false),
        m(6, 1, true),
        m(2, 4, false),
    ])
    .unwrap();
    let active: Vec<u32> = g.active().iter().map(|m| m.tunnel).collect();
    assert_eq!(active, [1, 2]);
    assert_eq!(g.members().len(), 4);
    assert!(g.active().iter().all(|m| !m.backup));

    // When the primaries are gone, the backups take over.
    let g = NextHopGroup::new(vec![m(5, 1, true), m(6, 3, true)]).unwrap();
    let active: Vec<(u32, u32)> = g.active().iter().map(|m| (m.tunnel, m.weight)).collect();
    assert_eq!(active, [(5, 1), (6, 3)]);

    let g = NextHopGroup::single(9);
    assert_eq!(g.active(), [m(9, 1, false)]);
}

#[test]
fn readers_see_whole_snapshots_while_publishing() {
    // Snapshot `generation` maps every one of its prefixes to tunnel `generation`; a reader that sees two
    // tunnels within one snapshot has seen a torn table.
    const PREFIXES: u32 = 512;
    fn snapshot(generation: u32) -> Fib {
        let g = group(generation);
        let mut b = FibBuilder::new();
        for i in 0..PREFIXES {
            b.insert(
                Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i << 8))), 24).unwrap(),
                Arc::clone(&g),
            );
            b.insert(
                Prefix::new(
                    IpAddr::V6(Ipv6Addr::from(0xfd00_u128 << 112 | u128::from(i) << 64)),
                    64,
                )
                .unwrap(),
                Arc::clone(&g),
            );
        }
        // Generations alternate in size, so a mix of two would also show in `len`.
        if generation % 2 == 1 {
            b.insert(p("0.0.0.0/0"), Arc::clone(&g));
        }
        b.build()
    }

    const GENERATIONS: u32 = 200;
    let cell = Arc::new(FibCell::new(snapshot(0)));
    let readers: Vec<_> = (0..3)
        .map(|r| {
            let cell = Arc::clone(&cell);
            std::thread::spawn(move || {
                let mut last = 0;
                let mut batches = 0u64;
                // Read until the last generation shows up.
                while last != GENERATIONS {
                    let fib = cell.load();
                    let generation = tunnel_of(&fib, ip("10.0.0.1")).unwrap();
                    assert!(generation >= last, "reader {r} went back in time");
                    last = generation;
                    let want_len = 2 * PREFIXES as usize + (generation % 2) as usize;
                    assert_eq!(fib.len(), want_len);
                    for i in (0..PREFIXES).step_by(7) {
                        let v4 = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i << 8) | 9));
                        let v6 = IpAddr::V6(Ipv6Addr::from(
                            0xfd00_u128 << 112 | u128::from(i) << 64 | 9,
                        ));
                        assert_eq!(tunnel_of(&fib, v4), Some(generation));
                        assert_eq!(tunnel_of(&fib, v6), Some(generation));
                    }
                    batches += 1;
                }
                (last, batches)
            })
        })
        .collect();

    for generation in 1..=GENERATIONS {
        cell.publish(snapshot(generation));
    }
    for r in readers {
        let (last, batches) = r.join().unwrap();
        assert!(batches > 0);
        assert_eq!(last, GENERATIONS);
    }
    assert_eq!(cell.snapshot().len(), 2 * PREFIXES as usize);
}
