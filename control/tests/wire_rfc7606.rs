//! RFC 7606 (revised UPDATE error handling) as a table: each malformed UPDATE, the outcome the RFC asks for,
//! and the section that asks for it. Outcomes: decoded clean; decoded with an attribute discard of type X;
//! decoded with treat-as-withdraw because of type X; or an error carrying the NOTIFICATION (session reset).

use std::net::Ipv4Addr;

use braid_control::bgp::types::*;
use braid_control::bgp::wire::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// Decodes, no RFC 7606 action.
    Clean,
    /// Decodes; only attribute discards, one of them for this type.
    Discard(u8),
    /// Decodes; treat-as-withdraw, because of this type.
    Withdraw(u8),
    /// NOTIFICATION (code, subcode): session reset.
    Reset(u8, u8),
}
use Want::*;

/// How the test session was negotiated.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// 4-octet ASNs, IPv4 + IPv6 unicast.
    Four,
    /// 2-octet ASNs (the peer did not send the capability), IPv4 + IPv6.
    Two,
    /// 4-octet ASNs, IPv4 unicast only.
    V4Only,
}

struct Case {
    name: &'static str,
    rfc: &'static str,
    ctx: Ctx,
    withdrawn: &'static str,
    attrs: String,
    nlri: &'static str,
    want: Want,
    check: Option<fn(&Update)>,
}

const ORIGIN: &str = "40 01 01 00";
const AS_PATH: &str = "40 02 06 02 01 0000fde9";
const AS_PATH_2: &str = "40 02 04 02 01 fde9";
const NEXT_HOP: &str = "40 03 04 c0000201";
const NLRI: &str = "18 c63364";
const WITHDRAWN: &str = "18 cb0071";
/// MP_REACH_NLRI, IPv6 unicast, next hop 2001:db8::1, 2001:db8:1::/48.
const MP_REACH: &str = "80 0e 1c 0002 01 10 20010db8000000000000000000000001 00 30 20010db80001";
/// MP_UNREACH_NLRI, IPv6 unicast, 2001:db8:9::/48.
const MP_UNREACH: &str = "80 0f 0a 0002 01 30 20010db80009";

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn base() -> String {
    format!("{ORIGIN} {AS_PATH} {NEXT_HOP}")
}

fn with(extra: &str) -> String {
    format!("{} {extra}", base())
}

fn case(name: &'static str, rfc: &'static str, attrs: String, want: Want) -> Case {
    Case {
        name,
        rfc,
        ctx: Ctx::Four,
        withdrawn: "",
        attrs,
        nlri: NLRI,
        want,
        check: None,
    }
}

impl Case {
    fn ctx(mut self, c: Ctx) -> Case {
        self.ctx = c;
        self
    }
    fn nlri(mut self, n: &'static str) -> Case {
        self.nlri = n;
        self
    }
    fn withdrawn(mut self, w: &'static str) -> Case {
        self.withdrawn = w;
        self
    }
    fn check(mut self, f: fn(&Update)) -> Case {
        self.check = Some(f);
        self
    }

    fn message(&self) -> Vec<u8> {
        let (w, a, n) = (hex(self.withdrawn), hex(&self.attrs), hex(self.nlri));
        let mut body = (w.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(&w);
        body.extend_from_slice(&(a.len() as u16).to_be_bytes());
        body.extend_from_slice(&a);
        body.extend_from_slice(&n);
        raw(&body)
    }
}

/// An UPDATE around a hand-made body (lengths not fixed up).
fn raw(body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xFF; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(2);
    m.extend_from_slice(body);
    m
}

fn negotiated(c: Ctx) -> Negotiated {
    let mut n = Negotiated::default_for_tests();
    match c {
        Ctx::Four => {}
        Ctx::Two => n.four_octet_asn = false,
        Ctx::V4Only => n.families = vec![Family::Ipv4Unicast],
    }
    n
}

fn table() -> Vec<Case> {
    vec![
        case("well-formed UPDATE", "RFC 4271 4.3", base(), Clean),
        // ORIGIN (7.1).
        case(
            "ORIGIN length 2",
            "7606 7.1",
            format!("40 01 02 0000 {AS_PATH} {NEXT_HOP}"),
            Withdraw(1),
        ),
        case(
            "ORIGIN value 3",
            "7606 7.1",
            format!("40 01 01 03 {AS_PATH} {NEXT_HOP}"),
            Withdraw(1),
        ),
        case(
            "ORIGIN flagged optional",
            "7606 3.c",
            format!("c0 01 01 00 {AS_PATH} {NEXT_HOP}"),
            Withdraw(1),
        ),
        case(
            "ORIGIN flagged non-transitive",
            "7606 3.c",
            format!("00 01 01 00 {AS_PATH} {NEXT_HOP}"),
            Withdraw(1),
        ),
        // AS_PATH (7.2).
        case(
            "AS_PATH segment type 5",
            "7606 7.2",
            format!("{ORIGIN} 40 02 06 05 01 0000fde9 {NEXT_HOP}"),
            Withdraw(2),
        ),
        case(
            "AS_PATH zero-length segment",
            "7606 7.2",
            format!("{ORIGIN} 40 02 02 02 00 {NEXT_HOP}"),
            Withdraw(2),
        ),
        case(
            "AS_PATH segment overruns the attribute",
            "7606 7.2",
            format!("{ORIGIN} 40 02 06 02 02 0000fde9 {NEXT_HOP}"),
            Withdraw(2),
        ),
        case(
            "AS_PATH lone octet after the last segment",
            "7606 7.2",
            format!("{ORIGIN} 40 02 07 02 01 0000fde9 02 {NEXT_HOP}"),
            Withdraw(2),
        ),
        case(
            "AS_PATH confederation segment",
            "7606 7.2, RFC 5065 5",
            format!("{ORIGIN} 40 02 06 03 01 0000fde9 {NEXT_HOP}"),
            Withdraw(2),
        ),
        case(
            "AS_PATH contains AS 0",
            "RFC 7607 2",
            format!("{ORIGIN} 40 02 06 02 01 00000000 {NEXT_HOP}"),
            Withdraw(2),
        ),
        case(
            "AS_PATH flagged optional",
            "7606 3.c",
            format!("{ORIGIN} c0 02 06 02 01 0000fde9 {NEXT_HOP}"),
            Withdraw(2),
        ),
        case(
            "AS_PATH 2-octet ASNs on a 4-octet session",
            "7606 7.2",
            format!("{ORIGIN} {AS_PATH_2} {NEXT_HOP}"),
            Withdraw(2),
        ),
        case(
            "empty AS_PATH (iBGP style)",
            "RFC 4271 5.1.2",
            format!("{ORIGIN} 40 02 00 {NEXT_HOP}"),
            Clean,
        ),
        // NEXT_HOP (7.3).
        case(
            "NEXT_HOP length 5",
            "7606 7.3",
            format!("{ORIGIN} {AS_PATH} 40 03 05 c000020100"),
            Withdraw(3),
        ),
        case(
            "NEXT_HOP 0.0.0.0",
            "7606 7.3, RFC 4271 6.3",
            format!("{ORIGIN} {AS_PATH} 40 03 04 00000000"),
            Withdraw(3),
        ),
        case(
            "NEXT_HOP multicast",
            "7606 7.3, RFC 4271 6.3",
            format!("{ORIGIN} {AS_PATH} 40 03 04 e0000005"),
            Withdraw(3),
        ),
        case(
            "NEXT_HOP flagged optional",
            "7606 3.c",
            format!("{ORIGIN} {AS_PATH} c0 03 04 c0000201"),
            Withdraw(3),
        ),
        // MULTI_EXIT_DISC, LOCAL_PREF (7.4, 7.5).
        case(
            "MED length 3",
            "7606 7.4",
            with("80 04 03 000001"),
            Withdraw(4),
        ),
        case(
            "MED flagged transitive",
            "7606 3.c",
            with("c0 04 04 00000001"),
            Withdraw(4),
        ),
        case(
            "LOCAL_PREF length 2",
            "7606 7.5",
            with("40 05 02 0064"),
            Withdraw(5),
        ),
        case(
            "LOCAL_PREF flagged optional",
            "7606 3.c",
            with("c0 05 04 00000064"),
            Withdraw(5),
        ),
        // ATOMIC_AGGREGATE, AGGREGATOR (7.6, 7.7): attribute discard.
        case(
            "ATOMIC_AGGREGATE length 1",
            "7606 7.6",
            with("40 06 01 00"),
            Discard(6),
        ),
        case(
            "ATOMIC_AGGREGATE flagged optional",
            "7606 3.c + 7.6",
            with("c0 06 00"),
            Discard(6),
        ),
        case(
            "AGGREGATOR length 6 on a 4-octet session",
            "7606 7.7",
            with("c0 07 06 fde9 c0000201"),
            Discard(7),
        ),
        case(
            "AGGREGATOR length 8 on a 2-octet session",
            "7606 7.7",
            format!("{ORIGIN} {AS_PATH_2} {NEXT_HOP} c0 07 08 0000fde9 c0000201"),
            Discard(7),
        )
        .ctx(Ctx::Two),
        case(
            "AGGREGATOR flagged non-transitive",
            "7606 3.c + 7.7",
            with("80 07 08 0000fde9 c0000201"),
            Discard(7),
        ),
        case(
            "AGGREGATOR with AS 0",
            "RFC 7607 2",
            with("c0 07 08 00000000 c0000201"),
            Discard(7),
        ),
        // COMMUNITIES, EXTENDED_COMMUNITIES (7.8, 7.14).
        case(
            "COMMUNITIES length 5",
            "7606 7.8",
            with("c0 08 05 fde9000101"),
            Withdraw(8),
        ),
        case(
            "COMMUNITIES length 0",
            "7606 7.8",
            with("c0 08 00"),
            Withdraw(8),
        ),
        case(
            "COMMUNITIES flagged well-known",
            "7606 3.c",
            with("40 08 04 fde90001"),
            Withdraw(8),
        ),
        case(
            "EXTENDED_COMMUNITIES length 12",
            "7606 7.14",
            with("c0 10 0c 0002fde900000007 00000000"),
            Withdraw(16),
        ),
        case(
            "EXTENDED_COMMUNITIES length 0",
            "7606 7.14",
            with("c0 10 00"),
            Withdraw(16),
        ),
        // Attributes braid keeps opaque but validates.
        case(
            "ORIGINATOR_ID length 5",
            "7606 7.9",
            with("80 09 05 c000020100"),
            Withdraw(9),
        ),
        case(
            "CLUSTER_LIST length 6",
            "7606 7.10",
            with("80 0a 06 c00002010000"),
            Withdraw(10),
        ),
        case(
            "LARGE_COMMUNITY length 10",
            "RFC 8092 error handling",
            with("c0 20 0a 0000fde9000000010000"),
            Withdraw(32),
        ),
        case(
            "OTC length 2",
            "RFC 9234 OTC attribute",
            with("c0 23 02 fde9"),
            Withdraw(35),
        ),
        // AS4_PATH, AS4_AGGREGATOR (RFC 6793).
        case(
            "AS4_PATH from a 4-octet speaker",
            "RFC 6793 3",
            with("c0 11 06 02 01 fa56ea01"),
            Discard(17),
        ),
        case(
            "AS4_AGGREGATOR from a 4-octet speaker",
            "RFC 6793 3",
            with("c0 12 08 fa56ea01 c0000201"),
            Discard(18),
        ),
        case(
            "AS4_PATH bad segment type on a 2-octet session",
            "RFC 6793 6, 7606 7",
            format!("{ORIGIN} {AS_PATH_2} {NEXT_HOP} c0 11 06 07 01 fa56ea01"),
            Discard(17),
        )
        .ctx(Ctx::Two),
        case(
            "AS4_AGGREGATOR length 6 on a 2-octet session",
            "RFC 6793 6, 7606 7",
            format!("{ORIGIN} {AS_PATH_2} {NEXT_HOP} c0 12 06 fde9 c0000201"),
            Discard(18),
        )
        .ctx(Ctx::Two),
        // Duplicates (3.g).
        case(
            "ORIGIN twice: the first is kept",
            "7606 3.g",
            with("40 01 01 02"),
            Discard(1),
        )
        .check(|u| assert_eq!(u.attributes.as_ref().unwrap().origin, Origin::Igp)),
        case(
            "unknown optional attribute twice",
            "7606 3.g",
            with("c0 63 01 01 c0 63 01 02"),
            Discard(99),
        )
        .check(|u| assert_eq!(u.attributes.as_ref().unwrap().unknown[0].value, vec![1])),
        case(
            "MP_REACH_NLRI twice",
            "7606 3.g",
            format!("{MP_REACH} {MP_REACH} {ORIGIN} {AS_PATH}"),
            Reset(3, 1),
        )
        .nlri(""),
        case(
            "MP_UNREACH_NLRI twice",
            "7606 3.g",
            format!("{MP_UNREACH} {MP_UNREACH}"),
            Reset(3, 1),
        )
        .nlri(""),
        // Missing well-known mandatory attributes (3.d).
        case(
            "ORIGIN missing with NLRI",
            "7606 3.d",
            format!("{AS_PATH} {NEXT_HOP}"),
            Withdraw(1),
        ),
        case(
            "AS_PATH missing with NLRI",
            "7606 3.d",
            format!("{ORIGIN} {NEXT_HOP}"),
            Withdraw(2),
        ),
        case(
            "NEXT_HOP missing with IPv4 NLRI",
            "7606 3.d",
            format!("{ORIGIN} {AS_PATH}"),
            Withdraw(3),
        ),
        case(
            "no path attributes at all with NLRI",
            "7606 3.d",
            String::new(),
            Withdraw(1),
        ),
        case(
            "AS_PATH missing with MP_REACH NLRI",
            "7606 3.d, RFC 4760 3",
            format!("{MP_REACH} {ORIGIN}"),
            Withdraw(2),
        )
        .nlri(""),
        case(
            "no NEXT_HOP with MP_REACH NLRI only",
            "RFC 4760 3",
            format!("{MP_REACH} {ORIGIN} {AS_PATH}"),
            Clean,
        )
        .nlri(""),
        case(
            "withdrawals only, no attributes",
            "7606 3.d (NLRI only)",
            String::new(),
            Clean,
        )
        .withdrawn(WITHDRAWN)
        .nlri(""),
        case(
            "withdrawals with only a MED",
            "7606 3.d (NLRI only)",
            "80 04 04 00000001".into(),
            Clean,
        )
        .withdrawn(WITHDRAWN)
        .nlri(""),
        // NLRI and withdrawn routes that cannot be parsed (5.3, 3.i): session reset.
        case("NLRI prefix length 33", "7606 5.3", base(), Reset(3, 10)).nlri("21 c6336400 00"),
        case(
            "NLRI prefix overruns the message",
            "7606 5.3",
            base(),
            Reset(3, 10),
        )
        .nlri("18 c633"),
        case(
            "withdrawn prefix length 33",
            "7606 3.i, 5.3",
            base(),
            Reset(3, 10),
        )
        .withdrawn("21 cb00710000"),
        case(
            "withdrawn prefix overruns its field",
            "7606 3.i, 5.3",
            base(),
            Reset(3, 10),
        )
        .withdrawn("18 cb00"),
        case(
            "host bits set after the prefix length: masked",
            "RFC 4271 4.3",
            base(),
            Clean,
        )
        .nlri("17 c63365")
        .check(|u| assert_eq!(u.nlri, vec!["198.51.100.0/23".parse().unwrap()])),
        // The attribute field itself (section 4).
        case(
            "attribute overruns the path attributes",
            "7606 4",
            with("c0 08 08 fde90001"),
            Withdraw(8),
        ),
        case(
            "two octets left after the last attribute",
            "7606 4",
            with("40 01"),
            Withdraw(1),
        ),
        case(
            "extended-length bit on a short attribute",
            "RFC 4271 4.3",
            format!("50 01 0001 00 {AS_PATH} {NEXT_HOP}"),
            Clean,
        ),
        // Unrecognized attributes (RFC 4271 5, 6.3, 9).
        case(
            "unrecognized well-known attribute",
            "RFC 4271 6.3",
            with("40 63 01 00"),
            Reset(3, 2),
        ),
        case(
            "unknown optional transitive attribute: kept, Partial set",
            "RFC 4271 9",
            with("c0 63 02 abcd"),
            Clean,
        )
        .check(|u| {
            let a = &u.attributes.as_ref().unwrap().unknown[0];
            assert_eq!(
                (a.flags, a.type_code, a.value.clone()),
                (0xe0, 99, vec![0xab, 0xcd])
            );
        }),
        case(
            "unknown optional non-transitive attribute: kept",
            "RFC 4271 9",
            with("80 63 02 abcd"),
            Clean,
        )
        .check(|u| assert_eq!(u.attributes.as_ref().unwrap().unknown[0].flags, 0x80)),
        // MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760, 7606 7.11, 7.12): reset when malformed.
        case(
            "MP_REACH_NLRI of 3 octets",
            "7606 7.11",
            format!("{ORIGIN} {AS_PATH} 80 0e 03 000201"),
            Reset(3, 9),
        )
        .nlri(""),
        case(
            "MP_REACH_NLRI IPv6 next hop length 8",
            "7606 7.11",
            format!("{ORIGIN} {AS_PATH} 80 0e 0d 0002 01 08 20010db800000000 00 00"),
            Reset(3, 9),
        )
        .nlri(""),
        case(
            "MP_REACH_NLRI next hop overruns the attribute",
            "7606 7.11",
            format!("{ORIGIN} {AS_PATH} 80 0e 06 0002 01 10 2001"),
            Reset(3, 9),
        )
        .nlri(""),
        case(
            "MP_REACH_NLRI prefix length 129",
            "7606 7.11, 5.3",
            format!(
                "{ORIGIN} {AS_PATH} 80 0e 16 0002 01 10 20010db8000000000000000000000001 00 81"
            ),
            Reset(3, 9),
        )
        .nlri(""),
        case(
            "MP_REACH_NLRI flagged transitive",
            "7606 3.c + 7.11",
            format!("c0 0e 1c {} {ORIGIN} {AS_PATH}", &MP_REACH[9..]),
            Reset(3, 4),
        )
        .nlri(""),
        case(
            "MP_REACH_NLRI overruns the path attributes",
            "7606 4 + 7.11",
            format!("{ORIGIN} {AS_PATH} 80 0e 30 0002 01 10"),
            Reset(3, 5),
        )
        .nlri(""),
        case(
            "MP_REACH_NLRI next hop ::",
            "RFC 4271 6.3, 7606 7.11",
            format!(
                "80 0e 1c 0002 01 10 {} 00 30 20010db80001 {ORIGIN} {AS_PATH}",
                "00".repeat(16)
            ),
            Withdraw(14),
        )
        .nlri(""),
        case(
            "MP_REACH_NLRI for a family not negotiated",
            "RFC 4760 7",
            format!("{MP_REACH} {}", base()),
            Discard(14),
        )
        .ctx(Ctx::V4Only),
        case(
            "MP_REACH_NLRI for an unknown AFI/SAFI",
            "RFC 4760 7",
            format!("80 0e 0b 0001 80 04 c0000201 00 08 0a {ORIGIN} {AS_PATH} {NEXT_HOP}"),
            Discard(14),
        ),
        case(
            "MP_REACH_NLRI IPv4 unicast (AFI 1)",
            "RFC 4760 3",
            format!("80 0e 0d 0001 01 04 c0000201 00 18 c63364 {ORIGIN} {AS_PATH}"),
            Clean,
        )
        .nlri("")
        .check(|u| assert_eq!(u.mp_reach.as_ref().unwrap().family, Family::Ipv4Unicast)),
        case(
            "MP_UNREACH_NLRI of 2 octets",
            "7606 7.12",
            "80 0f 02 0002".into(),
            Reset(3, 9),
        )
        .nlri(""),
        case(
            "MP_UNREACH_NLRI prefix overruns",
            "7606 7.12, 5.3",
            "80 0f 05 0002 01 30 20".into(),
            Reset(3, 9),
        )
        .nlri(""),
        case(
            "MP_UNREACH_NLRI for a family not negotiated",
            "RFC 4760 7",
            MP_UNREACH.into(),
            Discard(15),
        )
        .nlri("")
        .ctx(Ctx::V4Only),
        // No reachable NLRI (5.2) and several errors (3.h).
        case(
            "malformed ORIGIN with withdrawals only",
            "7606 5.2",
            "40 01 02 0000".into(),
            Reset(3, 5),
        )
        .withdrawn(WITHDRAWN)
        .nlri(""),
        case(
            "malformed AS_PATH with MP_UNREACH and another attribute",
            "7606 5.2",
            format!("{MP_UNREACH} {ORIGIN} 40 02 02 02 00"),
            Reset(3, 11),
        )
        .nlri(""),
        case(
            "malformed ATOMIC_AGGREGATE with withdrawals only: discard is enough",
            "7606 5.2",
            "40 06 01 00".into(),
            Discard(6),
        )
        .withdrawn(WITHDRAWN)
        .nlri(""),
        case(
            "discard and treat-as-withdraw together",
            "7606 3.h",
            with("40 06 01 00 c0 08 05 fde9000101"),
            Withdraw(8),
        )
        .check(|u| assert_eq!(u.errors.len(), 2)),
        case(
            "treat-as-withdraw and a reset together",
            "7606 3.h",
            format!("40 01 02 0000 {AS_PATH} {NEXT_HOP} {MP_REACH} {MP_REACH}"),
            Reset(3, 1),
        ),
    ]
}

#[test]
fn rfc7606_table() {
    let cases = table();
    assert!(cases.len() >= 20);
    let mut failures = Vec::new();
    for c in &cases {
        let got = decode(&c.message(), Some(&negotiated(c.ctx)));
        let outcome = match &got {
            Err(e) => {
                assert!(!e.ignorable);
                Reset(e.notification.code, e.notification.subcode)
            }
            Ok(Message::Update(u)) if u.errors.is_empty() => Clean,
            Ok(Message::Update(u)) => {
                let wanted_type = match c.want {
                    Discard(t) | Withdraw(t) => t,
                    _ => 0,
                };
                let has = |withdraw: bool| {
                    u.errors.iter().any(|e| match e {
                        Rfc7606Action::TreatAsWithdraw { type_code, .. } => {
                            withdraw && *type_code == wanted_type
                        }
                        Rfc7606Action::AttributeDiscard { type_code, .. } => {
                            !withdraw && *type_code == wanted_type
                        }
                    })
                };
                if u.treat_as_withdraw() {
                    if has(true) {
                        Withdraw(wanted_type)
                    } else {
                        Withdraw(0)
                    }
                } else if has(false) {
                    Discard(wanted_type)
                } else {
                    Discard(0)
                }
            }
            Ok(m) => panic!("{}: not an UPDATE: {m:?}", c.name),
        };
        if outcome != c.want {
            failures.push(format!(
                "{} ({}): want {:?}, got {:?}: {:?}",
                c.name, c.rfc, c.want, outcome, got
            ));
            continue;
        }
        if let (Some(check), Ok(Message::Update(u))) = (c.check, &got) {
            check(u);
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// The NOTIFICATION data RFC 4271 6.3 asks for: the attribute itself for Unrecognized Well-known, Attribute
/// Length and Attribute Flags errors; nothing for Malformed Attribute List and Invalid Network Field.
#[test]
fn reset_notifications_carry_the_rfc_4271_data() {
    let c = negotiated(Ctx::Four);
    let e = |m: Vec<u8>| decode(&m, Some(&c)).unwrap_err().notification;
    let n = e(case("", "", with("40 63 01 07"), Clean).message());
    assert_eq!(n.data, hex("40 63 01 07"));
    let n = e(case("", "", "40 01 02 0000".into(), Clean)
        .withdrawn(WITHDRAWN)
        .nlri("")
        .message());
    assert_eq!(
        (n.subcode, n.data),
        (subcode::ATTRIBUTE_LENGTH_ERROR, hex("40 01 02 0000"))
    );
    let n = e(case("", "", format!("c0 0e 1c {}", &MP_REACH[9..]), Clean)
        .nlri("")
        .message());
    assert_eq!(
        (n.subcode, n.data[..3].to_vec()),
        (subcode::ATTRIBUTE_FLAGS_ERROR, hex("c0 0e 1c"))
    );
    let n = e(case("", "", base(), Clean).nlri("21 c6336400 00").message());
    assert!(n.data.is_empty());
}

/// Lengths that cannot be parsed reset with Malformed Attribute List (RFC 7606 3.b / RFC 4271 6.3).
#[test]
fn inconsistent_update_lengths_reset() {
    let c = negotiated(Ctx::Four);
    let code = |body: &str| {
        let n = decode(&raw(&hex(body)), Some(&c)).unwrap_err().notification;
        (n.code, n.subcode)
    };
    // Withdrawn routes length 8 with 4 octets left.
    assert_eq!(code("0008 18cb0071"), (3, 1));
    // Withdrawn routes length leaving no room for the total path attribute length.
    assert_eq!(code("0004 18cb0071"), (3, 1));
    // Total path attribute length 30 with 8 octets left.
    assert_eq!(code("0000 001e 40010100 18c63364"), (3, 1));
    // The same attribute list with correct lengths decodes (NLRI lacks mandatory attributes: withdraw).
    let Ok(Message::Update(u)) = decode(&raw(&hex("0000 0004 40010100 18c63364")), Some(&c)) else {
        panic!("consistent lengths must decode")
    };
    assert!(u.treat_as_withdraw());
    assert_eq!(u.nlri, vec!["198.51.100.0/24".parse().unwrap()]);
}

/// Treat-as-withdraw keeps the NLRI and the withdrawals, so the RIB knows what to remove.
#[test]
fn treat_as_withdraw_keeps_every_prefix() {
    let c = negotiated(Ctx::Four);
    let m = case(
        "",
        "",
        format!("{MP_REACH} {MP_UNREACH} 40 01 01 09 {AS_PATH} {NEXT_HOP}"),
        Clean,
    )
    .withdrawn(WITHDRAWN)
    .message();
    let Ok(Message::Update(u)) = decode(&m, Some(&c)) else {
        panic!()
    };
    assert!(u.treat_as_withdraw());
    assert_eq!(u.nlri, vec!["198.51.100.0/24".parse().unwrap()]);
    assert_eq!(u.withdrawn, vec!["203.0.113.0/24".parse().unwrap()]);
    assert_eq!(
        u.mp_reach.unwrap().nlri,
        vec!["2001:db8:1::/48".parse().unwrap()]
    );
    assert_eq!(
        u.mp_unreach.unwrap().withdrawn,
        vec!["2001:db8:9::/48".parse().unwrap()]
    );
    assert_eq!(
        u.attributes.unwrap().next_hop,
        Some(Ipv4Addr::new(192, 0, 2, 1))
    );
}
