//! The BFD driver: one asynchronous-mode session (RFC 5880) per tunnel with `bfd = {...}`, single hop over the
//! tunnel's inside addresses (RFC 5881): UDP to port 3784 from a fixed source port in 49152-65535, TTL 255 out
//! and at least 255 in (GTSM), through the TUN device like the BGP session it protects. A LAN-side BGP
//! neighbour (`address = ...`, e.g. the site's core router) can have one too: its Down resets that BGP session.
//!
//! What a session's verdict does:
//! - **Down** (detection time expired, or the peer said so): BFD votes the tunnel down at once ([`Health`]
//!   ANDs its vote with IKE's into the data path's `Liveness`), so its flows move to the other members of
//!   every group (or to the backups) with no FIB rebuild, and the BGP session over the tunnel is reset
//!   (Cease / BFD Down), long before its hold timer.
//! - **Up**: BFD votes the tunnel live again after `hold_down_ms` of uninterrupted Up (against flapping).
//! - A tunnel with BFD starts dead and becomes live at its first Up (after the hold-down).
//! - On SIGTERM every session sends AdminDown first (the peer moves traffic away without waiting for detection),
//!   then BGP sends its Cease.
//!
//! The protocol itself is the sans-IO [`braid_control::bfd::session::Session`]; this module only owns
//! sockets, timers and the reactions.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use braid_control::bfd::packet::{ControlPacket, SessionState};
use braid_control::bfd::session::{Event, Negotiated, Session, SessionConfig};
use braid_control::bgp::speaker::SpeakerHandle;
use serde_json::{json, Value};
use tokio::net::UdpSocket;
use tokio::sync::watch;

use crate::health::{Health, Source};

/// RFC 5881 4: single-hop BFD Control packets go to this port.
pub const CONTROL_PORT: u16 = 3784;
/// RFC 5881 4: the source port range; tunnel `i` uses `SOURCE_PORT_BASE + i`.
pub const SOURCE_PORT_BASE: u16 = 49152;

/// One BFD session as configured: over a tunnel, or to a LAN-side BGP neighbour.
#[derive(Clone, Debug)]
pub struct BfdTunnel {
    /// The data path's tunnel index (`None` for a LAN-side neighbour: no tunnel to take out of groups).
    pub tunnel: Option<usize>,
    /// The tunnel's name, or the neighbour's address.
    pub name: String,
    /// Our inside address and the peer's (the session's endpoints).
    pub local: IpAddr,
    pub peer: IpAddr,
    pub interval: Duration,
    pub multiplier: u8,
    pub hold_down: Duration,
    /// The BGP neighbour (its index) whose session runs in this tunnel.
    pub neighbor: Option<usize>,
}

/// What `braid show bfd` prints for one session.
#[derive(Clone, Debug)]
pub struct BfdStatus {
    pub cfg: BfdTunnel,
    pub state: SessionState,
    pub remote_state: SessionState,
    pub local_discr: u32,
    pub remote_discr: u32,
    pub diag: &'static str,
    pub negotiated: Option<Negotiated>,
    pub live: bool,
    pub ups: u64,
    pub downs: u64,
    pub since: Instant,
    pub bad_packets: u64,
    pub error: Option<String>,
}

/// The sessions' status, shared with the control socket.
pub type BfdTable = Arc<Mutex<Vec<BfdStatus>>>;

/// Starts one task per session on the current runtime. Sending `true` on `stop` makes every session send
/// AdminDown and end; the returned handles finish after that.
pub fn start(
    tunnels: Vec<BfdTunnel>,
    liveness: Option<Health>,
    speaker: Option<SpeakerHandle>,
    stop: watch::Receiver<bool>,
) -> (BfdTable, Vec<tokio::task::JoinHandle<()>>) {
    let now = Instant::now();
    let table: BfdTable = Arc::new(Mutex::new(
        tunnels
            .iter()
            .enumerate()
            .map(|(i, t)| BfdStatus {
                cfg: t.clone(),
                state: SessionState::Down,
                remote_state: SessionState::Down,
                local_discr: discriminator(i),
                remote_discr: 0,
                diag: "No Diagnostic",
                negotiated: None,
                live: false,
                ups: 0,
                downs: 0,
                since: now,
                bad_packets: 0,
                error: None,
            })
            .collect(),
    ));
    let mut tasks = Vec::new();
    for (i, t) in tunnels.into_iter().enumerate() {
        // Not live until BFD says so.
        if let (Some(tunnel), Some(l)) = (t.tunnel, &liveness) {
            l.vote(tunnel, Source::Bfd, false);
        }
        let (table, liveness, speaker, stop) = (
            table.clone(),
            liveness.clone(),
            speaker.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            if let Err(e) = run(i, t.clone(), &table, &liveness, speaker, stop).await {
                tracing::error!(tunnel = %t.name, error = %format!("{e:#}"), "BFD session stopped");
                // Without BFD the tunnel must not stay dead forever: fall back to BGP alone.
                if let (Some(tunnel), Some(l)) = (t.tunnel, liveness) {
                    l.vote(tunnel, Source::Bfd, true);
                }
                if let Some(s) = lock(&table).get_mut(i) {
                    s.error = Some(format!("{e:#}"));
                    s.live = true;
                }
            }
        }));
    }
    (table, tasks)
}

/// A per-gateway unique, non-zero discriminator for session `i` (random high bits, so a restarted gateway is
/// told apart from its previous life).
fn discriminator(i: usize) -> u32 {
    use std::hash::{BuildHasher, Hasher};
    static BASE: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    let base = *BASE.get_or_init(|| {
        let h = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        ((h as u32) & 0xffff_0000) | 0x8000_0000
    });
    base | ((i as u32 + 1) & 0xffff)
}

fn lock(t: &BfdTable) -> std::sync::MutexGuard<'_, Vec<BfdStatus>> {
    t.lock().unwrap_or_else(|p| p.into_inner())
}

fn bind(local: SocketAddr) -> Result<UdpSocket> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::DGRAM,
        None,
    )?;
    s.set_nonblocking(true)?;
    s.bind(&local.into())
        .with_context(|| format!("binding {local}"))?;
    braid_dataplane::sys::set_gtsm(s.as_raw_fd(), local.is_ipv6())
        .context("setting TTL 255 / minimum TTL 255")?;
    let s: std::net::UdpSocket = s.into();
    Ok(UdpSocket::from_std(s)?)
}

async fn run(
    i: usize,
    t: BfdTunnel,
    table: &BfdTable,
    liveness: &Option<Health>,
    speaker: Option<SpeakerHandle>,
    mut stop: watch::Receiver<bool>,
) -> Result<()> {
    let rx = bind(SocketAddr::new(t.local, CONTROL_PORT))?;
    let tx = bind(SocketAddr::new(
        t.local,
        SOURCE_PORT_BASE.saturating_add(i as u16),
    ))?;
    tx.connect(SocketAddr::new(t.peer, CONTROL_PORT)).await?;
    let mut cfg = SessionConfig::new(discriminator(i));
    cfg.desired_min_tx = t.interval;
    cfg.required_min_rx = t.interval;
    cfg.detect_mult = t.multiplier;
    cfg.jitter_seed ^= (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut session = Session::new(cfg, Instant::now());
    let mut live_at: Option<Instant> = None;
    // When the session came Up, until its timers were compared with the peer's (once per Up).
    let mut compare_at: Option<Instant> = None;
    let mut buf = [0u8; 128];
    tracing::info!(tunnel = %t.name, local = %t.local, peer = %t.peer,
        interval_ms = t.interval.as_millis() as u64, multiplier = t.multiplier, "BFD session started");
    loop {
        let now = Instant::now();
        while let Some(p) = session.poll_transmit(now) {
            let _ = tx.send(&p.to_bytes()).await;
        }
        while let Some(ev) = session.poll_event() {
            let mut st = lock(table);
            let s = &mut st[i];
            s.since = now;
            match ev {
                Event::Up => {
                    s.ups += 1;
                    live_at = Some(now + t.hold_down);
                    // After Up both ends switch from the slow rate to their own timers (a Poll sequence each):
                    // compare once that has settled.
                    compare_at = Some(now + TIMER_SETTLE);
                    tracing::info!(tunnel = %t.name, hold_down_ms = t.hold_down.as_millis() as u64, "BFD Up");
                    // The path works: BGP need not wait out its connect-retry backoff.
                    if let (Some(sp), Some(n)) = (&speaker, t.neighbor) {
                        sp.bfd_up(n);
                    }
                }
                Event::Down { diag } => {
                    s.downs += 1;
                    live_at = None;
                    s.live = false;
                    if let (Some(tunnel), Some(l)) = (t.tunnel, liveness) {
                        l.vote(tunnel, Source::Bfd, false);
                    }
                    tracing::warn!(tunnel = %t.name, diag = diag.name(), "BFD Down: tunnel leaves its groups");
                    if let (Some(sp), Some(n)) = (&speaker, t.neighbor) {
                        sp.bfd_down(n);
                    }
                }
            }
        }
        if compare_at.is_some_and(|at| at <= now) && session.state() == SessionState::Up {
            let n = session.negotiated();
            if !n.poll_in_progress {
                compare_at = None;
                if timers_match(&n) == Some(false) {
                    let ms = |d: Option<Duration>| d.map_or(0, |d| d.as_millis() as u64);
                    tracing::warn!(tunnel = %t.name,
                        local_ms = t.interval.as_millis() as u64, local_multiplier = t.multiplier,
                        peer_desired_min_tx_ms = ms(n.remote_desired_min_tx),
                        peer_multiplier = n.remote_detect_mult.unwrap_or(0),
                        detection_here_ms = ms(n.detection_time),
                        detection_at_peer_ms = ms(peer_detection_time(&n)),
                        "BFD timers differ from the peer's: the two ends declare the path down after different times; keep removal timers the same on both sides");
                }
            }
        }
        if live_at.is_some_and(|at| at <= now) && session.state() == SessionState::Up {
            live_at = None;
            if let (Some(tunnel), Some(l)) = (t.tunnel, liveness) {
                l.vote(tunnel, Source::Bfd, true);
            }
            lock(table)[i].live = true;
            tracing::info!(tunnel = %t.name, "tunnel live (BFD Up past its hold-down)");
        }
        {
            let mut st = lock(table);
            let s = &mut st[i];
            s.state = session.state();
            s.remote_state = session.remote_state();
            s.remote_discr = session.remote_discr();
            s.diag = session.local_diag().name();
            s.negotiated = Some(session.negotiated());
        }
        let deadline = [session.poll_timeout(), live_at, compare_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + Duration::from_secs(1));
        tokio::select! {
            r = rx.recv_from(&mut buf) => {
                let (n, from) = r?;
                if from.ip() != t.peer {
                    lock(table)[i].bad_packets += 1;
                    continue;
                }
                match ControlPacket::decode(&buf[..n]) {
                    Ok(p) => {
                        if !session.handle_packet(Instant::now(), &p) {
                            lock(table)[i].bad_packets += 1;
                        }
                    }
                    Err(_) => lock(table)[i].bad_packets += 1,
                }
            }
            _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                session.handle_timeout(Instant::now());
            }
            _ = stop.changed() => {
                let now = Instant::now();
                session.admin_down(now);
                while let Some(p) = session.poll_transmit(now) {
                    let _ = tx.send(&p.to_bytes()).await;
                }
                tracing::info!(tunnel = %t.name, "BFD AdminDown sent");
                return Ok(());
            }
        }
    }
}

/// `braid show bfd --json`.
pub fn json(gateway: &str, table: Option<&BfdTable>) -> Value {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let sessions: Vec<Value> = table
        .map(|t| lock(t).clone())
        .unwrap_or_default()
        .iter()
        .map(|s| {
            let n = s.negotiated;
            json!({
                "tunnel": s.cfg.tunnel.map(|_| s.cfg.name.clone()),
                "name": s.cfg.name,
                "local": s.cfg.local.to_string(),
                "peer": s.cfg.peer.to_string(),
                "state": s.state.name(),
                "remote_state": s.remote_state.name(),
                "local_discr": s.local_discr,
                "remote_discr": s.remote_discr,
                "diag": s.diag,
                "live": s.live,
                "ups": s.ups,
                "downs": s.downs,
                "since_s": s.since.elapsed().as_secs(),
                "bad_packets": s.bad_packets,
                "error": s.error,
                "configured": { "interval_ms": ms(s.cfg.interval), "multiplier": s.cfg.multiplier,
                                "hold_down_ms": ms(s.cfg.hold_down) },
                "local_timers": n.map(|n| json!({ "desired_min_tx_ms": ms(n.local_desired_min_tx),
                    "required_min_rx_ms": ms(n.local_required_min_rx), "detect_mult": n.local_detect_mult })),
                "remote_timers": n.map(|n| json!({ "desired_min_tx_ms": n.remote_desired_min_tx.map(ms),
                    "required_min_rx_ms": ms(n.remote_required_min_rx), "detect_mult": n.remote_detect_mult })),
                "negotiated": n.map(|n| json!({ "tx_interval_ms": n.tx_interval.map(ms),
                    "detection_time_ms": n.detection_time.map(ms),
                    "peer_detection_time_ms": peer_detection_time(&n).map(ms),
                    "timers_match": timers_match(&n) })),
            })
        })
        .collect();
    json!({ "gateway": gateway, "sessions": sessions })
}

/// How long after Up the timers are compared with the peer's.
const TIMER_SETTLE: Duration = Duration::from_secs(3);

/// The peer's detection time (RFC 5880 6.8.4): our multiplier times the interval it receives at, the larger of
/// its Required Min RX and our Desired Min TX.
fn peer_detection_time(n: &Negotiated) -> Option<Duration> {
    let interval = n.remote_required_min_rx.max(n.local_desired_min_tx);
    Some(interval * n.local_detect_mult as u32).filter(|_| n.remote_desired_min_tx.is_some())
}

/// Whether both ends declare the session down after the same time (`None` until the peer has been heard).
fn timers_match(n: &Negotiated) -> Option<bool> {
    let here = n.detection_time?;
    let there = peer_detection_time(n)?;
    Some(here.abs_diff(there) < Duration::from_millis(1))
}
