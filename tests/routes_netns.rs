//! Routing by BGP over a tunnel, end to end, in network namespaces: two braid gateways whose only routes are
//! learned over their tunnel's BGP session, and a BIRD router on B's LAN whose prefixes reach A through B.
//!
//! Checks: site-to-site traffic flows on BGP-learned routes alone (the FIB forwards them, the inbound source
//! check accepts them because they were learned over that tunnel); `braid show routes` shows the group; the
//! kernel mirror (`kernel_routes = true`) installs the routes towards the TUN device; a withdrawal at BIRD
//! removes the prefix from A's FIB and A's kernel table while the other prefix stays.

mod common;

use std::time::Duration;

use braid::lab::{Side, A_SITE4, B_SITE4};
use braid::netns::Netns;
use common::bgp::{BgpLab, Kind, Link, Peer, PeerSpec};
use common::{netns_ready, wait_until};
use serde_json::Value;

const LAN: Link = Link {
    braid4: "203.0.113.1",
    braid6: "2001:db8:c::1",
    peer4: "203.0.113.2",
    peer6: "2001:db8:c::2",
    len4: 30,
};
const KEEP: &str = "203.0.113.128/26";
const GOES: &str = "203.0.113.192/26";

fn route<'a>(routes: &'a Value, prefix: &str) -> Option<&'a Value> {
    routes["routes"]
        .as_array()?
        .iter()
        .find(|r| r["prefix"] == prefix)
}

fn in_fib(routes: &Value, prefix: &str) -> bool {
    route(routes, prefix).is_some_and(|r| r["fib"] == true)
}

fn kernel_routes(ns: &Netns) -> String {
    let out = ns
        .ip(&["route", "show", "dev", "braid0"])
        .expect("ip route");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bgp_routes_over_a_tunnel_forward_and_follow_withdrawals() {
    if !netns_ready(
        "bgp_routes_over_a_tunnel_forward_and_follow_withdrawals",
        &["ip", "ping", "bird", "birdc"],
    ) {
        return;
    }
    let pair = common::pair_with(|o| {
        o.bgp = true;
        o.b_extra_neighbors = format!(
            "\n[[bgp.neighbor]]\naddress = \"{}\"\nremote_asn = 65003\nconnect_retry = 1\n\
             import = [\"0.0.0.0/0 le 32\"]\nexport = [\"0.0.0.0/0 le 32\"]\n",
            LAN.peer4
        );
    });
    let c = Netns::new("lanc").unwrap();
    BgpLab::link(&pair.b, "lan0", &c, LAN);
    let mut bird = Peer::start(
        PeerSpec {
            kind: Kind::Bird,
            asn: 65003,
            braid_asn: 65002,
            hold: 30,
            routes4: vec![KEEP.into(), GOES.into()],
            routes6: vec![],
            link: LAN,
        },
        &c,
        pair.dir.join("bird"),
    );
    let diag = || {
        format!(
            "A routes: {}\nA kernel:\n{}\nA log:\n{}\nB log:\n{}",
            pair.show(Side::A, "routes")
                .map(|v| v.to_string())
                .unwrap_or_default(),
            kernel_routes(&pair.a),
            pair.log_tail(Side::A),
            pair.log_tail(Side::B)
        )
    };

    // BIRD's prefixes reach A through B, over the tunnel's BGP session, into A's FIB and kernel table.
    wait_until(
        "BIRD's prefixes in A's FIB and kernel table",
        Duration::from_secs(40),
        || {
            let r = pair.show(Side::A, "routes").unwrap_or_default();
            let k = kernel_routes(&pair.a);
            in_fib(&r, KEEP) && in_fib(&r, GOES) && k.contains(KEEP) && k.contains(GOES)
        },
        diag,
    );
    let routes = pair.show(Side::A, "routes").unwrap();
    let r = route(&routes, GOES).unwrap();
    assert_eq!(r["source"], "bgp", "{r}");
    assert_eq!(r["as_path"], "65002 65003", "{r}");
    let hops = r["next_hops"].as_array().unwrap();
    assert_eq!(hops.len(), 1, "{r}");
    assert_eq!(hops[0]["tunnel"], "a-to-peer", "{r}");
    assert_eq!(hops[0]["backup"], false, "{r}");
    // The peer's inside address is a connected route pinned to the tunnel.
    let connected = route(&routes, "169.254.0.2/32").expect("connected host route");
    assert_eq!(connected["source"], "connected");

    // Site to site on BGP-learned routes only (no static routes anywhere): A's FIB forwards, B's inbound
    // check accepts A's site as a source learned over that tunnel, and back.
    wait_until(
        "site B's prefix at A",
        Duration::from_secs(20),
        || kernel_routes(&pair.a).contains("192.0.2.128/25"),
        diag,
    );
    let (received, out) = pair
        .ping(Side::A, B_SITE4, 5, &["-I", A_SITE4])
        .expect("ping");
    assert_eq!(received, 5, "site A -> site B over BGP routes:\n{out}");

    // The Prometheus endpoint exports the same counters.
    let out = pair
        .a
        .exec(
            "bash",
            &[
                "-c",
                "exec 3<>/dev/tcp/127.0.0.1/9477; printf 'GET /metrics HTTP/1.0\\r\\n\\r\\n' >&3; cat <&3",
            ],
        )
        .expect("scrape");
    let scrape = String::from_utf8_lossy(&out.stdout);
    assert!(scrape.starts_with("HTTP/1.0 200 OK"), "{scrape}");
    let tx_packets = scrape
        .lines()
        .find(|l| l.starts_with("braid_tunnel_tx_packets_total{gateway=\"a\",tunnel=\"a-to-peer\""))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no tunnel counter in:\n{scrape}"));
    assert!(tx_packets >= 5, "{scrape}");
    assert!(
        scrape.contains("braid_fib_routes{gateway=\"a\",source=\"bgp\"}"),
        "{scrape}"
    );
    assert!(
        scrape.contains("braid_bgp_session_established{gateway=\"a\",neighbor=\"169.254.0.2\",label=\"a-to-peer\"} 1"),
        "{scrape}"
    );

    // Withdrawal at BIRD: gone from A's FIB and kernel table; the other prefix stays.
    bird.withdraw(GOES);
    wait_until(
        "the withdrawal to reach A's FIB and kernel table",
        Duration::from_secs(20),
        || {
            let r = pair.show(Side::A, "routes").unwrap_or_default();
            !in_fib(&r, GOES) && !kernel_routes(&pair.a).contains(GOES)
        },
        diag,
    );
    let r = pair.show(Side::A, "routes").unwrap();
    assert!(in_fib(&r, KEEP), "the route not withdrawn stays: {r}");
    assert!(kernel_routes(&pair.a).contains(KEEP));
    assert!(route(&r, GOES).is_none(), "{r}");
}
