//! The multipath labs: the seed article's S1 and S2 built from namespaces, veths, TUN devices and `braid run`.
//!
//! - **`active-active` (S1)**: on-prem gateways `onprem-1`, `onprem-2` (AS 65001) and cloud gateways `cloud-1`,
//!   `cloud-2` (AS 65515); 4 tunnels (every on-prem x every cloud gateway), one eBGP session inside each. Each
//!   side's gateways originate their site prefix (site A 192.0.2.0/25, site B 192.0.2.128/25). Behind each side a
//!   core router (BIRD, AS 65100 / 65200) has an eBGP session (with BFD when the tunnels have it) to each gateway
//!   of its side, learns the remote site from both and installs one ECMP route over them (L4 hash), so a gateway
//!   that dies leaves the core's table by itself; a host behind the core is the traffic endpoint.
//! - **`dual-isp` (S2)**: as S1, but each on-prem gateway has two uplinks: ISP1 (198.51.100.0/24, 1 Gbit/s) and
//!   ISP2 (203.0.113.0/24, 250 Mbit/s), emulated with `tc tbf` on both ends of the underlay veths and capped by
//!   braid itself (`cap`). 8 tunnels, 8 sessions; the ISP2 sessions prepend one AS on both sides, so ISP2 tunnels
//!   are backups that stay up and carry nothing while ISP1 is up.
//! - **`Kind::CappedPair`** (tests only): one on-prem and one cloud gateway, two uplinks, ISP2 capped at
//!   50 Mbit/s; the cloud side exports one prefix per ISP so traffic to each prefix takes exactly one uplink.
//!
//! ```text
//!  host-a -- core-a ==ECMP== onprem-1 ==isp1/isp2==\                 /== cloud-1 ==ECMP== core-b -- host-b
//!  .66       .65           \=onprem-2 ==isp1/isp2== underlay router ==  cloud-2 =/        .193      .194
//! ```
//! Addresses are TEST-NET only: the underlay is 198.51.100.0/24 (ISP1, and the cloud side) and 203.0.113.0/24
//! (ISP2), both sites live in 192.0.2.0/24, tunnel insides are 169.254.N.1/30 (on-prem) and .2 (cloud). On-prem
//! gateways pick the ISP by source address (`ip rule from ADDR`), as a multi-homed box does.
//!
//! [`Topology`] is the fixture the lab and the namespace tests (`tests/multipath_netns.rs`) share. Dropping it
//! stops the gateways and deletes every namespace (taking veths and TUN devices along) and file; names carry the
//! `braid-` prefix so `braid lab --cleanup` finds leftovers of a killed run.

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use braid_crypto::Cipher;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};

use crate::control::{self, Request};
use crate::lab::{Check, Keying, LabOptions};
use crate::netns::{self, Netns};

pub const ONPREM_ASN: u32 = 65001;
pub const CLOUD_ASN: u32 = 65515;
/// The core routers' own ASes (BIRD; eBGP to each gateway of their side).
pub const CORE_A_ASN: u32 = 65100;
pub const CORE_B_ASN: u32 = 65200;
/// Site A (on-prem), originated by the on-prem gateways.
pub const SITE_A: &str = "192.0.2.0/25";
/// Site B (cloud), originated by the cloud gateways.
pub const SITE_B: &str = "192.0.2.128/25";
/// The traffic endpoints behind the cores.
pub const HOST_A: &str = "192.0.2.66";
pub const HOST_B: &str = "192.0.2.194";
/// `CappedPair`: the on-prem gateway's own site address, and the cloud's two destinations (one per ISP).
pub const CAPPED_SRC: &str = "192.0.2.1";
pub const CAPPED_DST_ISP1: &str = "192.0.2.161";
pub const CAPPED_DST_ISP2: &str = "192.0.2.193";
/// The port of the traffic sinks.
pub const SINK_PORT: u16 = 5001;

/// Which scenario to build.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    /// S1: 2 + 2 gateways, 4 tunnels, all active.
    ActiveActive,
    /// S2: 2 + 2 gateways, two ISPs per on-prem gateway, 8 tunnels, ISP2 prepended (backup).
    DualIsp,
    /// 1 + 1 gateways, two uplinks, ISP2 capped at `TopologyOptions::capped_mbit`; one prefix per ISP.
    CappedPair,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::ActiveActive => "active-active",
            Kind::DualIsp => "dual-isp",
            Kind::CappedPair => "capped-pair",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        match s {
            "active-active" | "s1" => Some(Kind::ActiveActive),
            "dual-isp" | "s2" => Some(Kind::DualIsp),
            "capped-pair" => Some(Kind::CappedPair),
            _ => None,
        }
    }
}

/// How to build a topology.
#[derive(Clone, Debug)]
pub struct TopologyOptions {
    /// The `braid` executable to run as the gateways.
    pub binary: PathBuf,
    /// BGP hold time of every session (seconds); keepalives every third of it.
    pub hold_time: u16,
    /// `kernel_routes = true` in every gateway; when false the fixture adds the remote site routes by hand.
    pub kernel_routes: bool,
    /// `cap` on the on-prem uplinks (dual-isp: 1Gbit / 250Mbit).
    pub caps: bool,
    /// `CappedPair`: the cap of the ISP2 uplink, Mbit/s.
    pub capped_mbit: u32,
    /// Emulate the ISP line rates with `tc tbf` (dual-isp).
    pub line_rates: bool,
    /// Bound on building + BGP convergence.
    pub converge_timeout: Duration,
    /// BFD on every tunnel: (interval_ms, multiplier); `None` = hold timers only.
    pub bfd: Option<(u32, u8)>,
    /// BFD between each core (BIRD) and its gateways; `None` = hold timers only.
    pub core_bfd: Option<(u32, u8)>,
    /// Inbound-silence liveness on every tunnel (`silence_ms`); `None` turns it off (`silence_ms = 0`).
    pub silence_ms: Option<u32>,
    /// How the tunnels are keyed: IKEv2 (the default; on-prem gateways initiate, a fresh random PSK per
    /// tunnel) or manual keys (`static`, without anti-replay so that a restarted gateway is accepted).
    pub keying: Keying,
}

impl TopologyOptions {
    /// How this topology finds a dead path, in words.
    pub fn liveness(&self) -> String {
        match (self.bfd, self.silence_ms, self.core_bfd) {
            (Some((i, m)), _, _) => format!("BFD {i} ms x {m}"),
            (None, Some(ms), Some(_)) => {
                format!("no BFD in the tunnels: inbound silence {ms} ms (BFD to the cores)")
            }
            (None, Some(ms), None) => format!("no BFD: inbound silence {ms} ms"),
            (None, None, _) => format!("no BFD: BGP hold timer {} s", self.hold_time),
        }
    }
}

impl TopologyOptions {
    pub fn new(binary: PathBuf) -> TopologyOptions {
        TopologyOptions {
            binary,
            hold_time: 9,
            kernel_routes: true,
            caps: true,
            capped_mbit: 50,
            line_rates: true,
            converge_timeout: Duration::from_secs(40),
            bfd: None,
            core_bfd: None,
            silence_ms: None,
            keying: Keying::Ike,
        }
    }
}

/// One ISP of the on-prem gateways.
#[derive(Clone, Debug)]
pub struct Isp {
    /// `isp1`, `isp2`: the uplink's name in braid and the interface's name in the gateway.
    pub name: String,
    /// The first three octets of its /24.
    pub net: &'static str,
    /// `tc tbf` rate on both ends of each access veth.
    pub line_rate: Option<&'static str>,
    /// braid's `cap`.
    pub cap: Option<String>,
    /// Extra AS copies on the sessions over this ISP (both sides).
    pub prepend: u8,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Role {
    OnPrem,
    Cloud,
}

/// One gateway: its namespace and where its files are.
#[derive(Debug)]
pub struct Gateway {
    /// `onprem-1`, `cloud-2`, ...
    pub name: String,
    pub role: Role,
    /// 0-based index within its role.
    pub index: usize,
    /// Uplink addresses: per ISP for on-prem gateways, one for cloud gateways.
    pub uplinks: Vec<String>,
    /// The LAN address towards the core (also the router id).
    pub router_id: String,
    pub ns: Netns,
}

/// One tunnel, as both ends name it.
#[derive(Clone, Debug)]
pub struct TunnelSpec {
    /// Index into `Topology::gateways` of each end.
    pub onprem: usize,
    pub cloud: usize,
    /// Index into `Topology::isps`.
    pub isp: usize,
    /// The tunnel's name at the on-prem end (`cloud1-isp1`) and at the cloud end (`onprem1-isp1`).
    pub onprem_name: String,
    pub cloud_name: String,
    pub onprem_inside: String,
    pub cloud_inside: String,
    spi_up: u32,
    spi_down: u32,
}

/// The namespaces behind one side: the core router and the host.
pub struct Site {
    pub core: Netns,
    pub host: Netns,
}

impl Site {
    /// The core's address on its link to gateway `index` of its side (`base`: 0 for site A, [`B`] for B).
    fn core_addr(base: usize, index: usize) -> String {
        format!("192.0.2.{}", base + 4 * index + 1)
    }
}

/// A built scenario. See the module documentation.
pub struct Topology {
    pub kind: Kind,
    pub opts: TopologyOptions,
    children: Vec<(usize, Child)>,
    /// The cores' BIRD daemons.
    routers: Vec<Child>,
    pub isps: Vec<Isp>,
    pub gateways: Vec<Gateway>,
    pub tunnels: Vec<TunnelSpec>,
    /// Site A (on-prem) and site B (cloud); `None` for `CappedPair`.
    pub sites: Option<(Site, Site)>,
    pub underlay: Netns,
    pub dir: PathBuf,
    /// Seconds from start to converged.
    pub build_secs: f64,
    /// The gateway last restarted, and when.
    restarted_at: Option<(usize, Instant)>,
}

/// Bytes one tunnel sent during a measurement.
#[derive(Clone, Debug)]
pub struct TunnelShare {
    pub gateway: String,
    pub tunnel: String,
    pub uplink: String,
    /// Index into `Topology::isps` (0 on the cloud side).
    pub isp: usize,
    pub tx_bytes: u64,
    /// Fraction of all bytes the measured gateways sent.
    pub share: f64,
}

/// The result of [`Topology::run_flows`].
#[derive(Clone, Debug)]
pub struct Traffic {
    pub flows: usize,
    pub secs: f64,
    /// Each flow's pace (0: unpaced).
    pub mbit_per_flow: f64,
    /// The flow source's JSON report (`bytes`, `gbps`, `connected`, `per_flow`, `errors`).
    pub source: Value,
    /// The sink's JSON report (`bytes`, `connections`).
    pub sink: Value,
    /// Per tunnel of the sending (on-prem) gateways, in topology order.
    pub tunnels: Vec<TunnelShare>,
}

impl Traffic {
    pub fn total_tunnel_bytes(&self) -> u64 {
        self.tunnels.iter().map(|t| t.tx_bytes).sum()
    }

    /// The share of all bytes carried by tunnels over ISP `isp`.
    pub fn isp_share(&self, isp: usize) -> f64 {
        self.tunnels
            .iter()
            .filter(|t| t.isp == isp)
            .map(|t| t.share)
            .sum()
    }

    pub fn json(&self) -> Value {
        let per_flow: Vec<u64> = self.source["per_flow"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        json!({
            "per_flow_bytes_min": per_flow.iter().min(),
            "per_flow_bytes_max": per_flow.iter().max(),
            "flows": self.flows,
            "seconds": self.secs,
            "mbit_per_flow": self.mbit_per_flow,
            "connected": self.source["connected"],
            "bytes_sent": self.source["bytes"],
            "bytes_received": self.sink["bytes"],
            "gbps": self.source["gbps"],
            "errors": self.source["errors"],
            "tunnels": self.tunnels.iter().map(|t| json!({
                "gateway": t.gateway, "tunnel": t.tunnel, "uplink": t.uplink, "tx_bytes": t.tx_bytes,
                "share": t.share,
            })).collect::<Vec<_>>(),
        })
    }
}

/// What one gateway's routing table should hold for one remote prefix.
#[derive(Clone, Debug)]
pub struct ExpectedRoute {
    pub prefix: String,
    pub active: Vec<String>,
    pub backups: Vec<String>,
}

fn random_hex(rng: &SystemRandom, n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    rng.fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let s = b.iter().map(|x| format!("{x:02x}")).collect();
    zeroize::Zeroize::zeroize(&mut b);
    Ok(s)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

fn quoted(list: &[&str]) -> String {
    list.iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The third octet base of site B's addresses.
const B: u8 = 128;

impl Topology {
    /// Builds the namespaces and links, writes configs with fresh keys, starts every gateway and waits (bounded
    /// by `converge_timeout`) until every BGP session is Established, every gateway holds every remote path it
    /// should, and the remote site routes are in each gateway's kernel table.
    pub fn build(kind: Kind, opts: &TopologyOptions) -> Result<Topology> {
        let started = Instant::now();
        let underlay = Netns::new("underlay")?;
        let dir = std::env::temp_dir().join(format!(
            "{}{}",
            netns::PREFIX,
            underlay.name().trim_start_matches(netns::PREFIX)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let mbit = |m: u32| {
            if m % 1000 == 0 {
                format!("{}Gbit", m / 1000)
            } else {
                format!("{m}Mbit")
            }
        };
        let (onprem, cloud, isps) = match kind {
            Kind::ActiveActive => (
                2,
                2,
                vec![Isp {
                    name: "isp1".into(),
                    net: "198.51.100",
                    line_rate: None,
                    cap: None,
                    prepend: 0,
                }],
            ),
            Kind::DualIsp => (
                2,
                2,
                vec![
                    Isp {
                        name: "isp1".into(),
                        net: "198.51.100",
                        line_rate: opts.line_rates.then_some("1gbit"),
                        cap: opts.caps.then(|| mbit(1000)),
                        prepend: 0,
                    },
                    Isp {
                        name: "isp2".into(),
                        net: "203.0.113",
                        line_rate: opts.line_rates.then_some("250mbit"),
                        cap: opts.caps.then(|| mbit(250)),
                        prepend: 1,
                    },
                ],
            ),
            Kind::CappedPair => (
                1,
                1,
                vec![
                    Isp {
                        name: "isp1".into(),
                        net: "198.51.100",
                        line_rate: None,
                        cap: None,
                        prepend: 0,
                    },
                    Isp {
                        name: "isp2".into(),
                        net: "203.0.113",
                        line_rate: None,
                        cap: Some(mbit(opts.capped_mbit)),
                        prepend: 0,
                    },
                ],
            ),
        };
        let mut gateways = Vec::new();
        for j in 0..onprem {
            let uplinks = isps
                .iter()
                .map(|i| format!("{}.{}", i.net, 4 * j + 2))
                .collect();
            gateways.push(Gateway {
                name: format!("onprem-{}", j + 1),
                role: Role::OnPrem,
                index: j,
                uplinks,
                router_id: format!("192.0.2.{}", 4 * j + 2),
                ns: Netns::new(&format!("onprem{}", j + 1))?,
            });
        }
        for k in 0..cloud {
            gateways.push(Gateway {
                name: format!("cloud-{}", k + 1),
                role: Role::Cloud,
                index: k,
                uplinks: vec![format!("198.51.100.{}", 64 + 4 * k + 2)],
                router_id: format!("192.0.2.{}", B as usize + 4 * k + 2),
                ns: Netns::new(&format!("cloud{}", k + 1))?,
            });
        }
        let sites = if kind == Kind::CappedPair {
            None
        } else {
            Some((
                Site {
                    core: Netns::new("core-a")?,
                    host: Netns::new("host-a")?,
                },
                Site {
                    core: Netns::new("core-b")?,
                    host: Netns::new("host-b")?,
                },
            ))
        };
        let rng = SystemRandom::new();
        let mut spis = HashSet::new();
        let mut spi = || -> Result<u32> {
            loop {
                let mut b = [0u8; 4];
                rng.fill(&mut b)
                    .map_err(|_| anyhow::anyhow!("no randomness"))?;
                let s = u32::from_be_bytes(b) | 0x0100_0000;
                if spis.insert(s) {
                    return Ok(s);
                }
            }
        };
        let mut tunnels = Vec::new();
        for j in 0..onprem {
            for k in 0..cloud {
                for (i, isp) in isps.iter().enumerate() {
                    let n = tunnels.len() + 1;
                    tunnels.push(TunnelSpec {
                        onprem: j,
                        cloud: onprem + k,
                        isp: i,
                        onprem_name: format!("cloud{}-{}", k + 1, isp.name),
                        cloud_name: format!("onprem{}-{}", j + 1, isp.name),
                        onprem_inside: format!("169.254.{n}.1"),
                        cloud_inside: format!("169.254.{n}.2"),
                        spi_up: spi()?,
                        spi_down: spi()?,
                    });
                }
            }
        }
        let mut topo = Topology {
            kind,
            opts: opts.clone(),
            children: Vec::new(),
            routers: Vec::new(),
            isps,
            gateways,
            tunnels,
            sites,
            underlay,
            dir,
            build_secs: 0.0,
            restarted_at: None,
        };
        topo.wire()?;
        topo.write_configs(&rng)?;
        topo.start_cores()?;
        // The cloud side (IKE responders) first, so that the on-prem gateways' first IKE_SA_INIT finds them
        // listening instead of waiting out a retransmission timeout (4 s).
        for role in [Role::Cloud, Role::OnPrem] {
            for g in topo.role(role) {
                topo.start(g)?;
            }
            for g in topo.role(role) {
                topo.wait_ready(g, Duration::from_secs(10))?;
            }
        }
        topo.wait_converged(opts.converge_timeout)?;
        if !opts.kernel_routes {
            for g in &topo.gateways {
                for r in topo.remote_aggregates(g.role) {
                    g.ns.ip(&["route", "replace", r, "dev", "braid0"])?;
                }
            }
        }
        topo.build_secs = started.elapsed().as_secs_f64();
        Ok(topo)
    }

    /// Namespaces of the topology, for sysctls.
    fn all_ns(&self) -> Vec<&Netns> {
        let mut v: Vec<&Netns> = self.gateways.iter().map(|g| &g.ns).collect();
        v.push(&self.underlay);
        if let Some((a, b)) = &self.sites {
            v.extend([&a.core, &a.host, &b.core, &b.host]);
        }
        v
    }

    /// Builds the links, addresses, routes, line rates and sysctls.
    fn wire(&self) -> Result<()> {
        let ul = &self.underlay;
        for ns in self.all_ns() {
            ns.sysctl("net.ipv4.conf.all.rp_filter", "0")?;
            ns.sysctl("net.ipv4.conf.default.rp_filter", "0")?;
        }
        ul.sysctl("net.ipv4.ip_forward", "1")?;
        for g in &self.gateways {
            let gw = &g.ns;
            gw.sysctl("net.ipv4.ip_forward", "1")?;
            match g.role {
                Role::OnPrem => {
                    let j = g.index;
                    for (i, isp) in self.isps.iter().enumerate() {
                        let (dev, ul_dev) = (&isp.name, format!("o{}i{}", j + 1, i + 1));
                        netns::veth(ul, &ul_dev, gw, dev)?;
                        let ul_addr = format!("{}.{}", isp.net, 4 * j + 1);
                        let addr = &g.uplinks[i];
                        ip(ul, &format!("addr add {ul_addr}/30 dev {ul_dev}"))?;
                        ip(gw, &format!("addr add {addr}/30 dev {dev}"))?;
                        // The ISP is chosen by source address, as on a multi-homed box.
                        let table = 101 + i;
                        ip(gw, &format!("rule add from {addr} table {table}"))?;
                        ip(
                            gw,
                            &format!(
                                "route add 198.51.100.64/26 via {ul_addr} dev {dev} table {table}"
                            ),
                        )?;
                        if let Some(rate) = isp.line_rate {
                            tbf(gw, dev, rate)?;
                            tbf(ul, &ul_dev, rate)?;
                        }
                    }
                }
                Role::Cloud => {
                    let ul_dev = format!("c{}", g.index + 1);
                    netns::veth(ul, &ul_dev, gw, "wan")?;
                    let ul_addr = format!("198.51.100.{}", 64 + 4 * g.index + 1);
                    ip(ul, &format!("addr add {ul_addr}/30 dev {ul_dev}"))?;
                    ip(gw, &format!("addr add {}/30 dev wan", g.uplinks[0]))?;
                    ip(gw, &format!("route add 198.51.100.0/24 via {ul_addr}"))?;
                    ip(gw, &format!("route add 203.0.113.0/24 via {ul_addr}"))?;
                }
            }
        }
        match &self.sites {
            Some((a, b)) => {
                self.wire_site(a, Role::OnPrem)?;
                self.wire_site(b, Role::Cloud)?;
            }
            None => {
                // CappedPair: the sites are addresses on the gateways' loopbacks.
                ip(
                    &self.gateways[0].ns,
                    &format!("addr add {CAPPED_SRC}/32 dev lo"),
                )?;
                for d in [CAPPED_DST_ISP1, CAPPED_DST_ISP2] {
                    ip(&self.gateways[1].ns, &format!("addr add {d}/32 dev lo"))?;
                }
            }
        }
        for ns in self.all_ns() {
            // Interfaces moved in from the root namespace keep their own rp_filter; clear them all.
            let clear = "for f in /proc/sys/net/ipv4/conf/*/rp_filter; do echo 0 > $f; done";
            let out = ns.exec("sh", &["-c", clear])?;
            if !out.status.success() {
                bail!(
                    "clearing rp_filter in {}: {}",
                    ns.name(),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    /// Core: one /30 to each gateway of its side and the host network. The route to the remote site comes from
    /// BGP: BIRD learns it from every gateway of its side and installs one ECMP route over them (L4 hash), so a
    /// gateway that dies or withdraws leaves the core's table (by BFD, else the hold timer). Site links use MTU
    /// 1400, below the tunnels' 1438, so TCP never needs PMTU discovery.
    fn wire_site(&self, site: &Site, role: Role) -> Result<()> {
        let base = if role == Role::OnPrem { 0 } else { B as usize };
        let own = if role == Role::OnPrem { SITE_A } else { SITE_B };
        let (core, host) = (&site.core, &site.host);
        core.sysctl("net.ipv4.ip_forward", "1")?;
        core.sysctl("net.ipv4.fib_multipath_hash_policy", "1")?;
        for g in self.gateways.iter().filter(|g| g.role == role) {
            let core_dev = format!("gw{}", g.index + 1);
            netns::veth(core, &core_dev, &g.ns, "lan")?;
            let core_addr = Site::core_addr(base, g.index);
            ip(core, &format!("link set {core_dev} mtu 1400"))?;
            ip(core, &format!("addr add {core_addr}/30 dev {core_dev}"))?;
            ip(&g.ns, "link set lan mtu 1400")?;
            ip(&g.ns, &format!("addr add {}/30 dev lan", g.router_id))?;
            ip(&g.ns, &format!("route add {own} via {core_addr}"))?;
        }
        netns::veth(core, "host", host, "eth0")?;
        let core_addr = format!("192.0.2.{}", base + 65);
        ip(core, "link set host mtu 1400")?;
        ip(core, &format!("addr add {core_addr}/27 dev host"))?;
        ip(host, "link set eth0 mtu 1400")?;
        ip(host, &format!("addr add 192.0.2.{}/27 dev eth0", base + 66))?;
        ip(host, &format!("route add 192.0.2.0/24 via {core_addr}"))?;
        Ok(())
    }

    /// The BIRD configuration of the core of `role`'s site: one eBGP session to each gateway of that side
    /// (with BFD when the tunnels have it), import everything, export nothing, and merge equal paths into one
    /// ECMP kernel route.
    fn core_config(&self, role: Role) -> String {
        let (base, asn, gw_asn) = match role {
            Role::OnPrem => (0, CORE_A_ASN, ONPREM_ASN),
            Role::Cloud => (B as usize, CORE_B_ASN, CLOUD_ASN),
        };
        let mut s = format!(
            "# written by `braid lab {}`\nrouter id 192.0.2.{};\nprotocol device {{ scan time 10; }}\n\
             protocol kernel {{ ipv4 {{ import none; export all; }}; merge paths on; }}\n",
            self.kind.name(),
            base + 65
        );
        if let Some((interval, mult)) = self.opts.core_bfd {
            s += &format!(
                "protocol bfd {{ interface \"gw*\" {{ interval {interval} ms; multiplier {mult}; }}; }}\n"
            );
        }
        for g in self.gateways.iter().filter(|g| g.role == role) {
            s += &format!(
                "protocol bgp gw{n} {{ local {local} as {asn}; neighbor {peer} as {gw_asn}; hold time {hold}; \
                 keepalive time {keep}; connect retry time 1; error wait time 1, 4;{bfd}\n  \
                 ipv4 {{ import all; export none; }}; }}\n",
                n = g.index + 1,
                local = Site::core_addr(base, g.index),
                peer = g.router_id,
                hold = self.opts.hold_time,
                keep = (self.opts.hold_time / 3).max(1),
                bfd = if self.opts.core_bfd.is_some() { " bfd on;" } else { "" },
            );
        }
        s
    }

    /// Starts BIRD in each core namespace.
    fn start_cores(&mut self) -> Result<()> {
        let Some((a, b)) = &self.sites else {
            return Ok(());
        };
        if !netns::have("bird") {
            bail!("`bird` is not installed (apt-get install bird2): the labs' core routers run it");
        }
        let mut routers = Vec::new();
        for (site, role, tag) in [(a, Role::OnPrem, "core-a"), (b, Role::Cloud, "core-b")] {
            let conf = self.dir.join(format!("{tag}.bird.conf"));
            std::fs::write(&conf, self.core_config(role))?;
            let sock = self.dir.join(format!("{tag}.bird.ctl"));
            let log = std::fs::File::create(self.dir.join(format!("{tag}.bird.log")))?;
            let child = site
                .core
                .command(
                    "bird",
                    &[
                        "-f",
                        "-c",
                        conf.to_str().context("path is not UTF-8")?,
                        "-s",
                        sock.to_str().context("path is not UTF-8")?,
                    ],
                )
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting bird")?;
            routers.push(child);
        }
        self.routers = routers;
        Ok(())
    }

    /// The gateways the core of `role`'s site routes the remote site through now (its kernel ECMP route).
    pub fn core_next_hops(&self, role: Role) -> Result<Vec<String>> {
        let (a, b) = self.sites.as_ref().context("no sites")?;
        let (core, remote) = match role {
            Role::OnPrem => (&a.core, SITE_B),
            Role::Cloud => (&b.core, SITE_A),
        };
        let out = core.ip(&["route", "show", "exact", remote])?;
        let text = String::from_utf8_lossy(&out.stdout);
        let mut hops: Vec<String> = text
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .filter(|w| w[0] == "via")
            .map(|w| w[1].to_string())
            .collect();
        hops.sort();
        Ok(hops)
    }

    /// The remote prefixes a gateway of `role` routes into its TUN device.
    fn remote_aggregates(&self, role: Role) -> Vec<&'static str> {
        match (self.kind, role) {
            (Kind::CappedPair, Role::OnPrem) => vec!["192.0.2.160/27", "192.0.2.192/27"],
            (_, Role::OnPrem) => vec![SITE_B],
            (_, Role::Cloud) => vec![SITE_A],
        }
    }

    /// Writes every gateway's configuration and the tunnels' secrets (mode 0600, fresh from the OS's RNG): a
    /// 32-octet PSK per tunnel (`t{n}.psk`, as `0x` hex) with IKEv2, two 36-octet keys per tunnel with manual
    /// keying.
    fn write_configs(&self, rng: &SystemRandom) -> Result<()> {
        for n in 0..self.tunnels.len() {
            match self.opts.keying {
                Keying::Ike => write_private(
                    &self.dir.join(format!("t{n}.psk")),
                    &format!("0x{}", random_hex(rng, 32)?),
                )?,
                Keying::Static => {
                    for way in ["up", "down"] {
                        write_private(
                            &self.dir.join(format!("t{n}.{way}.key")),
                            &random_hex(rng, 36)?,
                        )?;
                    }
                }
            }
        }
        for (gi, g) in self.gateways.iter().enumerate() {
            std::fs::write(self.config(gi), self.gateway_config(gi, g))?;
        }
        Ok(())
    }

    fn gateway_config(&self, gi: usize, g: &Gateway) -> String {
        let onprem = g.role == Role::OnPrem;
        let mut s = format!(
            "# written by `braid lab {}`\n[gateway]\nname = \"{}\"\nasn = {}\nrouter_id = \"{}\"\ntun = \"braid0\"\ncontrol_socket = \"{}\"\n",
            self.kind.name(),
            g.name,
            if onprem { ONPREM_ASN } else { CLOUD_ASN },
            g.router_id,
            self.socket(gi).display(),
        );
        if self.opts.kernel_routes {
            s += "kernel_routes = true\n";
        }
        for (i, local) in g.uplinks.iter().enumerate() {
            let name = if onprem {
                &self.isps[i].name
            } else {
                "internet"
            };
            s += &format!("\n[[uplink]]\nname = \"{name}\"\nlocal = \"{local}\"\n");
            if let (true, Some(cap)) = (onprem, &self.isps[i].cap) {
                s += &format!("cap = \"{cap}\"\n");
            }
        }
        let (networks, import, remote_asn) = match (self.kind, g.role) {
            (Kind::CappedPair, Role::Cloud) => (
                vec!["192.0.2.160/27", "192.0.2.192/27"],
                format!("{SITE_A} le 32"),
                ONPREM_ASN,
            ),
            (_, Role::OnPrem) => (vec![SITE_A], format!("{SITE_B} le 32"), CLOUD_ASN),
            (_, Role::Cloud) => (vec![SITE_B], format!("{SITE_A} le 32"), ONPREM_ASN),
        };
        s += &format!(
            "\n[bgp]\nnetworks = [{}]\nmax_paths = 8\n",
            quoted(&networks)
        );
        for (n, t) in self.tunnels.iter().enumerate() {
            let (name, inside, remote, uplink, out_key, in_key, spi_out, spi_in) = if onprem {
                if t.onprem != gi {
                    continue;
                }
                (
                    &t.onprem_name,
                    &t.onprem_inside,
                    &self.gateways[t.cloud].uplinks[0],
                    self.isps[t.isp].name.as_str(),
                    "up",
                    "down",
                    t.spi_up,
                    t.spi_down,
                )
            } else {
                if t.cloud != gi {
                    continue;
                }
                (
                    &t.cloud_name,
                    &t.cloud_inside,
                    &self.gateways[t.onprem].uplinks[t.isp],
                    "internet",
                    "down",
                    "up",
                    t.spi_down,
                    t.spi_up,
                )
            };
            s += &format!(
                "\n[[tunnel]]\nname = \"{name}\"\nuplink = \"{uplink}\"\nremote = \"{remote}:4500\"\ninside = \"{inside}/30\"\n"
            );
            match self.opts.keying {
                // The on-prem side initiates (and re-initiates after a restart or a failure, with backoff); the
                // cloud side answers, as a cloud VPN gateway does. A restarted gateway negotiates fresh SAs, so
                // anti-replay stays on (the default window).
                Keying::Ike => {
                    s += &format!("ike = {{ psk_file = \"t{n}.psk\", initiator = {onprem} }}\n")
                }
                Keying::Static => {
                    s += &format!(
                        "static = {{ cipher = \"{}\", spi_out = \"{spi_out:#010x}\", spi_in = \"{spi_in:#010x}\", key_out_file = \"t{n}.{out_key}.key\", key_in_file = \"t{n}.{in_key}.key\" }}\n",
                        Cipher::Aes256Gcm16.name()
                    );
                    // A manually keyed SA's sequence counter starts again at 1 when its sender restarts, and
                    // the other end's anti-replay window would then refuse it until the keys change (RFC 4303
                    // 3.3.3). The drill restarts gateways, so manual-key tunnels run without anti-replay.
                    s += "replay_window = 0\n";
                }
            }
            if let Some((interval, mult)) = self.opts.bfd {
                s += &format!(
                    "bfd = {{ interval_ms = {interval}, multiplier = {mult}, hold_down_ms = 1000 }}\n"
                );
            }
            s += &format!("silence_ms = {}\n", self.opts.silence_ms.unwrap_or(0));
            let export = match (self.kind, g.role) {
                // One prefix per ISP, so each destination takes exactly one uplink.
                (Kind::CappedPair, Role::Cloud) => networks[t.isp].to_string(),
                _ => networks[0].to_string(),
            };
            s += &format!(
                "\n[[bgp.neighbor]]\ntunnel = \"{name}\"\nremote_asn = {remote_asn}\nhold_time = {}\nconnect_retry = 1\nprepend = {}\nimport = [\"{import}\"]\nexport = [\"{export}\"]\n",
                self.opts.hold_time, self.isps[t.isp].prepend
            );
        }
        if self.sites.is_some() {
            // The site's core learns the remote site from every gateway (its ECMP), and forgets a gateway that
            // goes away (BFD, else the hold timer).
            let (base, core_asn) = match g.role {
                Role::OnPrem => (0, CORE_A_ASN),
                Role::Cloud => (B as usize, CORE_B_ASN),
            };
            s += &format!(
                "\n[[bgp.neighbor]]\naddress = \"{}\"\nremote_asn = {core_asn}\nhold_time = {}\nconnect_retry = 1\nimport = []\nexport = [{}]\n",
                Site::core_addr(base, g.index),
                self.opts.hold_time,
                quoted(&self.remote_aggregates(g.role)),
            );
            if let Some((interval, mult)) = self.opts.core_bfd {
                s += &format!(
                    "bfd = {{ interval_ms = {interval}, multiplier = {mult}, hold_down_ms = 1000 }}\n"
                );
            }
        }
        s
    }

    pub fn config(&self, g: usize) -> PathBuf {
        self.dir.join(format!("{}.toml", self.gateways[g].name))
    }

    pub fn socket(&self, g: usize) -> PathBuf {
        self.dir.join(format!("{}.sock", self.gateways[g].name))
    }

    pub fn log(&self, g: usize) -> PathBuf {
        self.dir.join(format!("{}.log", self.gateways[g].name))
    }

    /// Index of the gateway named `name`.
    pub fn gateway(&self, name: &str) -> Option<usize> {
        self.gateways.iter().position(|g| g.name == name)
    }

    /// Indices of the gateways of one role.
    pub fn role(&self, role: Role) -> Vec<usize> {
        (0..self.gateways.len())
            .filter(|&g| self.gateways[g].role == role)
            .collect()
    }

    /// Starts `braid run` for gateway `g` inside its namespace, logging to its log file.
    pub fn start(&mut self, g: usize) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(g))?;
        let cfg = self.config(g);
        let bin = self.opts.binary.clone();
        let child = self.gateways[g]
            .ns
            .command(
                bin.to_str().context("binary path is not UTF-8")?,
                &["run", "-c", cfg.to_str().unwrap_or_default()],
            )
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting braid run")?;
        self.children.push((g, child));
        Ok(())
    }

    /// Stops gateway `g`: SIGTERM (its graceful exit, waited for up to 10 s) or SIGKILL.
    pub fn stop_gateway(&mut self, g: usize, graceful: bool) -> Result<()> {
        let i = self
            .children
            .iter()
            .position(|(x, _)| *x == g)
            .with_context(|| format!("gateway {} is not running", self.gateways[g].name))?;
        let (_, mut child) = self.children.remove(i);
        if graceful {
            if netns::terminate(&mut child, Duration::from_secs(10)).is_none() {
                bail!(
                    "gateway {} did not exit within 10 s of SIGTERM",
                    self.gateways[g].name
                );
            }
        } else {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts gateway `g` again (after [`Topology::stop_gateway`]) and waits until it answers.
    pub fn restart_gateway(&mut self, g: usize) -> Result<()> {
        self.restarted_at = Some((g, Instant::now()));
        self.start(g)?;
        self.wait_ready(g, Duration::from_secs(10))
    }

    /// Waits until every tunnel of gateway `g` has its SAs in place (an outbound SA, and with IKEv2 an
    /// established IKE SA) and returns the time since its last [`Topology::restart_gateway`] (else since the
    /// call).
    pub fn wait_keyed(&mut self, g: usize, timeout: Duration) -> Result<Duration> {
        let since = match self.restarted_at {
            Some((r, at)) if r == g => at,
            _ => Instant::now(),
        };
        let deadline = Instant::now() + timeout;
        loop {
            let keyed = self.show(g, "tunnels").is_ok_and(|v| {
                v["tunnels"].as_array().is_some_and(|ts| {
                    ts.iter().all(|t| {
                        t["spi_out"].is_string()
                            && (t["ike"].is_null() || t["ike"]["state"] == "established")
                    })
                })
            });
            if keyed {
                return Ok(since.elapsed());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "gateway {}'s tunnels were not keyed within {timeout:?}:\n{}",
                    self.gateways[g].name,
                    self.log_tail(g)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_ready(&mut self, g: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.show(g, "tunnels").is_ok() {
                return Ok(());
            }
            self.check_alive()?;
            if Instant::now() > deadline {
                bail!(
                    "gateway {} did not come up in {timeout:?}:\n{}",
                    self.gateways[g].name,
                    self.log_tail(g)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fails if a gateway process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        for (g, c) in self.children.iter_mut() {
            if let Some(status) = c.try_wait()? {
                let g = *g;
                bail!(
                    "gateway {} exited with {status}:\n{}",
                    self.gateways[g].name,
                    self.log_tail(g)
                );
            }
        }
        Ok(())
    }

    /// The last lines of a gateway's log.
    pub fn log_tail(&self, g: usize) -> String {
        let text = std::fs::read_to_string(self.log(g)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `braid show WHAT --json` of gateway `g`.
    pub fn show(&self, g: usize, what: &str) -> Result<Value> {
        control::request(&self.socket(g), &Request::show(what))
    }

    /// What gateway `g`'s table should hold for each remote prefix: ISPs without prepend are active members,
    /// prepended ones backups.
    pub fn expected_routes(&self, g: usize) -> Vec<ExpectedRoute> {
        let gw = &self.gateways[g];
        let mine: Vec<&TunnelSpec> = self
            .tunnels
            .iter()
            .filter(|t| match gw.role {
                Role::OnPrem => t.onprem == g,
                Role::Cloud => t.cloud == g,
            })
            .collect();
        let name = |t: &TunnelSpec| match gw.role {
            Role::OnPrem => t.onprem_name.clone(),
            Role::Cloud => t.cloud_name.clone(),
        };
        let split = |ts: &[&TunnelSpec]| -> (Vec<String>, Vec<String>) {
            let active = ts
                .iter()
                .filter(|t| self.isps[t.isp].prepend == 0)
                .map(|t| name(t))
                .collect();
            let backups = ts
                .iter()
                .filter(|t| self.isps[t.isp].prepend > 0)
                .map(|t| name(t))
                .collect();
            (active, backups)
        };
        match (self.kind, gw.role) {
            (Kind::CappedPair, Role::OnPrem) => ["192.0.2.160/27", "192.0.2.192/27"]
                .iter()
                .enumerate()
                .map(|(i, p)| {
                    let ts: Vec<&TunnelSpec> =
                        mine.iter().copied().filter(|t| t.isp == i).collect();
                    let (active, backups) = split(&ts);
                    ExpectedRoute {
                        prefix: p.to_string(),
                        active,
                        backups,
                    }
                })
                .collect(),
            _ => {
                let (active, backups) = split(&mine);
                vec![ExpectedRoute {
                    prefix: self.remote_aggregates(gw.role)[0].to_string(),
                    active,
                    backups,
                }]
            }
        }
    }

    /// `(neighbor label, state)` of every BGP session of gateway `g`.
    pub fn sessions(&self, g: usize) -> Result<Vec<(String, String)>> {
        let v = self.show(g, "bgp")?;
        Ok(v["neighbors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|n| {
                        (
                            n["label"].as_str().unwrap_or("?").to_string(),
                            n["state"].as_str().unwrap_or("?").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The route to `prefix` at gateway `g`: `(next_hops, backups)` as tunnel names, or `None`.
    pub fn route(&self, g: usize, prefix: &str) -> Result<Option<(Vec<String>, Vec<String>)>> {
        let v = self.show(g, "routes")?;
        let names = |a: &Value| -> Vec<String> {
            let mut v: Vec<String> = a
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|h| h["tunnel"].as_str().unwrap_or("?").to_string())
                        .collect()
                })
                .unwrap_or_default();
            v.sort();
            v
        };
        Ok(v["routes"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["prefix"] == prefix))
            .map(|r| (names(&r["next_hops"]), names(&r["backups"]))))
    }

    /// Whether `prefix` is in gateway `g`'s kernel table via braid0.
    pub fn kernel_route(&self, g: usize, prefix: &str) -> bool {
        self.gateways[g]
            .ns
            .ip(&["route", "show", "exact", prefix])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains("braid0"))
            .unwrap_or(false)
    }

    /// Waits until every session is Established, every gateway holds every expected path (active or backup)
    /// for its remote prefixes and, with `kernel_routes`, the kernel routes are in place.
    pub fn wait_converged(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let waiting = self.not_converged();
            match waiting {
                Ok(None) => return Ok(()),
                Ok(Some(why)) | Err(why) if Instant::now() > deadline => {
                    let logs: String = (0..self.gateways.len())
                        .map(|g| {
                            format!("--- {} ---\n{}\n", self.gateways[g].name, self.log_tail(g))
                        })
                        .collect();
                    bail!("not converged within {timeout:?}: {why}\n{logs}");
                }
                _ => {}
            }
            self.check_alive()?;
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn not_converged(&self) -> std::result::Result<Option<String>, String> {
        for g in 0..self.gateways.len() {
            let name = &self.gateways[g].name;
            for (n, state) in self.sessions(g).map_err(|e| e.to_string())? {
                if state != "Established" {
                    return Ok(Some(format!("{name}: session {n} is {state}")));
                }
            }
            for e in self.expected_routes(g) {
                let want = e.active.len() + e.backups.len();
                match self.route(g, &e.prefix).map_err(|e| e.to_string())? {
                    Some((a, b)) if a.len() + b.len() >= want => {}
                    other => {
                        return Ok(Some(format!(
                            "{name}: {} has {other:?}, want {want} paths",
                            e.prefix
                        )))
                    }
                }
            }
            if self.opts.kernel_routes {
                for p in self.remote_aggregates(self.gateways[g].role) {
                    if !self.kernel_route(g, p) {
                        return Ok(Some(format!("{name}: no kernel route {p} via braid0")));
                    }
                }
            }
        }
        for g in 0..self.gateways.len() {
            // With BFD, a tunnel carries traffic once its session is Up past the hold-down.
            let v = self.show(g, "tunnels").map_err(|e| e.to_string())?;
            for t in v["tunnels"].as_array().into_iter().flatten() {
                if t["live"] == false {
                    return Ok(Some(format!(
                        "{}: tunnel {} is not live yet",
                        self.gateways[g].name,
                        t["name"].as_str().unwrap_or("?")
                    )));
                }
            }
        }
        if self.sites.is_some() {
            for role in [Role::OnPrem, Role::Cloud] {
                let want: Vec<String> = self
                    .gateways
                    .iter()
                    .filter(|g| g.role == role)
                    .map(|g| g.router_id.clone())
                    .collect();
                let have = self.core_next_hops(role).map_err(|e| e.to_string())?;
                if have.len() != want.len() {
                    return Ok(Some(format!(
                        "the {role:?} core routes via {have:?}, want all of {want:?}"
                    )));
                }
            }
        }
        Ok(None)
    }

    /// `tx_bytes` of every tunnel of the on-prem gateways, in topology order (`share` left at 0).
    pub fn onprem_tx(&self) -> Result<Vec<TunnelShare>> {
        let mut out = Vec::new();
        for g in self.role(Role::OnPrem) {
            let v = self.show(g, "tunnels")?;
            for t in v["tunnels"].as_array().context("tunnels")? {
                let uplink = t["uplink"].as_str().unwrap_or("?").to_string();
                out.push(TunnelShare {
                    gateway: self.gateways[g].name.clone(),
                    tunnel: t["name"].as_str().unwrap_or("?").to_string(),
                    isp: self.isps.iter().position(|i| i.name == uplink).unwrap_or(0),
                    uplink,
                    tx_bytes: t["tx_bytes"].as_u64().unwrap_or(0),
                    share: 0.0,
                });
            }
        }
        Ok(out)
    }

    /// A `braid lab-tool` command in namespace `ns`.
    pub fn labtool(&self, ns: &Netns, args: &[&str]) -> Result<Command> {
        let bin = self
            .opts
            .binary
            .to_str()
            .context("binary path is not UTF-8")?;
        let mut full = vec!["lab-tool"];
        full.extend_from_slice(args);
        Ok(ns.command(bin, &full))
    }

    /// Runs `flows` parallel TCP flows from host A to host B for `secs` seconds, each paced at
    /// `mbit_per_flow` (0: unpaced), and measures what each on-prem tunnel sent meanwhile (tx_bytes deltas).
    pub fn run_flows(&self, flows: usize, secs: f64, mbit_per_flow: f64) -> Result<Traffic> {
        let (a, b) = self
            .sites
            .as_ref()
            .context("this topology has no site hosts")?;
        let listen = format!("{HOST_B}:{SINK_PORT}");
        let f = flows.to_string();
        let timeout = format!("{}", secs + 30.0);
        let (mut sink, mut lines) = crate::lab::start_sink(
            self.labtool(
                &b.host,
                &[
                    "flow-sink",
                    "--listen",
                    &listen,
                    "--flows",
                    &f,
                    "--timeout",
                    &timeout,
                ],
            )?,
            "flow sink",
        )?;
        let before = self.onprem_tx()?;
        let s = format!("{secs}");
        let m = format!("{mbit_per_flow}");
        let out = self
            .labtool(
                &a.host,
                &[
                    "flow-source",
                    "--connect",
                    &listen,
                    "--flows",
                    &f,
                    "--secs",
                    &s,
                    "--mbit-per-flow",
                    &m,
                ],
            )?
            .stdin(Stdio::null())
            .output()?;
        let after = self.onprem_tx()?;
        let source: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(
            |_| json!({ "error": String::from_utf8_lossy(&out.stderr).trim().to_string() }),
        );
        // The source closed its flows; the sink ends when all have closed (bounded by its timeout).
        let waited = Instant::now();
        let sink_json = loop {
            if sink.try_wait()?.is_some() {
                let last = lines.next().transpose()?.unwrap_or_default();
                break serde_json::from_str(&last).unwrap_or(Value::Null);
            }
            if waited.elapsed() > Duration::from_secs(10) {
                let _ = sink.kill();
                let _ = sink.wait();
                break json!({ "error": "sink still waiting for flows; killed" });
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if !out.status.success() && source["bytes"].as_u64().unwrap_or(0) == 0 {
            bail!(
                "flow source failed: {} {}",
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        let mut tunnels = after;
        for t in tunnels.iter_mut() {
            let b0 = before
                .iter()
                .find(|x| x.gateway == t.gateway && x.tunnel == t.tunnel)
                .map_or(0, |x| x.tx_bytes);
            t.tx_bytes = t.tx_bytes.saturating_sub(b0);
        }
        let total: u64 = tunnels.iter().map(|t| t.tx_bytes).sum();
        for t in tunnels.iter_mut() {
            t.share = if total > 0 {
                t.tx_bytes as f64 / total as f64
            } else {
                0.0
            };
        }
        Ok(Traffic {
            flows,
            secs,
            mbit_per_flow,
            source,
            sink: sink_json,
            tunnels,
        })
    }

    /// Pings host B from host A (`count` echoes); returns replies received.
    pub fn ping_sites(&self, count: u32) -> Result<u32> {
        let (a, _) = self.sites.as_ref().context("no site hosts")?;
        let c = count.to_string();
        let out = a
            .host
            .exec("ping", &["-c", &c, "-i", "0.2", "-W", "2", "-n", HOST_B])?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0))
    }

    /// Counters of gateway `g`'s uplinks.
    pub fn uplinks(&self, g: usize) -> Result<Vec<UplinkSample>> {
        let v = self.show(g, "uplinks")?;
        Ok(v["uplinks"]
            .as_array()
            .context("uplinks")?
            .iter()
            .map(|u| UplinkSample {
                name: u["name"].as_str().unwrap_or("?").to_string(),
                tx_bytes: u["tx_bytes"].as_u64().unwrap_or(0),
                tx_packets: u["tx_packets"].as_u64().unwrap_or(0),
                cap_drops: u["cap_drops"].as_u64().unwrap_or(0),
                cap_bps: u["cap_bps"].as_u64(),
                at: Instant::now(),
            })
            .collect())
    }
}

/// One uplink's counters at one moment (`braid show uplinks`).
#[derive(Clone, Debug)]
pub struct UplinkSample {
    pub name: String,
    /// ESP-in-UDP payload bytes sent.
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub cap_drops: u64,
    pub cap_bps: Option<u64>,
    /// When the sample was answered.
    pub at: Instant,
}

impl UplinkSample {
    /// Bytes on the wire (payload plus the outer UDP + IPv4 headers) since `earlier`, per second, in bit/s.
    pub fn wire_bps_since(&self, earlier: &UplinkSample) -> f64 {
        let bytes = self.tx_bytes.saturating_sub(earlier.tx_bytes)
            + 28 * self.tx_packets.saturating_sub(earlier.tx_packets);
        bytes as f64 * 8.0 / self.at.duration_since(earlier.at).as_secs_f64()
    }
}

/// `ip -n NS WORDS...` (the words split at whitespace).
fn ip(ns: &Netns, words: &str) -> Result<()> {
    ns.ip(&words.split_whitespace().collect::<Vec<_>>())?;
    Ok(())
}

/// `tc qdisc replace dev DEV root tbf rate RATE` with a burst and queue that suit the rate.
fn tbf(ns: &Netns, dev: &str, rate: &str) -> Result<()> {
    let burst = if rate.ends_with("gbit") {
        "512kb"
    } else {
        "128kb"
    };
    let out = ns.exec(
        "tc",
        &[
            "qdisc", "replace", "dev", dev, "root", "tbf", "rate", rate, "burst", burst, "latency",
            "20ms",
        ],
    )?;
    if !out.status.success() {
        bail!(
            "tc tbf on {dev} in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Drop for Topology {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut() {
            netns::terminate(c, Duration::from_secs(3));
        }
        for c in self.routers.iter_mut() {
            netns::terminate(c, Duration::from_secs(3));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces (fields) are deleted after this, taking veths and TUN devices with them.
    }
}

// ---- the lab ----

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

fn mb(b: u64) -> String {
    format!("{:.1} MB", b as f64 / 1e6)
}

/// Checks every gateway's routes against [`Topology::expected_routes`]; returns checks and a JSON table.
fn route_checks(topo: &Topology, say: &dyn Fn(&str)) -> Result<(Vec<Check>, Value)> {
    let mut checks = Vec::new();
    let mut table = BTreeMap::new();
    say("  routes (active members | backups):");
    for g in 0..topo.gateways.len() {
        let name = &topo.gateways[g].name;
        let v = topo.show(g, "routes")?;
        table.insert(name.clone(), v["routes"].clone());
        for e in topo.expected_routes(g) {
            let got = topo.route(g, &e.prefix)?;
            let (mut ea, mut eb) = (e.active.clone(), e.backups.clone());
            ea.sort();
            eb.sort();
            let (ok, shown) = match &got {
                Some((a, b)) => (
                    *a == ea && *b == eb,
                    format!(
                        "{} | {}",
                        a.join(", "),
                        if b.is_empty() {
                            "-".into()
                        } else {
                            b.join(", ")
                        }
                    ),
                ),
                None => (false, "missing".into()),
            };
            say(&format!("    {name:<9} {:<16} {shown}", e.prefix));
            checks.push(Check {
                name: format!("{name} {} group", e.prefix),
                ok,
                detail: if ok {
                    format!(
                        "{} active{}",
                        ea.len(),
                        if eb.is_empty() {
                            String::new()
                        } else {
                            format!(", {} backups", eb.len())
                        }
                    )
                } else {
                    format!(
                        "want {} | {}, got {shown}",
                        ea.join(", "),
                        if eb.is_empty() {
                            "-".into()
                        } else {
                            eb.join(", ")
                        }
                    )
                },
            });
        }
    }
    Ok((checks, serde_json::to_value(table)?))
}

fn session_check(topo: &Topology, say: &dyn Fn(&str)) -> Result<(Check, Value)> {
    let mut ends = 0;
    let mut up = 0;
    let mut table = BTreeMap::new();
    let mut down = Vec::new();
    for g in 0..topo.gateways.len() {
        let s = topo.sessions(g)?;
        let name = &topo.gateways[g].name;
        say(&format!(
            "    {name:<9} {}",
            s.iter()
                .map(|(n, st)| format!("{n} {st}"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        for (n, st) in &s {
            ends += 1;
            if st == "Established" {
                up += 1;
            } else {
                down.push(format!("{name}:{n} {st}"));
            }
        }
        table.insert(name.clone(), json!(s));
    }
    // One session per tunnel (two ends each), and one from every gateway to its site's core (BIRD's end is
    // not counted here; the core's ECMP route is checked at convergence).
    let tunnels = topo.tunnels.len();
    let to_cores = if topo.sites.is_some() {
        topo.gateways.len()
    } else {
        0
    };
    Ok((
        Check {
            name: format!("all {} BGP sessions Established", tunnels + to_cores),
            ok: up == ends && ends == 2 * tunnels + to_cores,
            detail: if down.is_empty() {
                format!("{up} of {ends} session ends")
            } else {
                format!("{up} of {ends} session ends; {}", down.join(", "))
            },
        },
        serde_json::to_value(table)?,
    ))
}

fn traffic_lines(t: &Traffic, isps: &[Isp], say: &dyn Fn(&str)) {
    say(&format!(
        "  traffic: {} TCP flows{} host A {HOST_A} -> host B {HOST_B} for {} s: {} flows connected, {} sent, {:.2} Gbit/s",
        t.flows,
        if t.mbit_per_flow > 0.0 {
            format!(" of {} Mbit/s each,", t.mbit_per_flow)
        } else {
            String::new()
        },
        t.secs,
        t.source["connected"],
        mb(t.source["bytes"].as_u64().unwrap_or(0)),
        t.source["gbps"].as_f64().unwrap_or(0.0),
    ));
    say("  bytes per tunnel (sending side, tx_bytes delta):");
    for s in &t.tunnels {
        let bar = "#".repeat((s.share * 40.0).round() as usize);
        let line = isps
            .get(s.isp)
            .and_then(|i| i.cap.clone())
            .map(|c| format!(" (cap {c})"))
            .unwrap_or_default();
        say(&format!(
            "    {:<9} {:<12} {:<5}{line:<14} {:>10} {:>6}  {bar}",
            s.gateway,
            s.tunnel,
            s.uplink,
            mb(s.tx_bytes),
            pct(s.share)
        ));
    }
}

/// `braid lab active-active | dual-isp`: builds the scenario, runs traffic, reports; returns the exit code.
pub fn run(kind: Kind, opts: &LabOptions) -> Result<i32> {
    if !netns::is_root() {
        bail!("braid lab builds network namespaces and TUN devices: run it as root (sudo)");
    }
    for (tool, pkg) in [
        ("ip", "iproute2"),
        ("ping", "iputils-ping"),
        ("tc", "iproute2"),
        ("sysctl", "procps"),
    ] {
        if !netns::have(tool) {
            bail!("`{tool}` is not installed (apt-get install {pkg})");
        }
    }
    if opts.flows == 0 || opts.flows > 1000 {
        bail!("--flows must be 1..=1000");
    }
    if !(0.5..=30.0).contains(&opts.secs) {
        bail!("--secs must be 0.5..=30");
    }
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let stop = || -> Result<()> {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted; cleaned up");
        }
        Ok(())
    };
    let say = |s: &str| {
        if !opts.json {
            println!("{s}");
        }
    };
    let started = Instant::now();
    match kind {
        Kind::ActiveActive => say("braid lab: scenario `active-active` (S1: 2 on-prem x 2 cloud gateways, 4 tunnels, one eBGP session each, flows spread over all 4)"),
        Kind::DualIsp => say("braid lab: scenario `dual-isp` (S2: 2 on-prem x 2 cloud gateways, ISP1 1 Gbit/s + ISP2 250 Mbit/s per on-prem gateway, 8 tunnels, ISP2 sessions prepended on both sides)"),
        Kind::CappedPair => bail!("`capped-pair` is a test fixture, not a lab scenario"),
    }
    say(&format!(
        "  site A {SITE_A} (AS {ONPREM_ASN}, host {HOST_A}) <-> site B {SITE_B} (AS {CLOUD_ASN}, host {HOST_B}); each site's core router (BIRD) learns the other site from both its gateways by eBGP (+ BFD) and spreads flows over them by ECMP"
    ));
    say(&format!("  tunnels keyed by {}", opts.keying.describe()));
    let mut topo_opts = TopologyOptions::new(std::env::current_exe()?);
    topo_opts.keying = opts.keying;
    topo_opts.bfd = opts.bfd.then_some((100, 3));
    topo_opts.core_bfd = topo_opts.bfd;
    let topo = Topology::build(kind, &topo_opts)?;
    say(&format!(
        "  built {} gateways, {} tunnels; BGP converged in {:.1} s",
        topo.gateways.len(),
        topo.tunnels.len(),
        topo.build_secs
    ));
    stop()?;
    let mut checks = Vec::new();
    say("  BGP sessions:");
    let (c, sessions) = session_check(&topo, &say)?;
    checks.push(c);
    let (cs, routes) = route_checks(&topo, &say)?;
    checks.extend(cs);
    stop()?;
    let got = topo.ping_sites(3)?;
    checks.push(Check {
        name: "ping host A -> host B".into(),
        ok: got == 3,
        detail: format!("{got}/3 replies"),
    });
    stop()?;
    let traffic = topo.run_flows(opts.flows, opts.secs, opts.mbit_per_flow);
    // Ctrl-C reaches the traffic tools too: say so rather than report their failure.
    stop()?;
    let traffic = traffic?;
    traffic_lines(&traffic, &topo.isps, &say);
    let connected = traffic.source["connected"].as_u64().unwrap_or(0) as usize;
    checks.push(Check {
        name: format!("{} flows connected", opts.flows),
        ok: connected == opts.flows && traffic.total_tunnel_bytes() > 0,
        detail: format!(
            "{connected} connected, {} through the tunnels",
            mb(traffic.total_tunnel_bytes())
        ),
    });
    match kind {
        Kind::ActiveActive => {
            for s in &traffic.tunnels {
                checks.push(Check {
                    name: format!("{} {} share 25% +/- 10%", s.gateway, s.tunnel),
                    ok: (0.15..=0.35).contains(&s.share),
                    detail: pct(s.share),
                });
            }
        }
        Kind::DualIsp => {
            let isp2 = traffic.isp_share(1);
            let isp2_bytes: u64 = traffic
                .tunnels
                .iter()
                .filter(|t| t.isp == 1)
                .map(|t| t.tx_bytes)
                .sum();
            checks.push(Check {
                name: "ISP2 tunnels idle (< 0.5% of bytes)".into(),
                ok: isp2 < 0.005,
                detail: format!("{} ({isp2_bytes} bytes: keepalives)", pct(isp2)),
            });
            say(&format!(
                "  ISP1 tunnels carry {} of bytes ({}; an even spread is 25% each), ISP2 tunnels {}",
                pct(traffic.isp_share(0)),
                traffic
                    .tunnels
                    .iter()
                    .filter(|t| t.isp == 0)
                    .map(|t| pct(t.share))
                    .collect::<Vec<_>>()
                    .join(", "),
                pct(isp2)
            ));
        }
        Kind::CappedPair => {}
    }
    let mut report_uplinks = BTreeMap::new();
    for g in topo.role(Role::OnPrem) {
        report_uplinks.insert(topo.gateways[g].name.clone(), topo.show(g, "uplinks")?);
    }
    let mut drill = Value::Null;
    let mut topo = topo;
    if opts.drill && !interrupted.load(Ordering::Relaxed) {
        let steps = crate::drill::steps(kind, opts.full_drill);
        let probe = crate::drill::DrillOptions {
            flows_per_direction: opts.probe_flows,
            pps: opts.probe_pps,
        };
        say(&format!(
            "  failover drill ({}; {} probe flows each way at {} pkt/s):",
            topo.opts.liveness(),
            probe.flows_per_direction,
            probe.pps
        ));
        let mut failures = Vec::new();
        let d = crate::drill::run(&mut topo, &steps, probe, &say);
        failures.extend(d.failed);
        let mut runs = vec![(topo.opts.liveness(), d.steps)];
        stop()?;
        if opts.full_drill && topo.opts.bfd.is_some() {
            // The same drill on a fresh build: on hold timers only, then with inbound-silence liveness in the
            // tunnels (a peer that speaks no BFD; the cores keep theirs).
            let mut hold = topo_opts.clone();
            (hold.bfd, hold.core_bfd, hold.silence_ms) = (None, None, None);
            let mut silence = topo_opts.clone();
            (silence.bfd, silence.silence_ms) = (None, Some(1500));
            for o in [hold, silence] {
                drop(topo);
                topo = Topology::build(kind, &o)?;
                say(&format!(
                    "  failover drill again, {} (rebuilt in {:.1} s):",
                    o.liveness(),
                    topo.build_secs
                ));
                let d = crate::drill::run(&mut topo, &steps, probe, &say);
                failures.extend(d.failed);
                runs.push((o.liveness(), d.steps));
                stop()?;
            }
        }
        for f in &failures {
            checks.push(Check {
                name: "drill completed".into(),
                ok: false,
                detail: f.clone(),
            });
        }
        for (mode, steps) in &runs {
            for r in steps {
                checks.push(Check {
                    name: format!("{} ({mode}): untouched flows lose nothing", r.step),
                    ok: r.untouched_lost == 0,
                    detail: format!(
                        "{} untouched flows, {} packets lost",
                        r.flows - r.touched_flows,
                        r.untouched_lost
                    ),
                });
                checks.push(Check {
                    name: format!("{} ({mode}): service restored", r.step),
                    ok: r.not_restored == 0,
                    detail: format!(
                        "{} of {} flows not carried at the end",
                        r.not_restored, r.flows
                    ),
                });
            }
        }
        drill = json!({
            "runs": runs.iter().map(|(mode, steps)| json!({
                "liveness": mode,
                "steps": steps.iter().map(|r| serde_json::to_value(r).unwrap_or(Value::Null)).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
            "comparison": if runs.len() > 1 { crate::drill::comparison(&runs, &say) } else { Value::Null },
        });
    }
    say("  checks:");
    for c in &checks {
        say(&format!(
            "  [{}] {:<40} {}",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        ));
    }
    let ok = checks.iter().all(|c| c.ok);
    let report = json!({
        "scenario": kind.name(),
        "keying": opts.keying.name(),
        "ok": ok,
        "seconds": started.elapsed().as_secs_f64(),
        "converge_seconds": topo.build_secs,
        "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        "sessions": sessions,
        "routes": routes,
        "traffic": traffic.json(),
        "uplinks": report_uplinks,
        "drill": drill,
    });
    if !ok && !opts.json {
        for g in 0..topo.gateways.len() {
            println!(
                "--- {} log ---\n{}",
                topo.gateways[g].name,
                topo.log_tail(g)
            );
        }
    }
    drop(topo);
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "braid lab: {} ({} checks, {:.1} s); namespaces, devices and files removed",
            if ok {
                "all checks passed"
            } else {
                "SOME CHECKS FAILED"
            },
            checks.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if ok { 0 } else { 1 })
}
