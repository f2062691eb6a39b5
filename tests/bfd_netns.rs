//! BFD between two braid gateways over their tunnel (RFC 5880/5881), in network namespaces: the session comes
//! Up with the configured timers; cutting the underlay takes it Down within the detection time, marks the
//! tunnel dead and resets the BGP session long before the hold timer; restoring brings it back; SIGTERM sends
//! AdminDown so the peer goes Down at once (diag 3, neighbor signaled session down) rather than on detection.

mod common;

use std::time::Duration;

use braid::lab::Side;
use common::{netns_ready, wait_until};
use serde_json::Value;

fn session(pair: &braid::lab::Pair, side: Side) -> Value {
    pair.show(side, "bfd").unwrap_or_default()["sessions"][0].clone()
}

/// Both gateways' BFD sessions and logs, for a timeout's panic.
fn diag(pair: &braid::lab::Pair) -> String {
    format!(
        "A bfd: {}\nB bfd: {}\nA log:\n{}\nB log:\n{}",
        session(pair, Side::A),
        session(pair, Side::B),
        pair.log_tail(Side::A),
        pair.log_tail(Side::B)
    )
}

fn tunnel_live(pair: &braid::lab::Pair, side: Side) -> bool {
    pair.show(side, "tunnels").unwrap_or_default()["tunnels"][0]["live"] == true
}

#[test]
fn bfd_detects_a_cut_resets_bgp_and_recovers_and_sigterm_sends_admin_down() {
    if !netns_ready(
        "bfd_detects_a_cut_resets_bgp_and_recovers_and_sigterm_sends_admin_down",
        &["ip"],
    ) {
        return;
    }
    let mut pair = common::pair_with(|o| {
        o.bgp = true;
        o.bfd = Some((100, 3, 500));
        o.hold_time = Some(30);
    });
    // Up on both sides, with the negotiated timers, and the tunnel live after the hold-down.
    wait_until(
        "BFD Up and the tunnel live",
        Duration::from_secs(15),
        || {
            session(&pair, Side::A)["state"] == "Up"
                && session(&pair, Side::B)["state"] == "Up"
                && tunnel_live(&pair, Side::A)
                && tunnel_live(&pair, Side::B)
        },
        || diag(&pair),
    );
    let a = session(&pair, Side::A);
    assert_eq!(a["negotiated"]["tx_interval_ms"], 100.0, "{a}");
    assert_eq!(a["negotiated"]["detection_time_ms"], 300.0, "{a}");
    assert_eq!(a["remote_timers"]["detect_mult"], 3, "{a}");
    let bgp_up =
        |side| pair.show(side, "bgp").unwrap_or_default()["neighbors"][0]["state"] == "Established";
    wait_until(
        "BGP Established",
        Duration::from_secs(20),
        || bgp_up(Side::A) && bgp_up(Side::B),
        || diag(&pair),
    );

    // Cut the underlay: BFD Down well before the 30 s hold timer, the tunnel dead, BGP reset.
    pair.a.ip(&["link", "set", "ul0", "down"]).unwrap();
    let detected = wait_until(
        "BFD Down at A",
        Duration::from_secs(5),
        || session(&pair, Side::A)["state"] == "Down",
        || diag(&pair),
    );
    println!("BFD detected the cut in {} ms", detected.as_millis());
    assert!(!tunnel_live(&pair, Side::A));
    assert_eq!(
        session(&pair, Side::A)["diag"],
        "Control Detection Time Expired"
    );
    wait_until(
        "the BGP session reset by BFD",
        Duration::from_secs(5),
        || {
            let n = &pair.show(Side::A, "bgp").unwrap_or_default()["neighbors"][0];
            n["state"] != "Established"
                && n["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("BFD Down"))
        },
        || diag(&pair),
    );

    // Restore: Up again, live after the hold-down, BGP back.
    pair.a.ip(&["link", "set", "ul0", "up"]).unwrap();
    wait_until(
        "BFD Up again and the tunnel live",
        Duration::from_secs(15),
        || session(&pair, Side::A)["state"] == "Up" && tunnel_live(&pair, Side::A),
        || diag(&pair),
    );
    wait_until(
        "BGP Established again",
        Duration::from_secs(30),
        || bgp_up(Side::A) && bgp_up(Side::B),
        || diag(&pair),
    );

    // SIGTERM at B: A hears AdminDown and goes Down at once (neighbor signaled), not by detection.
    let downs_before = session(&pair, Side::A)["downs"].as_u64().unwrap();
    pair.stop(Side::B, Duration::from_secs(5)).unwrap();
    wait_until(
        "A Down after B's AdminDown",
        Duration::from_secs(2),
        || session(&pair, Side::A)["downs"].as_u64().unwrap_or(0) > downs_before,
        || diag(&pair),
    );
    assert_eq!(
        session(&pair, Side::A)["diag"],
        "Neighbor Signaled Session Down",
        "{}",
        session(&pair, Side::A)
    );
}
