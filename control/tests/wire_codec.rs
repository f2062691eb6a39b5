//! The wire codec against hand-checked byte vectors (RFC 4271 4, RFC 4760, RFC 5492, RFC 6793, RFC 9072),
//! round trips of every message type and attribute in 2- and 4-octet-ASN contexts, header/OPEN/NOTIFICATION/
//! ROUTE-REFRESH error handling, and the UPDATE splitting used by the Adj-RIB-Out.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use braid_control::bgp::types::*;
use braid_control::bgp::wire::*;

fn ctx(four_octet_asn: bool) -> Negotiated {
    Negotiated {
        four_octet_asn,
        ..Negotiated::default_for_tests()
    }
}

fn p(s: &str) -> Prefix {
    s.parse().unwrap()
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// A whole message: marker, length, type, body.
fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xFF; 16];
    m.extend_from_slice(&((HEADER_LEN + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

fn enc(m: &Message, c: Option<&Negotiated>) -> Vec<u8> {
    let mut out = Vec::new();
    try_encode(m, c, &mut out).unwrap();
    out
}

fn err(buf: &[u8], c: Option<&Negotiated>) -> (u8, u8, Vec<u8>) {
    let e = decode(buf, c).expect_err("must not decode");
    assert!(!e.ignorable);
    (
        e.notification.code,
        e.notification.subcode,
        e.notification.data,
    )
}

const MARKER: &str = "ffffffffffffffffffffffffffffffff";

// ---------------------------------------------------------------------------------------------
// Byte vectors.

#[test]
fn keepalive_vector() {
    let want = hex(&format!("{MARKER} 0013 04"));
    assert_eq!(enc(&Message::Keepalive, None), want);
    assert_eq!(decode(&want, None), Ok(Message::Keepalive));
}

fn our_open(asn: Asn) -> Open {
    Open {
        version: 4,
        asn,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: vec![
            Capability::Multiprotocol(Family::Ipv4Unicast),
            Capability::Multiprotocol(Family::Ipv6Unicast),
            Capability::RouteRefresh,
            Capability::FourOctetAsn(asn),
        ],
    }
}

/// RFC 4271 4.2 + RFC 5492 4: version, My AS, Hold Time, BGP Identifier, Opt Parm Len, then one
/// Capabilities parameter (type 2) with MP (1) x2, route refresh (2), 4-octet ASN (65).
#[test]
fn open_vector() {
    let want = hex(&format!(
        "{MARKER} 0033 01  04 fde9 005a c0000201 16  02 14  \
         01 04 0001 00 01  01 04 0002 00 01  02 00  41 04 0000fde9"
    ));
    let open = our_open(65001);
    assert_eq!(enc(&Message::Open(open.clone()), None), want);
    assert_eq!(decode(&want, None), Ok(Message::Open(open)));
}

/// RFC 6793 4.1: My AS is AS_TRANS (0x5ba0) when the ASN does not fit 2 octets.
#[test]
fn open_vector_four_octet_asn() {
    let want = hex(&format!(
        "{MARKER} 0033 01  04 5ba0 005a c0000201 16  02 14  \
         01 04 0001 00 01  01 04 0002 00 01  02 00  41 04 fa56ea01"
    ));
    let open = our_open(4_200_000_001);
    assert_eq!(enc(&Message::Open(open.clone()), None), want);
    assert_eq!(decode(&want, None), Ok(Message::Open(open)));
}

fn base_attrs(as_path: &[Asn]) -> PathAttributes {
    PathAttributes {
        origin: Origin::Igp,
        as_path: AsPath::from_sequence(as_path),
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
        ..PathAttributes::default()
    }
}

/// RFC 4271 4.3: withdrawn length, total path attribute length, ORIGIN, AS_PATH, NEXT_HOP, MED,
/// COMMUNITIES (type-code order, well-known flags 0x40, MED 0x80, COMMUNITIES 0xc0), NLRI.
#[test]
fn update_vector_four_octet() {
    let want = hex(&format!(
        "{MARKER} 003d 02  0000  0022  \
         40 01 01 00  40 02 06 02 01 0000fde9  40 03 04 c0000201  80 04 04 00000005  c0 08 04 fde90001  \
         18 c63364"
    ));
    let attrs = PathAttributes {
        med: Some(5),
        communities: vec![0xfde9_0001],
        ..base_attrs(&[65001])
    };
    let mut out = Vec::new();
    let n = encode_announce(
        &attrs,
        Family::Ipv4Unicast,
        &[],
        &[p("198.51.100.0/24")],
        &ctx(true),
        &mut out,
    );
    assert_eq!(n, 1);
    assert_eq!(out, want);
    let u = Update {
        attributes: Some(Arc::new(attrs)),
        nlri: vec![p("198.51.100.0/24")],
        ..Update::default()
    };
    assert_eq!(enc(&Message::Update(u.clone()), Some(&ctx(true))), want);
    assert_eq!(decode(&want, Some(&ctx(true))), Ok(Message::Update(u)));
}

/// RFC 6793 4.2.2: toward a 2-octet peer, AS_PATH carries AS_TRANS and AS4_PATH (0xc0, type 17) the real
/// path.
#[test]
fn update_vector_two_octet_with_as4_path() {
    let want = hex(&format!(
        "{MARKER} 003c 02  0000  0021  \
         40 01 01 00  40 02 06 02 02 5ba0 fde9  40 03 04 c0000201  c0 11 0a 02 02 fa56ea01 0000fde9  \
         18 c63364"
    ));
    let attrs = base_attrs(&[4_200_000_001, 65001]);
    let u = Update {
        attributes: Some(Arc::new(attrs)),
        nlri: vec![p("198.51.100.0/24")],
        ..Update::default()
    };
    assert_eq!(enc(&Message::Update(u.clone()), Some(&ctx(false))), want);
    assert_eq!(decode(&want, Some(&ctx(false))), Ok(Message::Update(u)));
    // No OPEN exchanged yet = 2-octet encoding.
    assert_eq!(enc(&decode(&want, Some(&ctx(false))).unwrap(), None), want);
}

/// RFC 4760 3: MP_REACH_NLRI first (RFC 7606 5.1): AFI 2, SAFI 1, next hop length 16, next hop, reserved,
/// NLRI; then ORIGIN and AS_PATH; no NEXT_HOP attribute.
#[test]
fn update_vector_ipv6_mp_reach() {
    let want = hex(&format!(
        "{MARKER} 0043 02  0000  002c  \
         80 0e 1c 0002 01 10 20010db8000000000000000000000001 00 30 20010db80001  \
         40 01 01 00  40 02 06 02 01 0000fde9"
    ));
    let mut out = Vec::new();
    let nh: IpAddr = "2001:db8::1".parse().unwrap();
    let n = encode_announce(
        &base_attrs(&[65001]),
        Family::Ipv6Unicast,
        &[nh],
        &[p("2001:db8:1::/48")],
        &ctx(true),
        &mut out,
    );
    assert_eq!(n, 1);
    assert_eq!(out, want);
    let Ok(Message::Update(u)) = decode(&want, Some(&ctx(true))) else {
        panic!()
    };
    assert!(u.errors.is_empty());
    assert_eq!(
        u.mp_reach,
        Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hops: vec![nh],
            nlri: vec![p("2001:db8:1::/48")]
        })
    );
    assert_eq!(u.attributes.unwrap().next_hop, None);
}

#[test]
fn withdraw_and_end_of_rib_vectors() {
    let mut out = Vec::new();
    encode_withdraw(
        Family::Ipv4Unicast,
        &[p("198.51.100.0/24"), p("203.0.113.128/25")],
        &ctx(true),
        &mut out,
    );
    assert_eq!(
        out,
        hex(&format!("{MARKER} 0020 02  0009 18c63364 19cb007180  0000"))
    );
    out.clear();
    encode_withdraw(
        Family::Ipv6Unicast,
        &[p("2001:db8:1::/48")],
        &ctx(true),
        &mut out,
    );
    assert_eq!(
        out,
        hex(&format!(
            "{MARKER} 0024 02  0000 000d  80 0f 0a 0002 01 30 20010db80001"
        ))
    );
    out.clear();
    encode_end_of_rib(Family::Ipv4Unicast, &mut out);
    assert_eq!(out, hex(&format!("{MARKER} 0017 02 0000 0000")));
    out.clear();
    encode_end_of_rib(Family::Ipv6Unicast, &mut out);
    assert_eq!(
        out,
        hex(&format!("{MARKER} 001d 02 0000 0006 80 0f 03 0002 01"))
    );
}

#[test]
fn notification_and_route_refresh_vectors() {
    let n = Notification::shutdown(subcode::ADMINISTRATIVE_SHUTDOWN, "bye");
    let want = hex(&format!("{MARKER} 0019 03 06 02 03 627965"));
    assert_eq!(enc(&Message::Notification(n.clone()), None), want);
    assert_eq!(decode(&want, None), Ok(Message::Notification(n)));

    let want = hex(&format!("{MARKER} 0017 05 0002 00 01"));
    assert_eq!(
        enc(
            &Message::RouteRefresh(Family::Ipv6Unicast),
            Some(&ctx(true))
        ),
        want
    );
    assert_eq!(
        decode(&want, Some(&ctx(true))),
        Ok(Message::RouteRefresh(Family::Ipv6Unicast))
    );
}

// ---------------------------------------------------------------------------------------------
// Round trips.

fn rich_attrs() -> PathAttributes {
    PathAttributes {
        origin: Origin::Egp,
        as_path: AsPath {
            segments: vec![
                AsSegment::Sequence(vec![65001, 4_200_000_001, 65002]),
                AsSegment::Set(vec![64512, 4_200_000_002]),
            ],
        },
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 9)),
        med: Some(7),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some((4_200_000_003, Ipv4Addr::new(192, 0, 2, 77))),
        communities: vec![0xfde9_0001, 0xFFFF_FF02],
        ext_communities: vec![
            ExtCommunity::new_link_bandwidth(65001, 125_000_000.0),
            ExtCommunity([0, 2, 0xfd, 0xe9, 0, 0, 0, 7]),
        ],
        unknown: vec![
            RawAttribute {
                flags: attr_flags::OPTIONAL | attr_flags::TRANSITIVE | attr_flags::PARTIAL,
                type_code: 32,
                value: vec![0, 0, 0xfd, 0xe9, 0, 0, 0, 1, 0, 0, 0, 2],
            },
            RawAttribute {
                flags: attr_flags::OPTIONAL | attr_flags::TRANSITIVE | attr_flags::PARTIAL,
                type_code: 99,
                value: vec![1, 2, 3],
            },
        ],
    }
}

fn rich_update() -> Update {
    Update {
        withdrawn: vec![p("203.0.113.0/24"), p("0.0.0.0/0"), p("192.0.2.77/32")],
        attributes: Some(Arc::new(rich_attrs())),
        nlri: vec![
            p("198.51.100.0/24"),
            p("198.51.100.128/25"),
            p("10.0.0.0/8"),
        ],
        mp_reach: Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hops: vec!["2001:db8::1".parse().unwrap(), "fe80::1".parse().unwrap()],
            nlri: vec![
                p("2001:db8:1::/48"),
                p("2001:db8:2:3::/64"),
                p("::/0"),
                p("2001:db8::5/128"),
            ],
        }),
        mp_unreach: Some(MpUnreach {
            family: Family::Ipv6Unicast,
            withdrawn: vec![p("2001:db8:9::/48")],
        }),
        errors: vec![],
    }
}

#[test]
fn every_attribute_round_trips_in_both_asn_contexts() {
    for four in [true, false] {
        let c = ctx(four);
        let u = rich_update();
        let bytes = enc(&Message::Update(u.clone()), Some(&c));
        assert_eq!(
            decode(&bytes, Some(&c)),
            Ok(Message::Update(u)),
            "four_octet_asn={four}"
        );
        let has = |needle: &[u8]| bytes.windows(needle.len()).any(|w| w == needle);
        // AS4_PATH / AS4_AGGREGATOR exist only toward 2-octet peers.
        assert_eq!(has(&[0xc0, 17]), !four);
        assert_eq!(has(&[0xc0, 18, 8]), !four);
        if !four {
            // AGGREGATOR with AS_TRANS, 6 octets.
            assert!(has(&[0xc0, 7, 6, 0x5b, 0xa0, 192, 0, 2, 77]));
        }
    }
}

#[test]
fn ipv4_in_mp_reach_round_trips() {
    let u = Update {
        attributes: Some(Arc::new(PathAttributes {
            next_hop: None,
            ..base_attrs(&[65001])
        })),
        mp_reach: Some(MpReach {
            family: Family::Ipv4Unicast,
            next_hops: vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))],
            nlri: vec![p("198.51.100.0/24")],
        }),
        ..Update::default()
    };
    let bytes = enc(&Message::Update(u.clone()), Some(&ctx(true)));
    let Ok(Message::Update(d)) = decode(&bytes, Some(&ctx(true))) else {
        panic!()
    };
    assert!(d.errors.is_empty(), "{:?}", d.errors);
    assert_eq!(d, u);
}

#[test]
fn other_messages_round_trip() {
    let mut caps = our_open(65001).capabilities;
    caps.push(Capability::GracefulRestart(vec![0x40, 0x78, 0, 1, 1, 0x80]));
    caps.push(Capability::Unknown {
        code: 73,
        value: b"\x04host\x00".to_vec(),
    });
    caps.push(Capability::Unknown {
        code: 1,
        value: vec![0, 1, 0, 128], // MP for a family braid does not know (VPNv4)
    });
    let open = Open {
        hold_time: 0,
        capabilities: caps,
        ..our_open(65001)
    };
    let msgs = [
        Message::Open(open),
        Message::Open(Open {
            capabilities: vec![],
            ..our_open(64512)
        }),
        Message::Keepalive,
        Message::Notification(Notification::new(6, 4, vec![])),
        Message::Notification(Notification::new(3, 1, vec![0xAB; 300])),
        Message::RouteRefresh(Family::Ipv4Unicast),
        Message::RouteRefresh(Family::Ipv6Unicast),
        Message::Update(Update::default()),
    ];
    for four in [true, false] {
        for m in &msgs {
            let b = enc(m, Some(&ctx(four)));
            assert_eq!(frame_len(&b), Ok(Some(b.len())));
            assert_eq!(&decode(&b, Some(&ctx(four))).unwrap(), m);
        }
    }
}

/// RFC 9072: more than 255 octets of optional parameters go in the extended format, and it decodes.
#[test]
fn extended_optional_parameters() {
    let mut open = our_open(65001);
    for code in 200..230u8 {
        open.capabilities.push(Capability::Unknown {
            code,
            value: vec![code; 10],
        });
    }
    let b = enc(&Message::Open(open.clone()), None);
    assert_eq!(b[28], 255, "Non-Ext OP Len");
    assert_eq!(b[29], 255, "Non-Ext OP Type");
    let ext_len = usize::from(u16::from_be_bytes([b[30], b[31]]));
    assert_eq!(ext_len, b.len() - 32);
    assert_eq!(b[32], 2, "Capabilities, with a 2-octet length");
    assert_eq!(usize::from(u16::from_be_bytes([b[33], b[34]])), ext_len - 3);
    assert_eq!(decode(&b, None), Ok(Message::Open(open)));

    // A small hand-built one, as a peer may send it even when it would fit the old format.
    let body = hex("04 fde9 005a c0000201 ff ff 0007 02 0004 02 00 46 00");
    let Ok(Message::Open(o)) = decode(&msg(1, &body), None) else {
        panic!()
    };
    assert_eq!(
        o.capabilities,
        vec![
            Capability::RouteRefresh,
            Capability::Unknown {
                code: 70,
                value: vec![]
            }
        ]
    );
}

#[test]
fn non_transitive_unknown_attributes_are_never_sent() {
    let mut attrs = base_attrs(&[65001]);
    attrs.unknown.push(RawAttribute {
        flags: attr_flags::OPTIONAL,
        type_code: 9, // ORIGINATOR_ID
        value: vec![192, 0, 2, 5],
    });
    attrs.unknown.push(RawAttribute {
        flags: attr_flags::OPTIONAL | attr_flags::TRANSITIVE,
        type_code: 250,
        value: vec![],
    });
    let mut out = Vec::new();
    encode_announce(
        &attrs,
        Family::Ipv4Unicast,
        &[],
        &[p("198.51.100.0/24")],
        &ctx(true),
        &mut out,
    );
    let Ok(Message::Update(u)) = decode(&out, Some(&ctx(true))) else {
        panic!()
    };
    let unknown = &u.attributes.as_ref().unwrap().unknown;
    assert_eq!(unknown.len(), 1);
    assert_eq!(unknown[0].type_code, 250);
    assert_eq!(
        unknown[0].flags,
        attr_flags::OPTIONAL | attr_flags::TRANSITIVE | attr_flags::PARTIAL,
        "passed on with the Partial bit"
    );
    // Attributes in type-code order: the 250 one last.
    let at = |t: u8| {
        out.windows(2)
            .position(|w| w[1] == t && w[0] & 0x80 != 0)
            .unwrap()
    };
    assert!(at(250) > out.windows(2).position(|w| w == [0x40, 3]).unwrap());
}

#[test]
fn long_attributes_use_the_extended_length_bit() {
    let attrs = PathAttributes {
        communities: (0..100).collect(),
        ..base_attrs(&[65001])
    };
    let mut out = Vec::new();
    encode_announce(
        &attrs,
        Family::Ipv4Unicast,
        &[],
        &[p("198.51.100.0/24")],
        &ctx(true),
        &mut out,
    );
    // COMMUNITIES: flags 0xd0 (optional, transitive, extended length), type 8, length 400.
    assert!(out.windows(4).any(|w| w == [0xd0, 8, 0x01, 0x90]));
    let Ok(Message::Update(u)) = decode(&out, Some(&ctx(true))) else {
        panic!()
    };
    assert_eq!(
        u.attributes.unwrap().communities,
        (0..100).collect::<Vec<u32>>()
    );
}

// ---------------------------------------------------------------------------------------------
// RFC 6793 4.2.3 merge of AS4_PATH and AS4_AGGREGATOR from 2-octet peers.

fn raw_update(attrs: &[u8]) -> Vec<u8> {
    let mut body = vec![0, 0];
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(&[24, 198, 51, 100]);
    msg(2, &body)
}

const MANDATORY_NO_PATH: &str = "40 01 01 00  40 03 04 c0000201";

fn decoded_path(attrs: &str, four: bool) -> (AsPath, Option<(Asn, Ipv4Addr)>, Vec<Rfc7606Action>) {
    let Ok(Message::Update(u)) = decode(&raw_update(&hex(attrs)), Some(&ctx(four))) else {
        panic!("{attrs}")
    };
    let a = u.attributes.unwrap();
    (a.as_path.clone(), a.aggregator, u.errors)
}

#[test]
fn as4_path_shorter_than_as_path_keeps_the_leading_2_octet_ases() {
    // AS_PATH 65010 AS_TRANS 65001 (a 2-octet speaker prepended 65010), AS4_PATH 4200000001 65001.
    let (path, _, errors) = decoded_path(
        &format!(
            "{MANDATORY_NO_PATH} 40 02 08 02 03 fdf2 5ba0 fde9  c0 11 0a 02 02 fa56ea01 0000fde9"
        ),
        false,
    );
    assert!(errors.is_empty());
    assert_eq!(path, AsPath::from_sequence(&[65010, 4_200_000_001, 65001]));
}

#[test]
fn as4_path_longer_than_as_path_is_ignored() {
    let (path, _, _) = decoded_path(
        &format!("{MANDATORY_NO_PATH} 40 02 04 02 01 5ba0  c0 11 0a 02 02 fa56ea01 0000fde9"),
        false,
    );
    assert_eq!(path, AsPath::from_sequence(&[AS_TRANS]));
}

#[test]
fn as4_aggregator_replaces_as_trans_aggregator() {
    let (path, agg, errors) = decoded_path(
        &format!(
            "{MANDATORY_NO_PATH} 40 02 04 02 01 5ba0  c0 07 06 5ba0 c000024d  \
             c0 11 06 02 01 fa56ea01  c0 12 08 fa56ea03 c000024d"
        ),
        false,
    );
    assert!(errors.is_empty());
    assert_eq!(path, AsPath::from_sequence(&[4_200_000_001]));
    assert_eq!(agg, Some((4_200_000_003, Ipv4Addr::new(192, 0, 2, 77))));
}

#[test]
fn aggregator_from_a_2_octet_aggregator_voids_as4_attributes() {
    // RFC 6793 4.2.3: AGGREGATOR with an AS other than AS_TRANS: AS4_AGGREGATOR and AS4_PATH ignored.
    let (path, agg, _) = decoded_path(
        &format!(
            "{MANDATORY_NO_PATH} 40 02 04 02 01 5ba0  c0 07 06 fdf2 c000024d  \
             c0 11 06 02 01 fa56ea01  c0 12 08 fa56ea03 c000024d"
        ),
        false,
    );
    assert_eq!(path, AsPath::from_sequence(&[AS_TRANS]));
    assert_eq!(agg, Some((65010, Ipv4Addr::new(192, 0, 2, 77))));
}

// ---------------------------------------------------------------------------------------------
// Errors outside UPDATE (RFC 4271 6.1, 6.2, 6.4; RFC 2918; RFC 7313).

#[test]
fn header_errors() {
    let ka = enc(&Message::Keepalive, None);
    let mut bad = ka.clone();
    bad[0] = 0xFE;
    assert_eq!(err(&bad, None), (1, 1, vec![]));
    let mut short = ka.clone();
    short[17] = 18;
    assert_eq!(err(&short, None), (1, 2, vec![0, 18]));
    assert_eq!(frame_len(&short).unwrap_err().data, vec![0, 18]);
    assert_eq!(
        err(&msg(4, &[0]), None),
        (1, 2, vec![0, 20]),
        "KEEPALIVE must be 19 octets"
    );
    assert_eq!(err(&msg(9, &[]), None), (1, 3, vec![9]), "unknown type");
    assert_eq!(
        err(&msg(3, &[6]), None),
        (1, 2, vec![0, 20]),
        "NOTIFICATION needs code + subcode"
    );
    assert_eq!(
        err(&msg(2, &[0, 0, 0]), Some(&ctx(true))),
        (1, 2, vec![0, 22]),
        "UPDATE < 23"
    );
    assert_eq!(
        err(&msg(1, &[4, 0, 1]), None),
        (1, 2, vec![0, 22]),
        "OPEN < 29"
    );
    // The buffer must be exactly the message.
    let mut two = ka.clone();
    two.extend_from_slice(&ka);
    assert_eq!(err(&two, None), (1, 2, vec![0, 19]));
    assert_eq!(err(&ka[..10], None).1, 2);
}

#[test]
fn frame_len_splits_a_stream() {
    let mut stream = enc(&Message::Open(our_open(65001)), None);
    stream.extend(enc(&Message::Keepalive, None));
    stream.extend(enc(&Message::Update(rich_update()), Some(&ctx(true))));
    let mut rest = &stream[..];
    let mut kinds = vec![];
    while let Some(n) = frame_len(rest).unwrap() {
        kinds.push(decode(&rest[..n], Some(&ctx(true))).unwrap());
        rest = &rest[n..];
    }
    assert!(rest.is_empty());
    assert_eq!(kinds.len(), 3);
    assert_eq!(kinds[1], Message::Keepalive);
}

fn open_body(version: u8, my_as: u16, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version];
    b.extend_from_slice(&my_as.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    msg(1, &b)
}

#[test]
fn open_errors() {
    let id = [192, 0, 2, 1];
    assert_eq!(
        err(&open_body(3, 65001, 90, id, &[]), None),
        (2, 1, vec![0, 4]),
        "version"
    );
    assert_eq!(
        err(&open_body(4, 65001, 1, id, &[]), None),
        (2, 6, vec![]),
        "hold 1"
    );
    assert_eq!(
        err(&open_body(4, 65001, 2, id, &[]), None),
        (2, 6, vec![]),
        "hold 2"
    );
    assert!(
        decode(&open_body(4, 65001, 3, id, &[]), None).is_ok(),
        "hold 3"
    );
    assert!(
        decode(&open_body(4, 65001, 0, id, &[]), None).is_ok(),
        "hold 0"
    );
    assert_eq!(
        err(&open_body(4, 65001, 90, [0; 4], &[]), None),
        (2, 3, vec![]),
        "BGP id 0"
    );
    assert_eq!(
        err(&open_body(4, 0, 90, id, &[]), None),
        (2, 2, vec![0, 0]),
        "AS 0 (RFC 7607)"
    );
    // Optional parameter type 1 (authentication, deprecated).
    assert_eq!(
        err(&open_body(4, 65001, 90, id, &[1, 1, 0]), None),
        (2, 4, vec![])
    );
    // A capability overrunning its parameter: OPEN Message Error, unspecific subcode.
    assert_eq!(
        err(&open_body(4, 65001, 90, id, &[2, 3, 65, 4, 0]), None),
        (2, 0, vec![])
    );
    // A parameter overrunning the parameters, and parameters not filling the message.
    assert_eq!(
        err(&open_body(4, 65001, 90, id, &[2, 9, 2, 0]), None),
        (2, 0, vec![])
    );
    let mut trailing = open_body(4, 65001, 90, id, &[]);
    trailing.push(0);
    trailing[17] += 1;
    assert_eq!(err(&trailing, None), (2, 0, vec![]));
}

#[test]
fn odd_capabilities_are_kept_as_unknown_and_ignored() {
    // MP with a bad length, route refresh with a value, 4-octet ASN of 2 octets, ADD-PATH, extended
    // message, enhanced route refresh, FQDN, and capability code 0.
    let caps = hex(
        "01 03 000101  02 01 00  41 02 fde9  45 04 00010103  06 00  46 00  49 03 01 61 00  00 00",
    );
    let mut params = vec![2, caps.len() as u8];
    params.extend_from_slice(&caps);
    let Ok(Message::Open(o)) = decode(&open_body(4, 65001, 90, [192, 0, 2, 1], &params), None)
    else {
        panic!()
    };
    assert_eq!(
        o.asn, 65001,
        "a 2-octet '4-octet ASN capability' is ignored"
    );
    assert_eq!(o.capabilities.len(), 8);
    assert!(o
        .capabilities
        .iter()
        .all(|c| matches!(c, Capability::Unknown { .. })));
    assert!(o.families().is_empty());
}

#[test]
fn route_refresh_rules() {
    let c = ctx(true);
    // RFC 7313 5: length other than 23 -> ROUTE-REFRESH Message Error / Invalid Message Length, data = message.
    let long = msg(5, &[0, 1, 0, 1, 0]);
    assert_eq!(err(&long, Some(&c)), (7, 1, long.clone()));
    // BoRR / EoRR decode as a plain refresh.
    assert_eq!(
        decode(&msg(5, &[0, 1, 1, 1]), Some(&c)),
        Ok(Message::RouteRefresh(Family::Ipv4Unicast))
    );
    assert_eq!(
        decode(&msg(5, &[0, 2, 2, 1]), Some(&c)),
        Ok(Message::RouteRefresh(Family::Ipv6Unicast))
    );
    // Unknown subtype, unknown AFI/SAFI: ignored, no NOTIFICATION (RFC 7313 5, RFC 2918 4).
    assert!(
        decode(&msg(5, &[0, 1, 3, 1]), Some(&c))
            .unwrap_err()
            .ignorable
    );
    assert!(
        decode(&msg(5, &[0, 1, 0, 128]), Some(&c))
            .unwrap_err()
            .ignorable
    );
    assert!(
        decode(&msg(5, &[0, 25, 0, 70]), Some(&c))
            .unwrap_err()
            .ignorable
    );
}

#[test]
fn update_and_route_refresh_need_a_negotiated_context() {
    let u = enc(&Message::Update(Update::default()), Some(&ctx(true)));
    assert_eq!(
        err(&u, None),
        (5, 1, vec![]),
        "FSM error, unexpected in OpenSent"
    );
    assert_eq!(err(&msg(5, &[0, 1, 0, 1]), None), (5, 1, vec![]));
    let e = decode(&u, None).unwrap_err();
    assert_eq!(Notification::from(e.clone()), e.notification);
    assert!(e.to_string().contains("Finite State Machine Error"));
}

// ---------------------------------------------------------------------------------------------
// Splitting (Adj-RIB-Out).

fn decode_all(mut out: &[u8], c: &Negotiated) -> Vec<Update> {
    let mut v = vec![];
    while !out.is_empty() {
        let n = frame_len(out).unwrap().unwrap();
        assert!(n <= MAX_MESSAGE_LEN);
        match decode(&out[..n], Some(c)).unwrap() {
            Message::Update(u) => {
                assert!(u.errors.is_empty(), "{:?}", u.errors);
                v.push(u)
            }
            m => panic!("{m:?}"),
        }
        out = &out[n..];
    }
    v
}

fn v4_hosts(n: u32) -> Vec<Prefix> {
    (0..n)
        .map(|i| Prefix::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i)), 32).unwrap())
        .collect()
}

fn v6_64s(n: u32) -> Vec<Prefix> {
    (0..n)
        .map(|i| {
            let a = Ipv6Addr::from((0x2001_0db8_u128 << 96) | (u128::from(i) << 64));
            Prefix::new(IpAddr::V6(a), 64).unwrap()
        })
        .collect()
}

#[test]
fn announce_splits_ipv4_into_full_messages() {
    let c = ctx(false);
    let attrs = rich_attrs();
    let prefixes = v4_hosts(5000);
    let mut out = Vec::new();
    let n = encode_announce(&attrs, Family::Ipv4Unicast, &[], &prefixes, &c, &mut out);
    let updates = decode_all(&out, &c);
    assert_eq!(updates.len(), n);
    let mut got = vec![];
    for u in &updates {
        assert_eq!(u.attributes.as_deref(), Some(&attrs));
        got.extend_from_slice(&u.nlri);
    }
    assert_eq!(got, prefixes);
    // Full messages: all but the last leave less room than one more /32 (5 octets).
    let mut rest = &out[..];
    for i in 0..n {
        let len = frame_len(rest).unwrap().unwrap();
        if i + 1 < n {
            assert!(len > MAX_MESSAGE_LEN - 5, "message {i} only {len} octets");
        }
        rest = &rest[len..];
    }
    assert_eq!(n, 5000usize.div_ceil(updates[0].nlri.len()));
}

#[test]
fn announce_splits_ipv6_into_mp_reach_messages() {
    let c = ctx(true);
    let attrs = PathAttributes {
        next_hop: None,
        ..rich_attrs()
    };
    let nh: Vec<IpAddr> = vec!["2001:db8::1".parse().unwrap(), "fe80::1".parse().unwrap()];
    let mut prefixes = v6_64s(3000);
    prefixes.push(p("198.51.100.0/24")); // wrong family: skipped
    let mut out = Vec::new();
    let n = encode_announce(&attrs, Family::Ipv6Unicast, &nh, &prefixes, &c, &mut out);
    assert!(n >= 7, "{n}");
    let mut got = vec![];
    for u in decode_all(&out, &c) {
        assert!(u.nlri.is_empty());
        assert_eq!(u.attributes.as_deref(), Some(&attrs));
        let mp = u.mp_reach.unwrap();
        assert_eq!(mp.next_hops, nh);
        got.extend(mp.nlri);
    }
    prefixes.pop();
    assert_eq!(got, prefixes);
}

#[test]
fn withdraw_splits_both_families() {
    let c = ctx(true);
    let v4 = v4_hosts(2000);
    let mut out = Vec::new();
    let n = encode_withdraw(Family::Ipv4Unicast, &v4, &c, &mut out);
    assert_eq!(n, 3, "2000 x 5 octets in 4073-octet fields");
    let got: Vec<Prefix> = decode_all(&out, &c)
        .into_iter()
        .flat_map(|u| u.withdrawn)
        .collect();
    assert_eq!(got, v4);

    let v6 = v6_64s(1000);
    out.clear();
    let n = encode_withdraw(Family::Ipv6Unicast, &v6, &c, &mut out);
    assert_eq!(n, 3, "1000 x 9 octets in 4066-octet attributes");
    let got: Vec<Prefix> = decode_all(&out, &c)
        .into_iter()
        .flat_map(|u| u.mp_unreach.unwrap().withdrawn)
        .collect();
    assert_eq!(got, v6);
    out.clear();
    assert_eq!(encode_withdraw(Family::Ipv6Unicast, &[], &c, &mut out), 0);
    assert!(out.is_empty());
}

#[test]
fn oversized_messages_are_refused_not_truncated() {
    let c = ctx(true);
    let attrs = PathAttributes {
        communities: (0..1100).collect(), // 4400 octets of communities
        ..base_attrs(&[65001])
    };
    let mut out = vec![0xAA];
    assert_eq!(
        encode_announce(
            &attrs,
            Family::Ipv4Unicast,
            &[],
            &[p("198.51.100.0/24")],
            &c,
            &mut out
        ),
        0
    );
    assert_eq!(out, vec![0xAA]);
    let u = Update {
        attributes: Some(Arc::new(attrs)),
        nlri: vec![p("198.51.100.0/24")],
        ..Update::default()
    };
    assert!(matches!(
        try_encode(&Message::Update(u.clone()), Some(&c), &mut out),
        Err(EncodeError::TooLong { len }) if len > MAX_MESSAGE_LEN
    ));
    encode(&Message::Update(u), Some(&c), &mut out);
    assert_eq!(out, vec![0xAA]);
}
