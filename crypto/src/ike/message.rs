//! The IKEv2 message codec: header, payload chain and the payloads braid uses.
//!
//! Implements RFC 7296 section 3: the IKE header (3.1), the generic payload header and the
//! critical bit (3.2: an unknown payload with the critical bit set is refused with
//! UNSUPPORTED_CRITICAL_PAYLOAD, one without is skipped), SA with proposals, transforms and
//! attributes (3.3; the Key Length attribute in TV format, unknown attributes marking the
//! transform unusable as 3.3.6 requires), KE (3.4), IDi/IDr (3.5), AUTH (3.8), Nonce (3.9),
//! Notify (3.10), Delete (3.11), Vendor ID (3.12, kept and ignored), TSi/TSr with IPv4 and IPv6
//! address ranges (3.13) and the position of the SK payload (3.14, which must be the last
//! payload; its contents are handled by [`crate::ike::sk`]).
//!
//! Decoding never panics and every failure is a [`DecodeError`] that knows the notify the
//! peer should get. Payloads that RFC 7296 defines but braid does not use (CERT, CERTREQ, CP,
//! EAP, ...) decode as [`Payload::Other`]. Deliberately left out: IKE fragmentation (RFC 7383),
//! TS types other than the two address ranges (skipped on input), and the IKEv1 header.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

/// Length of the IKE header.
pub const HEADER_LEN: usize = 28;
/// Length of the generic payload header.
pub const GENERIC_LEN: usize = 4;
/// The version octet of IKEv2: major 2, minor 0.
pub const VERSION: u8 = 0x20;
/// Largest message braid builds or accepts (UDP datagram limit).
pub const MAX_MESSAGE: usize = 65_535;

/// Header flag: sent by the original initiator of the IKE SA.
pub const FLAG_INITIATOR: u8 = 0x08;
/// Header flag: the sender can speak a higher major version.
pub const FLAG_VERSION: u8 = 0x10;
/// Header flag: this message is a response.
pub const FLAG_RESPONSE: u8 = 0x20;

/// Exchange types (RFC 7296 section 3.1).
pub mod exchange {
    /// IKE_SA_INIT.
    pub const IKE_SA_INIT: u8 = 34;
    /// IKE_AUTH.
    pub const IKE_AUTH: u8 = 35;
    /// CREATE_CHILD_SA.
    pub const CREATE_CHILD_SA: u8 = 36;
    /// INFORMATIONAL.
    pub const INFORMATIONAL: u8 = 37;
}

/// Payload types (RFC 7296 section 3.2).
pub mod payload_type {
    /// No next payload.
    pub const NONE: u8 = 0;
    /// Security Association.
    pub const SA: u8 = 33;
    /// Key Exchange.
    pub const KE: u8 = 34;
    /// Identification - Initiator.
    pub const IDI: u8 = 35;
    /// Identification - Responder.
    pub const IDR: u8 = 36;
    /// Certificate.
    pub const CERT: u8 = 37;
    /// Certificate Request.
    pub const CERTREQ: u8 = 38;
    /// Authentication.
    pub const AUTH: u8 = 39;
    /// Nonce.
    pub const NONCE: u8 = 40;
    /// Notify.
    pub const NOTIFY: u8 = 41;
    /// Delete.
    pub const DELETE: u8 = 42;
    /// Vendor ID.
    pub const VENDOR_ID: u8 = 43;
    /// Traffic Selector - Initiator.
    pub const TSI: u8 = 44;
    /// Traffic Selector - Responder.
    pub const TSR: u8 = 45;
    /// Encrypted and Authenticated.
    pub const SK: u8 = 46;
    /// Configuration.
    pub const CP: u8 = 47;
    /// Extensible Authentication.
    pub const EAP: u8 = 48;
    /// Encrypted and Authenticated Fragment (RFC 7383).
    pub const SKF: u8 = 53;

    /// Whether RFC 7296 or RFC 7383 define this payload type (so its critical bit is
    /// ignored).
    pub const fn is_known(t: u8) -> bool {
        matches!(t, 33..=48 | 53)
    }
}

/// Notify message types (RFC 7296 section 3.10.1 and the IANA registry).
pub mod notify_type {
    /// UNSUPPORTED_CRITICAL_PAYLOAD.
    pub const UNSUPPORTED_CRITICAL_PAYLOAD: u16 = 1;
    /// INVALID_IKE_SPI.
    pub const INVALID_IKE_SPI: u16 = 4;
    /// INVALID_MAJOR_VERSION.
    pub const INVALID_MAJOR_VERSION: u16 = 5;
    /// INVALID_SYNTAX.
    pub const INVALID_SYNTAX: u16 = 7;
    /// INVALID_MESSAGE_ID.
    pub const INVALID_MESSAGE_ID: u16 = 9;
    /// INVALID_SPI.
    pub const INVALID_SPI: u16 = 11;
    /// NO_PROPOSAL_CHOSEN.
    pub const NO_PROPOSAL_CHOSEN: u16 = 14;
    /// INVALID_KE_PAYLOAD.
    pub const INVALID_KE_PAYLOAD: u16 = 17;
    /// AUTHENTICATION_FAILED.
    pub const AUTHENTICATION_FAILED: u16 = 24;
    /// SINGLE_PAIR_REQUIRED.
    pub const SINGLE_PAIR_REQUIRED: u16 = 34;
    /// NO_ADDITIONAL_SAS.
    pub const NO_ADDITIONAL_SAS: u16 = 35;
    /// TS_UNACCEPTABLE.
    pub const TS_UNACCEPTABLE: u16 = 38;
    /// TEMPORARY_FAILURE.
    pub const TEMPORARY_FAILURE: u16 = 43;
    /// CHILD_SA_NOT_FOUND.
    pub const CHILD_SA_NOT_FOUND: u16 = 44;
    /// INITIAL_CONTACT.
    pub const INITIAL_CONTACT: u16 = 16384;
    /// NAT_DETECTION_SOURCE_IP.
    pub const NAT_DETECTION_SOURCE_IP: u16 = 16388;
    /// NAT_DETECTION_DESTINATION_IP.
    pub const NAT_DETECTION_DESTINATION_IP: u16 = 16389;
    /// COOKIE.
    pub const COOKIE: u16 = 16390;
    /// USE_TRANSPORT_MODE.
    pub const USE_TRANSPORT_MODE: u16 = 16391;
    /// REKEY_SA.
    pub const REKEY_SA: u16 = 16393;
    /// ESP_TFC_PADDING_NOT_SUPPORTED.
    pub const ESP_TFC_PADDING_NOT_SUPPORTED: u16 = 16394;

    /// Error types are below 16384 (RFC 7296 section 3.10.1).
    pub const fn is_error(t: u16) -> bool {
        t < 16384
    }
}

/// Why a message or payload did not decode, and so what the peer is told (if it is told
/// anything: unauthenticated messages are dropped silently).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum DecodeError {
    /// Shorter than the IKE header, or a length field points past the end.
    Truncated,
    /// The header's Length is not the datagram's length, or a payload length is below its
    /// minimum.
    BadLength,
    /// The major version is not 2.
    BadVersion(u8),
    /// An unknown payload type with the critical bit set.
    UnsupportedCritical(u8),
    /// The SK payload is not the last one, or appears inside another SK payload.
    MisplacedSk,
    /// A payload's contents are malformed; names the payload.
    Malformed(&'static str),
}

impl DecodeError {
    /// The Notify Message Type the error calls for, with its notification data.
    pub fn notify(self) -> (u16, Vec<u8>) {
        match self {
            DecodeError::UnsupportedCritical(t) => {
                (notify_type::UNSUPPORTED_CRITICAL_PAYLOAD, vec![t])
            }
            DecodeError::BadVersion(_) => (notify_type::INVALID_MAJOR_VERSION, Vec::new()),
            _ => (notify_type::INVALID_SYNTAX, Vec::new()),
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => f.write_str("truncated"),
            DecodeError::BadLength => f.write_str("bad length"),
            DecodeError::BadVersion(v) => write!(f, "unsupported version 0x{v:02x}"),
            DecodeError::UnsupportedCritical(t) => write!(f, "unsupported critical payload {t}"),
            DecodeError::MisplacedSk => f.write_str("misplaced SK payload"),
            DecodeError::Malformed(what) => write!(f, "malformed {what} payload"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// A cursor over untrusted bytes; every read is checked.
struct Reader<'a> {
    buf: &'a [u8],
    what: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Reader<'a> {
        Reader { buf, what }
    }

    fn err(&self) -> DecodeError {
        DecodeError::Malformed(self.what)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.buf.len() {
            return Err(self.err());
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_be_bytes());
}

/// Writes a big-endian u16 at `at` (a length placeholder written earlier).
fn patch_u16(out: &mut [u8], at: usize, v: usize) {
    let v = u16::try_from(v).unwrap_or(u16::MAX);
    if let Some(b) = out.get_mut(at..at + 2) {
        b.copy_from_slice(&v.to_be_bytes());
    }
}

/// The IKE header (RFC 7296 section 3.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Header {
    /// IKE SA Initiator's SPI.
    pub spi_i: u64,
    /// IKE SA Responder's SPI (0 in the first IKE_SA_INIT request).
    pub spi_r: u64,
    /// Type of the first payload.
    pub next_payload: u8,
    /// Major and minor version, 0x20.
    pub version: u8,
    /// Exchange type.
    pub exchange: u8,
    /// Flags (Initiator, Version, Response).
    pub flags: u8,
    /// Message ID.
    pub message_id: u32,
    /// Length of the whole message.
    pub length: u32,
}

impl Header {
    /// Whether the Response flag is set.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_RESPONSE != 0
    }

    /// Whether the Initiator flag is set (sent by the original initiator).
    pub fn from_initiator(&self) -> bool {
        self.flags & FLAG_INITIATOR != 0
    }

    /// Decodes the header at the start of `buf` and checks that its Length is `buf.len()`.
    ///
    /// # Errors
    /// [`DecodeError::Truncated`], [`DecodeError::BadLength`], [`DecodeError::BadVersion`].
    pub fn decode(buf: &[u8]) -> Result<Header, DecodeError> {
        let b = buf.get(..HEADER_LEN).ok_or(DecodeError::Truncated)?;
        let u64_at = |i: usize| {
            let mut a = [0u8; 8];
            a.copy_from_slice(&b[i..i + 8]);
            u64::from_be_bytes(a)
        };
        let u32_at = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let h = Header {
            spi_i: u64_at(0),
            spi_r: u64_at(8),
            next_payload: b[16],
            version: b[17],
            exchange: b[18],
            flags: b[19],
            message_id: u32_at(20),
            length: u32_at(24),
        };
        if h.version >> 4 != 2 {
            return Err(DecodeError::BadVersion(h.version));
        }
        if h.length as usize != buf.len() {
            return Err(DecodeError::BadLength);
        }
        Ok(h)
    }

    /// Appends the 28-octet header.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.spi_i.to_be_bytes());
        out.extend_from_slice(&self.spi_r.to_be_bytes());
        out.extend_from_slice(&[self.next_payload, self.version, self.exchange, self.flags]);
        out.extend_from_slice(&self.message_id.to_be_bytes());
        out.extend_from_slice(&self.length.to_be_bytes());
    }
}

/// One transform of a proposal (RFC 7296 section 3.3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transform {
    /// Transform type (1 ENCR, 2 PRF, 3 INTEG, 4 D-H, 5 ESN).
    pub kind: u8,
    /// Transform ID.
    pub id: u16,
    /// The Key Length attribute in bits, if present.
    pub key_len: Option<u16>,
    /// Attributes other than one TV-format Key Length, exactly as received (re-encoded
    /// after the Key Length). A transform with any must not be chosen (RFC 7296 section
    /// 3.3.6).
    pub other_attrs: Vec<u8>,
}

impl Transform {
    /// A transform without attributes other than `key_len`.
    pub fn new(kind: u8, id: u16, key_len: Option<u16>) -> Transform {
        Transform {
            kind,
            id,
            key_len,
            other_attrs: Vec::new(),
        }
    }

    /// Whether the transform carried attributes braid does not know.
    pub fn has_unknown_attrs(&self) -> bool {
        !self.other_attrs.is_empty()
    }
}

/// One proposal of an SA payload (RFC 7296 section 3.3.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Proposal {
    /// Proposal number, 1 for the first.
    pub number: u8,
    /// Protocol ID (1 IKE, 3 ESP).
    pub protocol: u8,
    /// The SPI: empty in IKE_SA_INIT, 8 octets for an IKE rekey, 4 for ESP.
    pub spi: Vec<u8>,
    /// The transforms.
    pub transforms: Vec<Transform>,
}

/// An identity (RFC 7296 section 3.5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Identity {
    /// ID_IPV4_ADDR.
    Ipv4(Ipv4Addr),
    /// ID_IPV6_ADDR.
    Ipv6(Ipv6Addr),
    /// ID_FQDN.
    Fqdn(String),
    /// ID_KEY_ID: opaque octets.
    KeyId(Vec<u8>),
    /// Any other ID type (compared as octets).
    Other {
        /// The ID Type.
        kind: u8,
        /// The identification data.
        data: Vec<u8>,
    },
}

impl Identity {
    /// The ID Type.
    pub fn kind(&self) -> u8 {
        match self {
            Identity::Ipv4(_) => 1,
            Identity::Fqdn(_) => 2,
            Identity::Ipv6(_) => 5,
            Identity::KeyId(_) => 11,
            Identity::Other { kind, .. } => *kind,
        }
    }

    /// The identification data.
    pub fn data(&self) -> Vec<u8> {
        match self {
            Identity::Ipv4(a) => a.octets().to_vec(),
            Identity::Ipv6(a) => a.octets().to_vec(),
            Identity::Fqdn(s) => s.as_bytes().to_vec(),
            Identity::KeyId(d) | Identity::Other { data: d, .. } => d.clone(),
        }
    }

    /// The payload body after the generic header: ID Type, three reserved octets, data. This
    /// is what the AUTH computation MACs (RFC 7296 section 2.15).
    pub fn body(&self) -> Vec<u8> {
        let mut v = vec![self.kind(), 0, 0, 0];
        v.extend_from_slice(&self.data());
        v
    }

    fn decode(b: &[u8]) -> Result<Identity, DecodeError> {
        let mut r = Reader::new(b, "ID");
        let kind = r.u8()?;
        r.take(3)?;
        let data = r.rest();
        Ok(match kind {
            1 => Identity::Ipv4(<[u8; 4]>::try_from(data).map_err(|_| r.err())?.into()),
            5 => Identity::Ipv6(<[u8; 16]>::try_from(data).map_err(|_| r.err())?.into()),
            2 => match std::str::from_utf8(data) {
                Ok(s) => Identity::Fqdn(s.to_string()),
                Err(_) => Identity::Other {
                    kind,
                    data: data.to_vec(),
                },
            },
            11 => Identity::KeyId(data.to_vec()),
            _ => Identity::Other {
                kind,
                data: data.to_vec(),
            },
        })
    }
}

impl FromStr for Identity {
    type Err = std::convert::Infallible;

    /// An IP address gives ID_IPV4_ADDR or ID_IPV6_ADDR; `keyid:TEXT` gives ID_KEY_ID with
    /// TEXT's octets; anything else (a leading `@` is dropped, as strongSwan does) is an
    /// ID_FQDN.
    fn from_str(s: &str) -> Result<Identity, Self::Err> {
        Ok(match s.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => Identity::Ipv4(a),
            Ok(IpAddr::V6(a)) => Identity::Ipv6(a),
            Err(_) => match s.strip_prefix("keyid:") {
                Some(k) => Identity::KeyId(k.as_bytes().to_vec()),
                None => Identity::Fqdn(s.strip_prefix('@').unwrap_or(s).to_string()),
            },
        })
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Ipv4(a) => write!(f, "{a}"),
            Identity::Ipv6(a) => write!(f, "{a}"),
            Identity::Fqdn(s) => write!(f, "{s}"),
            Identity::KeyId(d) => write!(f, "keyid:{}", String::from_utf8_lossy(d)),
            Identity::Other { kind, data } => write!(f, "id-type-{kind}:{} octets", data.len()),
        }
    }
}

/// A traffic selector: an address range, an IP protocol (0 = any) and a port range
/// (RFC 7296 section 3.13.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct TrafficSelector {
    /// IP protocol ID, 0 for any.
    pub protocol: u8,
    /// First port.
    pub start_port: u16,
    /// Last port.
    pub end_port: u16,
    /// First address.
    pub start: IpAddr,
    /// Last address (same family as `start`).
    pub end: IpAddr,
}

/// A traffic selector string that does not parse.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TsParseError(pub String);

impl fmt::Display for TsParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "bad traffic selector '{}' (expected a prefix such as 10.0.0.0/8 or ::/0)",
            self.0
        )
    }
}

impl std::error::Error for TsParseError {}

fn v6_bits(a: IpAddr) -> (bool, u128) {
    match a {
        IpAddr::V4(a) => (false, u128::from(u32::from(a))),
        IpAddr::V6(a) => (true, u128::from(a)),
    }
}

fn from_bits(v6: bool, x: u128) -> IpAddr {
    if v6 {
        IpAddr::V6(Ipv6Addr::from(x))
    } else {
        IpAddr::V4(Ipv4Addr::from(x as u32))
    }
}

impl TrafficSelector {
    /// 0.0.0.0 - 255.255.255.255, any protocol, any port: braid's route-based default.
    pub fn any_ipv4() -> TrafficSelector {
        TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: 65535,
            start: Ipv4Addr::UNSPECIFIED.into(),
            end: Ipv4Addr::BROADCAST.into(),
        }
    }

    /// :: - ffff:...:ffff, any protocol, any port.
    pub fn any_ipv6() -> TrafficSelector {
        TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: 65535,
            start: Ipv6Addr::UNSPECIFIED.into(),
            end: Ipv6Addr::from(u128::MAX).into(),
        }
    }

    /// Whether this is an IPv6 selector.
    pub fn is_ipv6(&self) -> bool {
        self.start.is_ipv6()
    }

    /// The TS Type: 7 (TS_IPV4_ADDR_RANGE) or 8 (TS_IPV6_ADDR_RANGE).
    pub fn ts_type(&self) -> u8 {
        if self.is_ipv6() {
            8
        } else {
            7
        }
    }

    /// The intersection of two selectors, if not empty (RFC 7296 section 2.9 narrowing).
    pub fn intersect(&self, other: &TrafficSelector) -> Option<TrafficSelector> {
        if self.is_ipv6() != other.is_ipv6() {
            return None;
        }
        let protocol = match (self.protocol, other.protocol) {
            (0, p) | (p, 0) => p,
            (a, b) if a == b => a,
            _ => return None,
        };
        let start_port = self.start_port.max(other.start_port);
        let end_port = self.end_port.min(other.end_port);
        let v6 = self.is_ipv6();
        let start = v6_bits(self.start).1.max(v6_bits(other.start).1);
        let end = v6_bits(self.end).1.min(v6_bits(other.end).1);
        (start_port <= end_port && start <= end).then(|| TrafficSelector {
            protocol,
            start_port,
            end_port,
            start: from_bits(v6, start),
            end: from_bits(v6, end),
        })
    }

    /// Whether `other` lies entirely inside this selector.
    pub fn contains(&self, other: &TrafficSelector) -> bool {
        self.intersect(other).as_ref() == Some(other)
    }

    fn decode(r: &mut Reader<'_>) -> Result<Option<TrafficSelector>, DecodeError> {
        let ts_type = r.u8()?;
        let protocol = r.u8()?;
        let len = usize::from(r.u16()?);
        let body = r.take(len.checked_sub(4).ok_or(DecodeError::Malformed("TS"))?)?;
        let mut b = Reader::new(body, "TS");
        let addr_len = match ts_type {
            7 => 4,
            8 => 16,
            _ => return Ok(None),
        };
        if len != 8 + 2 * addr_len {
            return Err(b.err());
        }
        let start_port = b.u16()?;
        let end_port = b.u16()?;
        let addr = |b: &mut Reader<'_>| -> Result<IpAddr, DecodeError> {
            let a = b.take(addr_len)?;
            Ok(if addr_len == 4 {
                IpAddr::V4(
                    <[u8; 4]>::try_from(a)
                        .map_err(|_| DecodeError::Malformed("TS"))?
                        .into(),
                )
            } else {
                IpAddr::V6(
                    <[u8; 16]>::try_from(a)
                        .map_err(|_| DecodeError::Malformed("TS"))?
                        .into(),
                )
            })
        };
        let start = addr(&mut b)?;
        let end = addr(&mut b)?;
        Ok(Some(TrafficSelector {
            protocol,
            start_port,
            end_port,
            start,
            end,
        }))
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let len: u16 = if self.is_ipv6() { 40 } else { 16 };
        out.extend_from_slice(&[self.ts_type(), self.protocol]);
        put_u16(out, len);
        put_u16(out, self.start_port);
        put_u16(out, self.end_port);
        for a in [self.start, self.end] {
            match a {
                IpAddr::V4(a) => out.extend_from_slice(&a.octets()),
                IpAddr::V6(a) => out.extend_from_slice(&a.octets()),
            }
        }
    }
}

impl FromStr for TrafficSelector {
    type Err = TsParseError;

    /// A prefix (`10.0.0.0/8`, `::/0`) or a single address, any protocol and port.
    fn from_str(s: &str) -> Result<TrafficSelector, TsParseError> {
        let err = || TsParseError(s.to_string());
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l.parse::<u8>().map_err(|_| err())?)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| err())?;
        let (v6, bits) = v6_bits(addr);
        let width: u32 = if v6 { 128 } else { 32 };
        let len = u32::from(len.unwrap_or(width as u8));
        if len > width {
            return Err(err());
        }
        let host_bits = width - len;
        let host_mask: u128 = if host_bits == 0 {
            0
        } else {
            u128::MAX >> (128 - host_bits)
        };
        let start = bits & !host_mask;
        let end = start | host_mask;
        Ok(TrafficSelector {
            protocol: 0,
            start_port: 0,
            end_port: 65535,
            start: from_bits(v6, start),
            end: from_bits(v6, end),
        })
    }
}

impl fmt::Display for TrafficSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)?;
        if self.protocol != 0 || self.start_port != 0 || self.end_port != 65535 {
            write!(
                f,
                "[{}/{}-{}]",
                self.protocol, self.start_port, self.end_port
            )?;
        }
        Ok(())
    }
}

/// A Notify payload (RFC 7296 section 3.10).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notify {
    /// Protocol ID (0 when no SPI, 1 IKE, 3 ESP).
    pub protocol: u8,
    /// The SPI, if the notify is about an SA.
    pub spi: Vec<u8>,
    /// Notify Message Type.
    pub kind: u16,
    /// Notification data.
    pub data: Vec<u8>,
}

impl Notify {
    /// A notify with no SPI.
    pub fn new(kind: u16, data: Vec<u8>) -> Notify {
        Notify {
            protocol: 0,
            spi: Vec::new(),
            kind,
            data,
        }
    }
}

/// A Delete payload (RFC 7296 section 3.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Delete {
    /// Deletes the IKE SA the message travels on (protocol 1, no SPIs).
    Ike,
    /// Deletes these ESP SAs, named by the sender's inbound SPIs.
    Esp(Vec<u32>),
    /// Another protocol (AH): kept for round trips, ignored.
    Other {
        /// Protocol ID.
        protocol: u8,
        /// SPI Size.
        spi_size: u8,
        /// The concatenated SPIs.
        spis: Vec<u8>,
    },
}

/// A decoded payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// Security Association.
    Sa(Vec<Proposal>),
    /// Key Exchange.
    Ke {
        /// Diffie-Hellman Group Num.
        group: u16,
        /// Key Exchange Data.
        data: Vec<u8>,
    },
    /// Identification - Initiator.
    IdI(Identity),
    /// Identification - Responder.
    IdR(Identity),
    /// Authentication.
    Auth {
        /// Auth Method (2: Shared Key Message Integrity Code).
        method: u8,
        /// Authentication Data.
        data: Vec<u8>,
    },
    /// Nonce.
    Nonce(Vec<u8>),
    /// Notify.
    Notify(Notify),
    /// Delete.
    Delete(Delete),
    /// Vendor ID.
    VendorId(Vec<u8>),
    /// Traffic Selector - Initiator.
    TsI(Vec<TrafficSelector>),
    /// Traffic Selector - Responder.
    TsR(Vec<TrafficSelector>),
    /// A payload braid does not interpret: a known but unused type, or an unknown type
    /// without the critical bit. Re-encoded without the critical bit.
    Other {
        /// Payload type.
        kind: u8,
        /// The body after the generic header.
        data: Vec<u8>,
    },
}

/// Auth Method of a pre-shared key: Shared Key Message Integrity Code.
pub const AUTH_PSK: u8 = 2;

impl Payload {
    /// The payload type.
    pub fn kind(&self) -> u8 {
        use payload_type as t;
        match self {
            Payload::Sa(_) => t::SA,
            Payload::Ke { .. } => t::KE,
            Payload::IdI(_) => t::IDI,
            Payload::IdR(_) => t::IDR,
            Payload::Auth { .. } => t::AUTH,
            Payload::Nonce(_) => t::NONCE,
            Payload::Notify(_) => t::NOTIFY,
            Payload::Delete(_) => t::DELETE,
            Payload::VendorId(_) => t::VENDOR_ID,
            Payload::TsI(_) => t::TSI,
            Payload::TsR(_) => t::TSR,
            Payload::Other { kind, .. } => *kind,
        }
    }

    fn decode_body(kind: u8, b: &[u8]) -> Result<Payload, DecodeError> {
        use payload_type as t;
        Ok(match kind {
            t::SA => Payload::Sa(decode_sa(b)?),
            t::KE => {
                let mut r = Reader::new(b, "KE");
                let group = r.u16()?;
                r.take(2)?;
                Payload::Ke {
                    group,
                    data: r.rest().to_vec(),
                }
            }
            t::IDI => Payload::IdI(Identity::decode(b)?),
            t::IDR => Payload::IdR(Identity::decode(b)?),
            t::AUTH => {
                let mut r = Reader::new(b, "AUTH");
                let method = r.u8()?;
                r.take(3)?;
                Payload::Auth {
                    method,
                    data: r.rest().to_vec(),
                }
            }
            t::NONCE => {
                // RFC 7296 section 3.9: 16 to 256 octets.
                if !(16..=256).contains(&b.len()) {
                    return Err(DecodeError::Malformed("Nonce"));
                }
                Payload::Nonce(b.to_vec())
            }
            t::NOTIFY => {
                let mut r = Reader::new(b, "Notify");
                let protocol = r.u8()?;
                let spi_size = r.u8()?;
                let kind = r.u16()?;
                let spi = r.take(usize::from(spi_size))?.to_vec();
                Payload::Notify(Notify {
                    protocol,
                    spi,
                    kind,
                    data: r.rest().to_vec(),
                })
            }
            t::DELETE => Payload::Delete(decode_delete(b)?),
            t::VENDOR_ID => Payload::VendorId(b.to_vec()),
            t::TSI | t::TSR => {
                let mut r = Reader::new(b, "TS");
                let n = r.u8()?;
                r.take(3)?;
                let mut list = Vec::new();
                for _ in 0..n {
                    if let Some(ts) = TrafficSelector::decode(&mut r)? {
                        list.push(ts);
                    }
                }
                // Selectors of unknown types are skipped; none left is unusable.
                if !r.is_empty() || list.is_empty() {
                    return Err(r.err());
                }
                if kind == t::TSI {
                    Payload::TsI(list)
                } else {
                    Payload::TsR(list)
                }
            }
            _ => Payload::Other {
                kind,
                data: b.to_vec(),
            },
        })
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            Payload::Sa(props) => encode_sa(props, out),
            Payload::Ke { group, data } => {
                put_u16(out, *group);
                put_u16(out, 0);
                out.extend_from_slice(data);
            }
            Payload::IdI(id) | Payload::IdR(id) => out.extend_from_slice(&id.body()),
            Payload::Auth { method, data } => {
                out.extend_from_slice(&[*method, 0, 0, 0]);
                out.extend_from_slice(data);
            }
            Payload::Nonce(d) | Payload::VendorId(d) | Payload::Other { data: d, .. } => {
                out.extend_from_slice(d)
            }
            Payload::Notify(n) => {
                out.extend_from_slice(&[n.protocol, n.spi.len() as u8]);
                put_u16(out, n.kind);
                out.extend_from_slice(&n.spi);
                out.extend_from_slice(&n.data);
            }
            Payload::Delete(d) => match d {
                Delete::Ike => out.extend_from_slice(&[1, 0, 0, 0]),
                Delete::Esp(spis) => {
                    out.extend_from_slice(&[3, 4]);
                    put_u16(out, spis.len() as u16);
                    for s in spis {
                        out.extend_from_slice(&s.to_be_bytes());
                    }
                }
                Delete::Other {
                    protocol,
                    spi_size,
                    spis,
                } => {
                    out.extend_from_slice(&[*protocol, *spi_size]);
                    let n = spis.len().checked_div(usize::from(*spi_size)).unwrap_or(0);
                    put_u16(out, n as u16);
                    out.extend_from_slice(spis);
                }
            },
            Payload::TsI(list) | Payload::TsR(list) => {
                out.extend_from_slice(&[list.len() as u8, 0, 0, 0]);
                for ts in list {
                    ts.encode(out);
                }
            }
        }
    }
}

fn decode_delete(b: &[u8]) -> Result<Delete, DecodeError> {
    let mut r = Reader::new(b, "Delete");
    let protocol = r.u8()?;
    let spi_size = r.u8()?;
    let n = usize::from(r.u16()?);
    let spis = r.take(n * usize::from(spi_size))?;
    if !r.is_empty() {
        return Err(r.err());
    }
    match (protocol, spi_size) {
        (1, 0) if n == 0 => Ok(Delete::Ike),
        (1, _) => Err(r.err()),
        (3, 4) => Ok(Delete::Esp(
            spis.chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )),
        (3, _) => Err(r.err()),
        _ => Ok(Delete::Other {
            protocol,
            spi_size,
            spis: spis.to_vec(),
        }),
    }
}

fn decode_sa(b: &[u8]) -> Result<Vec<Proposal>, DecodeError> {
    let mut r = Reader::new(b, "SA");
    let mut out = Vec::new();
    loop {
        let last = r.u8()?;
        r.u8()?;
        let len = usize::from(r.u16()?);
        let body = r.take(len.checked_sub(4).ok_or(DecodeError::Malformed("SA"))?)?;
        out.push(decode_proposal(body)?);
        match last {
            0 => break,
            2 => continue,
            _ => return Err(r.err()),
        }
    }
    if !r.is_empty() {
        return Err(r.err());
    }
    Ok(out)
}

fn decode_proposal(b: &[u8]) -> Result<Proposal, DecodeError> {
    let mut r = Reader::new(b, "SA");
    let number = r.u8()?;
    let protocol = r.u8()?;
    let spi_size = r.u8()?;
    let count = r.u8()?;
    let spi = r.take(usize::from(spi_size))?.to_vec();
    let mut transforms = Vec::with_capacity(usize::from(count));
    for i in 0..count {
        let last = r.u8()?;
        r.u8()?;
        let len = usize::from(r.u16()?);
        let body = r.take(len.checked_sub(4).ok_or(DecodeError::Malformed("SA"))?)?;
        let want_last = if i + 1 == count { 0 } else { 3 };
        if last != want_last {
            return Err(r.err());
        }
        let mut t = Reader::new(body, "SA");
        let kind = t.u8()?;
        t.u8()?;
        let id = t.u16()?;
        let mut tr = Transform {
            kind,
            id,
            key_len: None,
            other_attrs: Vec::new(),
        };
        while !t.is_empty() {
            let before = t.buf;
            let ty = t.u16()?;
            let value = if ty & 0x8000 != 0 {
                Some(t.u16()?)
            } else {
                let l = usize::from(t.u16()?);
                t.take(l)?;
                None
            };
            match (ty & 0x7fff, value) {
                (ATTR_KEY_LENGTH_TYPE, Some(v)) if tr.key_len.is_none() => tr.key_len = Some(v),
                _ => tr
                    .other_attrs
                    .extend_from_slice(&before[..before.len() - t.buf.len()]),
            }
        }
        transforms.push(tr);
    }
    if !r.is_empty() {
        return Err(r.err());
    }
    Ok(Proposal {
        number,
        protocol,
        spi,
        transforms,
    })
}

const ATTR_KEY_LENGTH_TYPE: u16 = 14;

fn encode_sa(props: &[Proposal], out: &mut Vec<u8>) {
    for (i, p) in props.iter().enumerate() {
        let start = out.len();
        out.extend_from_slice(&[if i + 1 == props.len() { 0 } else { 2 }, 0, 0, 0]);
        out.extend_from_slice(&[
            p.number,
            p.protocol,
            p.spi.len() as u8,
            p.transforms.len() as u8,
        ]);
        out.extend_from_slice(&p.spi);
        for (j, t) in p.transforms.iter().enumerate() {
            let ts = out.len();
            out.extend_from_slice(&[if j + 1 == p.transforms.len() { 0 } else { 3 }, 0, 0, 0]);
            out.extend_from_slice(&[t.kind, 0]);
            put_u16(out, t.id);
            if let Some(k) = t.key_len {
                put_u16(out, 0x8000 | ATTR_KEY_LENGTH_TYPE);
                put_u16(out, k);
            }
            out.extend_from_slice(&t.other_attrs);
            let tl = out.len() - ts;
            patch_u16(out, ts + 2, tl);
        }
        let pl = out.len() - start;
        patch_u16(out, start + 2, pl);
    }
}

/// The payloads of a message as found on the wire.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Body {
    /// No SK payload.
    Plain(Vec<Payload>),
    /// The last payload is SK; `outer` are the payloads before it (normally none).
    Encrypted {
        /// Unencrypted payloads in front of SK.
        outer: Vec<Payload>,
        /// The SK payload's Next Payload: the type of the first inner payload.
        first_inner: u8,
        /// Offset of the SK payload's generic header in the message.
        sk_at: usize,
    },
}

/// Decodes a whole message: the header, then the payload chain up to an SK payload (which must
/// be the last).
///
/// # Errors
/// See [`DecodeError`].
///
/// # Panics
/// Never, for any input.
pub fn decode(buf: &[u8]) -> Result<(Header, Body), DecodeError> {
    let header = Header::decode(buf)?;
    let body = decode_chain(header.next_payload, buf, HEADER_LEN, true)?;
    Ok((header, body))
}

/// Decodes a payload chain starting with type `first` (the inside of an SK payload).
///
/// # Errors
/// See [`DecodeError`]; an SK payload inside is [`DecodeError::MisplacedSk`].
pub fn decode_payloads(first: u8, buf: &[u8]) -> Result<Vec<Payload>, DecodeError> {
    match decode_chain(first, buf, 0, false)? {
        Body::Plain(p) => Ok(p),
        Body::Encrypted { .. } => Err(DecodeError::MisplacedSk),
    }
}

fn decode_chain(first: u8, buf: &[u8], mut at: usize, allow_sk: bool) -> Result<Body, DecodeError> {
    let mut next = first;
    let mut out = Vec::new();
    while next != payload_type::NONE {
        let kind = next;
        let h = buf
            .get(at..at + GENERIC_LEN)
            .ok_or(DecodeError::Truncated)?;
        next = h[0];
        let critical = h[1] & 0x80 != 0;
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        if len < GENERIC_LEN {
            return Err(DecodeError::BadLength);
        }
        let body = buf
            .get(at + GENERIC_LEN..at + len)
            .ok_or(DecodeError::Truncated)?;
        if kind == payload_type::SK {
            if !allow_sk || at + len != buf.len() {
                return Err(DecodeError::MisplacedSk);
            }
            return Ok(Body::Encrypted {
                outer: out,
                first_inner: next,
                sk_at: at,
            });
        }
        if !payload_type::is_known(kind) && critical {
            return Err(DecodeError::UnsupportedCritical(kind));
        }
        if payload_type::is_known(kind) || critical {
            out.push(Payload::decode_body(kind, body)?);
        }
        // Unknown non-critical payloads are skipped (RFC 7296 section 2.5).
        at += len;
        if out.len() > 1024 {
            return Err(DecodeError::Malformed("chain"));
        }
    }
    if at != buf.len() {
        return Err(DecodeError::BadLength);
    }
    Ok(Body::Plain(out))
}

/// Encodes a payload chain; returns the type of the first payload (0 if none) and the bytes.
pub fn encode_payloads(payloads: &[Payload]) -> (u8, Vec<u8>) {
    let mut out = Vec::new();
    for (i, p) in payloads.iter().enumerate() {
        let next = payloads
            .get(i + 1)
            .map_or(payload_type::NONE, Payload::kind);
        let start = out.len();
        out.extend_from_slice(&[next, 0, 0, 0]);
        p.encode_body(&mut out);
        let len = out.len() - start;
        patch_u16(&mut out, start + 2, len);
    }
    (
        payloads.first().map_or(payload_type::NONE, Payload::kind),
        out,
    )
}

/// Encodes an unencrypted message; `header.next_payload` and `header.length` are set here.
pub fn encode_plain(header: &Header, payloads: &[Payload]) -> Vec<u8> {
    let (first, body) = encode_payloads(payloads);
    let mut h = *header;
    h.next_payload = first;
    h.length = (HEADER_LEN + body.len()) as u32;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    h.encode(&mut out);
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_payloads() -> Vec<Payload> {
        vec![
            Payload::Sa(vec![Proposal {
                number: 1,
                protocol: 1,
                spi: vec![],
                transforms: vec![
                    Transform {
                        kind: 1,
                        id: 20,
                        key_len: Some(256),
                        other_attrs: Vec::new(),
                    },
                    Transform {
                        kind: 2,
                        id: 5,
                        key_len: None,
                        other_attrs: Vec::new(),
                    },
                ],
            }]),
            Payload::Ke {
                group: 31,
                data: vec![9; 32],
            },
            Payload::Nonce(vec![1; 32]),
            Payload::Notify(Notify::new(
                notify_type::NAT_DETECTION_SOURCE_IP,
                vec![2; 20],
            )),
            Payload::IdI("gw.example.net".parse().unwrap()),
            Payload::IdR("192.0.2.1".parse().unwrap()),
            Payload::Auth {
                method: AUTH_PSK,
                data: vec![3; 32],
            },
            Payload::TsI(vec![
                TrafficSelector::any_ipv4(),
                TrafficSelector::any_ipv6(),
            ]),
            Payload::TsR(vec!["10.1.0.0/16".parse().unwrap()]),
            Payload::Delete(Delete::Esp(vec![0x1000, 0x2000])),
            Payload::Delete(Delete::Ike),
            Payload::VendorId(b"braid".to_vec()),
            Payload::Other {
                kind: payload_type::CERTREQ,
                data: vec![4],
            },
        ]
    }

    #[test]
    fn round_trip() {
        let h = Header {
            spi_i: 0x0102_0304_0506_0708,
            spi_r: 0,
            next_payload: 0,
            version: VERSION,
            exchange: exchange::IKE_SA_INIT,
            flags: FLAG_INITIATOR,
            message_id: 0,
            length: 0,
        };
        let msg = encode_plain(&h, &sample_payloads());
        let (h2, body) = decode(&msg).unwrap();
        assert_eq!(h2.spi_i, h.spi_i);
        assert_eq!(h2.length as usize, msg.len());
        assert_eq!(body, Body::Plain(sample_payloads()));
    }

    #[test]
    fn exact_encodings() {
        // SA payload of RFC 7296 3.3: proposal last-substruc 0, transform 3 (more) / 0 (last),
        // AES-GCM Key Length as TV attribute 0x800e 0x0100.
        let p = Payload::Sa(vec![Proposal {
            number: 1,
            protocol: 1,
            spi: vec![],
            transforms: vec![
                Transform {
                    kind: 1,
                    id: 20,
                    key_len: Some(256),
                    other_attrs: Vec::new(),
                },
                Transform {
                    kind: 4,
                    id: 19,
                    key_len: None,
                    other_attrs: Vec::new(),
                },
            ],
        }]);
        let (first, b) = encode_payloads(&[p]);
        assert_eq!(first, 33);
        assert_eq!(
            b,
            [
                0, 0, 0, 32, // generic header
                0, 0, 0, 28, 1, 1, 0, 2, // proposal
                3, 0, 0, 12, 1, 0, 0, 20, 0x80, 0x0e, 0x01, 0x00, // ENCR 20, 256 bits
                0, 0, 0, 8, 4, 0, 0, 19, // D-H 19
            ]
        );
        let (_, b) = encode_payloads(&[Payload::TsI(vec![TrafficSelector::any_ipv4()])]);
        assert_eq!(
            b,
            [
                0, 0, 0, 24, 1, 0, 0, 0, 7, 0, 0, 16, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff,
                0xff, 0xff
            ]
        );
    }

    #[test]
    fn critical_bit_and_unknown_payloads() {
        let h = Header {
            spi_i: 1,
            spi_r: 0,
            next_payload: 0,
            version: VERSION,
            exchange: exchange::IKE_SA_INIT,
            flags: FLAG_INITIATOR,
            message_id: 0,
            length: 0,
        };
        let mut msg = encode_plain(&h, &[Payload::Nonce(vec![7; 16])]);
        // Append an unknown payload type 200 after the nonce, not critical: skipped.
        msg[HEADER_LEN] = 200;
        msg.extend_from_slice(&[0, 0, 0, 6, 0xaa, 0xbb]);
        let len = msg.len() as u32;
        msg[24..28].copy_from_slice(&len.to_be_bytes());
        let (_, body) = decode(&msg).unwrap();
        assert_eq!(body, Body::Plain(vec![Payload::Nonce(vec![7; 16])]));
        // Critical: refused with UNSUPPORTED_CRITICAL_PAYLOAD carrying the type.
        msg[HEADER_LEN + 20 + 1] = 0x80;
        let e = decode(&msg).unwrap_err();
        assert_eq!(e, DecodeError::UnsupportedCritical(200));
        assert_eq!(
            e.notify(),
            (notify_type::UNSUPPORTED_CRITICAL_PAYLOAD, vec![200])
        );
    }

    #[test]
    fn malformed_inputs_are_errors() {
        assert_eq!(decode(&[0; 10]), Err(DecodeError::Truncated));
        let h = Header {
            spi_i: 1,
            spi_r: 0,
            next_payload: 0,
            version: 0x10,
            exchange: 34,
            flags: 8,
            message_id: 0,
            length: 28,
        };
        let mut b = Vec::new();
        h.encode(&mut b);
        assert_eq!(decode(&b), Err(DecodeError::BadVersion(0x10)));
        b[17] = VERSION;
        b[27] = 29;
        assert_eq!(decode(&b), Err(DecodeError::BadLength));
        // A short nonce is INVALID_SYNTAX.
        let msg = encode_plain(&h_ok(), &[Payload::Nonce(vec![7; 8])]);
        assert_eq!(decode(&msg), Err(DecodeError::Malformed("Nonce")));
        assert_eq!(
            DecodeError::Malformed("Nonce").notify().0,
            notify_type::INVALID_SYNTAX
        );
    }

    fn h_ok() -> Header {
        Header {
            spi_i: 1,
            spi_r: 2,
            next_payload: 0,
            version: VERSION,
            exchange: 37,
            flags: 0,
            message_id: 0,
            length: 0,
        }
    }

    #[test]
    fn traffic_selectors() {
        let any = TrafficSelector::any_ipv4();
        let net: TrafficSelector = "10.1.0.0/16".parse().unwrap();
        assert_eq!(net.start, "10.1.0.0".parse::<IpAddr>().unwrap());
        assert_eq!(net.end, "10.1.255.255".parse::<IpAddr>().unwrap());
        assert_eq!(any.intersect(&net), Some(net));
        assert!(any.contains(&net));
        assert!(!net.contains(&any));
        assert_eq!(net.intersect(&TrafficSelector::any_ipv6()), None);
        assert_eq!(
            "::/0".parse::<TrafficSelector>().unwrap(),
            TrafficSelector::any_ipv6()
        );
        assert_eq!("0.0.0.0/0".parse::<TrafficSelector>().unwrap(), any);
        assert!("10.0.0.0/33".parse::<TrafficSelector>().is_err());
        assert_eq!(any.to_string(), "0.0.0.0-255.255.255.255");
    }

    #[test]
    fn identities() {
        assert_eq!("192.0.2.1".parse::<Identity>().unwrap().kind(), 1);
        assert_eq!("2001:db8::1".parse::<Identity>().unwrap().kind(), 5);
        assert_eq!(
            "@gw".parse::<Identity>().unwrap(),
            Identity::Fqdn("gw".into())
        );
        assert_eq!(
            "keyid:abc".parse::<Identity>().unwrap(),
            Identity::KeyId(b"abc".to_vec())
        );
        assert_eq!(
            Identity::Ipv4("192.0.2.1".parse().unwrap()).body(),
            [1, 0, 0, 0, 192, 0, 2, 1]
        );
    }
}
