//! Resilient hashing through the whole per-packet choice (real packets -> flow hash -> FIB lookup -> pick): a
//! test that tracks which flow uses which tunnel while a tunnel leaves a four-member group and comes back.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use braid_dataplane::flow::flow_hash;
use braid_dataplane::{scheduler, Fib, FibBuilder, Member, NextHopGroup, Prefix};
use etherparse::PacketBuilder;

/// 2,000 TCP and UDP flows from site A (192.0.2.0/25) to site B (192.0.2.128/25), plus fragments-style
/// other-protocol packets, as real IPv4 packets.
fn flows() -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for i in 0..2000u32 {
        let src = [192, 0, 2, 1 + (i % 100) as u8];
        let dst = [192, 0, 2, 129 + (i % 97) as u8];
        let mut p = Vec::new();
        let b = PacketBuilder::ipv4(src, dst, 64);
        if i % 2 == 0 {
            b.tcp(10_000 + (i as u16), 443, i, 65535)
                .write(&mut p, &[0u8; 100])
                .unwrap();
        } else {
            b.udp(20_000 + (i as u16), 4789)
                .write(&mut p, &[0u8; 60])
                .unwrap();
        }
        out.push(p);
    }
    out
}

fn fib(tunnels: &[u32]) -> Fib {
    let members = tunnels
        .iter()
        .map(|&t| Member {
            tunnel: t,
            weight: 1,
            backup: false,
        })
        .collect();
    let mut b = FibBuilder::new();
    b.insert(
        "192.0.2.128/25".parse::<Prefix>().unwrap(),
        Arc::new(NextHopGroup::new(members).unwrap()),
    );
    b.build()
}

/// Which tunnel each flow takes under `fib`.
fn placement(fib: &Fib, packets: &[Vec<u8>], seed: u64) -> Vec<u32> {
    packets
        .iter()
        .map(|p| {
            let dst = IpAddr::from([p[16], p[17], p[18], p[19]]);
            let group = fib.lookup(dst).expect("route");
            let hash = flow_hash(p, seed).expect("hashable");
            scheduler::pick(group.active(), hash).expect("a member")
        })
        .collect()
}

#[test]
fn removing_one_tunnel_of_four_moves_only_its_quarter_of_the_flows() {
    let packets = flows();
    let seed = 0x5eed_b2a1_d000_0001;
    let before = placement(&fib(&[0, 1, 2, 3]), &packets, seed);
    let mut per_tunnel: HashMap<u32, usize> = HashMap::new();
    for &t in &before {
        *per_tunnel.entry(t).or_default() += 1;
    }
    for t in 0..4 {
        let share = per_tunnel[&t] as f64 / packets.len() as f64;
        assert!(
            (0.20..=0.30).contains(&share),
            "tunnel {t} carries {share:.3}"
        );
    }

    // Tunnel 2 leaves (its BGP session went down).
    let after = placement(&fib(&[0, 1, 3]), &packets, seed);
    let mut moved = 0;
    for (i, (&b, &a)) in before.iter().zip(&after).enumerate() {
        if b == 2 {
            assert_ne!(a, 2, "flow {i} still on the removed tunnel");
            moved += 1;
        } else {
            assert_eq!(
                a, b,
                "flow {i} moved from tunnel {b} to {a} though {b} stayed"
            );
        }
    }
    let fraction = moved as f64 / packets.len() as f64;
    assert!(
        (0.20..=0.30).contains(&fraction),
        "about a quarter should move, {fraction:.3} did"
    );
    // The moved flows spread over the three survivors, not onto one of them.
    let mut landed: HashMap<u32, usize> = HashMap::new();
    for (&b, &a) in before.iter().zip(&after) {
        if b == 2 {
            *landed.entry(a).or_default() += 1;
        }
    }
    for t in [0, 1, 3] {
        let share = landed[&t] as f64 / moved as f64;
        assert!(
            (0.23..=0.43).contains(&share),
            "tunnel {t} took {share:.3} of the moved flows"
        );
    }

    // Tunnel 2 returns: exactly its old flows go back; the others never move.
    let again = placement(&fib(&[0, 1, 2, 3]), &packets, seed);
    assert_eq!(again, before);
}
