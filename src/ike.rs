//! The IKE driver: one [`IkeSession`] (braid-crypto's sans-IO IKEv2 core, RFC 7296) per tunnel with
//! `ike = {...}`, driven on tokio, keying the data path's child SAs through [`SaControl`].
//!
//! ```text
//!  braid-rx thread --crossbeam--> "braid-ike-rx" thread --mpsc--> router task --mpsc--> tunnel task (one per
//!  (IKE behind the non-ESP marker)  (blocking recv, forwards)     (SPI / address)       IKE tunnel)
//!                                                                                          |  events first:
//!                                                     SaControl (install/switch/remove) <--+  applied + waited
//!                                                     IkeSender (uplink socket, marker) <--+  then transmits
//! ```
//!
//! - **Dispatch.** The router sends a received message to the tunnel whose IKE SA has the message's initiator
//!   SPI (every tunnel registers the SPIs of the messages it sends and of its IKE SAs), else to the tunnel
//!   configured with that (uplink, peer address and port), else with that (uplink, peer address) if only one
//!   tunnel has it. A NAT'ed peer whose address or port changed is thus still found by its SPI.
//! - **Port 500** (RFC 7296 2.23). Per uplink address with IKE tunnels and `ike_port_500`, a tokio socket on
//!   port 500 receives plain IKE (no non-ESP marker) into the same router. A task remembers which peers it
//!   last heard on such a socket and answers them there; once a peer floats (its next message arrives on
//!   the uplink's port behind the marker), everything goes back through the uplink. The core's NAT hashes
//!   name the uplink's port 4500, so a peer that starts on 500 always detects a NAT, floats and encapsulates
//!   ESP. An initiator with `ike.start_port = 500` sends its IKE_SA_INIT to the peer's port 500 from ours;
//!   the core floats it to the remote port for IKE_AUTH.
//! - **Ordering, for loss-free rekeys.** After every input (message, timer, tick), the task drains *all* the
//!   session's events and applies them (installs the new inbound SA, switches the outbound SA, removes old
//!   ones) and waits until the data-path threads have applied them ([`Pending::wait`] on a blocking thread);
//!   only then does it send the session's transmits. So a CREATE_CHILD_SA response never leaves before the new
//!   inbound SA is in place, and a Delete never before the new outbound SA is.
//! - **No SA for a moment.** A child SA deleted without a replacement while the IKE SA lives (a peer that
//!   deletes before it creates, as strongSwan does at a hard expiry) leaves the data path holding the tunnel's
//!   packets for [`OUTBOUND_HOLD`], sent in order on the next child SA. A child SA we answered for (IKE_AUTH as
//!   responder, a peer's CREATE_CHILD_SA for a new child) is used outbound only once the peer's first ESP arrives
//!   on it, at the latest after [`PEER_READY_WAIT`]: the peer installs its half when our answer arrives.
//! - **Rekey timing.** `child_lifetime` is when a child SA is rekeyed (minus a random 0..10%, like strongSwan's
//!   `rekey_time`): the driver asks the session for the rekey; the session's own (hard) lifetime is 125% of
//!   it, so a rekey that needs retransmissions still finishes before the SA expires. The IKE SA is rekeyed
//!   by the session at `lifetime` (minus 0..10%).
//! - **Liveness.** A tunnel without an outbound child SA must not carry traffic: IKE votes it down in
//!   [`Health`] (which ANDs IKE's vote with BFD's into the data path's `Liveness`) until its first child SA is
//!   installed, and again when the IKE SA goes down. Every 500 ms the task tells the session when the tunnel
//!   last authenticated an ESP packet ([`TunnelStats::last_rx_ms`]), so DPD only probes idle tunnels.
//! - **IKE down** (DPD found the peer dead, the peer deleted the IKE SA, ...): the tunnel's SAs are cleared,
//!   the tunnel is voted down, and the BGP session over it is reset at once ([`SpeakerHandle::path_down`]).
//!   An initiator starts again after a backoff (1 s doubling to 30 s, jittered); a responder waits for the peer.
//! - **Shutdown.** [`IkeDriver::close`] deletes every IKE SA (INFORMATIONAL Delete) and waits briefly for the
//!   answers; the daemon calls it after BFD AdminDown and BGP's Cease.
//!
//! Secrets (the PSK, keying material) are never logged: the core's types redact them. State changes are
//! logged at info with the tunnel's name, algorithms and SPIs.
//!
//! - **Cookies under load.** [`HalfOpen`] counts half-open IKE SAs across all tunnels; at `[gateway]
//!   ike_cookie_threshold` or more, every responder demands a cookie (RFC 7296 2.6) before it computes
//!   anything for an IKE_SA_INIT.
//!
//! Left out: IKE fragmentation, MOBIKE, certificates (see the core's own list), and several child SAs per
//! tunnel (one route-based child SA carries everything the FIB routes into the tunnel).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use braid_control::bgp::speaker::SpeakerHandle;
use braid_crypto::ike::{
    ChildId, DownReason, Event, IkeConfig, IkeSession, Psk, SessionState, Status as SessionStatus,
    TrafficSelector,
};
use braid_crypto::{InboundSa, OutboundSa, SaKey, Spi};
use braid_dataplane::{IkeDatagram, IkeSender, Pending, SaControl, TunnelStats};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};

use crate::config::IkeSettings;
use crate::health::{Health, Source};

/// How often a task reads the tunnel's last-inbound time and SA byte counters.
const TICK: Duration = Duration::from_millis(500);
/// How long a task waits for the data path to apply its SA changes.
const APPLY_TIMEOUT: Duration = Duration::from_secs(2);
/// An initiator's restart backoff after its IKE SA went down: first and largest delay.
const BACKOFF_FIRST: Duration = Duration::from_secs(1);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// The session's hard child lifetime, relative to the configured rekey time (`child_lifetime`).
const HARD_OVER_SOFT: f64 = 1.25;
/// NAT keepalives (RFC 3948 2.3) while we are behind a NAT.
const NAT_KEEPALIVE: Duration = Duration::from_secs(20);
/// An SPI registration of a tunnel that has not been used this long is forgotten.
const SPI_IDLE: Duration = Duration::from_secs(600);
/// How long the data path holds a tunnel's packets after its outbound child SA was deleted without a
/// replacement while the IKE SA lives (the peer, or our own hard expiry, creates the next one): they go out
/// with the next child SA instead of being lost.
pub const OUTBOUND_HOLD: Duration = Duration::from_secs(2);
/// How long a child SA we answered for waits for the peer's first ESP on it before we send on it anyway.
const PEER_READY_WAIT: Duration = Duration::from_millis(500);
/// How often a waiting child SA looks for the peer's first ESP on it.
const PEER_READY_POLL: Duration = Duration::from_millis(2);
/// Received messages queued per tunnel before they are dropped.
const QUEUE: usize = 256;

/// Where the driver answers plain IKE on UDP port 500 (RFC 7296 section 2.23): one socket per uplink
/// address, for the uplinks with `ike_port_500` that have IKE tunnels.
#[derive(Clone, Debug)]
pub struct Port500 {
    /// The uplinks (indices) whose tunnels this socket serves (uplinks that share an address share it).
    pub uplinks: Vec<usize>,
    /// For the error message: the first uplink's name.
    pub name: String,
    pub local: std::net::IpAddr,
    pub device: Option<String>,
    pub fwmark: Option<u32>,
}

/// The IKE port without NAT traversal.
pub const IKE_PORT: u16 = 500;

/// One tunnel with IKE keying, as the daemon hands it over.
#[derive(Clone)]
pub struct IkeTunnel {
    /// The data path's tunnel index.
    pub tunnel: usize,
    pub name: String,
    /// The uplink's index and its socket's local address.
    pub uplink: usize,
    pub local: SocketAddr,
    /// The peer's configured address.
    pub remote: SocketAddr,
    pub settings: IkeSettings,
    pub replay_window: u32,
    pub stats: Arc<TunnelStats>,
    /// The BGP neighbour (its index) whose session runs in this tunnel.
    pub neighbor: Option<usize>,
}

/// What `braid show tunnels` shows of one IKE tunnel.
#[derive(Clone, Debug)]
pub struct IkeStatus {
    pub tunnel: usize,
    pub initiator: bool,
    /// The session's last snapshot (no keys).
    pub session: Option<SessionStatus>,
    /// The peer's authenticated identity.
    pub remote_id: Option<String>,
    /// IKE SAs established, and lost.
    pub ups: u64,
    pub downs: u64,
    pub last_down: Option<String>,
    /// When the state last changed.
    pub since: Instant,
    pub child_rekeys: u64,
    pub ike_rekeys: u64,
    pub rekey_failures: u64,
    /// SA changes the data path refused or did not confirm.
    pub apply_errors: u64,
    /// When an initiator starts again after its IKE SA went down.
    pub restart_at: Option<Instant>,
}

/// Every IKE tunnel's status, in the order of [`start`]'s tunnels.
pub type IkeTable = Arc<Mutex<Vec<IkeStatus>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The router's tables: where a received message goes.
#[derive(Default)]
struct Routes {
    /// Initiator SPI -> (task, last used).
    spis: HashMap<u64, (usize, Instant)>,
    /// (uplink, peer address) -> task: configured, then as the peer moves.
    addrs: HashMap<(usize, SocketAddr), usize>,
}

impl Routes {
    fn register_spi(&mut self, spi_i: u64, task: usize, now: Instant) {
        if spi_i != 0 {
            self.spis.insert(spi_i, (task, now));
        }
    }

    fn route(&mut self, d: &IkeDatagram, now: Instant) -> Option<usize> {
        self.route_from(d.uplink, d.from, &d.message, now)
    }

    fn route_from(
        &mut self,
        uplink: usize,
        from: SocketAddr,
        message: &[u8],
        now: Instant,
    ) -> Option<usize> {
        if message.len() >= 8 {
            let spi_i = u64::from_be_bytes(message[..8].try_into().ok()?);
            if let Some((task, used)) = self.spis.get_mut(&spi_i) {
                *used = now;
                return Some(*task);
            }
        }
        if let Some(&task) = self.addrs.get(&(uplink, from)) {
            return Some(task);
        }
        let mut same_ip = self
            .addrs
            .iter()
            .filter(|((u, a), _)| *u == uplink && a.ip() == from.ip())
            .map(|(_, &t)| t);
        match (same_ip.next(), same_ip.next()) {
            (Some(t), None) => Some(t),
            _ => None,
        }
    }
}

/// The running driver.
pub struct IkeDriver {
    pub table: IkeTable,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    router: tokio::task::JoinHandle<()>,
    /// The port 500 sockets' receive loops.
    receivers: Vec<tokio::task::JoinHandle<()>>,
}

/// A received IKE message as the router hands it to a tunnel task: the sender, the message, and the
/// port 500 socket (its index) it came in on, or `None` for the uplink's port (behind the non-ESP marker).
type Received = (SocketAddr, Vec<u8>, Option<usize>);

/// Binds `local`:500 for plain IKE (with the uplink's device and fwmark, like its NAT-T socket).
fn bind_port_500(p: &Port500) -> anyhow::Result<tokio::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = SocketAddr::new(p.local, IKE_PORT);
    let fail = |e: std::io::Error| {
        anyhow::anyhow!(
            "IKE on UDP port 500: cannot bind {addr} (uplink {:?}): {e}; set `ike_port_500 = false` on the \
             uplink or in [gateway] to answer IKE on the uplink's port only",
            p.name
        )
    };
    let sock =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(fail)?;
    if addr.is_ipv6() {
        sock.set_only_v6(true).map_err(fail)?;
    }
    if let Some(d) = &p.device {
        sock.bind_device(Some(d.as_bytes())).map_err(fail)?;
    }
    if let Some(m) = p.fwmark {
        sock.set_mark(m).map_err(fail)?;
    }
    sock.set_nonblocking(true).map_err(fail)?;
    sock.bind(&addr.into()).map_err(fail)?;
    tokio::net::UdpSocket::from_std(sock.into()).map_err(fail)
}

/// What every tunnel task shares.
#[derive(Clone)]
pub struct IkeContext {
    pub sas: SaControl,
    pub sender: IkeSender,
    pub health: Health,
    pub speaker: Option<SpeakerHandle>,
    /// The data path's start (the zero of `TunnelStats::last_rx_ms`).
    pub epoch: Instant,
    /// Half-open IKE SAs across all tunnels from which responders demand cookies (0: always).
    pub cookie_threshold: usize,
}

/// How long a half-open IKE SA counts (the core's `half_open_timeout`).
const HALF_OPEN_WINDOW: Duration = Duration::from_secs(30);

/// Half-open IKE SAs across every tunnel: responder IKE SAs that answered an IKE_SA_INIT and have not seen
/// their IKE_AUTH, each counted until it completes or [`HALF_OPEN_WINDOW`] passes (a newer IKE_SA_INIT
/// replaces a tunnel's half-open SA in the core, but the replaced one still counts here: a flood of
/// IKE_SA_INITs that never finish is exactly what this is for). At `threshold` or more the gateway is "under
/// load" (RFC 7296 2.6): responders answer IKE_SA_INIT without a valid cookie with a COOKIE notify and create
/// no state, so each costs no DH computation until the sender proves it receives at its address.
#[derive(Debug)]
pub struct HalfOpen {
    threshold: usize,
    /// (task, initiator SPI) -> when it was first seen half-open.
    open: HashMap<(usize, u64), Instant>,
    /// The most tracked at once; beyond it the gateway is under load anyway.
    cap: usize,
    was_under_load: bool,
}

impl HalfOpen {
    pub fn new(threshold: usize) -> HalfOpen {
        HalfOpen {
            threshold,
            open: HashMap::new(),
            cap: threshold.saturating_mul(4).max(64),
            was_under_load: false,
        }
    }

    /// Task `task`'s session has a half-open SA with initiator SPI `spi_i` (noted again: no change).
    pub fn note(&mut self, task: usize, spi_i: u64, now: Instant) {
        self.expire(now);
        if self.open.len() < self.cap {
            self.open.entry((task, spi_i)).or_insert(now);
        }
    }

    /// The IKE SA with initiator SPI `spi_i` of task `task` completed its IKE_AUTH.
    pub fn complete(&mut self, task: usize, spi_i: u64) {
        self.open.remove(&(task, spi_i));
    }

    /// Half-open SAs counted now.
    pub fn count(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.open.len()
    }

    /// Whether responders should demand cookies now; the second value says whether that changed since the
    /// last call (for the log).
    pub fn under_load(&mut self, now: Instant) -> (bool, bool) {
        let on = self.count(now) >= self.threshold;
        let changed = on != self.was_under_load;
        self.was_under_load = on;
        (on, changed)
    }

    fn expire(&mut self, now: Instant) {
        self.open
            .retain(|_, at| now.saturating_duration_since(*at) < HALF_OPEN_WINDOW);
    }
}

/// Starts the bridge thread, the router and one task per tunnel on the current runtime.
pub fn start(
    tunnels: Vec<IkeTunnel>,
    datagrams: crossbeam_channel::Receiver<IkeDatagram>,
    cx: IkeContext,
    ports: Vec<Port500>,
) -> anyhow::Result<IkeDriver> {
    let now = Instant::now();
    let plain: Arc<Vec<Arc<tokio::net::UdpSocket>>> = Arc::new(
        ports
            .iter()
            .map(|p| bind_port_500(p).map(Arc::new))
            .collect::<anyhow::Result<_>>()?,
    );
    for p in &ports {
        tracing::info!(local = %SocketAddr::new(p.local, IKE_PORT), uplink = %p.name, "IKE also on port 500");
    }
    let table: IkeTable = Arc::new(Mutex::new(
        tunnels
            .iter()
            .map(|t| IkeStatus {
                tunnel: t.tunnel,
                initiator: t.settings.initiator,
                session: None,
                remote_id: None,
                ups: 0,
                downs: 0,
                last_down: None,
                since: now,
                child_rekeys: 0,
                ike_rekeys: 0,
                rekey_failures: 0,
                apply_errors: 0,
                restart_at: None,
            })
            .collect(),
    ));
    let routes = Arc::new(Mutex::new(Routes::default()));
    let half_open = Arc::new(Mutex::new(HalfOpen::new(cx.cookie_threshold)));
    let (stop, stop_rx) = watch::channel(false);
    let rng = SystemRandom::new();
    let mut inboxes = Vec::new();
    let mut tasks = Vec::new();
    for (i, t) in tunnels.into_iter().enumerate() {
        lock(&routes).addrs.insert((t.uplink, t.remote), i);
        let cfg = ike_config(&t.settings);
        let session = IkeSession::new(cfg, t.local, t.remote, now, &rng)
            .map_err(|e| anyhow::anyhow!("tunnel {:?}: {e}", t.name))?;
        // Nothing is sent on the tunnel until its first child SA is in place.
        cx.health.vote(t.tunnel, Source::Ike, false);
        let (tx, rx) = mpsc::channel(QUEUE);
        inboxes.push(tx);
        let own_plain = ports.iter().position(|p| p.uplinks.contains(&t.uplink));
        let task = Task {
            i,
            plain: plain.clone(),
            own_plain,
            plain_peers: HashMap::new(),
            t,
            session,
            inbox: rx,
            cx: cx.clone(),
            routes: routes.clone(),
            half_open: half_open.clone(),
            table: table.clone(),
            rng: rng.clone(),
            backoff: BACKOFF_FIRST,
            outbound: None,
            rekey_at: None,
            last_rx_ms: 0,
            next_keepalive: None,
            behind_nat: false,
            state: SessionState::Idle,
            had_child: false,
            deferred: None,
        };
        let stop = stop_rx.clone();
        tasks.push(tokio::spawn(task.run(stop)));
    }
    // The data path's blocking channel, into tokio.
    let (bridge_tx, mut bridge_rx) = mpsc::channel::<(IkeDatagram, Option<usize>)>(1024);
    let marker_tx = bridge_tx.clone();
    std::thread::Builder::new()
        .name("braid-ike-rx".into())
        .spawn(move || {
            while let Ok(d) = datagrams.recv() {
                if marker_tx.blocking_send((d, None)).is_err() {
                    break;
                }
            }
        })?;
    // Port 500: plain IKE, into the same router.
    let mut receivers = Vec::new();
    for (k, sock) in plain.iter().enumerate() {
        let (sock, tx, uplink) = (sock.clone(), bridge_tx.clone(), ports[k].uplinks[0]);
        receivers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 65536];
            loop {
                match sock.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        let d = IkeDatagram {
                            uplink,
                            from,
                            message: buf[..n].to_vec(),
                        };
                        if tx.send((d, Some(k))).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "IKE port 500: receive failed");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
        }));
    }
    drop(bridge_tx);
    let router = tokio::spawn(async move {
        let mut unrouted = 0u64;
        while let Some((d, via)) = bridge_rx.recv().await {
            let now = Instant::now();
            let task = match via.and_then(|k| ports.get(k)) {
                // A shared address: the first of its uplinks with a tunnel for the message.
                Some(p) => p
                    .uplinks
                    .iter()
                    .find_map(|&u| lock(&routes).route_from(u, d.from, &d.message, now)),
                None => lock(&routes).route(&d, now),
            };
            match task.and_then(|t| inboxes.get(t)) {
                Some(inbox) => {
                    let _ = inbox.try_send((d.from, d.message, via));
                }
                None => {
                    unrouted += 1;
                    if unrouted.is_power_of_two() {
                        tracing::warn!(from = %d.from, uplink = d.uplink, unrouted,
                            "IKE message for no configured tunnel dropped");
                    }
                }
            }
        }
    });
    Ok(IkeDriver {
        table,
        stop,
        tasks,
        router,
        receivers,
    })
}

impl IkeDriver {
    /// Deletes every IKE SA (the peers are told) and stops the tasks, waiting at most `timeout`.
    pub async fn close(self, timeout: Duration) {
        let _ = self.stop.send(true);
        let all = futures_join(self.tasks);
        let _ = tokio::time::timeout(timeout, all).await;
        self.router.abort();
        for r in self.receivers {
            r.abort();
        }
    }
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<()>>) {
    for t in tasks {
        let _ = t.await;
    }
}

/// The core's configuration from a tunnel's validated `ike` table.
fn ike_config(s: &IkeSettings) -> IkeConfig {
    let mut cfg = IkeConfig::new(
        s.initiator,
        Psk::new(s.psk.expose().to_vec()),
        s.local_id.clone(),
    );
    cfg.remote_id = s.remote_id.clone();
    cfg.ike_proposals = s.proposals.clone();
    cfg.esp_proposals = s.esp_proposals.clone();
    cfg.ike_lifetime = s.lifetime;
    cfg.child_lifetime = s.child_lifetime.mul_f64(HARD_OVER_SOFT);
    cfg.child_bytes = s.child_bytes;
    cfg.dpd_interval = s.dpd_interval;
    cfg.retransmit = s.retransmit;
    cfg.force_encap = s.force_encap;
    cfg.start_port = s.start_port;
    cfg.local_ts = s.local_ts.clone();
    cfg.remote_ts = s.remote_ts.clone();
    cfg
}

/// A child SA's outbound half waiting until the peer shows it installed its own half (its first ESP on our new
/// inbound SA), or [`PEER_READY_WAIT`]: the child SA was created by the peer's request, which the peer
/// completes only when our answer arrives.
struct DeferredOutbound {
    child: ChildId,
    sa: OutboundSa,
    /// Our inbound SPI of the same child SA.
    spi_in: Option<Spi>,
    since: Instant,
}

/// One SA change sent to the data path, for the log if it fails.
struct Change {
    what: &'static str,
    spi: Option<Spi>,
    pending: Pending,
}

struct Task {
    /// Position in the table and the router's inboxes.
    i: usize,
    t: IkeTunnel,
    session: IkeSession,
    inbox: mpsc::Receiver<Received>,
    /// Every port 500 socket, and the one on this tunnel's uplink address (if it has one).
    plain: Arc<Vec<Arc<tokio::net::UdpSocket>>>,
    own_plain: Option<usize>,
    /// Peers last heard on a port 500 socket: what goes to them goes back that way (RFC 7296 2.23), until
    /// they float to the uplink's port.
    plain_peers: HashMap<SocketAddr, usize>,
    cx: IkeContext,
    routes: Arc<Mutex<Routes>>,
    half_open: Arc<Mutex<HalfOpen>>,
    table: IkeTable,
    rng: SystemRandom,
    backoff: Duration,
    /// The outbound SA's SPI as last set (the data path may not have applied it yet).
    outbound: Option<Spi>,
    /// When the driver asks for the next child rekey.
    rekey_at: Option<Instant>,
    last_rx_ms: u64,
    next_keepalive: Option<Instant>,
    behind_nat: bool,
    state: SessionState,
    /// Whether the current IKE SA has had a child SA (a later install is a rekey).
    had_child: bool,
    /// An outbound SA that waits for the peer.
    deferred: Option<DeferredOutbound>,
}

impl Task {
    async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let now = Instant::now();
        tracing::info!(tunnel = %self.t.name, remote = %self.t.remote, initiator = self.t.settings.initiator,
            proposals = %list(&self.t.settings.proposals), esp_proposals = %list(&self.t.settings.esp_proposals),
            "IKE tunnel configured");
        self.session.start(now);
        let mut next_tick = now + TICK;
        loop {
            self.flush().await;
            self.publish();
            let now = Instant::now();
            let restart_at = lock(&self.table)[self.i].restart_at;
            let deadline = [
                self.session.poll_timeout(),
                restart_at,
                self.rekey_at,
                self.next_keepalive,
                self.deferred.as_ref().map(|_| now + PEER_READY_POLL),
                Some(next_tick),
            ]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(now + TICK);
            tokio::select! {
                biased;
                _ = stop.changed() => {
                    self.close().await;
                    return;
                }
                m = self.inbox.recv() => {
                    let Some((from, msg, via)) = m else { return };
                    let now = Instant::now();
                    self.note_via(from, via);
                    if is_ike_sa_init_request(&msg) {
                        let (on, changed) = lock(&self.half_open).under_load(now);
                        if changed {
                            let n = lock(&self.half_open).count(now);
                            if on {
                                tracing::warn!(half_open = n, threshold = self.cx.cookie_threshold,
                                    "IKE under load: responders demand cookies (RFC 7296 2.6)");
                            } else {
                                tracing::info!(half_open = n, "IKE no longer under load: cookies off");
                            }
                        }
                        self.session.set_under_load(on);
                    }
                    self.session.handle_message(now, from, &msg);
                    if let Some(spi_i) = self.session.half_open_spi() {
                        lock(&self.half_open).note(self.i, spi_i, now);
                    }
                }
                _ = tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)) => {
                    let now = Instant::now();
                    if self.session.poll_timeout().is_some_and(|t| t <= now) {
                        self.session.handle_timeout(now);
                    }
                    if restart_at.is_some_and(|t| t <= now) {
                        lock(&self.table)[self.i].restart_at = None;
                        tracing::info!(tunnel = %self.t.name, "IKE: initiating again");
                        self.session.start(now);
                    }
                    if self.rekey_at.is_some_and(|t| t <= now) {
                        self.rekey_at = None;
                        if self.session.state() == SessionState::Established {
                            tracing::debug!(tunnel = %self.t.name, "child SA rekey due");
                            self.session.rekey_child(now);
                        }
                    }
                    if self.next_keepalive.is_some_and(|t| t <= now) {
                        self.next_keepalive = Some(now + NAT_KEEPALIVE);
                        let remote = self.session.status().remote;
                        let _ = self.cx.sender.send_keepalive(self.t.uplink, remote);
                    }
                    if now >= next_tick {
                        next_tick = now + TICK;
                        self.tick(now);
                    }
                }
            }
        }
    }

    /// Every 500 ms: ESP liveness and byte counts into the session; forget stale SPI registrations.
    fn tick(&mut self, now: Instant) {
        let ms = self
            .t
            .stats
            .last_rx_ms
            .load(std::sync::atomic::Ordering::Relaxed);
        if ms != 0 && ms != self.last_rx_ms {
            self.last_rx_ms = ms;
            let at = (self.cx.epoch + Duration::from_millis(ms)).min(now);
            self.session.note_inbound_esp(at);
        }
        if self.t.settings.child_bytes.is_some() {
            if let Some(sas) = self.cx.sas.sas(self.t.tunnel) {
                for c in self.session.status().children {
                    let inbound = sas
                        .inbound
                        .iter()
                        .filter(|s| s.spi == c.spi_in)
                        .map(|s| s.bytes)
                        .sum::<u64>();
                    let outbound = sas
                        .outbound
                        .filter(|s| s.spi == c.spi_out)
                        .map_or(0, |s| s.bytes);
                    self.session
                        .note_child_bytes(now, c.child, inbound + outbound);
                }
            }
        }
        let current = self.session.status().ike.map(|s| s.spi_i);
        let i = self.i;
        lock(&self.routes).spis.retain(|&spi, (task, used)| {
            *task != i || Some(spi) == current || now.duration_since(*used) < SPI_IDLE
        });
    }

    /// Applies every pending event (waiting for the data path), then sends every pending transmit.
    async fn flush(&mut self) {
        loop {
            let mut changes = Vec::new();
            self.release_deferred(Instant::now(), &mut changes);
            while let Some(ev) = self.session.poll_event() {
                self.apply(ev, &mut changes);
            }
            if changes.is_empty() {
                break;
            }
            let results = tokio::task::spawn_blocking(move || {
                changes
                    .into_iter()
                    .map(|c| (c.what, c.spi, c.pending.wait_timeout(APPLY_TIMEOUT)))
                    .collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            let mut install_failed = false;
            for (what, spi, r) in results {
                let Err(e) = r else { continue };
                // Removing what a clear already removed is not an error.
                if what == "remove inbound SA" && matches!(e, braid_dataplane::SaError::NoSuchSa(_))
                {
                    continue;
                }
                lock(&self.table)[self.i].apply_errors += 1;
                tracing::error!(tunnel = %self.t.name, what, spi = ?spi.map(|s| format!("{:#010x}", s.0)),
                    error = %e, "the data path did not apply an SA change");
                install_failed |= what == "install inbound SA";
            }
            if install_failed && self.session.state() == SessionState::Established {
                // E.g. an SPI another tunnel uses: a rekey brings a fresh one.
                self.session.rekey_child(Instant::now());
            }
        }
        let live = self.outbound.is_some();
        let was_live = self.cx.health.is_live(self.t.tunnel);
        let now_live = self.cx.health.vote(self.t.tunnel, Source::Ike, live);
        if now_live && !was_live {
            if let (Some(sp), Some(n)) = (&self.cx.speaker, self.t.neighbor) {
                sp.path_up(n);
            }
        }
        while let Some(tx) = self.session.poll_transmit() {
            if tx.payload.len() >= 8 {
                let spi_i = u64::from_be_bytes(tx.payload[..8].try_into().unwrap_or_default());
                lock(&self.routes).register_spi(spi_i, self.i, Instant::now());
            }
            let plain = self.plain_peers.get(&tx.to).copied().or_else(|| {
                // An initiator's IKE_SA_INIT to the peer's port 500 (ike.start_port) leaves from ours.
                (tx.to.port() == IKE_PORT && self.t.settings.start_port == Some(IKE_PORT))
                    .then_some(self.own_plain)
                    .flatten()
            });
            let sent = match plain.and_then(|k| self.plain.get(k)) {
                Some(sock) => sock.send_to(&tx.payload, tx.to).await.map(drop),
                None => self.cx.sender.send(self.t.uplink, tx.to, &tx.payload),
            };
            if let Err(e) = sent {
                tracing::warn!(tunnel = %self.t.name, to = %tx.to, error = %e, "sending an IKE message failed");
            }
        }
    }

    /// Sends on the deferred outbound SA once the peer's first ESP arrived on the child's inbound SA, or once
    /// [`PEER_READY_WAIT`] has passed.
    fn release_deferred(&mut self, now: Instant, changes: &mut Vec<Change>) {
        let Some(d) = &self.deferred else { return };
        let used = d.spi_in.is_some_and(|spi_in| {
            self.cx
                .sas
                .sas(self.t.tunnel)
                .is_some_and(|sas| sas.inbound.iter().any(|s| s.spi == spi_in && s.packets > 0))
        });
        let waited = now.duration_since(d.since);
        if !used && waited < PEER_READY_WAIT {
            return;
        }
        let Some(d) = self.deferred.take() else {
            return;
        };
        let spi = d.sa.spi();
        changes.push(Change {
            what: "set outbound SA",
            spi: Some(spi),
            pending: self.cx.sas.set_outbound(self.t.tunnel, d.sa),
        });
        self.outbound = Some(spi);
        tracing::info!(tunnel = %self.t.name, child = %d.child, spi_out = format_args!("{:#010x}", spi.0),
            waited_ms = waited.as_millis() as u64, peer_sent = used, "child SA: outbound switched");
    }

    /// Remembers which way `from` reached us: a port 500 socket, or the uplink's port (it floated).
    fn note_via(&mut self, from: SocketAddr, via: Option<usize>) {
        match via {
            Some(k) => {
                if self.plain_peers.len() >= 16 {
                    self.plain_peers.clear();
                }
                self.plain_peers.insert(from, k);
            }
            None => {
                self.plain_peers.remove(&from);
            }
        }
    }

    fn jitter(&self, d: Duration, fraction: f64) -> Duration {
        let mut b = [0u8; 4];
        let r = match self.rng.fill(&mut b) {
            Ok(()) => f64::from(u32::from_be_bytes(b)) / f64::from(u32::MAX),
            Err(_) => 0.5,
        };
        d.saturating_sub(d.mul_f64(fraction * r))
    }

    fn key(
        &self,
        cipher: braid_crypto::Cipher,
        keymat: &braid_crypto::ike::Keymat,
    ) -> Option<SaKey> {
        match SaKey::new(cipher, keymat.as_bytes()) {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::error!(tunnel = %self.t.name, error = ?e, "bad keying material length");
                None
            }
        }
    }

    /// Maps one event onto the data path (and the logs, the table, BGP).
    fn apply(&mut self, ev: Event, changes: &mut Vec<Change>) {
        let now = Instant::now();
        let tunnel = self.t.tunnel;
        let name = self.t.name.clone();
        match ev {
            Event::IkeUp {
                spi_i,
                spi_r,
                initiator,
                algorithms,
                nat,
                remote_id,
            } => {
                tracing::info!(tunnel = %name, %algorithms, spi_i = format_args!("{spi_i:016x}"),
                    spi_r = format_args!("{spi_r:016x}"), initiator, remote_id = %remote_id,
                    nat_local = nat.local_behind_nat, nat_remote = nat.remote_behind_nat, "IKE SA established");
                lock(&self.routes).register_spi(spi_i, self.i, now);
                lock(&self.half_open).complete(self.i, spi_i);
                self.backoff = BACKOFF_FIRST;
                self.had_child = false;
                self.behind_nat = nat.local_behind_nat;
                self.next_keepalive = self.behind_nat.then(|| now + NAT_KEEPALIVE);
                let mut st = lock(&self.table);
                let s = &mut st[self.i];
                s.ups += 1;
                s.restart_at = None;
                s.remote_id = Some(remote_id.to_string());
            }
            Event::IkeRekeyed {
                spi_i,
                spi_r,
                algorithms,
            } => {
                tracing::info!(tunnel = %name, %algorithms, spi_i = format_args!("{spi_i:016x}"),
                    spi_r = format_args!("{spi_r:016x}"), "IKE SA rekeyed");
                lock(&self.routes).register_spi(spi_i, self.i, now);
                lock(&self.table)[self.i].ike_rekeys += 1;
            }
            Event::IkeDown { reason } => {
                changes.push(Change {
                    what: "clear SAs",
                    spi: None,
                    pending: self.cx.sas.clear(tunnel),
                });
                self.outbound = None;
                self.deferred = None;
                self.rekey_at = None;
                self.next_keepalive = None;
                self.had_child = false;
                let restart = self.t.settings.initiator
                    && !matches!(reason, DownReason::Closed | DownReason::Replaced);
                let delay = self.jitter(self.backoff, 0.25);
                if restart {
                    self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
                }
                if reason == DownReason::Closed {
                    tracing::info!(tunnel = %name, "IKE SA closed");
                } else {
                    tracing::warn!(tunnel = %name, reason = ?reason,
                        restart_in_ms = restart.then_some(delay.as_millis() as u64),
                        "IKE SA down: tunnel has no SAs");
                }
                {
                    let mut st = lock(&self.table);
                    let s = &mut st[self.i];
                    s.downs += 1;
                    s.last_down = Some(format!("{reason:?}"));
                    s.restart_at = restart.then(|| now + delay);
                }
                if reason != DownReason::Closed {
                    if let (Some(sp), Some(n)) = (&self.cx.speaker, self.t.neighbor) {
                        sp.path_down(n, "IKE SA down");
                    }
                }
            }
            Event::ChildInstallInbound {
                child,
                spi,
                cipher,
                esn,
                keymat,
            } => {
                let Some(key) = self.key(cipher, &keymat) else {
                    return;
                };
                let sa = InboundSa::new(spi, &key, esn, self.t.replay_window);
                changes.push(Change {
                    what: "install inbound SA",
                    spi: Some(spi),
                    pending: self.cx.sas.install_inbound(tunnel, sa),
                });
                if self.had_child {
                    lock(&self.table)[self.i].child_rekeys += 1;
                }
                self.had_child = true;
                self.rekey_at = Some(now + self.jitter(self.t.settings.child_lifetime, 0.1));
                tracing::info!(tunnel = %name, %child, spi_in = format_args!("{:#010x}", spi.0),
                    cipher = cipher.name(), esn, "child SA: inbound installed");
            }
            Event::ChildInstallOutbound {
                child,
                spi,
                cipher,
                esn,
                keymat,
                peer_ready,
            } => {
                let Some(key) = self.key(cipher, &keymat) else {
                    return;
                };
                self.deferred = None;
                if !peer_ready {
                    // We answered the request that made it: wait for the peer's first ESP on it (packets are
                    // held meanwhile if there is no outbound SA, and sent on it once it is set).
                    if self.outbound.is_none() {
                        changes.push(Change {
                            what: "hold outbound packets",
                            spi: None,
                            pending: self.cx.sas.remove_outbound(tunnel, OUTBOUND_HOLD),
                        });
                    }
                    self.deferred = Some(DeferredOutbound {
                        child,
                        sa: OutboundSa::new(spi, &key, esn),
                        spi_in: self
                            .session
                            .status()
                            .children
                            .iter()
                            .find(|c| c.child == child)
                            .map(|c| c.spi_in),
                        since: now,
                    });
                    tracing::info!(tunnel = %name, %child, spi_out = format_args!("{:#010x}", spi.0),
                        cipher = cipher.name(), esn, "child SA: outbound waits for the peer's first ESP on it");
                    return;
                }
                changes.push(Change {
                    what: "set outbound SA",
                    spi: Some(spi),
                    pending: self
                        .cx
                        .sas
                        .set_outbound(tunnel, OutboundSa::new(spi, &key, esn)),
                });
                self.outbound = Some(spi);
                tracing::info!(tunnel = %name, %child, spi_out = format_args!("{:#010x}", spi.0),
                    cipher = cipher.name(), esn, "child SA: outbound switched");
            }
            Event::ChildRemoveInbound { child, spi } => {
                changes.push(Change {
                    what: "remove inbound SA",
                    spi: Some(spi),
                    pending: self.cx.sas.remove_inbound(tunnel, spi),
                });
                tracing::debug!(tunnel = %name, %child, spi_in = format_args!("{:#010x}", spi.0), "child SA: inbound removed");
            }
            Event::ChildRemoveOutbound { child, spi } => {
                if self.deferred.as_ref().is_some_and(|d| d.sa.spi() == spi) {
                    self.deferred = None;
                }
                if self.outbound == Some(spi) {
                    changes.push(Change {
                        what: "remove outbound SA",
                        spi: Some(spi),
                        pending: self.cx.sas.remove_outbound(tunnel, OUTBOUND_HOLD),
                    });
                    self.outbound = None;
                    tracing::info!(tunnel = %name, %child, spi_out = format_args!("{:#010x}", spi.0),
                        hold_ms = OUTBOUND_HOLD.as_millis() as u64,
                        "child SA deleted without a replacement: tunnel has no outbound SA; holding its packets for the next");
                }
            }
            Event::ChildRekeyFailed { child, notify } => {
                lock(&self.table)[self.i].rekey_failures += 1;
                tracing::warn!(tunnel = %name, child = ?child, notify, "child SA rekey failed; retried later");
            }
            Event::RemoteAddressChanged { remote } => {
                tracing::info!(tunnel = %name, %remote, "peer moved (NAT): sending there");
                changes.push(Change {
                    what: "set remote",
                    spi: None,
                    pending: self.cx.sas.set_remote(tunnel, remote),
                });
                lock(&self.routes)
                    .addrs
                    .insert((self.t.uplink, remote), self.i);
            }
            other => tracing::debug!(tunnel = %name, event = ?other, "IKE event ignored"),
        }
    }

    fn publish(&mut self) {
        let status = self.session.status();
        let mut st = lock(&self.table);
        let s = &mut st[self.i];
        if status.state != self.state {
            tracing::debug!(tunnel = %self.t.name, from = ?self.state, to = ?status.state, "IKE state");
            self.state = status.state;
            s.since = Instant::now();
        }
        s.session = Some(status);
    }

    /// SIGTERM: delete the IKE SA, send the Delete, and wait briefly for the answer.
    async fn close(&mut self) {
        let established = self.session.state() == SessionState::Established;
        self.session.close(Instant::now());
        self.flush().await;
        self.publish();
        if established {
            tracing::info!(tunnel = %self.t.name, "IKE Delete sent");
            if let Ok(Some((from, msg, via))) =
                tokio::time::timeout(Duration::from_millis(500), self.inbox.recv()).await
            {
                self.note_via(from, via);
                self.session.handle_message(Instant::now(), from, &msg);
                self.flush().await;
            }
        }
    }
}

/// Whether `msg` is an IKE_SA_INIT request (RFC 7296 3.1: exchange type 34 at octet 18, the Response flag
/// 0x20 of octet 19 clear).
fn is_ike_sa_init_request(msg: &[u8]) -> bool {
    msg.len() >= 28 && msg[18] == 34 && msg[19] & 0x20 == 0
}

fn list<T: std::fmt::Display>(v: &[T]) -> String {
    v.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// A traffic selector as a prefix when it is one (`10.0.0.0/8`), else as the core prints it (a range).
fn ts_text(t: &TrafficSelector) -> String {
    let bits = |a: std::net::IpAddr| match a {
        std::net::IpAddr::V4(a) => (u128::from(u32::from(a)), 32u32),
        std::net::IpAddr::V6(a) => (u128::from(a), 128u32),
    };
    let ((start, width), (end, _)) = (bits(t.start), bits(t.end));
    let span = end.wrapping_sub(start);
    let whole = t.protocol == 0 && t.start_port == 0 && t.end_port == 65535;
    // A prefix: the span is 2^k - 1 and the start is aligned to it.
    if whole && start <= end && span.wrapping_add(1) & span == 0 && start & span == 0 {
        let host = 128 - span.leading_zeros();
        return format!("{}/{}", t.start, width - host);
    }
    t.to_string()
}

fn state_name(s: SessionState) -> &'static str {
    match s {
        SessionState::Idle => "down",
        SessionState::Connecting => "connecting",
        SessionState::Established => "established",
    }
}

impl IkeStatus {
    /// The tunnel's IKE state for `braid show tunnels --json` (no keys).
    pub fn json(&self) -> Value {
        let now = Instant::now();
        let age = |t: Instant| now.saturating_duration_since(t).as_secs();
        let Some(s) = &self.session else {
            return json!({ "state": "down", "initiator": self.initiator });
        };
        let ike = s.ike.as_ref();
        let current = s
            .children
            .iter()
            .rev()
            .find(|c| c.outbound)
            .or(s.children.last());
        json!({
            "state": state_name(s.state),
            "initiator": self.initiator,
            "local": s.local.to_string(),
            "remote": s.remote.to_string(),
            "remote_id": self.remote_id,
            "ike_algorithms": ike.map(|i| i.algorithms.to_string()),
            "ike_spi_i": ike.map(|i| format!("{:016x}", i.spi_i)),
            "ike_spi_r": ike.map(|i| format!("{:016x}", i.spi_r)),
            "ike_age_s": ike.map(|i| age(i.since)),
            "nat_detected": ike.map(|i| i.nat.detected()),
            "nat_local": ike.map(|i| i.nat.local_behind_nat),
            "nat_remote": ike.map(|i| i.nat.remote_behind_nat),
            "esp_algorithms": current.map(|c| c.algorithms.to_string()),
            "child_age_s": current.map(|c| age(c.since)),
            "child_spi_in": current.map(|c| format!("{:#010x}", c.spi_in.0)),
            "child_spi_out": current.map(|c| format!("{:#010x}", c.spi_out.0)),
            "children": s.children.len(),
            "ts_local": s.ts_local.iter().map(ts_text).collect::<Vec<_>>(),
            "ts_remote": s.ts_remote.iter().map(ts_text).collect::<Vec<_>>(),
            "child_rekeys": self.child_rekeys,
            "ike_rekeys": self.ike_rekeys,
            "rekey_failures": self.rekey_failures,
            "ups": self.ups,
            "downs": self.downs,
            "last_down": self.last_down,
            "state_age_s": age(self.since),
            "restart_in_ms": self.restart_at.map(|t| t.saturating_duration_since(now).as_millis() as u64),
            "apply_errors": self.apply_errors,
            "drops": {
                "malformed": s.drops.malformed,
                "unknown_spi": s.drops.unknown_spi,
                "bad_message_id": s.drops.bad_message_id,
                "decrypt_failed": s.drops.decrypt_failed,
                "unexpected": s.drops.unexpected,
                "invalid_syntax": s.drops.invalid_syntax,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(uplink: usize, from: &str, spi_i: u64) -> IkeDatagram {
        let mut message = spi_i.to_be_bytes().to_vec();
        message.extend_from_slice(&[0u8; 20]);
        IkeDatagram {
            uplink,
            from: from.parse().unwrap(),
            message,
        }
    }

    #[test]
    fn half_open_sas_are_counted_across_tunnels_until_done_or_stale() {
        let t0 = Instant::now();
        let mut h = HalfOpen::new(3);
        assert_eq!(h.under_load(t0), (false, false));
        // Two tunnels, each with a half-open SA; noting one again changes nothing.
        h.note(0, 0xa, t0);
        h.note(1, 0xb, t0);
        h.note(1, 0xb, t0 + Duration::from_secs(1));
        assert_eq!(h.count(t0), 2);
        assert!(!h.under_load(t0).0);
        // A newer IKE_SA_INIT on tunnel 1 replaced its half-open SA in the core: the replaced one still
        // counts, so a flood of INITs that never finish reaches the threshold.
        h.note(1, 0xc, t0 + Duration::from_secs(2));
        assert_eq!(h.under_load(t0 + Duration::from_secs(2)), (true, true));
        assert_eq!(h.under_load(t0 + Duration::from_secs(2)), (true, false));
        // A completed IKE_AUTH leaves the count at once.
        h.complete(0, 0xa);
        assert_eq!(h.count(t0 + Duration::from_secs(2)), 2);
        assert_eq!(h.under_load(t0 + Duration::from_secs(2)), (false, true));
        // The same SPI on another tunnel is another SA; completing one tunnel's leaves the other.
        h.note(2, 0xc, t0 + Duration::from_secs(3));
        h.complete(1, 0xc);
        assert_eq!(h.count(t0 + Duration::from_secs(3)), 2);
        // Stale entries (older than the half-open timeout) stop counting.
        assert_eq!(h.count(t0 + HALF_OPEN_WINDOW), 1);
        assert_eq!(h.count(t0 + Duration::from_secs(3) + HALF_OPEN_WINDOW), 0);
        // Threshold 0: always under load.
        assert!(HalfOpen::new(0).under_load(t0).0);
        // Bounded memory: beyond the cap nothing more is stored, and the gateway is under load anyway.
        let mut h = HalfOpen::new(2);
        for spi in 0..1000 {
            h.note(0, spi, t0);
        }
        assert_eq!(h.count(t0), 64);
        assert!(h.under_load(t0).0);
    }

    #[tokio::test]
    async fn a_port_500_that_cannot_be_bound_is_an_error_naming_the_address() {
        let p = Port500 {
            uplinks: vec![0],
            name: "isp1".into(),
            local: "127.0.0.1".parse().unwrap(),
            device: None,
            fwmark: None,
        };
        // The second bind fails (in use); without privilege already the first does.
        let e = match bind_port_500(&p) {
            Ok(_held) => bind_port_500(&p).unwrap_err(),
            Err(e) => e,
        };
        let text = e.to_string();
        assert!(
            text.contains("cannot bind 127.0.0.1:500 (uplink \"isp1\")"),
            "{text}"
        );
        assert!(text.contains("ike_port_500 = false"), "{text}");
    }

    #[test]
    fn ike_sa_init_requests_are_recognised() {
        let mut m = vec![0u8; 28];
        m[17] = 0x20; // version 2.0
        m[18] = 34;
        m[19] = 0x08; // Initiator
        assert!(is_ike_sa_init_request(&m));
        m[19] = 0x20; // a response
        assert!(!is_ike_sa_init_request(&m));
        m[19] = 0x08;
        m[18] = 35; // IKE_AUTH
        assert!(!is_ike_sa_init_request(&m));
        assert!(!is_ike_sa_init_request(&m[..20]));
    }

    #[test]
    fn routes_by_spi_then_address_then_unique_ip() {
        let now = Instant::now();
        let mut r = Routes::default();
        r.addrs.insert((0, "198.51.100.2:4500".parse().unwrap()), 0);
        r.addrs.insert((0, "198.51.100.3:4500".parse().unwrap()), 1);
        r.addrs.insert((1, "198.51.100.3:4500".parse().unwrap()), 2);
        // A new IKE_SA_INIT from a configured peer: by address (and uplink).
        assert_eq!(r.route(&d(0, "198.51.100.2:4500", 7), now), Some(0));
        assert_eq!(r.route(&d(1, "198.51.100.3:4500", 7), now), Some(2));
        // The peer's port changed (NAT), no SPI known yet: its address alone is unique on that uplink.
        assert_eq!(r.route(&d(0, "198.51.100.3:31000", 8), now), Some(1));
        // Unknown peers go nowhere.
        assert_eq!(r.route(&d(0, "203.0.113.9:4500", 9), now), None);
        // Once the tunnel registered the SPI, the peer is found wherever it moves.
        r.register_spi(0xabcd, 0, now);
        assert_eq!(r.route(&d(0, "203.0.113.9:1024", 0xabcd), now), Some(0));
        // SPI 0 is never registered.
        r.register_spi(0, 1, now);
        assert_eq!(r.route(&d(0, "203.0.113.9:4500", 0), now), None);
    }
}
