//! braid's BGP speaker against real BIRD 2, FRR bgpd and GoBGP, each in its own network namespace.
//!
//! For each peer: the sessions (IPv4 and IPv6 transport) establish; routes flow both ways in both families; the
//! peer sees braid's prepend; a withdrawal at the peer disappears at braid; the hold time is negotiated down to the
//! peer's; a frozen peer's routes are dropped at hold expiry; max-prefix is enforced; 4-octet ASNs work.

mod common;

use std::time::Duration;

use common::bgp::*;
use common::netns_ready;

fn tools(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Bird => &["ip", "bird", "birdc"],
        Kind::Frr => &["ip", "vtysh", "/usr/lib/frr/bgpd"],
        Kind::Gobgp => &["ip", "gobgpd", "gobgp"],
    }
}

fn ready(test: &str, kind: Kind) -> bool {
    let t: Vec<&str> = tools(kind)
        .iter()
        .copied()
        .filter(|t| !t.starts_with('/'))
        .collect();
    if !netns_ready(test, &t) {
        return false;
    }
    if kind == Kind::Frr && !std::path::Path::new("/usr/lib/frr/bgpd").exists() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and FRR (/usr/lib/frr/bgpd) is missing");
        }
        eprintln!("\n!!!!! SKIPPING {test}: FRR is not installed (apt-get install frr) !!!!!\n");
        return false;
    }
    true
}

fn established(lab: &BgpLab, addr: &str) -> bool {
    lab.neighbor(addr)["state"] == "Established"
}

/// The full interop scenario against one peer.
fn interop(kind: Kind, braid_asn: u32, peer_asn: u32) {
    let lab = BgpLab::start(
        BraidSpec {
            asn: braid_asn,
            peer_asn,
            hold: 90,
            prepend: 2,
            max_prefix: None,
            bfd: None,
        },
        PeerSpec {
            kind,
            asn: peer_asn,
            braid_asn,
            hold: 9,
            routes4: vec![PEER_NET4.into(), PEER_NET4_EXTRA.into()],
            routes6: vec![PEER_NET6.into()],
            link: LINK_B,
        },
    );
    let mut lab = lab;
    lab.wait("both sessions Established", Duration::from_secs(30), |l| {
        established(l, PEER4) && established(l, PEER6)
    });
    // Hold time negotiated down to the peer's 9 s.
    assert_eq!(
        lab.neighbor(PEER4)["hold_time"],
        9,
        "{}",
        lab.neighbor(PEER4)
    );

    // Peer -> braid, both families, with the peer's AS as the path.
    lab.wait(
        "peer's routes in braid's Loc-RIB",
        Duration::from_secs(15),
        |l| {
            l.route(PEER_NET4).is_some()
                && l.route(PEER_NET4_EXTRA).is_some()
                && l.route(PEER_NET6).is_some()
        },
    );
    let r = lab.route(PEER_NET4).unwrap();
    assert_eq!(r["source"], "bgp");
    assert_eq!(r["as_path"], peer_asn.to_string(), "{r}");
    assert_eq!(r["next_hops"][0]["address"], PEER4, "{r}");
    let r6 = lab.route(PEER_NET6).unwrap();
    assert_eq!(
        r6["next_hops"][0]["address"]
            .as_str()
            .map(|s| s.starts_with("2001:db8:1::2") || s.starts_with("fe80")),
        Some(true),
        "{r6}"
    );
    let n = lab.neighbor(PEER4);
    assert!(n["accepted"].as_u64().unwrap() >= 2, "{n}");

    // braid -> peer, both families, with braid's ASN prepended twice more (3 copies).
    lab.wait(
        "braid's routes at the peer, prepended",
        Duration::from_secs(15),
        |l| {
            let v4 = l.peer.learned("ipv4");
            let v6 = l.peer.learned("ipv6");
            v4.iter()
                .any(|r| r.prefix == BRAID_NET4 && r.as_path == vec![braid_asn; 3])
                && v6
                    .iter()
                    .any(|r| r.prefix == BRAID_NET6 && r.as_path == vec![braid_asn; 3])
        },
    );
    assert!(lab.neighbor(PEER4)["advertised"].as_u64().unwrap() >= 1);

    // `braid bgp refresh`: the peer re-sends its routes (ROUTE-REFRESH, RFC 2918), so `received` grows.
    let before = lab.neighbor(PEER4)["received"].as_u64().unwrap();
    let out = std::process::Command::new(common::binary())
        .args([
            "bgp",
            "refresh",
            PEER4,
            "-s",
            lab.dir.join("braid.sock").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.wait(
        "routes re-sent after ROUTE-REFRESH",
        Duration::from_secs(10),
        |l| l.neighbor(PEER4)["received"].as_u64().unwrap_or(0) >= before + 2,
    );
    assert!(lab.route(PEER_NET4).is_some());

    // A withdrawal at the peer disappears at braid; the other route stays.
    lab.peer.withdraw(PEER_NET4_EXTRA);
    lab.wait(
        "withdrawn route gone from braid",
        Duration::from_secs(15),
        |l| l.route(PEER_NET4_EXTRA).is_none(),
    );
    assert!(lab.route(PEER_NET4).is_some());
    lab.peer.withdraw(PEER_NET6);
    lab.wait(
        "withdrawn IPv6 route gone from braid",
        Duration::from_secs(15),
        |l| l.route(PEER_NET6).is_none(),
    );

    // Freeze the peer: no KEEPALIVEs, TCP stays open. braid must drop its routes at hold expiry (9 s).
    lab.peer.freeze();
    let took = lab.wait(
        "routes dropped at hold expiry",
        Duration::from_secs(20),
        |l| l.route(PEER_NET4).is_none(),
    );
    assert!(
        took >= Duration::from_secs(4),
        "routes vanished before the hold timer could expire ({took:?})"
    );
    let n = lab.neighbor(PEER4);
    assert_ne!(n["state"], "Established", "{n}");
    assert!(
        n["last_error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("hold"),
        "{n}"
    );
}

fn max_prefix(kind: Kind) {
    let lab = BgpLab::start(
        BraidSpec {
            asn: 65001,
            peer_asn: 65002,
            hold: 90,
            prepend: 0,
            max_prefix: Some(1),
            bfd: None,
        },
        PeerSpec {
            kind,
            asn: 65002,
            braid_asn: 65001,
            hold: 90,
            routes4: vec![PEER_NET4.into(), PEER_NET4_EXTRA.into()],
            routes6: vec![],
            link: LINK_B,
        },
    );
    lab.wait(
        "max_prefix enforced (Cease sent)",
        Duration::from_secs(30),
        |l| {
            l.neighbor(PEER4)["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("sent Cease/Maximum Number of Prefixes Reached")
        },
    );
    let n = lab.neighbor(PEER4);
    assert_ne!(n["state"], "Established", "{n}");
    assert!(
        lab.route(PEER_NET4).is_none() && lab.route(PEER_NET4_EXTRA).is_none(),
        "routes kept after max-prefix"
    );
}

/// SIGTERM on braid: Cease/Administrative Shutdown with its RFC 8203 message reaches the peer, which drops
/// braid's routes at once (long before its 90 s hold timer).
fn graceful_shutdown(kind: Kind) {
    let mut lab = BgpLab::start(
        BraidSpec {
            asn: 65001,
            peer_asn: 65002,
            hold: 90,
            prepend: 0,
            max_prefix: None,
            bfd: None,
        },
        PeerSpec {
            kind,
            asn: 65002,
            braid_asn: 65001,
            hold: 90,
            routes4: vec![PEER_NET4.into()],
            routes6: vec![],
            link: LINK_B,
        },
    );
    lab.wait("braid's route at the peer", Duration::from_secs(30), |l| {
        l.peer
            .learned("ipv4")
            .iter()
            .any(|r| r.prefix == BRAID_NET4)
    });
    assert!(lab.stop_braid(), "braid did not exit cleanly on SIGTERM");
    lab.wait(
        "the peer dropped braid's routes",
        Duration::from_secs(5),
        |l| {
            !l.peer
                .learned("ipv4")
                .iter()
                .any(|r| r.prefix == BRAID_NET4)
        },
    );
    let text = lab.peer.session_text().to_lowercase();
    if kind == Kind::Bird {
        assert!(
            text.contains("administrative shutdown"),
            "BIRD did not see the Cease: {text}"
        );
        assert!(
            text.contains("braid gateway shutting down"),
            "RFC 8203 message not shown: {text}"
        );
    }
}

#[test]
fn bird_graceful_shutdown_sends_cease_with_message() {
    if ready(
        "bird_graceful_shutdown_sends_cease_with_message",
        Kind::Bird,
    ) {
        graceful_shutdown(Kind::Bird);
    }
}

#[test]
fn frr_graceful_shutdown() {
    if ready("frr_graceful_shutdown", Kind::Frr) {
        graceful_shutdown(Kind::Frr);
    }
}

#[test]
fn gobgp_graceful_shutdown() {
    if ready("gobgp_graceful_shutdown", Kind::Gobgp) {
        graceful_shutdown(Kind::Gobgp);
    }
}

/// Transit: braid learns a route from BIRD (AS 65002) and passes it on to GoBGP (AS 65003) with its own ASN in
/// front and next hop self; when BIRD withdraws it, braid's withdrawal removes it from GoBGP.
#[test]
fn transit_bird_to_gobgp_announce_and_withdraw() {
    if !ready("transit_bird_to_gobgp_announce_and_withdraw", Kind::Bird)
        || !ready("transit_bird_to_gobgp_announce_and_withdraw", Kind::Gobgp)
    {
        return;
    }
    let mut lab = BgpLab::start_with(
        BraidSpec {
            asn: 65001,
            peer_asn: 65002,
            hold: 90,
            prepend: 0,
            max_prefix: None,
            bfd: None,
        },
        PeerSpec {
            kind: Kind::Bird,
            asn: 65002,
            braid_asn: 65001,
            hold: 90,
            routes4: vec![PEER_NET4.into(), PEER_NET4_EXTRA.into()],
            routes6: vec![PEER_NET6.into()],
            link: LINK_B,
        },
        Some(PeerSpec {
            kind: Kind::Gobgp,
            asn: 65003,
            braid_asn: 65001,
            hold: 90,
            routes4: vec![],
            routes6: vec![],
            link: LINK_C,
        }),
    );
    let has = |l: &BgpLab, fam: &str, prefix: &str, path: &[u32]| {
        l.peer2
            .as_ref()
            .unwrap()
            .learned(fam)
            .iter()
            .any(|r| r.prefix == prefix && r.as_path == path)
    };
    lab.wait(
        "BIRD's routes at GoBGP through braid",
        Duration::from_secs(30),
        |l| {
            has(l, "ipv4", PEER_NET4, &[65001, 65002])
                && has(l, "ipv4", PEER_NET4_EXTRA, &[65001, 65002])
                && has(l, "ipv6", PEER_NET6, &[65001, 65002])
        },
    );
    lab.peer.withdraw(PEER_NET4_EXTRA);
    lab.peer.withdraw(PEER_NET6);
    lab.wait(
        "braid's withdrawals reach GoBGP",
        Duration::from_secs(15),
        |l| {
            let v4 = l.peer2.as_ref().unwrap().learned("ipv4");
            let v6 = l.peer2.as_ref().unwrap().learned("ipv6");
            !v4.iter().any(|r| r.prefix == PEER_NET4_EXTRA)
                && !v6.iter().any(|r| r.prefix == PEER_NET6)
        },
    );
    assert!(
        has(&lab, "ipv4", PEER_NET4, &[65001, 65002]),
        "the route that was not withdrawn must stay"
    );
}

#[test]
fn bird_interop() {
    if ready("bird_interop", Kind::Bird) {
        interop(Kind::Bird, 65001, 65002);
    }
}

#[test]
fn frr_interop_with_4_octet_asn_on_braid() {
    if ready("frr_interop_with_4_octet_asn_on_braid", Kind::Frr) {
        interop(Kind::Frr, 4_200_000_001, 65002);
    }
}

#[test]
fn gobgp_interop_with_4_octet_asn_on_the_peer() {
    if ready("gobgp_interop_with_4_octet_asn_on_the_peer", Kind::Gobgp) {
        interop(Kind::Gobgp, 65001, 4_200_000_002);
    }
}

#[test]
fn bird_max_prefix() {
    if ready("bird_max_prefix", Kind::Bird) {
        max_prefix(Kind::Bird);
    }
}

#[test]
fn frr_max_prefix() {
    if ready("frr_max_prefix", Kind::Frr) {
        max_prefix(Kind::Frr);
    }
}

#[test]
fn gobgp_max_prefix() {
    if ready("gobgp_max_prefix", Kind::Gobgp) {
        max_prefix(Kind::Gobgp);
    }
}
