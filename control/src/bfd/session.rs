//! One asynchronous-mode BFD session of RFC 5880 for ONE neighbour, sans-IO (quinn-proto style): no sockets, no
//! clock. Inputs are [`Session::handle_packet`] (a decoded, already demultiplexed [`ControlPacket`]),
//! [`Session::handle_timeout`], [`Session::admin_down`] / [`Session::admin_up`] and
//! [`Session::set_intervals`], each with `now`; outputs are polled: packets to send
//! ([`Session::poll_transmit`]), state changes for BGP and the operator ([`Session::poll_event`]) and the next
//! deadline ([`Session::poll_timeout`]).
//!
//! Implemented:
//! - the state machine of RFC 5880 6.2 / 6.8.6 (AdminDown, Down, Init, Up) with the reception procedure after
//!   the packet checks (those are [`ControlPacket::decode`]'s): a non-zero Your Discriminator that is not ours
//!   is ignored, the remote variables are updated, an F answers a Poll, AdminDown discards, the three-way
//!   handshake Down -> Init -> Up, and Down with diag 3 when the neighbour signals Down or AdminDown;
//! - detection (6.8.4): Detection Time = remote Detect Mult x max(bfd.RequiredMinRxInterval, last received
//!   Desired Min TX); expiry in Init or Up goes Down with diag 1; expiry in any state forgets
//!   bfd.RemoteDiscr (6.8.1);
//! - transmission (6.8.2, 6.8.3, 6.8.7): interval = max(bfd.DesiredMinTxInterval, bfd.RemoteMinRxInterval),
//!   bfd.DesiredMinTxInterval held at least [`SessionConfig::slow_tx`] (1 s) while not Up, no periodic
//!   packets while the remote Required Min RX is zero, jitter to 75-100% of the interval (75-90% with Detect
//!   Mult 1) from a splitmix64 PRNG seeded by [`SessionConfig::jitter_seed`], so runs are reproducible;
//!   an F answer goes out at once, outside the periodic schedule;
//! - Poll sequences (6.5, 6.8.3): any change of the advertised intervals while Up (including the drop from the
//!   slow rate when the session comes Up) sets P on periodic packets until an F arrives. A larger Desired Min
//!   TX is used for pacing only after the F; a smaller Required Min RX is used for detection only after the F;
//!   the other directions take effect at once. A change during a Poll runs a second Poll after the first;
//! - administrative control (6.8.16): [`Session::admin_down`] sends AdminDown with diag 7 (the first packet at
//!   once, then at the slow rate) and stops detection; [`Session::admin_up`] returns to Down.
//!
//! Events: [`Event::Up`] on entering Up, [`Event::Down`] on leaving Up (with the reason). Init -> Down is not
//! reported: the session was never usable.
//!
//! Driver contract: decode received payloads with [`ControlPacket::decode`], apply the RFC 5881 TTL 255 check,
//! route a packet with a non-zero Your Discriminator to the session owning it (and one with zero by source
//! address / interface), then call `handle_packet`; drain `poll_transmit(now)` and `poll_event` after every
//! `handle_*` call; call `handle_timeout` at `poll_timeout` and drain again.
//!
//! Deliberately left out: Demand mode (the D bit is never set and the remote's is ignored), the Echo function
//! (Required Min Echo RX is sent as 0), authentication, and the Passive role (this side always transmits).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::packet::{micros, ControlPacket, Diag, SessionState};

/// The slowest-rate floor while the session is not Up (RFC 5880 6.8.3: "not less than one second").
pub const SLOW_TX: Duration = Duration::from_secs(1);

/// The shortest periodic transmit interval the session ever uses, whatever the peer asks for: a near-zero
/// interval would make the driver spin.
pub const MIN_TX_INTERVAL: Duration = Duration::from_millis(1);

/// What one session is configured with. The config layer validates it; the session never panics on odd values
/// (see the fields).
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// bfd.LocalDiscr, chosen by the caller, unique on this system and non-zero (0 is replaced by 1).
    pub local_discr: u32,
    /// bfd.DesiredMinTxInterval once Up. Zero is treated as 1 microsecond (the RFC forbids zero).
    pub desired_min_tx: Duration,
    /// bfd.RequiredMinRxInterval. Zero asks the peer to send no periodic packets.
    pub required_min_rx: Duration,
    /// bfd.DetectMult. Zero is treated as 1.
    pub detect_mult: u8,
    /// The Desired Min TX advertised while not Up (RFC 5880 6.8.3; at least 1 s there, [`SLOW_TX`]).
    pub slow_tx: Duration,
    /// Seed of the jitter PRNG (tests pass a constant; the daemon something per session).
    pub jitter_seed: u64,
}

impl SessionConfig {
    /// braid's defaults: 300 ms x 3 (0.9 s detection), slow rate 1 s, jitter seeded from the discriminator.
    pub fn new(local_discr: u32) -> SessionConfig {
        SessionConfig {
            local_discr,
            desired_min_tx: Duration::from_millis(300),
            required_min_rx: Duration::from_millis(300),
            detect_mult: 3,
            slow_tx: SLOW_TX,
            jitter_seed: u64::from(local_discr),
        }
    }
}

/// A change of the session worth telling BGP and the operator about.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The session entered Up: the path to the neighbour forwards in both directions.
    Up,
    /// The session left Up; `diag` says why (1: detection time expired, 3: neighbour signalled down, 7:
    /// administratively down here).
    Down { diag: Diag },
}

/// The timers in effect, for `braid show bfd`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// bfd.DesiredMinTxInterval as advertised now (the slow rate while not Up).
    pub local_desired_min_tx: Duration,
    /// bfd.RequiredMinRxInterval as advertised now.
    pub local_required_min_rx: Duration,
    pub local_detect_mult: u8,
    /// The peer's Desired Min TX, once a packet arrived.
    pub remote_desired_min_tx: Option<Duration>,
    /// bfd.RemoteMinRxInterval (1 microsecond until a packet arrived).
    pub remote_required_min_rx: Duration,
    pub remote_detect_mult: Option<u8>,
    /// The periodic transmit interval before jitter; `None` while the peer asks for no packets.
    pub tx_interval: Option<Duration>,
    /// The Detection Time this side applies to the peer; `None` before any packet.
    pub detection_time: Option<Duration>,
    /// A Poll sequence is running.
    pub poll_in_progress: bool,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Poll {
    Idle,
    Active,
    /// Active, and the intervals changed again since it started: poll once more after the F.
    ActiveAgain,
}

/// One asynchronous-mode BFD session. See the module documentation.
#[derive(Debug)]
pub struct Session {
    cfg: SessionConfig,
    state: SessionState,
    remote_state: SessionState,
    remote_discr: u32,
    local_diag: Diag,
    /// bfd.DesiredMinTxInterval / bfd.RequiredMinRxInterval: what packets advertise.
    desired_min_tx: Duration,
    required_min_rx: Duration,
    /// The values actually used for pacing and detection (they lag the advertised ones during a Poll).
    tx_in_use: Duration,
    rx_in_use: Duration,
    remote_desired_min_tx: Option<Duration>,
    remote_min_rx: Duration,
    remote_detect_mult: Option<u8>,
    poll: Poll,
    final_due: Option<Instant>,
    next_tx: Option<Instant>,
    detect_deadline: Option<Instant>,
    rng: u64,
    events: VecDeque<Event>,
}

impl Session {
    /// A session in Down, sending its first packet at `now`.
    pub fn new(mut cfg: SessionConfig, now: Instant) -> Session {
        if cfg.local_discr == 0 {
            cfg.local_discr = 1;
        }
        cfg.detect_mult = cfg.detect_mult.max(1);
        cfg.desired_min_tx = cfg.desired_min_tx.max(Duration::from_micros(1));
        cfg.slow_tx = cfg.slow_tx.max(SLOW_TX);
        let desired = cfg.desired_min_tx.max(cfg.slow_tx);
        let rx = cfg.required_min_rx;
        Session {
            rng: cfg.jitter_seed,
            cfg,
            state: SessionState::Down,
            remote_state: SessionState::Down,
            remote_discr: 0,
            local_diag: Diag::None,
            desired_min_tx: desired,
            required_min_rx: rx,
            tx_in_use: desired,
            rx_in_use: rx,
            remote_desired_min_tx: None,
            remote_min_rx: Duration::from_micros(1),
            remote_detect_mult: None,
            poll: Poll::Idle,
            final_due: None,
            next_tx: Some(now),
            detect_deadline: None,
            events: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.cfg
    }

    /// bfd.SessionState.
    pub fn state(&self) -> SessionState {
        self.state
    }

    /// bfd.RemoteSessionState.
    pub fn remote_state(&self) -> SessionState {
        self.remote_state
    }

    /// bfd.LocalDiag: why the session last changed state.
    pub fn local_diag(&self) -> Diag {
        self.local_diag
    }

    /// bfd.RemoteDiscr (0 while unknown).
    pub fn remote_discr(&self) -> u32 {
        self.remote_discr
    }

    /// The timers in effect.
    pub fn negotiated(&self) -> Negotiated {
        Negotiated {
            local_desired_min_tx: self.desired_min_tx,
            local_required_min_rx: self.required_min_rx,
            local_detect_mult: self.cfg.detect_mult,
            remote_desired_min_tx: self.remote_desired_min_tx,
            remote_required_min_rx: self.remote_min_rx,
            remote_detect_mult: self.remote_detect_mult,
            tx_interval: self.tx_interval(),
            detection_time: self.detection_time(),
            poll_in_progress: self.poll != Poll::Idle,
        }
    }

    /// A received Control packet for this session (RFC 5880 6.8.6 after the packet checks). Returns false when
    /// the packet was ignored: its Your Discriminator is not ours, or the session is AdminDown.
    pub fn handle_packet(&mut self, now: Instant, p: &ControlPacket) -> bool {
        if p.your_discr != 0 && p.your_discr != self.cfg.local_discr {
            return false;
        }
        self.remote_discr = p.my_discr;
        self.remote_state = p.state;
        self.remote_desired_min_tx = Some(p.desired_min_tx_duration());
        self.remote_min_rx = p.required_min_rx_duration();
        self.remote_detect_mult = Some(p.detect_mult.max(1));
        if p.final_ && self.poll != Poll::Idle {
            self.tx_in_use = self.desired_min_tx;
            self.rx_in_use = self.required_min_rx;
            self.poll = if self.poll == Poll::ActiveAgain {
                Poll::Active
            } else {
                Poll::Idle
            };
        }
        if self.state == SessionState::AdminDown {
            self.reschedule(now);
            return false;
        }
        self.detect_deadline = self.detection_time().and_then(|d| now.checked_add(d));
        use SessionState::{AdminDown, Down, Init, Up};
        match (self.state, p.state) {
            (Down, AdminDown) => {}
            (_, AdminDown) | (Up, Down) => {
                self.set_state(now, Down, Diag::NeighborSignaledSessionDown)
            }
            (Down, Down) => self.set_state(now, Init, Diag::None),
            (Down, Init) | (Init, Init | Up) => self.set_state(now, Up, Diag::None),
            _ => {}
        }
        if p.poll {
            self.final_due = Some(now);
        }
        self.reschedule(now);
        true
    }

    /// Timer expiry: call at (or after) [`Session::poll_timeout`]. Transmission is [`Session::poll_transmit`]'s.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(t) = self.detect_deadline {
            if t <= now {
                self.detect_deadline = None;
                if matches!(self.state, SessionState::Init | SessionState::Up) {
                    self.set_state(now, SessionState::Down, Diag::ControlDetectionTimeExpired);
                }
                self.remote_discr = 0;
                self.remote_state = SessionState::Down;
            }
        }
    }

    /// The next packet to send: an F answer at once, else the periodic packet when it is due.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<ControlPacket> {
        if self.final_due.take().is_some() {
            return Some(self.packet(false, true));
        }
        let due = self.next_tx?;
        if due > now {
            return None;
        }
        match self.tx_interval() {
            Some(iv) => {
                let jittered = self.jittered(iv);
                self.next_tx = now.checked_add(jittered);
                Some(self.packet(self.poll != Poll::Idle, false))
            }
            None => {
                self.next_tx = None;
                None
            }
        }
    }

    /// The next Up / Down change.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The earliest of the next transmission (or F answer) and detection expiry.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [self.final_due, self.next_tx, self.detect_deadline]
            .into_iter()
            .flatten()
            .min()
    }

    /// Take the session administratively down (6.8.16): AdminDown with diag 7, sent at once and then at the
    /// slow rate; no detection while AdminDown.
    pub fn admin_down(&mut self, now: Instant) {
        if self.state == SessionState::AdminDown {
            return;
        }
        self.set_state(now, SessionState::AdminDown, Diag::AdministrativelyDown);
        self.detect_deadline = None;
        self.final_due = None;
        self.next_tx = Some(now);
    }

    /// Leave AdminDown: back to Down, forgetting the peer, and start the handshake again.
    pub fn admin_up(&mut self, now: Instant) {
        if self.state != SessionState::AdminDown {
            return;
        }
        self.remote_discr = 0;
        self.remote_state = SessionState::Down;
        self.set_state(now, SessionState::Down, Diag::None);
        self.next_tx = Some(now);
    }

    /// Change the intervals (RFC 5880 6.8.3): while Up this runs a Poll sequence, see the module documentation.
    pub fn set_intervals(
        &mut self,
        now: Instant,
        desired_min_tx: Duration,
        required_min_rx: Duration,
    ) {
        self.cfg.desired_min_tx = desired_min_tx.max(Duration::from_micros(1));
        self.cfg.required_min_rx = required_min_rx;
        self.update_local_timers();
        self.reschedule(now);
    }

    fn set_state(&mut self, now: Instant, new: SessionState, diag: Diag) {
        let old = self.state;
        self.state = new;
        self.local_diag = diag;
        if old == SessionState::Up && new != SessionState::Up {
            self.events.push_back(Event::Down { diag });
        }
        if new == SessionState::Up && old != SessionState::Up {
            self.events.push_back(Event::Up);
        }
        self.update_local_timers();
        self.reschedule(now);
    }

    /// Recompute the advertised intervals from the config and the state; start a Poll if they change while Up.
    fn update_local_timers(&mut self) {
        let tx = if self.state == SessionState::Up {
            self.cfg.desired_min_tx
        } else {
            self.cfg.desired_min_tx.max(self.cfg.slow_tx)
        };
        let rx = self.cfg.required_min_rx;
        if self.state != SessionState::Up {
            self.poll = Poll::Idle;
            self.desired_min_tx = tx;
            self.required_min_rx = rx;
            self.tx_in_use = tx;
            self.rx_in_use = rx;
            return;
        }
        if tx == self.desired_min_tx && rx == self.required_min_rx {
            return;
        }
        self.desired_min_tx = tx;
        self.required_min_rx = rx;
        self.tx_in_use = self.tx_in_use.min(tx);
        self.rx_in_use = self.rx_in_use.max(rx);
        self.poll = match self.poll {
            Poll::Idle => Poll::Active,
            _ => Poll::ActiveAgain,
        };
    }

    /// Pull the next periodic packet earlier when the interval shrank; restart periodic packets when the peer
    /// allows them again.
    fn reschedule(&mut self, now: Instant) {
        match self.tx_interval() {
            None => self.next_tx = None,
            Some(iv) => {
                if self
                    .next_tx
                    .is_none_or(|t| now.checked_add(iv).is_some_and(|n| t > n))
                {
                    let jittered = self.jittered(iv);
                    self.next_tx = now.checked_add(jittered);
                }
            }
        }
    }

    fn tx_interval(&self) -> Option<Duration> {
        if self.remote_min_rx.is_zero() {
            return None;
        }
        Some(self.tx_in_use.max(self.remote_min_rx).max(MIN_TX_INTERVAL))
    }

    fn detection_time(&self) -> Option<Duration> {
        let mult = self.remote_detect_mult?;
        let remote_tx = self.remote_desired_min_tx?;
        Some(
            self.rx_in_use
                .max(remote_tx)
                .saturating_mul(u32::from(mult)),
        )
    }

    /// `iv` scaled by a factor in [0.75, 1.0] ([0.75, 0.9] with Detect Mult 1), RFC 5880 6.8.7.
    fn jittered(&mut self, iv: Duration) -> Duration {
        let span: u64 = if self.cfg.detect_mult == 1 { 151 } else { 251 };
        let permille = 750 + splitmix64(&mut self.rng) % span;
        let nanos = iv.as_nanos().saturating_mul(u128::from(permille)) / 1000;
        Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
    }

    fn packet(&self, poll: bool, final_: bool) -> ControlPacket {
        ControlPacket {
            diag: self.local_diag,
            state: self.state,
            poll,
            final_,
            control_plane_independent: false,
            demand: false,
            detect_mult: self.cfg.detect_mult,
            my_discr: self.cfg.local_discr,
            your_discr: self.remote_discr,
            desired_min_tx: micros(self.desired_min_tx).max(1),
            required_min_rx: micros(self.required_min_rx),
            required_min_echo_rx: 0,
        }
    }
}

fn splitmix64(s: &mut u64) -> u64 {
    *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *s;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
