//! The failover drill as a test: every fault of `braid lab active-active --drill` (a tunnel cut, a gateway
//! killed, a gateway stopped gracefully, and each repaired), with BFD 100 ms x 3 on the tunnels and between the
//! cores (BIRD) and the gateways. Asserted are correctness properties, never timings: each step restores full
//! service by itself, flows whose path did not cross the faulty element lose nothing (counted on the probes'
//! sequence numbers, flows attributed to their gateway by the cores' own forwarding), the cut really hit
//! flows, and a graceful stop loses nothing at all.

mod common;

use braid::drill::{self, DrillOptions, Fault, Step};
use braid::scenario::*;
use common::*;

const TOOLS: &[&str] = &["ip", "ping", "tc", "sysctl", "bird", "nft"];

#[test]
fn drill_each_fault_heals_itself_and_untouched_flows_lose_nothing() {
    if !netns_ready(
        "drill_each_fault_heals_itself_and_untouched_flows_lose_nothing",
        TOOLS,
    ) {
        return;
    }
    let mut topo = topology(Kind::ActiveActive, |o| {
        o.bfd = Some((100, 3));
        o.core_bfd = Some((100, 3));
    });
    let steps = drill::steps(Kind::ActiveActive, true);
    let opts = DrillOptions {
        // Light enough that a loaded 2-core CI box forwards every probe: loss then means a path broke.
        flows_per_direction: 16,
        pps: 250.0,
    };
    let d = drill::run(&mut topo, &steps, opts, &|s| eprintln!("{s}"));
    assert!(d.failed.is_none(), "drill stopped: {:?}", d.failed);
    assert_eq!(d.steps.len(), steps.len());
    for (step, r) in steps.iter().zip(&d.steps) {
        let flows = || {
            r.per_flow
                .iter()
                .filter(|f| f.lost > 0 || !f.restored)
                .map(|f| format!("{f:?}"))
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(r.flows, 32, "{}", r.step);
        assert!(
            r.per_flow.iter().all(|f| f.gateway.is_some()),
            "{}: every flow attributed to a gateway",
            r.step
        );
        assert_eq!(
            r.not_restored,
            0,
            "{}: flows not carried at the end:\n{}",
            r.step,
            flows()
        );
        assert_eq!(
            r.untouched_lost,
            0,
            "{}: untouched flows lost packets:\n{}\ndrops: {:?}",
            r.step,
            flows(),
            r.gateway_drops
        );
        match step {
            Step::Baseline | Step::Break(Fault::GatewayStop(_)) => {
                assert_eq!(r.lost, 0, "{}: lost packets:\n{}", r.step, flows())
            }
            Step::Break(_) => assert!(
                r.touched_flows > 0 && r.lost > 0,
                "{}: the fault hit no flow ({} touched, {} lost): the drill proves nothing",
                r.step,
                r.touched_flows,
                r.lost
            ),
            Step::Repair(_) => {}
        }
    }
}

/// A tunnel whose peer speaks no BFD: inbound-silence liveness (1.5 s) takes the cut tunnel out of use by
/// itself, long before the BGP hold timer (9 s); the drill's window after the cut (2.5 s) only fits the former,
/// so "every flow carried again" is the proof. Untouched flows lose nothing, and the repair brings it back.
#[test]
fn without_bfd_inbound_silence_takes_a_cut_tunnel_out_of_use() {
    if !netns_ready(
        "without_bfd_inbound_silence_takes_a_cut_tunnel_out_of_use",
        TOOLS,
    ) {
        return;
    }
    let mut topo = topology(Kind::ActiveActive, |o| {
        o.silence_ms = Some(1500);
        o.core_bfd = Some((100, 3));
    });
    let steps = [
        Step::Break(Fault::Tunnel(0)),
        Step::Repair(Fault::Tunnel(0)),
    ];
    let opts = DrillOptions {
        flows_per_direction: 16,
        pps: 250.0,
    };
    let d = drill::run(&mut topo, &steps, opts, &|s| eprintln!("{s}"));
    assert!(d.failed.is_none(), "drill stopped: {:?}", d.failed);
    let cut = &d.steps[0];
    assert!(
        cut.touched_flows > 0 && cut.lost > 0,
        "the cut hit no flow: {cut:?}"
    );
    assert_eq!(
        cut.not_restored, 0,
        "flows not moved off the silent tunnel: {:?}",
        cut.per_flow
    );
    for r in &d.steps {
        assert_eq!(
            r.untouched_lost, 0,
            "{}: {:?}\ndrops: {:?}",
            r.step, r.per_flow, r.gateway_drops
        );
        assert_eq!(r.not_restored, 0, "{}", r.step);
    }
}
