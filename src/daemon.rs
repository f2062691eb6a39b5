//! `braid run`: assembles a gateway from a validated [`Config`] and runs it until SIGTERM or SIGINT.
//!
//! Order of assembly: uplink sockets (so a busy port fails before anything is created), MTUs, the TUN device
//! with every tunnel's inside addresses, the SAs, the data-path threads, then the control plane on a tokio
//! runtime (control socket, signals, rate sampling, BGP, metrics). Shutdown reverses it; the TUN device
//! disappears with its file descriptor.
//!
//! Routes flow from the BGP speaker (the RIB's forwarding changes, in batches over a channel) to the route
//! installer's own thread (`braid-fib`), which merges them with the connected and static routes, builds and
//! publishes the data path's FIB, and mirrors the changes into the kernel's routing table when
//! `kernel_routes = true`. Building a million-route table takes a while, so it never runs on the tokio
//! runtime that keeps the BGP sessions' timers.

use std::hash::{BuildHasher, Hasher};
use std::net::IpAddr;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use braid_control::bgp::rib::FibChange;
use braid_control::install::{RouteInstaller, TunnelRoutes};
use braid_crypto::{InboundSa, OutboundSa, SaKey, Spi};
use braid_dataplane::engine::Cap;
use braid_dataplane::{
    open_uplink_sockets, sys, tunnel_mtu, Dataplane, DataplaneSpec, Tun, TunStats, TunnelIo,
    TunnelStats, UplinkIo, UplinkSocketSpec, UplinkStats,
};
use tokio::signal::unix::{signal, SignalKind};

use braid_control::bgp::policy::{NeighborPolicy, PrefixList};
use braid_control::bgp::speaker::{NeighborConfig, SpeakerConfig};
use braid_control::bgp::types::Family;

use crate::config::{Config, Keying};
use crate::control::{self, GatewayState, NeighborName, TunnelInfo, UplinkInfo};
use crate::ike::{IkeContext, IkeTunnel, Port500};

/// The IKE tunnels and the data path's IKE channel, for the driver that starts with the control plane.
struct IkeSetup {
    tunnels: Vec<IkeTunnel>,
    datagrams: crossbeam_channel::Receiver<braid_dataplane::IkeDatagram>,
    ports: Vec<Port500>,
}

/// One port 500 socket per address of the uplinks with `ike_port_500` and IKE tunnels.
fn ports_500(config: &Config, tunnels: &[IkeTunnel]) -> Vec<Port500> {
    let mut ports: Vec<Port500> = Vec::new();
    for (i, u) in config.uplinks.iter().enumerate() {
        if !u.ike_port_500
            || u.port == crate::ike::IKE_PORT
            || !tunnels.iter().any(|t| t.uplink == i)
        {
            continue;
        }
        match ports.iter_mut().find(|p| p.local == u.local) {
            Some(p) => p.uplinks.push(i),
            None => ports.push(Port500 {
                uplinks: vec![i],
                name: u.name.clone(),
                local: u.local,
                device: u.device.clone(),
                fwmark: u.fwmark,
            }),
        }
    }
    ports
}

/// Used when an uplink's MTU can be neither configured nor read from its interface.
const FALLBACK_UPLINK_MTU: u32 = 1500;

/// How long a stopping gateway keeps forwarding after its BGP Cease (and BFD AdminDown) went out.
const SHUTDOWN_DRAIN: Duration = Duration::from_millis(300);

/// Runs the gateway in the foreground until SIGTERM/SIGINT.
pub fn run(config: Config) -> Result<()> {
    let (state, dataplane, ike) = assemble(&config)?;
    let ike = match (ike, &dataplane, &state.health) {
        (Some(setup), Some(dp), Some(health)) => Some((
            setup,
            IkeContext {
                sas: dp.sa_control(),
                sender: dp.ike_sender(),
                health: health.clone(),
                speaker: None,
                epoch: dp.epoch(),
                cookie_threshold: config.gateway.ike_cookie_threshold,
            },
        )),
        _ => None,
    };
    // The speaker sends forwarding changes only when there is a data path to forward them.
    let (fib_tx, installer_thread) = match &state.installer {
        Some(installer) if config.bgp.is_some() => {
            let (tx, rx) = mpsc::channel();
            let (installed_tx, installed_rx) = tokio::sync::watch::channel(0u64);
            let kernel = config
                .gateway
                .kernel_routes
                .then(|| config.gateway.tun.clone());
            let installer = installer.clone();
            let thread = std::thread::Builder::new()
                .name("braid-fib".into())
                .spawn(move || install_routes(installer, rx, kernel, installed_tx))
                .context("starting the route installer")?;
            (Some((tx, installed_rx)), Some(thread))
        }
        _ => (None, None),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the control-plane runtime")?;
    let result = rt.block_on(control_plane(config.clone(), state, fib_tx, ike));
    // Dropping the runtime drops the speaker and with it the installer's channel: the installer removes
    // the kernel routes it added and ends.
    drop(rt);
    if let Some(t) = installer_thread {
        let _ = t.join();
    }
    if let Some(dp) = dataplane {
        tracing::info!("stopping data path");
        dp.stop();
    }
    let _ = std::fs::remove_file(&config.gateway.control_socket);
    tracing::info!(gateway = %config.gateway.name, "stopped");
    result
}

fn uplink_mtu(u: &crate::config::Uplink) -> u32 {
    if let Some(m) = u.mtu {
        return m;
    }
    match sys::interface_with_address(u.local) {
        Ok(Some(ifname)) => match sys::get_mtu(&ifname) {
            Ok(m) => return m,
            Err(e) => tracing::warn!(uplink = %u.name, %ifname, error = %e, "cannot read MTU"),
        },
        Ok(None) => {
            tracing::warn!(uplink = %u.name, local = %u.local, "no interface holds this address")
        }
        Err(e) => tracing::warn!(uplink = %u.name, error = %e, "cannot list interfaces"),
    }
    tracing::warn!(uplink = %u.name, mtu = FALLBACK_UPLINK_MTU, "assuming MTU; set `mtu` on the uplink to be exact");
    FALLBACK_UPLINK_MTU
}

type Assembled = (Arc<GatewayState>, Option<Dataplane>, Option<IkeSetup>);

fn assemble(config: &Config) -> Result<Assembled> {
    let g = &config.gateway;
    tracing::info!(gateway = %g.name, tunnels = config.tunnels.len(), uplinks = config.uplinks.len(), "starting");

    let mut uplinks = Vec::new();
    let mut uplink_infos = Vec::new();
    let mut mtus = Vec::new();
    for u in &config.uplinks {
        let sockets = open_uplink_sockets(
            &UplinkSocketSpec {
                local: u.local_addr(),
                device: u.device.clone(),
                fwmark: u.fwmark,
                socket_buffer: u.socket_buffer,
            },
            g.workers,
        )
        .with_context(|| format!("uplink {:?}", u.name))?;
        let mtu = uplink_mtu(u);
        let stats = Arc::new(UplinkStats::default());
        tracing::info!(uplink = %u.name, local = %u.local_addr(), mtu, "uplink ready");
        let cap = u.cap_bps.map(|rate| match u.cap_burst {
            Some(burst_bytes) => Cap {
                rate_bps: rate,
                burst_bytes,
            },
            None => Cap::with_default_burst(rate),
        });
        uplinks.push(UplinkIo {
            name: u.name.clone(),
            sockets,
            stats: stats.clone(),
            cap,
        });
        uplink_infos.push(UplinkInfo {
            name: u.name.clone(),
            local: u.local_addr(),
            mtu,
            cap_bps: cap.map(|c| c.rate_bps),
            cap_burst: cap.map(|c| c.burst_bytes),
            stats,
        });
        mtus.push(mtu);
    }

    let mut tunnels = Vec::new();
    let mut tunnel_infos = Vec::new();
    let mut tunnel_routes = Vec::new();
    let mut inside_addrs = Vec::new();
    let mut ike_tunnels = Vec::new();
    for (i, t) in config.tunnels.iter().enumerate() {
        let max_inner = tunnel_mtu(mtus[t.uplink] as usize, t.remote.is_ipv6());
        if max_inner < 576 {
            bail!(
                "tunnel {:?}: uplink MTU {} leaves only {max_inner} bytes for inner packets",
                t.name,
                mtus[t.uplink]
            );
        }
        let stats = Arc::new(TunnelStats::default());
        // Static keys are installed now; an IKE tunnel starts without SAs (`no_sa` drops) until its first
        // child SA.
        let (outbound, inbound, cipher) = match &t.keying {
            Keying::Static(keys) => {
                let out_key =
                    SaKey::new(keys.cipher, keys.key_out.expose()).context("outbound key")?;
                let in_key =
                    SaKey::new(keys.cipher, keys.key_in.expose()).context("inbound key")?;
                (
                    Some(OutboundSa::new(Spi(keys.spi_out), &out_key, t.esn)),
                    vec![InboundSa::new(
                        Spi(keys.spi_in),
                        &in_key,
                        t.esn,
                        t.replay_window,
                    )],
                    Some(keys.cipher),
                )
            }
            Keying::Ike(settings) => {
                ike_tunnels.push(IkeTunnel {
                    tunnel: i,
                    name: t.name.clone(),
                    uplink: t.uplink,
                    local: config.uplinks[t.uplink].local_addr(),
                    remote: t.remote,
                    settings: (**settings).clone(),
                    replay_window: t.replay_window,
                    stats: stats.clone(),
                    neighbor: config
                        .bgp
                        .as_ref()
                        .and_then(|bgp| bgp.neighbors.iter().position(|n| n.tunnel == Some(i))),
                });
                (None, Vec::new(), None)
            }
        };
        let weight = tunnel_weight(config, i);
        tunnel_routes.push(TunnelRoutes {
            name: t.name.clone(),
            peer_inside: t.peer_inside.clone(),
            routes: t.routes.clone(),
            weight,
        });
        inside_addrs.extend(t.inside.iter().copied());
        tunnels.push(TunnelIo {
            name: t.name.clone(),
            uplink: t.uplink,
            remote: t.remote,
            outbound,
            inbound,
            allowed_sources: t.allowed_sources(),
            max_inner,
            icmp_source_v4: t.peer_inside.iter().find_map(|a| match a {
                IpAddr::V4(v) => Some(*v),
                _ => None,
            }),
            icmp_source_v6: t.peer_inside.iter().find_map(|a| match a {
                IpAddr::V6(v) => Some(*v),
                _ => None,
            }),
            stats: stats.clone(),
        });
        tunnel_infos.push(TunnelInfo {
            name: t.name.clone(),
            uplink: config.uplinks[t.uplink].name.clone(),
            remote: t.remote,
            keying: t.keying.kind(),
            cipher,
            esn: cipher.map(|_| t.esn),
            replay_window: t.replay_window,
            mtu: max_inner,
            weight,
            stats,
        });
    }
    let neighbor_tunnels: Vec<Option<u32>> = config
        .bgp
        .iter()
        .flat_map(|b| b.neighbors.iter().map(|n| n.tunnel.map(|t| t as u32)))
        .collect();
    let neighbor_names: Vec<NeighborName> = config
        .bgp
        .iter()
        .flat_map(|b| {
            b.neighbors.iter().map(|n| NeighborName {
                label: n
                    .tunnel
                    .map(|t| config.tunnels[t].name.clone())
                    .unwrap_or_else(|| n.address.to_string()),
                address: n.address,
            })
        })
        .collect();

    let tun_stats = Arc::new(TunStats::default());
    if tunnels.is_empty() {
        // A BGP-only gateway (e.g. a route server next to the core router): no TUN, no data path.
        let mut state = GatewayState::new(
            g.name.clone(),
            g.tun.clone(),
            0,
            std::time::Instant::now(),
            tunnel_infos,
            uplink_infos,
            tun_stats,
        );
        state.neighbors = neighbor_names;
        return Ok((Arc::new(state), None, None));
    }

    // Tunnels exist here, so `smallest` is a real tunnel MTU.
    let smallest = tunnel_infos
        .iter()
        .map(|t| t.mtu as u32)
        .min()
        .unwrap_or(u32::MAX);
    let tun_mtu = g.mtu.unwrap_or(smallest);
    if tun_mtu > smallest {
        tracing::warn!(
            tun_mtu,
            tunnel_mtu = smallest,
            "TUN MTU above a tunnel's MTU: larger DF packets get ICMP errors"
        );
    }
    if tun_mtu < 1280 && inside_addrs.iter().any(|a| a.addr.is_ipv6()) {
        tracing::warn!(
            tun_mtu,
            "TUN MTU below 1280: the kernel disables IPv6 on the device"
        );
    }
    let tun = Tun::create_queues(&g.tun, tun_mtu, &inside_addrs, g.workers)
        .context("setting up the TUN device (needs CAP_NET_ADMIN)")?;
    tun.set_queue_len(g.tun_queue_len)
        .context("setting the TUN device's transmit queue")?;
    tracing::info!(tun = %tun.name(), mtu = tun_mtu, addresses = inside_addrs.len(), queues = tun.queues(),
        queue_len = g.tun_queue_len, "TUN device up");

    let installer = RouteInstaller::new(tunnel_routes, neighbor_tunnels);
    let liveness = braid_dataplane::Liveness::new(tunnel_infos.len());
    let health = crate::health::Health::new(liveness.clone(), tunnel_infos.len());
    let (ike_tx, ike) = if ike_tunnels.is_empty() {
        (None, None)
    } else {
        let (tx, rx) = crossbeam_channel::bounded(1024);
        (
            Some(tx),
            Some(IkeSetup {
                ports: ports_500(config, &ike_tunnels),
                tunnels: ike_tunnels,
                datagrams: rx,
            }),
        )
    };
    let flow_seed = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let dataplane = Dataplane::start(DataplaneSpec {
        tun: tun.into_files(),
        uplinks,
        tunnels,
        fib: installer.fib(),
        tun_stats: tun_stats.clone(),
        ike: ike_tx,
        spray: g.spray,
        liveness: liveness.clone(),
        flow_seed,
    })
    .context("starting the data path")?;
    let sas = dataplane.sa_control();
    for (i, t) in tunnel_infos.iter().enumerate() {
        match (t.cipher, sas.sas(i)) {
            (Some(cipher), Some(s)) => {
                tracing::info!(tunnel = %t.name, uplink = %t.uplink, remote = %t.remote, %cipher,
                    spi_in = format_args!("{:#010x}", s.inbound.first().map_or(0, |x| x.spi.0)),
                    spi_out = format_args!("{:#010x}", s.outbound.map_or(0, |x| x.spi.0)),
                    mtu = t.mtu, "tunnel installed (static keys)")
            }
            _ => {
                tracing::info!(tunnel = %t.name, uplink = %t.uplink, remote = %t.remote, mtu = t.mtu,
                "tunnel installed (IKEv2: no SAs until the first child SA)")
            }
        }
    }
    let mut state = GatewayState::new(
        g.name.clone(),
        g.tun.clone(),
        tun_mtu,
        dataplane.epoch(),
        tunnel_infos,
        uplink_infos,
        tun_stats,
    );
    state.neighbors = neighbor_names;
    state.tun_queue_len = Some(g.tun_queue_len);
    state.installer = Some(Arc::new(Mutex::new(installer)));
    state.liveness = Some(liveness);
    state.workers = dataplane.worker_stats();
    state.health = Some(health);
    state.sas = Some(sas);
    state.flow_seed = flow_seed;
    Ok((Arc::new(state), Some(dataplane), ike))
}

/// A tunnel's weight in next-hop groups: its own `weight`, else its uplink's, else the uplink's cap in Mbit/s,
/// else 1.
fn tunnel_weight(config: &Config, tunnel: usize) -> u32 {
    let t = &config.tunnels[tunnel];
    let u = &config.uplinks[t.uplink];
    t.weight
        .or(u.weight)
        .or(u
            .cap_bps
            .map(|c| (c / 1_000_000).clamp(1, u32::MAX as u64) as u32))
        .unwrap_or(1)
}

/// The route installer's thread: applies the speaker's forwarding changes in batches, publishes the FIB, and
/// mirrors prefixes into the kernel's routing table (`kernel` = the TUN device's name) until the speaker's
/// channel closes; then removes the kernel routes it added.
fn install_routes(
    installer: Arc<Mutex<RouteInstaller>>,
    rx: mpsc::Receiver<Vec<FibChange>>,
    kernel: Option<String>,
    installed: tokio::sync::watch::Sender<u64>,
) {
    /// After a batch arrives, more are awaited this long before building, so a burst of UPDATEs (a full
    /// table) costs a few builds rather than one per UPDATE.
    const SETTLE: Duration = Duration::from_millis(20);
    let mut kernel = kernel.and_then(|dev| match crate::kroutes::Mirror::open(&dev) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::error!(device = %dev, error = %e, "kernel routes disabled: cannot open rtnetlink");
            None
        }
    });
    while let Ok(first) = rx.recv() {
        let mut batches = vec![first];
        let deadline = std::time::Instant::now() + SETTLE;
        while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(b) => batches.push(b),
                Err(_) => break,
            }
        }
        let published = {
            let mut i = installer.lock().unwrap_or_else(|p| p.into_inner());
            for b in &batches {
                i.apply(b);
            }
            i.publish()
        };
        if let Some(p) = published {
            tracing::debug!(
                routes = p.routes,
                build_ms = p.build_time.as_secs_f64() * 1e3,
                added = p.added.len(),
                removed = p.removed.len(),
                "FIB published"
            );
            if let Some(k) = &mut kernel {
                k.apply(&p.added, &p.removed);
            }
        }
        // These batches are in the FIB and the kernel table now: neighbours waiting for that may hear of them.
        installed.send_modify(|n| *n += batches.len() as u64);
    }
    if let Some(k) = &mut kernel {
        k.remove_all();
    }
}

/// Starts a BFD session for every tunnel with `bfd = {...}`.
fn start_bfd(
    config: &Config,
    state: &Arc<GatewayState>,
    speaker: Option<braid_control::bgp::speaker::SpeakerHandle>,
) -> (
    tokio::sync::watch::Sender<bool>,
    Vec<tokio::task::JoinHandle<()>>,
) {
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let liveness = state.health.clone();
    let mut tunnels = Vec::new();
    for (i, t) in config.tunnels.iter().enumerate() {
        let Some(b) = t.bfd else { continue };
        // The session runs between the inside addresses, IPv4 first (as the BGP session does).
        let j = t.inside.iter().position(|a| a.addr.is_ipv4()).unwrap_or(0);
        let (Some(local), Some(&peer)) = (t.inside.get(j), t.peer_inside.get(j)) else {
            continue;
        };
        let neighbor = config
            .bgp
            .as_ref()
            .and_then(|bgp| bgp.neighbors.iter().position(|n| n.tunnel == Some(i)));
        tunnels.push(crate::bfd::BfdTunnel {
            tunnel: Some(i),
            name: t.name.clone(),
            local: local.addr,
            peer,
            interval: Duration::from_millis(b.interval_ms as u64),
            multiplier: b.multiplier,
            hold_down: Duration::from_millis(b.hold_down_ms as u64),
            neighbor,
        });
    }
    // LAN-side neighbours with BFD: single hop from the address the kernel would use towards them.
    for (j, n) in config
        .bgp
        .iter()
        .flat_map(|b| b.neighbors.iter())
        .enumerate()
    {
        let (Some(b), None) = (n.bfd, n.tunnel) else {
            continue;
        };
        let local = match n.local_address {
            Some(l) => l,
            None => match source_towards(n.address) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(neighbor = %n.address, error = %e, "BFD: no source address towards the neighbor; session not started");
                    continue;
                }
            },
        };
        tunnels.push(crate::bfd::BfdTunnel {
            tunnel: None,
            name: n.address.to_string(),
            local,
            peer: n.address,
            interval: Duration::from_millis(b.interval_ms as u64),
            multiplier: b.multiplier,
            hold_down: Duration::from_millis(b.hold_down_ms as u64),
            neighbor: Some(j),
        });
    }
    if tunnels.is_empty() {
        return (stop, Vec::new());
    }
    let (table, tasks) = crate::bfd::start(tunnels, liveness, speaker, stop_rx);
    let _ = state.bfd.set(table);
    (stop, tasks)
}

/// The source address the kernel picks towards `peer` (a connected UDP socket; nothing is sent).
fn source_towards(peer: IpAddr) -> std::io::Result<IpAddr> {
    let any: IpAddr = if peer.is_ipv4() {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    };
    let s = std::net::UdpSocket::bind((any, 0))?;
    s.connect((peer, crate::bfd::CONTROL_PORT))?;
    Ok(s.local_addr()?.ip())
}

/// The speaker's configuration from the validated `[bgp]`.
fn speaker_config(config: &Config, bgp: &crate::config::Bgp) -> Result<SpeakerConfig> {
    let mut neighbors = Vec::new();
    for n in &bgp.neighbors {
        let parse = |list: &Option<Vec<String>>| -> Result<Option<PrefixList>> {
            list.as_ref()
                .map(|l| {
                    PrefixList::parse(l).map_err(|e| anyhow::anyhow!("neighbor {}: {e}", n.address))
                })
                .transpose()
        };
        let tunnel = n.tunnel.map(|t| &config.tunnels[t]);
        // Over a tunnel with both inside families, carry both (IPv6 next hop = our IPv6 inside address);
        // otherwise the session's own family.
        let local_v6 = tunnel.and_then(|t| {
            t.inside.iter().find_map(|a| match a.addr {
                IpAddr::V6(v6) => Some(v6),
                _ => None,
            })
        });
        let families = if n.address.is_ipv6() {
            vec![Family::Ipv6Unicast]
        } else if local_v6.is_some() {
            Family::ALL.to_vec()
        } else {
            vec![Family::Ipv4Unicast]
        };
        let tunnel = tunnel.map(|t| t.name.clone());
        neighbors.push(NeighborConfig {
            label: tunnel.clone().unwrap_or_else(|| n.address.to_string()),
            tunnel,
            address: n.address,
            port: n.port,
            local_address: n.local_address,
            local_address_v6: local_v6,
            families,
            remote_asn: n.remote_asn,
            hold_time: n.hold_time,
            passive: n.passive,
            connect_retry: Duration::from_secs(n.connect_retry as u64),
            policy: NeighborPolicy {
                import: parse(&n.import)?,
                export: parse(&n.export)?,
                prepend: n.prepend,
                max_prefix: n.max_prefix,
            },
            // A LAN router reaches the tunnels through the kernel table: tell it of a route only once the
            // route is there.
            wait_for_fib: n.tunnel.is_none() && config.gateway.kernel_routes,
        });
    }
    Ok(SpeakerConfig {
        local_asn: config.gateway.asn.context("gateway.asn")?,
        router_id: config.gateway.router_id.context("gateway.router_id")?,
        listen_port: bgp.listen_port,
        max_paths: bgp.max_paths,
        networks: bgp.networks.clone(),
        neighbors,
        fib: None,
        fib_installed: None,
    })
}

async fn control_plane(
    config: Config,
    state: Arc<GatewayState>,
    fib: Option<(
        mpsc::Sender<Vec<FibChange>>,
        tokio::sync::watch::Receiver<u64>,
    )>,
    ike: Option<(IkeSetup, IkeContext)>,
) -> Result<()> {
    let listener = control::bind(&config.gateway.control_socket).await?;
    tracing::info!(socket = %config.gateway.control_socket.display(), "control socket listening");
    let speaker = match &config.bgp {
        Some(b) => {
            let mut sc = speaker_config(&config, b)?;
            if let Some((tx, installed)) = fib {
                sc.fib = Some(tx);
                sc.fib_installed = Some(installed);
            }
            let neighbors = sc.neighbors.len();
            let h = braid_control::bgp::speaker::start(sc)
                .await
                .with_context(|| {
                    format!("starting BGP (listening on TCP port {})", b.listen_port)
                })?;
            tracing::info!(neighbors, port = b.listen_port, "BGP speaker started");
            Some(h)
        }
        None => None,
    };
    let metrics = match config.gateway.metrics {
        Some(addr) => {
            let l = crate::metrics::bind(addr).await?;
            tracing::info!(%addr, "metrics endpoint listening (GET /metrics)");
            Some(tokio::spawn(crate::metrics::serve(
                l,
                state.clone(),
                speaker.clone(),
            )))
        }
        None => None,
    };
    let (bfd_stop, bfd_tasks) = start_bfd(&config, &state, speaker.clone());
    let silence = crate::silence::start(&config, &state);
    let ike = match ike {
        Some((setup, mut cx)) => {
            cx.speaker = speaker.clone();
            let n = setup.tunnels.len();
            let driver = crate::ike::start(setup.tunnels, setup.datagrams, cx, setup.ports)?;
            let _ = state.ike.set(driver.table.clone());
            tracing::info!(tunnels = n, "IKE driver started");
            Some(driver)
        }
        None => None,
    };
    let server = tokio::spawn(control::serve(listener, state.clone(), speaker.clone()));
    let sampler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            state.sample_rates();
        }
    });
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
            _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
            _ = hup.recv() => {
                tracing::warn!("SIGHUP: live reload of static keys is not supported yet; restart to apply a new configuration");
            }
        }
    }
    // BFD AdminDown first, then BGP's Cease: the peers move traffic away before we go.
    let _ = bfd_stop.send(true);
    for t in bfd_tasks {
        let _ = tokio::time::timeout(Duration::from_millis(500), t).await;
    }
    if let Some(s) = &speaker {
        // Tell every peer first (RFC 8203 message), so they move traffic away before we go.
        s.shutdown("braid gateway shutting down").await;
        // Keep forwarding while they do: packets already on their way to us (and whatever a peer sends
        // before it has processed the Cease) still get through. Only then do the data path and the kernel
        // routes go.
        tokio::time::sleep(SHUTDOWN_DRAIN).await;
    }
    // Last, IKE: the Cease above travelled through the tunnels. Every peer is told its SAs are gone.
    if let Some(ike) = ike {
        ike.close(Duration::from_secs(2)).await;
    }
    server.abort();
    sampler.abort();
    if let Some(s) = silence {
        s.abort();
    }
    if let Some(m) = metrics {
        m.abort();
    }
    Ok(())
}
