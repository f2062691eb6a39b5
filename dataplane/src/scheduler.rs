//! Which member of a next-hop group carries a packet: weighted, resilient per-flow choice, and an optional
//! per-packet spray.
//!
//! [`pick`] is weighted rendezvous hashing (highest random weight; Thaler and Ravishankar, "Using
//! name-based mappings to increase hit rates", 1998, with the weighted score of Schindelhauer and Schomaker,
//! "Weighted distributed hash tables", 2005): every member scores the flow with
//! `score = weight / -ln(u)`, where `u` in (0, 1) comes from hashing the flow with the member's tunnel id,
//! and the highest score wins. Because a member's score depends on nothing but the flow, its own id and its
//! own weight:
//! - a member's share of flows is `weight / total weight` (`-ln(u) / weight` is exponential with rate
//!   `weight`, and the least of several independent exponentials is the one of rate `w_i` with probability
//!   `w_i / sum w`);
//! - removing a member moves only the flows it carried, and adding one moves flows only onto it; flows on
//!   other members never move, so they are never reordered;
//! - the choice is deterministic and does not depend on the order of the members.
//!
//! The cost is one 64-bit mix and one `ln` per member per packet (just the mix when all weights are equal,
//! where the highest `u` wins), with no state and no table to rebuild when the group changes. A member of
//! weight 0 carries nothing (a drained member or a backup).
//!
//! [`pick_spray`] spreads packets rather than flows, by weight: it reorders packets within a flow, so it is for
//! links whose traffic tolerates that and is off unless the operator asks for it.
//!
//! [`FlowTable`] remembers which tunnel each live flow (by its [`FlowKey`]) took, so a flow stays on its
//! tunnel while that tunnel is in the group, even when members join (which [`pick`] alone would move some flows
//! onto). It is also a route cache: each slot carries the caller's stamp of the routing (FIB snapshot,
//! liveness) its tunnel was found under, and while the stamp is unchanged [`FlowTable::cached`] gives the
//! tunnel without a route lookup.
//!
//! Left out: preferring members whose uplink has headroom for *new* flows; that is the caller's, between a
//! [`FlowTable::lookup`] miss and [`FlowTable::remember`] (see `shaper::TokenBucket::headroom`).

use crate::flow::FlowKey;
use crate::sys::HugeArray;

/// Slots of a [`FlowTable`] (a power of two); a slot is one flow, 32 bytes (2 MiB a table).
pub const FLOW_SLOTS: usize = 1 << 16;
/// A flow idle this long is forgotten: its next packet is a new flow.
pub const FLOW_IDLE_S: u32 = 30;

/// One flow's tunnel, when the flow was last seen, and under which routing its tunnel was found. Aligned so
/// that a slot never straddles two cache lines.
#[derive(Copy, Clone, Default)]
#[repr(align(32))]
struct FlowSlot {
    key: FlowKey,
    /// Coarse seconds (the caller's clock) plus one; 0 = empty.
    seen: u32,
    tunnel: u16,
    /// The caller's stamp of its routing (FIB snapshot and liveness) when the tunnel was found or confirmed.
    route: u16,
}

/// Which tunnel each live flow took: a direct-mapped table by the flow key's index (a colliding flow takes
/// the slot over; the worst case is a flow placed again as if new). One per outbound worker: no lock.
pub struct FlowTable {
    /// On transparent huge pages where the kernel has them: slots are looked up at random.
    slots: HugeArray<FlowSlot>,
    /// Keys [`FlowKey::index`].
    seed: u64,
}

impl FlowTable {
    /// An empty table whose slots are chosen under `seed` (random per gateway, like the flow hash's).
    pub fn new(seed: u64) -> FlowTable {
        FlowTable {
            slots: HugeArray::new(FLOW_SLOTS, FlowSlot::default()),
            seed,
        }
    }

    /// Where flow `key`'s slot is.
    #[inline]
    fn index(&self, key: &FlowKey) -> usize {
        key.index(self.seed) as usize & (FLOW_SLOTS - 1)
    }

    #[inline]
    fn slot(&mut self, key: &FlowKey) -> &mut FlowSlot {
        let i = self.index(key);
        &mut self.slots[i]
    }

    /// Starts fetching flow `key`'s slot into the cache, for a [`cached`](Self::cached) or
    /// [`lookup`](Self::lookup) a little later (a slot of a large table is a cache miss more often than not).
    #[inline]
    pub fn prefetch(&self, key: &FlowKey) {
        crate::sys::prefetch(&self.slots[self.index(key)]);
    }

    /// The tunnel the flow `key` took, if it was seen within [`FLOW_IDLE_S`] of `now_s` and its tunnel was
    /// found or confirmed under the routing the caller stamps `route` (its FIB snapshot and liveness, which
    /// change the stamp whenever they change): then the route and the group's members need no look, since
    /// they are what they were. A hit counts as seen now.
    ///
    /// The key stands for the flow's destination here: an IPv4 key is the flow's tuple, so it does; two IPv6
    /// flows with one 64-bit keyed hash but different routes would share a tunnel (as likely as any 64-bit
    /// collision).
    #[inline]
    pub fn cached(&mut self, key: &FlowKey, now_s: u32, route: u16) -> Option<u32> {
        let now = now_s.saturating_add(1);
        let slot = self.slot(key);
        if slot.seen != 0
            && slot.key == *key
            && slot.route == route
            && now.saturating_sub(slot.seen) <= FLOW_IDLE_S
        {
            slot.seen = now;
            return Some(u32::from(slot.tunnel));
        }
        None
    }

    /// The tunnel the flow `key` took, if it was seen within [`FLOW_IDLE_S`] of `now_s` and that tunnel is
    /// still among `members` (the flow's group under the routing stamped `route`); a hit counts as seen now
    /// and confirms the tunnel under `route`.
    #[inline]
    pub fn lookup<C: Candidate>(
        &mut self,
        key: &FlowKey,
        now_s: u32,
        members: &[C],
        route: u16,
    ) -> Option<u32> {
        let now = now_s.saturating_add(1);
        let slot = self.slot(key);
        if slot.seen != 0
            && slot.key == *key
            && now.saturating_sub(slot.seen) <= FLOW_IDLE_S
            && members.iter().any(|m| m.tunnel() == u32::from(slot.tunnel))
        {
            slot.seen = now;
            slot.route = route;
            return Some(u32::from(slot.tunnel));
        }
        None
    }

    /// Forgets every flow (each is placed afresh at its next packet).
    pub fn forget_all(&mut self) {
        self.slots.fill(FlowSlot::default());
    }

    /// Remembers that the flow `key` took `tunnel` at `now_s` under the routing stamped `route`. Tunnel
    /// indexes above 65535 are not remembered (their flows are placed afresh per packet).
    #[inline]
    pub fn remember(&mut self, key: &FlowKey, tunnel: u32, now_s: u32, route: u16) {
        let Ok(tunnel) = u16::try_from(tunnel) else {
            return;
        };
        *self.slot(key) = FlowSlot {
            key: *key,
            seen: now_s.saturating_add(1),
            tunnel,
            route,
        };
    }
}

/// A next-hop group member: (tunnel id, weight).
pub type Member = (u32, u32);

/// Anything the scheduler can choose among: a tunnel id with a weight. Implemented for the plain
/// [`Member`] pair and for the FIB's [`crate::fib::Member`], so a group's members are used as they are.
pub trait Candidate {
    fn tunnel(&self) -> u32;
    fn weight(&self) -> u32;
}

impl Candidate for Member {
    #[inline]
    fn tunnel(&self) -> u32 {
        self.0
    }
    #[inline]
    fn weight(&self) -> u32 {
        self.1
    }
}

impl Candidate for crate::fib::Member {
    #[inline]
    fn tunnel(&self) -> u32 {
        self.tunnel
    }
    #[inline]
    fn weight(&self) -> u32 {
        self.weight
    }
}

/// The tunnel that carries the flow with hash `flow` (from [`crate::flow::flow_hash`]) among `members`, or
/// `None` if no member has a weight above zero. Allocates nothing; costs one mix and one `ln` per member (no
/// `ln` when all weights are equal).
///
/// Ties (equal scores, which need equal hashes) go to the lower tunnel id, so the result never depends on the
/// members' order. A tunnel id listed twice scores the same both times.
pub fn pick<M: Candidate>(members: &[M], flow: u64) -> Option<u32> {
    let mut weights = members.iter().map(|m| m.weight()).filter(|&w| w > 0);
    let first = weights.next()?;
    if weights.all(|w| w == first) {
        pick_equal(members, flow)
    } else {
        pick_weighted(members, flow)
    }
}

/// [`pick`] when every member of weight above zero has the same weight: the score grows with `u`, so the
/// highest `u` wins and no `ln` is needed. Chooses as [`pick_weighted`] would (the two could differ only if
/// `ln` rounded two of the 2^53 values of `u` to one score, which then goes to the lower id).
fn pick_equal<M: Candidate>(members: &[M], flow: u64) -> Option<u32> {
    members
        .iter()
        .filter(|m| m.weight() > 0)
        .map(|m| (unit(flow, m.tunnel()), m.tunnel()))
        .max_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)))
        .map(|(_, tunnel)| tunnel)
}

fn pick_weighted<M: Candidate>(members: &[M], flow: u64) -> Option<u32> {
    let mut best: Option<(f64, u32)> = None;
    for m in members {
        let (tunnel, weight) = (m.tunnel(), m.weight());
        if weight == 0 {
            continue;
        }
        let score = score(flow, tunnel, weight);
        let better = match best {
            None => true,
            Some((best_score, best_tunnel)) => {
                score > best_score || (score == best_score && tunnel < best_tunnel)
            }
        };
        if better {
            best = Some((score, tunnel));
        }
    }
    best.map(|(_, tunnel)| tunnel)
}

/// The member that sends packet number `counter` in per-packet spraying mode, or `None` if no member has a
/// weight above zero.
///
/// Stateless weighted round robin: the golden-ratio Weyl sequence `frac(counter * phi)` picks a point on
/// the line of the members' weights laid end to end. Over any run of `n` consecutive counters each member
/// gets `n * weight / total` packets within a small error that grows only like `log n`, and the members'
/// packets interleave instead of arriving in runs. The caller keeps one counter per group (or per thread) and
/// increments it per packet.
pub fn pick_spray<M: Candidate>(members: &[M], counter: u64) -> Option<u32> {
    let total: u64 = members.iter().map(|m| m.weight() as u64).sum();
    if total == 0 {
        return None;
    }
    let point = counter.wrapping_mul(GOLDEN_RATIO_64);
    let mut position = ((point as u128 * total as u128) >> 64) as u64;
    // position < total, so some member's stretch of the line holds it.
    for m in members {
        if position < m.weight() as u64 {
            return Some(m.tunnel());
        }
        position -= m.weight() as u64;
    }
    None
}

/// 2^64 / phi, rounded to odd.
const GOLDEN_RATIO_64: u64 = 0x9e37_79b9_7f4a_7c15;

/// `weight / -ln(u)` with `u` in (0, 1) uniform from the flow and the tunnel id.
fn score(flow: u64, tunnel: u32, weight: u32) -> f64 {
    // The 53-bit integer centred in its interval: never 0, never 1, so ln(u) is finite and negative.
    let u = (unit(flow, tunnel) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
    weight as f64 / -u.ln()
}

/// The 53 bits of `u` (exactly representable in an `f64`), as an integer.
fn unit(flow: u64, tunnel: u32) -> u64 {
    mix(flow, tunnel) >> 11
}

/// Mixes the flow hash with a tunnel id into 64 well-spread bits: the id is spread by multiplying with the
/// golden ratio and xored in, then the SplitMix64 finalizer (Steele, Lea and Flood, 2014; Stafford's
/// "Mix13" constants) avalanches every input bit into every output bit.
fn mix(flow: u64, tunnel: u32) -> u64 {
    let mut x = flow ^ (tunnel as u64 + 1).wrapping_mul(GOLDEN_RATIO_64);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    const SEED: u64 = 0x5eed_f10e;

    /// A distinct IPv4-shaped flow key per `n`.
    fn key(n: u64) -> FlowKey {
        FlowKey::from_words([n, 6 | 13 << 56])
    }

    /// A flow other than `of` whose key lands in `of`'s slot of `t`.
    fn same_slot(t: &FlowTable, of: &FlowKey) -> FlowKey {
        (0u64..)
            .map(key)
            .find(|k| k != of && t.index(k) == t.index(of))
            .expect("a key in that slot")
    }

    #[test]
    fn flow_table_keeps_a_flow_on_its_tunnel_until_it_leaves_or_idles() {
        let mut t = FlowTable::new(SEED);
        let both: [Member; 2] = [(1, 1), (2, 1)];
        assert_eq!(t.lookup(&key(7), 0, &both, 0), None, "new flow");
        t.remember(&key(7), 2, 0, 0);
        assert_eq!(t.lookup(&key(7), 5, &both, 0), Some(2));
        // Refreshed at 5: still there at 5 + FLOW_IDLE_S, gone after.
        assert_eq!(t.lookup(&key(7), 5 + FLOW_IDLE_S, &both, 0), Some(2));
        assert_eq!(
            t.lookup(&key(7), 5 + 2 * FLOW_IDLE_S + 1, &both, 0),
            None,
            "idle too long"
        );
        t.remember(&key(7), 2, 100, 0);
        assert_eq!(
            t.lookup(&key(7), 100, &[(1, 1)], 0),
            None,
            "its tunnel left the group"
        );
        // Another flow in the same slot takes it over.
        let other = same_slot(&t, &key(7));
        t.remember(&other, 1, 100, 0);
        assert_eq!(t.lookup(&key(7), 100, &both, 0), None);
        assert_eq!(t.lookup(&other, 100, &both, 0), Some(1));
        // Past the largest index a slot holds: not remembered.
        t.remember(&key(9), 70_000, 100, 0);
        assert_eq!(t.lookup(&key(9), 100, &[(70_000, 1)], 0), None);
    }

    /// The route cache: a flow's tunnel is taken without its route while the routing stamp is the one it was
    /// found or confirmed under; a new stamp needs the route again (a lookup), and a lookup that confirms
    /// the tunnel restamps it; idle flows and other flows in the slot miss.
    #[test]
    fn cached_tunnel_holds_only_under_the_routing_it_was_found_with() {
        let mut t = FlowTable::new(SEED);
        assert_eq!(t.cached(&key(7), 0, 3), None, "new flow");
        t.remember(&key(7), 2, 0, 3);
        assert_eq!(t.cached(&key(7), 1, 3), Some(2));
        assert_eq!(
            t.cached(&key(7), 1, 4),
            None,
            "the FIB or the liveness changed"
        );
        let both: [Member; 2] = [(1, 1), (2, 1)];
        assert_eq!(t.lookup(&key(7), 1, &both, 4), Some(2), "still a member");
        assert_eq!(
            t.cached(&key(7), 2, 4),
            Some(2),
            "confirmed under the new stamp"
        );
        assert_eq!(t.cached(&key(7), 2, 3), None);
        assert_eq!(
            t.cached(&key(7), 2 + FLOW_IDLE_S + 1, 4),
            None,
            "idle too long"
        );
        t.remember(&key(7), 2, 50, 4);
        assert_eq!(
            t.cached(&same_slot(&t, &key(7)), 50, 4),
            None,
            "another flow"
        );
        assert_eq!(t.lookup(&key(7), 50, &[(1, 1)], 5), None, "its tunnel left");
        assert_eq!(t.cached(&key(7), 50, 5), None, "and is not confirmed");
    }

    use super::*;
    use std::collections::HashMap;

    const FLOWS: u64 = 100_000;

    /// Synthetic flow hashes: SipHash-like quality is not needed, only distinct well-spread values.
    fn flows() -> impl Iterator<Item = u64> {
        (0..FLOWS).map(|i| {
            let mut x = i
                .wrapping_add(0x1234_5678)
                .wrapping_mul(0xd6e8_feb8_6659_fd93);
            x ^= x >> 32;
            x.wrapping_mul(0xd6e8_feb8_6659_fd93) ^ (x >> 29)
        })
    }

    fn shares(members: &[Member], flows: impl Iterator<Item = u64>) -> HashMap<u32, f64> {
        let mut counts: HashMap<u32, u64> = HashMap::new();
        let mut n = 0;
        for f in flows {
            *counts.entry(pick(members, f).unwrap()).or_default() += 1;
            n += 1;
        }
        counts
            .into_iter()
            .map(|(t, c)| (t, c as f64 / n as f64))
            .collect()
    }

    fn assert_share(shares: &HashMap<u32, f64>, tunnel: u32, want: f64, tolerance: f64) {
        let got = shares.get(&tunnel).copied().unwrap_or(0.0);
        assert!(
            (got - want).abs() <= tolerance,
            "tunnel {tunnel}: share {got:.4}, want {want:.4} +/- {tolerance}"
        );
    }

    #[test]
    fn equal_members_share_equally() {
        let members = [(10, 1), (11, 1), (12, 1), (13, 1)];
        let s = shares(&members, flows());
        for t in 10..14 {
            assert_share(&s, t, 0.25, 0.02);
        }
        // Weight scale does not matter, only ratios.
        let heavy = [(10, 1000), (11, 1000), (12, 1000), (13, 1000)];
        assert_eq!(shares(&heavy, flows()), s);
    }

    #[test]
    fn equal_members_share_equally_with_real_flow_hashes() {
        // Realistic worst case for a weak hash: consecutive source ports of one host pair.
        let members = [(1, 250), (2, 250), (3, 250), (4, 250)];
        let mut p = [0u8; 28];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&28u16.to_be_bytes());
        p[8] = 64;
        p[9] = 17;
        p[12..16].copy_from_slice(&[10, 0, 0, 1]);
        p[16..20].copy_from_slice(&[10, 9, 0, 1]);
        p[22..24].copy_from_slice(&443u16.to_be_bytes());
        let hashes = (0..FLOWS).map(|i| {
            p[20..22].copy_from_slice(&((i % 65536) as u16).to_be_bytes());
            p[15] = 1 + (i / 65536) as u8;
            crate::flow::flow_hash(&p, 0xfeed).unwrap()
        });
        let s = shares(&members, hashes);
        for t in 1..5 {
            assert_share(&s, t, 0.25, 0.02);
        }
    }

    #[test]
    fn shares_follow_weights() {
        let s = shares(&[(1, 4), (2, 1)], flows());
        assert_share(&s, 1, 0.8, 0.02);
        assert_share(&s, 2, 0.2, 0.02);
        // The dual-ISP weights: 1 Gbit/s and 250 Mbit/s uplinks, two tunnels each.
        let s = shares(&[(1, 1000), (2, 1000), (3, 250), (4, 250)], flows());
        assert_share(&s, 1, 0.4, 0.02);
        assert_share(&s, 2, 0.4, 0.02);
        assert_share(&s, 3, 0.1, 0.02);
        assert_share(&s, 4, 0.1, 0.02);
    }

    #[test]
    fn weight_zero_carries_nothing() {
        let s = shares(&[(1, 1), (2, 0), (3, 1)], flows());
        assert!(!s.contains_key(&2));
        assert_share(&s, 1, 0.5, 0.02);
        assert_eq!(pick(&[(1, 0), (2, 0)], 42), None);
        assert_eq!(pick::<Member>(&[], 42), None);
        assert_eq!(pick(&[(7, 1)], 42), Some(7));
    }

    #[test]
    fn the_equal_weight_path_chooses_as_the_weighted_one() {
        let members = [(5, 3), (9, 3), (2, 0), (40, 3), (7, 3)];
        for f in flows().take(20_000) {
            assert_eq!(pick(&members, f), pick_weighted(&members, f));
            assert_eq!(pick_equal(&members, f), pick_weighted(&members, f));
        }
    }

    #[test]
    fn deterministic_and_independent_of_member_order() {
        let members = [(5, 3), (9, 1), (2, 7), (40, 2)];
        let mut reversed = members;
        reversed.reverse();
        for f in flows().take(10_000) {
            assert_eq!(pick(&members, f), pick(&reversed, f));
            assert_eq!(pick(&members, f), pick(&members, f));
        }
    }

    #[test]
    fn removal_moves_only_the_removed_members_flows() {
        for members in [
            vec![(1, 1), (2, 1), (3, 1), (4, 1)],
            vec![(1, 1000), (2, 1000), (3, 250), (4, 250)],
        ] {
            let removed = 2;
            let rest: Vec<Member> = members
                .iter()
                .copied()
                .filter(|&(t, _)| t != removed)
                .collect();
            let mut moved = 0u64;
            for f in flows() {
                let before = pick(&members, f).unwrap();
                let after = pick(&rest, f).unwrap();
                if before == removed {
                    moved += 1;
                } else {
                    assert_eq!(after, before, "flow {f:#x} moved off a surviving member");
                }
            }
            let total: u32 = members.iter().map(|m| m.1).sum();
            let want = members[1].1 as f64 / total as f64;
            let got = moved as f64 / FLOWS as f64;
            assert!((got - want).abs() < 0.02, "moved {got:.4}, want {want:.4}");
        }
    }

    #[test]
    fn addition_moves_flows_only_onto_the_new_member() {
        let members = vec![(1, 1), (2, 1), (3, 1), (4, 1)];
        let mut grown = members.clone();
        grown.push((5, 1));
        let mut moved = 0u64;
        for f in flows() {
            let before = pick(&members, f).unwrap();
            let after = pick(&grown, f).unwrap();
            if after != before {
                assert_eq!(after, 5, "flow {f:#x} moved between old members");
                moved += 1;
            }
        }
        let got = moved as f64 / FLOWS as f64;
        assert!((got - 0.2).abs() < 0.02, "moved {got:.4}, want 0.2");
    }

    #[test]
    fn spray_follows_weights_and_interleaves() {
        let members = [(1, 3), (2, 1)];
        let mut counts = [0u64; 3];
        let mut last = 0;
        let mut run = 0;
        let mut longest_run = 0;
        for c in 0..FLOWS {
            let t = pick_spray(&members, c).unwrap();
            counts[t as usize] += 1;
            run = if t == last { run + 1 } else { 1 };
            last = t;
            longest_run = longest_run.max(run);
        }
        let share = counts[1] as f64 / FLOWS as f64;
        assert!((share - 0.75).abs() < 0.001, "share {share}");
        assert!(longest_run <= 5, "longest run {longest_run}");
        // Equal weights: within a handful of packets of exact over any window.
        let equal = [(1, 1), (2, 1), (3, 1), (4, 1)];
        for start in [0u64, 12_345, u64::MAX - 5000] {
            let mut c = [0i64; 5];
            for i in 0..4000 {
                c[pick_spray(&equal, start.wrapping_add(i)).unwrap() as usize] += 1;
            }
            for n in &c[1..] {
                assert!((n - 1000).abs() <= 8, "{c:?}");
            }
        }
        assert_eq!(pick_spray(&[(1, 0)], 3), None);
        assert_eq!(pick_spray::<Member>(&[], 3), None);
        assert_eq!(pick_spray(&[(1, 0), (2, 5)], 3), Some(2));
    }
}
