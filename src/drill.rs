//! The failover drill: faults injected into a running multipath lab, one at a time, each measured by
//! sequence-numbered probe flows in both directions between the site hosts.
//!
//! For every step the drill starts fresh probe flows (`braid lab-tool probe-source` / `probe-sink`; new source
//! ports per step, so every flow is new to the gateways' flow tables), lets them settle, and attributes every
//! flow to its path *before* the fault: the gateway is the one the sending side's core actually forwarded the
//! flow to (recorded by the core's kernel in nftables sets of source ports, one per gateway link), and the
//! tunnel is that gateway's `braid path` answer for a new flow with the flow's tuple. Then it
//! injects the fault (or its repair), waits for the network to settle, stops the probes and accounts per flow:
//! packets sent, lost, the longest outage ("blip"), and whether the flow's last packets arrived (service
//! restored by itself). A flow is *touched* when its path used the faulty element (the tunnel, the gateway at
//! either end, the ISP); for repairs, also when the core moved it to another gateway. Every other flow is
//! *untouched* and must lose nothing.
//!
//! Faults are what an operator would see, injected without touching braid: a tunnel cut is an nftables drop of
//! that tunnel's UDP at one end, an ISP failure drops everything on that uplink at every on-prem gateway (a
//! blackhole, not a link-down the gateway could notice), a gateway failure is SIGKILL, a maintenance stop is
//! SIGTERM (braid's graceful exit). Repairs remove the rule or restart the gateway.

use std::net::IpAddr;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Serialize;
use serde_json::{json, Value};

use crate::control::{self, PathQuery, Request};
use crate::netns::Netns;
use crate::probe::ProbeReport;
use crate::scenario::{Kind, Role, Topology, HOST_A, HOST_B, SINK_PORT};

/// How hard the drill probes.
#[derive(Copy, Clone, Debug)]
pub struct DrillOptions {
    /// Probe flows in each direction (A -> B and B -> A).
    pub flows_per_direction: usize,
    /// Packets per second of each flow (the blip's resolution is 1 / pps).
    pub pps: f64,
}

impl Default for DrillOptions {
    fn default() -> DrillOptions {
        DrillOptions {
            flows_per_direction: 32,
            pps: 500.0,
        }
    }
}

/// What fails.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// One tunnel (index into `Topology::tunnels`), cut at its on-prem end.
    Tunnel(usize),
    /// A gateway killed with SIGKILL.
    GatewayKill(usize),
    /// A gateway stopped with SIGTERM (graceful exit).
    GatewayStop(usize),
    /// An ISP (index into `Topology::isps`) blackholed at every on-prem gateway.
    Isp(usize),
}

/// One step of the drill.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Nothing happens: the probes' own noise floor.
    Baseline,
    Break(Fault),
    Repair(Fault),
}

/// The steps for a scenario: the full drill, or (`full = false`) the scenario's headline fault and its repair.
pub fn steps(kind: Kind, full: bool) -> Vec<Step> {
    // Tunnel 0 is onprem-1 <-> cloud-1 over ISP1 in both scenarios.
    let headline = match kind {
        Kind::DualIsp => Fault::Isp(0),
        _ => Fault::Tunnel(0),
    };
    if !full {
        return vec![Step::Break(headline), Step::Repair(headline)];
    }
    let mut v = vec![
        Step::Baseline,
        Step::Break(Fault::Tunnel(0)),
        Step::Repair(Fault::Tunnel(0)),
        Step::Break(Fault::GatewayKill(0)),
        Step::Repair(Fault::GatewayKill(0)),
    ];
    if kind == Kind::DualIsp {
        v.extend([Step::Break(Fault::Isp(0)), Step::Repair(Fault::Isp(0))]);
    }
    v.extend([
        Step::Break(Fault::GatewayStop(1)),
        Step::Repair(Fault::GatewayStop(1)),
    ]);
    v
}

impl Step {
    /// A short description naming the element.
    pub fn describe(&self, topo: &Topology) -> String {
        let tunnel = |k: usize| {
            let t = &topo.tunnels[k];
            format!(
                "tunnel {} <-> {} over {}",
                topo.gateways[t.onprem].name, topo.gateways[t.cloud].name, topo.isps[t.isp].name
            )
        };
        match *self {
            Step::Baseline => "baseline (no fault)".into(),
            Step::Break(Fault::Tunnel(k)) => format!("cut {}", tunnel(k)),
            Step::Repair(Fault::Tunnel(k)) => format!("restore {}", tunnel(k)),
            Step::Break(Fault::GatewayKill(g)) => {
                format!("kill {} (SIGKILL)", topo.gateways[g].name)
            }
            Step::Repair(Fault::GatewayKill(g)) => {
                format!("restart {} after the kill", topo.gateways[g].name)
            }
            Step::Break(Fault::GatewayStop(g)) => {
                format!("stop {} gracefully (SIGTERM)", topo.gateways[g].name)
            }
            Step::Repair(Fault::GatewayStop(g)) => {
                format!("restart {} after the stop", topo.gateways[g].name)
            }
            Step::Break(Fault::Isp(i)) => format!(
                "fail {} at every on-prem gateway (blackhole)",
                topo.isps[i].name
            ),
            Step::Repair(Fault::Isp(i)) => format!("restore {}", topo.isps[i].name),
        }
    }
}

/// Where one probe flow went: the gateway its core chose and that gateway's tunnel.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct Attribution {
    gateway: usize,
    /// Index into `Topology::tunnels`.
    tunnel: Option<usize>,
}

/// One direction of probe traffic.
struct Direction {
    label: &'static str,
    /// The sending side's role (its core and gateways carry the flow out).
    role: Role,
    src: &'static str,
    dst: &'static str,
    port: u16,
}

const DIRECTIONS: [Direction; 2] = [
    Direction {
        label: "A->B",
        role: Role::OnPrem,
        src: HOST_A,
        dst: HOST_B,
        port: SINK_PORT + 1,
    },
    Direction {
        label: "B->A",
        role: Role::Cloud,
        src: HOST_B,
        dst: HOST_A,
        port: SINK_PORT + 2,
    },
];

/// The result of one flow in one step.
#[derive(Clone, Debug, Serialize)]
pub struct FlowResult {
    pub direction: &'static str,
    pub flow: u32,
    pub sport: u16,
    pub gateway: Option<String>,
    pub tunnel: Option<String>,
    pub touched: bool,
    pub sent: u64,
    pub received: u64,
    pub lost: u64,
    pub worst_gap_ms: f64,
    /// The flow's last packets arrived: it was carried again by the end of the step.
    pub restored: bool,
}

/// The result of one step.
#[derive(Clone, Debug, Serialize)]
pub struct StepReport {
    pub step: String,
    /// How the topology finds dead paths (`TopologyOptions::liveness`).
    pub liveness: String,
    /// From the fault to the end of the probes, seconds.
    pub window_s: f64,
    pub flows: usize,
    pub touched_flows: usize,
    pub lost: u64,
    pub flows_affected: usize,
    pub worst_blip_ms: f64,
    pub untouched_lost: u64,
    pub untouched_flows_affected: usize,
    /// Flows whose last packets did not arrive.
    pub not_restored: usize,
    /// Gateway restarts: from starting the process until every tunnel of it had its SAs (with IKEv2: IKE and
    /// child SAs negotiated and installed), milliseconds.
    pub keyed_ms: Option<u64>,
    /// Repairs: from the repair until the lab converged again (every session Established, every tunnel live,
    /// both cores' ECMP routes complete), milliseconds.
    pub settled_ms: Option<u64>,
    /// Packets the gateways dropped during the step, by gateway and reason (`show tunnels` counters).
    pub gateway_drops: std::collections::BTreeMap<String, u64>,
    pub per_flow: Vec<FlowResult>,
}

impl StepReport {
    pub fn summary(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        if let Some(m) = v.as_object_mut() {
            m.remove("per_flow");
        }
        v
    }
}

/// What a drill run measured, and the step it could not complete (the network did not settle), if any.
pub struct Drill {
    pub steps: Vec<StepReport>,
    pub failed: Option<String>,
}

/// Runs `steps` on `topo`, reporting each as it completes; stops at the first step that cannot complete.
pub fn run(topo: &mut Topology, steps: &[Step], opts: DrillOptions, say: &dyn Fn(&str)) -> Drill {
    let mut out = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let r = match run_step(topo, *step, opts, 20000 + 100 * n as u16) {
            Ok(r) => r,
            Err(e) => {
                let why = format!("{}: {e:#}", step.describe(topo));
                say(&format!("    FAILED: {why}"));
                return Drill {
                    steps: out,
                    failed: Some(why),
                };
            }
        };
        say(&format!(
            "    {:<48} blip {:>6.0} ms  lost {:>6}  affected {:>2}/{:<2}  untouched lost {}{}",
            step.describe(topo),
            r.worst_blip_ms,
            r.lost,
            r.flows_affected,
            r.flows,
            r.untouched_lost,
            if r.not_restored > 0 {
                format!("  NOT RESTORED: {} flows", r.not_restored)
            } else {
                String::new()
            }
        ));
        if let Some(settled) = r.settled_ms {
            say(&format!(
                "      {}settled (sessions, tunnels live, core ECMP) after {settled} ms",
                r.keyed_ms
                    .map(|k| format!("tunnels keyed {k} ms after the start, "))
                    .unwrap_or_default()
            ));
        }
        out.push(r);
    }
    Drill {
        steps: out,
        failed: None,
    }
}

fn run_step(
    topo: &mut Topology,
    step: Step,
    opts: DrillOptions,
    sport_base: u16,
) -> Result<StepReport> {
    let liveness = topo.opts.liveness();
    // Detection budget: BFD's detection time with margin, else inbound silence's, else the hold timer.
    let bfd_budget =
        |(interval, mult): (u32, u8)| Duration::from_millis(interval as u64 * mult as u64 + 700);
    let detect = match (topo.opts.bfd, topo.opts.silence_ms) {
        (Some(b), _) => bfd_budget(b),
        (None, Some(ms)) => Duration::from_millis(ms as u64 + 1000)
            .max(topo.opts.core_bfd.map_or(Duration::ZERO, bfd_budget)),
        (None, None) => Duration::from_secs(topo.opts.hold_time as u64 + 2),
    };
    attr_install(topo)?;
    let drops_before = gateway_drops(topo);
    let probes = Probes::start(topo, opts, sport_base)?;
    std::thread::sleep(Duration::from_millis(1000));
    let before = attribute_all(topo, opts, sport_base)?;
    let at = Instant::now();
    let (mut keyed_ms, mut settled_ms) = (None, None);
    match step {
        Step::Baseline => std::thread::sleep(Duration::from_secs(2)),
        Step::Break(f) => {
            inject(topo, f)?;
            std::thread::sleep(detect);
        }
        Step::Repair(f) => {
            repair(topo, f)?;
            if let Fault::GatewayKill(g) | Fault::GatewayStop(g) = f {
                // An IKE initiator restarts its tunnels at once; its peers (responders) replace their old IKE
                // SAs with the new ones.
                keyed_ms = Some(topo.wait_keyed(g, Duration::from_secs(60))?.as_millis() as u64);
            }
            topo.wait_converged(Duration::from_secs(60))?;
            settled_ms = Some(at.elapsed().as_millis() as u64);
        }
    }
    // Let the last moves finish while the probes still run. After a repair, record anew where each flow goes
    // (the core's gateway and that gateway's tunnel): a flow the repair moved (back) onto the repaired element
    // crossed it, so it is touched too. The attribution before the step was taken while the element was
    // broken, so it cannot name those flows.
    std::thread::sleep(Duration::from_millis(1000));
    let repair = matches!(step, Step::Repair(_));
    if repair {
        // The cores' recording sets fill with every gateway a flow used: start them anew.
        core_hops_all(topo, opts, sport_base)?;
    }
    std::thread::sleep(Duration::from_millis(500));
    let window = at.elapsed().as_secs_f64();
    let after = if repair {
        Some(attribute_all(topo, opts, sport_base)?)
    } else {
        None
    };
    let reports = probes.stop()?;
    let mut drops = gateway_drops(topo);
    for (k, v) in drops.iter_mut() {
        // A gateway that restarted counts from zero.
        let was = drops_before.get(k).copied().unwrap_or(0);
        *v = if *v >= was { *v - was } else { *v };
    }
    drops.retain(|_, v| *v > 0);
    let mut per_flow = Vec::new();
    for (d, dir) in DIRECTIONS.iter().enumerate() {
        let (report, sent) = &reports[d];
        for i in 0..opts.flows_per_direction {
            let track = report.flows.get(i);
            let sent = sent.get(i).copied().unwrap_or(0);
            let received = track.map_or(0, |t| t.received);
            let attr = before[d][i];
            let moved = after.as_ref().is_some_and(|a| attr != a[d][i]);
            let touched = moved || attr.is_none_or(|a| involves(topo, step, a));
            per_flow.push(FlowResult {
                direction: dir.label,
                flow: i as u32,
                sport: sport_base + i as u16,
                gateway: attr.map(|a| topo.gateways[a.gateway].name.clone()),
                tunnel: attr.and_then(|a| a.tunnel).map(|k| {
                    let t = &topo.tunnels[k];
                    format!(
                        "{}<->{}/{}",
                        topo.gateways[t.onprem].name,
                        topo.gateways[t.cloud].name,
                        topo.isps[t.isp].name
                    )
                }),
                touched,
                sent,
                received,
                lost: sent.saturating_sub(received),
                worst_gap_ms: track.map_or(0.0, |t| t.worst_gap_ms()),
                restored: sent == 0 || track.and_then(|t| t.last_seq) == Some(sent - 1),
            });
        }
    }
    let untouched = per_flow.iter().filter(|f| !f.touched);
    Ok(StepReport {
        step: step.describe(topo),
        liveness,
        window_s: window,
        flows: per_flow.len(),
        touched_flows: per_flow.iter().filter(|f| f.touched).count(),
        lost: per_flow.iter().map(|f| f.lost).sum(),
        flows_affected: per_flow.iter().filter(|f| f.lost > 0).count(),
        worst_blip_ms: per_flow.iter().map(|f| f.worst_gap_ms).fold(0.0, f64::max),
        untouched_lost: untouched.clone().map(|f| f.lost).sum(),
        untouched_flows_affected: untouched.filter(|f| f.lost > 0).count(),
        not_restored: per_flow.iter().filter(|f| !f.restored).count(),
        keyed_ms,
        settled_ms,
        gateway_drops: drops,
        per_flow,
    })
}

/// Every running gateway's drop counters, `gateway/tunnel/reason` (and `gateway/tun/reason`) -> packets.
fn gateway_drops(topo: &Topology) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for (g, gw) in topo.gateways.iter().enumerate() {
        let Ok(v) = topo.show(g, "tunnels") else {
            continue;
        };
        let mut add = |what: &str, drops: &Value| {
            for (reason, n) in drops.as_object().into_iter().flatten() {
                if let Some(n) = n.as_u64() {
                    out.insert(format!("{}/{what}/{reason}", gw.name), n);
                }
            }
        };
        for t in v["tunnels"].as_array().into_iter().flatten() {
            add(t["name"].as_str().unwrap_or("?"), &t["drops"]);
        }
        add("tun", &v["tun"]["drops"]);
        // What the kernel dropped on the way to braid: the TUN device's queue (packets braid did not read in
        // time) and UDP receive buffers (datagrams for braid's uplink sockets, BFD, probes).
        let mut kernel = serde_json::Map::new();
        if let Ok(o) = gw.ns.ip(&["-j", "-s", "link", "show", "braid0"]) {
            let j: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            if let Some(n) = j[0]["stats64"]["tx"]["dropped"].as_u64() {
                kernel.insert("tun_queue_dropped".into(), n.into());
            }
        }
        if let Ok(o) = gw.ns.exec("cat", &["/proc/net/snmp"]) {
            let text = String::from_utf8_lossy(&o.stdout);
            let udp: Vec<&str> = text.lines().filter(|l| l.starts_with("Udp:")).collect();
            if let [names, values] = udp.as_slice() {
                for (k, v) in names.split_whitespace().zip(values.split_whitespace()) {
                    if k == "RcvbufErrors" || k == "SndbufErrors" {
                        if let Ok(n) = v.parse::<u64>() {
                            kernel.insert(format!("udp_{k}"), n.into());
                        }
                    }
                }
            }
        }
        add("kernel", &Value::Object(kernel));
    }
    out
}

/// Whether a flow that took `a` crosses the element `step` breaks or repairs.
fn involves(topo: &Topology, step: Step, a: Attribution) -> bool {
    let fault = match step {
        Step::Baseline => return false,
        Step::Break(f) | Step::Repair(f) => f,
    };
    let tunnel = a.tunnel.map(|k| &topo.tunnels[k]);
    match fault {
        Fault::Tunnel(k) => a.tunnel == Some(k),
        Fault::GatewayKill(g) | Fault::GatewayStop(g) => {
            a.gateway == g || tunnel.is_some_and(|t| t.onprem == g || t.cloud == g)
        }
        Fault::Isp(i) => tunnel.is_some_and(|t| t.isp == i),
    }
}

/// The nftables table the drill's cuts live in.
const NFT_TABLE: &str = "braid_drill";

fn nft(ns: &Netns, script: &str) -> Result<()> {
    let out = ns.exec("nft", &[script])?;
    if !out.status.success() {
        bail!(
            "nft in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A drop of everything matching `rule` in both directions (`rule_out` on output, `rule_in` on input).
fn nft_block(ns: &Netns, rule_out: &str, rule_in: &str) -> Result<()> {
    nft(
        ns,
        &format!(
            "add table inet {NFT_TABLE}; \
             add chain inet {NFT_TABLE} out {{ type filter hook output priority 0; }}; \
             add chain inet {NFT_TABLE} in {{ type filter hook input priority 0; }}; \
             add rule inet {NFT_TABLE} out {rule_out} drop; \
             add rule inet {NFT_TABLE} in {rule_in} drop"
        ),
    )
}

fn inject(topo: &mut Topology, fault: Fault) -> Result<()> {
    match fault {
        Fault::Tunnel(k) => {
            let t = topo.tunnels[k].clone();
            let local = &topo.gateways[t.onprem].uplinks[t.isp];
            let remote = &topo.gateways[t.cloud].uplinks[0];
            nft_block(
                &topo.gateways[t.onprem].ns,
                &format!("ip saddr {local} ip daddr {remote} udp dport 4500"),
                &format!("ip saddr {remote} ip daddr {local} udp sport 4500"),
            )
        }
        Fault::Isp(i) => {
            let dev = topo.isps[i].name.clone();
            for g in topo.role(Role::OnPrem) {
                nft_block(
                    &topo.gateways[g].ns,
                    &format!("oifname \"{dev}\""),
                    &format!("iifname \"{dev}\""),
                )?;
            }
            Ok(())
        }
        Fault::GatewayKill(g) => topo.stop_gateway(g, false),
        Fault::GatewayStop(g) => topo.stop_gateway(g, true),
    }
}

fn repair(topo: &mut Topology, fault: Fault) -> Result<()> {
    let flush = |ns: &Netns| nft(ns, &format!("delete table inet {NFT_TABLE}"));
    match fault {
        Fault::Tunnel(k) => flush(&topo.gateways[topo.tunnels[k].onprem].ns),
        Fault::Isp(_) => {
            for g in topo.role(Role::OnPrem) {
                flush(&topo.gateways[g].ns)?;
            }
            Ok(())
        }
        Fault::GatewayKill(g) | Fault::GatewayStop(g) => topo.restart_gateway(g),
    }
}

/// Per direction, per flow: its attribution (`None` when the core or the gateway had no path for it).
fn attribute_all(
    topo: &Topology,
    opts: DrillOptions,
    sport_base: u16,
) -> Result<Vec<Vec<Option<Attribution>>>> {
    let hops = core_hops_all(topo, opts, sport_base)?;
    let mut out = Vec::new();
    for (d, dir) in DIRECTIONS.iter().enumerate() {
        let mut v = Vec::new();
        for (i, hop) in hops[d].iter().enumerate() {
            v.push(match hop {
                Some(g) => Some(Attribution {
                    gateway: *g,
                    tunnel: gateway_tunnel(topo, *g, dir, sport_base + i as u16)?,
                }),
                None => None,
            });
        }
        out.push(v);
    }
    Ok(out)
}

/// The nftables table that records, on each core, which gateway every probe flow leaves through: one dynamic
/// set of UDP source ports per gateway link, filled by the kernel's own forwarding (so the attribution is the
/// ECMP choice actually made, not a prediction of it).
const ATTR_TABLE: &str = "braid_drill_attr";

/// Installs the recording sets and rules on both cores (replacing earlier ones).
fn attr_install(topo: &Topology) -> Result<()> {
    let (a, b) = topo
        .sites
        .as_ref()
        .context("the drill needs the site hosts")?;
    for (core, role) in [(&a.core, Role::OnPrem), (&b.core, Role::Cloud)] {
        let _ = core.exec("nft", &[&format!("delete table inet {ATTR_TABLE}")]);
        let mut script = format!(
            "add table inet {ATTR_TABLE}; add chain inet {ATTR_TABLE} record {{ type filter hook forward priority 0; }}; "
        );
        for g in topo.gateways.iter().filter(|g| g.role == role) {
            let n = g.index + 1;
            script += &format!(
                "add set inet {ATTR_TABLE} gw{n} {{ type inet_service; flags dynamic; }}; \
                 add rule inet {ATTR_TABLE} record iifname \"host\" oifname \"gw{n}\" meta l4proto udp update @gw{n} {{ udp sport }}; "
            );
        }
        nft(core, &script)?;
    }
    Ok(())
}

/// Per direction, per flow: the gateway the sending side's core forwarded it to since the last call (which
/// empties the record). `None`: not seen (or seen towards both gateways, which the drill treats alike).
fn core_hops_all(
    topo: &Topology,
    opts: DrillOptions,
    sport_base: u16,
) -> Result<Vec<Vec<Option<usize>>>> {
    let (a, b) = topo
        .sites
        .as_ref()
        .context("the drill needs the site hosts")?;
    let mut out = Vec::new();
    for dir in &DIRECTIONS {
        let core = if dir.role == Role::OnPrem {
            &a.core
        } else {
            &b.core
        };
        let mut v: Vec<Option<usize>> = vec![None; opts.flows_per_direction];
        let mut seen_twice = vec![false; opts.flows_per_direction];
        for (gi, g) in topo.gateways.iter().enumerate() {
            if g.role != dir.role {
                continue;
            }
            let set = format!("gw{}", g.index + 1);
            let listed = core.exec("nft", &["-j", "list", "set", "inet", ATTR_TABLE, &set])?;
            let j: Value = serde_json::from_slice(&listed.stdout).unwrap_or(Value::Null);
            let ports = j["nftables"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|o| o["set"]["elem"].as_array())
                .flatten()
                .filter_map(|e| e.as_u64().or_else(|| e["elem"]["val"].as_u64()));
            for p in ports {
                let Some(i) = (p as usize)
                    .checked_sub(sport_base as usize)
                    .filter(|&i| i < opts.flows_per_direction)
                else {
                    continue;
                };
                if v[i].is_some() {
                    seen_twice[i] = true;
                }
                v[i] = Some(gi);
            }
            nft(core, &format!("flush set inet {ATTR_TABLE} {set}"))?;
        }
        for (i, twice) in seen_twice.into_iter().enumerate() {
            if twice {
                v[i] = None;
            }
        }
        out.push(v);
    }
    Ok(out)
}

/// The tunnel gateway `g` sends a new flow of `dir` from `sport` on, as an index into `Topology::tunnels`.
fn gateway_tunnel(topo: &Topology, g: usize, dir: &Direction, sport: u16) -> Result<Option<usize>> {
    let req = Request {
        path: Some(PathQuery {
            src: dir.src.parse::<IpAddr>()?,
            dst: dir.dst.parse::<IpAddr>()?,
            protocol: 17,
            sport,
            dport: dir.port,
        }),
        ..Request::default()
    };
    let v = control::request(&topo.socket(g), &req)?;
    let Some(name) = v["tunnel"].as_str() else {
        return Ok(None);
    };
    Ok(topo
        .tunnels
        .iter()
        .position(|t| match topo.gateways[g].role {
            Role::OnPrem => t.onprem == g && t.onprem_name == name,
            Role::Cloud => t.cloud == g && t.cloud_name == name,
        }))
}

/// Probe flows in both directions.
struct Probes {
    /// Per direction: (source, sink).
    children: Vec<(Child, Child)>,
}

impl Probes {
    fn start(topo: &Topology, opts: DrillOptions, sport_base: u16) -> Result<Probes> {
        let (a, b) = topo
            .sites
            .as_ref()
            .context("the drill needs the site hosts")?;
        let mut children = Vec::new();
        let flows = opts.flows_per_direction.to_string();
        let pps = opts.pps.to_string();
        let base = sport_base.to_string();
        for dir in &DIRECTIONS {
            let (from, to) = if dir.role == Role::OnPrem {
                (a, b)
            } else {
                (b, a)
            };
            let listen = format!("{}:{}", dir.dst, dir.port);
            let sink = topo
                .labtool(
                    &to.host,
                    &[
                        "probe-sink",
                        "--listen",
                        &listen,
                        "--flows",
                        &flows,
                        "--secs",
                        "600",
                    ],
                )?
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .context("starting probe-sink")?;
            std::thread::sleep(Duration::from_millis(100));
            let source = topo
                .labtool(
                    &from.host,
                    &[
                        "probe-source",
                        "--from",
                        dir.src,
                        "--to",
                        &listen,
                        "--flows",
                        &flows,
                        "--pps",
                        &pps,
                        "--secs",
                        "600",
                        "--sport-base",
                        &base,
                    ],
                )?
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .context("starting probe-source")?;
            children.push((source, sink));
        }
        Ok(Probes { children })
    }

    /// Stops the sources (SIGTERM), then the sinks (SIGTERM: they drain for half a second), and returns per
    /// direction the sink's report and the source's per-flow sent counts.
    fn stop(mut self) -> Result<Vec<(ProbeReport, Vec<u64>)>> {
        for (source, _) in &self.children {
            crate::netns::sigterm(source);
        }
        let mut out = Vec::new();
        for (source, sink) in std::mem::take(&mut self.children) {
            let src = source.wait_with_output()?;
            let sent: Value = serde_json::from_slice(&src.stdout).with_context(|| {
                format!(
                    "probe-source report: {}",
                    String::from_utf8_lossy(&src.stderr).trim()
                )
            })?;
            let sent: Vec<u64> = sent["per_flow_sent"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            crate::netns::sigterm(&sink);
            let snk = sink.wait_with_output()?;
            let report: ProbeReport =
                serde_json::from_slice(&snk.stdout).context("probe-sink report")?;
            out.push((report, sent));
        }
        Ok(out)
    }
}

impl Drop for Probes {
    fn drop(&mut self) {
        for (a, b) in self.children.iter_mut() {
            for c in [a, b] {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

/// The drill's comparison table: every step under each liveness mode, side by side.
pub fn comparison(runs: &[(String, Vec<StepReport>)], say: &dyn Fn(&str)) -> Value {
    say("  drill summary: worst blip ms / packets lost / flows affected; untouched flows' loss");
    for (i, (mode, _)) in runs.iter().enumerate() {
        say(&format!("    [{}] {mode}", i + 1));
    }
    let mut header = format!("    {:<48}", "step");
    for i in 0..runs.len() {
        header += &format!(" {:>28}", format!("[{}]", i + 1));
    }
    say(&header);
    let mut rows = Vec::new();
    let steps = runs.first().map_or(0, |(_, s)| s.len());
    for n in 0..steps {
        let name = &runs[0].1[n].step;
        let mut line = format!("    {name:<48}");
        let mut cells = Vec::new();
        for (mode, r) in runs {
            let r = r.get(n);
            line += &format!(
                " {:>28}",
                r.map_or("-".to_string(), |r| format!(
                    "{:>6.0} / {:>6} / {:>2}; {}",
                    r.worst_blip_ms, r.lost, r.flows_affected, r.untouched_lost
                ))
            );
            cells.push(json!({ "liveness": mode, "result": r.map(StepReport::summary) }));
        }
        say(&line);
        rows.push(json!({ "step": name, "runs": cells }));
    }
    Value::Array(rows)
}
