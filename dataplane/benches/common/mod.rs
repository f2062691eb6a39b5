//! Tables and traffic shared by the FIB benches (`fib`, `forward`): the same seeds give the same tables, so
//! their figures can be compared.

// Each bench uses only some of these.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use braid_dataplane::{FibBuilder, NextHopGroup, Prefix};

/// splitmix64: deterministic, so every run measures the same table.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// `n` distinct random IPv4 prefixes, lengths /16 to /24 equally likely, spread over the whole address
/// space; prefix `i` gets `groups[i % groups.len()]`. Returns the builder and the prefixes in insertion order.
pub fn v4_table(n: usize, seed: u64, groups: &[Arc<NextHopGroup>]) -> (FibBuilder, Vec<Prefix>) {
    let mut rng = Rng(seed);
    let mut b = FibBuilder::new();
    let mut prefixes = Vec::with_capacity(n);
    while b.len() < n {
        let len = 16 + (rng.next() % 9) as u8;
        let addr = IpAddr::V4(Ipv4Addr::from(rng.next() as u32));
        let p = Prefix::new(addr, len).unwrap();
        let g = Arc::clone(&groups[b.len() % groups.len()]);
        if b.insert(p, g).is_none() {
            prefixes.push(p);
        }
    }
    (b, prefixes)
}

/// `n` distinct IPv6 prefixes under 2000::/4 of lengths /32, /40, /44, /48, /56 and /64.
pub fn v6_table(n: usize, seed: u64, groups: &[Arc<NextHopGroup>]) -> (FibBuilder, Vec<Prefix>) {
    let mut rng = Rng(seed);
    let mut b = FibBuilder::new();
    let mut prefixes = Vec::with_capacity(n);
    while b.len() < n {
        let len = [32u8, 40, 44, 48, 56, 64][(rng.next() % 6) as usize];
        let addr = (0x2000_u128 << 112) | (u128::from(rng.next()) << 48);
        let p = Prefix::new(IpAddr::V6(Ipv6Addr::from(addr)), len).unwrap();
        let g = Arc::clone(&groups[b.len() % groups.len()]);
        if b.insert(p, g).is_none() {
            prefixes.push(p);
        }
    }
    (b, prefixes)
}

/// `count` destinations inside random prefixes of `prefixes` (traffic goes where the routes are), host
/// bits random.
pub fn destinations(prefixes: &[Prefix], count: usize, seed: u64) -> Vec<IpAddr> {
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let p = prefixes[(rng.next() % prefixes.len() as u64) as usize];
            match p.addr() {
                IpAddr::V4(a) => {
                    let host = (rng.next() as u32)
                        .checked_shr(u32::from(p.len()))
                        .unwrap_or(0);
                    IpAddr::V4(Ipv4Addr::from(u32::from(a) | host))
                }
                IpAddr::V6(a) => {
                    let host = ((u128::from(rng.next()) << 64) | u128::from(rng.next()))
                        .checked_shr(u32::from(p.len()))
                        .unwrap_or(0);
                    IpAddr::V6(Ipv6Addr::from(u128::from(a) | host))
                }
            }
        })
        .collect()
}
