//! The control socket: a Unix stream socket on which the daemon answers `braid show ...` with JSON.
//!
//! Protocol: the client writes one JSON request line (`{"show":"tunnels"}`), the daemon answers with one JSON
//! line and closes. The JSON field names are DESIGN.md's stable contract: tunnels `name uplink remote state
//! tx_packets rx_packets tx_bytes rx_bytes drops`, uplinks `name local cap_bps tx_bps tx_bytes cap_drops`;
//! extra fields may be added, none removed or renamed. The socket is created mode 0600 (root's tool).

use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use braid_control::bgp::speaker::{NeighborStatus, NextHopStatus, RouteStatus, SpeakerHandle};
use braid_control::install::{RouteEntry, RouteInstaller};
use braid_crypto::Cipher;
use braid_dataplane::{DropReason, TunStats, TunnelStats, UplinkStats};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// A tunnel is "up" when it authenticated an inbound packet at most this long ago.
pub const UP_WINDOW: Duration = Duration::from_secs(30);

/// What the control plane knows about one tunnel.
pub struct TunnelInfo {
    pub name: String,
    pub uplink: String,
    pub remote: SocketAddr,
    /// `"static"` or `"ike"`.
    pub keying: &'static str,
    /// Static keying's cipher and ESN (IKE negotiates them: see the IKE status).
    pub cipher: Option<Cipher>,
    pub esn: Option<bool>,
    pub replay_window: u32,
    /// Tunnel MTU: the largest inner packet carried without fragmentation.
    pub mtu: usize,
    /// Weight in next-hop groups.
    pub weight: u32,
    pub stats: Arc<TunnelStats>,
}

/// What the control plane knows about one uplink.
pub struct UplinkInfo {
    pub name: String,
    pub local: SocketAddr,
    pub mtu: u32,
    pub cap_bps: Option<u64>,
    pub cap_burst: Option<u64>,
    pub stats: Arc<UplinkStats>,
}

/// A BGP neighbour as `braid show routes` names it, by its index in the configuration.
pub struct NeighborName {
    pub label: String,
    pub address: IpAddr,
}

/// The daemon's shared, read-mostly view of the gateway.
pub struct GatewayState {
    pub name: String,
    tun: String,
    tun_mtu: u32,
    /// The TUN device's transmit queue (none without a data path).
    pub tun_queue_len: Option<u32>,
    epoch: Instant,
    tunnels: Vec<TunnelInfo>,
    uplinks: Vec<UplinkInfo>,
    tun_stats: Arc<TunStats>,
    /// Per uplink: (last tx_bytes sample, bits per second over the last interval).
    rates: Mutex<Vec<(u64, Instant, u64)>>,
    /// The forwarding table's owner (`None` on a gateway without tunnels).
    pub installer: Option<Arc<Mutex<RouteInstaller>>>,
    /// The data path's workers' counters (empty before it starts).
    pub workers: Arc<[braid_dataplane::WorkerStats]>,
    /// BGP neighbours by index.
    pub neighbors: Vec<NeighborName>,
    /// Which tunnels the data path may use (`None` without a data path).
    pub liveness: Option<braid_dataplane::Liveness>,
    /// The BFD sessions, once started.
    pub bfd: std::sync::OnceLock<crate::bfd::BfdTable>,
    /// The IKE tunnels' status, once the driver started.
    pub ike: std::sync::OnceLock<crate::ike::IkeTable>,
    /// The data path's SAs as installed now (`None` without a data path).
    pub sas: Option<braid_dataplane::SaControl>,
    /// The liveness votes behind `liveness` (BFD, IKE).
    pub health: Option<crate::health::Health>,
    /// The data path's flow-hash key (`braid path` replays its choice).
    pub flow_seed: u64,
}

impl GatewayState {
    pub fn new(
        name: String,
        tun: String,
        tun_mtu: u32,
        epoch: Instant,
        tunnels: Vec<TunnelInfo>,
        uplinks: Vec<UplinkInfo>,
        tun_stats: Arc<TunStats>,
    ) -> GatewayState {
        let now = Instant::now();
        let rates = Mutex::new(uplinks.iter().map(|_| (0, now, 0)).collect());
        GatewayState {
            name,
            tun,
            tun_mtu,
            tun_queue_len: None,
            epoch,
            tunnels,
            uplinks,
            tun_stats,
            rates,
            installer: None,
            workers: Arc::new([]),
            neighbors: Vec::new(),
            liveness: None,
            bfd: std::sync::OnceLock::new(),
            ike: std::sync::OnceLock::new(),
            sas: None,
            health: None,
            flow_seed: 0,
        }
    }

    /// When the data path started (the zero of `TunnelStats::last_rx_ms`).
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    pub fn tunnels(&self) -> &[TunnelInfo] {
        &self.tunnels
    }

    pub fn uplinks(&self) -> &[UplinkInfo] {
        &self.uplinks
    }

    pub fn tun_stats(&self) -> &TunStats {
        &self.tun_stats
    }

    /// The last sampled egress rate of uplink `i`, bits per second.
    pub fn tx_bps(&self, i: usize) -> u64 {
        let rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        rates.get(i).map_or(0, |r| r.2)
    }

    /// Samples uplink byte counters to compute `tx_bps` (called once a second).
    pub fn sample_rates(&self) {
        let now = Instant::now();
        let mut rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        for (u, r) in self.uplinks.iter().zip(rates.iter_mut()) {
            let bytes = u.stats.tx_bytes.load(Relaxed);
            let dt = now.duration_since(r.1).as_secs_f64();
            if dt > 0.0 {
                r.2 = ((bytes.saturating_sub(r.0)) as f64 * 8.0 / dt) as u64;
            }
            r.0 = bytes;
            r.1 = now;
        }
    }

    fn drops_json(counters: &braid_dataplane::stats::DropCounters) -> Value {
        let mut m = Map::new();
        for &r in DropReason::ALL {
            m.insert(r.as_str().into(), json!(counters.get(r)));
        }
        Value::Object(m)
    }

    pub fn tunnels_json(&self) -> Value {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let ike: Vec<crate::ike::IkeStatus> = self
            .ike
            .get()
            .map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).clone())
            .unwrap_or_default();
        let tunnels: Vec<Value> = self
            .tunnels
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let s = &t.stats;
                let last = s.last_rx_ms.load(Relaxed);
                let ago = (last > 0).then(|| now_ms.saturating_sub(last));
                let recent = ago.is_some_and(|a| a <= UP_WINDOW.as_millis() as u64);
                let sas = self.sas.as_ref().and_then(|c| c.sas(i));
                let spi = |x: Option<&braid_dataplane::SaInfo>| x.map(|x| format!("{:#010x}", x.spi.0));
                let ike = ike.iter().find(|x| x.tunnel == i).map(|x| x.json());
                let has_sa = sas.as_ref().is_some_and(|s| s.outbound.is_some());
                // Static: "up" (authentic traffic in the last 30 s) or "installed". IKE: "up", "established"
                // (SAs, but no recent traffic), "connecting" or "down".
                let state = match &ike {
                    None if recent => "up",
                    None => "installed",
                    Some(v) => match v["state"].as_str() {
                        Some("established") if has_sa && recent => "up",
                        Some("established") => "established",
                        Some("connecting") => "connecting",
                        _ => "down",
                    },
                };
                let child_algs = ike.as_ref().and_then(|v| v["esp_algorithms"].as_str());
                let cipher = t
                    .cipher
                    .map(|c| c.name().to_string())
                    .or_else(|| child_algs.and_then(|a| a.split('-').next()).map(str::to_string));
                let esn = t.esn.or_else(|| child_algs.map(|a| a.ends_with("-esn")));
                json!({
                    "name": t.name,
                    "uplink": t.uplink,
                    "remote": sas.as_ref().map_or(t.remote, |s| s.remote).to_string(),
                    "state": state,
                    "keying": t.keying,
                    "cipher": cipher,
                    "spi_in": spi(sas.as_ref().and_then(|s| s.inbound.last())),
                    "spi_out": spi(sas.as_ref().and_then(|s| s.outbound.as_ref())),
                    "spis_in": sas.as_ref().map(|s| s.inbound.iter().map(|x| format!("{:#010x}", x.spi.0)).collect::<Vec<_>>()),
                    "esn": esn,
                    "replay_window": t.replay_window,
                    "mtu": t.mtu,
                    "weight": t.weight,
                    "live": self.liveness.as_ref().is_none_or(|l| l.is_live(i as u32)),
                    "down_votes": self.health.as_ref().map(|h| h.down_votes(i).iter().map(|s| s.name()).collect::<Vec<_>>()),
                    "tx_packets": ld(&s.tx_packets),
                    "rx_packets": ld(&s.rx_packets),
                    "tx_bytes": ld(&s.tx_bytes),
                    "rx_bytes": ld(&s.rx_bytes),
                    "drops": Self::drops_json(&s.drops),
                    "drops_total": s.drops.total(),
                    "icmp_too_big_sent": ld(&s.icmp_too_big),
                    "held_for_sa": ld(&s.held_for_sa),
                    "last_rx_ms_ago": ago,
                    "ike": ike,
                })
            })
            .collect();
        json!({
            "gateway": self.name,
            "tun": { "name": self.tun, "mtu": self.tun_mtu, "queue_len": self.tun_queue_len, "rx_packets": ld(&self.tun_stats.rx_packets),
                     "gro_writes": ld(&self.tun_stats.gro_writes), "gro_packets": ld(&self.tun_stats.gro_packets), "gro_fallbacks": ld(&self.tun_stats.gro_fallbacks),
                     "gso_reads": ld(&self.tun_stats.gso_reads), "gso_segments": ld(&self.tun_stats.gso_segments),
                     "drops": Self::drops_json(&self.tun_stats.drops),
                     "workers": self.workers.iter().map(|w| json!({
                         "tun_reads": ld(&w.tun_reads), "uplink_datagrams": ld(&w.uplink_datagrams),
                     })).collect::<Vec<_>>() },
            "tunnels": tunnels,
        })
    }

    pub fn uplinks_json(&self) -> Value {
        let rates = self.rates.lock().unwrap_or_else(|p| p.into_inner());
        let uplinks: Vec<Value> = self
            .uplinks
            .iter()
            .zip(rates.iter())
            .map(|(u, r)| {
                let s = &u.stats;
                json!({
                    "name": u.name,
                    "local": u.local.to_string(),
                    "mtu": u.mtu,
                    "cap_bps": u.cap_bps,
                    "cap_burst_bytes": u.cap_burst,
                    "tx_bps": r.2,
                    "tx_packets": ld(&s.tx_packets),
                    "tx_bytes": ld(&s.tx_bytes),
                    "rx_packets": ld(&s.rx_packets),
                    "rx_bytes": ld(&s.rx_bytes),
                    "cap_drops": s.drops.get(DropReason::CapExceeded),
                    "cap_delayed": ld(&s.cap_delayed),
                    "gso_sends": ld(&s.gso_sends), "gso_fallbacks": ld(&s.gso_fallbacks),
                    "ike_received": ld(&s.ike_received),
                    "nat_keepalives": ld(&s.nat_keepalives),
                    "rx_batches": ld(&s.rx_batches), "gro_receives": ld(&s.gro_receives),
                    "drops": Self::drops_json(&s.drops),
                })
            })
            .collect();
        json!({ "gateway": self.name, "uplinks": uplinks })
    }
}

fn ld(a: &AtomicU64) -> u64 {
    a.load(Relaxed)
}

/// A request on the control socket: `{"show": "tunnels"|"uplinks"|"bgp"|"routes"}` or
/// `{"bgp_refresh": "ADDRESS"}`.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq, Default)]
pub struct Request {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bgp_refresh: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathQuery>,
}

/// `braid path`: which tunnel a flow takes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PathQuery {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number.
    pub protocol: u8,
    #[serde(default)]
    pub sport: u16,
    #[serde(default)]
    pub dport: u16,
}

/// The answer to a [`PathQuery`]: the route, the group's members with their liveness, the members that carry
/// traffic now, and the tunnel a new flow with this tuple is sent on (see `braid_dataplane::path`).
fn path_json(state: &GatewayState, q: &PathQuery) -> Value {
    let (Some(installer), Some(liveness)) = (&state.installer, &state.liveness) else {
        return json!({ "error": "this gateway has no data path" });
    };
    let Some(hash) = braid_dataplane::flow::tuple_hash(
        q.src,
        q.dst,
        q.protocol,
        (q.sport, q.dport),
        state.flow_seed,
    ) else {
        return json!({ "error": "src and dst must be of one address family" });
    };
    let fib = installer
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .fib()
        .snapshot();
    let name = |t: u32| state.tunnels.get(t as usize).map(|t| t.name.clone());
    let Some(path) = braid_dataplane::path::flow_path(&fib, liveness, q.dst, hash) else {
        return json!({ "gateway": state.name, "dst": q.dst.to_string(), "route": Value::Null, "tunnel": Value::Null });
    };
    let prefix = fib
        .iter()
        .filter(|(p, _)| p.contains(q.dst))
        .max_by_key(|(p, _)| p.len())
        .map(|(p, _)| p.to_string());
    let members: Vec<Value> = path
        .group
        .members()
        .iter()
        .map(|m| {
            json!({
                "tunnel": name(m.tunnel),
                "weight": m.weight,
                "backup": m.backup,
                "live": liveness.is_live(m.tunnel),
                "candidate": path.candidates.iter().any(|c| c.tunnel == m.tunnel),
            })
        })
        .collect();
    json!({
        "gateway": state.name,
        "src": q.src.to_string(),
        "dst": q.dst.to_string(),
        "protocol": q.protocol,
        "sport": q.sport,
        "dport": q.dport,
        "route": prefix,
        "members": members,
        "tunnel": path.tunnel.and_then(name),
    })
}

impl Request {
    pub fn show(what: &str) -> Request {
        Request {
            show: Some(what.into()),
            ..Request::default()
        }
    }
}

fn bgp_json(gateway: &str, n: &[NeighborStatus]) -> Value {
    let neighbors: Vec<Value> = n
        .iter()
        .map(|n| {
            json!({
                "neighbor": n.address.to_string(),
                "label": n.label,
                "port": n.port,
                "remote_asn": n.remote_asn,
                "state": n.state,
                "uptime_s": n.uptime_s,
                "received": n.received,
                "accepted": n.accepted,
                "advertised": n.advertised,
                "hold_time": n.hold_time,
                "hold_time_local": n.hold_time_local,
                // The peer proposed less than we did when the negotiated value is below ours.
                "hold_time_peer": n.hold_time.filter(|h| *h < n.hold_time_local),
                "peer_id": n.peer_id.map(|i| i.to_string()),
                "last_error": n.last_error,
            })
        })
        .collect();
    json!({ "gateway": gateway, "neighbors": neighbors })
}

/// `braid show routes`: the forwarding table (connected, static and BGP routes, each prefix's next-hop group
/// with weights and backups) merged with the BGP Loc-RIB (attributes, and routes braid knows but does not
/// forward: its own networks, LAN-side routes). `"fib": true` marks what the data path forwards.
fn routes_json(state: &GatewayState, rib: &[RouteStatus]) -> Value {
    let fib: Vec<RouteEntry> = state
        .installer
        .as_ref()
        .map(|i| i.lock().unwrap_or_else(|p| p.into_inner()).routes())
        .unwrap_or_default();
    let rib_hop = |h: &NextHopStatus, backup: bool| json!({ "tunnel": h.tunnel, "neighbor": h.neighbor, "address": h.address.map(|a| a.to_string()), "weight": h.weight, "backup": backup });
    let mut by_prefix: std::collections::BTreeMap<braid_control::bgp::types::Prefix, Value> =
        std::collections::BTreeMap::new();
    for r in rib {
        by_prefix.insert(
            r.prefix,
            json!({
                "prefix": r.prefix.to_string(),
                "source": r.source,
                "fib": false,
                "as_path": r.as_path,
                "origin": r.origin,
                "local_pref": r.local_pref,
                "med": r.med,
                "communities": r.communities.iter().map(|c| format!("{}:{}", c >> 16, c & 0xffff)).collect::<Vec<_>>(),
                "next_hops": r.next_hops.iter().map(|h| rib_hop(h, false)).collect::<Vec<_>>(),
                "backups": r.backups.iter().map(|h| rib_hop(h, true)).collect::<Vec<_>>(),
            }),
        );
    }
    for e in &fib {
        let hop = |m: &braid_dataplane::Member, peer: Option<usize>| {
            let n = peer.and_then(|p| state.neighbors.get(p));
            json!({
                "tunnel": state.tunnels.get(m.tunnel as usize).map(|t| t.name.clone()),
                "neighbor": n.map(|n| n.label.clone()),
                "address": n.map(|n| n.address.to_string()),
                "weight": m.weight,
                "backup": m.backup,
            })
        };
        let next_hops: Vec<Value> = e
            .members
            .iter()
            .filter(|(m, _)| !m.backup)
            .map(|(m, p)| hop(m, *p))
            .collect();
        let backups: Vec<Value> = e
            .members
            .iter()
            .filter(|(m, _)| m.backup)
            .map(|(m, p)| hop(m, *p))
            .collect();
        let v = by_prefix
            .entry(e.prefix)
            .or_insert_with(|| json!({ "prefix": e.prefix.to_string() }));
        v["source"] = json!(e.source.as_str());
        v["fib"] = json!(true);
        v["next_hops"] = json!(next_hops);
        v["backups"] = json!(backups);
    }
    json!({ "gateway": state.name, "routes": by_prefix.into_values().collect::<Vec<_>>() })
}

/// Binds the control socket, replacing a stale one but refusing to steal a live daemon's.
pub async fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "{} is in use: another braid is running for this gateway",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Answers requests until the task is aborted.
pub async fn serve(listener: UnixListener, state: Arc<GatewayState>, bgp: Option<SpeakerHandle>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        let bgp = bgp.clone();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, state, bgp)).await;
        });
    }
}

async fn answer(
    stream: UnixStream,
    state: Arc<GatewayState>,
    bgp: Option<SpeakerHandle>,
) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    BufReader::new(r.take(4096)).read_line(&mut line).await?;
    let no_bgp = || json!({ "error": "BGP is not configured on this gateway (no [bgp] section)" });
    let reply = match serde_json::from_str::<Request>(&line) {
        Ok(Request {
            show: Some(what), ..
        }) => match (what.as_str(), &bgp) {
            ("tunnels", _) => state.tunnels_json(),
            ("uplinks", _) => state.uplinks_json(),
            ("bgp", Some(b)) => bgp_json(&state.name, &b.neighbors().await),
            ("routes", Some(b)) => routes_json(&state, &b.routes().await),
            ("routes", None) => routes_json(&state, &[]),
            ("bgp", None) => no_bgp(),
            ("bfd", _) => crate::bfd::json(&state.name, state.bfd.get()),
            (other, _) => {
                json!({ "error": format!("unknown: show {other:?} (tunnels, uplinks, bgp, routes, bfd)") })
            }
        },
        Ok(Request {
            bgp_refresh: Some(n),
            ..
        }) => match (n.parse::<std::net::IpAddr>(), &bgp) {
            (Err(_), _) => json!({ "error": format!("{n:?} is not an IP address") }),
            (_, None) => no_bgp(),
            (Ok(ip), Some(b)) => match b.refresh(ip).await {
                Ok(sent) => json!({ "neighbor": ip.to_string(), "route_refresh_sent": sent }),
                Err(e) => json!({ "error": e }),
            },
        },
        Ok(Request { path: Some(q), .. }) => path_json(&state, &q),
        Ok(_) => json!({ "error": "empty request" }),
        Err(e) => json!({ "error": format!("bad request: {e}") }),
    };
    let mut out = serde_json::to_vec(&reply)?;
    out.push(b'\n');
    w.write_all(&out).await?;
    w.shutdown().await
}

/// Sends one request to the daemon at `path` and returns its JSON answer (blocking; used by the CLI).
pub fn request(path: &Path, req: &Request) -> Result<Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).with_context(|| {
        format!(
            "connecting to {} (is `braid run` up, and are you root?)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    std::io::BufReader::new(s).read_line(&mut answer)?;
    let v: Value = serde_json::from_str(&answer).context("the daemon's answer is not JSON")?;
    if let Some(e) = v.get("error").and_then(Value::as_str) {
        bail!("daemon: {e}");
    }
    Ok(v)
}
