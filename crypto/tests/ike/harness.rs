//! Two `IkeSession`s wired together through a simulated network with a virtual clock.
//!
//! Every datagram takes `latency` to arrive; a drop filter decides per datagram whether the
//! network loses it. Events are logged with their instant, and the ESP model checks the
//! make-before-break rule: for every period during which one side sends on an SPI, the other
//! side has that SPI installed inbound for the same period shifted by the latency (and with
//! the same keys).

#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use braid_crypto::ike::message::{decode, Header};
use braid_crypto::ike::{ChildId, DownReason, Event, Identity, IkeConfig, IkeSession, Psk};

#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Side {
    A,
    B,
}

impl Side {
    pub fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// Installed inbound SAs: SPI -> (child, keymat).
pub type Inbound = HashMap<u32, (ChildId, Vec<u8>)>;

pub type DropFilter = Box<dyn FnMut(Side, usize, &[u8]) -> bool>;

pub struct Pair {
    pub t0: Instant,
    pub now: Instant,
    pub latency: Duration,
    pub a: IkeSession,
    pub b: IkeSession,
    pub a_addr: SocketAddr,
    pub b_addr: SocketAddr,
    /// The address B sees A's datagrams coming from (differs from `a_addr` behind a NAT).
    pub a_seen_as: SocketAddr,
    pub wire: Vec<(Instant, Side, Vec<u8>)>,
    pub log: Vec<(Instant, Side, Event)>,
    /// Every datagram each side sent, with its instant, whether lost or not.
    pub sent: Vec<(Instant, Side, Vec<u8>)>,
    pub drop: DropFilter,
    counts: HashMap<Side, usize>,
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub fn config(initiator: bool, psk: &str, id: &str) -> IkeConfig {
    let mut c = IkeConfig::new(
        initiator,
        Psk::new(psk.as_bytes().to_vec()),
        id.parse::<Identity>().unwrap(),
    );
    // Short timers so tests run in little virtual time; behaviour does not depend on them.
    c.retransmit.base = Duration::from_millis(500);
    c.dpd_interval = None;
    c
}

pub fn seed(n: u8) -> [u8; 32] {
    [n; 32]
}

impl Pair {
    pub fn new(a: IkeConfig, b: IkeConfig) -> Pair {
        Pair::with_seeds(a, b, seed(1), seed(2))
    }

    pub fn with_seeds(a: IkeConfig, b: IkeConfig, sa: [u8; 32], sb: [u8; 32]) -> Pair {
        let t0 = Instant::now();
        let a_addr = addr("198.51.100.1:4500");
        let b_addr = addr("203.0.113.1:4500");
        Pair {
            t0,
            now: t0,
            latency: Duration::from_millis(20),
            a: IkeSession::with_seed(a, a_addr, b_addr, t0, sa),
            b: IkeSession::with_seed(b, b_addr, a_addr, t0, sb),
            a_addr,
            b_addr,
            a_seen_as: a_addr,
            wire: Vec::new(),
            log: Vec::new(),
            sent: Vec::new(),
            drop: Box::new(|_, _, _| false),
            counts: HashMap::new(),
        }
    }

    pub fn side(&mut self, s: Side) -> &mut IkeSession {
        match s {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    /// Collects transmits and events produced so far.
    pub fn flush(&mut self) {
        for s in [Side::A, Side::B] {
            while let Some(t) = self.side(s).poll_transmit() {
                let n = self.counts.entry(s).or_insert(0);
                let index = *n;
                *n += 1;
                self.sent.push((self.now, s, t.payload.clone()));
                let expected_to = match s {
                    Side::A => self.b_addr,
                    Side::B => self.a_seen_as,
                };
                assert_eq!(t.to, expected_to, "{s:?} sent to the wrong address");
                if !(self.drop)(s, index, &t.payload) {
                    self.wire
                        .push((self.now + self.latency, s.other(), t.payload));
                }
            }
            while let Some(e) = self.side(s).poll_event() {
                self.log.push((self.now, s, e));
            }
        }
    }

    pub fn start(&mut self) {
        let now = self.now;
        self.a.start(now);
        self.flush();
    }

    /// Runs the network and timers until `now + d`.
    pub fn run_for(&mut self, d: Duration) {
        let end = self.now + d;
        for _ in 0..1_000_000 {
            self.flush();
            let next_wire = self.wire.iter().map(|w| w.0).min();
            let next = [next_wire, self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    // Deliver everything due, in order of arrival.
                    let mut due: Vec<(Instant, Side, Vec<u8>)> = Vec::new();
                    self.wire.retain(|w| {
                        if w.0 <= now {
                            due.push(w.clone());
                            false
                        } else {
                            true
                        }
                    });
                    due.sort_by_key(|w| w.0);
                    for (_, to, bytes) in due {
                        let from = match to {
                            Side::A => self.b_addr,
                            Side::B => self.a_seen_as,
                        };
                        self.side(to).handle_message(now, from, &bytes);
                        self.flush();
                    }
                    for s in [Side::A, Side::B] {
                        if self.side(s).poll_timeout().is_some_and(|t| t <= now) {
                            self.side(s).handle_timeout(now);
                            self.flush();
                        }
                    }
                }
                _ => {
                    self.now = end;
                    self.flush();
                    return;
                }
            }
        }
        panic!("simulation did not settle");
    }

    pub fn events(&self, s: Side) -> Vec<&Event> {
        self.log.iter().filter(|e| e.1 == s).map(|e| &e.2).collect()
    }

    pub fn downs(&self, s: Side) -> Vec<DownReason> {
        self.events(s)
            .into_iter()
            .filter_map(|e| match e {
                Event::IkeDown { reason } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    pub fn is_up(&self, s: Side) -> bool {
        self.events(s)
            .iter()
            .any(|e| matches!(e, Event::IkeUp { .. }))
    }

    /// Headers of the datagrams `s` sent.
    pub fn headers(&self, s: Side) -> Vec<Header> {
        self.sent
            .iter()
            .filter(|x| x.1 == s)
            .filter_map(|x| decode(&x.2).ok().map(|(h, _)| h))
            .collect()
    }

    /// The installed state of one side as the events describe it: inbound SPIs with their
    /// keys and child, and the current outbound SPI.
    pub fn esp_state(&self, s: Side) -> (Inbound, Option<(u32, Vec<u8>)>) {
        let mut inbound = HashMap::new();
        let mut outbound = None;
        for e in self.events(s) {
            match e {
                Event::ChildInstallInbound {
                    child, spi, keymat, ..
                } => {
                    inbound.insert(spi.0, (*child, keymat.as_bytes().to_vec()));
                }
                Event::ChildInstallOutbound { spi, keymat, .. } => {
                    outbound = Some((spi.0, keymat.as_bytes().to_vec()));
                }
                Event::ChildRemoveInbound { spi, .. } => {
                    inbound.remove(&spi.0);
                }
                Event::ChildRemoveOutbound { spi, .. }
                    if outbound.as_ref().is_some_and(|o| o.0 == spi.0) =>
                {
                    outbound = None;
                }
                _ => {}
            }
        }
        (inbound, outbound)
    }

    /// The make-before-break check over the whole log (see the module docs). Returns the
    /// number of outbound periods checked.
    pub fn check_make_before_break(&self) -> usize {
        let far = self.now + Duration::from_secs(1_000_000);
        let mut checked = 0;
        for s in [Side::A, Side::B] {
            // Outbound periods of s.
            let mut periods: Vec<(u32, Vec<u8>, Instant, Instant)> = Vec::new();
            let mut cur: Option<(u32, Vec<u8>, Instant)> = None;
            for (t, side, e) in &self.log {
                if *side != s {
                    continue;
                }
                match e {
                    Event::ChildInstallOutbound { spi, keymat, .. } => {
                        if let Some((spi0, k0, t0)) = cur.take() {
                            periods.push((spi0, k0, t0, *t));
                        }
                        cur = Some((spi.0, keymat.as_bytes().to_vec(), *t));
                    }
                    Event::ChildRemoveOutbound { spi, .. }
                        if cur.as_ref().is_some_and(|c| c.0 == spi.0) =>
                    {
                        let (spi0, k0, t0) = cur.take().unwrap();
                        periods.push((spi0, k0, t0, *t));
                    }
                    Event::IkeDown { .. } => {
                        if let Some((spi0, k0, t0)) = cur.take() {
                            periods.push((spi0, k0, t0, *t));
                        }
                    }
                    _ => {}
                }
            }
            if let Some((spi0, k0, t0)) = cur {
                periods.push((spi0, k0, t0, far));
            }
            // Inbound intervals of the peer.
            let peer = s.other();
            for (spi, keys, from, to) in periods {
                let install = self.log.iter().find_map(|(t, side, e)| match e {
                    Event::ChildInstallInbound { spi: x, keymat, .. }
                        if *side == peer && x.0 == spi =>
                    {
                        Some((*t, keymat.as_bytes().to_vec()))
                    }
                    _ => None,
                });
                let (installed, peer_keys) = install.unwrap_or_else(|| {
                    panic!("{s:?} sends on {spi:08x}, which {peer:?} never installed")
                });
                assert_eq!(
                    peer_keys, keys,
                    "{s:?} outbound {spi:08x} keys differ from {peer:?} inbound"
                );
                let removed = self
                    .log
                    .iter()
                    .find_map(|(t, side, e)| match e {
                        Event::ChildRemoveInbound { spi: x, .. } if *side == peer && x.0 == spi => {
                            Some(*t)
                        }
                        Event::IkeDown { .. } if *side == peer => Some(*t),
                        _ => None,
                    })
                    .unwrap_or(far);
                assert!(
                    installed <= from + self.latency,
                    "{s:?} sends on {spi:08x} from {:?}, {peer:?} installs it inbound only at {:?}",
                    from - self.t0,
                    installed - self.t0
                );
                // Packets sent until `to` arrive until `to + latency`; a session that goes down
                // ends both sides, so only a removal while still up counts.
                let ended = self.log.iter().any(|(t, side, e)| {
                    *side == peer && *t == removed && matches!(e, Event::IkeDown { .. })
                });
                if to < far && removed < far && !ended {
                    assert!(
                        removed >= to + self.latency,
                        "{peer:?} removes inbound {spi:08x} at {:?} but {s:?} sent on it until {:?}",
                        removed - self.t0,
                        to - self.t0
                    );
                }
                checked += 1;
            }
        }
        checked
    }
}
