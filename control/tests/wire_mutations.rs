//! Property test: random mutations of valid messages (captures and our own encodings) never make the
//! decoder panic, and whatever decodes re-encodes into something that decodes again, equal to the first
//! decode for clean messages (modulo what the encoder deliberately drops: non-transitive unknown
//! attributes). Deterministic PRNG, 100 000 mutated inputs, each decoded in four contexts.

use std::net::{IpAddr, Ipv4Addr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use braid_control::bgp::types::*;
use braid_control::bgp::wire::*;

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn load(name: &str) -> Vec<Vec<u8>> {
    let path = format!("{}/tests/captures/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            (0..l.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&l[i..i + 2], 16).unwrap())
                .collect()
        })
        .collect()
}

fn contexts() -> Vec<Option<Negotiated>> {
    let four = Negotiated::default_for_tests();
    let two = Negotiated {
        four_octet_asn: false,
        ..four.clone()
    };
    let v4 = Negotiated {
        families: vec![Family::Ipv4Unicast],
        ..four.clone()
    };
    vec![None, Some(four), Some(two), Some(v4)]
}

fn seeds() -> Vec<Vec<u8>> {
    let mut v = Vec::new();
    for f in ["bird.hex", "bird_2octet.hex", "frr.hex", "gobgp.hex"] {
        v.extend(load(f));
    }
    let p = |s: &str| -> Prefix { s.parse().unwrap() };
    let attrs = PathAttributes {
        origin: Origin::Incomplete,
        as_path: AsPath {
            segments: vec![
                AsSegment::Sequence(vec![65001, 4_200_000_001]),
                AsSegment::Set(vec![64512, 64513]),
            ],
        },
        next_hop: Some(Ipv4Addr::new(192, 0, 2, 1)),
        med: Some(1),
        local_pref: Some(100),
        atomic_aggregate: true,
        aggregator: Some((4_200_000_002, Ipv4Addr::new(192, 0, 2, 2))),
        communities: vec![1, 2, 3],
        ext_communities: vec![ExtCommunity::new_link_bandwidth(65001, 1e6)],
        unknown: vec![RawAttribute {
            flags: 0xe0,
            type_code: 32,
            value: vec![0; 12],
        }],
    };
    let update = Update {
        withdrawn: vec![p("203.0.113.0/24")],
        attributes: Some(Arc::new(attrs.clone())),
        nlri: vec![p("198.51.100.0/24"), p("198.51.100.128/25")],
        mp_reach: Some(MpReach {
            family: Family::Ipv6Unicast,
            next_hops: vec!["2001:db8::1".parse().unwrap(), "fe80::1".parse().unwrap()],
            nlri: vec![p("2001:db8:1::/48")],
        }),
        mp_unreach: Some(MpUnreach {
            family: Family::Ipv6Unicast,
            withdrawn: vec![p("2001:db8:2::/48")],
        }),
        errors: vec![],
    };
    for ctx in contexts().into_iter().skip(1).take(2) {
        let mut out = Vec::new();
        encode(&Message::Update(update.clone()), ctx.as_ref(), &mut out);
        v.push(out);
    }
    let ctx = Negotiated::default_for_tests();
    let nh: [IpAddr; 1] = ["2001:db8::1".parse().unwrap()];
    let mut out = Vec::new();
    encode_announce(
        &attrs,
        Family::Ipv6Unicast,
        &nh,
        &[p("2001:db8:5::/64")],
        &ctx,
        &mut out,
    );
    v.push(std::mem::take(&mut out));
    encode_withdraw(Family::Ipv4Unicast, &[p("198.51.100.0/24")], &ctx, &mut out);
    v.push(std::mem::take(&mut out));
    let open = Open {
        version: 4,
        asn: 4_200_000_001,
        hold_time: 90,
        bgp_id: Ipv4Addr::new(192, 0, 2, 1),
        capabilities: (200..230u8)
            .map(|code| Capability::Unknown {
                code,
                value: vec![code; 9],
            })
            .chain([Capability::FourOctetAsn(4_200_000_001)])
            .collect(),
    };
    for m in [
        Message::Open(open),
        Message::Notification(Notification::shutdown(2, "maintenance")),
        Message::RouteRefresh(Family::Ipv6Unicast),
    ] {
        encode(&m, Some(&ctx), &mut out);
        v.push(std::mem::take(&mut out));
    }
    v
}

fn mutate(rng: &mut Rng, buf: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(4) {
        let len = buf.len();
        if len == 0 {
            buf.push(0xFF);
            continue;
        }
        match rng.below(9) {
            0 => {
                let i = rng.below(len);
                buf[i] ^= 1 << rng.below(8);
            }
            1 | 2 => {
                // Bodies matter more than markers: bias towards the part after the header.
                let i = 16 + rng.below(len.saturating_sub(16));
                if i < len {
                    buf[i] = rng.next() as u8;
                }
            }
            3 => {
                let i = 19 + rng.below(len.saturating_sub(19));
                if i < len {
                    buf[i] = [0, 1, 2, 0x7f, 0x80, 0xff, 32, 33, 128, 129][rng.below(10)];
                }
            }
            4 => {
                let at = rng.below(len + 1);
                let n = 1 + rng.below(8);
                for _ in 0..n {
                    buf.insert(at.min(buf.len()), rng.next() as u8);
                }
            }
            5 => {
                if len > 19 {
                    let at = 19 + rng.below(len - 19);
                    let n = (1 + rng.below(8)).min(buf.len() - at);
                    buf.drain(at..at + n);
                }
            }
            6 => buf.truncate(rng.below(len + 1)),
            7 => {
                // Duplicate a slice (repeats attributes and prefixes).
                if len > 20 {
                    let a = 19 + rng.below(len - 19);
                    let b = (a + 1 + rng.below(16)).min(len);
                    let s = buf[a..b].to_vec();
                    let at = 19 + rng.below(len - 19);
                    buf.splice(at..at, s);
                }
            }
            _ => {
                // Change a 2-octet length-like field by a small amount.
                if len > 22 {
                    let i = 19 + rng.below(len - 20);
                    let v = u16::from_be_bytes([buf[i], buf[i + 1]]);
                    let d = [1u16, 2, 3, 0xffff, 0xfffe, 0xfffd][rng.below(6)];
                    buf[i..i + 2].copy_from_slice(&v.wrapping_add(d).to_be_bytes());
                }
            }
        }
    }
    // Most of the time keep the header length honest so the mutation reaches the body.
    if rng.below(4) != 0 && (19..=MAX_MESSAGE_LEN).contains(&buf.len()) {
        let l = (buf.len() as u16).to_be_bytes();
        buf[16] = l[0];
        buf[17] = l[1];
    }
}

/// What the encoder sends back for a decoded message: non-transitive unknown attributes are dropped.
fn as_resent(m: &Message) -> Message {
    let mut m = m.clone();
    if let Message::Update(u) = &mut m {
        if let Some(a) = &mut u.attributes {
            Arc::make_mut(a)
                .unknown
                .retain(|r| r.flags & attr_flags::TRANSITIVE != 0);
        }
    }
    m
}

/// Checks one input in one context; returns what happened for the statistics.
fn check(buf: &[u8], ctx: Option<&Negotiated>) -> (bool, bool) {
    let Ok(msg) = decode(buf, ctx) else {
        return (false, false);
    };
    assert_eq!(frame_len(buf), Ok(Some(buf.len())));
    let clean = !matches!(&msg, Message::Update(u) if !u.errors.is_empty());
    let mut out = Vec::new();
    if try_encode(&msg, ctx, &mut out).is_err() {
        return (true, clean); // grew past 4096 octets (e.g. AS4_PATH added for a 2-octet peer)
    }
    let again =
        decode(&out, ctx).unwrap_or_else(|e| panic!("re-encoded message does not decode: {e}"));
    if clean {
        assert_eq!(
            again,
            as_resent(&msg),
            "re-encoded message decodes differently"
        );
    }
    (true, clean)
}

#[test]
fn mutated_messages_never_panic_and_round_trip() {
    let seeds = seeds();
    let ctxs = contexts();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let (mut decoded, mut clean, mut updates_with_errors) = (0usize, 0usize, 0usize);
    const ITERATIONS: usize = 100_000;
    for i in 0..ITERATIONS {
        let mut buf = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut buf);
        for ctx in &ctxs {
            let r = catch_unwind(AssertUnwindSafe(|| check(&buf, ctx.as_ref())));
            match r {
                Ok((ok, c)) => {
                    decoded += usize::from(ok);
                    clean += usize::from(ok && c);
                    updates_with_errors += usize::from(ok && !c);
                }
                Err(_) => panic!(
                    "iteration {i}, ctx {:?}: input {}",
                    ctx.as_ref().map(|c| (c.four_octet_asn, c.families.len())),
                    buf.iter().map(|b| format!("{b:02x}")).collect::<String>()
                ),
            }
        }
    }
    // The mutations must exercise all outcomes, or this test proves little.
    eprintln!("{decoded} decoded ({clean} clean, {updates_with_errors} UPDATEs with RFC 7606 actions) of {}", ITERATIONS * ctxs.len());
    assert!(decoded > ITERATIONS / 2, "{decoded}");
    assert!(
        updates_with_errors > ITERATIONS / 50,
        "{updates_with_errors}"
    );
    assert!(clean > ITERATIONS / 4, "{clean}");
}
