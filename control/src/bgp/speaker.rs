//! The BGP speaker's tokio driver: sockets, timers and the one actor that owns every session and the RIB.
//!
//! ```text
//!   TCP listener (port 179) --accept--> match peer address --+
//!   connect tasks (Action::Connect) ------------------------+--> per connection: reader task (framing only)
//!                                                           |        | Frame(bytes) / Closed
//!                                                           v        v
//!   control socket --Command--> [ Speaker actor: Session FSM per neighbor + Rib + wire codec ]
//!                                           |  encoded messages
//!                                           v
//!                               per connection: writer task (write_all, in order)
//! ```
//! The actor is the single owner of protocol state: it decodes frames against each session's negotiated
//! capabilities, feeds the FSMs and the RIB, drains their outputs (transmits, actions, events, exports) and sleeps
//! until the earliest FSM timer. Reader and writer tasks only move bytes. Nothing here blocks the data path,
//! which runs on its own threads.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::fsm::{Action, ConnId, Direction, DownReason, Event, Session, SessionConfig, State};
use super::policy::NeighborPolicy;
use super::rib::{Export, FibChange, PeerId, PeerInfo, Rib};
use super::types::{error_code, subcode, Asn, Family, Message, Notification, Prefix};
use super::wire;

/// How long a connect attempt may take before it counts as failed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a session stays down after max-prefix before it tries again.
const MAX_PREFIX_RESTART: Duration = Duration::from_secs(60);

/// One neighbor as the speaker needs it.
#[derive(Clone, Debug)]
pub struct NeighborConfig {
    /// What operators call it: the tunnel name, or the address.
    pub label: String,
    /// The tunnel the session runs in, if any.
    pub tunnel: Option<String>,
    pub address: IpAddr,
    pub port: u16,
    pub local_address: Option<IpAddr>,
    /// Our IPv6 address for IPv6 next hops when the session runs over IPv4 (a tunnel's IPv6 inside address).
    pub local_address_v6: Option<std::net::Ipv6Addr>,
    /// Families to negotiate.
    pub families: Vec<Family>,
    pub remote_asn: Asn,
    pub hold_time: u16,
    pub passive: bool,
    pub connect_retry: Duration,
    pub policy: NeighborPolicy,
    /// Advertise to this neighbour only once every forwarding change made so far is installed (see
    /// [`SpeakerConfig::fib_installed`]): for a LAN router whose traffic reaches the tunnels through this host's
    /// kernel table, so it never sends us traffic for a route we cannot forward yet (FRR calls this
    /// "suppress-fib-pending").
    pub wait_for_fib: bool,
}

/// The speaker's configuration.
#[derive(Clone, Debug)]
pub struct SpeakerConfig {
    pub local_asn: Asn,
    pub router_id: Ipv4Addr,
    pub listen_port: u16,
    pub max_paths: usize,
    pub networks: Vec<Prefix>,
    pub neighbors: Vec<NeighborConfig>,
    /// Where the RIB's forwarding changes go (batches; neighbours are named by their index in `neighbors`).
    /// `None`: the routes are not forwarded by this gateway, and no changes are kept.
    pub fib: Option<std::sync::mpsc::Sender<Vec<FibChange>>>,
    /// How many batches sent on `fib` the installer has applied, forwarding table and kernel routes both;
    /// neighbours with `wait_for_fib` hear of changes only after this catches up. `None`: nobody waits.
    pub fib_installed: Option<tokio::sync::watch::Receiver<u64>>,
}

/// A neighbor's state for `braid show bgp`.
#[derive(Clone, Debug)]
pub struct NeighborStatus {
    pub label: String,
    pub address: IpAddr,
    pub port: u16,
    pub remote_asn: Asn,
    pub state: &'static str,
    pub uptime_s: Option<u64>,
    pub received: u64,
    pub accepted: u64,
    pub advertised: u64,
    /// The negotiated hold time (the smaller of both proposals), once Established.
    pub hold_time: Option<u16>,
    /// The hold time this side proposes (configured).
    pub hold_time_local: u16,
    pub peer_id: Option<Ipv4Addr>,
    pub last_error: Option<String>,
}

/// One next hop of a route, for `braid show routes`.
#[derive(Clone, Debug)]
pub struct NextHopStatus {
    /// The neighbor (label) the path came from; `None` for local routes.
    pub neighbor: Option<String>,
    /// The tunnel of that neighbor, if its session runs in one.
    pub tunnel: Option<String>,
    pub address: Option<IpAddr>,
    pub weight: u32,
}

/// A Loc-RIB entry for `braid show routes`.
#[derive(Clone, Debug)]
pub struct RouteStatus {
    pub prefix: Prefix,
    pub source: &'static str,
    pub as_path: String,
    pub origin: &'static str,
    pub local_pref: Option<u32>,
    pub med: Option<u32>,
    pub communities: Vec<u32>,
    pub next_hops: Vec<NextHopStatus>,
    pub backups: Vec<NextHopStatus>,
}

enum Command {
    Neighbors(oneshot::Sender<Vec<NeighborStatus>>),
    Routes(oneshot::Sender<Vec<RouteStatus>>),
    Refresh(IpAddr, oneshot::Sender<Result<usize, String>>),
    Shutdown(String, oneshot::Sender<()>),
    BfdDown(usize),
    BfdUp(usize),
    PathDown(usize, &'static str),
}

enum ConnEvent {
    Connected {
        peer: usize,
        stream: TcpStream,
        dir: Direction,
    },
    ConnectFailed {
        peer: usize,
        error: io::Error,
    },
    Frame {
        peer: usize,
        conn: ConnId,
        bytes: Vec<u8>,
    },
    Closed {
        peer: usize,
        conn: ConnId,
        error: Option<String>,
    },
    BadHeader {
        peer: usize,
        conn: ConnId,
        notification: Notification,
    },
}

/// A handle to the running speaker.
#[derive(Clone)]
pub struct SpeakerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

impl SpeakerHandle {
    pub async fn neighbors(&self) -> Vec<NeighborStatus> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Neighbors(tx));
        rx.await.unwrap_or_default()
    }

    pub async fn routes(&self) -> Vec<RouteStatus> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Routes(tx));
        rx.await.unwrap_or_default()
    }

    /// Asks `neighbor` for its routes again (ROUTE-REFRESH for every negotiated family).
    pub async fn refresh(&self, neighbor: IpAddr) -> Result<usize, String> {
        let (tx, rx) = oneshot::channel();
        let _ = self.tx.send(Command::Refresh(neighbor, tx));
        rx.await.unwrap_or_else(|_| Err("speaker stopped".into()))
    }

    /// BFD declared the path to neighbour `index` (its position in [`SpeakerConfig::neighbors`]) down: the
    /// session is torn down at once (Cease / BFD Down, RFC 9384; the peer may never see it) and its routes go,
    /// before any hold timer; it starts again after a second, with the usual connect-retry backoff.
    pub fn bfd_down(&self, index: usize) {
        let _ = self.tx.send(Command::BfdDown(index));
    }

    /// BFD says the path to neighbour `index` works again: a session waiting to reconnect (Idle, Connect or
    /// Active, possibly deep in its connect-retry backoff) tries at once, with a fresh backoff. A session with a
    /// connection in progress or Established is left alone.
    pub fn bfd_up(&self, index: usize) {
        let _ = self.tx.send(Command::BfdUp(index));
    }

    /// Another detector (IKE: the tunnel lost its SAs, or DPD declared the peer dead) says the path to
    /// neighbour `index` is gone: the session is torn down at once (Cease / Administrative Reset with `cause`
    /// as its RFC 8203 message; the peer will rarely see it) and its routes go; it starts again after a
    /// second, with the usual connect-retry backoff.
    pub fn path_down(&self, index: usize, cause: &'static str) {
        let _ = self.tx.send(Command::PathDown(index, cause));
    }

    /// The path to neighbour `index` works again (as [`bfd_up`](Self::bfd_up)): a session waiting to reconnect
    /// tries at once.
    pub fn path_up(&self, index: usize) {
        let _ = self.tx.send(Command::BfdUp(index));
    }

    /// Sends Cease/Administrative Shutdown with `message` (RFC 8203) to every peer and stops.
    pub async fn shutdown(&self, message: &str) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Command::Shutdown(message.into(), tx)).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(3), rx).await;
        }
    }
}

struct Conn {
    writer: mpsc::UnboundedSender<Vec<u8>>,
    reader: tokio::task::JoinHandle<()>,
    /// Our end of the connection: next hop self.
    local: Option<IpAddr>,
}

struct Peer {
    cfg: NeighborConfig,
    session: Session,
    rib_id: PeerId,
    conns: HashMap<ConnId, Conn>,
    last_error: Option<String>,
    /// The outbound connect attempt in flight, if any (a new `Action::Connect` supersedes it).
    connecting: Option<tokio::task::JoinHandle<()>>,
}

struct Speaker {
    peers: Vec<Peer>,
    rib: Rib,
    events_tx: mpsc::Sender<ConnEvent>,
    next_conn: u64,
    fib: Option<std::sync::mpsc::Sender<Vec<FibChange>>>,
    /// Batches sent on `fib`.
    fib_sent: u64,
    fib_installed: Option<tokio::sync::watch::Receiver<u64>>,
}

/// Binds the BGP listener and starts the speaker actor on the current tokio runtime.
pub async fn start(cfg: SpeakerConfig) -> io::Result<SpeakerHandle> {
    let listener = bind_listener(cfg.listen_port)?;
    let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
    let (events_tx, events_rx) = mpsc::channel(1024);
    let mut rib = Rib::new(cfg.local_asn, cfg.router_id, cfg.max_paths);
    rib.track_fib(cfg.fib.is_some());
    let mut peers = Vec::new();
    for (i, n) in cfg.neighbors.iter().enumerate() {
        let families = n.families.clone();
        let session = Session::new(SessionConfig {
            local_asn: cfg.local_asn,
            local_id: cfg.router_id,
            peer_asn: n.remote_asn,
            peer_addr: n.address,
            hold_time: n.hold_time,
            passive: n.passive,
            families,
            connect_retry: n.connect_retry,
            connect_retry_max: Duration::from_secs(60).max(n.connect_retry),
            idle_hold: Duration::from_secs(1),
        });
        rib.add_peer(PeerInfo {
            id: i,
            asn: n.remote_asn,
            addr: n.address,
            router_id: Ipv4Addr::UNSPECIFIED,
            ebgp: n.remote_asn != cfg.local_asn,
            policy: n.policy.clone(),
            next_hop_self: n.local_address.unwrap_or(IpAddr::V4(cfg.router_id)),
            next_hop_self_v6: n.local_address_v6,
        });
        peers.push(Peer {
            cfg: n.clone(),
            session,
            rib_id: i,
            conns: HashMap::new(),
            last_error: None,
            connecting: None,
        });
    }
    for &p in &cfg.networks {
        rib.originate(p);
    }
    let mut speaker = Speaker {
        peers,
        rib,
        events_tx,
        next_conn: 1,
        fib: cfg.fib.clone(),
        fib_sent: 0,
        fib_installed: cfg.fib_installed.clone(),
    };
    let now = Instant::now().into_std();
    for p in &mut speaker.peers {
        p.session.handle_start(now);
    }
    tokio::spawn(async move { speaker.run(listener, cmd_rx, events_rx).await });
    Ok(SpeakerHandle { tx: cmd_tx })
}

fn bind_listener(port: u16) -> io::Result<TcpListener> {
    // Dual-stack where the host has IPv6; IPv4 only otherwise.
    let v6 = (|| -> io::Result<TcpListener> {
        let s = TcpSocket::new_v6()?;
        s.set_reuseaddr(true)?;
        s.bind(SocketAddr::new(
            IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            port,
        ))?;
        s.listen(64)
    })();
    match v6 {
        Ok(l) => Ok(l),
        Err(_) => {
            let s = TcpSocket::new_v4()?;
            s.set_reuseaddr(true)?;
            s.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), port))?;
            s.listen(64)
        }
    }
}

/// IPv4-mapped IPv6 addresses (from a dual-stack listener) as plain IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// A down reason in words for logs and `braid show bgp`.
fn down_text(r: &DownReason) -> String {
    match r {
        DownReason::NotificationSent(n) => format!("sent {}", n.describe()),
        DownReason::NotificationReceived(n) => match n.shutdown_message() {
            Some(m) => format!("received {}: {m:?}", n.describe()),
            None => format!("received {}", n.describe()),
        },
        DownReason::HoldTimerExpired => "hold timer expired".into(),
        DownReason::ConnectionClosed => "connection closed".into(),
        DownReason::Stopped => "stopped".into(),
    }
}

impl Speaker {
    async fn run(
        &mut self,
        listener: TcpListener,
        mut cmds: mpsc::UnboundedReceiver<Command>,
        mut events: mpsc::Receiver<ConnEvent>,
    ) {
        loop {
            self.drain().await;
            let deadline = self
                .peers
                .iter()
                .filter_map(|p| p.session.poll_timeout())
                .min()
                .map(Instant::from_std);
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let installed = async {
                match &mut self.fib_installed {
                    Some(rx) => {
                        if rx.changed().await.is_err() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // The installer caught up: exports held back for `wait_for_fib` neighbours may go now.
                _ = installed => {}
                cmd = cmds.recv() => match cmd {
                    Some(Command::Shutdown(msg, done)) => {
                        self.shutdown(&msg).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(c) => self.command(c),
                    None => return,
                },
                ev = events.recv() => {
                    if let Some(ev) = ev {
                        self.conn_event(ev);
                    }
                }
                acc = listener.accept() => {
                    if let Ok((stream, from)) = acc {
                        self.accept(stream, from);
                    }
                }
                _ = sleep => {
                    let now = Instant::now().into_std();
                    for p in &mut self.peers {
                        p.session.handle_timeout(now);
                    }
                }
            }
        }
    }

    fn accept(&mut self, stream: TcpStream, from: SocketAddr) {
        let ip = canonical(from.ip());
        let Some(i) = self.peers.iter().position(|p| p.cfg.address == ip) else {
            tracing::debug!(%from, "BGP connection from an address that is not a neighbor: closed");
            return;
        };
        self.attach(i, stream, Direction::Inbound);
    }

    fn attach(&mut self, peer: usize, stream: TcpStream, dir: Direction) {
        let _ = stream.set_nodelay(true);
        let local = stream.local_addr().ok().map(|a| canonical(a.ip()));
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        let (mut rd, mut wr) = stream.into_split();
        let (wtx, mut wrx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(buf) = wrx.recv().await {
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
        });
        let events = self.events_tx.clone();
        let reader = tokio::spawn(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(64 * 1024);
            let mut chunk = vec![0u8; 64 * 1024];
            let error = loop {
                // Hand over every whole message buffered so far.
                let mut start = 0;
                loop {
                    match wire::frame_len(&buf[start..]) {
                        Ok(Some(n)) if buf.len() - start >= n => {
                            let bytes = buf[start..start + n].to_vec();
                            start += n;
                            if events
                                .send(ConnEvent::Frame { peer, conn, bytes })
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Ok(_) => break,
                        Err(notification) => {
                            // A broken header: the actor sends that NOTIFICATION and closes.
                            let _ = events
                                .send(ConnEvent::BadHeader {
                                    peer,
                                    conn,
                                    notification,
                                })
                                .await;
                            return;
                        }
                    }
                }
                buf.drain(..start);
                match rd.read(&mut chunk).await {
                    Ok(0) => break None,
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) => break Some(e.to_string()),
                }
            };
            let _ = events.send(ConnEvent::Closed { peer, conn, error }).await;
        });
        let p = &mut self.peers[peer];
        p.conns.insert(
            conn,
            Conn {
                writer: wtx,
                reader,
                local,
            },
        );
        p.session
            .handle_connected(Instant::now().into_std(), conn, dir);
    }

    fn conn_event(&mut self, ev: ConnEvent) {
        let now = Instant::now().into_std();
        match ev {
            ConnEvent::Connected { peer, stream, dir } => {
                self.peers[peer].connecting = None;
                self.attach(peer, stream, dir);
            }
            ConnEvent::ConnectFailed { peer, error } => {
                let p = &mut self.peers[peer];
                p.connecting = None;
                p.last_error = Some(format!("connect: {error}"));
                p.session.handle_connect_failed(now);
            }
            ConnEvent::Frame { peer, conn, bytes } => {
                let p = &mut self.peers[peer];
                if !p.conns.contains_key(&conn) {
                    return;
                }
                match wire::decode(&bytes, p.session.negotiated_on(conn)) {
                    Ok(msg) => p.session.handle_message(now, conn, msg),
                    Err(e) if e.ignorable => {
                        // RFC 2918 / 7313: e.g. a ROUTE-REFRESH for a family we do not know is dropped silently.
                        tracing::debug!(neighbor = %p.cfg.label, reason = %e.reason, "ignored BGP message");
                    }
                    Err(e) => {
                        tracing::warn!(neighbor = %p.cfg.label, reason = %e.reason, "malformed BGP message: sending NOTIFICATION");
                        p.last_error =
                            Some(format!("sent {}: {}", e.notification.describe(), e.reason));
                        p.session.handle_decode_error(now, conn, e.notification);
                    }
                }
            }
            ConnEvent::BadHeader {
                peer,
                conn,
                notification,
            } => {
                let p = &mut self.peers[peer];
                if p.conns.contains_key(&conn) {
                    tracing::warn!(neighbor = %p.cfg.label, notification = %notification.describe(), "bad BGP message header");
                    p.session.handle_decode_error(now, conn, notification);
                }
            }
            ConnEvent::Closed { peer, conn, error } => {
                let p = &mut self.peers[peer];
                if let Some(c) = p.conns.remove(&conn) {
                    c.reader.abort();
                    if let Some(e) = error {
                        p.last_error = Some(format!("connection: {e}"));
                    }
                    p.session.handle_closed(now, conn);
                }
            }
        }
    }

    fn command(&mut self, c: Command) {
        match c {
            Command::Neighbors(reply) => {
                let _ = reply.send(self.neighbor_status());
            }
            Command::Routes(reply) => {
                let _ = reply.send(self.route_status());
            }
            Command::Refresh(addr, reply) => {
                let addr = canonical(addr);
                let r = match self.peers.iter_mut().find(|p| p.cfg.address == addr) {
                    None => Err(format!("{addr} is not a neighbor")),
                    Some(p) => match p.session.negotiated().cloned() {
                        None => Err(format!("{addr} is not Established")),
                        Some(n) if !n.route_refresh => {
                            Err(format!("{addr} did not negotiate route refresh"))
                        }
                        Some(n) => {
                            let mut sent = 0;
                            for f in n.families {
                                if p.session.send_route_refresh(f) {
                                    sent += 1;
                                }
                            }
                            Ok(sent)
                        }
                    },
                };
                let _ = reply.send(r);
            }
            Command::BfdDown(index) => {
                if let Some(p) = self.peers.get_mut(index) {
                    let now = Instant::now().into_std();
                    if p.session.state() != State::Idle {
                        tracing::warn!(neighbor = %p.cfg.label, "BFD down: resetting the BGP session");
                        p.last_error = Some("BFD down".into());
                    }
                    p.session.handle_stop(
                        now,
                        Some(Notification::new(
                            error_code::CEASE,
                            subcode::BFD_DOWN,
                            Vec::new(),
                        )),
                        Some(Duration::from_secs(1)),
                    );
                }
            }
            Command::PathDown(index, cause) => {
                if let Some(p) = self.peers.get_mut(index) {
                    let now = Instant::now().into_std();
                    if p.session.state() != State::Idle {
                        tracing::warn!(neighbor = %p.cfg.label, cause, "path down: resetting the BGP session");
                        p.last_error = Some(cause.into());
                    }
                    p.session.handle_stop(
                        now,
                        Some(Notification::shutdown(subcode::ADMINISTRATIVE_RESET, cause)),
                        Some(Duration::from_secs(1)),
                    );
                }
            }
            Command::BfdUp(index) => {
                if let Some(p) = self.peers.get_mut(index) {
                    if matches!(
                        p.session.state(),
                        State::Idle | State::Connect | State::Active
                    ) {
                        let now = Instant::now().into_std();
                        p.session.handle_stop(now, None, Some(Duration::ZERO));
                    }
                }
            }
            Command::Shutdown(..) => {}
        }
    }

    /// Drains every session's outputs and the RIB's exports until nothing is left.
    async fn drain(&mut self) {
        loop {
            let mut progress = false;
            let now = Instant::now().into_std();
            for i in 0..self.peers.len() {
                // Transmits first: a NOTIFICATION queued before a Close must be written (fsm's contract).
                while let Some((conn, msg)) = self.peers[i].session.poll_transmit() {
                    progress = true;
                    let p = &mut self.peers[i];
                    if let Some(c) = p.conns.get(&conn) {
                        if let Message::Notification(n) = &msg {
                            // Refusing a connection (while Idle, or a collision) says nothing about why the
                            // session is down: keep the real reason for `braid show bgp`.
                            let refusal = n.code == error_code::CEASE
                                && matches!(
                                    n.subcode,
                                    subcode::CONNECTION_REJECTED
                                        | subcode::CONNECTION_COLLISION_RESOLUTION
                                );
                            if refusal {
                                tracing::debug!(neighbor = %p.cfg.label, notification = %n.describe(), "refusing a connection");
                            } else {
                                tracing::warn!(neighbor = %p.cfg.label, notification = %n.describe(), "sending NOTIFICATION");
                                p.last_error = Some(format!("sent {}", n.describe()));
                            }
                        }
                        let mut out = Vec::with_capacity(64);
                        wire::encode(&msg, p.session.negotiated(), &mut out);
                        let _ = c.writer.send(out);
                    }
                }
                while let Some(a) = self.peers[i].session.poll_action() {
                    progress = true;
                    match a {
                        Action::Connect => self.connect(i),
                        Action::Close(conn) => {
                            if let Some(c) = self.peers[i].conns.remove(&conn) {
                                c.reader.abort();
                                // Dropping the writer closes the socket once queued bytes are written.
                            }
                        }
                    }
                }
                while let Some(ev) = self.peers[i].session.poll_event() {
                    progress = true;
                    self.session_event(i, ev, now);
                }
            }
            // Forwarding changes go to the installer before any export, so `fib_ready` covers them.
            self.send_fib_changes();
            let fib_ready = self
                .fib_installed
                .as_ref()
                .is_none_or(|rx| *rx.borrow() >= self.fib_sent);
            for i in 0..self.peers.len() {
                if self.peers[i].session.state() != State::Established {
                    continue;
                }
                if self.peers[i].cfg.wait_for_fib && !fib_ready {
                    continue;
                }
                let rib_id = self.peers[i].rib_id;
                while let Some(export) = self.rib.poll_export(rib_id) {
                    progress = true;
                    let p = &self.peers[i];
                    let (Some(ctx), Some(c)) = (p.session.negotiated(), p.conns.values().next())
                    else {
                        break;
                    };
                    let mut out = Vec::new();
                    match export {
                        Export::Announce {
                            attrs,
                            family,
                            next_hops,
                            prefixes,
                        } => {
                            wire::encode_announce(
                                &attrs, family, &next_hops, &prefixes, ctx, &mut out,
                            );
                        }
                        Export::Withdraw { family, prefixes } => {
                            wire::encode_withdraw(family, &prefixes, ctx, &mut out);
                        }
                        Export::EndOfRib(f) => wire::encode_end_of_rib(f, &mut out),
                    }
                    let _ = c.writer.send(out);
                }
            }
            if !progress {
                break;
            }
            tokio::task::yield_now().await;
        }
        self.send_fib_changes();
    }

    /// Hands the RIB's forwarding changes to the route installer, in batches.
    fn send_fib_changes(&mut self) {
        const BATCH: usize = 16 * 1024;
        let Some(tx) = &self.fib else {
            return;
        };
        let mut batch = Vec::new();
        while let Some(c) = self.rib.poll_fib_change() {
            batch.push(c);
            if batch.len() == BATCH {
                if tx.send(std::mem::take(&mut batch)).is_err() {
                    break;
                }
                self.fib_sent += 1;
            }
        }
        if batch.is_empty() {
            return;
        }
        if tx.send(batch).is_ok() {
            self.fib_sent += 1;
        } else {
            tracing::warn!("route installer gone; forwarding changes are no longer applied");
            self.fib = None;
            self.fib_installed = None;
            self.rib.track_fib(false);
        }
    }

    fn session_event(&mut self, i: usize, ev: Event, now: std::time::Instant) {
        let p = &mut self.peers[i];
        match ev {
            Event::Established(n) => {
                tracing::info!(neighbor = %p.cfg.label, peer_asn = n.peer_asn, peer_id = %n.peer_id, hold = n.hold_time,
                    families = ?n.families, "BGP session Established");
                if n.hold_time != p.cfg.hold_time {
                    // The negotiated hold time is the smaller of both proposals: the peer proposed this one.
                    tracing::warn!(neighbor = %p.cfg.label, configured = p.cfg.hold_time, peer = n.hold_time,
                        "BGP hold time differs from the peer's: the session runs on the peer's; keep removal timers the same on both sides");
                }
                p.last_error = None;
                // Next hop self: our end of the established connection (or the configured address).
                let local = p
                    .session
                    .connections()
                    .find(|c| c.2 == State::Established)
                    .and_then(|c| p.conns.get(&c.0))
                    .and_then(|c| c.local)
                    .or(p.cfg.local_address);
                if let Some(local) = local {
                    let v6 = match local {
                        IpAddr::V6(v6) => Some(v6),
                        IpAddr::V4(_) => p.cfg.local_address_v6,
                    };
                    self.rib.set_next_hop_self(p.rib_id, local, v6);
                }
                self.rib.set_peer_router_id(p.rib_id, n.peer_id);
                self.rib.peer_up(p.rib_id, &n.families);
            }
            Event::Down { reason } => {
                let why = down_text(&reason);
                tracing::warn!(neighbor = %p.cfg.label, reason = %why, "BGP session down: withdrawing its routes");
                // An administrative stop already recorded its cause (e.g. max_prefix) at the call site.
                if !matches!(reason, DownReason::Stopped) || p.last_error.is_none() {
                    p.last_error = Some(why);
                }
                self.rib.peer_down(p.rib_id);
            }
            Event::Update(u) => {
                for e in &u.errors {
                    tracing::debug!(neighbor = %p.cfg.label, action = ?e, "RFC 7606 error handling applied");
                }
                if let Err(m) = self.rib.apply_update(p.rib_id, &u) {
                    let mut data = Vec::with_capacity(7);
                    data.extend_from_slice(&m.family.afi().to_be_bytes());
                    data.push(m.family.safi());
                    data.extend_from_slice(&m.limit.to_be_bytes());
                    tracing::warn!(neighbor = %p.cfg.label, limit = m.limit, "max_prefix exceeded: Cease, retry in 60 s");
                    p.last_error = Some(format!("max_prefix {} exceeded", m.limit));
                    p.session.handle_stop(
                        now,
                        Some(Notification::new(
                            error_code::CEASE,
                            subcode::MAX_PREFIXES_REACHED,
                            data,
                        )),
                        Some(MAX_PREFIX_RESTART),
                    );
                }
            }
            Event::RouteRefresh(_) => self.rib.refresh_export(p.rib_id),
            Event::StateChange { from, to } => {
                tracing::debug!(neighbor = %p.cfg.label, from = State::name(from), to = State::name(to), "BGP state");
            }
        }
    }

    fn connect(&mut self, i: usize) {
        let p = &mut self.peers[i];
        if let Some(pending) = p.connecting.take() {
            pending.abort();
        }
        let to = SocketAddr::new(p.cfg.address, p.cfg.port);
        let local = p.cfg.local_address;
        let events = self.events_tx.clone();
        p.connecting = Some(tokio::spawn(async move {
            let attempt = async {
                let s = if to.is_ipv4() {
                    TcpSocket::new_v4()?
                } else {
                    TcpSocket::new_v6()?
                };
                if let Some(l) = local {
                    s.bind(SocketAddr::new(l, 0))?;
                }
                s.connect(to).await
            };
            let ev = match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
                Ok(Ok(stream)) => ConnEvent::Connected {
                    peer: i,
                    stream,
                    dir: Direction::Outbound,
                },
                Ok(Err(error)) => ConnEvent::ConnectFailed { peer: i, error },
                Err(_) => ConnEvent::ConnectFailed {
                    peer: i,
                    error: io::Error::new(io::ErrorKind::TimedOut, "connect timed out"),
                },
            };
            let _ = events.send(ev).await;
        }));
    }

    async fn shutdown(&mut self, message: &str) {
        let now = Instant::now().into_std();
        for p in &mut self.peers {
            if p.session.state() != State::Idle {
                p.session.handle_stop(
                    now,
                    Some(Notification::shutdown(
                        subcode::ADMINISTRATIVE_SHUTDOWN,
                        message,
                    )),
                    None,
                );
            }
        }
        self.drain().await;
        // Let the writer tasks flush the NOTIFICATIONs before the runtime goes away.
        tokio::time::sleep(Duration::from_millis(100)).await;
        for p in &mut self.peers {
            for (_, c) in p.conns.drain() {
                c.reader.abort();
            }
        }
    }

    fn neighbor_status(&self) -> Vec<NeighborStatus> {
        let now = std::time::Instant::now();
        self.peers
            .iter()
            .map(|p| {
                let counts = self.rib.peer_counts(p.rib_id);
                let n = p.session.negotiated();
                NeighborStatus {
                    label: p.cfg.label.clone(),
                    address: p.cfg.address,
                    port: p.cfg.port,
                    remote_asn: p.cfg.remote_asn,
                    state: State::name(p.session.state()),
                    uptime_s: p
                        .session
                        .established_since()
                        .map(|t| now.duration_since(t).as_secs()),
                    received: counts.received,
                    accepted: counts.accepted,
                    advertised: counts.advertised,
                    hold_time: n.map(|n| n.hold_time),
                    hold_time_local: p.cfg.hold_time,
                    peer_id: n.map(|n| n.peer_id),
                    last_error: p
                        .last_error
                        .clone()
                        .or_else(|| p.session.last_down_reason().map(down_text)),
                }
            })
            .collect()
    }

    fn route_status(&self) -> Vec<RouteStatus> {
        let peer_of =
            |peer: Option<PeerId>| peer.and_then(|id| self.peers.iter().find(|p| p.rib_id == id));
        // Rib::routes is sorted by prefix.
        self.rib
            .routes()
            .map(|r| {
                let a = &r.best.attrs;
                let hop = |v: &super::rib::PathView| NextHopStatus {
                    neighbor: peer_of(v.peer).map(|p| p.cfg.label.clone()),
                    tunnel: peer_of(v.peer).and_then(|p| p.cfg.tunnel.clone()),
                    address: v.next_hop,
                    weight: 1,
                };
                RouteStatus {
                    prefix: r.prefix,
                    source: if r.best.peer.is_some() {
                        "bgp"
                    } else {
                        "local"
                    },
                    as_path: a.as_path.to_string(),
                    origin: match a.origin {
                        super::types::Origin::Igp => "igp",
                        super::types::Origin::Egp => "egp",
                        super::types::Origin::Incomplete => "incomplete",
                    },
                    local_pref: a.local_pref,
                    med: a.med,
                    communities: a.communities.clone(),
                    next_hops: r.multipath.iter().map(hop).collect(),
                    backups: r.backups.iter().map(hop).collect(),
                }
            })
            .collect()
    }
}

impl std::fmt::Debug for SpeakerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SpeakerHandle")
    }
}
