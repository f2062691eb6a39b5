//! The forwarding table of the data path: longest-prefix match from IPv4 and IPv6 [`Prefix`]es to
//! [`NextHopGroup`]s of tunnels, built by the control plane and published to the forwarding threads as an
//! immutable snapshot ([`FibCell`], read-copy-update through `arc-swap`).
//!
//! # Structure
//!
//! A [`Fib`] keeps the routes in a sorted list (for [`Fib::iter`] and [`Fib::to_builder`]), the distinct
//! groups they use (lookups answer an index into it, so the route list is never touched on the data path),
//! and one lookup structure per address family.
//!
//! **IPv4** is a three-level multibit trie with strides 16, 8 and 8 and every route pushed down to the
//! leaves it covers, in the spirit of DIR-24-8 and of poptrie's leaf compression (Asai and Ohara, 2015):
//! - level 1 is a direct array of 2^16 nodes indexed by the top 16 bits of the destination;
//! - a level-1 node covered by routes longer than /16 points to a *chunk* of the 256 nodes below it
//!   (bits 16..24), and a level-2 node covered by routes longer than /24 to a chunk of the last 8 bits;
//! - a chunk stores its 256 nodes as runs of equal nodes: a 256-bit map of where runs start, the count of
//!   runs before each 64-bit word, and the run values in a shared array, so node `i` is run number
//!   "bits set up to `i`" (one `count_ones`). A 256-node level that is all one node needs no chunk.
//!
//! Because the routes come sorted by (address, length), a pre-order walk of the prefix tree, the build paints
//! each route over the nodes it covers in that order and every node ends up holding its longest match;
//! each /24 and /16 is compressed as soon as the walk has passed it (`StrideTrieBuilder`).
//!
//! **IPv6** keeps one open-addressing hash table keyed by (masked address, prefix length) and the list of
//! prefix lengths present, longest first ("hash table per length", Waldvogel et al. 1997, without the
//! binary search over lengths). A lookup masks the destination to each present length in turn and probes;
//! the first hit is the longest match.
//!
//! - **Lookup cost.** IPv4: one to three dependent array reads whatever the table size (the level-1 node,
//!   then a chunk header and its run, once or twice), no hashing. Measured 9-13 ns per lookup with 1,000
//!   random /16-/24 prefixes and 26-38 ns with 1,000,000, against 78-98 and 142-229 ns for the per-length
//!   hash tables it replaced (`cargo bench -p braid-dataplane --bench fib`; ranges over several runs of
//!   the old and new benches taking turns on a shared, busy 2-core AMD EPYC VM). IPv6: one splitmix64
//!   hash probe per distinct length present down to the match, almost always one slot read at a load
//!   factor of at most 1/2; 37-64 ns with 10,000 prefixes of 6 lengths (63-81 ns before: the same
//!   probes, but the answer no longer needs a read of the route list). No allocation, no locking, no
//!   `unsafe`.
//! - **Memory.** Per route, one `(Prefix, Arc)` entry (32 bytes) and a share of its group index. IPv4 adds a
//!   fixed 256 KiB level 1 once any IPv4 route exists, 40 bytes per chunk and 4 bytes per run: a route adds
//!   at most two runs where it ends, and at most one level-2 and one level-3 chunk, so the worst case (lone
//!   host routes, each in its own /16) is about 140 bytes per route and there are never more than 65,536
//!   level-2 chunks. Measured ([`Fib::heap_bytes`], printed by the bench): 1,000 random IPv4 prefixes
//!   0.3 MiB in all; 1,000,000 random /16-/24 prefixes 37.9 MiB (30.5 MiB of it the route list, 7.4 MiB
//!   the trie), against 54.5 MiB for the hash tables (30.5 + 24 MiB of slots). IPv6: one
//!   32-byte slot in a table sized to the next power of two above twice the count (64 to 128 bytes per
//!   prefix). The [`NextHopGroup`]s themselves are shared (`Arc`) between all prefixes and tables.
//! - **Build** is one pass over the sorted routes: O(n) plus 256 node writes and compares per chunk.
//!   1,000,000 IPv4 prefixes build in 61-83 ms on that machine (72-97 ms for the hash tables; most of it is
//!   walking the builder's `BTreeMap` and cloning an `Arc` per route); copying a built 1M table into a
//!   builder, adding one route and building again (`fib_build/ipv4_1m_incremental`) takes 65-88 ms
//!   (72-116 ms before).
//!
//! Alternatives weighed: binary search over the lengths with marker entries would still cost about four
//! dependent hash probes per IPv4 lookup and up to twice the slots; a plain DIR-24-8 array answers in one
//! or two reads but costs 64 MiB even for a small table; uncompressed 16-8-8 chunks cost 1 KiB each
//! (64 MiB for the random 1M table, and up to 1 KiB per host route). IPv6 stays on the per-length tables:
//! its tables are far smaller than IPv4's and lengths fewer per lookup, and a 128-bit trie needs more levels.
//!
//! # What it leaves out
//!
//! Route selection (which BGP paths form a group, which are backups) is the control plane's; the flow
//! hashing that picks one [`Member`] of [`NextHopGroup::active`] is the scheduler's. A `Fib` is never
//! modified in place: the control plane builds a new one ([`Fib::to_builder`] for incremental changes)
//! and publishes it.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem;
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
    /// Every route, sorted by prefix, for [`Fib::iter`] and [`Fib::to_builder`].
    entries: Vec<(Prefix, Arc<NextHopGroup>)>,
    /// The distinct groups of `entries` (by pointer): what the lookup structures hold are indexes into it.
    groups: Vec<Arc<NextHopGroup>>,
    v4: StrideTrie,
    v6: LengthTables,
}

impl Fib {
    /// An empty table (every lookup misses).
    pub fn new() -> Fib {
        Fib::default()
    }

    /// The group of the longest prefix containing `dst`, if any. Allocation-free. IPv4 costs one to three
    /// array reads (by the top 16 bits, then the next 8, then the last 8); IPv6 costs one hash probe per
    /// distinct prefix length present, longest first, down to the match.
    #[inline]
    pub fn lookup(&self, dst: IpAddr) -> Option<&Arc<NextHopGroup>> {
        let group = match dst {
            IpAddr::V4(a) => self.v4.lookup(u32::from(a)),
            IpAddr::V6(a) => self.v6.lookup(u128::from(a)),
        }?;
        Some(&self.groups[group as usize])
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

    /// Bytes of heap the table holds itself: the route list and the lookup structures, not the
    /// [`NextHopGroup`]s (shared with the control plane and between tables).
    pub fn heap_bytes(&self) -> usize {
        self.entries.capacity() * mem::size_of::<(Prefix, Arc<NextHopGroup>)>()
            + self.groups.capacity() * mem::size_of::<Arc<NextHopGroup>>()
            + self.v4.heap_bytes()
            + self.v6.heap_bytes()
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
    /// If the builder holds more than `2^31 - 2` routes.
    pub fn build(&self) -> Fib {
        assert!(
            self.routes.len() < NO_ROUTE as usize,
            "too many routes for a Fib"
        );
        let mut entries = Vec::with_capacity(self.routes.len());
        let mut groups = Vec::new();
        let mut group_index: HashMap<*const NextHopGroup, u32, BuildPtrHasher> = HashMap::default();
        let mut v4 = StrideTrieBuilder::new();
        let mut v6 = Vec::new();
        // The previous route's group and index: neighbouring routes often share a group.
        let mut last: Option<(*const NextHopGroup, u32)> = None;
        for (prefix, group) in &self.routes {
            let ptr = Arc::as_ptr(group);
            let index = match last {
                Some((p, i)) if p == ptr => i,
                _ => *group_index.entry(ptr).or_insert_with(|| {
                    groups.push(Arc::clone(group));
                    (groups.len() - 1) as u32
                }),
            };
            last = Some((ptr, index));
            match prefix.addr() {
                IpAddr::V4(a) => v4.push(u32::from(a), prefix.len(), index),
                IpAddr::V6(a) => v6.push((u128::from(a), prefix.len(), index)),
            }
            entries.push((*prefix, Arc::clone(group)));
        }
        Fib {
            entries,
            groups,
            v4: v4.finish(),
            v6: LengthTables::build(&v6),
        }
    }
}

/// Hashes the group pointers of [`FibBuilder::build`]'s de-duplication: one multiplication, folded so that
/// the low bits (which pick the bucket) depend on all of the pointer, not just its always-zero low bits.
#[derive(Default)]
struct PtrHasher(u64);

impl Hasher for PtrHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_usize(&mut self, n: usize) {
        let x = (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        self.0 = x ^ (x >> 32);
    }
}

type BuildPtrHasher = BuildHasherDefault<PtrHasher>;

/// A node of the IPv4 [`StrideTrie`]: a group index, [`NO_ROUTE`], or [`CHILD`] plus a chunk index.
type Node = u32;

/// Set in a [`Node`] that points to a [`Chunk`] of the next level (the low 31 bits are its index).
const CHILD: Node = 1 << 31;

/// The [`Node`] of addresses that no route covers. Also bounds the number of groups (and so of routes).
const NO_ROUTE: Node = CHILD - 1;

/// The IPv4 longest-prefix match: a three-level multibit trie with strides 16, 8 and 8 whose levels below
/// the first are popcount-compressed, every route pushed down to the leaves it covers (so no level needs to
/// remember a shorter match: the answer is the node where the walk stops).
#[derive(Clone, Default)]
struct StrideTrie {
    /// Level 1, indexed by the top 16 bits of the address: 2^16 nodes, or none when there is no IPv4 route.
    root: Box<[Node]>,
    /// Levels 2 (bits 16..24) and 3 (bits 24..32).
    chunks: Vec<Chunk>,
    /// The run values of all chunks, each chunk's runs in address order from [`Chunk::base`].
    runs: Vec<Node>,
}

/// 256 nodes of one level under one node of the level above, stored as runs of equal nodes: `starts` has
/// bit `i` set where a run begins at position `i` (bit 0 always), so position `i`'s node is run number
/// "bits set in `starts` up to `i`, minus one". Dense chunks (a /16 full of /24s) cost 4 bytes per run;
/// sparse ones little more than their 40-byte header.
#[derive(Clone, Copy)]
struct Chunk {
    /// Bit `i % 64` of word `i / 64` marks the start of a run at position `i`.
    starts: [u64; 4],
    /// Index in [`StrideTrie::runs`] of this chunk's first run.
    base: u32,
    /// Runs that start in the words before each word (at most 192, so a byte holds it).
    before: [u8; 4],
}

impl Chunk {
    /// The index in [`StrideTrie::runs`] of the run holding position `i`.
    #[inline]
    fn run(&self, i: u8) -> usize {
        let word = usize::from(i >> 6);
        let upto = self.starts[word] & (u64::MAX >> (63 - (i & 63)));
        // Position 0 starts a run, so at least one bit is counted.
        self.base as usize + usize::from(self.before[word]) + upto.count_ones() as usize - 1
    }
}

impl StrideTrie {
    #[inline]
    fn lookup(&self, addr: u32) -> Option<u32> {
        let mut node = *self.root.get((addr >> 16) as usize)?;
        if node & CHILD != 0 {
            node = self.runs[self.chunks[(node & !CHILD) as usize].run((addr >> 8) as u8)];
            if node & CHILD != 0 {
                node = self.runs[self.chunks[(node & !CHILD) as usize].run(addr as u8)];
            }
        }
        (node != NO_ROUTE).then_some(node)
    }

    /// The node for a level's 256 nodes: the node itself when all are equal, else a new chunk.
    fn compress(&mut self, nodes: &[Node; 256]) -> Node {
        let mut starts = [0u64; 4];
        for (w, word) in starts.iter_mut().enumerate() {
            for j in 0..64 {
                let i = w * 64 + j;
                *word |= u64::from(i == 0 || nodes[i] != nodes[i - 1]) << j;
            }
        }
        if starts == [1, 0, 0, 0] {
            return nodes[0];
        }
        let base = u32::try_from(self.runs.len()).expect("FIB chunk runs fit in 32 bits");
        let mut before = [0u8; 4];
        for w in 0..4 {
            if w > 0 {
                before[w] = before[w - 1] + starts[w - 1].count_ones() as u8;
            }
            let mut bits = starts[w];
            while bits != 0 {
                self.runs
                    .push(nodes[w * 64 + bits.trailing_zeros() as usize]);
                bits &= bits - 1;
            }
        }
        let index = self.chunks.len() as u32;
        assert!(index < CHILD, "too many FIB chunks");
        self.chunks.push(Chunk {
            starts,
            base,
            before,
        });
        CHILD | index
    }

    fn heap_bytes(&self) -> usize {
        self.root.len() * mem::size_of::<Node>()
            + self.chunks.capacity() * mem::size_of::<Chunk>()
            + self.runs.capacity() * mem::size_of::<Node>()
    }
}

/// Builds a [`StrideTrie`] in one pass over routes in address order.
///
/// Routes come sorted as [`Prefix`] sorts them, by address and then by length, which is a pre-order walk
/// of the prefix tree: every route comes after all the routes that cover it. So painting each route over
/// the nodes it covers, in that order, leaves every node with its longest match (leaf pushing) without
/// any sorting by length; and once a route lies past a /16 (or /24), no later route can touch that /16's
/// level-2 nodes (or that /24's level-3 nodes), which can then be compressed into a chunk.
struct StrideTrieBuilder {
    trie: StrideTrie,
    root: Vec<Node>,
    /// The /16 whose level-2 nodes are in `level2`, if any.
    block: Option<u32>,
    level2: [Node; 256],
    /// The /24 whose level-3 nodes are in `level3`, if any (always inside `block`).
    sub: Option<u32>,
    level3: [Node; 256],
    /// The last route pushed, to check the order.
    last: Option<(u32, u8)>,
}

impl StrideTrieBuilder {
    fn new() -> StrideTrieBuilder {
        StrideTrieBuilder {
            trie: StrideTrie::default(),
            root: Vec::new(),
            block: None,
            level2: [NO_ROUTE; 256],
            sub: None,
            level3: [NO_ROUTE; 256],
            last: None,
        }
    }

    /// Adds route `addr/len` (host bits clear) to group `group`.
    ///
    /// # Panics
    ///
    /// In debug builds, if the routes do not come in ascending (address, length) order.
    fn push(&mut self, addr: u32, len: u8, group: Node) {
        debug_assert!(self.last < Some((addr, len)), "routes out of order");
        self.last = Some((addr, len));
        if self.root.is_empty() {
            self.root = vec![NO_ROUTE; 1 << 16];
        }
        if len <= 16 {
            self.finish_block();
            paint(&mut self.root, (addr >> 16) as usize, 16 - len, group);
            return;
        }
        if self.block != Some(addr >> 16) {
            self.finish_block();
            self.block = Some(addr >> 16);
            self.level2.fill(self.root[(addr >> 16) as usize]);
        }
        if len <= 24 {
            self.finish_sub();
            paint(
                &mut self.level2,
                ((addr >> 8) & 0xff) as usize,
                24 - len,
                group,
            );
            return;
        }
        if self.sub != Some(addr >> 8) {
            self.finish_sub();
            self.sub = Some(addr >> 8);
            self.level3.fill(self.level2[((addr >> 8) & 0xff) as usize]);
        }
        paint(&mut self.level3, (addr & 0xff) as usize, 32 - len, group);
    }

    /// Compresses the current /24's level-3 nodes into its level-2 node.
    fn finish_sub(&mut self) {
        if let Some(sub) = self.sub.take() {
            self.level2[(sub & 0xff) as usize] = self.trie.compress(&self.level3);
        }
    }

    /// Compresses the current /16's level-2 nodes into its root node.
    fn finish_block(&mut self) {
        self.finish_sub();
        if let Some(block) = self.block.take() {
            self.root[block as usize] = self.trie.compress(&self.level2);
        }
    }

    fn finish(mut self) -> StrideTrie {
        self.finish_block();
        self.trie.chunks.shrink_to_fit();
        self.trie.runs.shrink_to_fit();
        self.trie.root = self.root.into_boxed_slice();
        self.trie
    }
}

/// Sets the `2^span` nodes from `start` to `group`.
fn paint(nodes: &mut [Node], start: usize, span: u8, group: u32) {
    nodes[start..start + (1 << span)].fill(group);
}

/// Marks an empty slot of a [`LengthTables`].
const EMPTY: u32 = u32::MAX;

/// `addr` with all but the top `len` bits cleared.
#[inline]
fn mask(addr: u128, len: u8) -> u128 {
    u128::MAX
        .checked_shl(128 - u32::from(len))
        .map_or(0, |m| addr & m)
}

/// A well-mixed 64-bit hash of (masked address, length): the splitmix64 finaliser, in which every input
/// bit affects every output bit, over both halves.
#[inline]
fn hash(addr: u128, len: u8) -> u64 {
    fn mix(mut x: u64) -> u64 {
        x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        x ^ (x >> 31)
    }
    mix((addr >> 64) as u64 ^ mix(addr as u64 ^ u64::from(len)))
}

#[derive(Clone, Copy, Default)]
struct Slot {
    key: u128,
    len: u8,
    /// Index into `Fib::groups`, or [`EMPTY`].
    group: u32,
}

/// The IPv6 prefixes: an open-addressing (linear probing) hash table over (address, length) and the lengths
/// present, longest first.
#[derive(Clone, Default)]
struct LengthTables {
    slots: Vec<Slot>,
    /// `slots.len() - 1`; the table is a power of two in size.
    mask: usize,
    /// Distinct prefix lengths present, longest first.
    lengths: Vec<u8>,
}

impl LengthTables {
    /// `routes` are (masked address, length, group index); every (address, length) appears at most once.
    fn build(routes: &[(u128, u8, u32)]) -> LengthTables {
        if routes.is_empty() {
            return LengthTables::default();
        }
        let size = (2 * routes.len()).next_power_of_two();
        let mut t = LengthTables {
            slots: vec![
                Slot {
                    key: 0,
                    len: 0,
                    group: EMPTY,
                };
                size
            ],
            mask: size - 1,
            lengths: Vec::new(),
        };
        let mut present = [false; 129];
        for &(key, len, group) in routes {
            present[len as usize] = true;
            let mut i = t.index(key, len);
            while t.slots[i].group != EMPTY {
                i = (i + 1) & t.mask;
            }
            t.slots[i] = Slot { key, len, group };
        }
        t.lengths = (0..=128u8).rev().filter(|&l| present[l as usize]).collect();
        t
    }

    #[inline]
    fn index(&self, key: u128, len: u8) -> usize {
        // The top bits of the hash pick the slot (usize is at least 32 bits here, so no truncation matters).
        (hash(key, len) >> 32) as usize & self.mask
    }

    #[inline]
    fn lookup(&self, addr: u128) -> Option<u32> {
        for &len in &self.lengths {
            let key = mask(addr, len);
            let mut i = self.index(key, len);
            loop {
                let s = &self.slots[i];
                if s.group == EMPTY {
                    break;
                }
                if s.len == len && s.key == key {
                    return Some(s.group);
                }
                i = (i + 1) & self.mask;
            }
        }
        None
    }

    fn heap_bytes(&self) -> usize {
        self.slots.capacity() * mem::size_of::<Slot>() + self.lengths.capacity()
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

    /// Makes `held` the current snapshot if a newer one was published since; returns whether it changed.
    /// A data-path worker refreshes its snapshot so once per wake-up or batch and routes every packet in
    /// between from it, without the two atomic read-modify-writes of a [`load`](Self::load) per packet.
    #[inline]
    pub fn refresh(&self, held: &mut Arc<Fib>) -> bool {
        let current = self.current.load();
        if Arc::ptr_eq(&current, held) {
            return false;
        }
        *held = Guard::into_inner(current);
        true
    }
}

impl fmt::Debug for FibCell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FibCell")
            .field("routes", &self.current.load().len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    //! White-box checks of the IPv4 trie's chunks, and randomized comparisons of whole tables with a linear
    //! longest-prefix match (the integration tests in `tests/fib.rs` cover the public behaviour).

    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    /// splitmix64, so failures reproduce.
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

    #[test]
    fn chunks_answer_every_position() {
        let mut rng = Rng(1);
        let mut trie = StrideTrie::default();
        let mut levels = Vec::new();
        for round in 0..200 {
            // Runs of random lengths (1 to 64 positions) over a few values, including a run at the very end
            // and single-position runs at word boundaries.
            let mut nodes = [0 as Node; 256];
            let mut i = 0;
            let mut value = rng.below(5) as Node;
            while i < 256 {
                let run = match round % 3 {
                    0 => 1,
                    1 => 1 + rng.below(8) as usize,
                    _ => 1 + rng.below(64) as usize,
                };
                for n in nodes.iter_mut().skip(i).take(run) {
                    *n = value;
                }
                i += run;
                value = (value + 1 + rng.below(3) as Node) % 7;
            }
            let node = trie.compress(&nodes);
            levels.push((nodes, node));
        }
        for (nodes, node) in &levels {
            if node & CHILD == 0 {
                assert!(nodes.iter().all(|n| n == node));
                continue;
            }
            let chunk = trie.chunks[(node & !CHILD) as usize];
            for (i, want) in nodes.iter().enumerate() {
                assert_eq!(trie.runs[chunk.run(i as u8)], *want, "position {i}");
            }
        }
        // A uniform level is no chunk at all.
        let before = trie.chunks.len();
        assert_eq!(trie.compress(&[9; 256]), 9);
        assert_eq!(trie.chunks.len(), before);
    }

    #[test]
    fn uniform_levels_collapse() {
        // Two /17s of one group cover their /16 exactly; 256 /24s of one group cover theirs; a /25 pair of
        // one group equals its /24. None of these needs a chunk.
        let g = Arc::new(NextHopGroup::single(1));
        let mut b = FibBuilder::new();
        for s in [
            "10.1.0.0/17",
            "10.1.128.0/17",
            "10.2.0.0/25",
            "10.2.0.128/25",
        ] {
            b.insert(s.parse().unwrap(), Arc::clone(&g));
        }
        b.insert("10.2.0.0/24".parse().unwrap(), Arc::clone(&g));
        for i in 0..256u32 {
            let p = Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a03_0000 | i << 8)), 24).unwrap();
            b.insert(p, Arc::clone(&g));
        }
        let fib = b.build();
        // Only 10.2.0.0/16 needs a level-2 chunk (its /24 is group 0, the rest of it has no route).
        assert_eq!(fib.v4.chunks.len(), 1);
        assert_eq!(fib.groups.len(), 1);
        for a in ["10.1.0.0", "10.1.255.255", "10.2.0.255", "10.3.77.1"] {
            assert!(fib.lookup(a.parse().unwrap()).is_some(), "{a}");
        }
        for a in ["10.0.255.255", "10.2.1.0", "10.4.0.0"] {
            assert!(fib.lookup(a.parse().unwrap()).is_none(), "{a}");
        }
    }

    /// The reference: the first containing prefix by linear scan over routes sorted longest first.
    fn naive<'a>(
        longest_first: &[&'a (Prefix, Arc<NextHopGroup>)],
        dst: IpAddr,
    ) -> Option<&'a Arc<NextHopGroup>> {
        longest_first
            .iter()
            .find(|(p, _)| p.contains(dst))
            .map(|(_, g)| g)
    }

    /// A random IPv4 prefix: under one of a few /16s (dense chunks, deep nesting) or anywhere, with a length
    /// anywhere from /0 to /32 but mostly around /16-/32.
    fn random_v4(rng: &mut Rng, dense: bool) -> Prefix {
        let addr = if dense {
            [0x0a00_0000u32, 0xc000_0200, 0xc633_6400][rng.below(3) as usize]
                | (rng.next() as u32 & 0x0001_ffff)
        } else {
            rng.next() as u32
        };
        let len = match rng.below(8) {
            0 => rng.below(33) as u8,
            1 => [0, 1, 8, 15, 16, 17, 23, 24, 25, 31, 32][rng.below(11) as usize],
            _ => 14 + rng.below(19) as u8,
        };
        Prefix::new(IpAddr::V4(Ipv4Addr::from(addr)), len).unwrap()
    }

    fn random_v6(rng: &mut Rng, dense: bool) -> Prefix {
        let top: u128 = if dense {
            [0x2001_0db8u128, 0xfd00_0000][rng.below(2) as usize] << 96
        } else {
            u128::from(rng.next()) << 64
        };
        let addr = top | (u128::from(rng.next() & 0xffff_ffff) << 64) | u128::from(rng.next());
        let len = match rng.below(8) {
            0 => rng.below(129) as u8,
            1 => [0, 1, 32, 48, 63, 64, 65, 127, 128][rng.below(9) as usize],
            _ => 24 + rng.below(41) as u8,
        };
        Prefix::new(IpAddr::V6(Ipv6Addr::from(addr)), len).unwrap()
    }

    /// The first and last address of `p`, and the addresses just outside it.
    fn edges(p: &Prefix) -> Vec<IpAddr> {
        match p.addr() {
            IpAddr::V4(a) => {
                let first = u32::from(a);
                let last = first | u32::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
                [first, last, first.wrapping_sub(1), last.wrapping_add(1)]
                    .map(|x| IpAddr::V4(Ipv4Addr::from(x)))
                    .to_vec()
            }
            IpAddr::V6(a) => {
                let first = u128::from(a);
                let last = first | u128::MAX.checked_shr(u32::from(p.len())).unwrap_or(0);
                [first, last, first.wrapping_sub(1), last.wrapping_add(1)]
                    .map(|x| IpAddr::V6(Ipv6Addr::from(x)))
                    .to_vec()
            }
        }
    }

    /// An address inside a random route (host bits random), or anywhere in its family.
    fn probe(rng: &mut Rng, routes: &[(Prefix, Arc<NextHopGroup>)]) -> IpAddr {
        let (p, _) = &routes[rng.below(routes.len() as u64) as usize];
        let anywhere = rng.below(8) == 0;
        match p.addr() {
            IpAddr::V4(a) => {
                let host = (rng.next() as u32)
                    .checked_shr(if anywhere { 0 } else { u32::from(p.len()) })
                    .unwrap_or(0);
                let net = if anywhere { 0 } else { u32::from(a) };
                IpAddr::V4(Ipv4Addr::from(net | host))
            }
            IpAddr::V6(a) => {
                let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
                let host = r
                    .checked_shr(if anywhere { 0 } else { u32::from(p.len()) })
                    .unwrap_or(0);
                let net = if anywhere { 0 } else { u128::from(a) };
                IpAddr::V6(Ipv6Addr::from(net | host))
            }
        }
    }

    /// Compares every lookup of `fib` over `routes`' edges and `random` random probes with the reference.
    fn check(fib: &Fib, routes: &[(Prefix, Arc<NextHopGroup>)], rng: &mut Rng, random: usize) {
        assert_eq!(fib.len(), routes.len());
        let mut dsts: Vec<IpAddr> = routes.iter().flat_map(|(p, _)| edges(p)).collect();
        if !routes.is_empty() {
            dsts.extend((0..random).map(|_| probe(rng, routes)));
        }
        dsts.extend(
            [
                "0.0.0.0",
                "255.255.255.255",
                "::",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ]
            .map(|a| a.parse::<IpAddr>().unwrap()),
        );
        let mut longest_first: Vec<_> = routes.iter().collect();
        longest_first.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        for dst in dsts {
            let got = fib.lookup(dst);
            let want = naive(&longest_first, dst);
            assert!(
                match (got, want) {
                    (Some(g), Some(w)) => Arc::ptr_eq(g, w),
                    (None, None) => true,
                    _ => false,
                },
                "lookup of {dst}: got {got:?}, want {want:?}"
            );
        }
    }

    #[test]
    fn randomized_against_linear_lpm() {
        let mut rng = Rng(0x00f1_b5ee_d000_0005);
        // A pool of groups: most routes share one, as in a real table; equal contents in distinct `Arc`s
        // stay distinct.
        let pool: Vec<Arc<NextHopGroup>> = (0..40)
            .map(|t| Arc::new(NextHopGroup::single(t % 30)))
            .collect();
        for round in 0..12 {
            let n = [1usize, 2, 10, 100, 1000, 3000][round % 6];
            let dense = round % 2 == 0;
            let mut b = FibBuilder::new();
            let mut routes: BTreeMap<Prefix, Arc<NextHopGroup>> = BTreeMap::new();
            // Default routes and host routes in some rounds, always nested ones.
            if round % 3 == 0 {
                for s in ["0.0.0.0/0", "::/0"] {
                    routes.insert(s.parse().unwrap(), Arc::clone(&pool[0]));
                }
            }
            while routes.len() < n {
                let p = match rng.below(6) {
                    0..=2 => random_v4(&mut rng, dense),
                    3 | 4 => random_v6(&mut rng, dense),
                    // A chain of nested prefixes along one address.
                    _ => {
                        let leaf = if rng.below(2) == 0 {
                            random_v4(&mut rng, dense)
                        } else {
                            random_v6(&mut rng, dense)
                        };
                        let max = if leaf.addr().is_ipv4() { 32 } else { 128 };
                        for len in (0..=max).step_by(1 + rng.below(9) as usize) {
                            let g = &pool[rng.below(pool.len() as u64) as usize];
                            routes.insert(Prefix::new(leaf.addr(), len).unwrap(), Arc::clone(g));
                        }
                        Prefix::host(leaf.addr())
                    }
                };
                let g = &pool[rng.below(pool.len() as u64) as usize];
                routes.insert(p, Arc::clone(g));
            }
            for (p, g) in &routes {
                b.insert(*p, Arc::clone(g));
            }
            let list: Vec<_> = routes.iter().map(|(p, g)| (*p, Arc::clone(g))).collect();
            let fib = b.build();
            check(&fib, &list, &mut rng, 2000);

            // The next table: a third withdrawn, some replaced, some added, through `to_builder`.
            let mut next = fib.to_builder();
            for (p, _) in &list {
                match rng.below(6) {
                    0 | 1 => {
                        routes.remove(p);
                        assert!(next.remove(p).is_some());
                    }
                    2 => {
                        let g = &pool[rng.below(pool.len() as u64) as usize];
                        routes.insert(*p, Arc::clone(g));
                        next.insert(*p, Arc::clone(g));
                    }
                    _ => {}
                }
            }
            for _ in 0..n / 4 {
                let p = random_v4(&mut rng, !dense);
                let g = &pool[rng.below(pool.len() as u64) as usize];
                routes.insert(p, Arc::clone(g));
                next.insert(p, Arc::clone(g));
            }
            let list: Vec<_> = routes.iter().map(|(p, g)| (*p, Arc::clone(g))).collect();
            let fib2 = next.build();
            check(&fib2, &list, &mut rng, 2000);
            if list.is_empty() {
                assert!(fib2.is_empty());
            }
        }
    }

    #[test]
    fn every_ipv4_length_at_chunk_edges() {
        // Routes of every length that start or end exactly on /16 and /24 boundaries, nested in both
        // directions, around the first and last address of the space.
        let mut routes = BTreeMap::new();
        let mut t = 0;
        for base in [0u32, 0x0a00_ff00, 0x0aff_0000, 0xffff_ff00, 0x8000_0000] {
            for len in 0..=32u8 {
                for addr in [base, base | 0xff, base.wrapping_sub(1)] {
                    t += 1;
                    let g = Arc::new(NextHopGroup::single(t));
                    routes.insert(
                        Prefix::new(IpAddr::V4(Ipv4Addr::from(addr)), len).unwrap(),
                        g,
                    );
                }
            }
        }
        let mut b = FibBuilder::new();
        for (p, g) in &routes {
            b.insert(*p, Arc::clone(g));
        }
        let list: Vec<_> = routes.into_iter().collect();
        check(&b.build(), &list, &mut Rng(3), 5000);
    }
}
