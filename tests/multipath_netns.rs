//! Multipath in network namespaces with real `braid run` gateways (the `braid lab` scenarios as a fixture):
//! S1 spreads flows over all four tunnels, S2 keeps the prepended ISP2 tunnels as idle backups, and an uplink
//! `cap` holds the uplink's egress under overload while its uncapped sibling is not touched.

mod common;

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use braid::scenario::*;
use common::*;

const TOOLS: &[&str] = &["ip", "ping", "tc", "sysctl", "bird"];

/// One topology at a time: each loads the machine (4 gateways, hundreds of flows, or an overload), and the
/// shares and rates are measured, so the tests of this file must not compete for the CPU.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn one_at_a_time() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every gateway's group for its remote prefix holds exactly the expected active members and backups.
fn assert_groups(topo: &Topology) {
    for g in 0..topo.gateways.len() {
        for e in topo.expected_routes(g) {
            let (active, backups) = topo
                .route(g, &e.prefix)
                .unwrap()
                .unwrap_or_else(|| panic!("{}: no route {}", topo.gateways[g].name, e.prefix));
            let (mut ea, mut eb) = (e.active.clone(), e.backups.clone());
            ea.sort();
            eb.sort();
            assert_eq!(
                (&active, &backups),
                (&ea, &eb),
                "{} {}: (next_hops, backups)",
                topo.gateways[g].name,
                e.prefix
            );
        }
    }
}

#[test]
fn s1_active_active_512_flows_spread_over_all_four_tunnels() {
    if !netns_ready(
        "s1_active_active_512_flows_spread_over_all_four_tunnels",
        TOOLS,
    ) {
        return;
    }
    let _serial = one_at_a_time();
    let topo = topology(Kind::ActiveActive, |_| {});
    for g in 0..topo.gateways.len() {
        let s = topo.sessions(g).unwrap();
        // One per tunnel, one to the site's core.
        assert_eq!(s.len(), 3, "{s:?}");
        assert!(s.iter().all(|(_, st)| st == "Established"), "{s:?}");
    }
    // Each gateway's group holds both of its tunnels (site-wide: 4 ways).
    assert_groups(&topo);
    for g in topo.role(Role::OnPrem) {
        let (active, _) = topo.route(g, SITE_B).unwrap().unwrap();
        assert_eq!(active.len(), 2);
    }
    // 512 flows paced at 0.25 Mbit/s each (well below what the gateways can carry), so bytes follow flows:
    // the 4-way split of 512 flows has a standard deviation of 1.9 points of share, and 10 points is 5 of them.
    let t = topo.run_flows(512, 4.0, 0.25).unwrap();
    assert_eq!(t.source["connected"], 512, "{}", t.source);
    assert_eq!(t.tunnels.len(), 4);
    assert!(t.total_tunnel_bytes() > 30_000_000, "{:?}", t.tunnels);
    for s in &t.tunnels {
        assert!(
            (0.15..=0.35).contains(&s.share),
            "{} {} carried {:.1}% of bytes, want 25% +/- 10%: {:?}",
            s.gateway,
            s.tunnel,
            s.share * 100.0,
            t.tunnels
        );
    }
}

#[test]
fn s2_dual_isp_prepended_isp2_tunnels_are_idle_backups() {
    if !netns_ready("s2_dual_isp_prepended_isp2_tunnels_are_idle_backups", TOOLS) {
        return;
    }
    let _serial = one_at_a_time();
    let topo = topology(Kind::DualIsp, |_| {});
    for g in 0..topo.gateways.len() {
        let s = topo.sessions(g).unwrap();
        // One per tunnel, one to the site's core.
        assert_eq!(s.len(), 5, "{s:?}");
        assert!(s.iter().all(|(_, st)| st == "Established"), "{s:?}");
    }
    // ISP1 members active, ISP2 members backups, for every prefix at every gateway.
    assert_groups(&topo);
    for g in topo.role(Role::OnPrem) {
        let (active, backups) = topo.route(g, SITE_B).unwrap().unwrap();
        assert!(active.iter().all(|t| t.ends_with("-isp1")), "{active:?}");
        assert!(backups.iter().all(|t| t.ends_with("-isp2")), "{backups:?}");
        assert_eq!((active.len(), backups.len()), (2, 2));
    }
    // Unpaced: ISP1 is as loaded as it gets, and still nothing spills onto ISP2.
    let t = topo.run_flows(64, 3.0, 0.0).unwrap();
    assert_eq!(t.source["connected"], 64, "{}", t.source);
    let total = t.total_tunnel_bytes();
    assert!(total > 10_000_000, "{:?}", t.tunnels);
    let isp2: u64 = t
        .tunnels
        .iter()
        .filter(|s| s.isp == 1)
        .map(|s| s.tx_bytes)
        .sum();
    assert!(
        (isp2 as f64) < 0.005 * total as f64,
        "ISP2 tunnels carried {isp2} of {total} bytes while ISP1 is up: {:?}",
        t.tunnels
    );
    // Both on-prem gateways used both of their ISP1 tunnels.
    for s in t.tunnels.iter().filter(|s| s.isp == 0) {
        assert!(s.share > 0.05, "{s:?}");
    }
}

#[test]
fn cap_holds_uplink_egress_under_overload_and_spares_the_uncapped_sibling() {
    if !netns_ready(
        "cap_holds_uplink_egress_under_overload_and_spares_the_uncapped_sibling",
        TOOLS,
    ) {
        return;
    }
    let _serial = one_at_a_time();
    const CAP_MBIT: f64 = 50.0;
    let topo = topology(Kind::CappedPair, |o| o.capped_mbit = CAP_MBIT as u32);
    assert_groups(&topo);
    let onprem = topo.gateway("onprem-1").unwrap();
    let cloud = topo.gateway("cloud-1").unwrap();
    let up = topo.uplinks(onprem).unwrap();
    assert_eq!(up[1].name, "isp2");
    assert_eq!(up[1].cap_bps, Some(50_000_000), "{up:?}");
    assert_eq!(up[0].cap_bps, None, "{up:?}");

    // A sink absorbs the datagrams at the cloud side (no ICMP port unreachable flood back).
    let mut sink = topo
        .labtool(
            &topo.gateways[cloud].ns,
            &[
                "flow-sink",
                "--listen",
                "0.0.0.0:5001",
                "--flows",
                "0",
                "--timeout",
                "10",
            ],
        )
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(sink.stdout.take().unwrap()).lines();
    assert!(lines.next().unwrap().unwrap().contains("listening"));

    // 150 Mbit/s to each destination: 3x the cap on ISP2, and 3x the cap on the uncapped ISP1.
    let to1 = format!("{CAPPED_DST_ISP1}:5001");
    let to2 = format!("{CAPPED_DST_ISP2}:5001");
    let flood = topo
        .labtool(
            &topo.gateways[onprem].ns,
            &[
                "udp-flood",
                "--from",
                CAPPED_SRC,
                "--to",
                &to1,
                "--to",
                &to2,
                "--mbit",
                "150",
                "--secs",
                "6",
                "--size",
                "1200",
                "--flows",
                "4",
            ],
        )
        .unwrap()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Measure in the middle of the run: the bucket's initial burst and the ramp are outside the window.
    std::thread::sleep(Duration::from_millis(1500));
    let before = topo.uplinks(onprem).unwrap();
    std::thread::sleep(Duration::from_millis(3500));
    let after = topo.uplinks(onprem).unwrap();
    let out = flood.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = sink.wait();

    let isp1_bps = after[0].wire_bps_since(&before[0]);
    let isp2_bps = after[1].wire_bps_since(&before[1]);
    let report = format!(
        "isp1 {:.1} Mbit/s (cap drops {} -> {}), isp2 {:.1} Mbit/s (cap drops {} -> {}); flood {}",
        isp1_bps / 1e6,
        before[0].cap_drops,
        after[0].cap_drops,
        isp2_bps / 1e6,
        before[1].cap_drops,
        after[1].cap_drops,
        String::from_utf8_lossy(&out.stdout).trim()
    );
    eprintln!("{report}");
    // The capped uplink: at most the cap + 5% on the wire, and really loaded (not idle for another reason).
    assert!(isp2_bps <= CAP_MBIT * 1e6 * 1.05, "over the cap: {report}");
    assert!(
        isp2_bps >= CAP_MBIT * 1e6 * 0.8,
        "capped uplink not loaded: {report}"
    );
    assert!(
        after[1].cap_drops > before[1].cap_drops,
        "no cap drops counted: {report}"
    );
    // The uncapped sibling carried more than the cap and dropped nothing for a cap.
    assert!(
        isp1_bps > 1.5 * CAP_MBIT * 1e6,
        "uncapped uplink not loaded: {report}"
    );
    assert_eq!(
        after[0].cap_drops, 0,
        "cap drops on the uncapped uplink: {report}"
    );
}
