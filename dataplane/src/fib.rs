//! The forwarding table of the data path: longest-prefix match from IPv4 and IPv6 [`Prefix`]es to
//! [`NextHopGroup`]s of tunnels, built by the control plane and published to the forwarding threads as an
//! immutable snapshot ([`FibCell`], read-copy-update through `arc-swap`).
//!
//! # Structure
//!
//! A [`Fib`] keeps, per address family, one open-addressing hash table keyed by (masked address, prefix
//! length) and the list of prefix lengths present, longest first. A lookup masks the destination to each
//! present length in turn and probes the table; the first hit is the longest match. This is the
//! "hash table per length" scheme (Waldvogel et al., without the binary search over lengths):
//!
//! - **Lookup cost** is one probe per *distinct* prefix length present down to the match, not per prefix:
//!   a BGP full table has about 25 IPv4 lengths and a few dozen IPv6 lengths, so an address that matches a
//!   /24 costs one probe per length present from /32 down to /24. Each probe is a splitmix64 hash (two
//!   multiplications; plain one-multiply Fibonacci hashing measured slower at 1M prefixes) and, at a load
//!   factor of at most 1/2, almost always one slot read. No allocation, no locking, no `unsafe`; IPv4 and
//!   IPv6 cost the same per probe.
//! - **Memory** is linear in the number of prefixes, whatever their lengths or spread: per prefix, one slot
//!   in a table sized to the next power of two above twice the count (IPv4 slot 12 bytes, IPv6 slot 32 bytes,
//!   so 24 to 48 bytes per IPv4 prefix, 64 to 128 per IPv6 prefix) plus one `(Prefix, Arc)` entry (32 bytes)
//!   for [`Fib::iter`] and for the lookup result. A million IPv4 prefixes take about 57 MiB; the
//!   [`NextHopGroup`]s themselves are shared (`Arc`) between all prefixes that use the same group.
//! - **Build** is O(n): sort the entries once, then one insert per prefix.
//!
//! Alternatives weighed: a DIR-24-8 / 16-8-8 multibit array answers IPv4 in one to three reads, but costs
//! 32 to 64 MiB even for a small table and up to 1 KiB per prefix longer than /24, and does not carry over
//! to IPv6; a path-compressed or popcount-compressed trie (tree bitmap, poptrie) is compact and fast but
//! much more code to get right. The per-length tables are small, obviously correct and bounded in memory;
//! binary search over the lengths (with marker entries) is the upgrade path if the probe count matters.
//!
//! # What it leaves out
//!
//! Route selection (which BGP paths form a group, which are backups) is the control plane's; the flow
//! hashing that picks one [`Member`] of [`NextHopGroup::active`] is the scheduler's. A `Fib` is never
//! modified in place: the control plane builds a new one ([`Fib::to_builder`] for incremental changes)
//! and publishes it.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::prefix::Prefix;

/// One tunnel of a [`NextHopGroup`].
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// The tunnel's index in the data path.
    pub tunnel: u32,
    /// Share of the group's flows relative to the other active members (from the uplink's cap, `weight =`,
    /// or a link-bandwidth extended community).
    pub weight: u32,
    /// A backup (a prepended path) carries nothing while any non-backup member exists.
    pub backup: bool,
}

/// Why a [`NextHopGroup`] was refused.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupError {
    /// A group needs at least one member.
    Empty,
    /// A non-backup member had weight 0 (it would never be picked: leave it out instead).
    ZeroWeight { tunnel: u32 },
}

impl fmt::Display for GroupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GroupError::Empty => f.write_str("a next-hop group needs at least one member"),
            GroupError::ZeroWeight { tunnel } => {
                write!(f, "tunnel {tunnel} has weight 0 in a next-hop group")
            }
        }
    }
}

impl std::error::Error for GroupError {}

/// The tunnels a prefix is forwarded over, with weights; backups take over only when no primary is left.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct NextHopGroup {
    /// Non-backup members first, then backups; each part in the order given to [`NextHopGroup::new`].
    members: Vec<Member>,
    /// How many of `members` are non-backups.
    primaries: usize,
}

impl NextHopGroup {
    /// Builds a group. It must not be empty and every non-backup member must have a weight above 0
    /// (a backup with weight 0 is accepted: it only matters once it becomes active, see [`Self::active`]).
    pub fn new(members: Vec<Member>) -> Result<NextHopGroup, GroupError> {
        if members.is_empty() {
            return Err(GroupError::Empty);
        }
        if let Some(m) = members.iter().find(|m| !m.backup && m.weight == 0) {
            return Err(GroupError::ZeroWeight { tunnel: m.tunnel });
        }
        let mut sorted: Vec<Member> = members.iter().filter(|m| !m.backup).copied().collect();
        let primaries = sorted.len();
        sorted.extend(members.iter().filter(|m| m.backup));
        Ok(NextHopGroup {
            members: sorted,
            primaries,
        })
    }

    /// A group of one tunnel with weight 1 (a connected or static route).
    pub fn single(tunnel: u32) -> NextHopGroup {
        NextHopGroup {
            members: vec![Member {
                tunnel,
                weight: 1,
                backup: false,
            }],
            primaries: 1,
        }
    }

    /// The members that carry traffic: the non-backups, or the backups when there is no non-backup.
    pub fn active(&self) -> &[Member] {
        if self.primaries > 0 {
            &self.members[..self.primaries]
        } else {
            &self.members
        }
    }

    /// All members, non-backups first.
    pub fn members(&self) -> &[Member] {
        &self.members
    }
}

/// An immutable longest-prefix-match table from prefixes to next-hop groups. Build one with [`FibBuilder`].
#[derive(Clone, Default)]
pub struct Fib {
    /// Every route, sorted by prefix: the lookup tables index into it.
    entries: Vec<(Prefix, Arc<NextHopGroup>)>,
    v4: LengthTables<u32>,
    v6: LengthTables<u128>,
}

impl Fib {
    /// An empty table (every lookup misses).
    pub fn new() -> Fib {
        Fib::default()
    }

    /// The group of the longest prefix containing `dst`, if any. Allocation-free; one hash probe per distinct
    /// prefix length of `dst`'s family present in the table, longest first.
    #[inline]
    pub fn lookup(&self, dst: IpAddr) -> Option<&Arc<NextHopGroup>> {
        let i = match dst {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }?;
        Some(&self.entries[i as usize].1)
    }

    /// How many prefixes the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The routes, sorted by prefix (IPv4 before IPv6).
    pub fn iter(&self) -> impl Iterator<Item = (&Prefix, &Arc<NextHopGroup>)> {
        self.entries.iter().map(|(p, g)| (p, g))
    }

    /// A builder holding this table's routes, to apply changes and build the next table.
    pub fn to_builder(&self) -> FibBuilder {
        FibBuilder {
            routes: self.entries.iter().cloned().collect(),
        }
    }
}

impl fmt::Debug for Fib {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(p, g)| (p, g)))
            .finish()
    }
}

/// Collects routes and builds a [`Fib`]. Inserting a prefix again replaces its group.
#[derive(Clone, Debug, Default)]
pub struct FibBuilder {
    routes: BTreeMap<Prefix, Arc<NextHopGroup>>,
}

impl FibBuilder {
    pub fn new() -> FibBuilder {
        FibBuilder::default()
    }

    /// Sets the group of `prefix`, returning the group it replaces.
    pub fn insert(
        &mut self,
        prefix: Prefix,
        group: Arc<NextHopGroup>,
    ) -> Option<Arc<NextHopGroup>> {
        self.routes.insert(prefix, group)
    }

    /// Removes `prefix`, returning its group.
    pub fn remove(&mut self, prefix: &Prefix) -> Option<Arc<NextHopGroup>> {
        self.routes.remove(prefix)
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Builds the immutable table.
    ///
    /// # Panics
    ///
    /// If the builder holds more than `u32::MAX - 1` routes.
    pub fn build(&self) -> Fib {
        let entries: Vec<(Prefix, Arc<NextHopGroup>)> = self
            .routes
            .iter()
            .map(|(p, g)| (*p, Arc::clone(g)))
            .collect();
        assert!(entries.len() < EMPTY as usize, "too many routes for a Fib");
        let v4 =
            LengthTables::build(entries.iter().enumerate().filter_map(
                |(i, (p, _))| match p.addr() {
                    IpAddr::V4(a) => Some((u32::from(a), p.len(), i as u32)),
                    IpAddr::V6(_) => None,
                },
            ));
        let v6 =
            LengthTables::build(entries.iter().enumerate().filter_map(
                |(i, (p, _))| match p.addr() {
                    IpAddr::V6(a) => Some((u128::from(a), p.len(), i as u32)),
                    IpAddr::V4(_) => None,
                },
            ));
        Fib { entries, v4, v6 }
    }
}

/// Marks an empty slot (and bounds the number of routes).
const EMPTY: u32 = u32::MAX;

/// An address family's key: a `u32` (IPv4) or `u128` (IPv6) address.
trait Key: Copy + Eq + Default {
    /// `self` with all but the top `len` bits cleared.
    fn mask(self, len: u8) -> Self;
    /// A well-mixed 64-bit hash of (masked address, length).
    fn hash(self, len: u8) -> u64;
}

/// The splitmix64 finaliser: every input bit affects every output bit.
#[inline]
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Key for u32 {
    #[inline]
    fn mask(self, len: u8) -> u32 {
        if len == 0 {
            0
        } else {
            self & (u32::MAX << (32 - u32::from(len)))
        }
    }

    #[inline]
    fn hash(self, len: u8) -> u64 {
        mix(u64::from(self) | (u64::from(len) << 32))
    }
}

impl Key for u128 {
    #[inline]
    fn mask(self, len: u8) -> u128 {
        if len == 0 {
            0
        } else {
            self & (u128::MAX << (128 - u32::from(len)))
        }
    }

    #[inline]
    fn hash(self, len: u8) -> u64 {
        let hi = (self >> 64) as u64;
        let lo = self as u64;
        mix(hi ^ mix(lo ^ u64::from(len)))
    }
}

#[derive(Clone, Copy, Default)]
struct Slot<K> {
    key: K,
    len: u8,
    /// Index into `Fib::entries`, or [`EMPTY`].
    entry: u32,
}

/// One address family's prefixes: an open-addressing (linear probing) hash table over (address, length) and
/// the lengths present, longest first.
#[derive(Clone, Default)]
struct LengthTables<K> {
    slots: Vec<Slot<K>>,
    /// `slots.len() - 1`; the table is a power of two in size.
    mask: usize,
    /// Distinct prefix lengths present, longest first.
    lengths: Vec<u8>,
}

impl<K: Key> LengthTables<K> {
    /// `routes` are (masked address, length, entry index); every (address, length) appears at most once.
    fn build(routes: impl Iterator<Item = (K, u8, u32)> + Clone) -> LengthTables<K> {
        let n = routes.clone().count();
        if n == 0 {
            return LengthTables {
                slots: Vec::new(),
                mask: 0,
                lengths: Vec::new(),
            };
        }
        let size = (2 * n).next_power_of_two();
        let mut t = LengthTables {
            slots: vec![
                Slot {
                    key: K::default(),
                    len: 0,
                    entry: EMPTY,
                };
                size
            ],
            mask: size - 1,
            lengths: Vec::new(),
        };
        let mut present = [false; 129];
        for (key, len, entry) in routes {
            present[len as usize] = true;
            let mut i = t.index(key, len);
            while t.slots[i].entry != EMPTY {
                i = (i + 1) & t.mask;
            }
            t.slots[i] = Slot { key, len, entry };
        }
        t.lengths = (0..=128u8).rev().filter(|&l| present[l as usize]).collect();
        t
    }

    #[inline]
    fn index(&self, key: K, len: u8) -> usize {
        // The top bits of the hash pick the slot (usize is at least 32 bits here, so no truncation matters).
        (key.hash(len) >> 32) as usize & self.mask
    }

    #[inline]
    fn lookup(&self, addr: K) -> Option<u32> {
        for &len in &self.lengths {
            let key = addr.mask(len);
            let mut i = self.index(key, len);
            loop {
                let s = &self.slots[i];
                if s.entry == EMPTY {
                    break;
                }
                if s.len == len && s.key == key {
                    return Some(s.entry);
                }
                i = (i + 1) & self.mask;
            }
        }
        None
    }
}

/// The published [`Fib`]: the control plane swaps in a new snapshot atomically; forwarding threads read the
/// current one without a lock (read-copy-update through [`ArcSwap`]). A snapshot stays valid, unchanged,
/// for as long as a reader holds it, and is freed when the last reader lets go.
pub struct FibCell {
    current: ArcSwap<Fib>,
}

impl FibCell {
    pub fn new(fib: Fib) -> FibCell {
        FibCell {
            current: ArcSwap::from_pointee(fib),
        }
    }

    /// Makes `fib` the table every later [`load`](Self::load) sees. Readers holding the previous snapshot
    /// keep it until they drop it.
    pub fn publish(&self, fib: Fib) {
        self.current.store(Arc::new(fib));
    }

    /// The current snapshot, for one batch of packets: lock-free and normally without touching the
    /// reference count. Hold it for a batch, not indefinitely (a thread holding many guards falls back to
    /// reference counting).
    #[inline]
    pub fn load(&self) -> Guard<Arc<Fib>> {
        self.current.load()
    }

    /// The current snapshot as an owned `Arc`, for holders that keep it longer than a batch.
    pub fn snapshot(&self) -> Arc<Fib> {
        self.current.load_full()
    }
}

impl fmt::Debug for FibCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FibCell")
            .field("routes", &self.current.load().len())
            .finish()
    }
}
