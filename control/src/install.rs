//! The route installer: merges connected, static and BGP routes into the data path's forwarding table and
//! publishes it as an immutable snapshot.
//!
//! Sources, strongest first (like a router's administrative distance):
//! 1. **connected**: each tunnel's peer inside addresses (the other host of its /30, /31, /126 or /127) as host
//!    routes pinned to exactly that tunnel, so a BGP session over a tunnel lives and dies with that tunnel;
//! 2. **static**: a tunnel's `routes`; a prefix listed on several tunnels is an equal-cost group of them;
//! 3. **bgp**: the RIB's forwarding sets ([`FibChange`]): every learned path of a prefix, ECMP members first,
//!    then backups (prepended paths). A path's next hop is resolved to a tunnel through the peer inside
//!    addresses (the connected routes), or failing that through the neighbour's own tunnel. A path whose next
//!    hop is not behind a tunnel (a LAN-side neighbour's route) is not braid's to forward: the host's routing
//!    table handles it, so it is left out; a prefix with no member left is not in the FIB.
//!
//! Weights: a member's weight is its tunnel's (`weight =` on the tunnel or its uplink, else the uplink's cap in
//! Mbit/s, else 1). When every member of the ECMP set (or of the backup set) carries a link-bandwidth extended
//! community, those bandwidths (in Mbit/s, at least 1) are that set's weights instead; a set where only some
//! paths carry one uses the configured weights (a missing value would otherwise have to be guessed).
//!
//! Groups are interned: every prefix with the same members shares one [`NextHopGroup`]. Changes accumulate in a
//! [`FibBuilder`]; [`RouteInstaller::publish`] builds the table once per batch, so a full table arriving in
//! many UPDATEs costs a few builds, not one per prefix. The installer also reports which prefixes entered or
//! left the FIB (for the kernel route mirror) and lists its routes for `braid show routes`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_dataplane::{Fib, FibBuilder, FibCell, Member, NextHopGroup, Prefix};

use crate::bgp::rib::{FibChange, FibNextHop, PeerId};

/// Where a FIB route comes from.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteSource {
    Connected,
    Static,
    Bgp,
}

impl RouteSource {
    pub fn as_str(self) -> &'static str {
        match self {
            RouteSource::Connected => "connected",
            RouteSource::Static => "static",
            RouteSource::Bgp => "bgp",
        }
    }
}

/// One tunnel as the installer needs it.
#[derive(Clone, Debug)]
pub struct TunnelRoutes {
    pub name: String,
    /// The peer's inside addresses (connected host routes, and next hops of BGP paths over the tunnel).
    pub peer_inside: Vec<IpAddr>,
    /// Static routes over the tunnel.
    pub routes: Vec<Prefix>,
    /// The tunnel's weight in a group (at least 1).
    pub weight: u32,
}

/// One FIB route, for display.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteEntry {
    pub prefix: Prefix,
    pub source: RouteSource,
    /// The group's members (non-backups first), each with the BGP neighbour it came from, if any.
    pub members: Vec<(Member, Option<PeerId>)>,
}

/// What one [`RouteInstaller::publish`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Published {
    /// Routes in the new table.
    pub routes: usize,
    /// Time to build it.
    pub build_time: Duration,
    /// Prefixes that entered the table since the last publish (for the kernel route mirror).
    pub added: Vec<Prefix>,
    /// Prefixes that left it.
    pub removed: Vec<Prefix>,
}

/// A BGP route as installed: its group and where each member came from.
#[derive(Clone, Debug)]
struct BgpRoute {
    group: Arc<NextHopGroup>,
    peers: Arc<[Option<PeerId>]>,
}

/// See the module documentation.
pub struct RouteInstaller {
    tunnels: Vec<TunnelRoutes>,
    /// BGP neighbour index -> the tunnel its session runs in.
    neighbor_tunnels: Vec<Option<u32>>,
    /// Peer inside address -> tunnel.
    next_hop_tunnel: HashMap<IpAddr, u32>,
    fixed: BTreeMap<Prefix, (RouteSource, Arc<NextHopGroup>)>,
    bgp: HashMap<Prefix, BgpRoute>,
    groups: HashMap<Vec<Member>, Arc<NextHopGroup>>,
    builder: FibBuilder,
    cell: Arc<FibCell>,
    /// Prefixes whose presence in the table may have changed since the last publish, with whether they were
    /// in the published table then.
    touched: HashMap<Prefix, bool>,
    dirty: bool,
}

impl RouteInstaller {
    /// An installer for `tunnels` (indexes are the data path's tunnel indexes) and BGP neighbours whose
    /// sessions run in `neighbor_tunnels[i]`. The connected and static routes are in the table from the start.
    pub fn new(tunnels: Vec<TunnelRoutes>, neighbor_tunnels: Vec<Option<u32>>) -> RouteInstaller {
        let mut fixed: BTreeMap<Prefix, (RouteSource, Vec<Member>)> = BTreeMap::new();
        let mut next_hop_tunnel = HashMap::new();
        for (i, t) in tunnels.iter().enumerate() {
            let member = Member {
                tunnel: i as u32,
                weight: t.weight.max(1),
                backup: false,
            };
            for &peer in &t.peer_inside {
                next_hop_tunnel.insert(peer, i as u32);
                fixed.insert(Prefix::host(peer), (RouteSource::Connected, vec![member]));
            }
        }
        for (i, t) in tunnels.iter().enumerate() {
            let member = Member {
                tunnel: i as u32,
                weight: t.weight.max(1),
                backup: false,
            };
            for &r in &t.routes {
                let e = fixed
                    .entry(r)
                    .or_insert_with(|| (RouteSource::Static, Vec::new()));
                // A connected host route is never widened into a group by a static route.
                if e.0 == RouteSource::Static && !e.1.iter().any(|m| m.tunnel == member.tunnel) {
                    e.1.push(member);
                }
            }
        }
        let mut installer = RouteInstaller {
            tunnels,
            neighbor_tunnels,
            next_hop_tunnel,
            fixed: BTreeMap::new(),
            bgp: HashMap::new(),
            groups: HashMap::new(),
            builder: FibBuilder::new(),
            cell: Arc::new(FibCell::new(Fib::new())),
            touched: HashMap::new(),
            dirty: true,
        };
        for (prefix, (source, members)) in fixed {
            if let Some(group) = installer.intern(members) {
                installer.builder.insert(prefix, group.clone());
                installer.fixed.insert(prefix, (source, group));
            }
        }
        installer.publish();
        installer
    }

    /// The cell the data path reads.
    pub fn fib(&self) -> Arc<FibCell> {
        self.cell.clone()
    }

    /// The names of the tunnels, by index.
    pub fn tunnel_name(&self, tunnel: u32) -> Option<&str> {
        self.tunnels.get(tunnel as usize).map(|t| t.name.as_str())
    }

    /// Applies the RIB's forwarding changes. Takes effect at the next [`Self::publish`].
    pub fn apply(&mut self, changes: &[FibChange]) {
        for c in changes {
            let was = self.bgp.contains_key(&c.prefix) || self.fixed.contains_key(&c.prefix);
            self.touched.entry(c.prefix).or_insert(was);
            let (members, peers) = self.resolve(&c.next_hops);
            match self.intern(members) {
                Some(group) => {
                    if !self.fixed.contains_key(&c.prefix) {
                        self.builder.insert(c.prefix, group.clone());
                    }
                    self.bgp.insert(
                        c.prefix,
                        BgpRoute {
                            group,
                            peers: peers.into(),
                        },
                    );
                }
                None => {
                    if self.bgp.remove(&c.prefix).is_some() && !self.fixed.contains_key(&c.prefix) {
                        self.builder.remove(&c.prefix);
                    }
                }
            }
            self.dirty = true;
        }
        // Groups no prefix uses any more are dropped now and then, not on every change.
        if self.groups.len() > 1024 && self.groups.len() > 4 * (self.bgp.len() + self.fixed.len()) {
            self.groups.retain(|_, g| Arc::strong_count(g) > 1);
        }
    }

    /// Builds and publishes the table if anything changed since the last publish.
    pub fn publish(&mut self) -> Option<Published> {
        if !self.dirty {
            return None;
        }
        self.dirty = false;
        let start = Instant::now();
        let fib = self.builder.build();
        let routes = fib.len();
        self.cell.publish(fib);
        let build_time = start.elapsed();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        for (prefix, was) in self.touched.drain() {
            let is = self.bgp.contains_key(&prefix) || self.fixed.contains_key(&prefix);
            match (was, is) {
                (false, true) => added.push(prefix),
                (true, false) => removed.push(prefix),
                _ => {}
            }
        }
        added.sort();
        removed.sort();
        Some(Published {
            routes,
            build_time,
            added,
            removed,
        })
    }

    /// How many routes the table holds from `source` (without listing them).
    pub fn count(&self, source: RouteSource) -> usize {
        match source {
            RouteSource::Bgp => self
                .bgp
                .keys()
                .filter(|p| !self.fixed.contains_key(p))
                .count(),
            fixed => self.fixed.values().filter(|(s, _)| *s == fixed).count(),
        }
    }

    /// Every route in the table (connected, static, BGP), sorted by prefix.
    pub fn routes(&self) -> Vec<RouteEntry> {
        let mut out: Vec<RouteEntry> = self
            .fixed
            .iter()
            .map(|(p, (source, g))| RouteEntry {
                prefix: *p,
                source: *source,
                members: g.members().iter().map(|&m| (m, None)).collect(),
            })
            .collect();
        out.extend(
            self.bgp
                .iter()
                .filter(|(p, _)| !self.fixed.contains_key(p))
                .map(|(p, r)| RouteEntry {
                    prefix: *p,
                    source: RouteSource::Bgp,
                    members: r
                        .group
                        .members()
                        .iter()
                        .copied()
                        .zip(r.peers.iter().copied())
                        .collect(),
                }),
        );
        out.sort_by_key(|r| r.prefix);
        out
    }

    /// The members for a RIB forwarding set (ECMP first, then backups), with the neighbour of each; tunnels
    /// reached twice count once, at their first (best) place.
    fn resolve(&self, hops: &[FibNextHop]) -> (Vec<Member>, Vec<Option<PeerId>>) {
        let mut resolved: Vec<(u32, &FibNextHop)> = Vec::with_capacity(hops.len());
        for h in hops {
            let tunnel = self.next_hop_tunnel.get(&h.addr).copied().or_else(|| {
                self.neighbor_tunnels
                    .get(h.peer)
                    .copied()
                    .flatten()
                    .filter(|_| !h.addr.is_unspecified())
            });
            if let Some(t) = tunnel.filter(|&t| (t as usize) < self.tunnels.len()) {
                if !resolved.iter().any(|(u, _)| *u == t) {
                    resolved.push((t, h));
                }
            }
        }
        let (primaries, backups): (Vec<_>, Vec<_>) =
            resolved.into_iter().partition(|(_, h)| !h.backup);
        let mut members = Vec::with_capacity(primaries.len() + backups.len());
        let mut peers = Vec::with_capacity(members.capacity());
        // Non-backups first, as NextHopGroup keeps them, so the neighbours line up with the members.
        for set in [primaries, backups] {
            let by_bandwidth =
                !set.is_empty() && set.iter().all(|(_, h)| h.link_bandwidth.is_some());
            for (t, h) in set {
                let weight = match h.link_bandwidth {
                    Some(bytes_per_s) if by_bandwidth => {
                        ((bytes_per_s as f64 * 8.0 / 1e6).round() as u64).clamp(1, u32::MAX as u64)
                            as u32
                    }
                    _ => self.tunnels[t as usize].weight.max(1),
                };
                members.push(Member {
                    tunnel: t,
                    weight,
                    backup: h.backup,
                });
                peers.push(Some(h.peer));
            }
        }
        (members, peers)
    }

    fn intern(&mut self, members: Vec<Member>) -> Option<Arc<NextHopGroup>> {
        if let Some(g) = self.groups.get(&members) {
            return Some(g.clone());
        }
        let group = Arc::new(NextHopGroup::new(members.clone()).ok()?);
        self.groups.insert(members, group.clone());
        Some(group)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Prefix {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn tunnel(name: &str, peer: &str, weight: u32) -> TunnelRoutes {
        TunnelRoutes {
            name: name.into(),
            peer_inside: vec![ip(peer)],
            routes: vec![],
            weight,
        }
    }

    fn hop(peer: PeerId, addr: &str, backup: bool) -> FibNextHop {
        FibNextHop {
            peer,
            addr: ip(addr),
            backup,
            link_bandwidth: None,
        }
    }

    /// S2 at one on-prem gateway: two ISP1 tunnels (1 Gbit/s) and two ISP2 tunnels (250 Mbit/s).
    fn s2() -> RouteInstaller {
        RouteInstaller::new(
            vec![
                tunnel("b1-isp1", "169.254.21.1", 1000),
                tunnel("b2-isp1", "169.254.22.1", 1000),
                tunnel("b1-isp2", "169.254.23.1", 250),
                tunnel("b2-isp2", "169.254.24.1", 250),
            ],
            vec![Some(0), Some(1), Some(2), Some(3), None],
        )
    }

    fn tunnels_of(fib: &Fib, dst: &str) -> (Vec<(u32, u32)>, Vec<u32>) {
        let g = fib.lookup(ip(dst)).expect("a route");
        (
            g.active().iter().map(|m| (m.tunnel, m.weight)).collect(),
            g.members()
                .iter()
                .filter(|m| m.backup)
                .map(|m| m.tunnel)
                .collect(),
        )
    }

    #[test]
    fn connected_routes_pin_each_peer_to_its_tunnel() {
        let mut i = s2();
        let fib = i.fib().snapshot();
        assert_eq!(fib.len(), 4);
        assert_eq!(tunnels_of(&fib, "169.254.23.1").0, vec![(2, 250)]);
        // A BGP route for a peer's address does not take it away from its tunnel.
        i.apply(&[FibChange {
            prefix: p("169.254.23.1/32"),
            next_hops: vec![hop(0, "169.254.21.1", false)],
        }]);
        i.publish();
        assert_eq!(
            tunnels_of(&i.fib().snapshot(), "169.254.23.1").0,
            vec![(2, 250)]
        );
        assert!(i.fib().snapshot().lookup(ip("192.0.2.1")).is_none());
    }

    #[test]
    fn multipath_set_with_prepended_backups() {
        let mut i = s2();
        i.apply(&[FibChange {
            prefix: p("192.0.2.128/25"),
            next_hops: vec![
                hop(0, "169.254.21.1", false),
                hop(1, "169.254.22.1", false),
                hop(2, "169.254.23.1", true),
                hop(3, "169.254.24.1", true),
            ],
        }]);
        let done = i.publish().unwrap();
        assert_eq!(done.added, vec![p("192.0.2.128/25")]);
        assert_eq!(done.routes, 5);
        assert_eq!(
            (
                i.count(RouteSource::Connected),
                i.count(RouteSource::Static),
                i.count(RouteSource::Bgp)
            ),
            (4, 0, 1)
        );
        let fib = i.fib().snapshot();
        assert_eq!(
            tunnels_of(&fib, "192.0.2.200"),
            (vec![(0, 1000), (1, 1000)], vec![2, 3])
        );
        // ISP1 goes: the RIB now has only the prepended paths, as the ECMP set.
        i.apply(&[FibChange {
            prefix: p("192.0.2.128/25"),
            next_hops: vec![hop(2, "169.254.23.1", false), hop(3, "169.254.24.1", false)],
        }]);
        let done = i.publish().unwrap();
        assert!(done.added.is_empty() && done.removed.is_empty());
        assert_eq!(
            tunnels_of(&i.fib().snapshot(), "192.0.2.200"),
            (vec![(2, 250), (3, 250)], vec![])
        );
        // Withdrawn everywhere: gone from the FIB, reported for the kernel mirror.
        i.apply(&[FibChange {
            prefix: p("192.0.2.128/25"),
            next_hops: vec![],
        }]);
        let done = i.publish().unwrap();
        assert_eq!(done.removed, vec![p("192.0.2.128/25")]);
        assert!(i.fib().snapshot().lookup(ip("192.0.2.200")).is_none());
        assert!(i.publish().is_none(), "nothing changed since");
    }

    #[test]
    fn link_bandwidth_sets_weights_only_when_every_member_has_it() {
        let mut i = s2();
        let bw = |h: FibNextHop, mbit: f32| FibNextHop {
            link_bandwidth: Some(mbit * 1e6 / 8.0),
            ..h
        };
        i.apply(&[FibChange {
            prefix: p("198.51.100.0/24"),
            next_hops: vec![
                bw(hop(0, "169.254.21.1", false), 300.0),
                bw(hop(1, "169.254.22.1", false), 100.0),
            ],
        }]);
        i.apply(&[FibChange {
            prefix: p("203.0.113.0/24"),
            next_hops: vec![
                bw(hop(0, "169.254.21.1", false), 300.0),
                hop(1, "169.254.22.1", false),
            ],
        }]);
        i.publish();
        let fib = i.fib().snapshot();
        assert_eq!(tunnels_of(&fib, "198.51.100.1").0, vec![(0, 300), (1, 100)]);
        assert_eq!(
            tunnels_of(&fib, "203.0.113.1").0,
            vec![(0, 1000), (1, 1000)]
        );
    }

    #[test]
    fn next_hops_not_behind_a_tunnel_are_not_forwarded_here() {
        let mut i = s2();
        // Neighbour 4 is a LAN-side router: its routes are the host's business.
        i.apply(&[FibChange {
            prefix: p("192.0.2.0/26"),
            next_hops: vec![hop(4, "192.0.2.62", false)],
        }]);
        assert_eq!(i.publish().unwrap().added, Vec::<Prefix>::new());
        assert!(i.fib().snapshot().lookup(ip("192.0.2.1")).is_none());
        // Neighbour 1's session is in tunnel 1; a third-party next hop it sends still goes into that tunnel.
        i.apply(&[FibChange {
            prefix: p("192.0.2.64/26"),
            next_hops: vec![hop(1, "192.0.2.99", false)],
        }]);
        i.publish();
        assert_eq!(
            tunnels_of(&i.fib().snapshot(), "192.0.2.70").0,
            vec![(1, 1000)]
        );
    }

    #[test]
    fn static_routes_on_several_tunnels_form_a_group_and_win_over_bgp() {
        let mut a = tunnel("a", "169.254.21.1", 2);
        let mut b = tunnel("b", "169.254.22.1", 1);
        a.routes = vec![p("192.0.2.0/24")];
        b.routes = vec![p("192.0.2.0/24")];
        let mut i = RouteInstaller::new(vec![a, b], vec![Some(0), Some(1)]);
        assert_eq!(
            tunnels_of(&i.fib().snapshot(), "192.0.2.1").0,
            vec![(0, 2), (1, 1)]
        );
        i.apply(&[FibChange {
            prefix: p("192.0.2.0/24"),
            next_hops: vec![hop(1, "169.254.22.1", false)],
        }]);
        i.publish();
        assert_eq!(
            tunnels_of(&i.fib().snapshot(), "192.0.2.1").0,
            vec![(0, 2), (1, 1)]
        );
        let routes = i.routes();
        let r = routes
            .iter()
            .find(|r| r.prefix == p("192.0.2.0/24"))
            .unwrap();
        assert_eq!(r.source, RouteSource::Static);
    }

    #[test]
    fn groups_are_shared_between_prefixes() {
        let mut i = s2();
        let hops = vec![hop(0, "169.254.21.1", false), hop(1, "169.254.22.1", false)];
        let changes: Vec<FibChange> = (0..100u8)
            .map(|n| FibChange {
                prefix: format!("198.51.100.{n}/32").parse().unwrap(),
                next_hops: hops.clone(),
            })
            .collect();
        i.apply(&changes);
        i.publish();
        let fib = i.fib().snapshot();
        let a = fib.lookup(ip("198.51.100.1")).unwrap();
        let b = fib.lookup(ip("198.51.100.99")).unwrap();
        assert!(Arc::ptr_eq(a, b));
    }
}
