//! RIB, decision process and policy, driven through the public API only: UPDATEs in, exports and FIB changes
//! out.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use braid_control::bgp::policy::{NeighborPolicy, PrefixList, PrefixListEntry};
use braid_control::bgp::rib::{community, Export, FibChange, PeerId, PeerInfo, Rib};
use braid_control::bgp::types::{
    attr_flags, subcode, AsPath, AsSegment, Asn, ExtCommunity, Family, MpReach, MpUnreach, Origin,
    PathAttributes, Prefix, RawAttribute, Rfc7606Action, Update,
};

const LOCAL_ASN: Asn = 65001;
const AZURE: Asn = 65515;
const OUR_NH: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 254);
const OUR_NH6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0xfe);
const BOTH: &[Family] = &[Family::Ipv4Unicast, Family::Ipv6Unicast];

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn list(entries: &[&str]) -> Option<PrefixList> {
    Some(PrefixList::parse(entries).unwrap())
}

fn open_policy() -> NeighborPolicy {
    NeighborPolicy {
        import: list(&["0.0.0.0/0 le 32", "::/0 le 128"]),
        export: list(&["0.0.0.0/0 le 32", "::/0 le 128"]),
        ..NeighborPolicy::default()
    }
}

/// Neighbour `n`: address 192.0.2.n, BGP Identifier 10.0.0.n.
fn ebgp(n: u8, asn: Asn) -> PeerInfo {
    PeerInfo {
        id: n as PeerId,
        asn,
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, n)),
        router_id: Ipv4Addr::new(10, 0, 0, n),
        ebgp: true,
        policy: open_policy(),
        next_hop_self: IpAddr::V4(OUR_NH),
        next_hop_self_v6: Some(OUR_NH6),
    }
}

fn ibgp(n: u8) -> PeerInfo {
    PeerInfo {
        asn: LOCAL_ASN,
        ebgp: false,
        policy: NeighborPolicy::default(),
        ..ebgp(n, LOCAL_ASN)
    }
}

fn rib_with(max_paths: usize, peers: Vec<PeerInfo>) -> Rib {
    let mut rib = Rib::new(LOCAL_ASN, Ipv4Addr::new(192, 0, 2, 200), max_paths);
    for info in peers {
        let id = info.id;
        rib.add_peer(info);
        rib.peer_up(id, BOTH);
        // The initial (empty) dump and its End-of-RIBs are not what the tests look at.
        drain(&mut rib, id);
    }
    rib
}

/// Attributes as neighbour `n` would send them.
fn attrs(n: u8, as_path: &[Asn]) -> PathAttributes {
    PathAttributes {
        origin: Origin::Igp,
        as_path: AsPath::from_sequence(as_path),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, n)),
        ..PathAttributes::default()
    }
}

fn announce(a: PathAttributes, prefixes: &[&str]) -> Update {
    Update {
        attributes: Some(Arc::new(a)),
        nlri: prefixes.iter().map(|s| p(s)).collect(),
        ..Update::default()
    }
}

fn announce6(a: PathAttributes, next_hop: Ipv6Addr, prefixes: &[&str]) -> Update {
    Update {
        attributes: Some(Arc::new(PathAttributes {
            next_hop: None,
            ..a
        })),
        mp_reach: Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hops: vec![IpAddr::V6(next_hop)],
            nlri: prefixes.iter().map(|s| p(s)).collect(),
        }),
        ..Update::default()
    }
}

fn withdraw(prefixes: &[&str]) -> Update {
    Update {
        withdrawn: prefixes.iter().map(|s| p(s)).collect(),
        ..Update::default()
    }
}

fn apply(rib: &mut Rib, peer: PeerId, u: &Update) {
    rib.apply_update(peer, u).expect("no max-prefix here");
}

fn drain(rib: &mut Rib, peer: PeerId) -> Vec<Export> {
    let mut out = Vec::new();
    while let Some(e) = rib.poll_export(peer) {
        out.push(e);
        assert!(out.len() < 100_000, "poll_export never ends");
    }
    out
}

fn announced(exports: &[Export]) -> BTreeSet<Prefix> {
    exports
        .iter()
        .flat_map(|e| match e {
            Export::Announce { prefixes, .. } => prefixes.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn withdrawn(exports: &[Export]) -> BTreeSet<Prefix> {
    exports
        .iter()
        .flat_map(|e| match e {
            Export::Withdraw { prefixes, .. } => prefixes.clone(),
            _ => Vec::new(),
        })
        .collect()
}

fn set(prefixes: &[&str]) -> BTreeSet<Prefix> {
    prefixes.iter().map(|s| p(s)).collect()
}

/// The single announce in `exports` (panics otherwise).
fn the_announce(exports: &[Export]) -> (Arc<PathAttributes>, Family, Vec<IpAddr>, Vec<Prefix>) {
    let mut found = None;
    for e in exports {
        if let Export::Announce {
            attrs,
            family,
            next_hops,
            prefixes,
        } = e
        {
            assert!(found.is_none(), "more than one announce: {exports:?}");
            found = Some((attrs.clone(), *family, next_hops.clone(), prefixes.clone()));
        }
    }
    found.unwrap_or_else(|| panic!("no announce in {exports:?}"))
}

fn best(rib: &Rib, prefix: &str) -> Option<PeerId> {
    rib.route(&p(prefix)).and_then(|r| r.best.peer)
}

fn multipath(rib: &Rib, prefix: &str) -> Vec<Option<PeerId>> {
    rib.route(&p(prefix))
        .map(|r| r.multipath.iter().map(|v| v.peer).collect())
        .unwrap_or_default()
}

fn backups(rib: &Rib, prefix: &str) -> Vec<Option<PeerId>> {
    rib.route(&p(prefix))
        .map(|r| r.backups.iter().map(|v| v.peer).collect())
        .unwrap_or_default()
}

fn fib_changes(rib: &mut Rib) -> Vec<FibChange> {
    let mut out = Vec::new();
    while let Some(c) = rib.poll_fib_change() {
        out.push(c);
    }
    out.sort_by_key(|c| c.prefix);
    out
}

/// A FIB change's next hops as (neighbour, address, backup).
fn hops(c: &FibChange) -> Vec<(PeerId, IpAddr, bool)> {
    c.next_hops
        .iter()
        .map(|h| (h.peer, h.addr, h.backup))
        .collect()
}

fn nh(n: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, n))
}

// ---------------------------------------------------------------------------------------------------------
// Prefix lists.

#[test]
fn prefix_list_exact_le_ge_and_v6() {
    let e = |s: &str| s.parse::<PrefixListEntry>().unwrap();
    let exact = e("10.20.0.0/16");
    assert!(exact.matches(&p("10.20.0.0/16")));
    assert!(!exact.matches(&p("10.20.1.0/24")), "no ge/le: exact only");
    assert!(!exact.matches(&p("10.0.0.0/8")));

    let le = e("10.20.0.0/16 le 24");
    assert!(le.matches(&p("10.20.0.0/16")));
    assert!(le.matches(&p("10.20.7.0/24")));
    assert!(!le.matches(&p("10.20.7.128/25")));
    assert!(
        !le.matches(&p("10.21.0.0/24")),
        "outside the covering prefix"
    );

    let ge = e("10.0.0.0/8 ge 16");
    assert!(!ge.matches(&p("10.0.0.0/8")));
    assert!(!ge.matches(&p("10.2.0.0/15")));
    assert!(ge.matches(&p("10.1.0.0/16")));
    assert!(ge.matches(&p("10.1.2.3/32")), "ge alone runs to /32");

    let range = e("10.0.0.0/8 ge 16 le 24");
    assert!(range.matches(&p("10.1.0.0/16")));
    assert!(range.matches(&p("10.1.1.0/24")));
    assert!(!range.matches(&p("10.1.1.0/25")));
    assert!(!range.matches(&p("10.0.0.0/15")));

    let any4 = e("0.0.0.0/0 le 32");
    assert!(any4.matches(&p("0.0.0.0/0")));
    assert!(any4.matches(&p("203.0.113.7/32")));
    assert!(
        !any4.matches(&p("2001:db8::/32")),
        "an IPv4 entry never matches IPv6"
    );

    let any6 = e("::/0 le 128");
    assert!(any6.matches(&p("2001:db8::/32")));
    assert!(any6.matches(&p("::/0")));
    assert!(!any6.matches(&p("10.0.0.0/8")));
    let v6 = e("2001:db8::/32 ge 48 le 64");
    assert!(v6.matches(&p("2001:db8:1::/48")));
    assert!(v6.matches(&p("2001:db8:1:2::/64")));
    assert!(!v6.matches(&p("2001:db8::/32")));
    assert!(!v6.matches(&p("2001:db9:1::/48")));

    let l = PrefixList::parse(["10.20.0.0/16 le 24", "192.0.2.0/24"]).unwrap();
    assert!(l.permits(&p("10.20.3.0/24")));
    assert!(l.permits(&p("192.0.2.0/24")));
    assert!(!l.permits(&p("192.0.2.0/25")));
    assert!(
        !PrefixList::default().permits(&p("10.20.3.0/24")),
        "empty list denies"
    );
}

#[test]
fn prefix_list_errors_say_what_is_wrong() {
    let err = |s: &str| s.parse::<PrefixListEntry>().unwrap_err();
    assert!(err("10.0.0.0/16 ge 8").contains("ge 8 is shorter than the prefix length 16"));
    assert!(err("10.0.0.0/16 le 8").contains("le 8 is shorter than the prefix length 16"));
    assert!(err("10.0.0.0/8 ge 24 le 16").contains("ge 24 is greater than le 16"));
    assert!(err("10.0.0.0/8 le 33").contains("longer than 32"));
    assert!(err("2001:db8::/32 le 129").contains("longer than 128"));
    assert!(err("10.0.0.0/8 le 24 ge 16").contains("\"ge\" must come before \"le\""));
    assert!(err("10.0.0.0/8 le 24 le 25").contains("given twice"));
    assert!(err("10.0.0.0/8 le").contains("needs a prefix length"));
    assert!(err("10.0.0.0/8 le x").contains("is not a prefix length"));
    assert!(err("10.0.0.0/8 permit").contains("unexpected \"permit\""));
    assert!(err("10.0.0.1/8").contains("host bits"));
    assert!(err("").contains("empty"));
    assert!(err("nonsense").contains("not a prefix"));
    let e = PrefixList::parse(["10.0.0.0/8", "10.0.0.0/8 ge 4"]).unwrap_err();
    assert!(e.starts_with("entry 2:"), "{e}");
}

// ---------------------------------------------------------------------------------------------------------
// RFC 8212.

#[test]
fn ebgp_without_import_policy_accepts_nothing() {
    let mut peer = ebgp(1, AZURE);
    peer.policy.import = None;
    let mut rib = rib_with(8, vec![peer]);
    let out = rib
        .apply_update(1, &announce(attrs(1, &[AZURE]), &["10.20.0.0/16"]))
        .unwrap();
    assert_eq!((out.received, out.accepted, out.rejected_policy), (1, 0, 1));
    assert_eq!(rib.loc_rib_len(), 0);
    assert_eq!(rib.peer_counts(1).accepted, 0);
    assert_eq!(rib.peer_counts(1).rejected_policy, 1);
}

#[test]
fn ebgp_without_export_policy_advertises_nothing() {
    let mut peer = ebgp(1, AZURE);
    peer.policy.export = None;
    let mut rib = Rib::new(LOCAL_ASN, Ipv4Addr::new(192, 0, 2, 200), 8);
    rib.add_peer(peer);
    rib.originate(p("10.10.0.0/16"));
    rib.peer_up(1, BOTH);
    let out = drain(&mut rib, 1);
    assert_eq!(
        out,
        vec![
            Export::EndOfRib(Family::Ipv4Unicast),
            Export::EndOfRib(Family::Ipv6Unicast)
        ]
    );
    assert_eq!(rib.peer_counts(1).advertised, 0);
}

#[test]
fn ibgp_without_policy_accepts_and_advertises_everything() {
    let mut rib = rib_with(8, vec![ibgp(1), ebgp(2, AZURE)]);
    apply(&mut rib, 1, &announce(attrs(1, &[]), &["10.30.0.0/16"]));
    assert_eq!(best(&rib, "10.30.0.0/16"), Some(1));
    apply(
        &mut rib,
        2,
        &announce(attrs(2, &[AZURE]), &["10.20.0.0/16"]),
    );
    assert_eq!(announced(&drain(&mut rib, 1)), set(&["10.20.0.0/16"]));
}

// ---------------------------------------------------------------------------------------------------------
// Best path, one test per step of the decision process (each set up so that the later steps would pick the
// other path).

#[test]
fn best_path_1_highest_local_pref() {
    let mut rib = rib_with(1, vec![ibgp(1), ibgp(2)]);
    let long = PathAttributes {
        local_pref: Some(200),
        ..attrs(2, &[64500, 64501, 64502])
    };
    apply(&mut rib, 2, &announce(long, &["10.1.0.0/16"]));
    apply(&mut rib, 1, &announce(attrs(1, &[64500]), &["10.1.0.0/16"]));
    assert_eq!(
        best(&rib, "10.1.0.0/16"),
        Some(2),
        "LOCAL_PREF 200 beats a shorter path with 100"
    );
    // A missing LOCAL_PREF on iBGP counts as 100: it beats 90.
    let low = PathAttributes {
        local_pref: Some(90),
        ..attrs(1, &[64500])
    };
    apply(&mut rib, 1, &announce(low, &["10.2.0.0/16"]));
    apply(
        &mut rib,
        2,
        &announce(attrs(2, &[64500, 64501]), &["10.2.0.0/16"]),
    );
    assert_eq!(best(&rib, "10.2.0.0/16"), Some(2));
}

#[test]
fn best_path_1_local_pref_from_ebgp_is_ignored() {
    let mut rib = rib_with(1, vec![ebgp(1, AZURE), ebgp(2, AZURE)]);
    // Neighbour 2 (higher router id) tries to win with LOCAL_PREF; eBGP LOCAL_PREF must be ignored.
    let pushy = PathAttributes {
        local_pref: Some(1000),
        ..attrs(2, &[AZURE])
    };
    apply(&mut rib, 2, &announce(pushy, &["10.1.0.0/16"]));
    apply(&mut rib, 1, &announce(attrs(1, &[AZURE]), &["10.1.0.0/16"]));
    let r = rib.route(&p("10.1.0.0/16")).unwrap();
    assert_eq!(r.best.peer, Some(1));
    assert_eq!(r.multipath.len(), 1);
    assert!(r.backups.iter().all(|v| v.attrs.local_pref.is_none()));
}

#[test]
fn best_path_2_local_over_learned() {
    let mut rib = rib_with(1, vec![ibgp(1)]);
    // iBGP path with the same LOCAL_PREF and an empty AS_PATH: only "local over learned" separates them.
    apply(&mut rib, 1, &announce(attrs(1, &[]), &["10.10.0.0/16"]));
    assert_eq!(best(&rib, "10.10.0.0/16"), Some(1));
    rib.originate(p("10.10.0.0/16"));
    let r = rib.route(&p("10.10.0.0/16")).unwrap();
    assert_eq!(r.best.peer, None);
    assert_eq!(r.best.next_hop, None);
    assert_eq!(backups(&rib, "10.10.0.0/16"), vec![Some(1)]);
    // But LOCAL_PREF comes first.
    let preferred = PathAttributes {
        local_pref: Some(150),
        ..attrs(1, &[])
    };
    apply(&mut rib, 1, &announce(preferred, &["10.10.0.0/16"]));
    assert_eq!(best(&rib, "10.10.0.0/16"), Some(1));
    // Stop originating: the learned path remains.
    rib.withdraw_originated(p("10.10.0.0/16"));
    assert_eq!(rib.route(&p("10.10.0.0/16")).unwrap().backups, vec![]);
}

#[test]
fn best_path_3_shortest_as_path_with_as_set_counting_one() {
    let mut rib = rib_with(1, vec![ebgp(1, 64500), ebgp(2, 64600)]);
    // Neighbour 1 has the lower router id but a path of length 3.
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[64500, 64501, 64502]), &["10.1.0.0/16"]),
    );
    let mut with_set = attrs(2, &[64600]);
    with_set
        .as_path
        .segments
        .push(AsSegment::Set(vec![1, 2, 3, 4]));
    apply(&mut rib, 2, &announce(with_set, &["10.1.0.0/16"]));
    assert_eq!(
        best(&rib, "10.1.0.0/16"),
        Some(2),
        "length 2 (AS_SET counts 1) beats 3"
    );
}

#[test]
fn best_path_4_lowest_origin() {
    let mut rib = rib_with(1, vec![ebgp(1, 64500), ebgp(2, 64600)]);
    let incomplete = PathAttributes {
        origin: Origin::Incomplete,
        ..attrs(1, &[64500])
    };
    apply(&mut rib, 1, &announce(incomplete, &["10.1.0.0/16"]));
    let egp = PathAttributes {
        origin: Origin::Egp,
        ..attrs(2, &[64600])
    };
    apply(&mut rib, 2, &announce(egp, &["10.1.0.0/16"]));
    assert_eq!(best(&rib, "10.1.0.0/16"), Some(2));
}

#[test]
fn best_path_5_lowest_med_only_within_the_same_neighbor_as() {
    let mut rib = rib_with(1, vec![ebgp(1, AZURE), ebgp(2, AZURE), ebgp(3, 64600)]);
    let med = |n: u8, asn: Asn, med: Option<u32>| PathAttributes {
        med,
        ..attrs(n, &[asn])
    };
    // Same neighbour AS: the lower MED wins over the lower router id.
    apply(
        &mut rib,
        1,
        &announce(med(1, AZURE, Some(20)), &["10.1.0.0/16"]),
    );
    apply(
        &mut rib,
        2,
        &announce(med(2, AZURE, Some(10)), &["10.1.0.0/16"]),
    );
    assert_eq!(best(&rib, "10.1.0.0/16"), Some(2));
    // Missing MED = 0: beats 10.
    apply(
        &mut rib,
        1,
        &announce(med(1, AZURE, None), &["10.1.0.0/16"]),
    );
    assert_eq!(best(&rib, "10.1.0.0/16"), Some(1));
    // Different neighbour ASes: MED is not compared, the router id decides.
    apply(
        &mut rib,
        1,
        &announce(med(1, AZURE, Some(500)), &["10.2.0.0/16"]),
    );
    apply(
        &mut rib,
        3,
        &announce(med(3, 64600, Some(1)), &["10.2.0.0/16"]),
    );
    assert_eq!(best(&rib, "10.2.0.0/16"), Some(1));
}

#[test]
fn best_path_6_ebgp_over_ibgp() {
    let mut rib = rib_with(1, vec![ibgp(1), ebgp(2, AZURE)]);
    apply(&mut rib, 1, &announce(attrs(1, &[AZURE]), &["10.1.0.0/16"]));
    apply(&mut rib, 2, &announce(attrs(2, &[AZURE]), &["10.1.0.0/16"]));
    assert_eq!(best(&rib, "10.1.0.0/16"), Some(2));
}

#[test]
fn best_path_7_lowest_router_id() {
    let mut a = ebgp(1, AZURE);
    a.router_id = Ipv4Addr::new(10, 9, 9, 9);
    let mut rib = rib_with(1, vec![a, ebgp(2, AZURE)]);
    apply(&mut rib, 1, &announce(attrs(1, &[AZURE]), &["10.1.0.0/16"]));
    apply(&mut rib, 2, &announce(attrs(2, &[AZURE]), &["10.1.0.0/16"]));
    assert_eq!(
        best(&rib, "10.1.0.0/16"),
        Some(2),
        "10.0.0.2 < 10.9.9.9 despite the lower address of 1"
    );
    // The identifier from OPEN counts for routes received after it.
    rib.peer_down(1);
    rib.set_peer_router_id(1, Ipv4Addr::new(10, 0, 0, 1));
    rib.peer_up(1, BOTH);
    apply(&mut rib, 1, &announce(attrs(1, &[AZURE]), &["10.1.0.0/16"]));
    assert_eq!(best(&rib, "10.1.0.0/16"), Some(1));
}

#[test]
fn best_path_8_lowest_peer_address() {
    // Two neighbours claiming the same BGP Identifier (the address decides).
    let mut a = ebgp(7, AZURE);
    a.router_id = Ipv4Addr::new(10, 0, 0, 1);
    let mut b = ebgp(3, AZURE);
    b.router_id = Ipv4Addr::new(10, 0, 0, 1);
    let mut rib = rib_with(1, vec![a, b]);
    apply(&mut rib, 7, &announce(attrs(7, &[AZURE]), &["10.1.0.0/16"]));
    apply(&mut rib, 3, &announce(attrs(3, &[AZURE]), &["10.1.0.0/16"]));
    assert_eq!(best(&rib, "10.1.0.0/16"), Some(3));
}

// ---------------------------------------------------------------------------------------------------------
// Multipath.

fn four_azure_tunnels(max_paths: usize) -> Rib {
    rib_with(max_paths, (1..=4).map(|n| ebgp(n, AZURE)).collect())
}

#[test]
fn multipath_four_peers_same_as_same_length() {
    let mut rib = four_azure_tunnels(8);
    for n in [3u8, 1, 4, 2] {
        apply(
            &mut rib,
            n as PeerId,
            &announce(attrs(n, &[AZURE]), &["10.20.0.0/16"]),
        );
    }
    assert_eq!(
        multipath(&rib, "10.20.0.0/16"),
        vec![Some(1), Some(2), Some(3), Some(4)]
    );
    assert!(backups(&rib, "10.20.0.0/16").is_empty());
    let changes = fib_changes(&mut rib);
    assert_eq!(changes.len(), 1, "one prefix, reported once: {changes:?}");
    assert_eq!(
        hops(&changes[0]),
        vec![
            (1, nh(1), false),
            (2, nh(2), false),
            (3, nh(3), false),
            (4, nh(4), false)
        ]
    );
}

#[test]
fn multipath_limited_by_max_paths() {
    let mut rib = four_azure_tunnels(2);
    for n in [4u8, 3, 2, 1] {
        apply(
            &mut rib,
            n as PeerId,
            &announce(attrs(n, &[AZURE]), &["10.20.0.0/16"]),
        );
    }
    assert_eq!(multipath(&rib, "10.20.0.0/16"), vec![Some(1), Some(2)]);
    assert_eq!(backups(&rib, "10.20.0.0/16"), vec![Some(3), Some(4)]);
    let changes = fib_changes(&mut rib);
    assert_eq!(
        hops(&changes[0]),
        vec![
            (1, nh(1), false),
            (2, nh(2), false),
            (3, nh(3), true),
            (4, nh(4), true)
        ]
    );
}

#[test]
fn multipath_prepended_path_is_backup_until_the_short_ones_go() {
    let mut rib = four_azure_tunnels(8);
    for n in 1..=3u8 {
        apply(
            &mut rib,
            n as PeerId,
            &announce(attrs(n, &[AZURE]), &["10.20.0.0/16"]),
        );
    }
    // Neighbour 4 is the ISP2 tunnel: one prepend. Its router id is the lowest of all, yet it must stay out.
    rib.peer_down(4);
    rib.set_peer_router_id(4, Ipv4Addr::new(10, 0, 0, 0));
    rib.peer_up(4, BOTH);
    drain(&mut rib, 4);
    apply(
        &mut rib,
        4,
        &announce(attrs(4, &[AZURE, AZURE]), &["10.20.0.0/16"]),
    );
    assert_eq!(
        multipath(&rib, "10.20.0.0/16"),
        vec![Some(1), Some(2), Some(3)]
    );
    assert_eq!(backups(&rib, "10.20.0.0/16"), vec![Some(4)]);
    let changes = fib_changes(&mut rib);
    assert_eq!(changes.len(), 1);
    assert_eq!(
        hops(&changes[0]),
        vec![
            (1, nh(1), false),
            (2, nh(2), false),
            (3, nh(3), false),
            (4, nh(4), true)
        ]
    );

    // The backup's attributes changing does not touch the FIB (same next hops, still a backup).
    apply(
        &mut rib,
        4,
        &announce(attrs(4, &[AZURE, AZURE, AZURE]), &["10.20.0.0/16"]),
    );
    assert!(fib_changes(&mut rib).is_empty());

    // ISP1 fails: the three short paths go, the prepended one takes over at once.
    for n in 1..=3 {
        apply(&mut rib, n, &withdraw(&["10.20.0.0/16"]));
    }
    assert_eq!(multipath(&rib, "10.20.0.0/16"), vec![Some(4)]);
    assert!(backups(&rib, "10.20.0.0/16").is_empty());
    let changes = fib_changes(&mut rib);
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].prefix, p("10.20.0.0/16"));
    assert_eq!(hops(&changes[0]), vec![(4, nh(4), false)]);

    // ISP1 returns: traffic moves back.
    apply(
        &mut rib,
        2,
        &announce(attrs(2, &[AZURE]), &["10.20.0.0/16"]),
    );
    assert_eq!(multipath(&rib, "10.20.0.0/16"), vec![Some(2)]);
    assert_eq!(
        hops(&fib_changes(&mut rib)[0]),
        vec![(2, nh(2), false), (4, nh(4), true)]
    );
}

#[test]
fn multipath_excludes_higher_med_and_ibgp_but_spans_neighbor_ases() {
    let mut rib = rib_with(
        8,
        vec![ebgp(1, AZURE), ebgp(2, AZURE), ebgp(3, 64600), ibgp(4)],
    );
    let med = |n: u8, asn: Asn, med: u32| PathAttributes {
        med: Some(med),
        ..attrs(n, &[asn])
    };
    apply(&mut rib, 1, &announce(med(1, AZURE, 10), &["10.20.0.0/16"]));
    apply(&mut rib, 2, &announce(med(2, AZURE, 20), &["10.20.0.0/16"]));
    apply(&mut rib, 3, &announce(med(3, 64600, 50), &["10.20.0.0/16"]));
    apply(
        &mut rib,
        4,
        &announce(attrs(4, &[64700]), &["10.20.0.0/16"]),
    );
    assert_eq!(multipath(&rib, "10.20.0.0/16"), vec![Some(1), Some(3)]);
    assert_eq!(backups(&rib, "10.20.0.0/16"), vec![Some(2), Some(4)]);
}

#[test]
fn fib_reports_removal_and_local_origination() {
    let mut rib = four_azure_tunnels(8);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16", "10.21.0.0/16"]),
    );
    assert_eq!(fib_changes(&mut rib).len(), 2);
    apply(&mut rib, 1, &withdraw(&["10.20.0.0/16"]));
    rib.originate(p("10.21.0.0/16"));
    let changes = fib_changes(&mut rib);
    assert_eq!(
        changes,
        vec![
            FibChange {
                prefix: p("10.20.0.0/16"),
                next_hops: vec![]
            },
            FibChange {
                prefix: p("10.21.0.0/16"),
                next_hops: vec![]
            },
        ]
    );
    rib.track_fib(false);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.22.0.0/16"]),
    );
    assert_eq!(rib.poll_fib_change(), None);
}

// ---------------------------------------------------------------------------------------------------------
// Import checks.

#[test]
fn own_asn_in_path_is_rejected_counted_and_replaces_the_old_route() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE)]);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16"]),
    );
    assert_eq!(rib.peer_counts(1).accepted, 1);
    let looped = announce(
        attrs(1, &[AZURE, 64999, LOCAL_ASN, 64998]),
        &["10.20.0.0/16", "10.21.0.0/16"],
    );
    let out = rib.apply_update(1, &looped).unwrap();
    assert_eq!(
        (out.received, out.accepted, out.rejected_loop, out.withdrawn),
        (2, 0, 2, 1)
    );
    assert_eq!(
        rib.loc_rib_len(),
        0,
        "the looped announcement implicitly withdrew the old route"
    );
    let c = rib.peer_counts(1);
    assert_eq!((c.received, c.accepted, c.rejected_loop), (3, 0, 2));
}

#[test]
fn enforce_first_as_on_ebgp_only() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ibgp(2)]);
    let out = rib
        .apply_update(1, &announce(attrs(1, &[64666, AZURE]), &["10.20.0.0/16"]))
        .unwrap();
    assert_eq!((out.accepted, out.rejected_first_as), (0, 1));
    let out = rib
        .apply_update(1, &announce(attrs(1, &[]), &["10.20.0.0/16"]))
        .unwrap();
    assert_eq!(
        out.rejected_first_as, 1,
        "an empty AS_PATH from eBGP has no first AS"
    );
    assert_eq!(rib.peer_counts(1).rejected_first_as, 2);
    assert_eq!(rib.loc_rib_len(), 0);
    // iBGP paths start with whatever AS the route entered ours from.
    apply(
        &mut rib,
        2,
        &announce(attrs(2, &[64666]), &["10.20.0.0/16"]),
    );
    assert_eq!(best(&rib, "10.20.0.0/16"), Some(2));
}

#[test]
fn treat_as_withdraw_withdraws_the_updates_nlri_only() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE)]);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16", "10.21.0.0/16"]),
    );
    apply(
        &mut rib,
        1,
        &announce6(
            attrs(1, &[AZURE]),
            "2001:db8::1".parse().unwrap(),
            &["2001:db8:20::/48"],
        ),
    );
    let mut bad = announce(attrs(1, &[AZURE]), &["10.20.0.0/16"]);
    bad.mp_reach = Some(MpReach {
        family: Family::Ipv6Unicast,
        next_hops: vec!["2001:db8::1".parse().unwrap()],
        nlri: vec![p("2001:db8:20::/48")],
    });
    bad.errors.push(Rfc7606Action::TreatAsWithdraw {
        type_code: 8,
        reason: "COMMUNITIES length not a multiple of 4".into(),
    });
    let out = rib.apply_update(1, &bad).unwrap();
    assert!(out.treat_as_withdraw);
    assert_eq!((out.received, out.accepted, out.withdrawn), (2, 0, 2));
    assert!(rib.route(&p("10.20.0.0/16")).is_none());
    assert!(rib.route(&p("2001:db8:20::/48")).is_none());
    assert!(
        rib.route(&p("10.21.0.0/16")).is_some(),
        "not in the bad UPDATE: kept"
    );
    assert_eq!(rib.peer_counts(1).treat_as_withdraw, 1);

    // An attribute-discard error leaves the UPDATE valid.
    let mut discard = announce(attrs(1, &[AZURE]), &["10.20.0.0/16"]);
    discard.errors.push(Rfc7606Action::AttributeDiscard {
        type_code: 7,
        reason: "AGGREGATOR length".into(),
    });
    assert_eq!(rib.apply_update(1, &discard).unwrap().accepted, 1);
}

#[test]
fn max_prefix_counts_accepted_prefixes_across_families() {
    let mut peer = ebgp(1, AZURE);
    peer.policy.import = list(&["10.0.0.0/8 le 24", "2001:db8::/32 le 64"]);
    peer.policy.max_prefix = Some(3);
    let mut rib = rib_with(8, vec![peer]);
    // Filtered prefixes do not count; re-announcements do not count twice.
    let out = rib
        .apply_update(
            1,
            &announce(
                attrs(1, &[AZURE]),
                &["10.1.0.0/16", "192.0.2.0/24", "10.1.0.0/16"],
            ),
        )
        .unwrap();
    assert_eq!((out.accepted, out.rejected_policy), (2, 1));
    assert_eq!(rib.peer_counts(1).accepted, 1);
    apply(
        &mut rib,
        1,
        &announce6(
            attrs(1, &[AZURE]),
            "2001:db8::1".parse().unwrap(),
            &["2001:db8:1::/48"],
        ),
    );
    apply(&mut rib, 1, &announce(attrs(1, &[AZURE]), &["10.2.0.0/16"]));
    assert_eq!(rib.peer_counts(1).accepted, 3);
    let err = rib
        .apply_update(
            1,
            &announce6(
                attrs(1, &[AZURE]),
                "2001:db8::1".parse().unwrap(),
                &["2001:db8:2::/48"],
            ),
        )
        .unwrap_err();
    assert_eq!(err.family, Family::Ipv6Unicast);
    assert_eq!(err.limit, 3);
    assert_eq!(
        rib.peer_counts(1).accepted,
        3,
        "the prefix over the limit was not taken"
    );
    let n = err.notification();
    assert_eq!((n.code, n.subcode), (6, subcode::MAX_PREFIXES_REACHED));
    assert_eq!(n.data, vec![0, 2, 1, 0, 0, 0, 3]);
    // The caller stops the session.
    rib.peer_down(1);
    assert_eq!(rib.loc_rib_len(), 0);
    // A withdrawal makes room again.
    rib.peer_up(1, BOTH);
    apply(
        &mut rib,
        1,
        &announce(
            attrs(1, &[AZURE]),
            &["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16"],
        ),
    );
    apply(&mut rib, 1, &withdraw(&["10.1.0.0/16"]));
    apply(&mut rib, 1, &announce(attrs(1, &[AZURE]), &["10.4.0.0/16"]));
    assert_eq!(rib.peer_counts(1).accepted, 3);
}

#[test]
fn ipv6_via_mp_reach_and_mp_unreach() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE)]);
    let nh6: Ipv6Addr = "2001:db8::1".parse().unwrap();
    apply(
        &mut rib,
        1,
        &announce6(attrs(1, &[AZURE]), nh6, &["2001:db8:20::/48"]),
    );
    let r = rib.route(&p("2001:db8:20::/48")).unwrap();
    assert_eq!(r.best.next_hop, Some(IpAddr::V6(nh6)));
    assert_eq!(
        hops(&fib_changes(&mut rib)[0]),
        vec![(1, IpAddr::V6(nh6), false)]
    );
    let u = Update {
        mp_unreach: Some(MpUnreach {
            family: Family::Ipv6Unicast,
            withdrawn: vec![p("2001:db8:20::/48")],
        }),
        ..Update::default()
    };
    assert_eq!(rib.apply_update(1, &u).unwrap().withdrawn, 1);
    assert_eq!(rib.loc_rib_len(), 0);
}

#[test]
fn end_of_rib_is_reported_and_updates_from_a_down_peer_are_ignored() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ebgp(2, AZURE)]);
    let out = rib.apply_update(1, &Update::default()).unwrap();
    assert_eq!(out.end_of_rib, Some(Family::Ipv4Unicast));
    rib.peer_down(2);
    let out = rib
        .apply_update(2, &announce(attrs(2, &[AZURE]), &["10.20.0.0/16"]))
        .unwrap();
    assert_eq!(out.accepted, 0);
    assert_eq!(rib.loc_rib_len(), 0);
    assert_eq!(rib.poll_export(2), None);
}

// ---------------------------------------------------------------------------------------------------------
// Export.

#[test]
fn ebgp_export_prepends_sets_next_hop_self_and_strips_what_must_not_leave() {
    let mut isp2 = ebgp(2, AZURE);
    isp2.policy.prepend = 2;
    let mut rib = rib_with(8, vec![ibgp(1), isp2, ebgp(3, 64600)]);
    let transitive = RawAttribute {
        flags: attr_flags::OPTIONAL | attr_flags::TRANSITIVE,
        type_code: 99,
        value: vec![1, 2],
    };
    let non_transitive = RawAttribute {
        flags: attr_flags::OPTIONAL,
        type_code: 98,
        value: vec![3],
    };
    let learned = PathAttributes {
        local_pref: Some(300),
        med: Some(7),
        communities: vec![0xFDE9_0001],
        ext_communities: vec![
            ExtCommunity::new_link_bandwidth(65001, 1.25e8),
            ExtCommunity([0x00, 0x02, 0, 1, 0, 0, 0, 1]),
        ],
        unknown: vec![transitive.clone(), non_transitive],
        ..attrs(1, &[64700])
    };
    apply(&mut rib, 1, &announce(learned, &["10.30.0.0/16"]));
    let (a, family, next_hops, prefixes) = the_announce(&drain(&mut rib, 2));
    assert_eq!(family, Family::Ipv4Unicast);
    assert_eq!(prefixes, vec![p("10.30.0.0/16")]);
    assert_eq!(next_hops, vec![IpAddr::V4(OUR_NH)]);
    assert_eq!(a.next_hop, Some(OUR_NH));
    assert_eq!(
        a.as_path.to_string(),
        "65001 65001 65001 64700",
        "1 + prepend copies of our ASN"
    );
    assert_eq!(a.local_pref, None);
    assert_eq!(a.med, None);
    assert_eq!(a.communities, vec![0xFDE9_0001]);
    assert_eq!(
        a.ext_communities,
        vec![ExtCommunity([0x00, 0x02, 0, 1, 0, 0, 0, 1])]
    );
    assert_eq!(a.unknown, vec![transitive]);
    // Neighbour 3 has no prepend: one copy.
    let (a3, ..) = the_announce(&drain(&mut rib, 3));
    assert_eq!(a3.as_path.to_string(), "65001 64700");
    assert_eq!(rib.peer_counts(2).advertised, 1);
}

#[test]
fn ibgp_export_keeps_as_path_sets_local_pref_and_next_hop_self() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ibgp(2)]);
    let learned = PathAttributes {
        med: Some(5),
        ..attrs(1, &[AZURE, 64800])
    };
    apply(&mut rib, 1, &announce(learned, &["10.20.0.0/16"]));
    let (a, _, next_hops, _) = the_announce(&drain(&mut rib, 2));
    assert_eq!(a.as_path.to_string(), "65515 64800");
    assert_eq!(a.local_pref, Some(100));
    assert_eq!(a.med, Some(5));
    assert_eq!(a.next_hop, Some(OUR_NH));
    assert_eq!(next_hops, vec![IpAddr::V4(OUR_NH)]);
}

#[test]
fn ipv6_export_uses_the_v6_next_hop_and_is_skipped_without_one() {
    let mut no_v6 = ebgp(3, 64600);
    no_v6.next_hop_self_v6 = None;
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ebgp(2, 64500), no_v6]);
    apply(
        &mut rib,
        1,
        &announce6(
            attrs(1, &[AZURE]),
            "2001:db8::1".parse().unwrap(),
            &["2001:db8:20::/48"],
        ),
    );
    let (a, family, next_hops, prefixes) = the_announce(&drain(&mut rib, 2));
    assert_eq!(family, Family::Ipv6Unicast);
    assert_eq!(next_hops, vec![IpAddr::V6(OUR_NH6)]);
    assert_eq!(a.next_hop, None);
    assert_eq!(prefixes, vec![p("2001:db8:20::/48")]);
    assert!(drain(&mut rib, 3).is_empty());
}

#[test]
fn never_back_to_the_source_nor_to_a_neighbor_whose_as_is_in_the_path() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ebgp(2, AZURE), ebgp(3, 64600)]);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16"]),
    );
    assert!(drain(&mut rib, 1).is_empty(), "not back to the source");
    assert!(
        drain(&mut rib, 2).is_empty(),
        "neighbour 2's AS is in the path"
    );
    assert_eq!(announced(&drain(&mut rib, 3)), set(&["10.20.0.0/16"]));
}

#[test]
fn ibgp_learned_routes_are_not_sent_to_ibgp_neighbors() {
    let mut rib = rib_with(8, vec![ibgp(1), ibgp(2), ebgp(3, AZURE)]);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[64700]), &["10.30.0.0/16"]),
    );
    assert!(drain(&mut rib, 2).is_empty());
    assert_eq!(announced(&drain(&mut rib, 3)), set(&["10.30.0.0/16"]));
}

#[test]
fn no_export_and_no_advertise_communities() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ibgp(2), ebgp(3, 64600)]);
    let tagged = |c: u32| PathAttributes {
        communities: vec![c],
        ..attrs(1, &[AZURE])
    };
    apply(
        &mut rib,
        1,
        &announce(tagged(community::NO_EXPORT), &["10.20.0.0/16"]),
    );
    apply(
        &mut rib,
        1,
        &announce(tagged(community::NO_ADVERTISE), &["10.21.0.0/16"]),
    );
    assert_eq!(announced(&drain(&mut rib, 2)), set(&["10.20.0.0/16"]));
    assert!(drain(&mut rib, 3).is_empty());
}

#[test]
fn export_policy_filters_per_prefix() {
    let mut core = ebgp(3, 64600);
    core.policy.export = list(&["10.20.0.0/16"]);
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), core]);
    apply(
        &mut rib,
        1,
        &announce(
            attrs(1, &[AZURE]),
            &["10.20.0.0/16", "10.20.1.0/24", "10.21.0.0/16"],
        ),
    );
    assert_eq!(announced(&drain(&mut rib, 3)), set(&["10.20.0.0/16"]));
}

#[test]
fn only_changes_are_resent_and_batches_share_attributes() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ebgp(3, 64600)]);
    // Two UPDATEs whose attributes are equal but separately allocated (as the codec makes them).
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16", "10.21.0.0/16"]),
    );
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.22.0.0/16"]),
    );
    let (_, _, _, prefixes) = the_announce(&drain(&mut rib, 3));
    assert_eq!(prefixes.len(), 3, "one batch for one attribute set");

    // The same again: nothing to send.
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16", "10.21.0.0/16"]),
    );
    assert!(drain(&mut rib, 3).is_empty());
    // A MED change is not visible on eBGP (MED is not passed on): nothing to send either.
    let med = PathAttributes {
        med: Some(40),
        ..attrs(1, &[AZURE])
    };
    apply(&mut rib, 1, &announce(med, &["10.20.0.0/16"]));
    assert!(drain(&mut rib, 3).is_empty());
    // A path change is.
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE, 64900]), &["10.21.0.0/16"]),
    );
    let (a, _, _, prefixes) = the_announce(&drain(&mut rib, 3));
    assert_eq!(prefixes, vec![p("10.21.0.0/16")]);
    assert_eq!(a.as_path.to_string(), "65001 65515 64900");
    assert_eq!(rib.peer_counts(3).advertised, 3);
}

#[test]
fn withdraw_follows_when_the_best_path_goes() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ebgp(2, AZURE), ebgp(3, 64600)]);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16"]),
    );
    apply(
        &mut rib,
        2,
        &announce(attrs(2, &[AZURE, AZURE]), &["10.20.0.0/16"]),
    );
    let (a, ..) = the_announce(&drain(&mut rib, 3));
    assert_eq!(a.as_path.to_string(), "65001 65515");
    // Best goes, the backup takes over: a new announcement, no withdrawal.
    apply(&mut rib, 1, &withdraw(&["10.20.0.0/16"]));
    let out = drain(&mut rib, 3);
    assert!(withdrawn(&out).is_empty());
    assert_eq!(
        the_announce(&out).0.as_path.to_string(),
        "65001 65515 65515"
    );
    // The last path goes: a withdrawal.
    apply(&mut rib, 2, &withdraw(&["10.20.0.0/16"]));
    let out = drain(&mut rib, 3);
    assert_eq!(
        out,
        vec![Export::Withdraw {
            family: Family::Ipv4Unicast,
            prefixes: vec![p("10.20.0.0/16")]
        }]
    );
    assert_eq!(rib.peer_counts(3).advertised, 0);
    // Withdrawing again sends nothing.
    apply(&mut rib, 2, &withdraw(&["10.20.0.0/16"]));
    assert!(drain(&mut rib, 3).is_empty());
}

#[test]
fn best_path_moving_to_the_neighbor_itself_withdraws_from_it() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ebgp(3, 64600)]);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE, 64900]), &["10.20.0.0/16"]),
    );
    assert_eq!(announced(&drain(&mut rib, 3)), set(&["10.20.0.0/16"]));
    // Neighbour 3 now offers a shorter path itself: the best path is its own, so ours is withdrawn.
    apply(
        &mut rib,
        3,
        &announce(attrs(3, &[64600]), &["10.20.0.0/16"]),
    );
    assert_eq!(best(&rib, "10.20.0.0/16"), Some(3));
    assert_eq!(withdrawn(&drain(&mut rib, 3)), set(&["10.20.0.0/16"]));
}

#[test]
fn initial_dump_then_end_of_rib_per_family() {
    let mut rib = Rib::new(LOCAL_ASN, Ipv4Addr::new(192, 0, 2, 200), 8);
    rib.add_peer(ebgp(1, AZURE));
    rib.add_peer(ebgp(2, 64600));
    rib.peer_up(1, BOTH);
    drain(&mut rib, 1);
    rib.originate(p("10.10.0.0/16"));
    rib.originate(p("2001:db8:10::/48"));
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16", "10.21.0.0/16"]),
    );
    rib.peer_up(2, BOTH);
    let out = drain(&mut rib, 2);
    let eor_at = out
        .iter()
        .position(|e| matches!(e, Export::EndOfRib(_)))
        .expect("End-of-RIB");
    assert_eq!(
        announced(&out[..eor_at]),
        set(&[
            "10.10.0.0/16",
            "10.20.0.0/16",
            "10.21.0.0/16",
            "2001:db8:10::/48"
        ])
    );
    assert_eq!(
        &out[eor_at..],
        &[
            Export::EndOfRib(Family::Ipv4Unicast),
            Export::EndOfRib(Family::Ipv6Unicast)
        ]
    );
    // The locally originated route goes out with just our ASN and ORIGIN IGP.
    let local = out[..eor_at]
        .iter()
        .find_map(|e| match e {
            Export::Announce {
                attrs, prefixes, ..
            } if prefixes.contains(&p("10.10.0.0/16")) => Some(attrs.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(local.as_path.to_string(), "65001");
    assert_eq!(local.origin, Origin::Igp);
    // Only the negotiated families.
    rib.peer_down(2);
    rib.peer_up(2, &[Family::Ipv4Unicast]);
    let out = drain(&mut rib, 2);
    assert_eq!(out.last(), Some(&Export::EndOfRib(Family::Ipv4Unicast)));
    assert!(!announced(&out).contains(&p("2001:db8:10::/48")));
    assert_eq!(
        out.iter()
            .filter(|e| matches!(e, Export::EndOfRib(_)))
            .count(),
        1
    );
}

#[test]
fn route_refresh_resends_everything() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ebgp(3, 64600)]);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16", "10.21.0.0/16"]),
    );
    assert_eq!(announced(&drain(&mut rib, 3)).len(), 2);
    assert!(drain(&mut rib, 3).is_empty());
    rib.refresh_export(3);
    let out = drain(&mut rib, 3);
    assert_eq!(announced(&out), set(&["10.20.0.0/16", "10.21.0.0/16"]));
    assert!(
        !out.iter().any(|e| matches!(e, Export::EndOfRib(_))),
        "no End-of-RIB after a refresh"
    );
    // A withdrawal still queued when the refresh comes is not lost.
    apply(&mut rib, 1, &withdraw(&["10.21.0.0/16"]));
    rib.refresh_export(3);
    let out = drain(&mut rib, 3);
    assert_eq!(announced(&out), set(&["10.20.0.0/16"]));
    assert_eq!(withdrawn(&out), set(&["10.21.0.0/16"]));
}

#[test]
fn peer_down_withdraws_its_routes_and_exports_follow() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ebgp(2, AZURE), ebgp(3, 64600)]);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16", "10.21.0.0/16"]),
    );
    apply(
        &mut rib,
        2,
        &announce(attrs(2, &[AZURE]), &["10.21.0.0/16"]),
    );
    drain(&mut rib, 3);
    fib_changes(&mut rib);
    rib.peer_down(1);
    let c = rib.peer_counts(1);
    assert_eq!(
        (c.received, c.accepted, c.advertised),
        (2, 0, 0),
        "received counts since the last up"
    );
    assert!(rib.route(&p("10.20.0.0/16")).is_none());
    assert_eq!(multipath(&rib, "10.21.0.0/16"), vec![Some(2)]);
    let out = drain(&mut rib, 3);
    assert_eq!(withdrawn(&out), set(&["10.20.0.0/16"]));
    // 10.21/16 now comes via neighbour 2, and to neighbour 3 the attributes are the same: nothing to send.
    assert!(announced(&out).is_empty());
    let changes = fib_changes(&mut rib);
    assert_eq!(
        changes.iter().map(|c| c.prefix).collect::<Vec<_>>(),
        vec![p("10.20.0.0/16"), p("10.21.0.0/16")]
    );
    assert!(changes[0].next_hops.is_empty());
    assert_eq!(hops(&changes[1]), vec![(2, nh(2), false)]);
    assert_eq!(
        rib.poll_export(1),
        None,
        "nothing is exported to a down neighbour"
    );
    // And it is told about routes again when it comes back.
    rib.peer_up(1, BOTH);
    apply(
        &mut rib,
        3,
        &announce(attrs(3, &[64600]), &["10.30.0.0/16"]),
    );
    assert_eq!(announced(&drain(&mut rib, 1)), set(&["10.30.0.0/16"]));
}

#[test]
fn routes_are_listed_sorted_with_their_sources() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE)]);
    rib.originate(p("10.10.0.0/16"));
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.30.0.0/16", "10.20.0.0/16"]),
    );
    apply(
        &mut rib,
        1,
        &announce6(
            attrs(1, &[AZURE]),
            "2001:db8::1".parse().unwrap(),
            &["2001:db8:20::/48"],
        ),
    );
    let routes: Vec<_> = rib
        .routes()
        .map(|r| (r.prefix.to_string(), r.best.peer))
        .collect();
    assert_eq!(
        routes,
        vec![
            ("10.10.0.0/16".to_string(), None),
            ("10.20.0.0/16".to_string(), Some(1)),
            ("10.30.0.0/16".to_string(), Some(1)),
            ("2001:db8:20::/48".to_string(), Some(1)),
        ]
    );
    assert_eq!(rib.loc_rib_len(), 4);
}

// ---------------------------------------------------------------------------------------------------------
// Ingest benchmark: `cargo test --release -p braid-control --test rib -- --ignored --nocapture ingest`.

fn rss_kib() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// One UPDATE of `per_update` consecutive /24s starting at the `u`-th block, as the codec would hand it over:
/// each UPDATE with its own (equal) attributes.
fn bench_update(n: u8, u: u32, per_update: u32) -> Update {
    let nlri = (0..per_update)
        .map(|i| {
            let k = u * per_update + i;
            Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0100_0000 + (k << 8))), 24).unwrap()
        })
        .collect();
    Update {
        attributes: Some(Arc::new(attrs(n, &[AZURE, 64900]))),
        nlri,
        ..Update::default()
    }
}

#[test]
#[ignore = "benchmark: run in release"]
fn ingest_one_million_prefixes() {
    const N: u32 = 1_000_000;
    const PER_UPDATE: u32 = 500;
    let mut rib = Rib::new(LOCAL_ASN, Ipv4Addr::new(192, 0, 2, 200), 8);
    rib.add_peer(ebgp(1, AZURE));
    rib.add_peer(ebgp(2, AZURE));
    rib.add_peer(ibgp(3));
    let before = rss_kib().unwrap_or(0);

    // Neighbour 1 sends the full table; the driver drains its exports and the FIB changes as it goes.
    rib.peer_up(1, BOTH);
    let start = std::time::Instant::now();
    let mut fib = 0;
    for u in 0..N / PER_UPDATE {
        rib.apply_update(1, &bench_update(1, u, PER_UPDATE))
            .unwrap();
        while rib.poll_export(1).is_some() {}
        while rib.poll_fib_change().is_some() {
            fib += 1;
        }
    }
    let ingest = start.elapsed();
    let loaded = rss_kib().unwrap_or(0);
    assert_eq!(rib.loc_rib_len(), N as usize);
    assert_eq!(fib, N);

    // Neighbour 2 (another tunnel to the same AS) sends the same table: every prefix becomes 2-way ECMP.
    rib.peer_up(2, BOTH);
    let t = std::time::Instant::now();
    for u in 0..N / PER_UPDATE {
        rib.apply_update(2, &bench_update(2, u, PER_UPDATE))
            .unwrap();
        while rib.poll_export(1).is_some() {}
        while rib.poll_export(2).is_some() {}
        while rib.poll_fib_change().is_some() {}
    }
    let second = t.elapsed();
    assert_eq!(rib.route(&p("1.0.0.0/24")).unwrap().multipath.len(), 2);
    let ecmp = rss_kib().unwrap_or(0);

    // An iBGP neighbour comes up: the full Adj-RIB-Out dump.
    let t = std::time::Instant::now();
    rib.peer_up(3, BOTH);
    let mut sent = 0;
    while let Some(e) = rib.poll_export(3) {
        if let Export::Announce { prefixes, .. } = e {
            sent += prefixes.len();
        }
    }
    let dump = t.elapsed();
    assert_eq!(sent, N as usize);
    let with_out = rss_kib().unwrap_or(0);

    // Both eBGP neighbours go down: everything withdrawn towards the iBGP one.
    let t = std::time::Instant::now();
    rib.peer_down(1);
    rib.peer_down(2);
    let mut withdrawn_n = 0;
    while let Some(e) = rib.poll_export(3) {
        if let Export::Withdraw { prefixes, .. } = e {
            withdrawn_n += prefixes.len();
        }
    }
    let down = t.elapsed();
    assert_eq!(withdrawn_n, N as usize);
    assert_eq!(rib.loc_rib_len(), 0);
    println!("RIB ingest benchmark, {N} IPv4 prefixes in UPDATEs of {PER_UPDATE}:");
    println!(
        "  1st neighbour, full table to Loc-RIB (exports + FIB drained per UPDATE): {:.3} s, RSS +{} MiB",
        ingest.as_secs_f64(),
        (loaded - before) / 1024
    );
    println!(
        "  2nd neighbour, same table (2-way ECMP everywhere): {:.3} s, RSS +{} MiB",
        second.as_secs_f64(),
        (ecmp.saturating_sub(loaded)) / 1024
    );
    println!(
        "  full dump to an iBGP neighbour: {:.3} s, RSS +{} MiB (its Adj-RIB-Out)",
        dump.as_secs_f64(),
        (with_out.saturating_sub(ecmp)) / 1024
    );
    println!(
        "  both eBGP neighbours down, 1M withdrawals out: {:.3} s",
        down.as_secs_f64()
    );
}

#[test]
fn reconfigured_export_policy_applies_on_refresh_and_removed_peers_are_forgotten() {
    let mut rib = rib_with(8, vec![ebgp(1, AZURE), ebgp(3, 64600)]);
    apply(
        &mut rib,
        1,
        &announce(attrs(1, &[AZURE]), &["10.20.0.0/16", "10.21.0.0/16"]),
    );
    assert_eq!(announced(&drain(&mut rib, 3)).len(), 2);
    let mut narrower = ebgp(3, 64600);
    narrower.policy.export = list(&["10.20.0.0/16"]);
    rib.add_peer(narrower);
    rib.refresh_export(3);
    let out = drain(&mut rib, 3);
    assert_eq!(withdrawn(&out), set(&["10.21.0.0/16"]));
    assert_eq!(announced(&out), set(&["10.20.0.0/16"]));
    assert_eq!(rib.peer_counts(3).advertised, 1);

    rib.remove_peer(1);
    assert_eq!(rib.loc_rib_len(), 0);
    assert_eq!(withdrawn(&drain(&mut rib, 3)), set(&["10.20.0.0/16"]));
    rib.peer_up(1, BOTH);
    assert_eq!(
        rib.poll_export(1),
        None,
        "a removed neighbour cannot come up"
    );
    assert_eq!(
        rib.apply_update(1, &announce(attrs(1, &[AZURE]), &["10.20.0.0/16"]))
            .unwrap()
            .accepted,
        0
    );
}
