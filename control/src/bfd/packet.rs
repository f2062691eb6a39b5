//! The BFD Control packet of RFC 5880 section 4.1 (mandatory section only): a plain [`ControlPacket`] with
//! [`ControlPacket::decode`] and [`ControlPacket::encode`]. Decoding applies every reception check of RFC 5880
//! 6.8.6 that is about the packet itself (version, length, detect mult, M bit, discriminators); the checks that
//! need a session (demultiplexing on Your Discriminator) are [`super::session`]'s.
//!
//! Deliberately left out: authentication (section 4.2). braid configures none, so a packet with the A bit set
//! is refused with [`DecodeError::AuthenticationNotSupported`] rather than silently accepted. The Multipoint
//! bit is reserved (RFC 5880 says it MUST be zero) and is neither represented nor sent.

use std::fmt;
use std::time::Duration;

/// The BFD protocol version of RFC 5880.
pub const BFD_VERSION: u8 = 1;

/// Length of a Control packet without authentication section, bytes.
pub const CONTROL_LEN: usize = 24;

/// Byte ranges of the Control packet fields (RFC 5880 4.1).
mod field {
    pub const VERS_DIAG: usize = 0;
    pub const STATE_FLAGS: usize = 1;
    pub const DETECT_MULT: usize = 2;
    pub const LENGTH: usize = 3;
    pub const MY_DISCR: std::ops::Range<usize> = 4..8;
    pub const YOUR_DISCR: std::ops::Range<usize> = 8..12;
    pub const DESIRED_MIN_TX: std::ops::Range<usize> = 12..16;
    pub const REQUIRED_MIN_RX: std::ops::Range<usize> = 16..20;
    pub const REQUIRED_MIN_ECHO_RX: std::ops::Range<usize> = 20..24;
}

/// Flag bits in the second byte, below the two State bits.
mod flag {
    pub const POLL: u8 = 0x20;
    pub const FINAL: u8 = 0x10;
    pub const CPI: u8 = 0x08;
    pub const AUTH: u8 = 0x04;
    pub const DEMAND: u8 = 0x02;
    pub const MULTIPOINT: u8 = 0x01;
}

/// The session states of RFC 5880 4.1 / 6.2, as carried in the State (Sta) field.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum SessionState {
    AdminDown,
    Down,
    Init,
    Up,
}

impl SessionState {
    /// The 2-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            SessionState::AdminDown => 0,
            SessionState::Down => 1,
            SessionState::Init => 2,
            SessionState::Up => 3,
        }
    }

    /// The state of a 2-bit wire value (only the low two bits are looked at).
    pub fn from_bits(bits: u8) -> SessionState {
        match bits & 0x03 {
            0 => SessionState::AdminDown,
            1 => SessionState::Down,
            2 => SessionState::Init,
            _ => SessionState::Up,
        }
    }

    /// The state's name as RFC 5880 spells it.
    pub fn name(self) -> &'static str {
        match self {
            SessionState::AdminDown => "AdminDown",
            SessionState::Down => "Down",
            SessionState::Init => "Init",
            SessionState::Up => "Up",
        }
    }
}

impl fmt::Display for SessionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The diagnostic codes of RFC 5880 4.1: why the local system last changed state. Values 9-31 are reserved and
/// kept as [`Diag::Reserved`] so a decode/encode round trip is exact.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Diag {
    /// 0 No Diagnostic.
    None,
    /// 1 Control Detection Time Expired.
    ControlDetectionTimeExpired,
    /// 2 Echo Function Failed.
    EchoFunctionFailed,
    /// 3 Neighbor Signaled Session Down.
    NeighborSignaledSessionDown,
    /// 4 Forwarding Plane Reset.
    ForwardingPlaneReset,
    /// 5 Path Down.
    PathDown,
    /// 6 Concatenated Path Down.
    ConcatenatedPathDown,
    /// 7 Administratively Down.
    AdministrativelyDown,
    /// 8 Reverse Concatenated Path Down.
    ReverseConcatenatedPathDown,
    /// 9-31, reserved for future use (the value, 5 bits).
    Reserved(u8),
}

impl Diag {
    /// The 5-bit wire value.
    pub fn bits(self) -> u8 {
        match self {
            Diag::None => 0,
            Diag::ControlDetectionTimeExpired => 1,
            Diag::EchoFunctionFailed => 2,
            Diag::NeighborSignaledSessionDown => 3,
            Diag::ForwardingPlaneReset => 4,
            Diag::PathDown => 5,
            Diag::ConcatenatedPathDown => 6,
            Diag::AdministrativelyDown => 7,
            Diag::ReverseConcatenatedPathDown => 8,
            Diag::Reserved(v) => v & 0x1f,
        }
    }

    /// The code of a 5-bit wire value (only the low five bits are looked at).
    pub fn from_bits(bits: u8) -> Diag {
        match bits & 0x1f {
            0 => Diag::None,
            1 => Diag::ControlDetectionTimeExpired,
            2 => Diag::EchoFunctionFailed,
            3 => Diag::NeighborSignaledSessionDown,
            4 => Diag::ForwardingPlaneReset,
            5 => Diag::PathDown,
            6 => Diag::ConcatenatedPathDown,
            7 => Diag::AdministrativelyDown,
            8 => Diag::ReverseConcatenatedPathDown,
            v => Diag::Reserved(v),
        }
    }

    /// The code's name as RFC 5880 4.1 spells it.
    pub fn name(self) -> &'static str {
        match self {
            Diag::None => "No Diagnostic",
            Diag::ControlDetectionTimeExpired => "Control Detection Time Expired",
            Diag::EchoFunctionFailed => "Echo Function Failed",
            Diag::NeighborSignaledSessionDown => "Neighbor Signaled Session Down",
            Diag::ForwardingPlaneReset => "Forwarding Plane Reset",
            Diag::PathDown => "Path Down",
            Diag::ConcatenatedPathDown => "Concatenated Path Down",
            Diag::AdministrativelyDown => "Administratively Down",
            Diag::ReverseConcatenatedPathDown => "Reverse Concatenated Path Down",
            Diag::Reserved(_) => "Reserved",
        }
    }
}

impl fmt::Display for Diag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Diag::Reserved(v) => write!(f, "Reserved ({})", v & 0x1f),
            d => f.write_str(d.name()),
        }
    }
}

/// A BFD Control packet without authentication (RFC 5880 4.1). Intervals are in microseconds, as on the wire;
/// the `*_duration` accessors convert.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ControlPacket {
    pub diag: Diag,
    pub state: SessionState,
    /// P: the sender is running a Poll sequence and wants an F answer.
    pub poll: bool,
    /// F: this answers a Poll.
    pub final_: bool,
    /// C: the sender's BFD runs independently of its control plane.
    pub control_plane_independent: bool,
    /// D: the sender wants Demand mode.
    pub demand: bool,
    pub detect_mult: u8,
    pub my_discr: u32,
    pub your_discr: u32,
    /// Desired Min TX Interval, microseconds.
    pub desired_min_tx: u32,
    /// Required Min RX Interval, microseconds.
    pub required_min_rx: u32,
    /// Required Min Echo RX Interval, microseconds.
    pub required_min_echo_rx: u32,
}

/// Why a received Control packet was discarded (RFC 5880 6.8.6). Every variant means the same thing for the
/// session: drop the packet silently; the driver counts it under [`DecodeError::name`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Fewer bytes than a Control packet's mandatory section (the UDP payload length).
    Truncated { len: usize },
    /// Version is not 1.
    BadVersion(u8),
    /// The Length field is below 24, above the payload, or (A clear) not exactly 24.
    BadLength { length: u8, payload: usize },
    /// The A bit is set: braid supports no authentication, so such a session can never come up.
    AuthenticationNotSupported,
    /// Detect Mult is zero.
    ZeroDetectMult,
    /// The Multipoint bit is set.
    Multipoint,
    /// My Discriminator is zero.
    ZeroMyDiscriminator,
    /// Your Discriminator is zero while State is Init or Up.
    ZeroYourDiscriminator(SessionState),
}

impl DecodeError {
    /// A short fixed name, for drop counters.
    pub fn name(self) -> &'static str {
        match self {
            DecodeError::Truncated { .. } => "truncated",
            DecodeError::BadVersion(_) => "bad-version",
            DecodeError::BadLength { .. } => "bad-length",
            DecodeError::AuthenticationNotSupported => "auth-not-supported",
            DecodeError::ZeroDetectMult => "zero-detect-mult",
            DecodeError::Multipoint => "multipoint",
            DecodeError::ZeroMyDiscriminator => "zero-my-discriminator",
            DecodeError::ZeroYourDiscriminator(_) => "zero-your-discriminator",
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated { len } => {
                write!(f, "BFD control packet truncated: {len} bytes, need {CONTROL_LEN}")
            }
            DecodeError::BadVersion(v) => write!(f, "BFD version {v}, expected {BFD_VERSION}"),
            DecodeError::BadLength { length, payload } => write!(
                f,
                "BFD length field {length} is inconsistent (payload {payload} bytes, no authentication)"
            ),
            DecodeError::AuthenticationNotSupported => f.write_str(
                "BFD packet has the A bit set: authentication is not supported by braid (configure the peer without it)",
            ),
            DecodeError::ZeroDetectMult => f.write_str("BFD detect mult is zero"),
            DecodeError::Multipoint => f.write_str("BFD multipoint bit is set"),
            DecodeError::ZeroMyDiscriminator => f.write_str("BFD my discriminator is zero"),
            DecodeError::ZeroYourDiscriminator(s) => {
                write!(f, "BFD your discriminator is zero in state {s}")
            }
        }
    }
}

impl std::error::Error for DecodeError {}

fn be32(buf: &[u8], r: std::ops::Range<usize>) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[r]);
    u32::from_be_bytes(b)
}

impl ControlPacket {
    /// Parse a received UDP payload, applying the packet checks of RFC 5880 6.8.6. Never panics.
    pub fn decode(payload: &[u8]) -> Result<ControlPacket, DecodeError> {
        if payload.len() < CONTROL_LEN {
            return Err(DecodeError::Truncated { len: payload.len() });
        }
        let version = payload[field::VERS_DIAG] >> 5;
        if version != BFD_VERSION {
            return Err(DecodeError::BadVersion(version));
        }
        let flags = payload[field::STATE_FLAGS];
        let length = payload[field::LENGTH];
        if usize::from(length) < CONTROL_LEN || usize::from(length) > payload.len() {
            return Err(DecodeError::BadLength {
                length,
                payload: payload.len(),
            });
        }
        if flags & flag::AUTH != 0 {
            return Err(DecodeError::AuthenticationNotSupported);
        }
        if usize::from(length) != CONTROL_LEN {
            return Err(DecodeError::BadLength {
                length,
                payload: payload.len(),
            });
        }
        let detect_mult = payload[field::DETECT_MULT];
        if detect_mult == 0 {
            return Err(DecodeError::ZeroDetectMult);
        }
        if flags & flag::MULTIPOINT != 0 {
            return Err(DecodeError::Multipoint);
        }
        let my_discr = be32(payload, field::MY_DISCR);
        if my_discr == 0 {
            return Err(DecodeError::ZeroMyDiscriminator);
        }
        let state = SessionState::from_bits(flags >> 6);
        let your_discr = be32(payload, field::YOUR_DISCR);
        if your_discr == 0 && matches!(state, SessionState::Init | SessionState::Up) {
            return Err(DecodeError::ZeroYourDiscriminator(state));
        }
        Ok(ControlPacket {
            diag: Diag::from_bits(payload[field::VERS_DIAG]),
            state,
            poll: flags & flag::POLL != 0,
            final_: flags & flag::FINAL != 0,
            control_plane_independent: flags & flag::CPI != 0,
            demand: flags & flag::DEMAND != 0,
            detect_mult,
            my_discr,
            your_discr,
            desired_min_tx: be32(payload, field::DESIRED_MIN_TX),
            required_min_rx: be32(payload, field::REQUIRED_MIN_RX),
            required_min_echo_rx: be32(payload, field::REQUIRED_MIN_ECHO_RX),
        })
    }

    /// Write the packet (version 1, A and M clear, Length 24) into `buf`.
    pub fn encode(&self, buf: &mut [u8; CONTROL_LEN]) {
        buf[field::VERS_DIAG] = (BFD_VERSION << 5) | self.diag.bits();
        let mut flags = self.state.bits() << 6;
        for (set, bit) in [
            (self.poll, flag::POLL),
            (self.final_, flag::FINAL),
            (self.control_plane_independent, flag::CPI),
            (self.demand, flag::DEMAND),
        ] {
            if set {
                flags |= bit;
            }
        }
        buf[field::STATE_FLAGS] = flags;
        buf[field::DETECT_MULT] = self.detect_mult;
        buf[field::LENGTH] = CONTROL_LEN as u8;
        buf[field::MY_DISCR].copy_from_slice(&self.my_discr.to_be_bytes());
        buf[field::YOUR_DISCR].copy_from_slice(&self.your_discr.to_be_bytes());
        buf[field::DESIRED_MIN_TX].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        buf[field::REQUIRED_MIN_RX].copy_from_slice(&self.required_min_rx.to_be_bytes());
        buf[field::REQUIRED_MIN_ECHO_RX].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
    }

    /// The encoded packet as a fresh array.
    pub fn to_bytes(&self) -> [u8; CONTROL_LEN] {
        let mut buf = [0u8; CONTROL_LEN];
        self.encode(&mut buf);
        buf
    }

    /// Desired Min TX Interval as a [`Duration`].
    pub fn desired_min_tx_duration(&self) -> Duration {
        Duration::from_micros(u64::from(self.desired_min_tx))
    }

    /// Required Min RX Interval as a [`Duration`].
    pub fn required_min_rx_duration(&self) -> Duration {
        Duration::from_micros(u64::from(self.required_min_rx))
    }
}

/// A [`Duration`] as wire microseconds, saturating at `u32::MAX` (about 71 minutes).
pub fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Up packet, diag 0, P set, mult 3, discriminators 1 / 2, 300 ms / 300 ms / 0.
    const UP_POLL: [u8; 24] = [
        0x20, 0xe0, 0x03, 0x18, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x02, 0x00, 0x04, 0x93,
        0xe0, 0x00, 0x04, 0x93, 0xe0, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn decodes_hand_made_up_poll() {
        let p = ControlPacket::decode(&UP_POLL).unwrap();
        assert_eq!(p.state, SessionState::Up);
        assert_eq!(p.diag, Diag::None);
        assert!(p.poll && !p.final_ && !p.demand && !p.control_plane_independent);
        assert_eq!(p.detect_mult, 3);
        assert_eq!((p.my_discr, p.your_discr), (1, 2));
        assert_eq!(p.desired_min_tx, 300_000);
        assert_eq!(p.required_min_rx_duration(), Duration::from_millis(300));
        assert_eq!(p.required_min_echo_rx, 0);
        assert_eq!(p.to_bytes(), UP_POLL);
    }

    #[test]
    fn encodes_admin_down_diag_7() {
        let p = ControlPacket {
            diag: Diag::AdministrativelyDown,
            state: SessionState::AdminDown,
            poll: false,
            final_: true,
            control_plane_independent: false,
            demand: false,
            detect_mult: 5,
            my_discr: 0x0102_0304,
            your_discr: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 1,
            required_min_echo_rx: 0,
        };
        let b = p.to_bytes();
        assert_eq!(&b[..4], &[0x27, 0x10, 0x05, 0x18]);
        assert_eq!(&b[4..12], &[1, 2, 3, 4, 0, 0, 0, 0]);
        assert_eq!(&b[12..16], &[0x00, 0x0f, 0x42, 0x40]);
        assert_eq!(ControlPacket::decode(&b), Ok(p));
    }

    #[test]
    fn reception_checks() {
        let err = |f: &dyn Fn(&mut [u8; 24])| {
            let mut b = UP_POLL;
            f(&mut b);
            ControlPacket::decode(&b).unwrap_err()
        };
        assert_eq!(
            ControlPacket::decode(&UP_POLL[..23]),
            Err(DecodeError::Truncated { len: 23 })
        );
        assert_eq!(
            ControlPacket::decode(&[]),
            Err(DecodeError::Truncated { len: 0 })
        );
        assert_eq!(err(&|b| b[0] = 0x40), DecodeError::BadVersion(2));
        assert_eq!(err(&|b| b[0] = 0x00), DecodeError::BadVersion(0));
        assert_eq!(
            err(&|b| b[3] = 23),
            DecodeError::BadLength {
                length: 23,
                payload: 24
            }
        );
        assert_eq!(
            err(&|b| b[3] = 25),
            DecodeError::BadLength {
                length: 25,
                payload: 24
            }
        );
        assert_eq!(
            err(&|b| b[1] |= 0x04),
            DecodeError::AuthenticationNotSupported
        );
        assert_eq!(err(&|b| b[2] = 0), DecodeError::ZeroDetectMult);
        assert_eq!(err(&|b| b[1] |= 0x01), DecodeError::Multipoint);
        assert_eq!(err(&|b| b[4..8].fill(0)), DecodeError::ZeroMyDiscriminator);
        assert_eq!(
            err(&|b| b[8..12].fill(0)),
            DecodeError::ZeroYourDiscriminator(SessionState::Up)
        );
        assert_eq!(
            err(&|b| {
                b[8..12].fill(0);
                b[1] = 0x80;
            }),
            DecodeError::ZeroYourDiscriminator(SessionState::Init)
        );
        // Your Discriminator 0 is fine in Down and AdminDown.
        for sta in [0x00u8, 0x40] {
            let mut b = UP_POLL;
            b[8..12].fill(0);
            b[1] = sta;
            assert!(ControlPacket::decode(&b).is_ok());
        }
    }

    #[test]
    fn auth_section_refused_even_with_consistent_length() {
        // A bit set with a 24 + 11 byte Keyed SHA1 section: refused, clearly.
        let mut b = [0u8; 35];
        b[..24].copy_from_slice(&UP_POLL);
        b[1] |= 0x04;
        b[3] = 35;
        assert_eq!(
            ControlPacket::decode(&b),
            Err(DecodeError::AuthenticationNotSupported)
        );
        assert!(DecodeError::AuthenticationNotSupported
            .to_string()
            .contains("not supported"));
        // Trailing bytes after a 24-byte packet (A clear) are ignored: Length governs.
        let mut t = [0u8; 30];
        t[..24].copy_from_slice(&UP_POLL);
        assert!(ControlPacket::decode(&t).is_ok());
    }

    /// splitmix64, for deterministic generated inputs.
    fn next(s: &mut u64) -> u64 {
        *s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = *s;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    #[test]
    fn round_trip_generated_packets() {
        let mut s = 0x5eed_u64;
        for _ in 0..20_000 {
            let r = next(&mut s);
            let state = SessionState::from_bits(r as u8);
            let your_discr = match state {
                SessionState::Init | SessionState::Up => (next(&mut s) as u32).max(1),
                _ if r & (1 << 9) != 0 => 0,
                _ => next(&mut s) as u32,
            };
            let p = ControlPacket {
                diag: Diag::from_bits((r >> 2) as u8),
                state,
                poll: r & (1 << 10) != 0,
                final_: r & (1 << 11) != 0,
                control_plane_independent: r & (1 << 12) != 0,
                demand: r & (1 << 13) != 0,
                detect_mult: ((r >> 16) as u8).max(1),
                my_discr: ((r >> 32) as u32).max(1),
                your_discr,
                desired_min_tx: next(&mut s) as u32,
                required_min_rx: next(&mut s) as u32,
                required_min_echo_rx: next(&mut s) as u32,
            };
            let bytes = p.to_bytes();
            assert_eq!(ControlPacket::decode(&bytes), Ok(p));
            assert_eq!(ControlPacket::decode(&bytes).unwrap().to_bytes(), bytes);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        let mut s = 7u64;
        let mut ok = 0;
        for i in 0..20_000usize {
            let len = i % 40;
            let mut b = [0u8; 40];
            for x in b.iter_mut() {
                *x = next(&mut s) as u8;
            }
            // Bias towards the interesting path: valid version and length half the time.
            if i % 2 == 0 && len >= 24 {
                b[0] = (b[0] & 0x1f) | 0x20;
                b[3] = 24;
                b[1] &= !0x05;
            }
            if let Ok(p) = ControlPacket::decode(&b[..len]) {
                ok += 1;
                assert_eq!(&p.to_bytes()[..], &b[..24]);
            }
        }
        assert!(ok > 0);
    }

    #[test]
    fn diag_and_state_bits() {
        for v in 0..32u8 {
            assert_eq!(Diag::from_bits(v).bits(), v);
        }
        for v in 0..4u8 {
            assert_eq!(SessionState::from_bits(v).bits(), v);
        }
        assert_eq!(micros(Duration::from_secs(1)), 1_000_000);
        assert_eq!(micros(Duration::from_secs(1 << 40)), u32::MAX);
    }
}
