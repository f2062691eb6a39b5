//! Two BFD sessions wired back to back through an in-memory link, driven by a virtual clock. Every packet goes
//! through encode and decode. The link can be cut (both directions) or drop packets by a rule.

use std::time::{Duration, Instant};

use braid_control::bfd::{ControlPacket, Diag, Event, Session, SessionConfig, SessionState};

const MS: Duration = Duration::from_millis(1);

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Side {
    A,
    B,
}

struct Link {
    start: Instant,
    now: Instant,
    a: Session,
    b: Session,
    cut: bool,
    /// Drop rule: (sender, index of the packet among all sent) -> drop.
    drop: Box<dyn FnMut(Side, usize) -> bool>,
    sent: Vec<(Instant, Side, ControlPacket)>,
    events: Vec<(Instant, Side, Event)>,
}

fn cfg(discr: u32, tx_ms: u32, rx_ms: u32, mult: u8) -> SessionConfig {
    let mut c = SessionConfig::new(discr);
    c.desired_min_tx = tx_ms * MS;
    c.required_min_rx = rx_ms * MS;
    c.detect_mult = mult;
    c.jitter_seed = 0xb0f0 + u64::from(discr);
    c
}

impl Link {
    fn new(a: SessionConfig, b: SessionConfig) -> Link {
        let start = Instant::now();
        // B starts a little later than A, as real peers do.
        Link {
            start,
            now: start,
            a: Session::new(a, start),
            b: Session::new(b, start + 130 * MS),
            cut: false,
            drop: Box::new(|_, _| false),
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn drain(&mut self) {
        for _ in 0..10_000 {
            let mut progress = false;
            for side in [Side::A, Side::B] {
                let (from, to) = match side {
                    Side::A => (&mut self.a, &mut self.b),
                    Side::B => (&mut self.b, &mut self.a),
                };
                while let Some(p) = from.poll_transmit(self.now) {
                    progress = true;
                    let idx = self.sent.len();
                    self.sent.push((self.now, side, p));
                    if self.cut || (self.drop)(side, idx) {
                        continue;
                    }
                    let q = ControlPacket::decode(&p.to_bytes()).expect("our own packets decode");
                    to.handle_packet(self.now, &q);
                }
            }
            while let Some(e) = self.a.poll_event() {
                self.events.push((self.now, Side::A, e));
            }
            while let Some(e) = self.b.poll_event() {
                self.events.push((self.now, Side::B, e));
            }
            if !progress {
                return;
            }
        }
        panic!("link does not settle at {:?}", self.now - self.start);
    }

    /// Run the virtual clock to `until`, firing every timer on the way.
    fn run_until(&mut self, until: Instant) {
        for _ in 0..1_000_000 {
            self.drain();
            let next = [self.a.poll_timeout(), self.b.poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= until => {
                    self.now = self.now.max(t);
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                }
                _ => {
                    self.now = until;
                    self.a.handle_timeout(self.now);
                    self.b.handle_timeout(self.now);
                    self.drain();
                    return;
                }
            }
        }
        panic!("timers spin");
    }

    fn run_for(&mut self, d: Duration) {
        let t = self.now + d;
        self.run_until(t);
    }

    fn session(&self, side: Side) -> &Session {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    fn events_of(&self, side: Side) -> Vec<Event> {
        self.events
            .iter()
            .filter(|e| e.1 == side)
            .map(|e| e.2)
            .collect()
    }

    fn sent_by(&self, side: Side) -> Vec<(Instant, ControlPacket)> {
        self.sent
            .iter()
            .filter(|s| s.1 == side)
            .map(|s| (s.0, s.2))
            .collect()
    }

    /// Gaps between consecutive periodic (non-F) packets of `side` sent in [from, to).
    fn periodic_gaps(&self, side: Side, from: Instant, to: Instant) -> Vec<Duration> {
        let times: Vec<Instant> = self
            .sent_by(side)
            .into_iter()
            .filter(|(t, p)| *t >= from && *t < to && !p.final_)
            .map(|(t, _)| t)
            .collect();
        times.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn up_both(&mut self) {
        self.run_for(Duration::from_secs(5));
        assert_eq!(self.a.state(), SessionState::Up);
        assert_eq!(self.b.state(), SessionState::Up);
    }
}

#[test]
fn three_way_handshake_to_up() {
    let mut l = Link::new(cfg(1, 300, 300, 3), cfg(2, 300, 300, 3));
    l.run_for(Duration::from_secs(5));
    for side in [Side::A, Side::B] {
        let s = l.session(side);
        assert_eq!(s.state(), SessionState::Up, "{side:?}");
        assert_eq!(s.remote_state(), SessionState::Up, "{side:?}");
        assert_eq!(l.events_of(side), vec![Event::Up], "{side:?}");
    }
    assert_eq!(l.a.remote_discr(), 2);
    assert_eq!(l.b.remote_discr(), 1);
    // A's states on the wire: Down (your discr 0) until it hears B, then Init or Up, never back.
    let states: Vec<SessionState> = l.sent_by(Side::A).iter().map(|(_, p)| p.state).collect();
    assert_eq!(states[0], SessionState::Down);
    assert_eq!(l.sent_by(Side::A)[0].1.your_discr, 0);
    let first_up = states.iter().position(|s| *s == SessionState::Up).unwrap();
    assert!(states[first_up..].iter().all(|s| *s == SessionState::Up));
    // B heard A's Down first, so it went Init, and A went straight from Down to Up on B's Init.
    assert!(l
        .sent_by(Side::B)
        .iter()
        .any(|(_, p)| p.state == SessionState::Init));
    assert!(!states.contains(&SessionState::Init));
}

#[test]
fn slow_rate_before_up() {
    // B never answers: A stays Down and sends at 1 s (jittered to 75-100%), advertising 1 s.
    let mut l = Link::new(cfg(1, 50, 50, 3), cfg(2, 50, 50, 3));
    l.cut = true;
    l.run_for(Duration::from_secs(30));
    assert_eq!(l.a.state(), SessionState::Down);
    let gaps = l.periodic_gaps(Side::A, l.start, l.now);
    assert!(gaps.len() >= 29, "{}", gaps.len());
    assert!(
        gaps.iter().all(|g| *g >= 750 * MS && *g <= 1000 * MS),
        "{gaps:?}"
    );
    assert!(
        gaps.iter().any(|g| *g < 900 * MS) && gaps.iter().any(|g| *g > 900 * MS),
        "jitter"
    );
    assert!(l
        .sent_by(Side::A)
        .iter()
        .all(|(_, p)| p.desired_min_tx == 1_000_000));
    assert_eq!(l.a.negotiated().tx_interval, Some(1000 * MS));

    // Connected, the session comes Up and the rate drops to the configured 50 ms.
    l.cut = false;
    l.run_for(Duration::from_secs(5));
    assert_eq!(l.a.state(), SessionState::Up);
    let from = l.now - Duration::from_secs(2);
    let gaps = l.periodic_gaps(Side::A, from, l.now);
    assert!(
        gaps.iter().all(|g| *g >= 37 * MS && *g <= 50 * MS),
        "{gaps:?}"
    );
    assert_eq!(l.sent_by(Side::A).last().unwrap().1.desired_min_tx, 50_000);
}

#[test]
fn timers_negotiated_as_rfc_5880_says() {
    let mut l = Link::new(cfg(1, 100, 100, 3), cfg(2, 300, 300, 5));
    l.up_both();
    let a = l.a.negotiated();
    let b = l.b.negotiated();
    assert!(!a.poll_in_progress && !b.poll_in_progress);
    // TX: max(local desired TX, remote required RX).
    assert_eq!(a.tx_interval, Some(300 * MS));
    assert_eq!(b.tx_interval, Some(300 * MS));
    // Detection: remote detect mult x max(local required RX, remote desired TX).
    assert_eq!(a.detection_time, Some(5 * 300 * MS));
    assert_eq!(b.detection_time, Some(3 * 300 * MS));
    assert_eq!(a.remote_detect_mult, Some(5));
    assert_eq!(a.remote_desired_min_tx, Some(300 * MS));
    assert_eq!(b.remote_required_min_rx, 100 * MS);
    assert_eq!(
        (a.local_desired_min_tx, a.local_required_min_rx),
        (100 * MS, 100 * MS)
    );
    let from = l.now - Duration::from_secs(2);
    for side in [Side::A, Side::B] {
        let gaps = l.periodic_gaps(side, from, l.now);
        assert!(
            gaps.iter().all(|g| *g >= 225 * MS && *g <= 300 * MS),
            "{side:?} {gaps:?}"
        );
    }
}

#[test]
fn cut_link_goes_down_after_detection_time_and_recovers() {
    let mut l = Link::new(cfg(1, 100, 100, 3), cfg(2, 300, 300, 5));
    l.up_both();
    let cut_at = l.now;
    l.cut = true;
    l.run_for(Duration::from_secs(5));
    for (side, detect) in [(Side::A, 1500 * MS), (Side::B, 900 * MS)] {
        let s = l.session(side);
        assert_eq!(s.state(), SessionState::Down, "{side:?}");
        assert_eq!(s.local_diag(), Diag::ControlDetectionTimeExpired);
        assert_eq!(s.remote_discr(), 0, "{side:?} forgets the peer");
        let downs: Vec<_> = l
            .events
            .iter()
            .filter(|e| e.1 == side && e.0 > cut_at)
            .collect();
        assert_eq!(downs.len(), 1, "{side:?}");
        assert_eq!(
            downs[0].2,
            Event::Down {
                diag: Diag::ControlDetectionTimeExpired
            }
        );
        // The last packet arrived at most one TX interval (300 ms) before the cut.
        let after = downs[0].0 - cut_at;
        assert!(
            after <= detect && after + 300 * MS >= detect,
            "{side:?} down {after:?} after the cut"
        );
    }
    // Down packets carry diag 1.
    assert_eq!(
        l.sent_by(Side::A).last().unwrap().1.diag,
        Diag::ControlDetectionTimeExpired
    );

    l.cut = false;
    l.run_for(Duration::from_secs(5));
    assert_eq!(l.a.state(), SessionState::Up);
    assert_eq!(l.b.state(), SessionState::Up);
    assert_eq!(l.events_of(Side::A).last(), Some(&Event::Up));
    assert_eq!(l.events_of(Side::B).last(), Some(&Event::Up));
    assert_eq!(l.a.negotiated().detection_time, Some(1500 * MS));
}

#[test]
fn admin_down_signals_the_neighbour() {
    let mut l = Link::new(cfg(1, 100, 100, 3), cfg(2, 100, 100, 3));
    l.up_both();
    let t = l.now;
    l.a.admin_down(t);
    l.drain();
    // The AdminDown packet went out at once and B went Down right away with diag 3.
    assert_eq!(l.a.state(), SessionState::AdminDown);
    assert_eq!(l.b.state(), SessionState::Down);
    assert_eq!(l.b.local_diag(), Diag::NeighborSignaledSessionDown);
    assert_eq!(
        l.events_of(Side::A),
        vec![
            Event::Up,
            Event::Down {
                diag: Diag::AdministrativelyDown
            }
        ]
    );
    assert_eq!(
        l.events_of(Side::B),
        vec![
            Event::Up,
            Event::Down {
                diag: Diag::NeighborSignaledSessionDown
            }
        ]
    );
    l.run_for(Duration::from_secs(10));
    // Nothing expired: B still says diag 3, no further events, A never detected anything.
    assert_eq!(l.b.local_diag(), Diag::NeighborSignaledSessionDown);
    assert_eq!(l.b.state(), SessionState::Down);
    assert_eq!(l.events.len(), 4);
    let from_a: Vec<_> = l
        .sent_by(Side::A)
        .into_iter()
        .filter(|(s, _)| *s >= t)
        .collect();
    assert!(from_a
        .iter()
        .all(|(_, p)| p.state == SessionState::AdminDown && p.diag == Diag::AdministrativelyDown));
    // AdminDown goes at the slow rate.
    let gaps = l.periodic_gaps(Side::A, t + MS, l.now);
    assert!(gaps.iter().all(|g| *g >= 750 * MS), "{gaps:?}");

    l.a.admin_up(l.now);
    l.run_for(Duration::from_secs(5));
    assert_eq!(l.a.state(), SessionState::Up);
    assert_eq!(l.b.state(), SessionState::Up);
}

#[test]
fn poll_sequence_on_interval_change() {
    let mut l = Link::new(cfg(1, 100, 100, 3), cfg(2, 100, 100, 3));
    l.up_both();
    let t = l.now;
    l.a.set_intervals(t, 500 * MS, 500 * MS);
    // Advertised at once; the larger TX waits for the Final, the larger RX applies at once.
    let n = l.a.negotiated();
    assert!(n.poll_in_progress);
    assert_eq!(n.local_desired_min_tx, 500 * MS);
    assert_eq!(
        n.tx_interval,
        Some(100 * MS),
        "the larger TX waits for the Final"
    );
    assert_eq!(
        n.detection_time,
        Some(3 * 500 * MS),
        "a larger RX applies at once"
    );
    l.run_for(Duration::from_secs(3));
    let after: Vec<_> = l.sent.iter().filter(|s| s.0 >= t).collect();
    let p_idx = after
        .iter()
        .position(|s| s.1 == Side::A && s.2.poll)
        .expect("A polls");
    let poll_at = after[p_idx].0;
    assert_eq!(after[p_idx].2.desired_min_tx, 500_000);
    // B answers at once, F without P.
    let f = after
        .iter()
        .find(|s| s.1 == Side::B && s.2.final_)
        .expect("B answers");
    assert_eq!(f.0, poll_at);
    assert!(!f.2.poll);
    // Only one P: the F ended the sequence, and A now paces at 500 ms.
    assert_eq!(
        after.iter().filter(|s| s.1 == Side::A && s.2.poll).count(),
        1
    );
    let n = l.a.negotiated();
    assert!(!n.poll_in_progress);
    assert_eq!(n.tx_interval, Some(500 * MS));
    assert_eq!(l.b.negotiated().detection_time, Some(3 * 500 * MS));
    assert_eq!(l.b.negotiated().tx_interval, Some(500 * MS));
    let gaps = l.periodic_gaps(Side::A, poll_at + MS, l.now);
    assert!(
        gaps.iter().all(|g| *g >= 375 * MS && *g <= 500 * MS),
        "{gaps:?}"
    );

    // Going faster again: the smaller TX applies at once, the smaller RX only after the F.
    let t = l.now;
    l.a.set_intervals(t, 100 * MS, 100 * MS);
    let n = l.a.negotiated();
    assert!(n.poll_in_progress);
    assert_eq!(
        n.tx_interval,
        Some(100 * MS),
        "the smaller TX applies at once"
    );
    assert_eq!(
        n.detection_time,
        Some(3 * 500 * MS),
        "the smaller RX waits for the Final"
    );
    l.run_for(Duration::from_secs(3));
    let n = l.a.negotiated();
    assert!(!n.poll_in_progress);
    assert_eq!(n.tx_interval, Some(100 * MS));
    assert_eq!(n.detection_time, Some(3 * 100 * MS));
    assert_eq!(l.a.state(), SessionState::Up);
    assert_eq!(l.b.state(), SessionState::Up);
}

#[test]
fn wrong_your_discriminator_is_ignored() {
    let mut l = Link::new(cfg(1, 100, 100, 3), cfg(2, 100, 100, 3));
    l.up_both();
    let mut bogus = l.sent_by(Side::B).last().unwrap().1;
    bogus.state = SessionState::Down;
    bogus.your_discr = 99;
    let now = l.now;
    assert!(!l.a.handle_packet(now, &bogus));
    assert_eq!(l.a.state(), SessionState::Up);
    assert_eq!(l.a.remote_discr(), 2);
    // With the right discriminator the same Down packet takes A down (diag 3).
    bogus.your_discr = 1;
    assert!(l.a.handle_packet(now, &bogus));
    assert_eq!(l.a.state(), SessionState::Down);
    assert_eq!(l.a.local_diag(), Diag::NeighborSignaledSessionDown);
}

#[test]
fn survives_loss_below_the_detect_multiplier() {
    let mut l = Link::new(cfg(1, 100, 100, 3), cfg(2, 100, 100, 3));
    l.up_both();
    // Drop every other packet of each side: gaps of at most 2 intervals, below 3 x 100 ms.
    let mut count = [0usize; 2];
    l.drop = Box::new(move |side, _| {
        let c = &mut count[side as usize];
        *c += 1;
        *c % 2 == 0
    });
    l.run_for(Duration::from_secs(20));
    assert_eq!(l.a.state(), SessionState::Up);
    assert_eq!(l.b.state(), SessionState::Up);
    assert_eq!(l.events.len(), 2);
}

#[test]
fn detect_mult_one_jitters_to_90_percent() {
    let mut l = Link::new(cfg(1, 100, 100, 1), cfg(2, 100, 100, 3));
    l.up_both();
    let from = l.now;
    l.run_for(Duration::from_secs(10));
    let gaps = l.periodic_gaps(Side::A, from, l.now);
    assert!(gaps.len() > 90);
    assert!(
        gaps.iter().all(|g| *g >= 75 * MS && *g <= 90 * MS),
        "{gaps:?}"
    );
}

#[test]
fn zero_required_min_rx_stops_periodic_packets() {
    let mut l = Link::new(cfg(1, 100, 100, 3), cfg(2, 100, 0, 3));
    l.run_for(Duration::from_secs(3));
    // A hears B (rx 0 from B) and stops sending periodically; B keeps sending.
    let from = l.now - Duration::from_secs(1);
    assert!(l.sent_by(Side::A).iter().all(|(t, _)| *t < from));
    assert_eq!(l.a.negotiated().tx_interval, None);
    assert!(l.sent_by(Side::B).iter().any(|(t, _)| *t >= from));
}

#[test]
fn absurd_intervals_do_not_panic() {
    let mut l = Link::new(cfg(1, 100, 100, 255), cfg(2, 100, 100, 3));
    l.up_both();
    let now = l.now;
    l.a.set_intervals(now, Duration::MAX, Duration::MAX);
    l.run_for(Duration::from_secs(60));
    l.b.set_intervals(l.now, Duration::ZERO, Duration::ZERO);
    l.run_for(Duration::from_secs(60));
    let n = l.a.negotiated();
    assert_eq!(n.local_desired_min_tx, Duration::MAX);
    // On the wire the intervals saturate at u32::MAX microseconds.
    assert_eq!(
        l.sent_by(Side::A).last().unwrap().1.desired_min_tx,
        u32::MAX
    );
}
