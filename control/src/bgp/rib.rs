//! The routing information bases of RFC 4271 section 3.2 and the decision process of section 9.1: Adj-RIB-In
//! (post-policy) and Loc-RIB in one table with best path and multipath, one Adj-RIB-Out per neighbour.
//!
//! Sans-IO: the session driver feeds [`Rib::apply_update`] with decoded UPDATEs and calls [`Rib::peer_up`] /
//! [`Rib::peer_down`] on FSM transitions; it drains [`Rib::poll_export`] per neighbour (batches of prefixes
//! sharing one attribute set, ready to encode) and [`Rib::poll_fib_change`] for the forwarding table.
//!
//! Implemented:
//! - import (9.1.1 with policy): RFC 7606 treat-as-withdraw, AS_PATH loop detection (our ASN in the path),
//!   `enforce-first-as` on eBGP (6.3: the first AS must be the neighbour's), LOCAL_PREF received on eBGP
//!   ignored (5.1.5), prefix-list import policy with the RFC 8212 default deny on eBGP, max-prefix (RFC 4486);
//!   a rejected announcement implicitly withdraws the neighbour's previous route for that prefix (9.1.2);
//! - the decision process (9.1.2.2) in this order: highest LOCAL_PREF (100 when absent), locally originated,
//!   shortest AS_PATH (an AS_SET counts 1), lowest ORIGIN, lowest MED among paths from the same neighbour AS
//!   (missing MED = 0), eBGP over iBGP, lowest peer BGP Identifier, lowest peer address;
//! - multipath: every path that survives the steps up to eBGP-over-iBGP with the best path (equal LOCAL_PREF,
//!   AS_PATH length, ORIGIN, MED where comparable, session type), at most `max_paths`, picked by the remaining
//!   tie-breaks; the other paths are backups;
//! - export (9.1.3, 9.2): the best path only; never back to its source, iBGP-learned routes not to iBGP
//!   neighbours, not to a neighbour whose AS is already in the AS_PATH, the well-known communities NO_EXPORT
//!   and NO_ADVERTISE (RFC 1997), export policy with RFC 8212; eBGP: our ASN prepended 1 + `prepend` times,
//!   NEXT_HOP self, no LOCAL_PREF, no MED (braid originates none, and a MED learned from one AS is not passed
//!   to another, 5.1.4), non-transitive extended communities removed (RFC 4360 6); iBGP: AS_PATH kept,
//!   LOCAL_PREF set (100 if absent), NEXT_HOP self as well (braid is always next hop self: simple, and right
//!   for a gateway whose iBGP neighbours cannot reach the tunnel peers). Non-transitive unknown attributes are
//!   never passed on (5); transitive ones are (the codec sets PARTIAL). Adj-RIB-Out remembers what was sent:
//!   only changes go out, End-of-RIB (RFC 4724 2) follows the initial dump, ROUTE-REFRESH (RFC 2918) resends.
//!
//! Left out on purpose: the IGP-cost step (braid has no IGP; every next hop is a directly connected tunnel or
//! LAN peer), next-hop reachability checks, route reflection and confederations, aggregation, route flap
//! damping, graceful restart (RFC 4724 beyond End-of-RIB), a pre-policy Adj-RIB-In (soft reconfiguration: a
//! changed import policy takes effect through ROUTE-REFRESH, sent by the driver).
//!
//! Memory and speed (1M prefixes is the design point): attribute sets are interned (identical sets share one
//! `Arc`), so are the per-neighbour paths, and so are whole *path sets*: a prefix's Loc-RIB entry is a single
//! pointer to a ranked, shared set of paths, and the decision process runs once per distinct set, not once
//! per prefix. IPv4 keys are packed into a `u64`. Every prefix operation is a few hash-table operations.

use std::borrow::Borrow;
use std::collections::hash_map::{Entry as MapEntry, RandomState};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::hash::{BuildHasher, Hash, Hasher};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::policy::NeighborPolicy;
use super::types::{
    attr_flags, error_code, subcode, Asn, Family, Notification, PathAttributes, Prefix, Update,
};

/// A neighbour's handle, chosen by the caller (the config's neighbour index, say).
pub type PeerId = usize;

/// LOCAL_PREF assumed when a path has none (RFC 4271 leaves the default to the operator; 100 is everyone's).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// Well-known communities (RFC 1997).
pub mod community {
    pub const NO_EXPORT: u32 = 0xFFFF_FF01;
    pub const NO_ADVERTISE: u32 = 0xFFFF_FF02;
    pub const NO_EXPORT_SUBCONFED: u32 = 0xFFFF_FF03;
}

/// Prefixes looked at per refill of a neighbour's export queue: bounds the latency of one
/// [`Rib::poll_export`] call and the size of one [`Export`].
const EXPORT_CHUNK: usize = 4096;

/// A configured neighbour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    pub id: PeerId,
    pub asn: Asn,
    /// The neighbour's address (the last tie-break of the decision process).
    pub addr: IpAddr,
    /// Its BGP Identifier, known from its OPEN ([`Rib::set_peer_router_id`]).
    pub router_id: Ipv4Addr,
    pub ebgp: bool,
    pub policy: NeighborPolicy,
    /// Our address on that session, used as NEXT_HOP for IPv4 routes we send (must be IPv4 for IPv4 routes to
    /// be sent at all: braid does not do RFC 8950 IPv4-over-IPv6 next hops).
    pub next_hop_self: IpAddr,
    /// Our IPv6 address on that session, the MP_REACH next hop of IPv6 routes we send; without it (and with an
    /// IPv4 `next_hop_self`) no IPv6 route is sent to this neighbour.
    pub next_hop_self_v6: Option<Ipv6Addr>,
}

/// The neighbour sent more prefixes than its `max_prefix`: stop the session with [`Self::notification`]
/// (Cease / Maximum Number of Prefixes Reached) and call [`Rib::peer_down`]. The UPDATE was applied up to the
/// prefix that would have exceeded the limit.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct MaxPrefixExceeded {
    /// The family of the prefix that went over the limit.
    pub family: Family,
    pub limit: u32,
}

impl MaxPrefixExceeded {
    /// The NOTIFICATION to send: Cease, subcode 1, data AFI (2 octets), SAFI (1), limit (4) (RFC 4486 4).
    pub fn notification(&self) -> Notification {
        let mut data = Vec::with_capacity(7);
        data.extend_from_slice(&self.family.afi().to_be_bytes());
        data.push(self.family.safi());
        data.extend_from_slice(&self.limit.to_be_bytes());
        Notification::new(error_code::CEASE, subcode::MAX_PREFIXES_REACHED, data)
    }
}

impl fmt::Display for MaxPrefixExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "maximum number of prefixes ({}) exceeded ({:?})",
            self.limit, self.family
        )
    }
}

impl std::error::Error for MaxPrefixExceeded {}

/// What one UPDATE did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateOutcome {
    /// NLRI announced in the UPDATE (IPv4 and MP_REACH).
    pub received: usize,
    /// Of those, accepted into the RIB.
    pub accepted: usize,
    /// Routes of this neighbour removed: withdrawn, treated as withdrawn, or replaced by a rejected route.
    pub withdrawn: usize,
    /// Rejected: our own ASN in the AS_PATH.
    pub rejected_loop: usize,
    /// Rejected: eBGP AS_PATH not starting with the neighbour's AS.
    pub rejected_first_as: usize,
    /// Rejected by the import policy (or RFC 8212).
    pub rejected_policy: usize,
    /// RFC 7606 treat-as-withdraw applied to the whole UPDATE.
    pub treat_as_withdraw: bool,
    /// The UPDATE was an End-of-RIB marker for this family.
    pub end_of_rib: Option<Family>,
}

/// Per-neighbour counters for `braid show bgp`. `received` and the rejection counters count since the session
/// came up; `accepted` and `advertised` are the current sizes of the neighbour's Adj-RIB-In (post-policy) and
/// Adj-RIB-Out.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct PeerCounts {
    pub received: u64,
    pub accepted: u64,
    pub advertised: u64,
    pub rejected_loop: u64,
    pub rejected_first_as: u64,
    pub rejected_policy: u64,
    /// UPDATEs handled as withdrawals by RFC 7606.
    pub treat_as_withdraw: u64,
}

/// One batch for a neighbour's session driver to encode; prefixes of an `Announce` share their attributes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Export {
    /// Announce `prefixes` with `attrs`. For IPv4 the NEXT_HOP is in `attrs` (and repeated in `next_hops`); for
    /// IPv6 `next_hops` is the MP_REACH next hop and `attrs.next_hop` is `None`.
    Announce {
        attrs: Arc<PathAttributes>,
        family: Family,
        next_hops: Vec<IpAddr>,
        prefixes: Vec<Prefix>,
    },
    Withdraw {
        family: Family,
        prefixes: Vec<Prefix>,
    },
    EndOfRib(Family),
}

/// One Loc-RIB entry, for display.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteView {
    pub prefix: Prefix,
    pub best: PathView,
    /// The ECMP set, best first.
    pub multipath: Vec<PathView>,
    /// Valid paths not in the ECMP set, best first.
    pub backups: Vec<PathView>,
}

/// One path of a [`RouteView`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathView {
    /// `None` for a locally originated route.
    pub peer: Option<PeerId>,
    pub attrs: Arc<PathAttributes>,
    pub next_hop: Option<IpAddr>,
}

/// A prefix whose forwarding set changed: the next hops of all its learned paths, the ECMP set first, then the
/// backups; empty when the prefix is no longer forwarded by BGP (gone, or now locally originated).
#[derive(Clone, Debug, PartialEq)]
pub struct FibChange {
    pub prefix: Prefix,
    pub next_hops: Vec<FibNextHop>,
}

/// One next hop of a [`FibChange`].
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct FibNextHop {
    pub peer: PeerId,
    pub addr: IpAddr,
    /// Not in the ECMP set (a longer AS_PATH, say): carries traffic only when no ECMP member is left.
    pub backup: bool,
    /// The path's link-bandwidth extended community (draft-ietf-idr-link-bandwidth), in bytes per second.
    pub link_bandwidth: Option<f32>,
}

// ---------------------------------------------------------------------------------------------------------
// Hashing: a seeded folded-multiply hash (the keys are prefixes, pointers and small integers; SipHash would
// cost more than the rest of a prefix's processing). Seeded per RIB from the OS, so a neighbour cannot aim
// prefixes at one bucket chain.

#[derive(Clone)]
struct Seed {
    acc: u64,
    key: u64,
}

impl Seed {
    fn random() -> Seed {
        let s = RandomState::new();
        Seed {
            acc: s.hash_one(0x5eed_u64),
            key: s.hash_one(0xb01d_u64) | 1,
        }
    }
}

impl BuildHasher for Seed {
    type Hasher = FoldHasher;

    fn build_hasher(&self) -> FoldHasher {
        FoldHasher {
            acc: self.acc,
            key: self.key,
        }
    }
}

struct FoldHasher {
    acc: u64,
    key: u64,
}

#[inline]
fn fold_mul(a: u64, b: u64) -> u64 {
    let m = u128::from(a) * u128::from(b);
    (m as u64) ^ ((m >> 64) as u64)
}

impl Hasher for FoldHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }

    #[inline]
    fn write_u8(&mut self, v: u8) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u16(&mut self, v: u16) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u32(&mut self, v: u32) {
        self.write_u64(u64::from(v));
    }

    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.acc = fold_mul(self.acc ^ v, self.key);
    }

    #[inline]
    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        fold_mul(self.acc, 0x9E37_79B9_7F4A_7C15 ^ self.key)
    }
}

type Map<K, V> = HashMap<K, V, Seed>;

// ---------------------------------------------------------------------------------------------------------
// PrefixMap: IPv4 prefixes packed into a u64 key (8 bytes instead of 18), IPv6 as they are.

fn v4_key(addr: Ipv4Addr, len: u8) -> u64 {
    (u64::from(u32::from(addr)) << 8) | u64::from(len)
}

fn v4_prefix(key: u64) -> Prefix {
    let addr = Ipv4Addr::from((key >> 8) as u32);
    // Keys are only made by `v4_key` from valid prefixes, so the length is <= 32.
    Prefix::new(IpAddr::V4(addr), (key & 0xff) as u8).expect("v4 key holds a valid length")
}

enum Change<V> {
    Keep,
    Set(V),
    Remove,
}

struct PrefixMap<V> {
    v4: Map<u64, V>,
    v6: Map<Prefix, V>,
}

impl<V> PrefixMap<V> {
    fn new(seed: &Seed) -> PrefixMap<V> {
        PrefixMap {
            v4: HashMap::with_hasher(seed.clone()),
            v6: HashMap::with_hasher(seed.clone()),
        }
    }

    fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    fn get(&self, p: &Prefix) -> Option<&V> {
        match p.addr() {
            IpAddr::V4(a) => self.v4.get(&v4_key(a, p.len())),
            IpAddr::V6(_) => self.v6.get(p),
        }
    }

    fn contains(&self, p: &Prefix) -> bool {
        self.get(p).is_some()
    }

    fn insert(&mut self, p: Prefix, v: V) -> Option<V> {
        match p.addr() {
            IpAddr::V4(a) => self.v4.insert(v4_key(a, p.len()), v),
            IpAddr::V6(_) => self.v6.insert(p, v),
        }
    }

    fn remove(&mut self, p: &Prefix) -> Option<V> {
        match p.addr() {
            IpAddr::V4(a) => self.v4.remove(&v4_key(a, p.len())),
            IpAddr::V6(_) => self.v6.remove(p),
        }
    }

    fn clear(&mut self) {
        self.v4 = HashMap::with_hasher(self.v4.hasher().clone());
        self.v6 = HashMap::with_hasher(self.v6.hasher().clone());
    }

    fn keys(&self) -> impl Iterator<Item = Prefix> + '_ {
        self.v4
            .keys()
            .map(|k| v4_prefix(*k))
            .chain(self.v6.keys().copied())
    }

    /// One hash lookup: `f` sees the current value and says what becomes of it.
    fn modify<R>(&mut self, p: &Prefix, f: impl FnOnce(Option<&V>) -> (Change<V>, R)) -> R {
        fn apply<K, V, R>(
            e: MapEntry<'_, K, V>,
            f: impl FnOnce(Option<&V>) -> (Change<V>, R),
        ) -> R {
            match e {
                MapEntry::Occupied(mut o) => {
                    let (c, r) = f(Some(o.get()));
                    match c {
                        Change::Keep => {}
                        Change::Set(v) => {
                            o.insert(v);
                        }
                        Change::Remove => {
                            o.remove();
                        }
                    }
                    r
                }
                MapEntry::Vacant(v) => {
                    let (c, r) = f(None);
                    if let Change::Set(x) = c {
                        v.insert(x);
                    }
                    r
                }
            }
        }
        match p.addr() {
            IpAddr::V4(a) => apply(self.v4.entry(v4_key(a, p.len())), f),
            IpAddr::V6(_) => apply(self.v6.entry(*p), f),
        }
    }

    /// Visits every entry; `f` may replace the value, or return `false` to remove it.
    fn retain_mut(&mut self, mut f: impl FnMut(Prefix, &mut V) -> bool) {
        self.v4.retain(|k, v| f(v4_prefix(*k), v));
        self.v6.retain(|k, v| f(*k, v));
    }
}

// ---------------------------------------------------------------------------------------------------------
// Interning.

/// An `Arc` compared and hashed by content, so a set of them finds the shared copy of a value.
struct Interned<T>(Arc<T>);

impl<T: Hash> Hash for Interned<T> {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (*self.0).hash(state)
    }
}

impl<T: PartialEq> PartialEq for Interned<T> {
    fn eq(&self, other: &Self) -> bool {
        *self.0 == *other.0
    }
}

impl<T: Eq> Eq for Interned<T> {}

impl<T> Borrow<T> for Interned<T> {
    fn borrow(&self) -> &T {
        &self.0
    }
}

const PURGE_MIN: usize = 1024;

/// Values nobody but the interner holds are dropped when the interner has doubled since the last sweep, so
/// the sweeps cost O(1) amortised per insertion.
struct Interner<T> {
    set: HashSet<Interned<T>, Seed>,
    purge_at: usize,
}

impl<T: Hash + Eq> Interner<T> {
    fn new(seed: &Seed) -> Interner<T> {
        Interner {
            set: HashSet::with_hasher(seed.clone()),
            purge_at: PURGE_MIN,
        }
    }

    /// The shared copy of `*v` (`v` itself if it is the first).
    fn intern_arc(&mut self, v: &Arc<T>) -> Arc<T> {
        if let Some(x) = self.set.get(&**v) {
            return x.0.clone();
        }
        self.purge_if_due();
        self.set.insert(Interned(v.clone()));
        v.clone()
    }

    fn intern(&mut self, v: T) -> Arc<T> {
        if let Some(x) = self.set.get(&v) {
            return x.0.clone();
        }
        self.purge_if_due();
        let a = Arc::new(v);
        self.set.insert(Interned(a.clone()));
        a
    }

    fn purge_if_due(&mut self) {
        if self.set.len() >= self.purge_at {
            self.purge();
        }
    }

    fn purge(&mut self) {
        self.set.retain(|x| Arc::strong_count(&x.0) > 1);
        self.purge_at = (self.set.len() * 2).max(PURGE_MIN);
    }
}

/// A route to one prefix as one source sent it: everything the decision process needs, so a ranking computed
/// once for a set of paths stays right for as long as those paths exist. Interned: all prefixes of an UPDATE
/// (and of later UPDATEs with the same attributes) share one.
#[derive(Debug)]
struct Path {
    /// `None` = locally originated.
    source: Option<PeerId>,
    /// Interned, so compared by pointer.
    attrs: Arc<PathAttributes>,
    next_hop: Option<IpAddr>,
    ebgp: bool,
    router_id: Ipv4Addr,
    peer_addr: Option<IpAddr>,
    /// neighborAS() of 9.1.2.2 c: the first AS of the path, or our own for paths originated inside our AS.
    neighbor_as: Asn,
}

impl PartialEq for Path {
    fn eq(&self, o: &Path) -> bool {
        self.source == o.source
            && Arc::ptr_eq(&self.attrs, &o.attrs)
            && self.next_hop == o.next_hop
            && self.ebgp == o.ebgp
            && self.router_id == o.router_id
            && self.peer_addr == o.peer_addr
            && self.neighbor_as == o.neighbor_as
    }
}

impl Eq for Path {}

impl Hash for Path {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.source.hash(state);
        (Arc::as_ptr(&self.attrs) as usize).hash(state);
        self.next_hop.hash(state);
        self.router_id.hash(state);
    }
}

impl Path {
    fn local_pref(&self) -> u32 {
        self.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF)
    }

    fn med(&self) -> u32 {
        self.attrs.med.unwrap_or(0)
    }

    fn view(&self) -> PathView {
        PathView {
            peer: self.source,
            attrs: self.attrs.clone(),
            next_hop: self.next_hop,
        }
    }
}

/// All paths to a prefix, ranked: `ranked[..multipath]` is the ECMP set (best first), the rest are backups
/// in preference order. Shared by every prefix with the same paths.
#[derive(Debug)]
struct PathSet {
    ranked: Box<[Arc<Path>]>,
    multipath: usize,
}

impl PathSet {
    fn best(&self) -> &Arc<Path> {
        &self.ranked[0]
    }

    fn has(&self, source: Option<PeerId>) -> bool {
        self.ranked.iter().any(|p| p.source == source)
    }

    fn multipath(&self) -> &[Arc<Path>] {
        &self.ranked[..self.multipath]
    }

    fn fib_next_hops(&self) -> Vec<FibNextHop> {
        if self.best().source.is_none() {
            // Locally originated: the prefix is ours, so no learned path (not even as a backup) forwards it.
            return Vec::new();
        }
        self.ranked
            .iter()
            .enumerate()
            .filter_map(|(i, p)| {
                Some(FibNextHop {
                    peer: p.source?,
                    addr: p.next_hop?,
                    backup: i >= self.multipath,
                    link_bandwidth: p
                        .attrs
                        .ext_communities
                        .iter()
                        .find_map(|c| c.link_bandwidth())
                        .map(|(_, bw)| bw)
                        .filter(|bw| bw.is_finite() && *bw > 0.0),
                })
            })
            .collect()
    }
}

/// The interned path sets, keyed by their members' addresses (sorted). A key's addresses stay valid while its
/// set is in the map, because the set holds its paths.
struct SetInterner {
    map: Map<Box<[usize]>, Arc<PathSet>>,
    purge_at: usize,
}

impl SetInterner {
    fn get_or_rank(&mut self, members: Vec<Arc<Path>>, max_paths: usize) -> Arc<PathSet> {
        let mut key: Vec<usize> = members.iter().map(|p| Arc::as_ptr(p) as usize).collect();
        key.sort_unstable();
        if let Some(s) = self.map.get(&key[..]) {
            return s.clone();
        }
        if self.map.len() >= self.purge_at {
            self.purge();
        }
        let set = Arc::new(rank(members, max_paths));
        self.map.insert(key.into_boxed_slice(), set.clone());
        set
    }

    fn purge(&mut self) {
        self.map.retain(|_, s| Arc::strong_count(s) > 1);
        self.purge_at = (self.map.len() * 2).max(PURGE_MIN);
    }
}

// ---------------------------------------------------------------------------------------------------------
// The decision process.

/// One round of 9.1.2.2 over `cands` (indices into `paths`): the winner, and the paths still in the running
/// after the eBGP-over-iBGP step (the ECMP candidates).
fn select(paths: &[Arc<Path>], cands: &[usize]) -> (usize, Vec<usize>) {
    let mut c = cands.to_vec();
    // a') Highest degree of preference (LOCAL_PREF).
    if let Some(best) = c.iter().map(|&i| paths[i].local_pref()).max() {
        c.retain(|&i| paths[i].local_pref() == best);
    }
    // Locally originated routes over learned ones.
    if c.iter().any(|&i| paths[i].source.is_none()) {
        c.retain(|&i| paths[i].source.is_none());
    }
    // a) Shortest AS_PATH.
    if let Some(best) = c.iter().map(|&i| paths[i].attrs.as_path.len()).min() {
        c.retain(|&i| paths[i].attrs.as_path.len() == best);
    }
    // b) Lowest ORIGIN.
    if let Some(best) = c.iter().map(|&i| paths[i].attrs.origin).min() {
        c.retain(|&i| paths[i].attrs.origin == best);
    }
    // c) Lowest MED among paths from the same neighbour AS.
    let before = c.clone();
    c.retain(|&i| {
        !before.iter().any(|&j| {
            paths[j].neighbor_as == paths[i].neighbor_as && paths[j].med() < paths[i].med()
        })
    });
    // d) eBGP over iBGP.
    if c.iter().any(|&i| paths[i].ebgp) {
        c.retain(|&i| paths[i].ebgp);
    }
    // (e, IGP cost, does not apply.) f) lowest BGP Identifier, g) lowest peer address.
    let winner = c
        .iter()
        .copied()
        .min_by_key(|&i| (paths[i].router_id, paths[i].peer_addr, paths[i].source))
        .unwrap_or(cands[0]);
    (winner, c)
}

/// Ranks a non-empty set of paths: ECMP set first (at most `max_paths`), then backups, each in preference
/// order (repeated selection, so a backup's rank is where it would stand if the paths above it went).
fn rank(mut members: Vec<Arc<Path>>, max_paths: usize) -> PathSet {
    if members.len() <= 1 {
        return PathSet {
            ranked: members.into_boxed_slice(),
            multipath: 1,
        };
    }
    members.sort_by_key(|p| p.source);
    let n = members.len();
    let mut remaining: Vec<usize> = (0..n).collect();
    let mut order = Vec::with_capacity(n);
    let mut eligible = vec![false; n];
    let mut first = true;
    while !remaining.is_empty() {
        let (winner, candidates) = select(&members, &remaining);
        if first {
            for i in candidates {
                eligible[i] = true;
            }
            first = false;
        }
        order.push(winner);
        remaining.retain(|&i| i != winner);
    }
    let max_paths = max_paths.max(1);
    let mut ranked = Vec::with_capacity(n);
    let mut rest = Vec::new();
    for i in order {
        if eligible[i] && ranked.len() < max_paths {
            ranked.push(members[i].clone());
        } else {
            rest.push(members[i].clone());
        }
    }
    let multipath = ranked.len();
    ranked.extend(rest);
    PathSet {
        ranked: ranked.into_boxed_slice(),
        multipath,
    }
}

/// What to make of an UPDATE's NLRI as a whole.
enum Verdict<'a> {
    Accept(&'a Arc<PathAttributes>),
    TreatAsWithdraw,
    Loop,
    FirstAs,
}

/// What replacing `source`'s path in a path set did; depends only on the old set and the new path, so it is
/// computed once per distinct old set in a batch (see [`StepCache`]).
#[derive(Clone)]
struct Step {
    new: Option<Arc<PathSet>>,
    had: bool,
    has: bool,
    best_changed: bool,
    fib_changed: bool,
}

/// Memoises steps within one batch (an UPDATE's prefixes, a peer going down). Holds the old sets, so their
/// addresses cannot be reused for another set while the cache lives.
struct StepCache {
    source: Option<PeerId>,
    path: Option<Arc<Path>>,
    steps: Map<usize, (Option<Arc<PathSet>>, Step)>,
}

impl StepCache {
    fn new(seed: &Seed, source: Option<PeerId>, path: Option<Arc<Path>>) -> StepCache {
        StepCache {
            source,
            path,
            steps: HashMap::with_hasher(seed.clone()),
        }
    }

    fn step(
        &mut self,
        sets: &mut SetInterner,
        max_paths: usize,
        old: Option<&Arc<PathSet>>,
    ) -> Step {
        let key = old.map_or(0, |s| Arc::as_ptr(s) as usize);
        if let Some((_, s)) = self.steps.get(&key) {
            return s.clone();
        }
        let had = old.is_some_and(|s| s.has(self.source));
        let mut members: Vec<Arc<Path>> = old
            .map(|s| {
                s.ranked
                    .iter()
                    .filter(|p| p.source != self.source)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        if let Some(p) = &self.path {
            members.push(p.clone());
        }
        let unchanged = match (old, &self.path) {
            (Some(s), Some(p)) => s.ranked.iter().any(|q| Arc::ptr_eq(q, p)),
            (None, None) => true,
            (Some(_), None) => !had,
            (None, Some(_)) => false,
        };
        let new = if unchanged {
            old.cloned()
        } else if members.is_empty() {
            None
        } else {
            Some(sets.get_or_rank(members, max_paths))
        };
        let best_changed = match (old, &new) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a.best(), b.best()),
            (None, None) => false,
            _ => true,
        };
        let fib_changed = {
            let a = old.map(|s| s.fib_next_hops()).unwrap_or_default();
            let b = new.as_ref().map(|s| s.fib_next_hops()).unwrap_or_default();
            a != b
        };
        let step = Step {
            has: self.path.is_some(),
            new,
            had,
            best_changed,
            fib_changed,
        };
        self.steps.insert(key, (old.cloned(), step.clone()));
        step
    }
}

// ---------------------------------------------------------------------------------------------------------
// Neighbours.

/// Source attributes' address -> (the source attributes, what is exported of them).
type ExportCache = Map<usize, (Arc<PathAttributes>, Option<Arc<PathAttributes>>)>;

struct Peer {
    info: PeerInfo,
    up: bool,
    families: Vec<Family>,
    counts: PeerCounts,
    adj_rib_out: PrefixMap<Arc<PathAttributes>>,
    /// Prefixes still to look at for the initial dump or a ROUTE-REFRESH (popped from the end).
    dump: Vec<Prefix>,
    /// Announce dumped prefixes even if Adj-RIB-Out says they were sent (ROUTE-REFRESH).
    dump_force: bool,
    end_of_rib_pending: bool,
    /// Position in the RIB's change log.
    cursor: u64,
    out: VecDeque<Export>,
    /// Exported attributes by (family, source attributes' address); `None` = the attributes forbid export to
    /// this neighbour. Holds the source attributes so the address stays theirs.
    export_cache: [ExportCache; 2],
    export_cache_purge_at: usize,
}

fn family_index(f: Family) -> usize {
    match f {
        Family::Ipv4Unicast => 0,
        Family::Ipv6Unicast => 1,
    }
}

impl Peer {
    fn next_hop_for(&self, family: Family) -> Option<IpAddr> {
        match family {
            Family::Ipv4Unicast => match self.info.next_hop_self {
                IpAddr::V4(a) => Some(IpAddr::V4(a)),
                IpAddr::V6(_) => None,
            },
            Family::Ipv6Unicast => match (self.info.next_hop_self_v6, self.info.next_hop_self) {
                (Some(a), _) => Some(IpAddr::V6(a)),
                (None, IpAddr::V6(a)) => Some(IpAddr::V6(a)),
                (None, IpAddr::V4(_)) => None,
            },
        }
    }

    fn clear_session_state(&mut self) {
        self.adj_rib_out.clear();
        self.dump = Vec::new();
        self.dump_force = false;
        self.end_of_rib_pending = false;
        self.out.clear();
        for c in &mut self.export_cache {
            c.clear();
        }
    }
}

/// The attributes of `src` as sent to `peer` in `family`, or `None` when they may not be sent to it.
fn export_attributes(
    local_asn: Asn,
    peer: &PeerInfo,
    family: Family,
    src: &PathAttributes,
) -> Option<PathAttributes> {
    if src.communities.contains(&community::NO_ADVERTISE) {
        return None;
    }
    if peer.ebgp
        && (src.communities.contains(&community::NO_EXPORT)
            || src.communities.contains(&community::NO_EXPORT_SUBCONFED)
            || src.as_path.contains(peer.asn))
    {
        return None;
    }
    let mut a = src.clone();
    a.unknown.retain(|u| u.flags & attr_flags::TRANSITIVE != 0);
    if peer.ebgp {
        a.as_path
            .prepend(local_asn, 1 + usize::from(peer.policy.prepend_count()));
        a.local_pref = None;
        a.med = None;
        // Non-transitive extended communities (type octet bit 0x40) stay in the AS (RFC 4360 6).
        a.ext_communities.retain(|c| c.0[0] & 0x40 == 0);
    } else {
        a.local_pref = Some(src.local_pref.unwrap_or(DEFAULT_LOCAL_PREF));
    }
    a.next_hop = match (family, peer.next_hop_self) {
        (Family::Ipv4Unicast, IpAddr::V4(nh)) => Some(nh),
        _ => None,
    };
    Some(a)
}

// ---------------------------------------------------------------------------------------------------------
// The RIB.

/// Adj-RIBs-In, Loc-RIB and Adj-RIBs-Out of one BGP speaker.
///
/// ```
/// use std::net::{IpAddr, Ipv4Addr};
/// use std::sync::Arc;
/// use braid_control::bgp::policy::{NeighborPolicy, PrefixList};
/// use braid_control::bgp::rib::{Export, PeerInfo, Rib};
/// use braid_control::bgp::types::{AsPath, Family, PathAttributes, Update};
///
/// let mut rib = Rib::new(65001, Ipv4Addr::new(192, 0, 2, 1), 8);
/// let any = PrefixList::parse(["0.0.0.0/0 le 32"]).unwrap();
/// rib.add_peer(PeerInfo {
///     id: 0,
///     asn: 65515,
///     addr: IpAddr::V4(Ipv4Addr::new(169, 254, 21, 1)),
///     router_id: Ipv4Addr::new(198, 51, 100, 10),
///     ebgp: true,
///     policy: NeighborPolicy { import: Some(any.clone()), export: Some(any), ..Default::default() },
///     next_hop_self: IpAddr::V4(Ipv4Addr::new(169, 254, 21, 2)),
///     next_hop_self_v6: None,
/// });
/// rib.originate("10.10.0.0/16".parse().unwrap());
/// rib.peer_up(0, &[Family::Ipv4Unicast]); // the FSM reached Established
/// let attrs = PathAttributes {
///     as_path: AsPath::from_sequence(&[65515]),
///     next_hop: Some(Ipv4Addr::new(169, 254, 21, 1)),
///     ..Default::default()
/// };
/// let update = Update {
///     attributes: Some(Arc::new(attrs)),
///     nlri: vec!["10.20.0.0/16".parse().unwrap()],
///     ..Default::default()
/// };
/// rib.apply_update(0, &update).expect("under max-prefix");
/// // Our network goes out with our ASN, then End-of-RIB; the peer's own route is not sent back.
/// let Some(Export::Announce { attrs, prefixes, .. }) = rib.poll_export(0) else { panic!() };
/// assert_eq!((attrs.as_path.to_string(), prefixes.len()), ("65001".to_string(), 1));
/// assert_eq!(rib.poll_export(0), Some(Export::EndOfRib(Family::Ipv4Unicast)));
/// assert_eq!(rib.poll_export(0), None);
/// assert_eq!(rib.poll_fib_change().unwrap().next_hops.len(), 1);
/// ```
pub struct Rib {
    local_asn: Asn,
    local_id: Ipv4Addr,
    max_paths: usize,
    seed: Seed,
    peers: BTreeMap<PeerId, Peer>,
    peers_up: usize,
    loc_rib: PrefixMap<Arc<PathSet>>,
    attrs: Interner<PathAttributes>,
    paths: Interner<Path>,
    sets: SetInterner,
    /// Prefixes whose best path changed, consumed by every up neighbour at its own pace (`Peer::cursor`);
    /// `log[0]` has sequence number `log_base`.
    log: VecDeque<Prefix>,
    log_base: u64,
    fib_tracking: bool,
    fib_dirty: PrefixMap<()>,
    fib_ready: VecDeque<Prefix>,
}

impl Rib {
    /// `max_paths` is the ECMP width (at least 1).
    pub fn new(local_asn: Asn, local_id: Ipv4Addr, max_paths: usize) -> Rib {
        let seed = Seed::random();
        Rib {
            local_asn,
            local_id,
            max_paths: max_paths.max(1),
            peers: BTreeMap::new(),
            peers_up: 0,
            loc_rib: PrefixMap::new(&seed),
            attrs: Interner::new(&seed),
            paths: Interner::new(&seed),
            sets: SetInterner {
                map: HashMap::with_hasher(seed.clone()),
                purge_at: PURGE_MIN,
            },
            log: VecDeque::new(),
            log_base: 0,
            fib_tracking: true,
            fib_dirty: PrefixMap::new(&seed),
            fib_ready: VecDeque::new(),
            seed,
        }
    }

    /// Adds a configured neighbour (down until [`Self::peer_up`]), or replaces the configuration of an existing
    /// one. A changed import policy applies to UPDATEs received from now on (ask the neighbour for a
    /// ROUTE-REFRESH); a changed export policy applies to exports computed from now on (call
    /// [`Self::refresh_export`] to re-evaluate what was sent).
    pub fn add_peer(&mut self, info: PeerInfo) {
        let seed = &self.seed;
        match self.peers.get_mut(&info.id) {
            Some(p) => {
                p.info = info;
                for c in &mut p.export_cache {
                    c.clear();
                }
            }
            None => {
                self.peers.insert(
                    info.id,
                    Peer {
                        info,
                        up: false,
                        families: Vec::new(),
                        counts: PeerCounts::default(),
                        adj_rib_out: PrefixMap::new(seed),
                        dump: Vec::new(),
                        dump_force: false,
                        end_of_rib_pending: false,
                        cursor: 0,
                        out: VecDeque::new(),
                        export_cache: [
                            HashMap::with_hasher(seed.clone()),
                            HashMap::with_hasher(seed.clone()),
                        ],
                        export_cache_purge_at: PURGE_MIN,
                    },
                );
            }
        }
    }

    /// Records the neighbour's BGP Identifier from its OPEN (used by the decision process for the routes it
    /// sends from now on).
    /// Sets our own addresses on the session to `peer` (learned when its TCP connection is up), used as next hop
    /// self. Call before [`Rib::peer_up`].
    pub fn set_next_hop_self(&mut self, peer: PeerId, v4: IpAddr, v6: Option<Ipv6Addr>) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.info.next_hop_self = v4;
            p.info.next_hop_self_v6 = v6;
        }
    }

    pub fn set_peer_router_id(&mut self, peer: PeerId, id: Ipv4Addr) {
        if let Some(p) = self.peers.get_mut(&peer) {
            p.info.router_id = id;
        }
    }

    /// The session reached Established with these negotiated `families`: schedules the full Adj-RIB-Out
    /// dump, followed by an End-of-RIB per family. (If the neighbour was still up, it first goes down.)
    pub fn peer_up(&mut self, peer: PeerId, families: &[Family]) {
        if self.peers.get(&peer).is_some_and(|p| p.up) {
            self.peer_down(peer);
        }
        let dump: Vec<Prefix> = self.loc_rib.keys().collect();
        let log_end = self.log_end();
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        p.clear_session_state();
        p.up = true;
        p.families = families.to_vec();
        p.counts = PeerCounts::default();
        p.cursor = log_end;
        p.dump = dump;
        p.end_of_rib_pending = true;
        self.peers_up += 1;
    }

    /// The session left Established: every route learned from the neighbour is withdrawn (and the exports to
    /// the others follow), nothing more is exported to it.
    pub fn peer_down(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        if !p.up {
            return;
        }
        p.up = false;
        p.clear_session_state();
        let had_routes = p.counts.accepted > 0;
        p.counts.accepted = 0;
        p.counts.advertised = 0;
        self.peers_up -= 1;
        if had_routes {
            let mut cache = StepCache::new(&self.seed, Some(peer), None);
            let (sets, max_paths) = (&mut self.sets, self.max_paths);
            let (log, fib_dirty) = (&mut self.log, &mut self.fib_dirty);
            let (log_on, fib_on) = (self.peers_up > 0, self.fib_tracking);
            self.loc_rib.retain_mut(|prefix, set| {
                let step = cache.step(sets, max_paths, Some(set));
                if log_on && step.best_changed {
                    log.push_back(prefix);
                }
                if fib_on && step.fib_changed {
                    fib_dirty.insert(prefix, ());
                }
                match step.new {
                    Some(n) => {
                        *set = n;
                        true
                    }
                    None => false,
                }
            });
        }
        self.trim_log();
        // The neighbour's paths may still sit in the interners (a set only the interner holds); let them go.
        self.sets.purge();
        self.paths.purge();
    }

    /// Forgets a neighbour removed from the configuration (after taking it down, which withdraws its routes).
    pub fn remove_peer(&mut self, peer: PeerId) {
        self.peer_down(peer);
        self.peers.remove(&peer);
    }

    /// Originates `prefix` (a `networks` entry): ORIGIN IGP, empty AS_PATH.
    pub fn originate(&mut self, prefix: Prefix) {
        let attrs = self.attrs.intern(PathAttributes::default());
        let path = self.paths.intern(Path {
            source: None,
            attrs,
            next_hop: None,
            ebgp: false,
            router_id: self.local_id,
            peer_addr: None,
            neighbor_as: self.local_asn,
        });
        let mut cache = StepCache::new(&self.seed, None, Some(path));
        let mut count = 0;
        let _ = self.apply_prefix(&prefix, &mut cache, &mut count, None);
    }

    /// Stops originating `prefix` (a `networks` entry removed on reload).
    pub fn withdraw_originated(&mut self, prefix: Prefix) {
        let mut cache = StepCache::new(&self.seed, None, None);
        let mut count = 1;
        let _ = self.apply_prefix(&prefix, &mut cache, &mut count, None);
    }

    /// Applies one UPDATE from an up neighbour (UPDATEs from a neighbour that is not up are ignored).
    pub fn apply_update(
        &mut self,
        peer: PeerId,
        update: &Update,
    ) -> Result<UpdateOutcome, MaxPrefixExceeded> {
        let mut out = UpdateOutcome {
            end_of_rib: update.end_of_rib(),
            ..UpdateOutcome::default()
        };
        let Some(p) = self.peers.get(&peer).filter(|p| p.up) else {
            return Ok(out);
        };
        let info = p.info.clone();
        let mut accepted = p.counts.accepted as usize;
        let limit = info.policy.max_prefix;

        // Withdrawals (IPv4 and MP_UNREACH).
        let mut withdraw = StepCache::new(&self.seed, Some(peer), None);
        let unreach = update.mp_unreach.iter().flat_map(|u| u.withdrawn.iter());
        for prefix in update.withdrawn.iter().chain(unreach) {
            if self.apply_prefix(prefix, &mut withdraw, &mut accepted, None) == Ok(true) {
                out.withdrawn += 1;
            }
        }

        let reach = update.mp_reach.as_ref();
        out.received = update.nlri.len() + reach.map_or(0, |m| m.nlri.len());
        if out.received == 0 {
            self.finish_update(peer, &out, accepted);
            return Ok(out);
        }

        // Whole-UPDATE verdicts: RFC 7606 treat-as-withdraw, loop detection, enforce-first-as.
        let verdict = match &update.attributes {
            // No attributes with NLRI cannot come out of the codec; handled like treat-as-withdraw.
            None => Verdict::TreatAsWithdraw,
            Some(_) if update.treat_as_withdraw() => Verdict::TreatAsWithdraw,
            Some(a) if a.as_path.contains(self.local_asn) => Verdict::Loop,
            Some(a) if info.ebgp && a.as_path.first() != Some(info.asn) => Verdict::FirstAs,
            Some(a) => Verdict::Accept(a),
        };
        let attrs = match verdict {
            Verdict::Accept(a) => a,
            rejected => {
                match rejected {
                    Verdict::Loop => out.rejected_loop = out.received,
                    Verdict::FirstAs => out.rejected_first_as = out.received,
                    _ => out.treat_as_withdraw = true,
                }
                let mp_nlri = reach.into_iter().flat_map(|m| m.nlri.iter());
                for prefix in update.nlri.iter().chain(mp_nlri) {
                    if self.apply_prefix(prefix, &mut withdraw, &mut accepted, None) == Ok(true) {
                        out.withdrawn += 1;
                    }
                }
                self.finish_update(peer, &out, accepted);
                return Ok(out);
            }
        };

        // LOCAL_PREF from an external peer is ignored (RFC 4271 5.1.5).
        let attrs = if info.ebgp && attrs.local_pref.is_some() {
            let mut a = (**attrs).clone();
            a.local_pref = None;
            self.attrs.intern(a)
        } else {
            self.attrs.intern_arc(attrs)
        };
        let neighbor_as = attrs.as_path.first().unwrap_or(self.local_asn);
        let make_path = |next_hop: IpAddr| Path {
            source: Some(peer),
            attrs: attrs.clone(),
            next_hop: Some(next_hop),
            ebgp: info.ebgp,
            router_id: info.router_id,
            peer_addr: Some(info.addr),
            neighbor_as,
        };
        let v4_nh = attrs.next_hop.map_or(info.addr, IpAddr::V4);
        let mp_nh = reach
            .and_then(|m| m.next_hops.first().copied())
            .unwrap_or(info.addr);
        let v4_path = make_path(v4_nh);
        let mp_path = make_path(mp_nh);
        let v4_path = self.paths.intern(v4_path);
        let mp_path = self.paths.intern(mp_path);

        let mut result = Ok(());
        let mut announce_v4 = StepCache::new(&self.seed, Some(peer), Some(v4_path));
        let mut announce_mp = StepCache::new(&self.seed, Some(peer), Some(mp_path));
        let batches = [
            (&update.nlri[..], &mut announce_v4),
            (reach.map_or(&[][..], |m| &m.nlri[..]), &mut announce_mp),
        ];
        'batches: for (nlri, cache) in batches {
            for prefix in nlri {
                if !info.policy.import_permits(info.ebgp, prefix) {
                    out.rejected_policy += 1;
                    if self.apply_prefix(prefix, &mut withdraw, &mut accepted, None) == Ok(true) {
                        out.withdrawn += 1;
                    }
                    continue;
                }
                match self.apply_prefix(prefix, cache, &mut accepted, limit) {
                    Ok(_) => out.accepted += 1,
                    Err(()) => {
                        result = Err(MaxPrefixExceeded {
                            family: Family::of(prefix),
                            limit: limit.unwrap_or(0),
                        });
                        break 'batches;
                    }
                }
            }
        }
        self.finish_update(peer, &out, accepted);
        result.map(|()| out)
    }

    fn finish_update(&mut self, peer: PeerId, out: &UpdateOutcome, accepted: usize) {
        if let Some(p) = self.peers.get_mut(&peer) {
            let c = &mut p.counts;
            c.received += out.received as u64;
            c.accepted = accepted as u64;
            c.rejected_loop += out.rejected_loop as u64;
            c.rejected_first_as += out.rejected_first_as as u64;
            c.rejected_policy += out.rejected_policy as u64;
            c.treat_as_withdraw += u64::from(out.treat_as_withdraw);
        }
    }

    /// Puts the cache's path (or removes the cache's source's path) for `prefix`; queues the export and FIB
    /// consequences. `Ok(true)` when the source's path was removed, `Ok(false)` otherwise; `Err` when adding
    /// the path would take `accepted` over `limit` (nothing changed then).
    fn apply_prefix(
        &mut self,
        prefix: &Prefix,
        cache: &mut StepCache,
        accepted: &mut usize,
        limit: Option<u32>,
    ) -> Result<bool, ()> {
        let (sets, max_paths) = (&mut self.sets, self.max_paths);
        let step = self.loc_rib.modify(prefix, |old| {
            let step = cache.step(sets, max_paths, old);
            if !step.had && step.has && limit.is_some_and(|l| *accepted >= l as usize) {
                return (Change::Keep, None);
            }
            let change = match (&step.new, old) {
                (None, None) => Change::Keep,
                (None, Some(_)) => Change::Remove,
                (Some(n), Some(o)) if Arc::ptr_eq(n, o) => Change::Keep,
                (Some(n), _) => Change::Set(n.clone()),
            };
            (change, Some(step))
        });
        let Some(step) = step else {
            return Err(());
        };
        match (step.had, step.has) {
            (false, true) => *accepted += 1,
            (true, false) => *accepted -= 1,
            _ => {}
        }
        if step.best_changed && self.peers_up > 0 {
            self.log.push_back(*prefix);
        }
        if step.fib_changed && self.fib_tracking {
            self.fib_dirty.insert(*prefix, ());
        }
        Ok(step.had && !step.has)
    }

    fn log_end(&self) -> u64 {
        self.log_base + self.log.len() as u64
    }

    /// Drops the change-log entries every up neighbour has consumed.
    fn trim_log(&mut self) {
        let end = self.log_end();
        let min = self
            .peers
            .values()
            .filter(|p| p.up)
            .map(|p| p.cursor)
            .min()
            .unwrap_or(end);
        while self.log_base < min {
            if self.log.pop_front().is_none() {
                break;
            }
            self.log_base += 1;
        }
        if self.log.is_empty() {
            self.log = VecDeque::new();
            self.log_base = end;
        }
    }

    /// The neighbour sent ROUTE-REFRESH: everything it should have is announced again (and anything it should
    /// no longer have is withdrawn).
    pub fn refresh_export(&mut self, peer: PeerId) {
        let Some(p) = self.peers.get(&peer).filter(|p| p.up) else {
            return;
        };
        let mut dump: Vec<Prefix> = self.loc_rib.keys().collect();
        dump.extend(p.adj_rib_out.keys().filter(|k| !self.loc_rib.contains(k)));
        if let Some(p) = self.peers.get_mut(&peer) {
            p.dump = dump;
            p.dump_force = true;
        }
    }

    /// The next batch to send to `peer` (only while it is up), `None` when it is in sync. Drain it for every
    /// up neighbour after each event (UPDATE, peer up or down): the change log behind it is kept until every
    /// up neighbour has read it.
    pub fn poll_export(&mut self, peer: PeerId) -> Option<Export> {
        loop {
            let p = self.peers.get_mut(&peer).filter(|p| p.up)?;
            if let Some(e) = p.out.pop_front() {
                return Some(e);
            }
            if p.dump.is_empty()
                && !p.end_of_rib_pending
                && p.cursor >= self.log_base + self.log.len() as u64
            {
                return None;
            }
            self.refill_export(peer);
        }
    }

    /// Looks at up to [`EXPORT_CHUNK`] prefixes (dump first, then the change log), diffs what should be sent
    /// against Adj-RIB-Out and queues the differences, grouped by attributes.
    fn refill_export(&mut self, peer: PeerId) {
        let local_asn = self.local_asn;
        let (loc_rib, attrs_interner) = (&self.loc_rib, &mut self.attrs);
        let (log, log_base) = (&self.log, self.log_base);
        let Some(p) = self.peers.get_mut(&peer) else {
            return;
        };
        let mut groups: Vec<(Family, Arc<PathAttributes>, Vec<Prefix>)> = Vec::new();
        let mut group_index: Map<(usize, Family), usize> = HashMap::with_hasher(self.seed.clone());
        let mut withdrawn: [Vec<Prefix>; 2] = [Vec::new(), Vec::new()];

        let mut process = |p: &mut Peer, prefix: Prefix, force: bool| {
            let family = Family::of(&prefix);
            let desired = desired_export(local_asn, p, loc_rib, attrs_interner, &prefix);
            match desired {
                Some(d) => {
                    if !force {
                        if let Some(c) = p.adj_rib_out.get(&prefix) {
                            if Arc::ptr_eq(c, &d) || **c == *d {
                                return;
                            }
                        }
                    }
                    p.adj_rib_out.insert(prefix, d.clone());
                    let key = (Arc::as_ptr(&d) as usize, family);
                    match group_index.get(&key) {
                        Some(&i) => groups[i].2.push(prefix),
                        None => {
                            group_index.insert(key, groups.len());
                            groups.push((family, d, vec![prefix]));
                        }
                    }
                }
                None => {
                    if p.adj_rib_out.remove(&prefix).is_some() {
                        withdrawn[family_index(family)].push(prefix);
                    }
                }
            }
        };

        let mut budget = EXPORT_CHUNK;
        let mut end_of_rib = false;
        if !p.dump.is_empty() || p.end_of_rib_pending {
            while budget > 0 {
                let Some(prefix) = p.dump.pop() else {
                    break;
                };
                let force = p.dump_force;
                process(p, prefix, force);
                budget -= 1;
            }
            if p.dump.is_empty() {
                p.dump = Vec::new();
                p.dump_force = false;
                end_of_rib = std::mem::take(&mut p.end_of_rib_pending);
            }
        } else {
            let end = log_base + log.len() as u64;
            while budget > 0 && p.cursor < end {
                let prefix = log[(p.cursor - log_base) as usize];
                p.cursor += 1;
                process(p, prefix, false);
                budget -= 1;
            }
        }

        for (i, family) in Family::ALL.into_iter().enumerate() {
            let prefixes = std::mem::take(&mut withdrawn[i]);
            if !prefixes.is_empty() {
                p.out.push_back(Export::Withdraw { family, prefixes });
            }
        }
        for (family, attrs, prefixes) in groups {
            let next_hops = p.next_hop_for(family).into_iter().collect();
            p.out.push_back(Export::Announce {
                attrs,
                family,
                next_hops,
                prefixes,
            });
        }
        if end_of_rib {
            for &family in &p.families {
                p.out.push_back(Export::EndOfRib(family));
            }
        }
        p.counts.advertised = p.adj_rib_out.len() as u64;
        if p.export_cache.iter().map(|c| c.len()).sum::<usize>() >= p.export_cache_purge_at {
            for c in &mut p.export_cache {
                c.retain(|_, (src, _)| Arc::strong_count(src) > 1);
            }
            let n: usize = p.export_cache.iter().map(|c| c.len()).sum();
            p.export_cache_purge_at = (n * 2).max(PURGE_MIN);
        }
        self.trim_log();
    }

    /// Loc-RIB, sorted by prefix (for `braid show routes`).
    pub fn routes(&self) -> impl Iterator<Item = RouteView> + '_ {
        let mut keys: Vec<Prefix> = self.loc_rib.keys().collect();
        keys.sort_unstable();
        keys.into_iter().filter_map(move |p| self.route(&p))
    }

    /// One Loc-RIB entry.
    pub fn route(&self, prefix: &Prefix) -> Option<RouteView> {
        let set = self.loc_rib.get(prefix)?;
        Some(RouteView {
            prefix: *prefix,
            best: set.best().view(),
            multipath: set.multipath().iter().map(|p| p.view()).collect(),
            backups: set.ranked[set.multipath..]
                .iter()
                .map(|p| p.view())
                .collect(),
        })
    }

    /// The neighbour's counters (all zero for an unknown neighbour).
    pub fn peer_counts(&self, peer: PeerId) -> PeerCounts {
        self.peers.get(&peer).map(|p| p.counts).unwrap_or_default()
    }

    /// Prefixes in Loc-RIB.
    pub fn loc_rib_len(&self) -> usize {
        self.loc_rib.len()
    }

    /// Whether [`Self::poll_fib_change`] reports changes (on by default). A speaker whose routes never go
    /// into a forwarding table turns it off, so the pending changes cost no memory.
    pub fn track_fib(&mut self, on: bool) {
        self.fib_tracking = on;
        if !on {
            self.fib_dirty.clear();
            self.fib_ready.clear();
        }
    }

    /// The next prefix whose ECMP next-hop set changed, with its set as it is now. A prefix that changed
    /// several times since the last poll is reported once (occasionally twice, with the same content).
    pub fn poll_fib_change(&mut self) -> Option<FibChange> {
        if self.fib_ready.is_empty() {
            self.fib_ready.extend(self.fib_dirty.keys());
            self.fib_dirty.clear();
        }
        let Some(prefix) = self.fib_ready.pop_front() else {
            // Give back the memory of a large batch (a full table's worth after the initial load).
            self.fib_ready = VecDeque::new();
            return None;
        };
        let next_hops = self
            .loc_rib
            .get(&prefix)
            .map(|s| s.fib_next_hops())
            .unwrap_or_default();
        Some(FibChange { prefix, next_hops })
    }
}

/// What `prefix` should be in `p`'s Adj-RIB-Out now: the exported attributes of the best path, or `None`.
fn desired_export(
    local_asn: Asn,
    p: &mut Peer,
    loc_rib: &PrefixMap<Arc<PathSet>>,
    interner: &mut Interner<PathAttributes>,
    prefix: &Prefix,
) -> Option<Arc<PathAttributes>> {
    let family = Family::of(prefix);
    let best = loc_rib.get(prefix)?.best();
    if best.source == Some(p.info.id) {
        return None;
    }
    if best.source.is_some() && !best.ebgp && !p.info.ebgp {
        return None;
    }
    if !p.families.contains(&family) || p.next_hop_for(family).is_none() {
        return None;
    }
    if !p.info.policy.export_permits(p.info.ebgp, prefix) {
        return None;
    }
    let key = Arc::as_ptr(&best.attrs) as usize;
    let cache = &mut p.export_cache[family_index(family)];
    if let Some((_, out)) = cache.get(&key) {
        return out.clone();
    }
    let out =
        export_attributes(local_asn, &p.info, family, &best.attrs).map(|a| interner.intern(a));
    cache.insert(key, (best.attrs.clone(), out.clone()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loc_rib_entry_is_one_pointer() {
        // The 1M-prefix design point: a Loc-RIB value is a single (shared) pointer.
        assert_eq!(std::mem::size_of::<Arc<PathSet>>(), 8);
        assert_eq!(
            v4_prefix(v4_key(Ipv4Addr::new(10, 1, 2, 0), 24)).to_string(),
            "10.1.2.0/24"
        );
        assert_eq!(
            v4_prefix(v4_key(Ipv4Addr::UNSPECIFIED, 0)).to_string(),
            "0.0.0.0/0"
        );
        assert_eq!(
            v4_prefix(v4_key(Ipv4Addr::BROADCAST, 32)).to_string(),
            "255.255.255.255/32"
        );
    }

    #[test]
    fn hasher_spreads_sequential_v4_keys() {
        let seed = Seed::random();
        // hashbrown takes the bucket from the low bits and the control byte from the top 7: both must spread.
        let mut low = [0u32; 256];
        let mut top = [0u32; 128];
        for i in 0..65536u32 {
            let h = seed.hash_one(v4_key(Ipv4Addr::from(0x0a00_0000 + (i << 8)), 24));
            low[(h & 0xff) as usize] += 1;
            top[(h >> 57) as usize] += 1;
        }
        // Expected 256 and 512 per bucket; allow about 5 standard deviations.
        let (lmin, lmax) = (low.iter().min().unwrap(), low.iter().max().unwrap());
        assert!(
            *lmin > 176 && *lmax < 336,
            "low bits skewed: {lmin}..{lmax}"
        );
        let (tmin, tmax) = (top.iter().min().unwrap(), top.iter().max().unwrap());
        assert!(
            *tmin > 400 && *tmax < 624,
            "top bits skewed: {tmin}..{tmax}"
        );
    }

    fn path(source: usize, lp: Option<u32>, as_path: &[Asn], rid: u8) -> Arc<Path> {
        Arc::new(Path {
            source: Some(source),
            attrs: Arc::new(PathAttributes {
                local_pref: lp,
                as_path: super::super::types::AsPath::from_sequence(as_path),
                ..PathAttributes::default()
            }),
            next_hop: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, rid))),
            ebgp: true,
            router_id: Ipv4Addr::new(10, 0, 0, rid),
            peer_addr: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, rid))),
            neighbor_as: as_path.first().copied().unwrap_or(65000),
        })
    }

    #[test]
    fn rank_puts_ecmp_set_first_then_backups_in_order() {
        let a = path(1, None, &[65515, 1], 4);
        let b = path(2, None, &[65515, 1], 3);
        let c = path(3, None, &[65515, 65515, 1], 1);
        let d = path(4, Some(50), &[65515, 1], 2);
        let set = rank(vec![a.clone(), b.clone(), c.clone(), d.clone()], 8);
        assert_eq!(set.multipath, 2);
        let order: Vec<_> = set.ranked.iter().map(|p| p.source.unwrap()).collect();
        assert_eq!(order, vec![2, 1, 3, 4]);
        let narrow = rank(vec![a, b, c, d], 1);
        assert_eq!(narrow.multipath, 1);
        assert_eq!(narrow.best().source, Some(2));
    }
}
