//! Two `braid run` gateways keyed by IKEv2 (PSK) in network namespaces: the handshake, traffic both ways with
//! both proposal sets, child SA rekeys every few seconds and an IKE SA rekey under sequence-numbered probe flows
//! with zero loss, a graceful stop (Delete), DPD finding a SIGKILLed peer, and an initiator starting on the
//! responder's port 500.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use braid::lab::*;
use common::probe::{self, json_of, per_flow};
use common::*;
use serde_json::Value;

fn ike_pair(f: impl FnOnce(&mut IkeLab)) -> Pair {
    let mut ike = IkeLab::default();
    f(&mut ike);
    pair_with(|o| o.ike = Some(ike))
}

fn diag(p: &Pair) -> String {
    format!(
        "A: {}\nB: {}\nA log:\n{}\nB log:\n{}",
        p.tunnel(Side::A).unwrap_or_default(),
        p.tunnel(Side::B).unwrap_or_default(),
        p.log_tail(Side::A),
        p.log_tail(Side::B)
    )
}

fn ike_state(p: &Pair, side: Side) -> Value {
    p.tunnel(side).unwrap_or_default()["ike"].clone()
}

fn established(p: &Pair, side: Side) -> bool {
    let t = p.tunnel(side).unwrap_or_default();
    t["ike"]["state"] == "established" && t["spi_out"].is_string() && t["live"] == true
}

fn wait_established(p: &Pair) -> Duration {
    wait_until(
        "IKE SA and child SA up on both sides",
        Duration::from_secs(15),
        || established(p, Side::A) && established(p, Side::B),
        || diag(p),
    )
}

fn pings(p: &Pair) {
    for (side, dst, src) in [
        (Side::A, B_INSIDE4, A_INSIDE4),
        (Side::B, A_INSIDE4, B_INSIDE4),
        (Side::A, B_INSIDE6, A_INSIDE6),
        (Side::A, B_SITE4, A_SITE4),
        (Side::B, A_SITE6, B_SITE6),
    ] {
        let (got, text) = p.ping(side, dst, 3, &["-I", src]).unwrap();
        assert_eq!(got, 3, "ping {src} -> {dst}:\n{text}\n{}", diag(p));
    }
}

/// Probe flows from `from` (an address of `from_side`) to `to` on the other side, `flows` x `pps` for `secs`;
/// returns the running (sink, source).
#[allow(clippy::too_many_arguments)]
fn probe_start(
    p: &Pair,
    from_side: Side,
    from: &str,
    to: &str,
    port: u16,
    flows: usize,
    pps: u32,
    secs: f64,
) -> (std::process::Child, std::process::Child) {
    let to_side = if from_side == Side::A {
        Side::B
    } else {
        Side::A
    };
    probe::probe_start(
        p.ns(from_side),
        p.ns(to_side),
        from,
        to,
        port,
        flows,
        pps,
        secs,
    )
}

/// Every probe sent arrived: per flow, received == sent and nothing lost.
fn assert_no_loss(label: &str, sent: &Value, report: &Value, p: &Pair) -> u64 {
    let flows = report["flows"].as_array().unwrap();
    let mut total = 0;
    for (i, (s, got)) in per_flow(sent, report).into_iter().enumerate() {
        let f = &flows[i];
        assert_eq!(
            got,
            s,
            "{label}: flow {i} sent {s}, received {got} (gaps {})\n{}",
            f["gaps"],
            diag(p)
        );
        assert_eq!(f["first_seq"], 0, "{label}: flow {i} lost its head");
        total += got;
    }
    assert_eq!(report["lost"], 0, "{label}: {report}");
    total
}

fn n(v: &Value, k: &str) -> u64 {
    v[k].as_u64()
        .unwrap_or_else(|| panic!("{k} missing in {v}"))
}

#[test]
fn ike_rekeys_child_and_ike_sas_under_probe_flows_with_zero_loss() {
    if !netns_ready(
        "ike_rekeys_child_and_ike_sas_under_probe_flows_with_zero_loss",
        &["ip", "ping"],
    ) {
        return;
    }
    let mut p = ike_pair(|i| {
        i.esp_proposal = "aes256gcm16-noesn".into();
        i.child_lifetime = "5s".into();
        i.lifetime = "18s".into();
        i.dpd_interval = "2s".into();
    });
    let took = wait_established(&p);
    eprintln!("IKE up on both sides after {took:?}");
    let a = ike_state(&p, Side::A);
    assert_eq!(a["ike_algorithms"], "aes256gcm16-prfsha256-ecp256", "{a}");
    assert_eq!(a["esp_algorithms"], "aes256gcm16-noesn", "{a}");
    assert_eq!(a["initiator"], true);
    assert_eq!(ike_state(&p, Side::B)["initiator"], false);
    assert_eq!(a["nat_detected"], false, "{a}");
    // The SPIs shown are the live SAs': A's outbound is B's inbound.
    let (ta, tb) = (p.tunnel(Side::A).unwrap(), p.tunnel(Side::B).unwrap());
    assert_eq!(ta["keying"], "ike");
    assert_eq!(ta["cipher"], "aes256gcm16");
    pings(&p);
    let v = p
        .transfer(&binary(), Side::A, B_SITE4, 20_000_000, 11)
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    // A's outbound SA is one of B's inbound SAs (old ones stay 5 s after a rekey, so this holds even if a
    // rekey happened between the two queries).
    assert!(
        tb["spis_in"].as_array().unwrap().contains(&ta["spi_out"]),
        "A {ta}\nB {tb}"
    );

    // 30 s of probe flows both ways: ~6 child rekeys and at least one IKE SA rekey happen under them.
    let before_a = ike_state(&p, Side::A);
    let before_b = ike_state(&p, Side::B);
    let secs = 30.0;
    let (sink_ab, src_ab) = probe_start(&p, Side::A, A_SITE4, B_SITE4, 6001, 8, 200, secs);
    let (sink_ba, src_ba) = probe_start(&p, Side::B, B_SITE6, A_SITE6, 6002, 8, 200, secs);
    let sent_ab = json_of(src_ab, "probe-source A->B");
    let sent_ba = json_of(src_ba, "probe-source B->A");
    let rep_ab = json_of(sink_ab, "probe-sink at B");
    let rep_ba = json_of(sink_ba, "probe-sink at A");
    let after_a = ike_state(&p, Side::A);
    let after_b = ike_state(&p, Side::B);
    let child_rekeys = n(&after_a, "child_rekeys") - n(&before_a, "child_rekeys");
    let child_rekeys_b = n(&after_b, "child_rekeys") - n(&before_b, "child_rekeys");
    let ike_rekeys = n(&after_a, "ike_rekeys") - n(&before_a, "ike_rekeys");
    let got_ab = assert_no_loss("A -> B (IPv4)", &sent_ab, &rep_ab, &p);
    let got_ba = assert_no_loss("B -> A (IPv6)", &sent_ba, &rep_ba, &p);
    eprintln!(
        "probe flows: {got_ab} A->B + {got_ba} B->A probes, 0 lost; child SA rekeys during them: A {child_rekeys}, \
         B {child_rekeys_b}; IKE SA rekeys: {ike_rekeys}; A after: {after_a}"
    );
    assert!(
        child_rekeys >= 4,
        "child rekeys {child_rekeys}\n{}",
        diag(&p)
    );
    assert!(ike_rekeys >= 1, "IKE rekeys {ike_rekeys}\n{}", diag(&p));
    assert_eq!(n(&after_a, "downs"), 0, "{after_a}");
    assert_eq!(n(&after_b, "downs"), 0, "{after_b}");
    assert_eq!(n(&after_a, "apply_errors") + n(&after_b, "apply_errors"), 0);
    // The grace period ends: one inbound SA left per side once rekeys pause... at most a few in flight.
    let ta = p.tunnel(Side::A).unwrap();
    assert!(ta["spis_in"].as_array().unwrap().len() <= 3, "{ta}");
    for t in [&ta, &p.tunnel(Side::B).unwrap()] {
        assert_eq!(drop_count(t, "auth_failed"), 0, "{t}");
        assert_eq!(drop_count(t, "replay"), 0, "{t}");
    }

    // A graceful stop deletes the IKE SA: the peer knows at once (no DPD wait), and its tunnel goes dead.
    let t0 = Instant::now();
    p.stop(Side::B, Duration::from_secs(10)).unwrap();
    let exited = t0.elapsed();
    let took = wait_until(
        "A sees B's Delete",
        Duration::from_secs(3),
        || {
            let t = p.tunnel(Side::A).unwrap_or_default();
            t["ike"]["last_down"] == "DeletedByPeer" && t["live"] == false
        },
        || diag(&p),
    );
    eprintln!(
        "graceful stop: B exited {exited:?} after SIGTERM; A showed the Delete {took:?} later"
    );
    let log = std::fs::read_to_string(p.log(Side::B)).unwrap();
    assert!(log.contains("IKE Delete sent"), "{log}");
}

#[test]
fn ike_chacha20_x25519_handshake_ping_and_tcp() {
    if !netns_ready(
        "ike_chacha20_x25519_handshake_ping_and_tcp",
        &["ip", "ping"],
    ) {
        return;
    }
    let p = ike_pair(|i| {
        i.proposal = "chacha20poly1305-prfsha256-x25519".into();
        i.esp_proposal = "chacha20poly1305-esn".into();
        // A starts on B's port 500 (plain IKE) and floats to 4500 for IKE_AUTH (RFC 7296 2.23).
        i.extra_a = "start_port = 500".into();
    });
    wait_established(&p);
    let a = ike_state(&p, Side::A);
    // Both ended up on the uplinks' port 4500; A's fake NAT hash made B see it "behind a NAT".
    assert_eq!(a["nat_local"], true, "{a}");
    let b = ike_state(&p, Side::B);
    assert_eq!(b["nat_remote"], true, "{b}");
    assert!(
        b["remote"].as_str().is_some_and(|r| r.ends_with(":4500")),
        "{b}"
    );
    assert_eq!(
        a["ike_algorithms"], "chacha20poly1305-prfsha256-x25519",
        "{a}"
    );
    assert_eq!(a["esp_algorithms"], "chacha20poly1305-esn", "{a}");
    let t = p.tunnel(Side::B).unwrap();
    assert_eq!(t["cipher"], "chacha20poly1305", "{t}");
    assert_eq!(t["esn"], true, "{t}");
    pings(&p);
    let v = p
        .transfer(&binary(), Side::B, A_SITE6, 20_000_000, 12)
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
}

#[test]
fn ike_traffic_selectors_are_narrowed_or_refused() {
    if !netns_ready(
        "ike_traffic_selectors_are_narrowed_or_refused",
        &["ip", "ping"],
    ) {
        return;
    }
    // Narrowing: A proposes everything (both families); B accepts only A's site and inside prefixes on A's
    // side and answers with the intersection (RFC 7296 2.9). A accepts the narrower answer.
    let p = ike_pair(|i| {
        i.extra_b = "remote_ts = [\"192.0.2.0/25\", \"169.254.0.0/30\"]".into();
    });
    wait_established(&p);
    let (a, b) = (ike_state(&p, Side::A), ike_state(&p, Side::B));
    let want_a_side = serde_json::json!(["192.0.2.0/25", "169.254.0.0/30"]);
    assert_eq!(a["ts_local"], want_a_side, "{a}");
    assert_eq!(
        a["ts_remote"],
        serde_json::json!(["0.0.0.0/0", "::/0"]),
        "{a}"
    );
    assert_eq!(b["ts_remote"], want_a_side, "{b}");
    assert_eq!(
        b["ts_local"],
        serde_json::json!(["0.0.0.0/0", "::/0"]),
        "{b}"
    );
    let (got, text) = p.ping(Side::A, B_SITE4, 3, &["-I", A_SITE4]).unwrap();
    assert_eq!(got, 3, "{text}\n{}", diag(&p));
    drop(p);

    // Refusal: A's side is 192.0.2.0/25 only, B wants 10.0.0.0/8 there: no intersection, so B answers
    // IKE_AUTH with TS_UNACCEPTABLE, A has no child SA, and the tunnel never carries traffic.
    let p = ike_pair(|i| {
        i.extra_a = "local_ts = \"192.0.2.0/25\"".into();
        i.extra_b = "remote_ts = \"10.0.0.0/8\"".into();
    });
    wait_until(
        "A sees TS_UNACCEPTABLE",
        Duration::from_secs(15),
        || {
            ike_state(&p, Side::A)["last_down"]
                .as_str()
                .is_some_and(|d| d.contains("TsUnacceptable"))
        },
        || diag(&p),
    );
    let (a, ta) = (ike_state(&p, Side::A), p.tunnel(Side::A).unwrap());
    assert_eq!(a["last_down"], "TsUnacceptable { by_peer: true }", "{a}");
    assert_ne!(a["state"], "established", "{a}");
    assert_eq!(ta["live"], false, "{ta}");
    assert!(ta["spi_out"].is_null(), "{ta}");
    let tb = p.tunnel(Side::B).unwrap();
    assert_ne!(tb["ike"]["state"], "established", "{tb}");
    assert!(tb["spi_out"].is_null(), "{tb}");
    let log = std::fs::read_to_string(p.log(Side::A)).unwrap();
    assert!(log.contains("TsUnacceptable"), "{log}");
}

#[test]
fn ike_dpd_finds_a_killed_peer() {
    if !netns_ready("ike_dpd_finds_a_killed_peer", &["ip", "ping"]) {
        return;
    }
    // DPD after 2 s of silence; a check is retransmitted 3 times: 0.5 + 0.75 + 1.125 + 1.69 = 4.06 s. BGP runs
    // in the tunnel with a 60 s hold time: IKE's verdict must reset it long before that.
    let mut ike = IkeLab {
        dpd_interval: "2s".into(),
        extra: "retransmit = { timeout = \"500ms\", factor = 1.5, tries = 3 }".into(),
        ..IkeLab::default()
    };
    ike.esp_proposal = "aes256gcm16-noesn".into();
    let p = pair_with(|o| {
        o.ike = Some(ike);
        o.bgp = true;
        o.hold_time = Some(60);
    });
    wait_established(&p);
    let bgp_state = |side| p.show(side, "bgp").unwrap_or_default()["neighbors"][0]["state"].clone();
    wait_until(
        "BGP Established over the IKE tunnel",
        Duration::from_secs(15),
        || bgp_state(Side::A) == "Established" && bgp_state(Side::B) == "Established",
        || diag(&p),
    );
    for (side, dst, src) in [
        (Side::A, B_INSIDE4, A_INSIDE4),
        (Side::B, A_INSIDE6, B_INSIDE6),
    ] {
        let (got, text) = p.ping(side, dst, 3, &["-I", src]).unwrap();
        assert_eq!(got, 3, "{text}");
    }
    // SIGKILL B's gateway: no Delete, no AdminDown; A must find out by itself.
    let pids = p.b.ip(&["netns", "pids", p.b.name()]).unwrap();
    let pids = String::from_utf8_lossy(&pids.stdout).to_string();
    assert!(!pids.trim().is_empty());
    let killed = Instant::now();
    for pid in pids.split_whitespace() {
        let _ = std::process::Command::new("kill")
            .args(["-9", pid])
            .stderr(Stdio::null())
            .status();
    }
    let took = wait_until(
        "A declares B dead",
        Duration::from_secs(20),
        || {
            let t = p.tunnel(Side::A).unwrap_or_default();
            t["ike"]["last_down"] == "PeerDead" && t["live"] == false
        },
        || diag(&p),
    );
    let budget = Duration::from_secs(2) + Duration::from_millis(4063);
    eprintln!(
        "DPD: A declared B dead {took:?} after SIGKILL (DPD 2 s + retransmit budget 4.06 s = {budget:?})"
    );
    assert!(
        took <= budget + Duration::from_millis(1500),
        "DPD took {took:?}\n{}",
        diag(&p)
    );
    assert!(killed.elapsed() >= Duration::from_secs(2));
    let t = p.tunnel(Side::A).unwrap();
    assert!(t["spi_out"].is_null(), "SAs cleared: {t}");
    assert_eq!(t["down_votes"], serde_json::json!(["ike"]), "{t}");
    // BGP was reset with the IKE SA, not 60 s later by its hold timer.
    let n = &p.show(Side::A, "bgp").unwrap()["neighbors"][0];
    assert_ne!(n["state"], "Established", "{n}");
    let why = n["last_error"].as_str().unwrap_or_default();
    assert!(
        why.contains("IKE SA down") || why.contains("Administrative Reset"),
        "{n}"
    );
    let log = std::fs::read_to_string(p.log(Side::A)).unwrap();
    assert!(
        log.contains("path down: resetting the BGP session"),
        "{log}"
    );
    // A initiator keeps trying (backoff), and says so.
    wait_until(
        "A initiates again",
        Duration::from_secs(5),
        || {
            let i = ike_state(&p, Side::A);
            i["state"] == "connecting" || i["restart_in_ms"].is_u64()
        },
        || diag(&p),
    );
}
