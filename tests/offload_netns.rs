//! The outbound fast path on real TUN devices, proved by its counters: TCP super-packets read from the TUN
//! device (TSO) and segmented in user space, sealed datagrams sent as UDP GSO runs, and the fallback to one
//! datagram per message when the kernel refuses UDP GSO, each with a verified TCP transfer over IPv4 and IPv6.

mod common;

use braid::lab::*;
use common::*;
use serde_json::Value;

fn tun(p: &Pair, side: Side) -> Value {
    p.show(side, "tunnels").expect("show tunnels")["tun"].clone()
}

fn uplink(p: &Pair, side: Side) -> Value {
    p.show(side, "uplinks").expect("show uplinks")["uplinks"][0].clone()
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {key} in {v}"))
}

fn drops(v: &Value, reason: &str) -> u64 {
    v["drops"][reason].as_u64().unwrap_or(0)
}

#[test]
fn tso_reads_and_udp_gso_sends_carry_verified_tcp_v4_and_v6() {
    if !netns_ready(
        "tso_reads_and_udp_gso_sends_carry_verified_tcp_v4_and_v6",
        &["ip"],
    ) {
        return;
    }
    let p = pair();
    let v4 = p
        .transfer(&binary(), Side::A, B_SITE4, 30_000_000, 21)
        .unwrap();
    assert_eq!(v4["ok"], true, "{v4}");
    let t4 = tun(&p, Side::A);
    let u4 = uplink(&p, Side::A);
    let v6 = p
        .transfer(&binary(), Side::A, B_SITE6, 20_000_000, 22)
        .unwrap();
    assert_eq!(v6["ok"], true, "{v6}");
    let t6 = tun(&p, Side::A);
    let u6 = uplink(&p, Side::A);

    for (t, u, what) in [(&t4, &u4, "IPv4"), (&t6, &u6, "IPv4 + IPv6")] {
        assert!(n(t, "gso_reads") > 0, "{what}: no super-packet read: {t}");
        assert!(
            n(t, "gso_segments") > 2 * n(t, "gso_reads"),
            "{what}: super-packets of a few segments at least: {t}"
        );
        assert!(n(u, "gso_sends") > 0, "{what}: no UDP GSO send: {u}");
        assert_eq!(n(u, "gso_fallbacks"), 0, "{u}");
        assert_eq!(drops(t, "offload_malformed"), 0, "{t}");
    }
    assert!(
        n(&t6, "gso_reads") > n(&t4, "gso_reads"),
        "the IPv6 transfer was segmented too: {t4} then {t6}"
    );
    // Every datagram the sender counted arrived and authenticated.
    let a = p.tunnel(Side::A).unwrap();
    let b = p.tunnel(Side::B).unwrap();
    assert_eq!(drops(&a, "send_failed"), 0, "{a}");
    for reason in ["auth_failed", "replay", "inner_malformed"] {
        assert_eq!(drops(&b, reason), 0, "{reason}: {b}");
    }
    assert!(counter(&b, "rx_bytes") > 50_000_000, "{b}");
}

#[test]
fn refused_udp_gso_falls_back_to_plain_sends_without_loss() {
    if !netns_ready(
        "refused_udp_gso_falls_back_to_plain_sends_without_loss",
        &["ip"],
    ) {
        return;
    }
    let p = pair();
    // braid sized its datagrams for a 1500-octet uplink; at 1400 the kernel refuses a UDP GSO message whose
    // datagrams exceed the MTU (EMSGSIZE on 6.x, EINVAL on older kernels), while single datagrams are still
    // fragmented and delivered.
    p.a.ip(&["link", "set", "dev", "ul0", "mtu", "1400"])
        .unwrap();
    let v4 = p
        .transfer(&binary(), Side::A, B_SITE4, 10_000_000, 23)
        .unwrap();
    assert_eq!(v4["ok"], true, "{v4}");
    let v6 = p
        .transfer(&binary(), Side::A, B_SITE6, 5_000_000, 24)
        .unwrap();
    assert_eq!(v6["ok"], true, "{v6}");
    let u = uplink(&p, Side::A);
    assert_eq!(n(&u, "gso_fallbacks"), 1, "refused once, then plain: {u}");
    let a = p.tunnel(Side::A).unwrap();
    assert_eq!(drops(&a, "send_failed"), 0, "{a}");
    assert!(n(&tun(&p, Side::A), "gso_reads") > 0);
}
