//! Deterministic tests of the BGP session FSM (`braid_control::bgp::fsm`).
//!
//! Two harnesses, no sockets and no sleeping:
//! - [`Pair`]: two `Session`s wired back to back. A fake TCP layer turns `Action::Connect` into
//!   `handle_connected` on both sides (outbound on the initiator, inbound on the other) when the other side's
//!   daemon is listening, else into `handle_connect_failed`; `Action::Close` becomes a FIN delivered after the
//!   messages already in flight. A "wire" moves `poll_transmit` output to the other side's `handle_message`,
//!   in order, and can lose everything one side sends (a dead tunnel). A virtual clock steps to the earliest
//!   `poll_timeout()` of both sessions.
//! - [`Solo`]: one `Session` against a scripted peer, for exact message-by-message checks.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use braid_control::bgp::fsm::{
    Action, ConnId, Direction, DownReason, Event, Session, SessionConfig, State,
};
use braid_control::bgp::types::{
    error_code, subcode, Capability, Family, Message, Negotiated, Notification, Open, Prefix,
    Update, AS_TRANS,
};

const A: usize = 0;
const B: usize = 1;

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn id(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, last)
}

/// Side A: AS 65001, 192.0.2.1; side B: AS 65002, 192.0.2.2. Hold 90, both families, retry 5 s .. 60 s, idle
/// hold 10 s.
fn cfg_a() -> SessionConfig {
    SessionConfig {
        local_asn: 65001,
        local_id: id(1),
        peer_asn: 65002,
        peer_addr: IpAddr::V4(id(2)),
        hold_time: 90,
        passive: false,
        families: Family::ALL.to_vec(),
        connect_retry: secs(5),
        connect_retry_max: secs(60),
        idle_hold: secs(10),
    }
}

fn cfg_b() -> SessionConfig {
    SessionConfig {
        local_asn: 65002,
        local_id: id(2),
        peer_asn: 65001,
        peer_addr: IpAddr::V4(id(1)),
        ..cfg_a()
    }
}

fn is_notification(m: &Message, code: u8, sub: u8) -> bool {
    matches!(m, Message::Notification(n) if n.code == code && n.subcode == sub)
}

fn an_update() -> Update {
    Update {
        withdrawn: vec!["10.9.0.0/16".parse::<Prefix>().expect("prefix")],
        ..Update::default()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Pair harness
// ---------------------------------------------------------------------------------------------------------------

struct Node {
    s: Session,
    /// The daemon is up (it was started once): TCP connections to it succeed.
    listening: bool,
    /// Everything it lost on the wire from now on, FINs included (a dead tunnel).
    drop_out: bool,
    sent: Vec<(Duration, ConnId, Message)>,
    received: Vec<(Duration, ConnId, Message)>,
    events: Vec<(Duration, Event)>,
    connects: Vec<Duration>,
}

enum Wire {
    Msg(Message),
    Fin,
}

struct Pair {
    t0: Instant,
    now: Instant,
    n: [Node; 2],
    next_conn: u64,
    /// Per connection: whether each side's end is still open.
    open: HashMap<ConnId, [bool; 2]>,
    flight: VecDeque<(usize, ConnId, Wire)>,
}

impl Pair {
    fn new(a: SessionConfig, b: SessionConfig) -> Pair {
        let node = |cfg| Node {
            s: Session::new(cfg),
            listening: false,
            drop_out: false,
            sent: Vec::new(),
            received: Vec::new(),
            events: Vec::new(),
            connects: Vec::new(),
        };
        let t0 = Instant::now();
        Pair {
            t0,
            now: t0,
            n: [node(a), node(b)],
            next_conn: 1,
            open: HashMap::new(),
            flight: VecDeque::new(),
        }
    }

    fn t(&self) -> Duration {
        self.now - self.t0
    }

    fn start(&mut self, side: usize) {
        self.n[side].listening = true;
        self.n[side].s.handle_start(self.now);
        self.pump();
    }

    fn start_both(&mut self) {
        self.n[A].listening = true;
        self.n[B].listening = true;
        self.n[A].s.handle_start(self.now);
        self.n[B].s.handle_start(self.now);
        self.pump();
    }

    /// Run the driver loop at the current instant until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for side in [A, B] {
                while let Some(ev) = self.n[side].s.poll_event() {
                    let t = self.t();
                    self.n[side].events.push((t, ev));
                }
                while let Some((conn, msg)) = self.n[side].s.poll_transmit() {
                    progress = true;
                    let t = self.t();
                    self.n[side].sent.push((t, conn, msg.clone()));
                    if self.end_open(conn, side) && !self.n[side].drop_out {
                        self.flight.push_back((1 - side, conn, Wire::Msg(msg)));
                    }
                }
                while let Some(action) = self.n[side].s.poll_action() {
                    progress = true;
                    self.act(side, action);
                }
            }
            while let Some((to, conn, wire)) = self.flight.pop_front() {
                progress = true;
                if !self.end_open(conn, to) {
                    continue;
                }
                match wire {
                    Wire::Msg(msg) => {
                        let t = self.t();
                        self.n[to].received.push((t, conn, msg.clone()));
                        self.n[to].s.handle_message(self.now, conn, msg);
                    }
                    Wire::Fin => {
                        self.set_closed(conn, to);
                        self.n[to].s.handle_closed(self.now, conn);
                    }
                }
            }
            if !progress {
                return;
            }
        }
        panic!("pump did not settle");
    }

    fn end_open(&self, conn: ConnId, side: usize) -> bool {
        self.open.get(&conn).is_some_and(|o| o[side])
    }

    fn set_closed(&mut self, conn: ConnId, side: usize) {
        if let Some(o) = self.open.get_mut(&conn) {
            o[side] = false;
        }
    }

    fn act(&mut self, side: usize, action: Action) {
        match action {
            Action::Connect => {
                let t = self.t();
                self.n[side].connects.push(t);
                if self.n[1 - side].listening {
                    self.connection(side);
                } else {
                    self.n[side].s.handle_connect_failed(self.now);
                }
            }
            Action::Close(conn) => {
                if self.end_open(conn, side) {
                    self.set_closed(conn, side);
                    if !self.n[side].drop_out {
                        self.flight.push_back((1 - side, conn, Wire::Fin));
                    }
                }
            }
        }
    }

    /// A TCP connection from `from` to the other side, reported to both.
    fn connection(&mut self, from: usize) -> ConnId {
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        self.open.insert(conn, [true, true]);
        self.n[from]
            .s
            .handle_connected(self.now, conn, Direction::Outbound);
        self.n[1 - from]
            .s
            .handle_connected(self.now, conn, Direction::Inbound);
        conn
    }

    /// Advance the virtual clock to `t` (since t0), firing timers in order.
    fn run_until(&mut self, t: Duration) {
        let end = self.t0 + t;
        for _ in 0..100_000 {
            self.pump();
            let next = [self.n[A].s.poll_timeout(), self.n[B].s.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(at) if at <= end => {
                    self.now = self.now.max(at);
                    for side in [A, B] {
                        if self.n[side]
                            .s
                            .poll_timeout()
                            .is_some_and(|at| at <= self.now)
                        {
                            self.n[side].s.handle_timeout(self.now);
                        }
                    }
                }
                _ => {
                    self.now = self.now.max(end);
                    self.pump();
                    return;
                }
            }
        }
        panic!("run_until did not finish");
    }

    fn run_for(&mut self, d: Duration) {
        let t = self.t() + d;
        self.run_until(t);
    }

    fn state(&self, side: usize) -> State {
        self.n[side].s.state()
    }

    fn count_events(&self, side: usize, f: impl Fn(&Event) -> bool) -> usize {
        self.n[side].events.iter().filter(|(_, e)| f(e)).count()
    }

    fn established_count(&self, side: usize) -> usize {
        self.count_events(side, |e| matches!(e, Event::Established(_)))
    }

    fn downs(&self, side: usize) -> Vec<DownReason> {
        self.n[side]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Down { reason } => Some(reason.clone()),
                _ => None,
            })
            .collect()
    }

    fn state_changes(&self, side: usize) -> Vec<(State, State)> {
        self.n[side]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                Event::StateChange { from, to } => Some((*from, *to)),
                _ => None,
            })
            .collect()
    }

    /// The single connection of an Established session.
    fn established_conn(&self, side: usize) -> ConnId {
        let conns: Vec<_> = self.n[side].s.connections().collect();
        assert_eq!(conns.len(), 1, "{conns:?}");
        assert_eq!(conns[0].2, State::Established);
        conns[0].0
    }

    fn keepalive_times(&self, side: usize, conn: ConnId) -> Vec<Duration> {
        self.n[side]
            .sent
            .iter()
            .filter(|(_, c, m)| *c == conn && *m == Message::Keepalive)
            .map(|(t, _, _)| *t)
            .collect()
    }

    /// Both started at 0, A active, B passive, run until Established.
    fn established(a: SessionConfig, b: SessionConfig) -> Pair {
        let mut p = Pair::new(a, b);
        p.start_both();
        p.run_for(secs(1));
        assert_eq!(p.state(A), State::Established);
        assert_eq!(p.state(B), State::Established);
        p
    }
}

fn passive(mut c: SessionConfig) -> SessionConfig {
    c.passive = true;
    c
}

// ---------------------------------------------------------------------------------------------------------------
// Solo harness: one session, a scripted peer
// ---------------------------------------------------------------------------------------------------------------

struct Solo {
    s: Session,
    t0: Instant,
    now: Instant,
    sent: Vec<(ConnId, Message)>,
    actions: Vec<Action>,
    events: Vec<Event>,
}

const C1: ConnId = ConnId(1);
const C2: ConnId = ConnId(2);

impl Solo {
    fn new(cfg: SessionConfig) -> Solo {
        let t0 = Instant::now();
        Solo {
            s: Session::new(cfg),
            t0,
            now: t0,
            sent: Vec::new(),
            actions: Vec::new(),
            events: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(x) = self.s.poll_transmit() {
            self.sent.push(x);
        }
        while let Some(x) = self.s.poll_action() {
            self.actions.push(x);
        }
        while let Some(x) = self.s.poll_event() {
            self.events.push(x);
        }
    }

    fn at(&mut self, t: Duration) {
        self.now = self.t0 + t;
    }

    fn start(&mut self) {
        self.s.handle_start(self.now);
        self.drain();
    }

    fn connected(&mut self, conn: ConnId, dir: Direction) {
        self.s.handle_connected(self.now, conn, dir);
        self.drain();
    }

    fn recv(&mut self, conn: ConnId, msg: Message) {
        self.s.handle_message(self.now, conn, msg);
        self.drain();
    }

    fn timeout(&mut self) {
        self.s.handle_timeout(self.now);
        self.drain();
    }

    fn take_sent(&mut self) -> Vec<(ConnId, Message)> {
        std::mem::take(&mut self.sent)
    }

    fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.actions)
    }

    fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// Started, outbound connection C1 up, our OPEN taken.
    fn open_sent(cfg: SessionConfig) -> Solo {
        let mut s = Solo::new(cfg);
        s.start();
        assert_eq!(s.take_actions(), vec![Action::Connect]);
        s.connected(C1, Direction::Outbound);
        let sent = s.take_sent();
        assert!(
            matches!(sent.as_slice(), [(C1, Message::Open(_))]),
            "{sent:?}"
        );
        s.take_events();
        s
    }

    /// Established on C1 with the peer of [`peer_open`].
    fn established(cfg: SessionConfig, peer: Open) -> Solo {
        let mut s = Solo::open_sent(cfg);
        s.recv(C1, Message::Open(peer));
        s.recv(C1, Message::Keepalive);
        assert_eq!(s.s.state(), State::Established);
        s.take_sent();
        s.take_events();
        s
    }
}

/// B's OPEN as A expects it (AS 65002, 192.0.2.2), with these capabilities.
fn peer_open(hold_time: u16, capabilities: Vec<Capability>) -> Open {
    Open {
        version: 4,
        asn: 65002,
        hold_time,
        bgp_id: id(2),
        capabilities,
    }
}

fn full_caps(asn: u32) -> Vec<Capability> {
    vec![
        Capability::Multiprotocol(Family::Ipv4Unicast),
        Capability::Multiprotocol(Family::Ipv6Unicast),
        Capability::RouteRefresh,
        Capability::FourOctetAsn(asn),
    ]
}

// ---------------------------------------------------------------------------------------------------------------
// Establishment and negotiation
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn establishes_active_active() {
    let mut p = Pair::new(cfg_a(), cfg_b());
    // A starts alone: its first attempt fails (B's daemon is down), A waits in Active.
    p.start(A);
    assert_eq!(p.state(A), State::Active);
    p.run_until(secs(1));
    // B starts and connects to A at t = 1 s.
    p.start(B);
    p.run_until(secs(300));
    assert_eq!(p.state(A), State::Established);
    assert_eq!(p.state(B), State::Established);
    assert_eq!(p.established_count(A), 1);
    assert_eq!(p.established_count(B), 1);
    assert!(p.downs(A).is_empty() && p.downs(B).is_empty());
    // One connection, initiated by B; A never tried again once the session was up.
    let conn = p.established_conn(A);
    assert_eq!(
        p.n[A].s.connections().next().map(|c| c.1),
        Some(Direction::Inbound)
    );
    assert_eq!(p.established_conn(B), conn);
    assert_eq!(p.n[A].connects, vec![secs(0)]);
    assert_eq!(p.n[B].connects, vec![secs(1)]);
    assert_eq!(
        p.state_changes(A),
        vec![
            (State::Idle, State::Connect),
            (State::Connect, State::Active),
            (State::Active, State::OpenSent),
            (State::OpenSent, State::OpenConfirm),
            (State::OpenConfirm, State::Established),
        ]
    );
    assert_eq!(p.n[A].s.established_since(), Some(p.t0 + secs(1)));
}

#[test]
fn establishes_active_passive_and_the_passive_side_never_connects() {
    let mut p = Pair::new(cfg_a(), passive(cfg_b()));
    p.start_both();
    p.run_until(secs(600));
    assert_eq!(p.state(A), State::Established);
    assert_eq!(p.state(B), State::Established);
    assert!(p.n[B].connects.is_empty());
    assert_eq!(p.n[A].connects, vec![secs(0)]);
    assert_eq!(
        p.state_changes(B),
        vec![
            (State::Idle, State::Active),
            (State::Active, State::OpenSent),
            (State::OpenSent, State::OpenConfirm),
            (State::OpenConfirm, State::Established),
        ]
    );
}

#[test]
fn passive_session_waits_in_active_without_timers() {
    let mut s = Solo::new(passive(cfg_a()));
    s.start();
    assert_eq!(s.s.state(), State::Active);
    assert!(s.take_actions().is_empty());
    assert_eq!(s.s.poll_timeout(), None);
}

#[test]
fn negotiates_min_hold_family_intersection_and_four_octet_asn() {
    let b = SessionConfig {
        hold_time: 30,
        families: vec![Family::Ipv4Unicast],
        ..cfg_b()
    };
    let mut p = Pair::established(cfg_a(), passive(b));
    let expect = |peer_asn, peer_id| Negotiated {
        four_octet_asn: true,
        families: vec![Family::Ipv4Unicast],
        route_refresh: true,
        hold_time: 30,
        peer_asn,
        peer_id,
    };
    assert_eq!(p.n[A].s.negotiated(), Some(&expect(65002, id(2))));
    assert_eq!(p.n[B].s.negotiated(), Some(&expect(65001, id(1))));
    let ev = p.n[A].events.iter().find_map(|(_, e)| match e {
        Event::Established(n) => Some(n.clone()),
        _ => None,
    });
    assert_eq!(ev, Some(expect(65002, id(2))));
    // The keepalive cadence follows the negotiated hold time: 30 / 3 = 10 s.
    let conn = p.established_conn(A);
    p.run_until(secs(60));
    let ka = p.keepalive_times(A, conn);
    assert_eq!(ka, (0..=6).map(|i| secs(10 * i)).collect::<Vec<_>>());
}

#[test]
fn sends_the_rfc_open_and_handles_a_two_octet_peer_without_capabilities() {
    let mut s = Solo::new(cfg_a());
    s.start();
    s.connected(C1, Direction::Outbound);
    let sent = s.take_sent();
    assert_eq!(
        sent,
        vec![(
            C1,
            Message::Open(Open {
                version: 4,
                asn: 65001,
                hold_time: 90,
                bgp_id: id(1),
                capabilities: full_caps(65001),
            })
        )]
    );
    // An old speaker: no capabilities at all, hold 180.
    s.recv(C1, Message::Open(peer_open(180, vec![])));
    assert_eq!(s.take_sent(), vec![(C1, Message::Keepalive)]);
    assert_eq!(s.s.state(), State::OpenConfirm);
    let expect = Negotiated {
        four_octet_asn: false,
        families: vec![Family::Ipv4Unicast],
        route_refresh: false,
        hold_time: 90,
        peer_asn: 65002,
        peer_id: id(2),
    };
    assert_eq!(s.s.negotiated_on(C1), Some(&expect));
    assert_eq!(s.s.negotiated(), None, "only once Established");
    s.recv(C1, Message::Keepalive);
    assert!(s.take_events().contains(&Event::Established(expect)));
    // Route refresh was not negotiated: we do not send it, and the peer's is ignored.
    assert!(!s.s.send_route_refresh(Family::Ipv4Unicast));
    s.recv(C1, Message::RouteRefresh(Family::Ipv4Unicast));
    assert!(s.take_events().is_empty());
    assert!(s.take_sent().is_empty());
    assert_eq!(s.s.state(), State::Established);
}

#[test]
fn empty_family_list_announces_no_mp_and_negotiates_ipv4() {
    let b = SessionConfig {
        families: vec![],
        ..cfg_b()
    };
    let p = Pair::established(cfg_a(), passive(b));
    let opens: Vec<_> = p.n[B]
        .sent
        .iter()
        .filter_map(|(_, _, m)| match m {
            Message::Open(o) => Some(o.clone()),
            _ => None,
        })
        .collect();
    assert!(opens[0].families().is_empty());
    assert_eq!(
        p.n[A].s.negotiated().map(|n| n.families.clone()),
        Some(vec![Family::Ipv4Unicast])
    );
    assert_eq!(
        p.n[B].s.negotiated().map(|n| n.families.clone()),
        Some(vec![Family::Ipv4Unicast])
    );
}

#[test]
fn four_octet_peer_asn_comes_from_the_capability() {
    let cfg = SessionConfig {
        peer_asn: 4_200_000_001,
        ..cfg_a()
    };
    // AS_TRANS in My AS with the capability carrying the real ASN: fine.
    let mut s = Solo::open_sent(cfg.clone());
    let mut o = peer_open(90, full_caps(4_200_000_001));
    o.asn = AS_TRANS;
    s.recv(C1, Message::Open(o));
    assert_eq!(s.s.state(), State::OpenConfirm);
    assert_eq!(
        s.s.negotiated_on(C1).map(|n| n.peer_asn),
        Some(4_200_000_001)
    );
    // The wrong 4-octet ASN: Bad Peer AS, data = the 2-octet AS we expected, which is AS_TRANS here.
    let mut s = Solo::open_sent(cfg);
    let mut o = peer_open(90, full_caps(4_200_000_002));
    o.asn = AS_TRANS;
    s.recv(C1, Message::Open(o));
    let n = Notification::new(
        error_code::OPEN_MESSAGE,
        subcode::BAD_PEER_AS,
        vec![0x5b, 0xa0],
    );
    assert_eq!(s.take_sent(), vec![(C1, Message::Notification(n))]);
    assert_eq!(s.take_actions(), vec![Action::Close(C1)]);
    assert_eq!(s.s.state(), State::Idle);
}

// ---------------------------------------------------------------------------------------------------------------
// Timers
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn keepalives_every_third_of_hold_time_and_the_session_stays_up() {
    let mut p = Pair::established(cfg_a(), passive(cfg_b()));
    let t_e = p.n[A].s.established_since().expect("established") - p.t0;
    let conn = p.established_conn(A);
    p.run_until(t_e + secs(300));
    for side in [A, B] {
        let ka: Vec<Duration> = p
            .keepalive_times(side, conn)
            .into_iter()
            .filter(|t| *t > t_e)
            .collect();
        assert_eq!(ka.len(), 10, "side {side}: {ka:?}");
        assert_eq!(ka[0], t_e + secs(30));
        assert!(ka.windows(2).all(|w| w[1] - w[0] == secs(30)), "{ka:?}");
        assert_eq!(p.state(side), State::Established);
        assert!(p.downs(side).is_empty());
        assert_eq!(p.established_count(side), 1);
    }
}

#[test]
fn sending_an_update_delivers_it_and_postpones_the_keepalive() {
    let mut p = Pair::established(cfg_a(), passive(cfg_b()));
    let conn = p.established_conn(A);
    p.run_until(secs(45));
    assert!(p.n[A].s.send_update(p.now, an_update()));
    p.pump();
    assert_eq!(p.count_events(B, |e| *e == Event::Update(an_update())), 1);
    p.run_until(secs(120));
    // KEEPALIVEs at 0 (OpenConfirm) and 30; the UPDATE at 45 restarts the timer: 75, 105.
    assert_eq!(
        p.keepalive_times(A, conn),
        vec![secs(0), secs(30), secs(75), secs(105)]
    );
}

#[test]
fn send_update_and_route_refresh_are_refused_before_established() {
    let mut s = Solo::open_sent(cfg_a());
    assert!(!s.s.send_update(s.now, an_update()));
    assert!(!s.s.send_route_refresh(Family::Ipv4Unicast));
    s.drain();
    assert!(s.take_sent().is_empty());
}

#[test]
fn hold_timer_expires_at_exactly_hold_time_and_down_is_emitted_once() {
    let mut p = Pair::established(cfg_a(), passive(cfg_b()));
    let conn = p.established_conn(A);
    p.run_until(secs(100));
    // From now on nothing B sends arrives (a dead tunnel).
    p.n[B].drop_out = true;
    let last_heard = p.n[A]
        .received
        .iter()
        .filter(|(_, c, _)| *c == conn)
        .map(|(t, _, _)| *t)
        .max()
        .expect("received");
    assert_eq!(last_heard, secs(90));
    p.run_until(secs(1000));
    let expiries: Vec<_> = p.n[A]
        .sent
        .iter()
        .filter(|(_, _, m)| is_notification(m, error_code::HOLD_TIMER_EXPIRED, 0))
        .map(|(t, c, _)| (*t, *c))
        .collect();
    assert_eq!(expiries[0], (last_heard + secs(90), conn));
    assert_eq!(p.downs(A), vec![DownReason::HoldTimerExpired]);
    assert_eq!(p.established_count(A), 1);
    // B heard A's NOTIFICATION and went down once as well.
    let n = Notification::new(error_code::HOLD_TIMER_EXPIRED, 0, vec![]);
    assert_eq!(p.downs(B), vec![DownReason::NotificationReceived(n)]);
    // A keeps trying to reconnect and never gets B's OPEN: OpenSent hold timers (240 s) expire, nothing more.
    assert!(p.n[A].connects.len() > 1);
    assert_ne!(p.state(A), State::Established);
}

#[test]
fn hold_time_zero_means_no_keepalives_and_no_expiry() {
    let a = SessionConfig {
        hold_time: 0,
        ..cfg_a()
    };
    let mut p = Pair::established(a, passive(cfg_b()));
    assert_eq!(p.n[A].s.negotiated().map(|n| n.hold_time), Some(0));
    assert_eq!(p.n[B].s.negotiated().map(|n| n.hold_time), Some(0));
    let conn = p.established_conn(A);
    assert_eq!(p.n[A].s.poll_timeout(), None);
    assert_eq!(p.n[B].s.poll_timeout(), None);
    p.run_until(secs(100));
    p.n[B].drop_out = true;
    p.run_until(secs(5000));
    // Only the KEEPALIVE that confirms the OPEN.
    assert_eq!(p.keepalive_times(A, conn), vec![secs(0)]);
    assert_eq!(p.keepalive_times(B, conn), vec![secs(0)]);
    assert_eq!(p.state(A), State::Established);
    assert!(p.downs(A).is_empty());
}

#[test]
fn hold_timer_in_opensent_is_four_minutes() {
    let mut s = Solo::open_sent(cfg_a());
    assert_eq!(s.s.poll_timeout(), Some(s.t0 + secs(240)));
    s.at(secs(239));
    s.timeout();
    assert!(s.take_sent().is_empty());
    s.at(secs(240));
    s.timeout();
    let n = Notification::new(error_code::HOLD_TIMER_EXPIRED, 0, vec![]);
    assert_eq!(s.take_sent(), vec![(C1, Message::Notification(n))]);
    assert_eq!(s.take_actions(), vec![Action::Close(C1)]);
    assert_eq!(s.s.state(), State::Idle);
    // No Down: the session never was Established.
    assert!(!s
        .take_events()
        .iter()
        .any(|e| matches!(e, Event::Down { .. })));
    assert_eq!(s.s.last_down_reason(), Some(&DownReason::HoldTimerExpired));
    // The idle hold (10 s, jittered to 7.5-10 s) ends with a new attempt.
    let until = s.s.poll_timeout().unwrap();
    assert!(
        until >= s.t0 + Duration::from_millis(247_500) && until <= s.t0 + secs(250),
        "{until:?}"
    );
    s.at(secs(250));
    s.timeout();
    assert_eq!(s.take_actions(), vec![Action::Connect]);
    assert_eq!(s.s.state(), State::Connect);
}

/// Gaps between consecutive connection attempts must follow 5, 10, 20, 40, 60, 60, ... s, each shortened by at
/// most 25 % of jitter.
fn assert_backoff(connects: &[Duration], bases: &[u64]) {
    for (i, w) in connects.windows(2).enumerate() {
        let gap = w[1] - w[0];
        let base = secs(bases[i.min(bases.len() - 1)]);
        assert!(
            gap <= base && gap >= base * 3 / 4,
            "gap {i}: {gap:?} for base {base:?} in {connects:?}"
        );
    }
}

#[test]
fn connect_retry_backs_off_with_jitter_while_the_peer_is_absent() {
    let run = |cfg: SessionConfig| {
        let mut p = Pair::new(cfg, cfg_b());
        p.start(A);
        p.run_until(secs(400));
        p.n[A].connects.clone()
    };
    let connects = run(cfg_a());
    assert_eq!(connects[0], secs(0));
    assert_backoff(&connects, &[5, 10, 20, 40, 60]);
    // 0, 5, 15, 35, 75, then every 60 s without jitter: 10 attempts in 400 s; with every wait shortened by
    // the full quarter, 12.
    assert!((10..=12).contains(&connects.len()), "{connects:?}");
    // The jitter is real (not every gap is the full base) and deterministic.
    let full: Vec<Duration> = [0, 5, 15, 35, 75, 135, 195].into_iter().map(secs).collect();
    assert_ne!(connects[..7], full[..]);
    assert_eq!(run(cfg_a()), connects);
    // Another speaker gets another jitter.
    let other = run(SessionConfig {
        local_id: id(9),
        ..cfg_a()
    });
    assert_backoff(&other, &[5, 10, 20, 40, 60]);
    assert_ne!(other, connects);
}

#[test]
fn connect_retry_backoff_resets_once_established() {
    let mut p = Pair::new(cfg_a(), cfg_b());
    p.start(A);
    p.run_until(secs(200));
    let before = p.n[A].connects.len();
    assert!(before >= 5);
    // B comes up and connects; the session is established.
    p.start(B);
    p.run_until(secs(210));
    assert_eq!(p.state(A), State::Established);
    // B goes away for good (daemon down): A's attempts start over at 5 s after its idle hold.
    let t_stop = p.t();
    p.n[B].s.handle_stop(p.now, None, None);
    p.n[B].listening = false;
    p.pump();
    p.run_until(secs(300));
    let after: Vec<Duration> = p.n[A]
        .connects
        .iter()
        .copied()
        .filter(|t| *t > t_stop)
        .collect();
    // The idle hold (10 s) is jittered like ConnectRetry: 7.5 to 10 s.
    assert!(
        after[0] >= t_stop + Duration::from_millis(7500) && after[0] <= t_stop + secs(10),
        "idle hold first: {after:?}"
    );
    assert_backoff(&after, &[5, 10, 20, 40, 60]);
    assert!(after.len() >= 4);
}

#[test]
fn connection_closed_in_opensent_goes_back_to_active_and_retries() {
    let mut s = Solo::open_sent(cfg_a());
    s.at(secs(1));
    s.s.handle_closed(s.now, C1);
    s.drain();
    assert_eq!(s.s.state(), State::Active);
    assert!(
        s.take_actions().is_empty(),
        "the peer closed it: nothing to close"
    );
    let at = s.s.poll_timeout().expect("ConnectRetry armed") - s.now;
    assert!(at <= secs(5) && at >= secs(5) * 3 / 4, "{at:?}");
}

// ---------------------------------------------------------------------------------------------------------------
// Collisions (RFC 4271 6.8)
// ---------------------------------------------------------------------------------------------------------------

fn collision(a_id: u8, b_id: u8) {
    let a = SessionConfig {
        local_id: id(a_id),
        peer_addr: IpAddr::V4(id(b_id)),
        ..cfg_a()
    };
    let b = SessionConfig {
        local_id: id(b_id),
        peer_addr: IpAddr::V4(id(a_id)),
        ..cfg_b()
    };
    let mut p = Pair::new(a, b);
    // Both connect at the same instant: two connections, OPENs cross on both.
    p.start_both();
    assert_eq!(p.n[A].connects, vec![secs(0)]);
    assert_eq!(p.n[B].connects, vec![secs(0)]);
    p.run_until(secs(100));
    assert_eq!(p.state(A), State::Established);
    assert_eq!(p.state(B), State::Established);
    assert_eq!(p.established_count(A), 1);
    assert_eq!(p.established_count(B), 1);
    assert!(p.downs(A).is_empty() && p.downs(B).is_empty());
    // The survivor is the connection initiated by the speaker with the higher BGP identifier.
    let survivor = p.established_conn(A);
    assert_eq!(p.established_conn(B), survivor);
    let a_dir = p.n[A].s.connections().next().map(|c| c.1);
    let expect = if a_id < b_id {
        Direction::Inbound
    } else {
        Direction::Outbound
    };
    assert_eq!(a_dir, Some(expect));
    // The other connection got Cease / Connection Collision Resolution, and nothing else was torn down.
    let ceases: Vec<(usize, ConnId)> = [A, B]
        .into_iter()
        .flat_map(|side| {
            p.n[side]
                .sent
                .iter()
                .filter(|(_, _, m)| matches!(m, Message::Notification(_)))
                .map(move |(_, c, m)| {
                    assert!(
                        is_notification(
                            m,
                            error_code::CEASE,
                            subcode::CONNECTION_COLLISION_RESOLUTION
                        ),
                        "{m:?}"
                    );
                    (side, *c)
                })
        })
        .collect();
    assert!(!ceases.is_empty());
    assert!(ceases.iter().all(|(_, c)| *c != survivor), "{ceases:?}");
    // Both keep talking on the survivor.
    // Both keep talking on the survivor: the KEEPALIVE confirming the OPEN at 0, then 30, 60, 90.
    assert_eq!(
        p.keepalive_times(A, survivor),
        vec![secs(0), secs(30), secs(60), secs(90)]
    );
    assert_eq!(
        p.keepalive_times(B, survivor),
        vec![secs(0), secs(30), secs(60), secs(90)]
    );
}

#[test]
fn collision_lower_local_id_keeps_the_peers_connection() {
    collision(1, 2);
}

#[test]
fn collision_higher_local_id_keeps_its_own_connection() {
    collision(3, 2);
}

#[test]
fn connection_while_established_is_refused_and_the_session_stays_up() {
    let mut p = Pair::established(cfg_a(), passive(cfg_b()));
    let conn = p.established_conn(A);
    p.run_until(secs(50));
    // B's side opens a second connection (e.g. a stale attempt): both sessions refuse it.
    let extra = p.connection(B);
    p.pump();
    for side in [A, B] {
        let on_extra: Vec<&Message> = p.n[side]
            .sent
            .iter()
            .filter(|(_, c, _)| *c == extra)
            .map(|(_, _, m)| m)
            .collect();
        assert_eq!(on_extra.len(), 1, "{on_extra:?}");
        assert!(is_notification(
            on_extra[0],
            error_code::CEASE,
            subcode::CONNECTION_COLLISION_RESOLUTION
        ));
        assert_eq!(p.established_conn(side), conn);
    }
    p.run_until(secs(400));
    assert_eq!(p.state(A), State::Established);
    assert!(p.downs(A).is_empty() && p.downs(B).is_empty());
}

#[test]
fn collision_resolved_when_the_second_open_arrives() {
    // Scripted: A (192.0.2.1) has its outbound C1 in OpenConfirm when B's inbound C2 brings an OPEN.
    let mut s = Solo::open_sent(cfg_a());
    s.recv(C1, Message::Open(peer_open(90, full_caps(65002))));
    assert_eq!(s.s.state(), State::OpenConfirm);
    s.connected(C2, Direction::Inbound);
    assert!(matches!(
        s.take_sent().as_slice(),
        [(C1, Message::Keepalive), (C2, Message::Open(_))]
    ));
    s.recv(C2, Message::Open(peer_open(90, full_caps(65002))));
    // 192.0.2.1 < 192.0.2.2: the connection A initiated (C1) goes.
    let cease = Notification::new(
        error_code::CEASE,
        subcode::CONNECTION_COLLISION_RESOLUTION,
        vec![],
    );
    assert_eq!(
        s.take_sent(),
        vec![(C1, Message::Notification(cease)), (C2, Message::Keepalive)]
    );
    assert_eq!(s.take_actions(), vec![Action::Close(C1)]);
    assert_eq!(
        s.s.connections().collect::<Vec<_>>(),
        vec![(C2, Direction::Inbound, State::OpenConfirm)]
    );
    s.recv(C2, Message::Keepalive);
    assert_eq!(s.s.state(), State::Established);
    assert!(
        s.s.last_down_reason().is_none(),
        "collision resolution is not a failure"
    );
}

// ---------------------------------------------------------------------------------------------------------------
// NOTIFICATION paths
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn wrong_peer_asn_gets_bad_peer_as_with_the_expected_as_and_the_peer_does_not_reply() {
    let a = SessionConfig {
        peer_asn: 65099,
        ..cfg_a()
    };
    let mut p = Pair::new(a, passive(cfg_b()));
    p.start_both();
    p.run_until(secs(1));
    let expected = Notification::new(
        error_code::OPEN_MESSAGE,
        subcode::BAD_PEER_AS,
        65099u16.to_be_bytes().to_vec(),
    );
    let conn = ConnId(1);
    let a_sent: Vec<&Message> = p.n[A]
        .sent
        .iter()
        .filter(|(_, c, _)| *c == conn)
        .map(|(_, _, m)| m)
        .collect();
    assert!(matches!(a_sent[0], Message::Open(_)));
    assert_eq!(a_sent[1], &Message::Notification(expected.clone()));
    assert_eq!(a_sent.len(), 2);
    // B had confirmed A's OPEN; on A's NOTIFICATION it closes without a word.
    let b_sent: Vec<&Message> = p.n[B]
        .sent
        .iter()
        .filter(|(_, c, _)| *c == conn)
        .map(|(_, _, m)| m)
        .collect();
    assert!(
        matches!(b_sent.as_slice(), [Message::Open(_), Message::Keepalive]),
        "{b_sent:?}"
    );
    assert_eq!(
        p.n[B].s.last_down_reason(),
        Some(&DownReason::NotificationReceived(expected.clone()))
    );
    assert_eq!(
        p.n[A].s.last_down_reason(),
        Some(&DownReason::NotificationSent(expected))
    );
    for side in [A, B] {
        assert_eq!(p.established_count(side), 0);
        assert!(p.downs(side).is_empty(), "no Down before Established");
    }
    assert_eq!(p.state(A), State::Idle);
    assert_eq!(p.state(B), State::Idle);
}

#[test]
fn unacceptable_hold_time_is_refused() {
    for hold in [1, 2] {
        let mut s = Solo::open_sent(cfg_a());
        s.recv(C1, Message::Open(peer_open(hold, full_caps(65002))));
        let n = Notification::new(
            error_code::OPEN_MESSAGE,
            subcode::UNACCEPTABLE_HOLD_TIME,
            vec![],
        );
        assert_eq!(s.take_sent(), vec![(C1, Message::Notification(n))]);
        assert_eq!(s.take_actions(), vec![Action::Close(C1)]);
        assert_eq!(s.s.state(), State::Idle);
    }
    // 3 is the smallest acceptable.
    let mut s = Solo::open_sent(cfg_a());
    s.recv(C1, Message::Open(peer_open(3, full_caps(65002))));
    assert_eq!(s.s.state(), State::OpenConfirm);
    assert_eq!(s.s.negotiated_on(C1).map(|n| n.hold_time), Some(3));
}

#[test]
fn unsupported_version_is_refused_with_our_version() {
    let mut s = Solo::open_sent(cfg_a());
    let mut o = peer_open(90, full_caps(65002));
    o.version = 5;
    s.recv(C1, Message::Open(o));
    let n = Notification::new(
        error_code::OPEN_MESSAGE,
        subcode::UNSUPPORTED_VERSION,
        vec![0, 4],
    );
    assert_eq!(s.take_sent(), vec![(C1, Message::Notification(n))]);
}

#[test]
fn bad_bgp_identifier_only_for_ibgp_or_zero() {
    let bad = Notification::new(
        error_code::OPEN_MESSAGE,
        subcode::BAD_BGP_IDENTIFIER,
        vec![],
    );
    // iBGP, the peer uses our identifier.
    let ibgp = SessionConfig {
        peer_asn: 65001,
        ..cfg_a()
    };
    let mut s = Solo::open_sent(ibgp);
    let o = Open {
        asn: 65001,
        bgp_id: id(1),
        ..peer_open(90, full_caps(65001))
    };
    s.recv(C1, Message::Open(o));
    assert_eq!(
        s.take_sent(),
        vec![(C1, Message::Notification(bad.clone()))]
    );
    // eBGP with the same identifier is allowed (RFC 6286).
    let mut s = Solo::open_sent(cfg_a());
    let o = Open {
        bgp_id: id(1),
        ..peer_open(90, full_caps(65002))
    };
    s.recv(C1, Message::Open(o));
    assert_eq!(s.take_sent(), vec![(C1, Message::Keepalive)]);
    // Zero is never valid.
    let mut s = Solo::open_sent(cfg_a());
    let o = Open {
        bgp_id: Ipv4Addr::UNSPECIFIED,
        ..peer_open(90, full_caps(65002))
    };
    s.recv(C1, Message::Open(o));
    assert_eq!(s.take_sent(), vec![(C1, Message::Notification(bad))]);
}

#[test]
fn unexpected_messages_get_fsm_errors_with_rfc6608_subcodes() {
    let fsm = |sub, ty| Notification::new(error_code::FSM, sub, vec![ty]);
    // UPDATE in OpenConfirm.
    let mut s = Solo::open_sent(cfg_a());
    s.recv(C1, Message::Open(peer_open(90, full_caps(65002))));
    s.take_sent();
    s.take_events();
    s.recv(C1, Message::Update(an_update()));
    let n = fsm(subcode::FSM_UNEXPECTED_IN_OPENCONFIRM, 2);
    assert_eq!(s.take_sent(), vec![(C1, Message::Notification(n.clone()))]);
    assert_eq!(s.take_actions(), vec![Action::Close(C1)]);
    let events = s.take_events();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, Event::Update(_) | Event::Down { .. })),
        "{events:?}"
    );
    assert_eq!(s.s.state(), State::Idle);
    assert_eq!(
        s.s.last_down_reason(),
        Some(&DownReason::NotificationSent(n))
    );
    // KEEPALIVE and UPDATE in OpenSent.
    for (msg, ty) in [(Message::Keepalive, 4), (Message::Update(an_update()), 2)] {
        let mut s = Solo::open_sent(cfg_a());
        s.recv(C1, msg);
        assert_eq!(
            s.take_sent(),
            vec![(
                C1,
                Message::Notification(fsm(subcode::FSM_UNEXPECTED_IN_OPENSENT, ty))
            )]
        );
    }
    // A second OPEN in Established: FSM error, and the session goes down once.
    let mut s = Solo::established(cfg_a(), peer_open(90, full_caps(65002)));
    s.recv(C1, Message::Open(peer_open(90, full_caps(65002))));
    let n = fsm(subcode::FSM_UNEXPECTED_IN_ESTABLISHED, 1);
    assert_eq!(s.take_sent(), vec![(C1, Message::Notification(n.clone()))]);
    let downs: Vec<Event> = s
        .take_events()
        .into_iter()
        .filter(|e| matches!(e, Event::Down { .. }))
        .collect();
    assert_eq!(
        downs,
        vec![Event::Down {
            reason: DownReason::NotificationSent(n)
        }]
    );
}

#[test]
fn decode_error_from_the_driver_is_sent_and_the_peer_goes_idle_without_replying() {
    let mut p = Pair::established(cfg_a(), passive(cfg_b()));
    let conn = p.established_conn(A);
    p.run_until(secs(40));
    let n = Notification::new(
        error_code::UPDATE_MESSAGE,
        subcode::MALFORMED_AS_PATH,
        vec![],
    );
    let t = p.t();
    p.n[A].s.handle_decode_error(p.now, conn, n.clone());
    p.pump();
    assert_eq!(
        p.n[A].sent.last().map(|(t, c, m)| (*t, *c, m.clone())),
        Some((t, conn, Message::Notification(n.clone())))
    );
    assert_eq!(p.downs(A), vec![DownReason::NotificationSent(n.clone())]);
    assert_eq!(p.downs(B), vec![DownReason::NotificationReceived(n)]);
    assert!(
        !p.n[B].sent.iter().any(|(ts, c, _)| *c == conn && *ts >= t),
        "B must not reply"
    );
    assert_eq!(p.state(A), State::Idle);
    assert_eq!(p.state(B), State::Idle);
    assert_eq!(p.n[A].s.negotiated(), None);
    assert_eq!(p.n[A].s.established_since(), None);
    // They come back after the idle hold.
    p.run_until(secs(100));
    assert_eq!(p.state(A), State::Established);
    assert_eq!(p.established_count(A), 2);
    assert_eq!(p.downs(A).len(), 1);
}

#[test]
fn connection_reset_in_established_is_one_down() {
    let mut p = Pair::established(cfg_a(), passive(cfg_b()));
    let conn = p.established_conn(A);
    p.run_until(secs(40));
    // The TCP connection resets under both (no NOTIFICATION).
    p.n[A].s.handle_closed(p.now, conn);
    p.n[B].s.handle_closed(p.now, conn);
    p.open.remove(&conn);
    p.pump();
    assert_eq!(p.downs(A), vec![DownReason::ConnectionClosed]);
    assert_eq!(p.downs(B), vec![DownReason::ConnectionClosed]);
    // Reports after the fact change nothing.
    p.n[A].s.handle_closed(p.now, conn);
    p.n[A].s.handle_message(p.now, conn, Message::Keepalive);
    p.pump();
    assert_eq!(p.downs(A).len(), 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Administrative stop
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn admin_shutdown_carries_the_rfc8203_message_and_restart_after_brings_it_back() {
    let mut p = Pair::established(cfg_a(), cfg_b());
    p.run_until(secs(40));
    let text = "maintenance: back at 14:00";
    let n = Notification::shutdown(subcode::ADMINISTRATIVE_SHUTDOWN, text);
    p.n[A].s.handle_stop(p.now, Some(n.clone()), Some(secs(60)));
    p.pump();
    assert_eq!(p.state(A), State::Idle);
    assert_eq!(p.downs(A), vec![DownReason::Stopped]);
    let received = p.downs(B);
    assert_eq!(received, vec![DownReason::NotificationReceived(n.clone())]);
    let DownReason::NotificationReceived(got) = &received[0] else {
        unreachable!()
    };
    assert_eq!(got.describe(), "Cease/Administrative Shutdown");
    assert_eq!(got.shutdown_message().as_deref(), Some(text));
    // A stays down (refusing B's attempts) for 60 s, then comes back by itself.
    p.run_until(secs(99));
    assert_eq!(p.state(A), State::Idle);
    assert!(
        p.n[A].connects.iter().all(|t| *t < secs(40)),
        "{:?}",
        p.n[A].connects
    );
    p.run_until(secs(200));
    assert_eq!(p.state(A), State::Established);
    assert_eq!(p.state(B), State::Established);
    assert_eq!(p.established_count(A), 2);
    assert_eq!(p.established_count(B), 2);
    assert_eq!(p.downs(A).len(), 1);
    assert_eq!(p.downs(B).len(), 1);
}

#[test]
fn stop_without_restart_stays_idle_and_refuses_connections() {
    let mut p = Pair::established(cfg_a(), cfg_b());
    p.run_until(secs(40));
    p.n[A].s.handle_stop(p.now, None, None);
    p.pump();
    let plain = Notification::new(error_code::CEASE, subcode::ADMINISTRATIVE_SHUTDOWN, vec![]);
    assert_eq!(p.downs(B), vec![DownReason::NotificationReceived(plain)]);
    p.run_until(secs(1000));
    assert_eq!(p.state(A), State::Idle);
    assert_eq!(p.n[A].s.poll_timeout(), None);
    assert!(p.n[A].connects.iter().all(|t| *t < secs(40)));
    // B keeps trying; A's daemon accepts TCP and the Idle session refuses with Cease / Connection Rejected.
    assert!(p.n[B].connects.len() > 3);
    assert!(p.n[A].sent.iter().any(|(_, _, m)| is_notification(
        m,
        error_code::CEASE,
        subcode::CONNECTION_REJECTED
    )));
    assert_eq!(p.established_count(A), 1);
    // handle_start brings it back.
    p.n[A].s.handle_start(p.now);
    p.run_for(secs(60));
    assert_eq!(p.state(A), State::Established);
}

#[test]
fn max_prefix_stop_sends_cease_maximum_number_of_prefixes() {
    let mut p = Pair::established(cfg_a(), passive(cfg_b()));
    p.run_until(secs(40));
    // RFC 4486 data: AFI 1, SAFI 1, the limit (10000).
    let n = Notification::new(
        error_code::CEASE,
        subcode::MAX_PREFIXES_REACHED,
        vec![0, 1, 1, 0, 0, 0x27, 0x10],
    );
    p.n[A].s.handle_stop(p.now, Some(n.clone()), None);
    p.pump();
    assert_eq!(
        p.downs(B),
        vec![DownReason::NotificationReceived(n.clone())]
    );
    let DownReason::NotificationReceived(got) = &p.downs(B)[0] else {
        unreachable!()
    };
    assert_eq!(got.describe(), "Cease/Maximum Number of Prefixes Reached");
    assert_eq!(p.downs(A), vec![DownReason::Stopped]);
}

#[test]
fn idle_session_refuses_connections() {
    let mut s = Solo::new(cfg_a());
    s.connected(C1, Direction::Inbound);
    let n = Notification::new(error_code::CEASE, subcode::CONNECTION_REJECTED, vec![]);
    assert_eq!(s.take_sent(), vec![(C1, Message::Notification(n))]);
    assert_eq!(s.take_actions(), vec![Action::Close(C1)]);
    assert_eq!(s.s.state(), State::Idle);
    assert!(s.take_events().is_empty());
    assert_eq!(s.s.connections().count(), 0);
}

#[test]
fn unknown_connections_are_ignored() {
    let mut s = Solo::established(cfg_a(), peer_open(90, full_caps(65002)));
    s.recv(C2, Message::Update(an_update()));
    s.s.handle_closed(s.now, C2);
    s.s.handle_decode_error(s.now, C2, Notification::new(1, 2, vec![]));
    s.drain();
    assert!(s.take_sent().is_empty() && s.take_actions().is_empty() && s.take_events().is_empty());
    assert_eq!(s.s.state(), State::Established);
}

// ---------------------------------------------------------------------------------------------------------------
// Route refresh (RFC 2918)
// ---------------------------------------------------------------------------------------------------------------

#[test]
fn route_refresh_only_when_negotiated() {
    let b = SessionConfig {
        families: vec![Family::Ipv4Unicast],
        ..cfg_b()
    };
    let mut p = Pair::established(cfg_a(), passive(b));
    assert!(p.n[A].s.send_route_refresh(Family::Ipv4Unicast));
    // IPv6 unicast was not negotiated (B does not announce it).
    assert!(!p.n[A].s.send_route_refresh(Family::Ipv6Unicast));
    p.pump();
    assert_eq!(
        p.count_events(B, |e| matches!(e, Event::RouteRefresh(_))),
        1
    );
    assert_eq!(
        p.count_events(B, |e| *e == Event::RouteRefresh(Family::Ipv4Unicast)),
        1
    );
    // A request for a family that was not negotiated is ignored, without a NOTIFICATION.
    let mut s = Solo::established(
        cfg_a(),
        peer_open(
            90,
            vec![Capability::RouteRefresh, Capability::FourOctetAsn(65002)],
        ),
    );
    s.recv(C1, Message::RouteRefresh(Family::Ipv6Unicast));
    assert!(s.take_events().is_empty());
    assert!(s.take_sent().is_empty());
    s.recv(C1, Message::RouteRefresh(Family::Ipv4Unicast));
    assert_eq!(
        s.take_events(),
        vec![Event::RouteRefresh(Family::Ipv4Unicast)]
    );
    assert_eq!(s.s.state(), State::Established);
}

#[test]
fn both_ends_reset_at_once_come_back_instead_of_refusing_each_other_forever() {
    // What a BFD Down does at both ends of a tunnel: each side stops with a restart 1 s later. Each side's
    // first attempt may meet the other still holding (Cease / Connection Rejected); the refused side must stay
    // ready to accept rather than go idle in turn, or the two take turns refusing each other for ever.
    let mut p = Pair::established(cfg_a(), cfg_b());
    p.run_until(secs(40));
    p.n[A].s.handle_stop(p.now, None, Some(secs(1)));
    p.pump();
    // B's detection fires a few tens of milliseconds later, as on a real link.
    p.run_until(secs(40) + Duration::from_millis(30));
    p.n[B].s.handle_stop(p.now, None, Some(secs(1)));
    p.pump();
    assert_eq!(p.state(A), State::Idle);
    assert_eq!(p.state(B), State::Idle);
    p.run_until(secs(80));
    assert_eq!(p.state(A), State::Established);
    assert_eq!(p.state(B), State::Established);
}
