//! The BGP session state machine of RFC 4271 section 8 for ONE neighbour, sans-IO (quinn-proto style): no
//! sockets, no clock, no tasks. Inputs are `handle_*(now, ..)` calls, outputs are polled: messages to send
//! ([`Session::poll_transmit`]), things the driver must do with TCP ([`Session::poll_action`]), what happened
//! for the RIB and the operator ([`Session::poll_event`]) and the next deadline ([`Session::poll_timeout`]).
//! The session works on decoded [`Message`]s; the driver owns the codec, the TCP connections and the clock.
//!
//! Implemented:
//! - the states and transitions of RFC 4271 8.2.2 (Idle, Connect, Active, OpenSent, OpenConfirm, Established)
//!   with the mandatory events mapped to methods: ManualStart (or ManualStart_with_PassiveTcpEstablishment when
//!   [`SessionConfig::passive`]) = [`Session::handle_start`], ManualStop = [`Session::handle_stop`],
//!   AutomaticStart = the end of the idle hold, Tcp_CR_Acked / TcpConnectionConfirmed =
//!   [`Session::handle_connected`], TcpConnectionFails = [`Session::handle_connect_failed`] (outbound attempt)
//!   and [`Session::handle_closed`] (open connection), BGPOpen / KeepAliveMsg / UpdateMsg / NotifMsg =
//!   [`Session::handle_message`], BGPHeaderErr / BGPOpenMsgErr / UpdateMsgErr found by the codec =
//!   [`Session::handle_decode_error`], and the ConnectRetry, Hold, Keepalive and IdleHold timers =
//!   [`Session::handle_timeout`];
//! - OPEN checks of RFC 4271 6.2 (version, peer AS with the RFC 6793 4-octet capability, hold time 1 or 2, BGP
//!   Identifier per RFC 6286 2.2: zero, or equal to ours on iBGP) and capability negotiation: multiprotocol
//!   families (RFC 4760; no MP capability at all implies IPv4 unicast), route refresh (RFC 2918), 4-octet ASNs;
//! - hold time negotiation and timers of RFC 4271 4.2, 4.4 and 10: hold = min(ours, theirs), 0 when either is 0
//!   (then no KEEPALIVE and no hold timer); keepalive every hold / 3; a 240 s hold timer while in OpenSent;
//!   sending a KEEPALIVE or UPDATE restarts the keepalive timer, receiving one restarts the hold timer;
//! - connection collision detection of RFC 4271 6.8 (with RFC 6286 2.3 for equal identifiers) over at most two
//!   TCP connections, each with its own OpenSent / OpenConfirm / Established progress;
//! - FSM Error subcodes of RFC 6608 (the data is the unexpected message's type), Cease subcodes of RFC 4486,
//!   the shutdown communication of RFC 8203 carried in whatever NOTIFICATION the caller passes to
//!   [`Session::handle_stop`].
//!
//! Driver contract: report every TCP connection to the peer with `handle_connected` (the session refuses the
//! ones it does not want, with a NOTIFICATION and an [`Action::Close`]); write what [`Session::poll_transmit`]
//! yields before acting on [`Session::poll_action`], so that a NOTIFICATION goes out before its connection
//! closes; call [`Session::handle_timeout`] at [`Session::poll_timeout`]; decode each connection's messages
//! against [`Session::negotiated_on`] once it is known. Connection ids are the driver's; messages and closes
//! for ids the session has dropped are ignored.
//!
//! Timer choices (RFC 4271 10): the ConnectRetry timer backs off, each failed attempt doubling the wait from
//! [`SessionConfig::connect_retry`] up to [`SessionConfig::connect_retry_max`], reset on Established or
//! ManualStart; each wait is multiplied by a jitter factor in [0.75, 1.0] (the RFC's suggested range). The
//! core has no RNG, so the factor comes from a fixed hash (splitmix64) of (local BGP id, peer address, retry
//! index): deterministic for tests and replays, yet different for every session, which is what desynchronises
//! peers. The keepalive timer is not jittered: a fixed cadence keeps the margin to the peer's hold timer exact.
//!
//! Deliberately left out: the optional session attributes DelayOpen, SendNOTIFICATIONwithoutOPEN (taken as
//! TRUE: a refused connection gets a Cease before any OPEN), TrackTcpState, PassiveTcpEstablishment beyond "never connect", CollisionDetectEstablishedState
//! (always FALSE: an Established connection always wins a collision), AllowAutomaticStop, and the exponential
//! IdleHoldTimer of DampPeerOscillations (the idle hold after an error is [`SessionConfig::idle_hold`],
//! jittered like ConnectRetry so that two peers refusing each other cannot stay in lockstep); MinASOriginationInterval and MinRouteAdvertisementInterval (the RIB paces
//! UPDATEs); graceful restart (RFC 4724), enhanced route refresh (RFC 7313), extended messages (RFC 8654) and
//! the send hold timer. Encoding, decoding and message-length checks are [`super::wire`]'s.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use super::types::{
    error_code, subcode, Asn, Capability, Family, Message, Negotiated, Notification, Open, Update,
    AS_TRANS,
};

/// The BGP version braid speaks (RFC 4271).
pub const BGP_VERSION: u8 = 4;

/// The hold timer while waiting for the peer's OPEN (RFC 4271 8.2.2: "a large value", 4 minutes suggested).
pub const OPEN_SENT_HOLD_TIME: Duration = Duration::from_secs(240);

/// The smallest ConnectRetryTime the session uses, whatever the configuration says: a zero wait would make the
/// driver spin.
pub const MIN_CONNECT_RETRY: Duration = Duration::from_secs(1);

/// What one neighbour's session is configured with. The config layer validates it; the session never panics on
/// odd values (see the fields).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub local_asn: Asn,
    pub local_id: Ipv4Addr,
    pub peer_asn: Asn,
    pub peer_addr: IpAddr,
    /// The hold time we propose, seconds; 0 = none. 1 and 2 are invalid (RFC 4271 4.2); if they get here
    /// anyway they are proposed as 3.
    pub hold_time: u16,
    /// Never initiate connections, only accept (RFC 4271 8.1.1 PassiveTcpEstablishment).
    pub passive: bool,
    /// Families announced with multiprotocol capabilities. Empty: no MP capability is sent, which the peer reads
    /// as IPv4 unicast (RFC 4760 8), and IPv4 unicast is what we negotiate.
    pub families: Vec<Family>,
    /// The initial ConnectRetryTime (RFC 4271 10 suggests 120 s; braid wants faster recovery). At least
    /// [`MIN_CONNECT_RETRY`].
    pub connect_retry: Duration,
    /// The backoff cap: each failed attempt doubles the wait up to this.
    pub connect_retry_max: Duration,
    /// Time spent in Idle after an error before starting again (a constant IdleHoldTimer).
    pub idle_hold: Duration,
}

impl SessionConfig {
    /// A configuration with braid's defaults: hold time 90 s, active, both unicast families, connect retry 5 s
    /// backing off to 60 s, idle hold 5 s.
    pub fn new(
        local_asn: Asn,
        local_id: Ipv4Addr,
        peer_asn: Asn,
        peer_addr: IpAddr,
    ) -> SessionConfig {
        SessionConfig {
            local_asn,
            local_id,
            peer_asn,
            peer_addr,
            hold_time: 90,
            passive: false,
            families: Family::ALL.to_vec(),
            connect_retry: Duration::from_secs(5),
            connect_retry_max: Duration::from_secs(60),
            idle_hold: Duration::from_secs(5),
        }
    }

    /// Whether the peer is internal (same AS).
    pub fn is_ibgp(&self) -> bool {
        self.local_asn == self.peer_asn
    }
}

/// A TCP connection, named by the driver. Ids must not be reused while the session may still know them.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ConnId(pub u64);

/// The session states of RFC 4271 8.2.2. With two connections (a collision) the session is in the state of the
/// more advanced one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl State {
    /// The state's name as RFC 4271 spells it.
    pub fn name(self) -> &'static str {
        match self {
            State::Idle => "Idle",
            State::Connect => "Connect",
            State::Active => "Active",
            State::OpenSent => "OpenSent",
            State::OpenConfirm => "OpenConfirm",
            State::Established => "Established",
        }
    }

    /// Progress of a connection, for picking the more advanced of two.
    fn rank(self) -> u8 {
        match self {
            State::Idle => 0,
            State::Connect | State::Active => 1,
            State::OpenSent => 2,
            State::OpenConfirm => 3,
            State::Established => 4,
        }
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Who opened a TCP connection.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Direction {
    /// We connected to the peer (after an [`Action::Connect`]).
    Outbound,
    /// The peer connected to us.
    Inbound,
}

/// What the driver must do with TCP. Drain [`Session::poll_transmit`] before acting on these, so that a
/// NOTIFICATION queued before a `Close` is written first.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a TCP connection to the peer (port 179), then report [`Session::handle_connected`] with
    /// [`Direction::Outbound`] or [`Session::handle_connect_failed`]. A new `Connect` supersedes an attempt still
    /// pending: the driver aborts that one (the ConnectRetry timer expired on it).
    Connect,
    /// Close this connection once everything already polled for it is written. The session has forgotten it:
    /// do not report `handle_closed` for it (it would be ignored).
    Close(ConnId),
}

/// Why a session left Established (or, for [`Session::last_down_reason`], why a connection failed).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DownReason {
    /// We found an error and sent this NOTIFICATION (FSM error, OPEN error, or a decode error from the driver).
    NotificationSent(Notification),
    /// The peer sent this NOTIFICATION.
    NotificationReceived(Notification),
    /// Nothing arrived from the peer for the hold time; we sent Hold Timer Expired.
    HoldTimerExpired,
    /// The TCP connection closed or reset under us.
    ConnectionClosed,
    /// [`Session::handle_stop`]: an administrative stop, with the NOTIFICATION the caller chose.
    Stopped,
}

/// What the session tells the RIB and the operator.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The session reached Established with these capabilities (the context for UPDATEs both ways).
    Established(Negotiated),
    /// The session left Established: every route learned from this peer must go. Emitted exactly once per
    /// Established episode; failures before Established emit none (only [`Event::StateChange`]).
    Down {
        reason: DownReason,
    },
    /// An UPDATE received in Established.
    Update(Update),
    /// The peer asked for our routes of this family again (RFC 2918; only when negotiated).
    RouteRefresh(Family),
    StateChange {
        from: State,
        to: State,
    },
}

/// Where the session is, outside of its connections.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Idle until [`Session::handle_start`] (never started, or stopped without a restart).
    Stopped,
    /// Idle until the given instant, then AutomaticStart (after an error, or a stop with `restart_after`).
    IdleHold(Instant),
    /// Started: Connect or Active while no connection exists, else the state of the connections.
    Running,
}

/// One TCP connection and its progress through OpenSent, OpenConfirm and Established.
#[derive(Clone, Debug)]
struct Connection {
    id: ConnId,
    dir: Direction,
    /// OpenSent, OpenConfirm or Established.
    state: State,
    /// From the peer's OPEN on this connection.
    negotiated: Option<Negotiated>,
    /// Zero = no hold timer.
    hold: Duration,
    hold_deadline: Option<Instant>,
    keepalive_interval: Option<Duration>,
    keepalive_deadline: Option<Instant>,
}

impl Connection {
    fn restart_hold(&mut self, now: Instant) {
        self.hold_deadline = if self.hold.is_zero() {
            None
        } else {
            now.checked_add(self.hold)
        };
    }
}

/// What to do with the session when a dropped connection was the last one.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Then {
    /// An error: Idle for the idle hold, then start again.
    IdleHold,
    /// The connection failed in OpenSent (RFC 4271 8.2.2: back to Active): wait for the ConnectRetry timer.
    Retry,
    /// Nothing: another connection remains, or the caller sets the phase itself.
    Nothing,
}

/// The BGP session with one neighbour. See the module documentation.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    phase: Phase,
    /// An outbound attempt is pending (we sent [`Action::Connect`], no answer yet).
    connecting: bool,
    connect_retry: Option<Instant>,
    /// Failed connection attempts since the last Established or ManualStart: the backoff exponent.
    retry_failures: u32,
    /// Idle holds entered so far: the jitter index of the next one.
    idle_holds: u32,
    /// At most two: one per direction.
    conns: Vec<Connection>,
    /// The state last reported.
    state: State,
    established_since: Option<Instant>,
    /// Why the Established connection went, for the Down event.
    down_reason: Option<DownReason>,
    last_down_reason: Option<DownReason>,
    transmits: VecDeque<(ConnId, Message)>,
    actions: VecDeque<Action>,
    events: VecDeque<Event>,
}

impl Session {
    /// A session in Idle, not started.
    pub fn new(cfg: SessionConfig) -> Session {
        Session {
            cfg,
            phase: Phase::Stopped,
            connecting: false,
            connect_retry: None,
            retry_failures: 0,
            idle_holds: 0,
            conns: Vec::with_capacity(2),
            state: State::Idle,
            established_since: None,
            down_reason: None,
            last_down_reason: None,
            transmits: VecDeque::new(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// What was negotiated on the Established connection; `None` when not Established.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.conns
            .iter()
            .find(|c| c.state == State::Established)
            .and_then(|c| c.negotiated.as_ref())
    }

    /// What was negotiated on one connection once the peer's OPEN arrived on it (OpenConfirm or Established):
    /// the context the driver decodes that connection's messages against. `None` before that or if unknown.
    pub fn negotiated_on(&self, conn: ConnId) -> Option<&Negotiated> {
        self.conns
            .iter()
            .find(|c| c.id == conn)
            .and_then(|c| c.negotiated.as_ref())
    }

    /// When the session reached Established, while it is.
    pub fn established_since(&self) -> Option<Instant> {
        self.established_since
    }

    /// Why the last connection or session ended (collision resolution aside), including failures before
    /// Established that emit no [`Event::Down`]: for `braid show bgp`.
    pub fn last_down_reason(&self) -> Option<&DownReason> {
        self.last_down_reason.as_ref()
    }

    /// The connections the session tracks (at most two), with their progress.
    pub fn connections(&self) -> impl Iterator<Item = (ConnId, Direction, State)> + '_ {
        self.conns.iter().map(|c| (c.id, c.dir, c.state))
    }

    /// ManualStart (ManualStart_with_PassiveTcpEstablishment when passive): leave Idle now, even during an idle
    /// hold, with a fresh backoff. Ignored when already started.
    pub fn handle_start(&mut self, now: Instant) {
        if self.phase != Phase::Running {
            self.retry_failures = 0;
            self.start(now);
        }
        self.sync_state(now);
    }

    /// ManualStop or an administrative shutdown: send `notification` (default Cease / Administrative Shutdown)
    /// on every open connection, close them, go Idle. With `restart_after`, start again after that long
    /// (AutomaticStart, fresh backoff); without, stay Idle until [`Session::handle_start`].
    pub fn handle_stop(
        &mut self,
        now: Instant,
        notification: Option<Notification>,
        restart_after: Option<Duration>,
    ) {
        let n = notification.unwrap_or_else(|| {
            Notification::new(
                error_code::CEASE,
                subcode::ADMINISTRATIVE_SHUTDOWN,
                Vec::new(),
            )
        });
        while !self.conns.is_empty() {
            self.drop_conn(
                now,
                0,
                Some(n.clone()),
                true,
                Some(DownReason::Stopped),
                Then::Nothing,
            );
        }
        self.phase = match restart_after.and_then(|d| now.checked_add(d)) {
            Some(at) => Phase::IdleHold(at),
            None => Phase::Stopped,
        };
        self.connecting = false;
        self.connect_retry = None;
        self.retry_failures = 0;
        self.sync_state(now);
    }

    /// A TCP connection is up (Tcp_CR_Acked for [`Direction::Inbound`], TcpConnectionConfirmed for
    /// [`Direction::Outbound`]). We send our OPEN on it, or refuse it: in Idle (Cease / Connection Rejected),
    /// or while Established (Cease / Connection Collision Resolution, RFC 4271 6.8: the Established connection
    /// wins). A second connection in a direction already taken replaces the older one (the peer gave it up).
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId, dir: Direction) {
        if dir == Direction::Outbound {
            self.connecting = false;
        }
        if self.index(conn).is_some() {
            return;
        }
        if self.phase != Phase::Running {
            self.refuse(conn, subcode::CONNECTION_REJECTED);
        } else if self.conns.iter().any(|c| c.state == State::Established) {
            self.refuse(conn, subcode::CONNECTION_COLLISION_RESOLUTION);
        } else {
            let older = self.conns.iter().position(|c| c.dir == dir);
            self.conns.push(Connection {
                id: conn,
                dir,
                state: State::OpenSent,
                negotiated: None,
                hold: OPEN_SENT_HOLD_TIME,
                hold_deadline: now.checked_add(OPEN_SENT_HOLD_TIME),
                keepalive_interval: None,
                keepalive_deadline: None,
            });
            let open = self.our_open();
            self.send(self.conns.len() - 1, now, Message::Open(open));
            self.connect_retry = None;
            if let Some(older) = older {
                self.drop_conn(
                    now,
                    older,
                    Some(collision_cease()),
                    true,
                    None,
                    Then::Nothing,
                );
            }
        }
        self.sync_state(now);
    }

    /// The pending outbound attempt failed (TcpConnectionFails before the connection was up). Back to Active,
    /// with the ConnectRetry timer restarted from now for the current backoff step.
    pub fn handle_connect_failed(&mut self, now: Instant) {
        if !self.connecting {
            return;
        }
        self.connecting = false;
        if self.phase == Phase::Running && self.conns.is_empty() {
            self.retry_failures = self.retry_failures.saturating_add(1);
            self.connect_retry = now.checked_add(self.retry_wait(self.retry_failures - 1));
        }
        self.sync_state(now);
    }

    /// The peer closed or reset a connection (TcpConnectionFails). In OpenSent this is a failed attempt (back to
    /// Active); later it is an error (Idle, then the idle hold).
    pub fn handle_closed(&mut self, now: Instant, conn: ConnId) {
        if let Some(i) = self.index(conn) {
            let then = if self.conns[i].state == State::OpenSent {
                Then::Retry
            } else {
                Then::IdleHold
            };
            self.drop_conn(
                now,
                i,
                None,
                false,
                Some(DownReason::ConnectionClosed),
                then,
            );
        }
        self.sync_state(now);
    }

    /// A message decoded from a connection. Messages on connections the session does not know (closed, or
    /// never reported) are ignored.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, msg: Message) {
        if let Some(i) = self.index(conn) {
            self.on_message(now, i, msg);
        }
        self.sync_state(now);
    }

    /// The codec found an error it cannot recover from (RFC 4271 6.1-6.3, RFC 7606 session reset) on a
    /// connection: send its NOTIFICATION, close, go Idle.
    pub fn handle_decode_error(&mut self, now: Instant, conn: ConnId, n: Notification) {
        if let Some(i) = self.index(conn) {
            self.drop_conn(
                now,
                i,
                Some(n.clone()),
                true,
                Some(DownReason::NotificationSent(n)),
                Then::IdleHold,
            );
        }
        self.sync_state(now);
    }

    /// Fire every timer that is due at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        // Session timers first, so that an idle hold entered below starts counting from now.
        match self.phase {
            Phase::IdleHold(at) if at <= now => self.start(now),
            Phase::Running
                if self.conns.is_empty() && self.connect_retry.is_some_and(|at| at <= now) =>
            {
                // ConnectRetryTimer_Expires: in Connect the pending attempt failed; in Active, time to try again.
                if self.connecting {
                    self.retry_failures = self.retry_failures.saturating_add(1);
                }
                self.start_attempt(now);
            }
            _ => {}
        }
        let mut i = 0;
        while i < self.conns.len() {
            let c = &self.conns[i];
            if c.hold_deadline.is_some_and(|at| at <= now) {
                let n = Notification::new(error_code::HOLD_TIMER_EXPIRED, 0, Vec::new());
                self.drop_conn(
                    now,
                    i,
                    Some(n),
                    true,
                    Some(DownReason::HoldTimerExpired),
                    Then::IdleHold,
                );
                continue;
            }
            if c.keepalive_deadline.is_some_and(|at| at <= now) {
                self.send(i, now, Message::Keepalive);
            }
            i += 1;
        }
        self.sync_state(now);
    }

    /// Queue an UPDATE on the Established connection; `false` (and nothing queued) when not Established.
    /// Sending an UPDATE restarts the keepalive timer (RFC 4271 8.2.2), from `now`.
    pub fn send_update(&mut self, now: Instant, update: Update) -> bool {
        let Some(i) = self.established_index() else {
            return false;
        };
        self.send(i, now, Message::Update(update));
        true
    }

    /// Ask the peer to send its routes of `family` again (RFC 2918): only when Established and both sides
    /// announced route refresh and the family.
    pub fn send_route_refresh(&mut self, family: Family) -> bool {
        let Some(i) = self.established_index() else {
            return false;
        };
        let c = &self.conns[i];
        let ok = c
            .negotiated
            .as_ref()
            .is_some_and(|n| n.route_refresh && n.families.contains(&family));
        if ok {
            self.transmits
                .push_back((c.id, Message::RouteRefresh(family)));
        }
        ok
    }

    /// The next message to write, and on which connection.
    pub fn poll_transmit(&mut self) -> Option<(ConnId, Message)> {
        self.transmits.pop_front()
    }

    /// The next thing to do with TCP (after draining [`Session::poll_transmit`]).
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest pending timer: call [`Session::handle_timeout`] then. `None`: nothing will happen until
    /// some other input.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let session = match self.phase {
            Phase::Stopped => None,
            Phase::IdleHold(at) => Some(at),
            Phase::Running if self.conns.is_empty() => self.connect_retry,
            Phase::Running => None,
        };
        self.conns
            .iter()
            .flat_map(|c| [c.hold_deadline, c.keepalive_deadline])
            .chain([session])
            .flatten()
            .min()
    }

    // ---- internals ----

    fn index(&self, conn: ConnId) -> Option<usize> {
        self.conns.iter().position(|c| c.id == conn)
    }

    fn established_index(&self) -> Option<usize> {
        self.conns
            .iter()
            .position(|c| c.state == State::Established)
    }

    /// ManualStart or AutomaticStart: Connect (an outbound attempt) or, when passive, Active.
    fn start(&mut self, now: Instant) {
        self.phase = Phase::Running;
        self.connecting = false;
        self.connect_retry = None;
        if !self.cfg.passive {
            self.start_attempt(now);
        }
    }

    /// Initiate a TCP connection and arm the ConnectRetry timer for the current backoff step.
    fn start_attempt(&mut self, now: Instant) {
        self.connecting = true;
        self.actions.push_back(Action::Connect);
        self.connect_retry = now.checked_add(self.retry_wait(self.retry_failures));
    }

    /// The ConnectRetry wait after `k` failed attempts: connect_retry * 2^k, capped at connect_retry_max, times
    /// a jitter factor in [0.75, 1.0] (RFC 4271 10) from a hash of (local id, peer address, k).
    fn retry_wait(&self, k: u32) -> Duration {
        let base = self.cfg.connect_retry.max(MIN_CONNECT_RETRY);
        let cap = self.cfg.connect_retry_max.max(base);
        let mut wait = base;
        for _ in 0..k {
            if wait >= cap {
                break;
            }
            wait = wait.saturating_mul(2);
        }
        self.jittered(wait.min(cap), k)
    }

    /// `wait` times a jitter factor in [0.75, 1.0] from a hash of (local id, peer address, `k`).
    fn jittered(&self, wait: Duration, k: u32) -> Duration {
        let permille = 750 + (jitter_hash(self.cfg.local_id, self.cfg.peer_addr, k) % 251) as u32;
        wait.checked_mul(permille).map_or(wait, |w| w / 1000)
    }

    fn our_open(&self) -> Open {
        let mut capabilities: Vec<Capability> = self
            .our_announced_families()
            .map(Capability::Multiprotocol)
            .collect();
        capabilities.push(Capability::RouteRefresh);
        capabilities.push(Capability::FourOctetAsn(self.cfg.local_asn));
        Open {
            version: BGP_VERSION,
            asn: self.cfg.local_asn,
            hold_time: self.our_hold_time(),
            bgp_id: self.cfg.local_id,
            capabilities,
        }
    }

    /// Configured families, without duplicates, in configuration order.
    fn our_announced_families(&self) -> impl Iterator<Item = Family> + '_ {
        self.cfg
            .families
            .iter()
            .enumerate()
            .filter(|(i, f)| !self.cfg.families[..*i].contains(f))
            .map(|(_, f)| *f)
    }

    fn our_hold_time(&self) -> u16 {
        match self.cfg.hold_time {
            1 | 2 => 3,
            h => h,
        }
    }

    /// RFC 4271 6.2 (+ RFC 6793, RFC 6286) checks of the peer's OPEN, then what the two OPENs agree on.
    fn check_open(&self, open: &Open) -> Result<Negotiated, Notification> {
        let open_error =
            |sub: u8, data: Vec<u8>| Notification::new(error_code::OPEN_MESSAGE, sub, data);
        if open.version != BGP_VERSION {
            // Data: the largest version we support (RFC 4271 6.2).
            return Err(open_error(
                subcode::UNSUPPORTED_VERSION,
                u16::from(BGP_VERSION).to_be_bytes().to_vec(),
            ));
        }
        let peer_asn = open.four_octet_asn().unwrap_or(open.asn);
        if peer_asn != self.cfg.peer_asn {
            // Data: the 2-octet My AS we expected (AS_TRANS when the expected ASN needs 4 octets).
            let expected = u16::try_from(self.cfg.peer_asn).unwrap_or(AS_TRANS as u16);
            return Err(open_error(
                subcode::BAD_PEER_AS,
                expected.to_be_bytes().to_vec(),
            ));
        }
        if matches!(open.hold_time, 1 | 2) {
            return Err(open_error(subcode::UNACCEPTABLE_HOLD_TIME, Vec::new()));
        }
        if open.bgp_id.is_unspecified() || (self.cfg.is_ibgp() && open.bgp_id == self.cfg.local_id)
        {
            return Err(open_error(subcode::BAD_BGP_IDENTIFIER, Vec::new()));
        }
        let mut theirs = open.families();
        if theirs.is_empty() {
            theirs.push(Family::Ipv4Unicast);
        }
        let ours: Vec<Family> = if self.cfg.families.is_empty() {
            vec![Family::Ipv4Unicast]
        } else {
            self.our_announced_families().collect()
        };
        let ours_hold = self.our_hold_time();
        let hold_time = if ours_hold == 0 || open.hold_time == 0 {
            0
        } else {
            ours_hold.min(open.hold_time)
        };
        Ok(Negotiated {
            four_octet_asn: open.four_octet_asn().is_some(),
            families: ours.into_iter().filter(|f| theirs.contains(f)).collect(),
            route_refresh: open.route_refresh(),
            hold_time,
            peer_asn,
            peer_id: open.bgp_id,
        })
    }

    /// Which connection loses a collision with a peer of this identifier (RFC 4271 6.8): the one initiated by the
    /// speaker with the lower BGP Identifier, or with equal identifiers the lower ASN (RFC 6286 2.3).
    fn collision_loser(&self, peer_id: Ipv4Addr, peer_asn: Asn) -> Direction {
        let (local, remote) = (u32::from(self.cfg.local_id), u32::from(peer_id));
        let local_wins = if local != remote {
            local > remote
        } else {
            self.cfg.local_asn > peer_asn
        };
        if local_wins {
            Direction::Inbound
        } else {
            Direction::Outbound
        }
    }

    fn on_message(&mut self, now: Instant, i: usize, msg: Message) {
        let state = self.conns[i].state;
        match (state, msg) {
            // NotifMsg in any state: close without a reply.
            (state, Message::Notification(n)) => {
                // A refusal before Established (Cease / Connection Rejected: the peer is idle, e.g. holding
                // after its own failure) is a failed attempt, not an error of ours: retry with the ConnectRetry
                // backoff and stay ready to accept, so the peer's own next attempt finds us listening. Going
                // idle instead lets two peers that refuse each other take turns forever.
                let refused = state != State::Established
                    && n.code == error_code::CEASE
                    && n.subcode == subcode::CONNECTION_REJECTED;
                self.drop_conn(
                    now,
                    i,
                    None,
                    true,
                    Some(DownReason::NotificationReceived(n)),
                    if refused { Then::Retry } else { Then::IdleHold },
                );
            }
            (State::OpenSent, Message::Open(open)) => self.on_open(now, i, open),
            (State::OpenConfirm, Message::Keepalive) => self.on_established(now, i),
            (State::Established, Message::Keepalive) => self.conns[i].restart_hold(now),
            (State::Established, Message::Update(u)) => {
                self.conns[i].restart_hold(now);
                self.events.push_back(Event::Update(u));
            }
            (State::Established, Message::RouteRefresh(family)) => {
                // RFC 2918: a request for a family not negotiated is ignored.
                let ok = self.conns[i]
                    .negotiated
                    .as_ref()
                    .is_some_and(|n| n.route_refresh && n.families.contains(&family));
                if ok {
                    self.events.push_back(Event::RouteRefresh(family));
                }
            }
            // Anything else is unexpected in this state (RFC 4271 8.2.2 BGPOpen, KeepAliveMsg, UpdateMsg in the
            // wrong state; RFC 6608 subcodes with the message type as data).
            (state, msg) => {
                let sub = match state {
                    State::OpenSent => subcode::FSM_UNEXPECTED_IN_OPENSENT,
                    State::OpenConfirm => subcode::FSM_UNEXPECTED_IN_OPENCONFIRM,
                    _ => subcode::FSM_UNEXPECTED_IN_ESTABLISHED,
                };
                let n = Notification::new(error_code::FSM, sub, vec![message_type(&msg)]);
                self.drop_conn(
                    now,
                    i,
                    Some(n.clone()),
                    true,
                    Some(DownReason::NotificationSent(n)),
                    Then::IdleHold,
                );
            }
        }
    }

    /// BGPOpen in OpenSent: check it, resolve a collision with a connection in OpenConfirm, then KEEPALIVE and
    /// OpenConfirm with the negotiated timers.
    fn on_open(&mut self, now: Instant, i: usize, open: Open) {
        let negotiated = match self.check_open(&open) {
            Ok(n) => n,
            Err(n) => {
                self.drop_conn(
                    now,
                    i,
                    Some(n.clone()),
                    true,
                    Some(DownReason::NotificationSent(n)),
                    Then::IdleHold,
                );
                return;
            }
        };
        let id = self.conns[i].id;
        // RFC 4271 6.8: examine the connections in OpenConfirm (one in OpenSent is resolved when its OPEN comes).
        if let Some(other) = self
            .conns
            .iter()
            .position(|c| c.id != id && c.state == State::OpenConfirm)
        {
            let loser = self.collision_loser(negotiated.peer_id, negotiated.peer_asn);
            if self.conns[i].dir == loser {
                self.drop_conn(now, i, Some(collision_cease()), true, None, Then::Nothing);
                return;
            }
            self.drop_conn(
                now,
                other,
                Some(collision_cease()),
                true,
                None,
                Then::Nothing,
            );
        }
        let Some(i) = self.index(id) else { return };
        let c = &mut self.conns[i];
        c.state = State::OpenConfirm;
        c.hold = Duration::from_secs(negotiated.hold_time.into());
        c.keepalive_interval = (!c.hold.is_zero()).then(|| c.hold / 3);
        c.restart_hold(now);
        c.negotiated = Some(negotiated);
        self.send(i, now, Message::Keepalive);
    }

    /// KeepAliveMsg in OpenConfirm: Established. Any other connection loses to this one (RFC 4271 6.8).
    fn on_established(&mut self, now: Instant, i: usize) {
        let id = self.conns[i].id;
        self.conns[i].state = State::Established;
        self.conns[i].restart_hold(now);
        self.retry_failures = 0;
        while let Some(other) = self.conns.iter().position(|c| c.id != id) {
            self.drop_conn(
                now,
                other,
                Some(collision_cease()),
                true,
                None,
                Then::Nothing,
            );
        }
    }

    /// Queue a message; a KEEPALIVE or UPDATE restarts the keepalive timer.
    fn send(&mut self, i: usize, now: Instant, msg: Message) {
        let c = &mut self.conns[i];
        if matches!(msg, Message::Keepalive | Message::Update(_)) {
            c.keepalive_deadline = c.keepalive_interval.and_then(|k| now.checked_add(k));
        }
        self.transmits.push_back((c.id, msg));
    }

    /// Refuse a connection the session does not track: a Cease NOTIFICATION, then close.
    fn refuse(&mut self, conn: ConnId, sub: u8) {
        self.transmits.push_back((
            conn,
            Message::Notification(Notification::new(error_code::CEASE, sub, Vec::new())),
        ));
        self.actions.push_back(Action::Close(conn));
    }

    /// Forget connection `i`: optionally send a NOTIFICATION and ask the driver to close it. `reason` is `None`
    /// for collision resolution (not a failure). If it was the last connection of a running session, `then`
    /// says what comes next.
    fn drop_conn(
        &mut self,
        now: Instant,
        i: usize,
        notification: Option<Notification>,
        close: bool,
        reason: Option<DownReason>,
        then: Then,
    ) {
        let c = self.conns.remove(i);
        if let Some(n) = notification {
            self.transmits.push_back((c.id, Message::Notification(n)));
        }
        if close {
            self.actions.push_back(Action::Close(c.id));
        }
        if let Some(reason) = reason {
            if c.state == State::Established {
                self.down_reason = Some(reason.clone());
            }
            self.last_down_reason = Some(reason);
        }
        if !self.conns.is_empty() || self.phase != Phase::Running {
            return;
        }
        match then {
            Then::IdleHold => {
                // Jittered like ConnectRetry: two peers that refuse each other while idle would otherwise stay
                // in lockstep, each connecting exactly while the other holds.
                self.idle_holds = self.idle_holds.wrapping_add(1);
                let wait = self.jittered(self.cfg.idle_hold, 0x8000_0000 | self.idle_holds);
                self.phase = match now.checked_add(wait) {
                    Some(at) => Phase::IdleHold(at),
                    None => Phase::Stopped,
                };
                self.connecting = false;
                self.connect_retry = None;
            }
            Then::Retry if !self.cfg.passive => {
                self.retry_failures = self.retry_failures.saturating_add(1);
                self.connect_retry = now.checked_add(self.retry_wait(self.retry_failures - 1));
            }
            Then::Retry | Then::Nothing => {}
        }
    }

    fn compute_state(&self) -> State {
        if let Some(c) = self.conns.iter().max_by_key(|c| c.state.rank()) {
            return c.state;
        }
        match self.phase {
            Phase::Running if self.connecting => State::Connect,
            Phase::Running => State::Active,
            Phase::Stopped | Phase::IdleHold(_) => State::Idle,
        }
    }

    /// Report a state change, and Established / Down when entering / leaving Established.
    fn sync_state(&mut self, now: Instant) {
        let to = self.compute_state();
        let from = self.state;
        if to == from {
            return;
        }
        self.state = to;
        self.events.push_back(Event::StateChange { from, to });
        if to == State::Established {
            self.established_since = Some(now);
            self.down_reason = None;
            if let Some(n) = self.negotiated().cloned() {
                self.events.push_back(Event::Established(n));
            }
        } else if from == State::Established {
            self.established_since = None;
            let reason = self
                .down_reason
                .take()
                .unwrap_or(DownReason::ConnectionClosed);
            self.events.push_back(Event::Down { reason });
        }
    }
}

fn collision_cease() -> Notification {
    Notification::new(
        error_code::CEASE,
        subcode::CONNECTION_COLLISION_RESOLUTION,
        Vec::new(),
    )
}

/// The message type code (RFC 4271 4.1, RFC 2918), the data of an RFC 6608 FSM error.
fn message_type(msg: &Message) -> u8 {
    match msg {
        Message::Open(_) => 1,
        Message::Update(_) => 2,
        Message::Notification(_) => 3,
        Message::Keepalive => 4,
        Message::RouteRefresh(_) => 5,
    }
}

/// splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A fixed hash of (local id, peer address, retry index) for the ConnectRetry jitter.
fn jitter_hash(local_id: Ipv4Addr, peer: IpAddr, k: u32) -> u64 {
    let mut h = mix(u64::from(u32::from(local_id)));
    match peer {
        IpAddr::V4(a) => h = mix(h ^ u64::from(u32::from(a))),
        IpAddr::V6(a) => {
            let v = u128::from(a);
            h = mix(h ^ (v >> 64) as u64);
            h = mix(h ^ v as u64);
        }
    }
    mix(h ^ u64::from(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> SessionConfig {
        SessionConfig::new(
            65001,
            Ipv4Addr::new(192, 0, 2, 1),
            65002,
            IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)),
        )
    }

    #[test]
    fn retry_wait_doubles_caps_and_jitters_within_a_quarter() {
        let s = Session::new(cfg());
        let mut bases = Vec::new();
        for k in 0..10 {
            let w = s.retry_wait(k);
            let base = Duration::from_secs((5u64 << k.min(4)).min(60));
            assert!(w <= base && w >= base * 3 / 4, "k={k}: {w:?} vs {base:?}");
            bases.push(w);
        }
        // Deterministic, and not all the same factor.
        assert_eq!(s.retry_wait(3), Session::new(cfg()).retry_wait(3));
        let factors: Vec<u128> = (0..10)
            .map(|k| {
                s.retry_wait(k).as_millis() * 1000
                    / Duration::from_secs((5u64 << k.min(4)).min(60)).as_millis()
            })
            .collect();
        assert!(factors.windows(2).any(|w| w[0] != w[1]), "{factors:?}");
    }

    #[test]
    fn retry_wait_survives_absurd_configuration() {
        let mut c = cfg();
        c.connect_retry = Duration::ZERO;
        c.connect_retry_max = Duration::ZERO;
        let s = Session::new(c);
        assert!(s.retry_wait(u32::MAX) >= MIN_CONNECT_RETRY * 3 / 4);
        let mut c = cfg();
        c.connect_retry = Duration::MAX;
        c.connect_retry_max = Duration::MAX;
        let s = Session::new(c);
        assert!(s.retry_wait(40) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn collision_loser_follows_identifiers_then_asns() {
        let s = Session::new(cfg());
        // Local 192.0.2.1 < remote 192.0.2.2: our outbound connection goes.
        assert_eq!(
            s.collision_loser(Ipv4Addr::new(192, 0, 2, 2), 65002),
            Direction::Outbound
        );
        assert_eq!(
            s.collision_loser(Ipv4Addr::new(192, 0, 2, 0), 65002),
            Direction::Inbound
        );
        // Equal identifiers (eBGP): the larger AS keeps the connection it initiated.
        assert_eq!(
            s.collision_loser(Ipv4Addr::new(192, 0, 2, 1), 65002),
            Direction::Outbound
        );
        assert_eq!(
            s.collision_loser(Ipv4Addr::new(192, 0, 2, 1), 65000),
            Direction::Inbound
        );
    }
}
