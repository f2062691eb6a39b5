//! The IKEv2 session: one tunnel's IKE SA (and, transiently, its rekeyed successor) and its
//! child SAs, as a sans-IO state machine.
//!
//! Implements, from RFC 7296: the IKE_SA_INIT and IKE_AUTH exchanges with a pre-shared key
//! (1.2, 2.15), as initiator and responder, with the first child SA created in IKE_AUTH;
//! CREATE_CHILD_SA for rekeying a child SA (1.3.3, 2.8, with or without PFS), creating a new
//! one, and rekeying the IKE SA (1.3.2, 2.18, children moving to the new IKE SA); the
//! simultaneous-rekey collision rule of 2.8.1 (the exchange holding the lowest of the four
//! nonces created the redundant SA, which its initiator deletes; the winner's initiator
//! deletes the old SA), and TEMPORARY_FAILURE for a rekey of an SA already being replaced
//! (2.25); INFORMATIONAL exchanges for Delete (1.4.1) and liveness checks (2.4); Message IDs
//! and a window of one request in each direction, with retransmission of requests under
//! exponential backoff, a give-up limit, and replay of the cached response to a retransmitted
//! request (2.1, 2.2); responder cookies (2.6); INVALID_KE_PAYLOAD and the retry with the
//! responder's group (1.2, 1.3); NO_PROPOSAL_CHOSEN, AUTHENTICATION_FAILED, TS_UNACCEPTABLE
//! and INVALID_SYNTAX (2.21); traffic selector narrowing (2.9); NAT detection (2.23).
//!
//! Make-before-break when a child SA is rekeyed: the responder of the CREATE_CHILD_SA installs
//! the new inbound SA as it sends its response, the initiator installs both halves when the
//! response arrives and then deletes the old SA; the responder switches its outbound traffic to
//! the new SA when that Delete arrives (as strongSwan does), and both sides remove the old
//! inbound SA `grace` after the Delete exchange. The events ([`Event`]) tell the caller exactly
//! when to do each step.
//!
//! A peer that deletes the last child SA without a replacement (strongSwan does when a child SA
//! reaches its hard lifetime unrekeyed, and creates the next one right after): a responder
//! waits for the peer's new child SA; an initiator creates one itself [`CHILD_RECREATE`] later
//! if the peer has not, so a route-based tunnel never stays up without a child SA.
//!
//! Time is an argument everywhere; the next deadline is [`IkeSession::poll_timeout`].
//! Randomness comes from a DRBG seeded at construction (see `drbg`). Secrets are zeroized on
//! drop and never shown by `Debug`.
//!
//! Deliberately left out: certificates, EAP and any authentication other than PSK; the
//! Configuration payload; IKE fragmentation (RFC 7383); MOBIKE; transport mode and IPComp;
//! multiple child SAs per tunnel beyond the transient ones of a rekey (a new child is created
//! only after a hard expiry, or after the peer deleted the last one); window sizes above 1;
//! and the hard lifetime of the IKE SA (it is rekeyed, and a peer that stops answering is
//! declared dead). Both ends of a braid
//! tunnel may answer IKE_SA_INIT, but only one should be configured as initiator.

use std::collections::VecDeque;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use ring::digest;
use ring::rand::SecureRandom;

use crate::esp::{Cipher, Spi};
use crate::ike::dh::DhPrivate;
use crate::ike::drbg::Drbg;
use crate::ike::keys::{self, auth_equal, child_keymat, psk_auth, IkeSaKeys, Keymat, Secret};
use crate::ike::message::{
    decode, decode_payloads, encode_plain, exchange, notify_type, Body, DecodeError, Delete,
    Header, Identity, Notify, Payload, TrafficSelector, AUTH_PSK, FLAG_INITIATOR, FLAG_RESPONSE,
    VERSION,
};
use crate::ike::proposal::{
    accept_esp, accept_ike, esp_answer, ike_answer, select_esp, select_ike, DhGroup, Esn,
    EspAlgorithms, EspProposal, IkeAlgorithms, IkeProposal, Prf, PROTO_ESP, PROTO_IKE,
};
use crate::ike::sk::SkCipher;

/// Length of the nonces braid sends (RFC 7296 section 2.10: at least half the PRF key size).
const NONCE_LEN: usize = 32;
/// How often the cookie secret is replaced (RFC 7296 section 2.6).
const COOKIE_ROTATE: Duration = Duration::from_secs(120);
/// How many COOKIE or INVALID_KE_PAYLOAD answers an initiator follows before giving up.
const MAX_INIT_RETRIES: u32 = 4;
/// How long an initiator waits for the peer's own new child SA after the peer deleted the last
/// one without a replacement, before it creates one itself.
pub const CHILD_RECREATE: Duration = Duration::from_secs(1);

/// A pre-shared key. Zeroized on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Psk(Secret);

impl Psk {
    /// Takes the key octets.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Psk {
        Psk(Secret::new(bytes.into()))
    }

    /// The key octets.
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Psk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Psk(redacted)")
    }
}

/// Request retransmission policy (RFC 7296 section 2.1): the n-th transmission (n = 0 for the
/// first) waits `base * factor^n` for a response; after `tries` retransmissions the last wait
/// ends the exchange as failed. strongSwan's defaults, also braid's: 4 s, 1.8, 5 (165 s).
#[derive(Copy, Clone, Debug, PartialEq)]
pub struct Retransmit {
    /// The first timeout.
    pub base: Duration,
    /// The growth factor (values below 1 count as 1).
    pub factor: f64,
    /// Retransmissions after the first transmission.
    pub tries: u32,
}

impl Default for Retransmit {
    fn default() -> Retransmit {
        Retransmit {
            base: Duration::from_secs(4),
            factor: 1.8,
            tries: 5,
        }
    }
}

impl Retransmit {
    /// How long the n-th transmission (0-based) waits for its response (capped at one hour).
    pub fn timeout(&self, n: u32) -> Duration {
        let f = self.factor.max(1.0).powi(n.min(1000) as i32);
        let cap = Duration::from_secs(3600);
        Duration::try_from_secs_f64(self.base.as_secs_f64() * f)
            .unwrap_or(cap)
            .min(cap)
    }

    /// The time from the first transmission until the exchange is given up.
    pub fn budget(&self) -> Duration {
        (0..=self.tries.min(1000)).map(|n| self.timeout(n)).sum()
    }
}

/// One tunnel's IKE configuration.
#[derive(Clone, Debug)]
pub struct IkeConfig {
    /// Whether [`IkeSession::start`] initiates. Any session answers IKE_SA_INIT requests
    /// when it is not itself initiating.
    pub initiator: bool,
    /// The pre-shared key.
    pub psk: Psk,
    /// Our identity (IDi or IDr).
    pub local_id: Identity,
    /// The peer's identity, if it must be checked.
    pub remote_id: Option<Identity>,
    /// IKE proposals, preferred first.
    pub ike_proposals: Vec<IkeProposal>,
    /// ESP proposals, preferred first.
    pub esp_proposals: Vec<EspProposal>,
    /// Our side's traffic selectors (default: 0.0.0.0/0 and ::/0).
    pub local_ts: Vec<TrafficSelector>,
    /// The peer's side's traffic selectors (default: 0.0.0.0/0 and ::/0).
    pub remote_ts: Vec<TrafficSelector>,
    /// IKE SA lifetime; it is rekeyed at this minus a random 0..10%.
    pub ike_lifetime: Duration,
    /// Child SA (hard) lifetime; rekeyed at this minus a random 0..10%.
    pub child_lifetime: Duration,
    /// Child SA byte limit, if any: rekeyed at this minus a random 0..10% (see
    /// [`IkeSession::note_child_bytes`]), deleted at the limit.
    pub child_bytes: Option<u64>,
    /// Send a liveness check after this long without any IKE message or ESP packet from the
    /// peer.
    pub dpd_interval: Option<Duration>,
    /// Request retransmission.
    pub retransmit: Retransmit,
    /// Fake our NAT_DETECTION_SOURCE_IP hash so that the peer believes we are behind a NAT
    /// (strongSwan's `encap=yes`).
    pub force_encap: bool,
    /// Initiator: send IKE_SA_INIT to this port of the peer (500) and float to the peer's
    /// configured port (4500) for IKE_AUTH and everything after (RFC 7296 section 2.23, RFC 3947).
    /// A session that starts on another port fakes its NAT_DETECTION_SOURCE_IP (as with
    /// `force_encap`), so the peer always detects a NAT and encapsulates ESP in UDP, the only ESP
    /// braid speaks. `None`: start on the configured port.
    pub start_port: Option<u16>,
    /// How long an old inbound SA stays after the Delete exchange that retired it.
    pub grace: Duration,
    /// How long a responder keeps an IKE SA whose IKE_AUTH has not arrived.
    pub half_open_timeout: Duration,
}

impl IkeConfig {
    /// A configuration with braid's defaults: IKE `aes256gcm16-prfsha256-ecp256,
    /// chacha20poly1305-prfsha256-x25519`, ESP `aes256gcm16,chacha20poly1305` (ESN and no-ESN
    /// offered, no PFS), route-based selectors, IKE lifetime 4 h, child 1 h, DPD after 30 s,
    /// strongSwan's retransmission timers, 5 s grace, 30 s half-open timeout.
    pub fn new(initiator: bool, psk: Psk, local_id: Identity) -> IkeConfig {
        let ike = |c, g| IkeProposal {
            ciphers: vec![c],
            prfs: vec![Prf::HmacSha256],
            groups: vec![g],
        };
        let esp = |c| EspProposal {
            ciphers: vec![c],
            groups: Vec::new(),
            esn: vec![Esn::Yes, Esn::No],
        };
        IkeConfig {
            initiator,
            psk,
            local_id,
            remote_id: None,
            ike_proposals: vec![
                ike(Cipher::Aes256Gcm16, DhGroup::Ecp256),
                ike(Cipher::ChaCha20Poly1305, DhGroup::Curve25519),
            ],
            esp_proposals: vec![esp(Cipher::Aes256Gcm16), esp(Cipher::ChaCha20Poly1305)],
            local_ts: vec![TrafficSelector::any_ipv4(), TrafficSelector::any_ipv6()],
            remote_ts: vec![TrafficSelector::any_ipv4(), TrafficSelector::any_ipv6()],
            ike_lifetime: Duration::from_secs(4 * 3600),
            child_lifetime: Duration::from_secs(3600),
            child_bytes: None,
            dpd_interval: Some(Duration::from_secs(30)),
            retransmit: Retransmit::default(),
            force_encap: false,
            start_port: None,
            grace: Duration::from_secs(5),
            half_open_timeout: Duration::from_secs(30),
        }
    }
}

/// Identifies one child SA generation within a session (a rekey makes a new one).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChildId(pub u32);

impl fmt::Display for ChildId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "child#{}", self.0)
    }
}

/// A datagram to send: an IKE message (without the non-ESP marker).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// The destination.
    pub to: SocketAddr,
    /// The IKE message.
    pub payload: Vec<u8>,
}

/// What NAT detection (RFC 7296 section 2.23) found.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct NatStatus {
    /// Our address or port is translated (or `force_encap` pretends so).
    pub local_behind_nat: bool,
    /// The peer's address or port is translated.
    pub remote_behind_nat: bool,
}

impl NatStatus {
    /// Whether any NAT was detected.
    pub fn detected(&self) -> bool {
        self.local_behind_nat || self.remote_behind_nat
    }
}

/// Why an IKE SA went down or could not be established.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DownReason {
    /// AUTHENTICATION_FAILED: `by_peer` if the peer refused our AUTH, else we refused its
    /// AUTH or identity.
    AuthFailed {
        /// The peer sent the notify.
        by_peer: bool,
    },
    /// NO_PROPOSAL_CHOSEN for the IKE SA or the first child SA.
    NoProposalChosen {
        /// The peer sent the notify.
        by_peer: bool,
    },
    /// TS_UNACCEPTABLE for the first child SA.
    TsUnacceptable {
        /// The peer sent the notify.
        by_peer: bool,
    },
    /// The peer kept answering with COOKIE or INVALID_KE_PAYLOAD.
    InitRetriesExhausted,
    /// A request was retransmitted `tries` times without a response (including a failed
    /// liveness check).
    PeerDead,
    /// The peer deleted the IKE SA.
    DeletedByPeer,
    /// [`IkeSession::close`].
    Closed,
    /// A responder's half-open IKE SA got no IKE_AUTH in time.
    HalfOpenTimeout,
    /// The peer answered with another error notify (its type).
    PeerError(u16),
    /// An authenticated message could not be decoded (INVALID_SYNTAX).
    InvalidSyntax,
    /// The peer established a new IKE SA that replaces this one.
    Replaced,
}

/// What the session tells its driver.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// The IKE SA is established (the first child's install events follow).
    IkeUp {
        /// Initiator's SPI.
        spi_i: u64,
        /// Responder's SPI.
        spi_r: u64,
        /// Whether we initiated it.
        initiator: bool,
        /// The negotiated algorithms.
        algorithms: IkeAlgorithms,
        /// NAT detection results.
        nat: NatStatus,
        /// The peer's authenticated identity.
        remote_id: Identity,
    },
    /// The IKE SA was rekeyed; children continue under the new one.
    IkeRekeyed {
        /// New initiator's SPI.
        spi_i: u64,
        /// New responder's SPI.
        spi_r: u64,
        /// The new SA's algorithms.
        algorithms: IkeAlgorithms,
    },
    /// The IKE SA is gone (or never came up). Removal events for every child precede it.
    IkeDown {
        /// Why.
        reason: DownReason,
    },
    /// Install an inbound ESP SA: accept packets with this SPI from now on.
    ChildInstallInbound {
        /// The child SA.
        child: ChildId,
        /// Our SPI.
        spi: Spi,
        /// The cipher.
        cipher: Cipher,
        /// Extended sequence numbers.
        esn: bool,
        /// Key || salt for [`crate::esp::SaKey::new`].
        keymat: Keymat,
    },
    /// Install an outbound ESP SA and send on it from now on, replacing any previous
    /// outbound SA of this tunnel.
    ChildInstallOutbound {
        /// The child SA.
        child: ChildId,
        /// The peer's SPI.
        spi: Spi,
        /// The cipher.
        cipher: Cipher,
        /// Extended sequence numbers.
        esn: bool,
        /// Key || salt.
        keymat: Keymat,
        /// Whether the peer has installed its inbound half already: it has when this comes from
        /// a response to our request, or from the peer's Delete of the SA it replaces. When we
        /// answered the request that created it, the peer installs its half only as our answer
        /// arrives: ESP sent on it at once may reach the peer first and be lost, so the caller
        /// should start on it when the peer's first ESP arrives on the new inbound SA (or
        /// shortly after, if none comes).
        peer_ready: bool,
    },
    /// Remove an inbound SA (an old one after the grace period, or a deleted one).
    ChildRemoveInbound {
        /// The child SA.
        child: ChildId,
        /// Our SPI.
        spi: Spi,
    },
    /// Stop sending on this outbound SA: it was deleted without a replacement.
    ChildRemoveOutbound {
        /// The child SA.
        child: ChildId,
        /// The peer's SPI.
        spi: Spi,
    },
    /// Rekeying or creating a child SA failed with this notify from the peer (or
    /// NO_PROPOSAL_CHOSEN / TS_UNACCEPTABLE for an unacceptable answer); the old child stays
    /// and the rekey is retried later.
    ChildRekeyFailed {
        /// The child being rekeyed, if any.
        child: Option<ChildId>,
        /// The notify type.
        notify: u16,
    },
    /// NAT traversal: the peer's address changed (authenticated message from elsewhere);
    /// transmits now go there.
    RemoteAddressChanged {
        /// The new address.
        remote: SocketAddr,
    },
}

/// Counters of messages dropped without a response.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Drops {
    /// Did not decode (header or unencrypted payloads).
    pub malformed: u64,
    /// No IKE SA with these SPIs, or flags that do not fit it.
    pub unknown_spi: u64,
    /// A request outside the window, or a response to nothing outstanding.
    pub bad_message_id: u64,
    /// The SK payload did not authenticate.
    pub decrypt_failed: u64,
    /// Authentic but not valid in the current state.
    pub unexpected: u64,
    /// Authentic but undecodable (answered with INVALID_SYNTAX when it was a request).
    pub invalid_syntax: u64,
}

impl Drops {
    /// The sum of all counters.
    pub fn total(&self) -> u64 {
        self.malformed
            + self.unknown_spi
            + self.bad_message_id
            + self.decrypt_failed
            + self.unexpected
            + self.invalid_syntax
    }
}

/// The session's coarse state.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SessionState {
    /// Nothing negotiated (not started, or down).
    Idle,
    /// IKE_SA_INIT / IKE_AUTH in progress.
    Connecting,
    /// An IKE SA is established.
    Established,
}

/// One IKE SA in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IkeSaStatus {
    /// Initiator's SPI.
    pub spi_i: u64,
    /// Responder's SPI.
    pub spi_r: u64,
    /// Whether we are the original initiator.
    pub initiator: bool,
    /// Algorithms.
    pub algorithms: IkeAlgorithms,
    /// When it was established (or created, if not yet).
    pub since: Instant,
    /// NAT detection results.
    pub nat: NatStatus,
}

/// One child SA in [`Status`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChildStatus {
    /// Its id.
    pub child: ChildId,
    /// Our (inbound) SPI.
    pub spi_in: Spi,
    /// The peer's (outbound) SPI.
    pub spi_out: Spi,
    /// Algorithms.
    pub algorithms: EspAlgorithms,
    /// When it was created.
    pub since: Instant,
    /// Whether we send on it.
    pub outbound: bool,
    /// The byte count last noted.
    pub bytes: u64,
}

/// A snapshot for `braid show tunnels`: no keys.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Status {
    /// Coarse state.
    pub state: SessionState,
    /// Our address.
    pub local: SocketAddr,
    /// The peer's address.
    pub remote: SocketAddr,
    /// The current IKE SA.
    pub ike: Option<IkeSaStatus>,
    /// Child SAs, oldest first.
    pub children: Vec<ChildStatus>,
    /// The traffic selectors of the last child SA negotiated (ours, the peer's), after narrowing
    /// (RFC 7296 section 2.9); empty before the first.
    pub ts_local: Vec<TrafficSelector>,
    /// The peer's side of the last child SA's traffic selectors (see `ts_local`).
    pub ts_remote: Vec<TrafficSelector>,
    /// Drop counters.
    pub drops: Drops,
}

// ---------------------------------------------------------------------------------------
// Internal state
// ---------------------------------------------------------------------------------------

/// The initiator's IKE_SA_INIT in progress.
struct InitState {
    spi_i: u64,
    ni: Vec<u8>,
    dh: Option<DhPrivate>,
    group: DhGroup,
    cookie: Option<Vec<u8>>,
    retries: u32,
    bytes: Vec<u8>,
    sent: u32,
    deadline: Instant,
}

/// What IKE_AUTH needs from IKE_SA_INIT.
struct AuthCtx {
    init_req: Vec<u8>,
    init_resp: Vec<u8>,
    ni: Vec<u8>,
    nr: Vec<u8>,
    sk_pi: Secret,
    sk_pr: Secret,
    /// The initiator's inbound SPI for the first child.
    child_spi: u32,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum Role {
    /// IKE_AUTH not yet done.
    Negotiating,
    /// The established IKE SA that carries the children.
    Current,
    /// Replaced or redundant; kept to finish its exchanges and answer a Delete.
    Old { until: Instant },
}

/// A peer-initiated child created while our own rekey of the same child was in flight.
struct ChildCollision {
    peer_ni: Vec<u8>,
    our_nr: Vec<u8>,
    child: ChildId,
}

struct ChildReq {
    rekey: Option<ChildId>,
    spi_in: u32,
    ni: Vec<u8>,
    dh: Option<DhPrivate>,
    retries: u32,
    collision: Option<ChildCollision>,
}

/// A peer-initiated IKE SA created while our own IKE rekey was in flight.
struct IkeCollision {
    peer_ni: Vec<u8>,
    our_nr: Vec<u8>,
    sa: Box<IkeSa>,
}

struct IkeRekeyReq {
    spi: u64,
    ni: Vec<u8>,
    dh: Option<DhPrivate>,
    retries: u32,
    collision: Option<IkeCollision>,
}

enum Req {
    Auth,
    CreateChild(ChildReq),
    RekeyIke(IkeRekeyReq),
    DeleteChildren(Vec<u32>),
    DeleteIke,
    Dpd,
}

struct Pending {
    id: u32,
    bytes: Vec<u8>,
    sent: u32,
    deadline: Instant,
    req: Req,
}

struct Queued {
    exchange: u8,
    payloads: Vec<Payload>,
    req: Req,
}

struct IkeSa {
    role: Role,
    spi_i: u64,
    spi_r: u64,
    we_initiated: bool,
    algs: IkeAlgorithms,
    sk_d: Secret,
    tx: SkCipher,
    rx: SkCipher,
    auth: Option<AuthCtx>,
    next_id: u32,
    pending: Option<Pending>,
    queue: VecDeque<Queued>,
    peer_next: u32,
    last_response: Option<(u32, Vec<u8>)>,
    since: Instant,
    rekey_at: Option<Instant>,
    last_recv: Instant,
    nat: NatStatus,
}

impl IkeSa {
    #[allow(clippy::too_many_arguments)]
    fn new(
        role: Role,
        spi_i: u64,
        spi_r: u64,
        we_initiated: bool,
        algs: IkeAlgorithms,
        keys: IkeSaKeys,
        now: Instant,
        nat: NatStatus,
    ) -> Option<(IkeSa, Secret, Secret)> {
        let (tx, rx) = if we_initiated {
            (&keys.sk_ei, &keys.sk_er)
        } else {
            (&keys.sk_er, &keys.sk_ei)
        };
        let tx = SkCipher::new(algs.cipher, tx.as_bytes()).ok()?;
        let rx = SkCipher::new(algs.cipher, rx.as_bytes()).ok()?;
        Some((
            IkeSa {
                role,
                spi_i,
                spi_r,
                we_initiated,
                algs,
                sk_d: keys.sk_d.clone(),
                tx,
                rx,
                auth: None,
                next_id: 0,
                pending: None,
                queue: VecDeque::new(),
                peer_next: 0,
                last_response: None,
                since: now,
                rekey_at: None,
                last_recv: now,
                nat,
            },
            keys.sk_pi.clone(),
            keys.sk_pr.clone(),
        ))
    }

    fn header(&self, exchange: u8, id: u32, response: bool) -> Header {
        let mut flags = if self.we_initiated { FLAG_INITIATOR } else { 0 };
        if response {
            flags |= FLAG_RESPONSE;
        }
        Header {
            spi_i: self.spi_i,
            spi_r: self.spi_r,
            next_payload: 0,
            version: VERSION,
            exchange,
            flags,
            message_id: id,
            length: 0,
        }
    }

    fn is_rekeying_ike(&self) -> bool {
        matches!(
            self.pending.as_ref().map(|p| &p.req),
            Some(Req::RekeyIke(_))
        ) || self.queue.iter().any(|q| matches!(q.req, Req::RekeyIke(_)))
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum ChildState {
    Active,
    /// Our CREATE_CHILD_SA rekeying it is queued or in flight.
    Rekeying,
    /// We rekeyed it; our Delete for it is queued or in flight.
    Rekeyed,
    /// The peer rekeyed it into `successor`; waiting for the peer's Delete to switch.
    RekeyedByPeer {
        successor: ChildId,
    },
    /// Created by the peer in a collision it lost (or we lost with our own): waits for a
    /// Delete; never used for sending.
    Redundant,
    /// We are deleting it (hard expiry).
    Deleting,
}

struct Child {
    id: ChildId,
    spi_in: u32,
    spi_out: u32,
    algs: EspAlgorithms,
    since: Instant,
    soft_at: Instant,
    hard_at: Instant,
    soft_bytes: Option<u64>,
    bytes: u64,
    state: ChildState,
    outbound: bool,
    /// Responder of a rekey: the outbound keymat, installed when the old SA's Delete arrives.
    pending_out: Option<Keymat>,
}

struct CookieSecrets {
    version: u8,
    current: [u8; 32],
    previous: [u8; 32],
    rotated: Option<Instant>,
}

impl Drop for CookieSecrets {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.current.zeroize();
        self.previous.zeroize();
    }
}

/// Failure to seed a session from the system's random number generator.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RngError;

impl fmt::Display for RngError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("random number generator failed")
    }
}

impl std::error::Error for RngError {}

/// One tunnel's IKEv2 state machine. See the module documentation.
pub struct IkeSession {
    cfg: IkeConfig,
    local: SocketAddr,
    remote: SocketAddr,
    /// The peer's configured port, where an IKE SA started on `cfg.start_port` floats to.
    home_port: u16,
    /// Whether the IKE_SA_INIT under way went to `cfg.start_port` (and floats after it).
    floating: bool,
    rng: Drbg,
    init: Option<InitState>,
    sas: Vec<IkeSa>,
    children: Vec<Child>,
    removals: Vec<(Instant, ChildId, u32)>,
    events: VecDeque<Event>,
    transmits: VecDeque<Transmit>,
    last_esp: Option<Instant>,
    under_load: bool,
    /// The last child SA's traffic selectors: (ours, the peer's).
    negotiated_ts: (Vec<TrafficSelector>, Vec<TrafficSelector>),
    cookie: CookieSecrets,
    next_child: u32,
    /// When to create a child SA if there is still none (the peer deleted the last one).
    recreate_at: Option<Instant>,
    drops: Drops,
}

impl fmt::Debug for IkeSession {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IkeSession")
            .field("local", &self.local)
            .field("remote", &self.remote)
            .field("state", &self.state())
            .field("ike_sas", &self.sas.len())
            .field("children", &self.children.len())
            .field("drops", &self.drops)
            .finish_non_exhaustive()
    }
}

fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(365 * 86400)))
        .unwrap_or(now)
}

fn nat_hash(spi_i: u64, spi_r: u64, addr: SocketAddr) -> Vec<u8> {
    let mut ctx = digest::Context::new(&digest::SHA1_FOR_LEGACY_USE_ONLY);
    ctx.update(&spi_i.to_be_bytes());
    ctx.update(&spi_r.to_be_bytes());
    match addr.ip() {
        IpAddr::V4(a) => ctx.update(&a.octets()),
        IpAddr::V6(a) => ctx.update(&a.octets()),
    }
    ctx.update(&addr.port().to_be_bytes());
    ctx.finish().as_ref().to_vec()
}

fn ip_octets(a: IpAddr) -> Vec<u8> {
    match a {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Helpers over a decoded payload list.
struct Payloads<'a>(&'a [Payload]);

impl<'a> Payloads<'a> {
    fn notify(&self, kind: u16) -> Option<&'a Notify> {
        self.0.iter().find_map(|p| match p {
            Payload::Notify(n) if n.kind == kind => Some(n),
            _ => None,
        })
    }

    fn notifies(&self, kind: u16) -> impl Iterator<Item = &'a Notify> + 'a {
        self.0.iter().filter_map(move |p| match p {
            Payload::Notify(n) if n.kind == kind => Some(n),
            _ => None,
        })
    }

    fn first_error(&self) -> Option<&'a Notify> {
        self.0.iter().find_map(|p| match p {
            Payload::Notify(n) if notify_type::is_error(n.kind) => Some(n),
            _ => None,
        })
    }

    fn sa(&self) -> Option<&'a [crate::ike::message::Proposal]> {
        self.0.iter().find_map(|p| match p {
            Payload::Sa(v) => Some(v.as_slice()),
            _ => None,
        })
    }

    fn ke(&self) -> Option<(u16, &'a [u8])> {
        self.0.iter().find_map(|p| match p {
            Payload::Ke { group, data } => Some((*group, data.as_slice())),
            _ => None,
        })
    }

    fn nonce(&self) -> Option<&'a [u8]> {
        self.0.iter().find_map(|p| match p {
            Payload::Nonce(n) => Some(n.as_slice()),
            _ => None,
        })
    }

    fn id_i(&self) -> Option<&'a Identity> {
        self.0.iter().find_map(|p| match p {
            Payload::IdI(i) => Some(i),
            _ => None,
        })
    }

    fn id_r(&self) -> Option<&'a Identity> {
        self.0.iter().find_map(|p| match p {
            Payload::IdR(i) => Some(i),
            _ => None,
        })
    }

    fn auth(&self) -> Option<(u8, &'a [u8])> {
        self.0.iter().find_map(|p| match p {
            Payload::Auth { method, data } => Some((*method, data.as_slice())),
            _ => None,
        })
    }

    fn ts_i(&self) -> Option<&'a [TrafficSelector]> {
        self.0.iter().find_map(|p| match p {
            Payload::TsI(v) => Some(v.as_slice()),
            _ => None,
        })
    }

    fn ts_r(&self) -> Option<&'a [TrafficSelector]> {
        self.0.iter().find_map(|p| match p {
            Payload::TsR(v) => Some(v.as_slice()),
            _ => None,
        })
    }

    fn deletes(&self) -> impl Iterator<Item = &'a Delete> + 'a {
        self.0.iter().filter_map(|p| match p {
            Payload::Delete(d) => Some(d),
            _ => None,
        })
    }
}

fn error_response(kind: u16, data: Vec<u8>) -> Vec<Payload> {
    vec![Payload::Notify(Notify::new(kind, data))]
}

/// Narrowing (RFC 7296 section 2.9): every non-empty intersection of one of `ours` with one of
/// `theirs`.
fn narrow(ours: &[TrafficSelector], theirs: &[TrafficSelector]) -> Vec<TrafficSelector> {
    let mut out: Vec<TrafficSelector> = Vec::new();
    for t in theirs {
        for o in ours {
            if let Some(x) = o.intersect(t) {
                if !out.contains(&x) {
                    out.push(x);
                }
            }
        }
    }
    out
}

/// Whether every selector of `answer` lies within one of `offered`.
fn within(offered: &[TrafficSelector], answer: &[TrafficSelector]) -> bool {
    !answer.is_empty() && answer.iter().all(|a| offered.iter().any(|o| o.contains(a)))
}

/// The lower of two nonces in the octet-by-octet order of RFC 7296 section 2.8.1.
fn lower<'a>(a: &'a [u8], b: &'a [u8]) -> &'a [u8] {
    if a <= b {
        a
    } else {
        b
    }
}

impl IkeSession {
    /// A session for one tunnel between `local` and `remote`, seeded from `rng`.
    ///
    /// # Errors
    /// [`RngError`] if `rng` fails.
    pub fn new(
        cfg: IkeConfig,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        rng: &dyn SecureRandom,
    ) -> Result<IkeSession, RngError> {
        let mut seed = zeroize::Zeroizing::new([0u8; 48]);
        rng.fill(&mut seed[..]).map_err(|_| RngError)?;
        Ok(IkeSession::from_drbg(
            cfg,
            local,
            remote,
            now,
            Drbg::new(&seed[..]),
        ))
    }

    /// A session whose randomness is fully determined by `seed`: for tests and simulations
    /// only. Two sessions with the same seed pick the same SPIs, nonces and keys.
    pub fn with_seed(
        cfg: IkeConfig,
        local: SocketAddr,
        remote: SocketAddr,
        now: Instant,
        seed: [u8; 32],
    ) -> IkeSession {
        IkeSession::from_drbg(cfg, local, remote, now, Drbg::new(&seed))
    }

    fn from_drbg(
        cfg: IkeConfig,
        local: SocketAddr,
        remote: SocketAddr,
        _now: Instant,
        mut rng: Drbg,
    ) -> IkeSession {
        let mut current = [0u8; 32];
        rng.fill(&mut current);
        IkeSession {
            cfg,
            local,
            remote,
            home_port: remote.port(),
            floating: false,
            rng,
            init: None,
            sas: Vec::new(),
            children: Vec::new(),
            removals: Vec::new(),
            recreate_at: None,
            events: VecDeque::new(),
            transmits: VecDeque::new(),
            last_esp: None,
            under_load: false,
            negotiated_ts: (Vec::new(), Vec::new()),
            cookie: CookieSecrets {
                version: 0,
                current,
                previous: [0; 32],
                rotated: None,
            },
            next_child: 1,
            drops: Drops::default(),
        }
    }

    // ---------------------------------------------------------------------------------
    // Public API
    // ---------------------------------------------------------------------------------

    /// Initiator: starts IKE_SA_INIT (again, after the session went down). Does nothing for a
    /// responder or while an IKE SA exists or is being negotiated.
    pub fn start(&mut self, now: Instant) {
        if !self.cfg.initiator
            || self.init.is_some()
            || !self.sas.iter().all(|s| matches!(s.role, Role::Old { .. }))
        {
            return;
        }
        let Some(group) = self
            .cfg
            .ike_proposals
            .first()
            .and_then(|p| p.groups.first().copied())
        else {
            return;
        };
        let spi_i = self.new_ike_spi();
        let ni = self.rng.bytes(NONCE_LEN);
        let Some(dh) = self.new_dh(group) else { return };
        self.floating = false;
        if let Some(p) = self.cfg.start_port.filter(|&p| p != self.home_port) {
            self.remote.set_port(p);
            self.floating = true;
        }
        self.init = Some(InitState {
            spi_i,
            ni,
            dh: Some(dh),
            group,
            cookie: None,
            retries: 0,
            bytes: Vec::new(),
            sent: 0,
            deadline: now,
        });
        self.send_init(now);
    }

    /// Feeds one received IKE message (without the non-ESP marker) from `from`. Never panics;
    /// what cannot be used is dropped and counted in [`Drops`].
    pub fn handle_message(&mut self, now: Instant, from: SocketAddr, msg: &[u8]) {
        let (h, body) = match decode(msg) {
            Ok(x) => x,
            Err(_) => {
                self.drops.malformed += 1;
                return;
            }
        };
        if h.exchange == exchange::IKE_SA_INIT {
            let Body::Plain(payloads) = body else {
                self.drops.malformed += 1;
                return;
            };
            if h.is_response() {
                self.on_init_response(now, from, msg, &h, &payloads);
            } else {
                self.on_init_request(now, from, msg, &h, &payloads);
            }
            self.pump(now);
            return;
        }
        let Some(i) = self
            .sas
            .iter()
            .position(|s| s.spi_i == h.spi_i && s.spi_r == h.spi_r)
        else {
            self.drops.unknown_spi += 1;
            return;
        };
        if h.from_initiator() == self.sas[i].we_initiated {
            self.drops.unknown_spi += 1;
            return;
        }
        let Body::Encrypted {
            first_inner, sk_at, ..
        } = body
        else {
            self.drops.malformed += 1;
            return;
        };
        if h.is_response() {
            if self.sas[i].pending.as_ref().map(|p| p.id) != Some(h.message_id) {
                self.drops.bad_message_id += 1;
                return;
            }
            let Ok(plain) = self.sas[i].rx.open(msg, sk_at) else {
                self.drops.decrypt_failed += 1;
                return;
            };
            self.note_authentic(now, i, from);
            let Some(pending) = self.sas[i].pending.take() else {
                return;
            };
            let payloads = decode_payloads(first_inner, &plain);
            if payloads.is_err() {
                self.drops.invalid_syntax += 1;
            }
            self.on_response(now, i, h.exchange, pending.req, payloads);
        } else {
            let sa = &self.sas[i];
            let retransmit = sa.peer_next.checked_sub(1) == Some(h.message_id)
                && sa.last_response.as_ref().map(|r| r.0) == Some(h.message_id);
            if !retransmit && h.message_id != sa.peer_next {
                self.drops.bad_message_id += 1;
                return;
            }
            let Ok(plain) = sa.rx.open(msg, sk_at) else {
                self.drops.decrypt_failed += 1;
                return;
            };
            if retransmit {
                if let Some((_, bytes)) = &self.sas[i].last_response {
                    let t = Transmit {
                        to: from,
                        payload: bytes.clone(),
                    };
                    self.transmits.push_back(t);
                }
                return;
            }
            self.sas[i].peer_next = self.sas[i].peer_next.wrapping_add(1);
            self.note_authentic(now, i, from);
            match decode_payloads(first_inner, &plain) {
                Ok(payloads) => self.on_request(now, i, &h, &payloads),
                Err(e) => {
                    self.drops.invalid_syntax += 1;
                    let (kind, data) = e.notify();
                    self.respond(i, &h, error_response(kind, data));
                    if h.exchange == exchange::IKE_AUTH && self.sas[i].role == Role::Negotiating {
                        self.fail_sa(now, i, DownReason::InvalidSyntax);
                    }
                }
            }
        }
        self.pump(now);
    }

    /// Runs every timer due at `now`: retransmissions, rekeys, liveness checks, grace
    /// removals, half-open expiry.
    pub fn handle_timeout(&mut self, now: Instant) {
        // The initiator's IKE_SA_INIT.
        if let Some(init) = &self.init {
            if now >= init.deadline {
                if init.sent > self.cfg.retransmit.tries {
                    self.init = None;
                    self.down(DownReason::PeerDead);
                } else {
                    self.retransmit_init(now);
                }
            }
        }
        // Request retransmission, per IKE SA.
        let mut i = 0;
        while i < self.sas.len() {
            let due = self.sas[i]
                .pending
                .as_ref()
                .is_some_and(|p| now >= p.deadline);
            if due {
                let exhausted = self.sas[i]
                    .pending
                    .as_ref()
                    .is_some_and(|p| p.sent > self.cfg.retransmit.tries);
                if exhausted {
                    match self.sas[i].role {
                        Role::Old { .. } => {
                            self.sas.remove(i);
                            continue;
                        }
                        _ => {
                            self.fail_sa(now, i, DownReason::PeerDead);
                            i = 0;
                            continue;
                        }
                    }
                }
                let timeout = self.sas[i].pending.as_ref().map_or(0, |p| p.sent);
                let timeout = self.cfg.retransmit.timeout(timeout);
                if let Some(p) = self.sas[i].pending.as_mut() {
                    p.sent += 1;
                    p.deadline = later(now, timeout);
                    let t = Transmit {
                        to: self.remote,
                        payload: p.bytes.clone(),
                    };
                    self.transmits.push_back(t);
                }
            }
            i += 1;
        }
        // Old IKE SAs that outlived their purpose; half-open responders.
        let mut i = 0;
        while i < self.sas.len() {
            match self.sas[i].role {
                Role::Old { until } if now >= until => {
                    self.sas.remove(i);
                }
                Role::Negotiating
                    if !self.sas[i].we_initiated
                        && now >= later(self.sas[i].since, self.cfg.half_open_timeout) =>
                {
                    self.fail_sa(now, i, DownReason::HalfOpenTimeout);
                    i = 0;
                }
                _ => i += 1,
            }
        }
        // Grace removals.
        let mut due = Vec::new();
        self.removals.retain(|&(at, child, spi)| {
            if now >= at {
                due.push((child, spi));
                false
            } else {
                true
            }
        });
        for (child, spi) in due {
            self.events.push_back(Event::ChildRemoveInbound {
                child,
                spi: Spi(spi),
            });
        }
        if let Some(c) = self.current() {
            // IKE SA rekey.
            if self.sas[c].rekey_at.is_some_and(|t| now >= t) && !self.sas[c].is_rekeying_ike() {
                self.sas[c].rekey_at = None;
                self.queue_ike_rekey(c);
            }
            // Child rekey (soft) and expiry (hard).
            let ids: Vec<ChildId> = self.children.iter().map(|ch| ch.id).collect();
            for id in ids {
                let Some(ch) = self.child(id) else { continue };
                let hard = now >= ch.hard_at;
                let soft = now >= ch.soft_at;
                let state = ch.state;
                if hard && matches!(state, ChildState::Active | ChildState::Rekeying) {
                    self.expire_child(now, id);
                } else if soft && state == ChildState::Active {
                    self.queue_child_rekey(Some(id));
                }
            }
            // The peer deleted the last child SA and has not created the next one.
            if self.recreate_at.is_some_and(|t| now >= t) {
                self.recreate_at = None;
                if !self.has_live_child() && !self.creating_child() {
                    self.queue_child_rekey(None);
                }
            }
            // Liveness check.
            if let Some(interval) = self.cfg.dpd_interval {
                let sa = &self.sas[c];
                let last = self.last_esp.map_or(sa.last_recv, |e| e.max(sa.last_recv));
                if sa.pending.is_none() && sa.queue.is_empty() && now >= later(last, interval) {
                    self.queue(c, exchange::INFORMATIONAL, Vec::new(), Req::Dpd);
                }
            }
        }
        self.pump(now);
    }

    /// The next instant [`handle_timeout`](Self::handle_timeout) has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |y| y.min(x)));
        if let Some(init) = &self.init {
            at(init.deadline);
        }
        for sa in &self.sas {
            if let Some(p) = &sa.pending {
                at(p.deadline);
            }
            match sa.role {
                Role::Old { until } => at(until),
                Role::Negotiating if !sa.we_initiated => {
                    at(later(sa.since, self.cfg.half_open_timeout))
                }
                Role::Current => {
                    if let Some(r) = sa.rekey_at {
                        at(r);
                    }
                    if let Some(interval) = self.cfg.dpd_interval {
                        if sa.pending.is_none() && sa.queue.is_empty() {
                            let last = self.last_esp.map_or(sa.last_recv, |e| e.max(sa.last_recv));
                            at(later(last, interval));
                        }
                    }
                }
                _ => {}
            }
        }
        for &(when, _, _) in &self.removals {
            at(when);
        }
        if self.current().is_some() {
            if let Some(r) = self.recreate_at {
                at(r);
            }
            for ch in &self.children {
                match ch.state {
                    ChildState::Active => {
                        at(ch.soft_at);
                        at(ch.hard_at);
                    }
                    ChildState::Rekeying => at(ch.hard_at),
                    _ => {}
                }
            }
        }
        t
    }

    /// The next datagram to send, if any.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Tells the session an authentic ESP packet arrived from the peer at `now` (for the
    /// liveness check: a busy tunnel is not probed).
    pub fn note_inbound_esp(&mut self, now: Instant) {
        self.last_esp = Some(self.last_esp.map_or(now, |e| e.max(now)));
    }

    /// Tells the session how many octets `child` has protected so far (both directions, as the
    /// caller counts them). With `child_bytes` configured this triggers the rekey (at the
    /// jittered soft limit) or the deletion (at the limit).
    pub fn note_child_bytes(&mut self, now: Instant, child: ChildId, bytes: u64) {
        let limit = self.cfg.child_bytes;
        let Some(ch) = self.child_mut(child) else {
            return;
        };
        ch.bytes = bytes;
        let (soft, state) = (ch.soft_bytes, ch.state);
        if self.current().is_none() {
            return;
        }
        if limit.is_some_and(|l| bytes >= l)
            && matches!(state, ChildState::Active | ChildState::Rekeying)
        {
            self.expire_child(now, child);
        } else if soft.is_some_and(|s| bytes >= s) && state == ChildState::Active {
            self.queue_child_rekey(Some(child));
        }
        self.pump(now);
    }

    /// Rekeys every active child SA now (CREATE_CHILD_SA with REKEY_SA).
    pub fn rekey_child(&mut self, now: Instant) {
        if self.current().is_none() {
            return;
        }
        let ids: Vec<ChildId> = self
            .children
            .iter()
            .filter(|c| c.state == ChildState::Active)
            .map(|c| c.id)
            .collect();
        for id in ids {
            self.queue_child_rekey(Some(id));
        }
        self.pump(now);
    }

    /// Rekeys the IKE SA now.
    pub fn rekey_ike(&mut self, now: Instant) {
        if let Some(c) = self.current() {
            if !self.sas[c].is_rekeying_ike() {
                self.sas[c].rekey_at = None;
                self.queue_ike_rekey(c);
            }
        }
        self.pump(now);
    }

    /// Deletes the IKE SA (and with it every child): the removal events and
    /// `IkeDown { Closed }` come at once, the Delete is sent (and retransmitted) in the
    /// background.
    pub fn close(&mut self, now: Instant) {
        self.init = None;
        let until = later(now, self.cfg.retransmit.budget());
        let mut keep = Vec::new();
        for mut sa in std::mem::take(&mut self.sas) {
            if sa.role == Role::Current {
                sa.role = Role::Old { until };
                sa.queue.clear();
                sa.queue.push_back(Queued {
                    exchange: exchange::INFORMATIONAL,
                    payloads: vec![Payload::Delete(Delete::Ike)],
                    req: Req::DeleteIke,
                });
                keep.push(sa);
            } else if matches!(sa.role, Role::Old { .. }) {
                keep.push(sa);
            }
        }
        self.sas = keep;
        self.down(DownReason::Closed);
        self.pump(now);
    }

    /// Caller-set "under load" mode (RFC 7296 section 2.6): while on, IKE_SA_INIT requests
    /// without a valid cookie are answered with a COOKIE notify and create no state.
    pub fn set_under_load(&mut self, on: bool) {
        self.under_load = on;
    }

    /// The initiator SPI of the IKE SA we are answering whose IKE_AUTH has not arrived yet (a
    /// responder's half-open SA), if any. A driver counts these across sessions to decide when it
    /// is under load ([`IkeSession::set_under_load`]).
    pub fn half_open_spi(&self) -> Option<u64> {
        self.sas
            .iter()
            .find(|s| s.role == Role::Negotiating && !s.we_initiated)
            .map(|s| s.spi_i)
    }

    /// The session's coarse state.
    pub fn state(&self) -> SessionState {
        if self.current().is_some() {
            SessionState::Established
        } else if self.init.is_some() || self.sas.iter().any(|s| s.role == Role::Negotiating) {
            SessionState::Connecting
        } else {
            SessionState::Idle
        }
    }

    /// A snapshot for `braid show`: state, algorithms, SPIs, ages; no keys.
    pub fn status(&self) -> Status {
        let ike = self.current().map(|c| {
            let sa = &self.sas[c];
            IkeSaStatus {
                spi_i: sa.spi_i,
                spi_r: sa.spi_r,
                initiator: sa.we_initiated,
                algorithms: sa.algs,
                since: sa.since,
                nat: sa.nat,
            }
        });
        Status {
            state: self.state(),
            local: self.local,
            remote: self.remote,
            ike,
            children: self
                .children
                .iter()
                .map(|c| ChildStatus {
                    child: c.id,
                    spi_in: Spi(c.spi_in),
                    spi_out: Spi(c.spi_out),
                    algorithms: c.algs,
                    since: c.since,
                    outbound: c.outbound,
                    bytes: c.bytes,
                })
                .collect(),
            ts_local: self.negotiated_ts.0.clone(),
            ts_remote: self.negotiated_ts.1.clone(),
            drops: self.drops,
        }
    }

    /// The drop counters.
    pub fn drops(&self) -> Drops {
        self.drops
    }

    // ---------------------------------------------------------------------------------
    // Helpers
    // ---------------------------------------------------------------------------------

    fn current(&self) -> Option<usize> {
        self.sas.iter().position(|s| s.role == Role::Current)
    }

    fn child(&self, id: ChildId) -> Option<&Child> {
        self.children.iter().find(|c| c.id == id)
    }

    fn child_mut(&mut self, id: ChildId) -> Option<&mut Child> {
        self.children.iter_mut().find(|c| c.id == id)
    }

    fn new_ike_spi(&mut self) -> u64 {
        loop {
            let s = self.rng.u64();
            if s != 0 && !self.sas.iter().any(|sa| sa.spi_i == s || sa.spi_r == s) {
                return s;
            }
        }
    }

    fn new_child_spi(&mut self) -> u32 {
        loop {
            let s = self.rng.u32();
            if s > 255
                && !self.children.iter().any(|c| c.spi_in == s)
                && !self.removals.iter().any(|r| r.2 == s)
            {
                return s;
            }
        }
    }

    fn new_dh(&mut self, group: DhGroup) -> Option<DhPrivate> {
        for _ in 0..16 {
            let mut seed = zeroize::Zeroizing::new([0u8; 32]);
            self.rng.fill(&mut seed[..]);
            if let Ok(k) = DhPrivate::from_seed(group, &seed) {
                return Some(k);
            }
        }
        None
    }

    fn jitter(&mut self, d: Duration) -> Duration {
        let r = f64::from(self.rng.u32()) / f64::from(u32::MAX);
        d.saturating_sub(d.mul_f64(0.1 * r))
    }

    fn new_child_id(&mut self) -> ChildId {
        let id = ChildId(self.next_child);
        self.next_child = self.next_child.wrapping_add(1);
        id
    }

    /// Records an authentic message from `from` on SA `i`.
    fn note_authentic(&mut self, now: Instant, i: usize, from: SocketAddr) {
        self.sas[i].last_recv = now;
        if from != self.remote && self.sas[i].nat.detected() {
            self.remote = from;
            self.events
                .push_back(Event::RemoteAddressChanged { remote: from });
        }
    }

    /// Queues a request on SA `i` (sent when its window is free).
    fn queue(&mut self, i: usize, exchange: u8, payloads: Vec<Payload>, req: Req) {
        self.sas[i].queue.push_back(Queued {
            exchange,
            payloads,
            req,
        });
    }

    /// Sends the next queued request of every IKE SA whose window is free.
    fn pump(&mut self, now: Instant) {
        for i in 0..self.sas.len() {
            if self.sas[i].pending.is_some()
                || self.sas[i].role == Role::Negotiating && !self.sas[i].we_initiated
            {
                continue;
            }
            let Some(q) = self.sas[i].queue.pop_front() else {
                continue;
            };
            let sa = &mut self.sas[i];
            let id = sa.next_id;
            sa.next_id = sa.next_id.wrapping_add(1);
            let h = sa.header(q.exchange, id, false);
            let bytes = sa.tx.seal(&h, &q.payloads);
            sa.pending = Some(Pending {
                id,
                bytes: bytes.clone(),
                sent: 1,
                deadline: later(now, self.cfg.retransmit.timeout(0)),
                req: q.req,
            });
            self.transmits.push_back(Transmit {
                to: self.remote,
                payload: bytes,
            });
        }
    }

    /// Sends (and caches) the response to request `h` on SA `i`.
    fn respond(&mut self, i: usize, h: &Header, payloads: Vec<Payload>) {
        let sa = &mut self.sas[i];
        let rh = sa.header(h.exchange, h.message_id, true);
        let bytes = sa.tx.seal(&rh, &payloads);
        sa.last_response = Some((h.message_id, bytes.clone()));
        self.transmits.push_back(Transmit {
            to: self.remote,
            payload: bytes,
        });
    }

    /// Everything is gone: removal events for every child, then `IkeDown`.
    fn down(&mut self, reason: DownReason) {
        self.recreate_at = None;
        for ch in std::mem::take(&mut self.children) {
            if ch.outbound {
                self.events.push_back(Event::ChildRemoveOutbound {
                    child: ch.id,
                    spi: Spi(ch.spi_out),
                });
            }
            self.events.push_back(Event::ChildRemoveInbound {
                child: ch.id,
                spi: Spi(ch.spi_in),
            });
        }
        for (_, child, spi) in std::mem::take(&mut self.removals) {
            self.events.push_back(Event::ChildRemoveInbound {
                child,
                spi: Spi(spi),
            });
        }
        self.events.push_back(Event::IkeDown { reason });
    }

    /// IKE SA `i` failed: if it carried the children, the session is down; a failed
    /// negotiation beside an established SA only disappears.
    fn fail_sa(&mut self, _now: Instant, i: usize, reason: DownReason) {
        let role = self.sas[i].role;
        self.sas.remove(i);
        match role {
            Role::Current => {
                self.sas.retain(|s| matches!(s.role, Role::Old { .. }));
                self.down(reason);
            }
            Role::Negotiating => {
                if self.current().is_none() {
                    self.down(reason);
                }
            }
            Role::Old { .. } => {}
        }
    }

    // ---------------------------------------------------------------------------------
    // IKE_SA_INIT
    // ---------------------------------------------------------------------------------

    fn init_payloads(&mut self) -> Vec<Payload> {
        let Some(init) = &self.init else {
            return Vec::new();
        };
        let mut p = Vec::new();
        if let Some(c) = &init.cookie {
            p.push(Payload::Notify(Notify::new(notify_type::COOKIE, c.clone())));
        }
        p.push(Payload::Sa(
            self.cfg
                .ike_proposals
                .iter()
                .enumerate()
                .map(|(n, prop)| prop.to_wire(n as u8 + 1, &[]))
                .collect(),
        ));
        p.push(Payload::Ke {
            group: init.group.id(),
            data: init
                .dh
                .as_ref()
                .map(|d| d.public_value().to_vec())
                .unwrap_or_default(),
        });
        p.push(Payload::Nonce(init.ni.clone()));
        let spi_i = init.spi_i;
        let src = if self.cfg.force_encap || self.floating {
            self.rng.bytes(20)
        } else {
            nat_hash(spi_i, 0, self.local)
        };
        p.push(Payload::Notify(Notify::new(
            notify_type::NAT_DETECTION_SOURCE_IP,
            src,
        )));
        p.push(Payload::Notify(Notify::new(
            notify_type::NAT_DETECTION_DESTINATION_IP,
            nat_hash(spi_i, 0, self.remote),
        )));
        p
    }

    fn send_init(&mut self, now: Instant) {
        let payloads = self.init_payloads();
        let Some(init) = &mut self.init else { return };
        let h = Header {
            spi_i: init.spi_i,
            spi_r: 0,
            next_payload: 0,
            version: VERSION,
            exchange: exchange::IKE_SA_INIT,
            flags: FLAG_INITIATOR,
            message_id: 0,
            length: 0,
        };
        init.bytes = encode_plain(&h, &payloads);
        init.sent = 1;
        init.deadline = later(now, self.cfg.retransmit.timeout(0));
        self.transmits.push_back(Transmit {
            to: self.remote,
            payload: init.bytes.clone(),
        });
    }

    fn retransmit_init(&mut self, now: Instant) {
        let Some(init) = &mut self.init else { return };
        init.deadline = later(now, self.cfg.retransmit.timeout(init.sent));
        init.sent += 1;
        self.transmits.push_back(Transmit {
            to: self.remote,
            payload: init.bytes.clone(),
        });
    }

    fn cookie_for(
        &self,
        secret: &[u8; 32],
        version: u8,
        ni: &[u8],
        ip: IpAddr,
        spi_i: u64,
    ) -> Vec<u8> {
        let mut ctx = digest::Context::new(&digest::SHA256);
        ctx.update(ni);
        ctx.update(&ip_octets(ip));
        ctx.update(&spi_i.to_be_bytes());
        ctx.update(secret);
        let mut c = vec![version];
        c.extend_from_slice(ctx.finish().as_ref());
        c
    }

    fn rotate_cookie(&mut self, now: Instant) {
        if self
            .cookie
            .rotated
            .is_none_or(|t| now >= later(t, COOKIE_ROTATE))
        {
            if self.cookie.rotated.is_some() {
                self.cookie.previous = self.cookie.current;
                self.rng.fill(&mut self.cookie.current);
                self.cookie.version = self.cookie.version.wrapping_add(1);
            }
            self.cookie.rotated = Some(now);
        }
    }

    fn cookie_valid(&self, cookie: &[u8], ni: &[u8], ip: IpAddr, spi_i: u64) -> bool {
        let Some(&v) = cookie.first() else {
            return false;
        };
        let secret = if v == self.cookie.version {
            &self.cookie.current
        } else if v == self.cookie.version.wrapping_sub(1) {
            &self.cookie.previous
        } else {
            return false;
        };
        keys::auth_equal(cookie, &self.cookie_for(secret, v, ni, ip, spi_i))
    }

    fn stateless_reply(&mut self, to: SocketAddr, h: &Header, payloads: Vec<Payload>) {
        let rh = Header {
            spi_i: h.spi_i,
            spi_r: 0,
            next_payload: 0,
            version: VERSION,
            exchange: exchange::IKE_SA_INIT,
            flags: FLAG_RESPONSE,
            message_id: 0,
            length: 0,
        };
        self.transmits.push_back(Transmit {
            to,
            payload: encode_plain(&rh, &payloads),
        });
    }

    /// The NAT_DETECTION_* notifies a message carried, checked against the addresses it
    /// travelled between.
    fn nat_check(&self, p: &Payloads<'_>, spi_i: u64, spi_r: u64, from: SocketAddr) -> NatStatus {
        let src: Vec<&Notify> = p.notifies(notify_type::NAT_DETECTION_SOURCE_IP).collect();
        let dst = p.notify(notify_type::NAT_DETECTION_DESTINATION_IP);
        let mut nat = NatStatus::default();
        if !src.is_empty() {
            let want = nat_hash(spi_i, spi_r, from);
            nat.remote_behind_nat = !src.iter().any(|n| n.data == want);
        }
        if let Some(d) = dst {
            nat.local_behind_nat = d.data != nat_hash(spi_i, spi_r, self.local);
        }
        if self.cfg.force_encap || self.floating {
            nat.local_behind_nat = true;
        }
        nat
    }

    fn on_init_request(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &[u8],
        h: &Header,
        payloads: &[Payload],
    ) {
        if h.spi_r != 0 || h.message_id != 0 || !h.from_initiator() {
            self.drops.malformed += 1;
            return;
        }
        // A retransmission of a request we answered: the same answer.
        if let Some(sa) = self
            .sas
            .iter()
            .find(|s| s.spi_i == h.spi_i && s.role == Role::Negotiating && !s.we_initiated)
        {
            if let Some(a) = sa.auth.as_ref().filter(|a| a.init_req == msg) {
                let t = Transmit {
                    to: from,
                    payload: a.init_resp.clone(),
                };
                self.transmits.push_back(t);
            } else {
                self.drops.unexpected += 1;
            }
            return;
        }
        // An initiator in the middle of its own negotiation does not also answer.
        if self.init.is_some()
            || self
                .sas
                .iter()
                .any(|s| s.role == Role::Negotiating && s.we_initiated)
        {
            self.drops.unexpected += 1;
            return;
        }
        let p = Payloads(payloads);
        let (Some(ni), Some(sa), Some((ke_group, ke_data))) = (p.nonce(), p.sa(), p.ke()) else {
            self.drops.malformed += 1;
            return;
        };
        if self.under_load {
            self.rotate_cookie(now);
            let ok = p
                .notify(notify_type::COOKIE)
                .is_some_and(|c| self.cookie_valid(&c.data, ni, from.ip(), h.spi_i));
            if !ok {
                let c = self.cookie_for(
                    &self.cookie.current,
                    self.cookie.version,
                    ni,
                    from.ip(),
                    h.spi_i,
                );
                self.stateless_reply(from, h, error_response(notify_type::COOKIE, c));
                return;
            }
        }
        let Some((number, algs)) = select_ike(&self.cfg.ike_proposals, sa) else {
            self.stateless_reply(
                from,
                h,
                error_response(notify_type::NO_PROPOSAL_CHOSEN, Vec::new()),
            );
            if self.current().is_none() {
                self.events.push_back(Event::IkeDown {
                    reason: DownReason::NoProposalChosen { by_peer: false },
                });
            }
            return;
        };
        if ke_group != algs.group.id() {
            let want = algs.group.id().to_be_bytes().to_vec();
            self.stateless_reply(
                from,
                h,
                error_response(notify_type::INVALID_KE_PAYLOAD, want),
            );
            return;
        }
        let Some(dh) = self.new_dh(algs.group) else {
            return;
        };
        let nr = self.rng.bytes(NONCE_LEN);
        let our_ke = dh.public_value().to_vec();
        let Ok(g_ir) = dh.agree(ke_data) else {
            self.stateless_reply(
                from,
                h,
                error_response(notify_type::INVALID_SYNTAX, Vec::new()),
            );
            return;
        };
        // A newer attempt from the peer replaces a half-open SA of ours.
        self.sas.retain(|s| s.role != Role::Negotiating);
        let spi_r = self.new_ike_spi();
        let skeyseed = keys::skeyseed(ni, &nr, g_ir.as_bytes());
        let keys = IkeSaKeys::derive(&skeyseed, ni, &nr, h.spi_i, spi_r);
        let nat = self.nat_check(&p, h.spi_i, 0, from);
        let Some((mut sa, sk_pi, sk_pr)) = IkeSa::new(
            Role::Negotiating,
            h.spi_i,
            spi_r,
            false,
            algs,
            keys,
            now,
            nat,
        ) else {
            return;
        };
        self.remote = from;
        let src = if self.cfg.force_encap {
            self.rng.bytes(20)
        } else {
            nat_hash(h.spi_i, spi_r, self.local)
        };
        let response = vec![
            Payload::Sa(vec![ike_answer(number, algs, &[])]),
            Payload::Ke {
                group: algs.group.id(),
                data: our_ke,
            },
            Payload::Nonce(nr.clone()),
            Payload::Notify(Notify::new(notify_type::NAT_DETECTION_SOURCE_IP, src)),
            Payload::Notify(Notify::new(
                notify_type::NAT_DETECTION_DESTINATION_IP,
                nat_hash(h.spi_i, spi_r, from),
            )),
        ];
        let rh = Header {
            spi_i: h.spi_i,
            spi_r,
            next_payload: 0,
            version: VERSION,
            exchange: exchange::IKE_SA_INIT,
            flags: FLAG_RESPONSE,
            message_id: 0,
            length: 0,
        };
        let bytes = encode_plain(&rh, &response);
        sa.peer_next = 1;
        sa.auth = Some(AuthCtx {
            init_req: msg.to_vec(),
            init_resp: bytes.clone(),
            ni: ni.to_vec(),
            nr,
            sk_pi,
            sk_pr,
            child_spi: 0,
        });
        self.sas.push(sa);
        self.transmits.push_back(Transmit {
            to: from,
            payload: bytes,
        });
    }

    fn on_init_response(
        &mut self,
        now: Instant,
        from: SocketAddr,
        msg: &[u8],
        h: &Header,
        payloads: &[Payload],
    ) {
        let Some(init) = &self.init else {
            self.drops.unexpected += 1;
            return;
        };
        if h.spi_i != init.spi_i || h.message_id != 0 || h.from_initiator() {
            self.drops.unknown_spi += 1;
            return;
        }
        let p = Payloads(payloads);
        if let Some(c) = p.notify(notify_type::COOKIE) {
            if init.retries >= MAX_INIT_RETRIES || c.data.is_empty() || c.data.len() > 64 {
                self.init = None;
                self.down(DownReason::InitRetriesExhausted);
                return;
            }
            if let Some(init) = &mut self.init {
                init.cookie = Some(c.data.clone());
                init.retries += 1;
            }
            self.send_init(now);
            return;
        }
        if let Some(n) = p.notify(notify_type::INVALID_KE_PAYLOAD) {
            let group = <[u8; 2]>::try_from(n.data.as_slice())
                .ok()
                .and_then(|g| DhGroup::from_id(u16::from_be_bytes(g)))
                .filter(|g| self.cfg.ike_proposals.iter().any(|p| p.groups.contains(g)));
            match group {
                Some(g) if init.retries < MAX_INIT_RETRIES && g != init.group => {
                    let Some(dh) = self.new_dh(g) else { return };
                    if let Some(init) = &mut self.init {
                        init.group = g;
                        init.dh = Some(dh);
                        init.retries += 1;
                    }
                    self.send_init(now);
                }
                _ => {
                    self.init = None;
                    self.down(DownReason::InitRetriesExhausted);
                }
            }
            return;
        }
        if let Some(e) = p.first_error() {
            let reason = match e.kind {
                notify_type::NO_PROPOSAL_CHOSEN => DownReason::NoProposalChosen { by_peer: true },
                k => DownReason::PeerError(k),
            };
            self.init = None;
            self.down(reason);
            return;
        }
        let (Some(nr), Some(sa), Some((ke_group, ke_data))) = (p.nonce(), p.sa(), p.ke()) else {
            self.drops.malformed += 1;
            return;
        };
        if h.spi_r == 0 {
            self.drops.malformed += 1;
            return;
        }
        let Some(algs) = accept_ike(&self.cfg.ike_proposals, sa) else {
            self.init = None;
            self.down(DownReason::NoProposalChosen { by_peer: false });
            return;
        };
        let Some(mut init) = self.init.take() else {
            return;
        };
        if ke_group != algs.group.id() || algs.group != init.group {
            self.down(DownReason::InvalidSyntax);
            return;
        }
        let Some(dh) = init.dh.take() else { return };
        let Ok(g_ir) = dh.agree(ke_data) else {
            self.down(DownReason::InvalidSyntax);
            return;
        };
        let skeyseed = keys::skeyseed(&init.ni, nr, g_ir.as_bytes());
        let keys = IkeSaKeys::derive(&skeyseed, &init.ni, nr, init.spi_i, h.spi_r);
        let nat = self.nat_check(&p, init.spi_i, h.spi_r, from);
        if self.floating {
            // RFC 7296 section 2.23: after IKE_SA_INIT, on to the NAT-T port (and the non-ESP marker).
            self.floating = false;
            self.remote.set_port(self.home_port);
        }
        let Some((mut sa, sk_pi, sk_pr)) = IkeSa::new(
            Role::Negotiating,
            init.spi_i,
            h.spi_r,
            true,
            algs,
            keys,
            now,
            nat,
        ) else {
            return;
        };
        // IKE_AUTH: IDi, INITIAL_CONTACT, [IDr], AUTH, SA, TSi, TSr.
        let child_spi = self.new_child_spi();
        let id_body = self.cfg.local_id.body();
        let auth = psk_auth(
            self.cfg.psk.as_bytes(),
            &init.bytes,
            nr,
            sk_pi.as_bytes(),
            &id_body,
        );
        let mut payloads = vec![
            Payload::IdI(self.cfg.local_id.clone()),
            Payload::Notify(Notify::new(notify_type::INITIAL_CONTACT, Vec::new())),
        ];
        payloads.push(Payload::Auth {
            method: AUTH_PSK,
            data: auth.to_vec(),
        });
        payloads.push(Payload::Sa(
            self.cfg
                .esp_proposals
                .iter()
                .enumerate()
                .map(|(n, e)| e.to_wire(n as u8 + 1, child_spi, false))
                .collect(),
        ));
        payloads.push(Payload::TsI(self.cfg.local_ts.clone()));
        payloads.push(Payload::TsR(self.cfg.remote_ts.clone()));
        sa.auth = Some(AuthCtx {
            init_req: std::mem::take(&mut init.bytes),
            init_resp: msg.to_vec(),
            ni: init.ni.clone(),
            nr: nr.to_vec(),
            sk_pi,
            sk_pr,
            child_spi,
        });
        sa.next_id = 1;
        sa.queue.push_back(Queued {
            exchange: exchange::IKE_AUTH,
            payloads,
            req: Req::Auth,
        });
        self.sas.push(sa);
    }

    // ---------------------------------------------------------------------------------
    // IKE_AUTH
    // ---------------------------------------------------------------------------------

    /// Responder: verifies the initiator's AUTH, chooses the child SA, answers.
    fn on_auth_request(&mut self, now: Instant, i: usize, h: &Header, payloads: &[Payload]) {
        let p = Payloads(payloads);
        let Some(ctx) = self.sas[i].auth.take() else {
            self.drops.unexpected += 1;
            return;
        };
        let fail = |s: &mut IkeSession, notify: u16, reason: DownReason| {
            s.respond(i, h, error_response(notify, Vec::new()));
            s.fail_sa(now, i, reason);
        };
        let (Some(id_i), Some((method, auth))) = (p.id_i(), p.auth()) else {
            self.drops.invalid_syntax += 1;
            return fail(self, notify_type::INVALID_SYNTAX, DownReason::InvalidSyntax);
        };
        let expected = psk_auth(
            self.cfg.psk.as_bytes(),
            &ctx.init_req,
            &ctx.nr,
            ctx.sk_pi.as_bytes(),
            &id_i.body(),
        );
        let id_ok = self.cfg.remote_id.as_ref().is_none_or(|r| r == id_i);
        let idr_ok = p.id_r().is_none_or(|r| *r == self.cfg.local_id);
        if method != AUTH_PSK || !auth_equal(auth, &expected[..]) || !id_ok || !idr_ok {
            return fail(
                self,
                notify_type::AUTHENTICATION_FAILED,
                DownReason::AuthFailed { by_peer: false },
            );
        }
        let remote_id = id_i.clone();
        // Our AUTH.
        let id_body = self.cfg.local_id.body();
        let our_auth = psk_auth(
            self.cfg.psk.as_bytes(),
            &ctx.init_resp,
            &ctx.ni,
            ctx.sk_pr.as_bytes(),
            &id_body,
        );
        let mut response = vec![
            Payload::IdR(self.cfg.local_id.clone()),
            Payload::Auth {
                method: AUTH_PSK,
                data: our_auth.to_vec(),
            },
        ];
        // The first child.
        let choice = p
            .sa()
            .and_then(|sa| select_esp(&self.cfg.esp_proposals, sa, false));
        let ts_i = p
            .ts_i()
            .map(|t| narrow(&self.cfg.remote_ts, t))
            .unwrap_or_default();
        let ts_r = p
            .ts_r()
            .map(|t| narrow(&self.cfg.local_ts, t))
            .unwrap_or_default();
        let child_error = match (&choice, ts_i.is_empty() || ts_r.is_empty()) {
            (None, _) => Some((
                notify_type::NO_PROPOSAL_CHOSEN,
                DownReason::NoProposalChosen { by_peer: false },
            )),
            (_, true) => Some((
                notify_type::TS_UNACCEPTABLE,
                DownReason::TsUnacceptable { by_peer: false },
            )),
            _ => None,
        };
        if let (Some(c), None) = (choice, child_error) {
            let spi_in = self.new_child_spi();
            response.push(Payload::Sa(vec![esp_answer(c.number, c.algs, spi_in)]));
            self.negotiated_ts = (ts_r.clone(), ts_i.clone());
            response.push(Payload::TsI(ts_i));
            response.push(Payload::TsR(ts_r));
            self.respond(i, h, response);
            let (i2r, r2i) = child_keymat(self.sas[i].sk_d.as_bytes(), None, &ctx.ni, &ctx.nr);
            self.establish(now, i, remote_id);
            self.add_child(now, spi_in, c.peer_spi, c.algs, i2r, Some((r2i, false)));
        } else if let Some((notify, reason)) = child_error {
            // Authenticated, but no child: braid has no use for the IKE SA alone.
            response.push(Payload::Notify(Notify::new(notify, Vec::new())));
            self.respond(i, h, response);
            let until = later(now, self.cfg.retransmit.budget());
            self.sas[i].role = Role::Old { until };
            if self.current().is_none() {
                self.events.push_back(Event::IkeDown { reason });
            }
        }
    }

    /// SA `i` finished IKE_AUTH: it becomes the current SA, replacing any other.
    fn establish(&mut self, now: Instant, i: usize, remote_id: Identity) {
        if let Some(old) = self.current() {
            // The peer restarted and built a new IKE SA: the old one and its children go.
            let spi = (self.sas[i].spi_i, self.sas[i].spi_r);
            self.sas.remove(old);
            self.down(DownReason::Replaced);
            let Some(j) = self.sas.iter().position(|s| (s.spi_i, s.spi_r) == spi) else {
                return;
            };
            return self.establish_at(now, j, remote_id);
        }
        self.establish_at(now, i, remote_id);
    }

    fn establish_at(&mut self, now: Instant, i: usize, remote_id: Identity) {
        let life = self.jitter(self.cfg.ike_lifetime);
        let sa = &mut self.sas[i];
        sa.role = Role::Current;
        sa.since = now;
        sa.rekey_at = Some(later(now, life));
        sa.auth = None;
        let ev = Event::IkeUp {
            spi_i: sa.spi_i,
            spi_r: sa.spi_r,
            initiator: sa.we_initiated,
            algorithms: sa.algs,
            nat: sa.nat,
            remote_id,
        };
        self.events.push_back(ev);
    }

    /// Adds a child SA and emits its install events: inbound now; outbound now if
    /// `outbound` is given, else kept until the old SA's Delete. With `outbound`: whether the
    /// peer has its inbound half already (we are the exchange's initiator).
    fn add_child(
        &mut self,
        now: Instant,
        spi_in: u32,
        spi_out: u32,
        algs: EspAlgorithms,
        inbound: Keymat,
        outbound: Option<(Keymat, bool)>,
    ) -> ChildId {
        let id = self.new_child_id();
        let soft = self.jitter(self.cfg.child_lifetime);
        let soft_bytes = self.cfg.child_bytes.map(|b| {
            let r = f64::from(self.rng.u32()) / f64::from(u32::MAX);
            b - ((b as f64) * 0.1 * r) as u64
        });
        self.events.push_back(Event::ChildInstallInbound {
            child: id,
            spi: Spi(spi_in),
            cipher: algs.cipher,
            esn: algs.esn,
            keymat: inbound,
        });
        let has_out = outbound.is_some();
        if let Some((k, peer_ready)) = outbound {
            self.events.push_back(Event::ChildInstallOutbound {
                child: id,
                spi: Spi(spi_out),
                cipher: algs.cipher,
                esn: algs.esn,
                keymat: k,
                peer_ready,
            });
        }
        self.children.push(Child {
            id,
            spi_in,
            spi_out,
            algs,
            since: now,
            soft_at: later(now, soft),
            hard_at: later(now, self.cfg.child_lifetime),
            soft_bytes,
            bytes: 0,
            state: ChildState::Active,
            outbound: has_out,
            pending_out: None,
        });
        id
    }

    /// Initiator: the IKE_AUTH response.
    fn on_auth_response(
        &mut self,
        now: Instant,
        i: usize,
        payloads: Result<Vec<Payload>, DecodeError>,
    ) {
        let Ok(payloads) = payloads else {
            return self.fail_sa(now, i, DownReason::InvalidSyntax);
        };
        let p = Payloads(&payloads);
        let Some(ctx) = self.sas[i].auth.take() else {
            return;
        };
        if p.notify(notify_type::AUTHENTICATION_FAILED).is_some() {
            return self.fail_sa(now, i, DownReason::AuthFailed { by_peer: true });
        }
        let (Some(id_r), Some((method, auth))) = (p.id_r(), p.auth()) else {
            let reason = match p.first_error().map(|e| e.kind) {
                Some(notify_type::NO_PROPOSAL_CHOSEN) => {
                    DownReason::NoProposalChosen { by_peer: true }
                }
                Some(notify_type::TS_UNACCEPTABLE) => DownReason::TsUnacceptable { by_peer: true },
                Some(k) => DownReason::PeerError(k),
                None => DownReason::InvalidSyntax,
            };
            return self.fail_sa(now, i, reason);
        };
        let expected = psk_auth(
            self.cfg.psk.as_bytes(),
            &ctx.init_resp,
            &ctx.ni,
            ctx.sk_pr.as_bytes(),
            &id_r.body(),
        );
        let id_ok = self.cfg.remote_id.as_ref().is_none_or(|r| r == id_r);
        if method != AUTH_PSK || !auth_equal(auth, &expected[..]) || !id_ok {
            // RFC 7296 section 2.21.2: tell the peer in a separate INFORMATIONAL exchange.
            self.queue(
                i,
                exchange::INFORMATIONAL,
                error_response(notify_type::AUTHENTICATION_FAILED, Vec::new()),
                Req::DeleteIke,
            );
            let until = later(now, self.cfg.retransmit.budget());
            self.sas[i].role = Role::Old { until };
            if self.current().is_none() {
                self.down(DownReason::AuthFailed { by_peer: false });
            }
            return;
        }
        let remote_id = id_r.clone();
        // The first child.
        let child_error = p.first_error().map(|e| match e.kind {
            notify_type::NO_PROPOSAL_CHOSEN => DownReason::NoProposalChosen { by_peer: true },
            notify_type::TS_UNACCEPTABLE => DownReason::TsUnacceptable { by_peer: true },
            k => DownReason::PeerError(k),
        });
        let choice = p
            .sa()
            .and_then(|sa| accept_esp(&self.cfg.esp_proposals, sa, false));
        let ts_ok = p.ts_i().is_some_and(|t| within(&self.cfg.local_ts, t))
            && p.ts_r().is_some_and(|t| within(&self.cfg.remote_ts, t));
        let child_error = child_error.or(match (choice, ts_ok) {
            (None, _) => Some(DownReason::NoProposalChosen { by_peer: false }),
            (_, false) => Some(DownReason::TsUnacceptable { by_peer: false }),
            _ => None,
        });
        if let Some(reason) = child_error {
            self.queue(
                i,
                exchange::INFORMATIONAL,
                vec![Payload::Delete(Delete::Ike)],
                Req::DeleteIke,
            );
            let until = later(now, self.cfg.retransmit.budget());
            self.sas[i].role = Role::Old { until };
            if self.current().is_none() {
                self.down(reason);
            }
            return;
        }
        let Some(c) = choice else { return };
        self.negotiated_ts = (
            p.ts_i().unwrap_or_default().to_vec(),
            p.ts_r().unwrap_or_default().to_vec(),
        );
        self.establish(now, i, remote_id);
        let Some(i) = self.current() else { return };
        let (i2r, r2i) = child_keymat(self.sas[i].sk_d.as_bytes(), None, &ctx.ni, &ctx.nr);
        self.add_child(
            now,
            ctx.child_spi,
            c.peer_spi,
            c.algs,
            r2i,
            Some((i2r, true)),
        );
    }

    // ---------------------------------------------------------------------------------
    // Requests on an established SA
    // ---------------------------------------------------------------------------------

    fn on_request(&mut self, now: Instant, i: usize, h: &Header, payloads: &[Payload]) {
        match (h.exchange, self.sas[i].role) {
            (exchange::IKE_AUTH, Role::Negotiating) if !self.sas[i].we_initiated => {
                self.on_auth_request(now, i, h, payloads)
            }
            (exchange::INFORMATIONAL, _) => self.on_informational(now, i, h, payloads),
            (exchange::CREATE_CHILD_SA, Role::Current) => {
                self.on_create_child_request(now, i, h, payloads)
            }
            (exchange::CREATE_CHILD_SA, _) => {
                self.respond(
                    i,
                    h,
                    error_response(notify_type::TEMPORARY_FAILURE, Vec::new()),
                );
            }
            _ => {
                self.drops.unexpected += 1;
                self.respond(
                    i,
                    h,
                    error_response(notify_type::INVALID_SYNTAX, Vec::new()),
                );
            }
        }
    }

    fn on_informational(&mut self, now: Instant, i: usize, h: &Header, payloads: &[Payload]) {
        let p = Payloads(payloads);
        if p.deletes().any(|d| *d == Delete::Ike) {
            self.respond(i, h, Vec::new());
            let role = self.sas[i].role;
            self.sas.remove(i);
            if role == Role::Current {
                self.sas.retain(|s| matches!(s.role, Role::Old { .. }));
                self.down(DownReason::DeletedByPeer);
            }
            return;
        }
        if p.notify(notify_type::AUTHENTICATION_FAILED).is_some() {
            self.respond(i, h, Vec::new());
            return self.fail_sa(now, i, DownReason::AuthFailed { by_peer: true });
        }
        let mut ours = Vec::new();
        for d in p.deletes() {
            if let Delete::Esp(spis) = d {
                for &spi in spis {
                    if let Some(spi_in) = self.peer_deleted_child(now, spi) {
                        ours.push(spi_in);
                    }
                }
            }
        }
        let response = if ours.is_empty() {
            Vec::new()
        } else {
            vec![Payload::Delete(Delete::Esp(ours))]
        };
        self.respond(i, h, response);
    }

    /// The peer deleted the child whose outbound SPI is `spi_out`: returns our inbound SPI.
    fn peer_deleted_child(&mut self, now: Instant, spi_out: u32) -> Option<u32> {
        let idx = self.children.iter().position(|c| c.spi_out == spi_out)?;
        let ch = self.children.remove(idx);
        match ch.state {
            ChildState::RekeyedByPeer { successor } => {
                // Make-before-break, responder side: switch to the new SA now.
                self.activate_outbound(successor);
                self.removals
                    .push((later(now, self.cfg.grace), ch.id, ch.spi_in));
            }
            ChildState::Redundant => {
                self.events.push_back(Event::ChildRemoveInbound {
                    child: ch.id,
                    spi: Spi(ch.spi_in),
                });
            }
            _ => {
                if ch.outbound {
                    self.events.push_back(Event::ChildRemoveOutbound {
                        child: ch.id,
                        spi: Spi(ch.spi_out),
                    });
                }
                self.removals
                    .push((later(now, self.cfg.grace), ch.id, ch.spi_in));
                if self.cfg.initiator && !self.has_live_child() {
                    self.recreate_at = Some(later(now, CHILD_RECREATE));
                }
            }
        }
        Some(ch.spi_in)
    }

    /// Whether a child SA carries (or is about to carry) traffic: active, being rekeyed, or being
    /// created by either side.
    fn has_live_child(&self) -> bool {
        self.children.iter().any(|c| {
            matches!(
                c.state,
                ChildState::Active | ChildState::Rekeying | ChildState::RekeyedByPeer { .. }
            ) || c.pending_out.is_some()
        })
    }

    /// Whether a CREATE_CHILD_SA of ours for a new (not rekeyed) child SA is queued or in flight.
    fn creating_child(&self) -> bool {
        let new_child = |r: &Req| matches!(r, Req::CreateChild(c) if c.rekey.is_none());
        self.sas.iter().any(|sa| {
            sa.pending.as_ref().is_some_and(|p| new_child(&p.req))
                || sa.queue.iter().any(|q| new_child(&q.req))
        })
    }

    fn activate_outbound(&mut self, id: ChildId) {
        let Some(ch) = self.child_mut(id) else { return };
        let Some(k) = ch.pending_out.take() else {
            return;
        };
        ch.outbound = true;
        let ev = Event::ChildInstallOutbound {
            child: ch.id,
            spi: Spi(ch.spi_out),
            cipher: ch.algs.cipher,
            esn: ch.algs.esn,
            keymat: k,
            peer_ready: true,
        };
        self.events.push_back(ev);
    }

    fn on_create_child_request(
        &mut self,
        now: Instant,
        i: usize,
        h: &Header,
        payloads: &[Payload],
    ) {
        let p = Payloads(payloads);
        let Some(sa) = p.sa() else {
            return self.respond(
                i,
                h,
                error_response(notify_type::INVALID_SYNTAX, Vec::new()),
            );
        };
        if sa.first().is_some_and(|prop| prop.protocol == PROTO_IKE) {
            return self.on_ike_rekey_request(now, i, h, &p);
        }
        let Some(ni) = p.nonce() else {
            return self.respond(
                i,
                h,
                error_response(notify_type::INVALID_SYNTAX, Vec::new()),
            );
        };
        // Which child is being rekeyed (REKEY_SA names the peer's inbound SPI).
        let mut rekeyed = None;
        if let Some(n) = p.notify(notify_type::REKEY_SA) {
            let spi = <[u8; 4]>::try_from(n.spi.as_slice())
                .map(u32::from_be_bytes)
                .ok();
            let found = spi.and_then(|s| {
                self.children
                    .iter()
                    .find(|c| c.spi_out == s && n.protocol == PROTO_ESP)
            });
            let Some(ch) = found else {
                let mut notify = Notify::new(notify_type::CHILD_SA_NOT_FOUND, Vec::new());
                notify.protocol = PROTO_ESP;
                notify.spi = n.spi.clone();
                return self.respond(i, h, vec![Payload::Notify(notify)]);
            };
            if !matches!(ch.state, ChildState::Active | ChildState::Rekeying) {
                // RFC 7296 section 2.25: already being replaced or closed.
                return self.respond(
                    i,
                    h,
                    error_response(notify_type::TEMPORARY_FAILURE, Vec::new()),
                );
            }
            rekeyed = Some(ch.id);
        }
        let Some(c) = select_esp(&self.cfg.esp_proposals, sa, true) else {
            return self.respond(
                i,
                h,
                error_response(notify_type::NO_PROPOSAL_CHOSEN, Vec::new()),
            );
        };
        let mut g_ir = None;
        let mut our_ke = None;
        if let Some(group) = c.algs.group {
            match p.ke() {
                Some((g, data)) if g == group.id() => {
                    let Some(dh) = self.new_dh(group) else { return };
                    our_ke = Some(dh.public_value().to_vec());
                    match dh.agree(data) {
                        Ok(s) => g_ir = Some(s),
                        Err(_) => {
                            return self.respond(
                                i,
                                h,
                                error_response(notify_type::INVALID_SYNTAX, Vec::new()),
                            )
                        }
                    }
                }
                _ => {
                    let want = group.id().to_be_bytes().to_vec();
                    return self.respond(
                        i,
                        h,
                        error_response(notify_type::INVALID_KE_PAYLOAD, want),
                    );
                }
            }
        }
        let ts_i = p
            .ts_i()
            .map(|t| narrow(&self.cfg.remote_ts, t))
            .unwrap_or_default();
        let ts_r = p
            .ts_r()
            .map(|t| narrow(&self.cfg.local_ts, t))
            .unwrap_or_default();
        if ts_i.is_empty() || ts_r.is_empty() {
            return self.respond(
                i,
                h,
                error_response(notify_type::TS_UNACCEPTABLE, Vec::new()),
            );
        }
        let nr = self.rng.bytes(NONCE_LEN);
        let spi_in = self.new_child_spi();
        let mut response = vec![
            Payload::Sa(vec![esp_answer(c.number, c.algs, spi_in)]),
            Payload::Nonce(nr.clone()),
        ];
        if let (Some(group), Some(ke)) = (c.algs.group, our_ke) {
            response.push(Payload::Ke {
                group: group.id(),
                data: ke,
            });
        }
        self.negotiated_ts = (ts_r.clone(), ts_i.clone());
        response.push(Payload::TsI(ts_i));
        response.push(Payload::TsR(ts_r));
        self.respond(i, h, response);
        let (i2r, r2i) = child_keymat(
            self.sas[i].sk_d.as_bytes(),
            g_ir.as_ref().map(|s| s.as_bytes()),
            ni,
            &nr,
        );
        match rekeyed {
            None => {
                self.add_child(now, spi_in, c.peer_spi, c.algs, i2r, Some((r2i, false)));
            }
            Some(old) => {
                // Make-before-break: inbound now, outbound when the old SA's Delete arrives.
                let new = self.add_child(now, spi_in, c.peer_spi, c.algs, i2r, None);
                if let Some(ch) = self.child_mut(new) {
                    ch.pending_out = Some(r2i);
                }
                // Our own rekey of the same child: in flight (collision) or only queued.
                let mut collided = false;
                if let Some(Pending {
                    req: Req::CreateChild(r),
                    ..
                }) = self.sas[i].pending.as_mut()
                {
                    if r.rekey == Some(old) {
                        r.collision = Some(ChildCollision {
                            peer_ni: ni.to_vec(),
                            our_nr: nr.clone(),
                            child: new,
                        });
                        collided = true;
                    }
                }
                if !collided {
                    self.sas[i]
                        .queue
                        .retain(|q| !matches!(&q.req, Req::CreateChild(r) if r.rekey == Some(old)));
                }
                if let Some(ch) = self.child_mut(old) {
                    ch.state = ChildState::RekeyedByPeer { successor: new };
                }
            }
        }
    }

    fn on_ike_rekey_request(&mut self, now: Instant, i: usize, h: &Header, p: &Payloads<'_>) {
        let (Some(sa), Some(ni)) = (p.sa(), p.nonce()) else {
            return self.respond(
                i,
                h,
                error_response(notify_type::INVALID_SYNTAX, Vec::new()),
            );
        };
        let Some((number, algs)) = select_ike(&self.cfg.ike_proposals, sa) else {
            return self.respond(
                i,
                h,
                error_response(notify_type::NO_PROPOSAL_CHOSEN, Vec::new()),
            );
        };
        let peer_spi = sa
            .iter()
            .find(|prop| prop.number == number)
            .and_then(|prop| <[u8; 8]>::try_from(prop.spi.as_slice()).ok())
            .map(u64::from_be_bytes)
            .filter(|&s| s != 0);
        let Some(peer_spi) = peer_spi else {
            return self.respond(
                i,
                h,
                error_response(notify_type::INVALID_SYNTAX, Vec::new()),
            );
        };
        let ke = match p.ke() {
            Some((g, data)) if g == algs.group.id() => data,
            _ => {
                let want = algs.group.id().to_be_bytes().to_vec();
                return self.respond(i, h, error_response(notify_type::INVALID_KE_PAYLOAD, want));
            }
        };
        let Some(dh) = self.new_dh(algs.group) else {
            return;
        };
        let our_ke = dh.public_value().to_vec();
        let Ok(g_ir) = dh.agree(ke) else {
            return self.respond(
                i,
                h,
                error_response(notify_type::INVALID_SYNTAX, Vec::new()),
            );
        };
        let nr = self.rng.bytes(NONCE_LEN);
        let spi_r = self.new_ike_spi();
        let skeyseed = keys::skeyseed_rekey(self.sas[i].sk_d.as_bytes(), g_ir.as_bytes(), ni, &nr);
        let keys = IkeSaKeys::derive(&skeyseed, ni, &nr, peer_spi, spi_r);
        let nat = self.sas[i].nat;
        let Some((mut new, _, _)) =
            IkeSa::new(Role::Current, peer_spi, spi_r, false, algs, keys, now, nat)
        else {
            return;
        };
        let life = self.jitter(self.cfg.ike_lifetime);
        new.rekey_at = Some(later(now, life));
        self.respond(
            i,
            h,
            vec![
                Payload::Sa(vec![ike_answer(number, algs, &spi_r.to_be_bytes())]),
                Payload::Nonce(nr.clone()),
                Payload::Ke {
                    group: algs.group.id(),
                    data: our_ke,
                },
            ],
        );
        // Our own IKE rekey in flight: decide when its response arrives.
        if let Some(Pending {
            req: Req::RekeyIke(r),
            ..
        }) = self.sas[i].pending.as_mut()
        {
            r.collision = Some(IkeCollision {
                peer_ni: ni.to_vec(),
                our_nr: nr,
                sa: Box::new(new),
            });
            return;
        }
        self.sas[i]
            .queue
            .retain(|q| !matches!(q.req, Req::RekeyIke(_)));
        self.switch_ike(now, i, new, false);
    }

    /// Makes `new` the current IKE SA in place of SA `i`, which stays (as `Old`) to finish its
    /// exchanges; with `delete_old` we (the winning initiator) delete it.
    fn switch_ike(&mut self, now: Instant, i: usize, mut new: IkeSa, delete_old: bool) {
        let until = later(now, self.cfg.retransmit.budget().saturating_mul(2));
        let old = &mut self.sas[i];
        old.role = Role::Old { until };
        new.role = Role::Current;
        new.last_recv = now;
        // Requests not yet sent move to the new SA (RFC 7296 section 2.18).
        new.queue = std::mem::take(&mut old.queue);
        new.queue
            .retain(|q| !matches!(q.req, Req::RekeyIke(_) | Req::Dpd));
        if delete_old {
            old.queue.push_back(Queued {
                exchange: exchange::INFORMATIONAL,
                payloads: vec![Payload::Delete(Delete::Ike)],
                req: Req::DeleteIke,
            });
        }
        let ev = Event::IkeRekeyed {
            spi_i: new.spi_i,
            spi_r: new.spi_r,
            algorithms: new.algs,
        };
        self.events.push_back(ev);
        self.sas.push(new);
    }

    // ---------------------------------------------------------------------------------
    // Our requests
    // ---------------------------------------------------------------------------------

    fn queue_ike_rekey(&mut self, c: usize) {
        let group = self.sas[c].algs.group;
        self.queue_ike_rekey_with(c, group, 0);
    }

    fn queue_ike_rekey_with(&mut self, c: usize, group: DhGroup, retries: u32) {
        let spi = self.new_ike_spi();
        let ni = self.rng.bytes(NONCE_LEN);
        let Some(dh) = self.new_dh(group) else { return };
        let payloads = vec![
            Payload::Sa(
                self.cfg
                    .ike_proposals
                    .iter()
                    .enumerate()
                    .map(|(n, prop)| prop.to_wire(n as u8 + 1, &spi.to_be_bytes()))
                    .collect(),
            ),
            Payload::Nonce(ni.clone()),
            Payload::Ke {
                group: group.id(),
                data: dh.public_value().to_vec(),
            },
        ];
        let req = Req::RekeyIke(IkeRekeyReq {
            spi,
            ni,
            dh: Some(dh),
            retries,
            collision: None,
        });
        self.queue(c, exchange::CREATE_CHILD_SA, payloads, req);
    }

    fn queue_child_rekey(&mut self, rekey: Option<ChildId>) {
        let group = self
            .cfg
            .esp_proposals
            .first()
            .and_then(|p| p.groups.first().copied());
        self.queue_child_rekey_with(rekey, group, 0);
    }

    fn queue_child_rekey_with(
        &mut self,
        rekey: Option<ChildId>,
        group: Option<DhGroup>,
        retries: u32,
    ) {
        let Some(c) = self.current() else { return };
        let mut payloads = Vec::new();
        if let Some(old) = rekey {
            let Some(ch) = self.child_mut(old) else {
                return;
            };
            ch.state = ChildState::Rekeying;
            let mut n = Notify::new(notify_type::REKEY_SA, Vec::new());
            n.protocol = PROTO_ESP;
            n.spi = ch.spi_in.to_be_bytes().to_vec();
            payloads.push(Payload::Notify(n));
        }
        let spi_in = self.new_child_spi();
        let ni = self.rng.bytes(NONCE_LEN);
        let dh = match group {
            Some(g) => match self.new_dh(g) {
                Some(d) => Some(d),
                None => return,
            },
            None => None,
        };
        payloads.push(Payload::Sa(
            self.cfg
                .esp_proposals
                .iter()
                .enumerate()
                .map(|(n, e)| e.to_wire(n as u8 + 1, spi_in, true))
                .collect(),
        ));
        payloads.push(Payload::Nonce(ni.clone()));
        if let Some(d) = &dh {
            payloads.push(Payload::Ke {
                group: d.group().id(),
                data: d.public_value().to_vec(),
            });
        }
        payloads.push(Payload::TsI(self.cfg.local_ts.clone()));
        payloads.push(Payload::TsR(self.cfg.remote_ts.clone()));
        let req = Req::CreateChild(ChildReq {
            rekey,
            spi_in,
            ni,
            dh,
            retries,
            collision: None,
        });
        self.queue(c, exchange::CREATE_CHILD_SA, payloads, req);
    }

    /// Hard expiry: stop sending on the child, delete it, and create a replacement if it was
    /// the last one.
    fn expire_child(&mut self, _now: Instant, id: ChildId) {
        let Some(ch) = self.child_mut(id) else { return };
        ch.state = ChildState::Deleting;
        let (spi_in, spi_out, outbound) = (ch.spi_in, ch.spi_out, ch.outbound);
        ch.outbound = false;
        if outbound {
            self.events.push_back(Event::ChildRemoveOutbound {
                child: id,
                spi: Spi(spi_out),
            });
        }
        if let Some(c) = self.current() {
            self.queue(
                c,
                exchange::INFORMATIONAL,
                vec![Payload::Delete(Delete::Esp(vec![spi_in]))],
                Req::DeleteChildren(vec![spi_in]),
            );
        }
        let others = self
            .children
            .iter()
            .any(|c| c.id != id && matches!(c.state, ChildState::Active | ChildState::Rekeying));
        if !others {
            self.queue_child_rekey(None);
        }
    }

    // ---------------------------------------------------------------------------------
    // Responses to our requests
    // ---------------------------------------------------------------------------------

    fn on_response(
        &mut self,
        now: Instant,
        i: usize,
        _exchange: u8,
        req: Req,
        payloads: Result<Vec<Payload>, DecodeError>,
    ) {
        match req {
            Req::Auth => self.on_auth_response(now, i, payloads),
            Req::CreateChild(r) => match payloads {
                Ok(p) => self.on_child_response(now, i, r, &p),
                Err(_) => self.child_rekey_failed(now, r.rekey, notify_type::INVALID_SYNTAX),
            },
            Req::RekeyIke(r) => match payloads {
                Ok(p) => self.on_ike_rekey_response(now, i, r, &p),
                Err(_) => self.ike_rekey_failed(now, i),
            },
            Req::DeleteChildren(spis) => {
                for spi in spis {
                    if let Some(idx) = self.children.iter().position(|c| c.spi_in == spi) {
                        let ch = self.children.remove(idx);
                        self.removals
                            .push((later(now, self.cfg.grace), ch.id, ch.spi_in));
                    }
                }
            }
            Req::DeleteIke => {
                self.sas.remove(i);
            }
            Req::Dpd => {}
        }
    }

    fn child_rekey_failed(&mut self, now: Instant, rekey: Option<ChildId>, notify: u16) {
        let retry = later(now, self.cfg.retransmit.timeout(0));
        self.events.push_back(Event::ChildRekeyFailed {
            child: rekey,
            notify,
        });
        if let Some(ch) = rekey.and_then(|id| self.child_mut(id)) {
            if ch.state == ChildState::Rekeying {
                ch.state = ChildState::Active;
            }
            ch.soft_at = retry;
        }
    }

    fn ike_rekey_failed(&mut self, now: Instant, i: usize) {
        if self.sas[i].role == Role::Current {
            self.sas[i].rekey_at = Some(later(now, self.cfg.retransmit.timeout(0)));
        }
    }

    fn on_child_response(&mut self, now: Instant, i: usize, mut r: ChildReq, payloads: &[Payload]) {
        let p = Payloads(payloads);
        if let Some(e) = p.first_error() {
            if e.kind == notify_type::INVALID_KE_PAYLOAD {
                let g = <[u8; 2]>::try_from(e.data.as_slice())
                    .ok()
                    .and_then(|g| DhGroup::from_id(u16::from_be_bytes(g)))
                    .filter(|g| self.cfg.esp_proposals.iter().any(|p| p.groups.contains(g)));
                if let (Some(g), true) = (g, r.retries < MAX_INIT_RETRIES) {
                    // The collision record, if any, refers to the old exchange; the peer's
                    // child stays as it is.
                    return self.queue_child_rekey_with(r.rekey, Some(g), r.retries + 1);
                }
            }
            if let Some(col) = r.collision.take() {
                // We lost the race outright (TEMPORARY_FAILURE): the peer's child replaces
                // the old one when its Delete arrives.
                if let Some(ch) = r.rekey.and_then(|id| self.child_mut(id)) {
                    ch.state = ChildState::RekeyedByPeer {
                        successor: col.child,
                    };
                }
                return;
            }
            return self.child_rekey_failed(now, r.rekey, e.kind);
        }
        let choice = p
            .sa()
            .and_then(|sa| accept_esp(&self.cfg.esp_proposals, sa, true));
        let ts_ok = p.ts_i().is_some_and(|t| within(&self.cfg.local_ts, t))
            && p.ts_r().is_some_and(|t| within(&self.cfg.remote_ts, t));
        let (Some(c), Some(nr)) = (choice, p.nonce()) else {
            self.queue_delete_child(r.spi_in);
            return self.child_rekey_failed(now, r.rekey, notify_type::NO_PROPOSAL_CHOSEN);
        };
        if !ts_ok {
            self.queue_delete_child(r.spi_in);
            return self.child_rekey_failed(now, r.rekey, notify_type::TS_UNACCEPTABLE);
        }
        let g_ir = match (c.algs.group, r.dh.take(), p.ke()) {
            (None, _, _) => None,
            (Some(g), Some(dh), Some((kg, data))) if dh.group() == g && kg == g.id() => {
                match dh.agree(data) {
                    Ok(s) => Some(s),
                    Err(_) => {
                        self.queue_delete_child(r.spi_in);
                        return self.child_rekey_failed(now, r.rekey, notify_type::INVALID_SYNTAX);
                    }
                }
            }
            _ => {
                self.queue_delete_child(r.spi_in);
                return self.child_rekey_failed(now, r.rekey, notify_type::INVALID_SYNTAX);
            }
        };
        let (i2r, r2i) = child_keymat(
            self.sas[i].sk_d.as_bytes(),
            g_ir.as_ref().map(|s| s.as_bytes()),
            &r.ni,
            nr,
        );
        // RFC 7296 section 2.8.1: with a collision, the exchange holding the lowest nonce
        // created the redundant SA.
        if let Some(col) = r.collision.take() {
            let ours = lower(&r.ni, nr);
            let theirs = lower(&col.peer_ni, &col.our_nr);
            if ours < theirs {
                // Ours is redundant: never installed, deleted at once. The peer deletes the
                // old child, which switches us to its child.
                self.queue_delete_child_raw(r.spi_in);
                if let Some(ch) = r.rekey.and_then(|id| self.child_mut(id)) {
                    ch.state = ChildState::RekeyedByPeer {
                        successor: col.child,
                    };
                }
                return;
            }
            // Ours survives; the peer deletes its child.
            if let Some(ch) = self.child_mut(col.child) {
                ch.state = ChildState::Redundant;
                ch.pending_out = None;
            }
        }
        self.negotiated_ts = (
            p.ts_i().unwrap_or_default().to_vec(),
            p.ts_r().unwrap_or_default().to_vec(),
        );
        self.add_child(now, r.spi_in, c.peer_spi, c.algs, r2i, Some((i2r, true)));
        if let Some(old) = r.rekey {
            if let Some(ch) = self.child_mut(old) {
                ch.state = ChildState::Rekeyed;
                let spi = ch.spi_in;
                self.queue_delete_child(spi);
            }
        }
    }

    /// Queues a Delete for one of our children (by our inbound SPI).
    fn queue_delete_child(&mut self, spi_in: u32) {
        self.queue_delete_child_raw(spi_in);
    }

    fn queue_delete_child_raw(&mut self, spi_in: u32) {
        if let Some(c) = self.current() {
            self.queue(
                c,
                exchange::INFORMATIONAL,
                vec![Payload::Delete(Delete::Esp(vec![spi_in]))],
                Req::DeleteChildren(vec![spi_in]),
            );
        }
    }

    fn on_ike_rekey_response(
        &mut self,
        now: Instant,
        i: usize,
        mut r: IkeRekeyReq,
        payloads: &[Payload],
    ) {
        let p = Payloads(payloads);
        if let Some(e) = p.first_error() {
            if e.kind == notify_type::INVALID_KE_PAYLOAD && r.retries < MAX_INIT_RETRIES {
                let g = <[u8; 2]>::try_from(e.data.as_slice())
                    .ok()
                    .and_then(|g| DhGroup::from_id(u16::from_be_bytes(g)))
                    .filter(|g| self.cfg.ike_proposals.iter().any(|p| p.groups.contains(g)));
                if let Some(g) = g {
                    if let Some(col) = r.collision.take() {
                        // The peer's rekey stands alone.
                        return self.switch_ike(now, i, *col.sa, false);
                    }
                    return self.queue_ike_rekey_with(i, g, r.retries + 1);
                }
            }
            if let Some(col) = r.collision.take() {
                return self.switch_ike(now, i, *col.sa, false);
            }
            return self.ike_rekey_failed(now, i);
        }
        let algs = p
            .sa()
            .and_then(|sa| accept_ike(&self.cfg.ike_proposals, sa));
        let peer_spi = p
            .sa()
            .and_then(|sa| sa.first())
            .and_then(|prop| <[u8; 8]>::try_from(prop.spi.as_slice()).ok())
            .map(u64::from_be_bytes)
            .filter(|&s| s != 0);
        let (Some(algs), Some(peer_spi), Some(nr), Some((kg, ke)), Some(dh)) =
            (algs, peer_spi, p.nonce(), p.ke(), r.dh.take())
        else {
            if let Some(col) = r.collision.take() {
                return self.switch_ike(now, i, *col.sa, false);
            }
            return self.ike_rekey_failed(now, i);
        };
        if kg != algs.group.id() || dh.group() != algs.group {
            return self.ike_rekey_failed(now, i);
        }
        let Ok(g_ir) = dh.agree(ke) else {
            return self.ike_rekey_failed(now, i);
        };
        let skeyseed =
            keys::skeyseed_rekey(self.sas[i].sk_d.as_bytes(), g_ir.as_bytes(), &r.ni, nr);
        let keys = IkeSaKeys::derive(&skeyseed, &r.ni, nr, r.spi, peer_spi);
        let nat = self.sas[i].nat;
        let Some((mut new, _, _)) =
            IkeSa::new(Role::Current, r.spi, peer_spi, true, algs, keys, now, nat)
        else {
            return;
        };
        let life = self.jitter(self.cfg.ike_lifetime);
        new.rekey_at = Some(later(now, life));
        if let Some(col) = r.collision.take() {
            let ours = lower(&r.ni, nr);
            let theirs = lower(&col.peer_ni, &col.our_nr);
            let until = later(now, self.cfg.retransmit.budget().saturating_mul(2));
            if ours < theirs {
                // Ours is redundant: we delete it; the peer's SA takes over and the peer
                // deletes the old one.
                new.role = Role::Old { until };
                new.queue.push_back(Queued {
                    exchange: exchange::INFORMATIONAL,
                    payloads: vec![Payload::Delete(Delete::Ike)],
                    req: Req::DeleteIke,
                });
                self.switch_ike(now, i, *col.sa, false);
                self.sas.push(new);
            } else {
                // Ours survives: the peer deletes its SA; we delete the old one.
                let mut theirs_sa = *col.sa;
                theirs_sa.role = Role::Old { until };
                self.switch_ike(now, i, new, true);
                self.sas.push(theirs_sa);
            }
            return;
        }
        self.switch_ike(now, i, new, true);
    }
}

#[cfg(test)]
#[path = "session_tests.rs"]
mod tests;
