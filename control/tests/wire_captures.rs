//! Messages captured from BIRD 2, FRR and GoBGP (see `tests/captures/README.md`): they decode, carry what
//! the daemons were configured to send, and survive a re-encode.

use std::net::{IpAddr, Ipv4Addr};

use braid_control::bgp::types::*;
use braid_control::bgp::wire::*;

fn load(name: &str) -> Vec<Vec<u8>> {
    let path = format!("{}/tests/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect()
}

fn ctx(four_octet_asn: bool) -> Negotiated {
    Negotiated {
        four_octet_asn,
        ..Negotiated::default_for_tests()
    }
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn comm(asn: u16, value: u16) -> u32 {
    (u32::from(asn) << 16) | u32::from(value)
}

fn open_of(m: &[u8]) -> Open {
    match decode(m, None) {
        Ok(Message::Open(o)) => o,
        other => panic!("not an OPEN: {other:?}"),
    }
}

fn update_of(m: &[u8], ctx: &Negotiated) -> Update {
    match decode(m, Some(ctx)) {
        Ok(Message::Update(u)) => {
            assert!(
                u.errors.is_empty(),
                "RFC 7606 errors in a captured UPDATE: {:?}",
                u.errors
            );
            u
        }
        other => panic!("not an UPDATE: {other:?}"),
    }
}

fn attrs(u: &Update) -> &PathAttributes {
    u.attributes.as_deref().expect("attributes")
}

/// Every message of every capture frames, decodes, and decodes again equal after a re-encode.
#[test]
fn every_captured_message_round_trips() {
    let mut n = 0;
    for (file, four) in [
        ("bird.hex", true),
        ("bird_2octet.hex", false),
        ("frr.hex", true),
        ("gobgp.hex", true),
    ] {
        let ctx = ctx(four);
        let stream: Vec<u8> = load(file).concat();
        let mut rest = &stream[..];
        while !rest.is_empty() {
            let len = frame_len(rest).unwrap().unwrap();
            let (m, tail) = rest.split_at(len);
            rest = tail;
            let msg = decode(m, Some(&ctx)).unwrap_or_else(|e| panic!("{file}: {e}"));
            let mut out = Vec::new();
            try_encode(&msg, Some(&ctx), &mut out).unwrap();
            assert_eq!(
                decode(&out, Some(&ctx)).unwrap(),
                msg,
                "{file}: re-encoded message differs"
            );
            n += 1;
        }
    }
    assert_eq!(n, 21);
}

#[test]
fn bird_open() {
    let m = &load("bird.hex")[0];
    // My AS on the wire is AS_TRANS; the real ASN is in the capability (RFC 6793).
    assert_eq!(&m[20..22], &AS_TRANS.to_be_bytes()[2..]);
    let o = open_of(m);
    assert_eq!(o.asn, 4_200_000_001);
    assert_eq!(o.hold_time, 90);
    assert_eq!(o.bgp_id, Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(o.families(), vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert!(o.route_refresh());
    assert_eq!(o.four_octet_asn(), Some(4_200_000_001));
    assert!(o
        .capabilities
        .contains(&Capability::GracefulRestart(vec![0, 120])));
    // Enhanced route refresh (70) and long-lived graceful restart (71) are kept but ignored.
    for code in [70, 71] {
        assert!(o.capabilities.contains(&Capability::Unknown {
            code,
            value: vec![]
        }));
    }
}

#[test]
fn bird_updates_four_octet() {
    let ctx = ctx(true);
    let msgs = load("bird.hex");
    assert_eq!(decode(&msgs[1], Some(&ctx)), Ok(Message::Keepalive));

    let u = update_of(&msgs[2], &ctx);
    assert_eq!(
        u.nlri,
        vec![
            p("198.51.100.0/24"),
            p("203.0.113.128/26"),
            p("203.0.113.0/25")
        ]
    );
    let a = attrs(&u);
    assert_eq!(a.origin, Origin::Igp);
    assert_eq!(a.as_path, AsPath::from_sequence(&[4_200_000_001]));
    assert_eq!(a.next_hop, Some(Ipv4Addr::new(192, 0, 2, 1)));
    assert_eq!(a.med, Some(50));
    assert_eq!(a.communities, vec![comm(65001, 100), comm(65001, 101)]);
    // rt 65001:7: two-octet-AS specific, route target subtype.
    assert_eq!(
        a.ext_communities,
        vec![ExtCommunity([0x00, 0x02, 0xfd, 0xe9, 0, 0, 0, 7])]
    );
    // The large community (type 32) is kept opaque, Partial bit set for passing on.
    assert_eq!(a.unknown.len(), 1);
    assert_eq!(a.unknown[0].type_code, 32);
    assert_eq!(
        a.unknown[0].flags,
        attr_flags::OPTIONAL | attr_flags::TRANSITIVE | attr_flags::PARTIAL
    );
    assert_eq!(a.unknown[0].value[..4], 4_200_000_001u32.to_be_bytes());

    // End-of-RIB IPv4, byte for byte what we send.
    let eor4 = update_of(&msgs[3], &ctx);
    assert_eq!(eor4.end_of_rib(), Some(Family::Ipv4Unicast));
    let mut ours = Vec::new();
    encode_end_of_rib(Family::Ipv4Unicast, &mut ours);
    assert_eq!(ours, msgs[3]);

    let u6 = update_of(&msgs[4], &ctx);
    let mp = u6.mp_reach.as_ref().expect("MP_REACH_NLRI");
    assert_eq!(mp.family, Family::Ipv6Unicast);
    assert_eq!(mp.next_hops.len(), 2, "global + link-local");
    assert_eq!(mp.next_hops[0], "2001:db8::1".parse::<IpAddr>().unwrap());
    assert!(matches!(mp.next_hops[1], IpAddr::V6(a) if a.segments()[0] == 0xfe80));
    assert_eq!(
        mp.nlri,
        vec![p("2001:db8:100::/48"), p("2001:db8:200::/56")]
    );
    assert_eq!(attrs(&u6).as_path, AsPath::from_sequence(&[4_200_000_001]));
    assert_eq!(attrs(&u6).next_hop, None);
    assert!(u6.nlri.is_empty());

    let eor6 = update_of(&msgs[5], &ctx);
    assert_eq!(eor6.end_of_rib(), Some(Family::Ipv6Unicast));
    ours.clear();
    encode_end_of_rib(Family::Ipv6Unicast, &mut ours);
    assert_eq!(ours, msgs[5]);
}

#[test]
fn bird_updates_two_octet_merge_as4_path() {
    let msgs = load("bird_2octet.hex");
    let raw = &msgs[2];
    // AS_PATH on the wire: one AS_SEQUENCE of one 2-octet ASN, AS_TRANS.
    let as_path = [0x40, 0x02, 0x04, 0x02, 0x01, 0x5b, 0xa0];
    assert!(raw.windows(as_path.len()).any(|w| w == as_path));
    // AS4_PATH (type 17) carries the real one.
    let as4_path = [0xc0, 0x11, 0x06, 0x02, 0x01, 0xfa, 0x56, 0xea, 0x01];
    assert!(raw.windows(as4_path.len()).any(|w| w == as4_path));

    let u = update_of(raw, &ctx(false));
    assert_eq!(attrs(&u).as_path, AsPath::from_sequence(&[4_200_000_001]));
    assert_eq!(u.nlri.len(), 3);
    let u6 = update_of(&msgs[4], &ctx(false));
    assert_eq!(attrs(&u6).as_path, AsPath::from_sequence(&[4_200_000_001]));

    // Read with the wrong context, the 2-octet AS_PATH is malformed: treat-as-withdraw, not a reset, and the
    // AS4_PATH a 4-octet speaker must not receive is discarded.
    let Ok(Message::Update(wrong)) = decode(raw, Some(&ctx(true))) else {
        panic!("decode failed");
    };
    assert!(wrong.treat_as_withdraw());
    assert!(wrong
        .errors
        .iter()
        .any(|e| matches!(e, Rfc7606Action::AttributeDiscard { type_code: 17, .. })));

    // What we send to a 2-octet peer for the same route is what BIRD sent: AS_TRANS + AS4_PATH.
    let mut out = Vec::new();
    encode(&Message::Update(u.clone()), Some(&ctx(false)), &mut out);
    assert!(out.windows(as_path.len()).any(|w| w == as_path));
    assert!(out.windows(as4_path.len()).any(|w| w == as4_path));
}

#[test]
fn frr_open_and_updates() {
    let msgs = load("frr.hex");
    let o = open_of(&msgs[0]);
    assert_eq!(o.asn, 65001);
    assert_eq!(o.hold_time, 90);
    assert_eq!(o.bgp_id, Ipv4Addr::new(192, 0, 2, 1));
    assert_eq!(o.families(), vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert!(o.route_refresh());
    assert_eq!(o.four_octet_asn(), Some(65001));
    // FRR sends one capability per optional parameter: 11 of them.
    assert_eq!(o.capabilities.len(), 11);
    let unknown: Vec<u8> = o
        .capabilities
        .iter()
        .filter_map(|c| match c {
            Capability::Unknown { code, .. } => Some(*code),
            _ => None,
        })
        .collect();
    // Old Cisco route refresh, enhanced RR, extended message, ADD-PATH, FQDN, long-lived GR.
    assert_eq!(unknown, vec![128, 70, 6, 69, 73, 71]);
    let fqdn = o.capabilities.iter().find_map(|c| match c {
        Capability::Unknown { code: 73, value } => Some(value.clone()),
        _ => None,
    });
    let fqdn = fqdn.unwrap();
    assert_eq!(&fqdn[1..1 + usize::from(fqdn[0])], b"frr-capture");

    let ctx = ctx(true);
    let u6 = update_of(&msgs[2], &ctx);
    let mp = u6.mp_reach.as_ref().unwrap();
    assert_eq!(mp.nlri, vec![p("2001:db8:f::/48")]);
    assert_eq!(mp.next_hops[0], "2001:db8::1".parse::<IpAddr>().unwrap());
    assert_eq!(mp.next_hops.len(), 2);
    assert_eq!(attrs(&u6).as_path, AsPath::from_sequence(&[65001]));
    assert_eq!(attrs(&u6).med, Some(0));

    let u4 = update_of(&msgs[3], &ctx);
    assert_eq!(u4.nlri, vec![p("198.51.100.64/26"), p("203.0.113.0/24")]);
    let a = attrs(&u4);
    assert_eq!(
        a.as_path,
        AsPath::from_sequence(&[65001, 65001]),
        "prepended once"
    );
    assert_eq!(a.med, Some(20));
    assert_eq!(
        a.communities,
        vec![comm(65001, 200), 0xFFFF_FF01],
        "65001:200 no-export"
    );
    assert_eq!(a.next_hop, Some(Ipv4Addr::new(192, 0, 2, 1)));
}

#[test]
fn gobgp_open_and_updates() {
    let msgs = load("gobgp.hex");
    let o = open_of(&msgs[0]);
    assert_eq!(o.asn, 65003);
    assert_eq!(o.hold_time, 90);
    assert_eq!(o.families(), vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert!(o.route_refresh());
    assert_eq!(o.four_octet_asn(), Some(65003));
    // Extended next hop (5): IPv4 unicast over IPv6 next hops; not negotiated by braid, ignored.
    assert!(o.capabilities.contains(&Capability::Unknown {
        code: 5,
        value: vec![0, 1, 0, 1, 0, 2]
    }));

    let ctx = ctx(true);
    let u = update_of(&msgs[2], &ctx);
    assert_eq!(u.nlri, vec![p("198.51.100.128/25")]);
    let a = attrs(&u);
    assert_eq!(a.origin, Origin::Incomplete);
    assert_eq!(a.as_path, AsPath::from_sequence(&[65003]));
    assert_eq!(a.med, Some(10));
    assert_eq!(a.communities, vec![comm(65003, 300)]);

    let u = update_of(&msgs[3], &ctx);
    assert_eq!(u.nlri, vec![p("203.0.113.192/27")]);
    assert_eq!(
        attrs(&u).as_path,
        AsPath::from_sequence(&[65003, 64999, 65010])
    );

    // GoBGP puts MP_REACH_NLRI after AS_PATH (RFC 7606 5.1 asks for it first; receivers must cope).
    let u6 = update_of(&msgs[4], &ctx);
    let mp = u6.mp_reach.as_ref().unwrap();
    assert_eq!(mp.nlri, vec![p("2001:db8:3::/48")]);
    assert_eq!(mp.next_hops, vec!["2001:db8::1".parse::<IpAddr>().unwrap()]);
}

/// Our own encoding of BIRD's IPv4 announcement differs from BIRD's only in the Partial bit we set on the
/// large community we do not interpret (RFC 4271 9).
#[test]
fn bird_ipv4_update_re_encodes_to_the_same_bytes_but_the_partial_bit() {
    let ctx = ctx(true);
    let msgs = load("bird.hex");
    let u = update_of(&msgs[2], &ctx);
    let mut out = Vec::new();
    encode(&Message::Update(u.clone()), Some(&ctx), &mut out);
    let mut theirs = msgs[2].clone();
    let at = theirs.windows(2).position(|w| w == [0xc0, 0x20]).unwrap();
    theirs[at] |= attr_flags::PARTIAL;
    assert_eq!(out, theirs);
}
