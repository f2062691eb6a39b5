//! braid's BFD against FRR's bfdd (Debian `frr`), single hop over a plain link, each in its own namespace:
//! the session comes Up with timers negotiated between the two implementations, FRR agrees it is up, a cut link
//! takes braid's side Down and resets the BGP session it protects, and the session comes back on restore.

mod common;

use std::time::Duration;

use common::bgp::*;
use common::netns_ready;
use serde_json::Value;

fn session(lab: &BgpLab) -> Value {
    lab.show("bfd")["sessions"][0].clone()
}

#[test]
fn bfd_with_frr_bfdd_negotiates_detects_a_cut_and_recovers() {
    if !netns_ready(
        "bfd_with_frr_bfdd_negotiates_detects_a_cut_and_recovers",
        &["ip", "vtysh"],
    ) || !std::path::Path::new("/usr/lib/frr/bfdd").exists()
    {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and /usr/lib/frr/bfdd is missing (apt-get install frr)");
        }
        return;
    }
    let mut lab = BgpLab::start(
        BraidSpec {
            asn: 65001,
            peer_asn: 65002,
            hold: 90,
            prepend: 0,
            max_prefix: None,
            // braid asks for 100 ms; FRR is configured at 300 ms x 5, so the slower side's numbers must win.
            bfd: Some((100, 3)),
        },
        PeerSpec {
            kind: Kind::Frr,
            asn: 65002,
            braid_asn: 65001,
            hold: 90,
            routes4: vec![PEER_NET4.into()],
            routes6: vec![],
            link: LINK_B,
        },
    );
    lab.peer.start_frr_bfdd(300, 5);
    lab.wait("BFD Up with FRR", Duration::from_secs(20), |l| {
        session(l)["state"] == "Up" && l.peer.frr_bfd_peers().contains("Status: up")
    });
    let s = session(&lab);
    // RFC 5880 6.8.2/6.8.4: we send at max(our 100, FRR's required 300) = 300 ms and detect FRR after its
    // multiplier (5) x max(our required 100, FRR's desired 300) = 1500 ms.
    assert_eq!(s["remote_timers"]["detect_mult"], 5, "{s}");
    assert_eq!(s["negotiated"]["tx_interval_ms"], 300.0, "{s}");
    assert_eq!(s["negotiated"]["detection_time_ms"], 1500.0, "{s}");
    lab.wait("BGP Established", Duration::from_secs(30), |l| {
        l.neighbor(PEER4)["state"] == "Established"
    });

    // Cut the link at FRR's end: braid goes Down within its detection time and resets the BGP session.
    lab.b.ip(&["link", "set", "ul0", "down"]).unwrap();
    let took = lab.wait("braid's BFD Down", Duration::from_secs(5), |l| {
        session(l)["state"] == "Down"
    });
    println!(
        "braid detected the cut in {} ms (detection time 1500 ms)",
        took.as_millis()
    );
    assert_eq!(session(&lab)["diag"], "Control Detection Time Expired");
    lab.wait(
        "the BGP session reset by BFD",
        Duration::from_secs(5),
        |l| {
            let n = l.neighbor(PEER4);
            n["state"] != "Established"
                && n["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("BFD Down"))
        },
    );

    // Restore: both sides Up again.
    lab.b.ip(&["link", "set", "ul0", "up"]).unwrap();
    lab.wait("BFD Up again", Duration::from_secs(20), |l| {
        session(l)["state"] == "Up" && l.peer.frr_bfd_peers().contains("Status: up")
    });
}
