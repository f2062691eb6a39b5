//! The BGP-4 wire codec: bytes to [`Message`] and back, against the capabilities both speakers negotiated
//! ([`Negotiated`]).
//!
//! Implemented:
//! - RFC 4271 4.1-4.5 message formats and the 6.1-6.3 error checks (header, OPEN, UPDATE, NOTIFICATION,
//!   KEEPALIVE); [`frame_len`] finds message boundaries in a TCP byte stream, [`Header`] is a checked view.
//! - RFC 5492 capabilities (multiprotocol, route refresh, 4-octet ASN, graceful restart decoded; every other
//!   code kept as [`Capability::Unknown`] and ignored) and RFC 9072 extended optional parameters (decoded;
//!   used when encoding more than 255 octets of parameters).
//! - RFC 4760 MP_REACH_NLRI / MP_UNREACH_NLRI for IPv4 and IPv6 unicast (IPv6 next hop of 16 octets, or 32
//!   with the RFC 2545 link-local address). A multiprotocol attribute for a family that was not negotiated is
//!   dropped and recorded as an attribute discard.
//! - RFC 6793 4-octet ASNs: with a 2-octet peer, AS_PATH and AGGREGATOR carry 2-octet ASNs and AS4_PATH /
//!   AS4_AGGREGATOR are merged on receipt (4.2.3) and generated on sending (4.2.2); from a 4-octet peer,
//!   AS4_PATH and AS4_AGGREGATOR are discarded.
//! - RFC 7606 revised UPDATE error handling. An UPDATE whose lengths cannot be parsed, whose NLRI or withdrawn
//!   routes are malformed (5.3), or whose MP_REACH_NLRI / MP_UNREACH_NLRI is malformed or repeated (3.g, 7.11)
//!   is an `Err` carrying the NOTIFICATION to send (session reset). Every other malformed attribute becomes an
//!   [`Rfc7606Action`] in [`Update::errors`] (treat-as-withdraw or attribute discard, sections 3 and 7) and
//!   decoding goes on, so the RIB knows which prefixes to withdraw. Treat-as-withdraw in an UPDATE that
//!   carries attributes but no reachable NLRI resets the session (5.2). The MP attributes are encoded first
//!   (5.1), the others in type-code order.
//! - RFC 7607: AS 0 in OPEN is a Bad Peer AS; in AS_PATH it makes the UPDATE treat-as-withdraw, in
//!   AGGREGATOR / AS4_* it discards the attribute.
//! - RFC 2918 ROUTE-REFRESH, with the RFC 7313 length check; BoRR/EoRR subtypes decode as a plain request.
//! - Validation only, the value is kept opaque in [`PathAttributes::unknown`]: ORIGINATOR_ID and
//!   CLUSTER_LIST (RFC 7606 7.9, 7.10), LARGE_COMMUNITY (RFC 8092 error handling) and OTC (RFC 9234)
//!   lengths, malformed = treat-as-withdraw.
//!
//! Left out on purpose: extended messages (RFC 8654: we never advertise the capability, so 4096 octets is
//! the limit), ADD-PATH path identifiers (RFC 7911, not advertised), extended next hop (RFC 8950),
//! confederations (RFC 5065 segments are malformed here), the "AFI/SAFI disable" alternative of RFC 7606 (we
//! reset), and every check that needs to know whether the peer is internal or external (LOCAL_PREF from an
//! eBGP peer, first AS = peer AS, NEXT_HOP = our own address): those belong to the RIB. The Partial bit of
//! *known* optional transitive attributes is not kept; unknown transitive ones get it set on receipt
//! (RFC 4271 9, they are passed on as they are).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use super::types::{
    attr_flags, attr_type, error_code, subcode, AsPath, AsSegment, Asn, Capability, ExtCommunity,
    Family, Message, MpReach, MpUnreach, Negotiated, Notification, Open, Origin, PathAttributes,
    Prefix, RawAttribute, Rfc7606Action, Update, AS_TRANS,
};

/// Length of the message header: marker, length, type (RFC 4271 4.1).
pub const HEADER_LEN: usize = 19;
/// Largest BGP message (RFC 4271 4.1; extended messages are not negotiated).
pub const MAX_MESSAGE_LEN: usize = 4096;

/// Smallest OPEN: header + version, My AS, hold time, BGP identifier, optional parameters length.
const MIN_OPEN_LEN: usize = HEADER_LEN + 10;
/// Smallest UPDATE: header + withdrawn routes length + total path attribute length.
const MIN_UPDATE_LEN: usize = HEADER_LEN + 4;
/// Smallest NOTIFICATION: header + code + subcode.
const MIN_NOTIFICATION_LEN: usize = HEADER_LEN + 2;
/// The only valid ROUTE-REFRESH length (RFC 2918 3, RFC 7313 5).
const ROUTE_REFRESH_LEN: usize = HEADER_LEN + 4;

/// Message type codes (RFC 4271 4.1, RFC 2918 3).
pub mod message_type {
    pub const OPEN: u8 = 1;
    pub const UPDATE: u8 = 2;
    pub const NOTIFICATION: u8 = 3;
    pub const KEEPALIVE: u8 = 4;
    pub const ROUTE_REFRESH: u8 = 5;
}

/// Capability codes braid decodes or recognises (IANA "Capability Codes").
pub mod capability_code {
    /// RFC 4760.
    pub const MULTIPROTOCOL: u8 = 1;
    /// RFC 2918.
    pub const ROUTE_REFRESH: u8 = 2;
    /// RFC 8654 (not advertised by braid).
    pub const EXTENDED_MESSAGE: u8 = 6;
    /// RFC 4724.
    pub const GRACEFUL_RESTART: u8 = 64;
    /// RFC 6793.
    pub const FOUR_OCTET_ASN: u8 = 65;
    /// RFC 7911 (not advertised by braid).
    pub const ADD_PATH: u8 = 69;
    /// RFC 7313 (not advertised by braid).
    pub const ENHANCED_ROUTE_REFRESH: u8 = 70;
    /// draft-walton-bgp-hostname-capability (FRR sends it).
    pub const FQDN: u8 = 73;
}

/// Optional parameter types in OPEN (RFC 5492, RFC 9072).
mod param_type {
    pub const CAPABILITIES: u8 = 2;
    /// RFC 9072: a Non-Ext OP Type of 255 after a Non-Ext OP Len of 255 announces the extended format.
    pub const EXTENDED_LENGTH: u8 = 255;
}

/// Path attribute types braid validates but keeps opaque in [`PathAttributes::unknown`].
mod opaque_type {
    pub const ORIGINATOR_ID: u8 = 9;
    pub const CLUSTER_LIST: u8 = 10;
    pub const LARGE_COMMUNITY: u8 = 32;
    pub const OTC: u8 = 35;
}

/// A message that cannot be accepted, with the NOTIFICATION it calls for (the session is reset).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub notification: Notification,
    /// What was wrong, for the log.
    pub reason: String,
    /// RFC 2918 4 / RFC 7313 5: the message must be dropped silently (a ROUTE-REFRESH for an AFI/SAFI braid
    /// never advertised, or of an unknown subtype). No NOTIFICATION is sent and the session stays up;
    /// `notification` is then only descriptive.
    pub ignorable: bool,
}

impl DecodeError {
    fn new(code: u8, sub: u8, data: Vec<u8>, reason: impl Into<String>) -> DecodeError {
        DecodeError {
            notification: Notification::new(code, sub, data),
            reason: reason.into(),
            ignorable: false,
        }
    }

    fn bad_length(len: usize, reason: impl Into<String>) -> DecodeError {
        let len = u16::try_from(len).unwrap_or(u16::MAX);
        DecodeError::new(
            error_code::MESSAGE_HEADER,
            subcode::BAD_MESSAGE_LENGTH,
            len.to_be_bytes().to_vec(),
            reason,
        )
    }

    fn update(sub: u8, data: Vec<u8>, reason: impl Into<String>) -> DecodeError {
        DecodeError::new(error_code::UPDATE_MESSAGE, sub, data, reason)
    }

    fn open(sub: u8, data: Vec<u8>, reason: impl Into<String>) -> DecodeError {
        DecodeError::new(error_code::OPEN_MESSAGE, sub, data, reason)
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.notification.describe(), self.reason)
    }
}

impl std::error::Error for DecodeError {}

impl From<DecodeError> for Notification {
    fn from(e: DecodeError) -> Notification {
        e.notification
    }
}

/// A message that cannot be put on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncodeError {
    /// The encoding would exceed [`MAX_MESSAGE_LEN`] octets.
    TooLong { len: usize },
}

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncodeError::TooLong { len } => {
                write!(
                    f,
                    "message of {len} octets exceeds the {MAX_MESSAGE_LEN}-octet BGP limit"
                )
            }
        }
    }
}

impl std::error::Error for EncodeError {}

// ------------------------------------------------------------------------------------------------
// Header view.

/// Byte ranges of the message header (RFC 4271 4.1).
mod field {
    use std::ops::Range;
    pub const MARKER: Range<usize> = 0..16;
    pub const LENGTH: Range<usize> = 16..18;
    pub const TYPE: usize = 18;
}

/// A read-only view of the 19-octet message header at the start of a buffer.
#[derive(Debug, Clone, Copy)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// A view over `buffer`, or `None` if it holds fewer than [`HEADER_LEN`] octets. No accessor of a
    /// checked view can panic.
    pub fn new_checked(buffer: T) -> Option<Header<T>> {
        if buffer.as_ref().len() < HEADER_LEN {
            None
        } else {
            Some(Header { buffer })
        }
    }

    /// All 16 marker octets are 0xFF.
    pub fn marker_is_valid(&self) -> bool {
        self.buffer.as_ref()[field::MARKER]
            .iter()
            .all(|&b| b == 0xFF)
    }

    /// The Length field: the whole message, header included.
    pub fn length(&self) -> u16 {
        let b = &self.buffer.as_ref()[field::LENGTH];
        u16::from_be_bytes([b[0], b[1]])
    }

    pub fn message_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }
}

/// How many octets the message at the start of `buf` occupies, from its header; `Ok(None)` while fewer than
/// [`HEADER_LEN`] octets are buffered. A bad marker is Message Header Error / Connection Not Synchronized,
/// a length below 19 or above 4096 is Message Header Error / Bad Message Length with the length as data
/// (RFC 4271 6.1).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Notification> {
    match check_header(buf) {
        Ok(v) => Ok(v.map(|(len, _)| len)),
        Err(e) => Err(e.notification),
    }
}

fn check_header(buf: &[u8]) -> Result<Option<(usize, u8)>, DecodeError> {
    let Some(h) = Header::new_checked(buf) else {
        return Ok(None);
    };
    if !h.marker_is_valid() {
        return Err(DecodeError::new(
            error_code::MESSAGE_HEADER,
            subcode::CONNECTION_NOT_SYNCHRONIZED,
            Vec::new(),
            "marker is not all ones",
        ));
    }
    let len = usize::from(h.length());
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(DecodeError::bad_length(
            len,
            format!("length field {len} outside 19..=4096"),
        ));
    }
    Ok(Some((len, h.message_type())))
}

// ------------------------------------------------------------------------------------------------
// Decoding.

/// A cursor over untrusted bytes; every read is checked.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.buf.len() {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.bytes(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.bytes(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Option<u32> {
        self.bytes(4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn ipv4(&mut self) -> Option<Ipv4Addr> {
        self.u32().map(Ipv4Addr::from)
    }

    fn ipv6(&mut self) -> Option<Ipv6Addr> {
        self.bytes(16).map(|b| {
            let mut a = [0u8; 16];
            a.copy_from_slice(b);
            Ipv6Addr::from(a)
        })
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

/// Decodes one whole message (header included; `buf` must hold exactly that message, see [`frame_len`]).
///
/// `ctx` is `None` until both OPENs are exchanged: then OPEN, NOTIFICATION and KEEPALIVE decode, and an
/// UPDATE or ROUTE-REFRESH is a Finite State Machine Error / Unexpected Message in OpenSent (RFC 6608)
/// without being looked at. With `ctx`, UPDATEs decode against the negotiated capabilities whatever the
/// session state (an UPDATE before Established is for the FSM to refuse).
pub fn decode(buf: &[u8], ctx: Option<&Negotiated>) -> Result<Message, DecodeError> {
    let Some((len, kind)) = check_header(buf)? else {
        return Err(DecodeError::bad_length(
            buf.len(),
            format!("{} octets cannot hold a message header", buf.len()),
        ));
    };
    if buf.len() != len {
        return Err(DecodeError::bad_length(
            len,
            format!("length field {len} but {} octets given", buf.len()),
        ));
    }
    let body = &buf[HEADER_LEN..];
    match kind {
        message_type::OPEN => decode_open(body).map(Message::Open),
        message_type::UPDATE => {
            if len < MIN_UPDATE_LEN {
                return Err(DecodeError::bad_length(
                    len,
                    format!("UPDATE of {len} octets"),
                ));
            }
            let ctx = ctx.ok_or_else(|| unexpected_before_open("UPDATE"))?;
            decode_update(body, ctx).map(Message::Update)
        }
        message_type::NOTIFICATION => {
            if len < MIN_NOTIFICATION_LEN {
                return Err(DecodeError::bad_length(
                    len,
                    format!("NOTIFICATION of {len} octets"),
                ));
            }
            Ok(Message::Notification(Notification::new(
                body[0],
                body[1],
                body[2..].to_vec(),
            )))
        }
        message_type::KEEPALIVE => {
            if len != HEADER_LEN {
                return Err(DecodeError::bad_length(
                    len,
                    format!("KEEPALIVE of {len} octets"),
                ));
            }
            Ok(Message::Keepalive)
        }
        message_type::ROUTE_REFRESH => {
            if len != ROUTE_REFRESH_LEN {
                return Err(DecodeError::new(
                    error_code::ROUTE_REFRESH,
                    1, // Invalid Message Length (RFC 7313 5); data = the whole message.
                    buf.to_vec(),
                    format!("ROUTE-REFRESH of {len} octets"),
                ));
            }
            if ctx.is_none() {
                return Err(unexpected_before_open("ROUTE-REFRESH"));
            }
            decode_route_refresh(body)
        }
        other => Err(DecodeError::new(
            error_code::MESSAGE_HEADER,
            subcode::BAD_MESSAGE_TYPE,
            vec![other],
            format!("message type {other}"),
        )),
    }
}

fn unexpected_before_open(what: &str) -> DecodeError {
    DecodeError::new(
        error_code::FSM,
        subcode::FSM_UNEXPECTED_IN_OPENSENT,
        Vec::new(),
        format!("{what} before the OPEN exchange"),
    )
}

fn decode_route_refresh(body: &[u8]) -> Result<Message, DecodeError> {
    let afi = u16::from_be_bytes([body[0], body[1]]);
    let subtype = body[2];
    let safi = body[3];
    let ignore = |reason: String| DecodeError {
        notification: Notification::new(error_code::ROUTE_REFRESH, 0, Vec::new()),
        reason,
        ignorable: true,
    };
    if subtype > 2 {
        return Err(ignore(format!(
            "ROUTE-REFRESH subtype {subtype} (RFC 7313 5: ignored)"
        )));
    }
    match Family::from_afi_safi(afi, safi) {
        Some(f) => Ok(Message::RouteRefresh(f)),
        None => Err(ignore(format!(
            "ROUTE-REFRESH for AFI {afi} SAFI {safi} (RFC 2918 4: ignored)"
        ))),
    }
}

fn decode_open(body: &[u8]) -> Result<Open, DecodeError> {
    let total = body.len() + HEADER_LEN;
    if total < MIN_OPEN_LEN {
        return Err(DecodeError::bad_length(
            total,
            format!("OPEN of {total} octets"),
        ));
    }
    let mut r = Reader::new(body);
    let short = || DecodeError::bad_length(total, "OPEN truncated");
    let version = r.u8().ok_or_else(short)?;
    if version != 4 {
        return Err(DecodeError::open(
            subcode::UNSUPPORTED_VERSION,
            4u16.to_be_bytes().to_vec(),
            format!("BGP version {version}"),
        ));
    }
    let my_as = r.u16().ok_or_else(short)?;
    let hold_time = r.u16().ok_or_else(short)?;
    let bgp_id = r.ipv4().ok_or_else(short)?;
    let opt_len = r.u8().ok_or_else(short)?;

    let mut capabilities = Vec::new();
    let malformed = |reason: String| DecodeError::open(0, Vec::new(), reason);
    // RFC 9072: Non-Ext OP Len 255 followed by Non-Ext OP Type 255 switches to 2-octet lengths.
    let extended = opt_len == 255 && r.buf.first() == Some(&param_type::EXTENDED_LENGTH);
    let params = if extended {
        r.u8();
        let ext_len = r
            .u16()
            .ok_or_else(|| malformed("extended optional parameters length missing".into()))?;
        r.bytes(usize::from(ext_len)).ok_or_else(|| {
            malformed(format!(
                "extended optional parameters length {ext_len} overruns the OPEN"
            ))
        })?
    } else {
        r.bytes(usize::from(opt_len)).ok_or_else(|| {
            malformed(format!(
                "optional parameters length {opt_len} overruns the OPEN"
            ))
        })?
    };
    if r.remaining() != 0 {
        return Err(malformed(format!(
            "{} octets after the optional parameters",
            r.remaining()
        )));
    }
    let mut p = Reader::new(params);
    while p.remaining() > 0 {
        let ptype = p
            .u8()
            .ok_or_else(|| malformed("optional parameter truncated".into()))?;
        let plen = if extended {
            p.u16().map(usize::from)
        } else {
            p.u8().map(usize::from)
        }
        .ok_or_else(|| malformed("optional parameter length missing".into()))?;
        let value = p.bytes(plen).ok_or_else(|| {
            malformed(format!(
                "optional parameter {ptype} length {plen} overruns the parameters"
            ))
        })?;
        if ptype != param_type::CAPABILITIES {
            return Err(DecodeError::open(
                subcode::UNSUPPORTED_OPTIONAL_PARAMETER,
                Vec::new(),
                format!("optional parameter type {ptype}"),
            ));
        }
        decode_capabilities(value, &mut capabilities).map_err(malformed)?;
    }

    let four = capabilities.iter().find_map(|c| match c {
        Capability::FourOctetAsn(a) => Some(*a),
        _ => None,
    });
    let asn = four.unwrap_or(Asn::from(my_as));
    if asn == 0 || my_as == 0 {
        // RFC 7607 3.
        return Err(DecodeError::open(
            subcode::BAD_PEER_AS,
            my_as.to_be_bytes().to_vec(),
            "peer AS 0",
        ));
    }
    if hold_time == 1 || hold_time == 2 {
        return Err(DecodeError::open(
            subcode::UNACCEPTABLE_HOLD_TIME,
            Vec::new(),
            format!("hold time {hold_time}"),
        ));
    }
    if bgp_id.is_unspecified() {
        return Err(DecodeError::open(
            subcode::BAD_BGP_IDENTIFIER,
            Vec::new(),
            "BGP identifier 0.0.0.0",
        ));
    }
    Ok(Open {
        version,
        asn,
        hold_time,
        bgp_id,
        capabilities,
    })
}

/// Capability TLVs of one Capabilities optional parameter (RFC 5492 4). Unknown or oddly sized ones are
/// kept as [`Capability::Unknown`]; only a TLV overrunning the parameter is an error.
fn decode_capabilities(value: &[u8], out: &mut Vec<Capability>) -> Result<(), String> {
    let mut r = Reader::new(value);
    while r.remaining() > 0 {
        let code = r.u8().ok_or("capability truncated")?;
        let len = r
            .u8()
            .ok_or_else(|| format!("capability {code} has no length"))?;
        let v = r
            .bytes(usize::from(len))
            .ok_or_else(|| format!("capability {code} length {len} overruns its parameter"))?;
        let cap = match (code, v.len()) {
            (capability_code::MULTIPROTOCOL, 4) => {
                match Family::from_afi_safi(u16::from_be_bytes([v[0], v[1]]), v[3]) {
                    Some(f) => Capability::Multiprotocol(f),
                    None => Capability::Unknown {
                        code,
                        value: v.to_vec(),
                    },
                }
            }
            (capability_code::ROUTE_REFRESH, 0) => Capability::RouteRefresh,
            (capability_code::FOUR_OCTET_ASN, 4) => {
                Capability::FourOctetAsn(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            }
            (capability_code::GRACEFUL_RESTART, _) => Capability::GracefulRestart(v.to_vec()),
            _ => Capability::Unknown {
                code,
                value: v.to_vec(),
            },
        };
        out.push(cap);
    }
    Ok(())
}

/// Reads a run of (length, prefix) NLRI entries (RFC 4271 4.3, RFC 4760 5). Host bits are cleared.
fn decode_prefixes(buf: &[u8], family: Family, out: &mut Vec<Prefix>) -> Result<(), String> {
    let (max, width) = match family {
        Family::Ipv4Unicast => (32u8, 4usize),
        Family::Ipv6Unicast => (128u8, 16usize),
    };
    let mut r = Reader::new(buf);
    while r.remaining() > 0 {
        let len = r.u8().unwrap_or(0);
        if len > max {
            return Err(format!("prefix length {len} > {max}"));
        }
        let n = usize::from(len).div_ceil(8);
        let bytes = r
            .bytes(n)
            .ok_or_else(|| format!("prefix /{len} needs {n} octets, {} left", r.remaining()))?;
        let mut a = [0u8; 16];
        a[..n].copy_from_slice(bytes);
        let addr = if width == 4 {
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(a))
        };
        out.push(Prefix::new(addr, len).ok_or_else(|| format!("prefix length {len}"))?);
    }
    Ok(())
}

/// What RFC 7606 does with one problem in the path attributes (the strongest one wins, 3.h).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Severity {
    Discard,
    Withdraw,
}

/// A malformed attribute that does not reset the session by itself.
struct AttrProblem {
    severity: Severity,
    type_code: u8,
    /// The RFC 4271 6.3 subcode and data, used if RFC 7606 5.2 escalates it to a session reset.
    subcode: u8,
    data: Vec<u8>,
    reason: String,
}

/// The flags a known attribute must carry (RFC 4271 5, RFC 4760, RFC 1997, RFC 4360, RFC 6793).
fn expected_flags(type_code: u8) -> Option<(bool, bool)> {
    use attr_type::*;
    // (optional, transitive)
    Some(match type_code {
        ORIGIN | AS_PATH | NEXT_HOP | LOCAL_PREF | ATOMIC_AGGREGATE => (false, true),
        MULTI_EXIT_DISC | MP_REACH_NLRI | MP_UNREACH_NLRI => (true, false),
        AGGREGATOR | COMMUNITIES | EXTENDED_COMMUNITIES | AS4_PATH | AS4_AGGREGATOR => (true, true),
        opaque_type::ORIGINATOR_ID | opaque_type::CLUSTER_LIST => (true, false),
        opaque_type::LARGE_COMMUNITY | opaque_type::OTC => (true, true),
        _ => return None,
    })
}

/// Types the model holds in typed fields; never written from [`PathAttributes::unknown`].
fn is_modelled(type_code: u8) -> bool {
    matches!(type_code, 1..=8 | 14..=18)
}

/// The attribute exactly as received (flags, type, length, value), the data of most UPDATE NOTIFICATIONs.
fn attr_bytes(flags: u8, type_code: u8, value: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(value.len() + 4);
    put_attr(
        &mut v,
        flags & !attr_flags::EXTENDED_LENGTH,
        type_code,
        value,
    );
    v
}

/// Decoding state of one UPDATE's path attributes.
struct AttrWalk<'c> {
    ctx: &'c Negotiated,
    has_ipv4_nlri: bool,
    pa: PathAttributes,
    seen: [bool; 256],
    problems: Vec<AttrProblem>,
    mp_reach: Option<MpReach>,
    mp_unreach: Option<MpUnreach>,
    /// AS_PATH parsed well (merging AS4_PATH into a malformed one makes no sense).
    as_path_ok: bool,
    as4_path: Option<AsPath>,
    as4_aggregator: Option<(Asn, Ipv4Addr)>,
    next_hop_raw: Option<(Ipv4Addr, Vec<u8>)>,
    abandoned: bool,
    other_than_mp_unreach: bool,
}

impl<'c> AttrWalk<'c> {
    fn problem(
        &mut self,
        severity: Severity,
        type_code: u8,
        sub: u8,
        data: Vec<u8>,
        reason: String,
    ) {
        self.problems.push(AttrProblem {
            severity,
            type_code,
            subcode: sub,
            data,
            reason,
        });
    }

    /// RFC 7606 4: walks the attributes; an attribute overrunning the field ends the walk (treat-as-withdraw).
    fn walk(&mut self, attrs: &[u8]) -> Result<(), DecodeError> {
        let mut r = Reader::new(attrs);
        while r.remaining() > 0 {
            let remaining = r.remaining();
            let flags = r.u8().unwrap_or(0);
            let hdr_left = if flags & attr_flags::EXTENDED_LENGTH != 0 {
                3
            } else {
                2
            };
            if remaining < 1 + hdr_left {
                self.other_than_mp_unreach = true;
                self.abandoned = true;
                let t = r.buf.first().copied().unwrap_or(0);
                self.problem(
                    Severity::Withdraw,
                    t,
                    subcode::MALFORMED_ATTRIBUTE_LIST,
                    Vec::new(),
                    format!(
                        "{remaining} octets left, too few for an attribute header (RFC 7606 4)"
                    ),
                );
                return Ok(());
            }
            let type_code = r.u8().unwrap_or(0);
            let len = if hdr_left == 3 {
                usize::from(r.u16().unwrap_or(0))
            } else {
                usize::from(r.u8().unwrap_or(0))
            };
            let Some(value) = r.bytes(len) else {
                if matches!(
                    type_code,
                    attr_type::MP_REACH_NLRI | attr_type::MP_UNREACH_NLRI
                ) {
                    return Err(DecodeError::update(
                        subcode::ATTRIBUTE_LENGTH_ERROR,
                        Vec::new(),
                        format!("attribute {type_code} length {len} overruns the path attributes"),
                    ));
                }
                self.other_than_mp_unreach = true;
                self.abandoned = true;
                self.problem(
                    Severity::Withdraw,
                    type_code,
                    subcode::ATTRIBUTE_LENGTH_ERROR,
                    Vec::new(),
                    format!(
                        "attribute {type_code} length {len} overruns the path attributes ({} left) (RFC 7606 4)",
                        r.remaining()
                    ),
                );
                return Ok(());
            };
            if type_code != attr_type::MP_UNREACH_NLRI {
                self.other_than_mp_unreach = true;
            }
            self.attribute(flags, type_code, value)?;
        }
        Ok(())
    }

    fn attribute(&mut self, flags: u8, type_code: u8, value: &[u8]) -> Result<(), DecodeError> {
        use attr_type::*;
        let is_mp = matches!(type_code, MP_REACH_NLRI | MP_UNREACH_NLRI);
        if self.seen[usize::from(type_code)] {
            if is_mp {
                return Err(DecodeError::update(
                    subcode::MALFORMED_ATTRIBUTE_LIST,
                    Vec::new(),
                    format!("attribute {type_code} appears twice (RFC 7606 3.g)"),
                ));
            }
            self.problem(
                Severity::Discard,
                type_code,
                subcode::MALFORMED_ATTRIBUTE_LIST,
                Vec::new(),
                format!(
                    "repeated attribute {type_code} discarded, the first is kept (RFC 7606 3.g)"
                ),
            );
            return Ok(());
        }
        self.seen[usize::from(type_code)] = true;

        let optional = flags & attr_flags::OPTIONAL != 0;
        let transitive = flags & attr_flags::TRANSITIVE != 0;
        // What RFC 7606 7 does with this attribute when it is malformed (None = reset).
        let severity = match type_code {
            ORIGIN | AS_PATH | NEXT_HOP | MULTI_EXIT_DISC | LOCAL_PREF | COMMUNITIES
            | EXTENDED_COMMUNITIES => Some(Severity::Withdraw),
            ATOMIC_AGGREGATE | AGGREGATOR | AS4_PATH | AS4_AGGREGATOR => Some(Severity::Discard),
            MP_REACH_NLRI | MP_UNREACH_NLRI => None,
            _ => Some(Severity::Withdraw),
        };
        let Some(expected) = expected_flags(type_code) else {
            return self.unknown(flags, type_code, value);
        };
        if (optional, transitive) != expected {
            let data = attr_bytes(flags, type_code, value);
            let reason = format!(
                "attribute {type_code} flags {flags:#04x}: optional/transitive must be {}/{} (RFC 7606 3.c)",
                u8::from(expected.0),
                u8::from(expected.1)
            );
            return match severity {
                Some(s) => {
                    self.problem(s, type_code, subcode::ATTRIBUTE_FLAGS_ERROR, data, reason);
                    Ok(())
                }
                None => Err(DecodeError::update(
                    subcode::ATTRIBUTE_FLAGS_ERROR,
                    data,
                    reason,
                )),
            };
        }

        let four = self.ctx.four_octet_asn;
        let bad_len = |this: &mut Self, s: Severity, want: &str| {
            this.problem(
                s,
                type_code,
                subcode::ATTRIBUTE_LENGTH_ERROR,
                attr_bytes(flags, type_code, value),
                format!(
                    "attribute {type_code} length {} (want {want}) (RFC 7606 7)",
                    value.len()
                ),
            );
        };
        match type_code {
            ORIGIN => {
                if value.len() != 1 {
                    bad_len(self, Severity::Withdraw, "1");
                } else {
                    match value[0] {
                        0 => self.pa.origin = Origin::Igp,
                        1 => self.pa.origin = Origin::Egp,
                        2 => self.pa.origin = Origin::Incomplete,
                        v => self.problem(
                            Severity::Withdraw,
                            type_code,
                            subcode::INVALID_ORIGIN_ATTRIBUTE,
                            attr_bytes(flags, type_code, value),
                            format!("ORIGIN value {v} (RFC 7606 7.1)"),
                        ),
                    }
                }
            }
            AS_PATH => match decode_as_path(value, if four { 4 } else { 2 }) {
                Ok(p) if p.contains(0) => self.problem(
                    Severity::Withdraw,
                    type_code,
                    subcode::MALFORMED_AS_PATH,
                    Vec::new(),
                    "AS_PATH contains AS 0 (RFC 7607 2)".into(),
                ),
                Ok(p) => {
                    self.pa.as_path = p;
                    self.as_path_ok = true;
                }
                Err(e) => self.problem(
                    Severity::Withdraw,
                    type_code,
                    subcode::MALFORMED_AS_PATH,
                    Vec::new(),
                    format!("AS_PATH: {e} (RFC 7606 7.2)"),
                ),
            },
            NEXT_HOP => {
                if value.len() != 4 {
                    bad_len(self, Severity::Withdraw, "4");
                } else {
                    let nh = Ipv4Addr::new(value[0], value[1], value[2], value[3]);
                    self.next_hop_raw = Some((nh, attr_bytes(flags, type_code, value)));
                }
            }
            MULTI_EXIT_DISC | LOCAL_PREF => {
                if value.len() != 4 {
                    bad_len(self, Severity::Withdraw, "4");
                } else {
                    let v = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                    if type_code == MULTI_EXIT_DISC {
                        self.pa.med = Some(v);
                    } else {
                        self.pa.local_pref = Some(v);
                    }
                }
            }
            ATOMIC_AGGREGATE => {
                if value.is_empty() {
                    self.pa.atomic_aggregate = true;
                } else {
                    bad_len(self, Severity::Discard, "0");
                }
            }
            AGGREGATOR => {
                let want = if four { 8 } else { 6 };
                if value.len() != want {
                    bad_len(self, Severity::Discard, if four { "8" } else { "6" });
                } else {
                    let mut r = Reader::new(value);
                    let asn = if four {
                        r.u32().unwrap_or(0)
                    } else {
                        Asn::from(r.u16().unwrap_or(0))
                    };
                    let addr = r.ipv4().unwrap_or(Ipv4Addr::UNSPECIFIED);
                    if asn == 0 {
                        self.problem(
                            Severity::Discard,
                            type_code,
                            subcode::OPTIONAL_ATTRIBUTE_ERROR,
                            attr_bytes(flags, type_code, value),
                            "AGGREGATOR with AS 0 (RFC 7607 2)".into(),
                        );
                    } else {
                        self.pa.aggregator = Some((asn, addr));
                    }
                }
            }
            COMMUNITIES => {
                if value.is_empty() || value.len() % 4 != 0 {
                    bad_len(self, Severity::Withdraw, "a non-zero multiple of 4");
                } else {
                    self.pa.communities = value
                        .chunks_exact(4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                        .collect();
                }
            }
            EXTENDED_COMMUNITIES => {
                if value.is_empty() || value.len() % 8 != 0 {
                    bad_len(self, Severity::Withdraw, "a non-zero multiple of 8");
                } else {
                    self.pa.ext_communities = value
                        .chunks_exact(8)
                        .map(|c| {
                            let mut a = [0u8; 8];
                            a.copy_from_slice(c);
                            ExtCommunity(a)
                        })
                        .collect();
                }
            }
            AS4_PATH | AS4_AGGREGATOR if four => self.problem(
                Severity::Discard,
                type_code,
                subcode::OPTIONAL_ATTRIBUTE_ERROR,
                Vec::new(),
                format!("attribute {type_code} from a 4-octet-ASN speaker discarded (RFC 6793 3)"),
            ),
            AS4_PATH => match decode_as_path(value, 4) {
                Ok(p) if p.contains(0) => self.problem(
                    Severity::Discard,
                    type_code,
                    subcode::OPTIONAL_ATTRIBUTE_ERROR,
                    Vec::new(),
                    "AS4_PATH contains AS 0 (RFC 7607 2)".into(),
                ),
                Ok(p) => self.as4_path = Some(p),
                Err(e) => self.problem(
                    Severity::Discard,
                    type_code,
                    subcode::OPTIONAL_ATTRIBUTE_ERROR,
                    Vec::new(),
                    format!("AS4_PATH: {e} (RFC 6793 6, RFC 7606 7)"),
                ),
            },
            AS4_AGGREGATOR => {
                if value.len() != 8 {
                    bad_len(self, Severity::Discard, "8");
                } else {
                    let asn = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
                    let addr = Ipv4Addr::new(value[4], value[5], value[6], value[7]);
                    if asn == 0 {
                        self.problem(
                            Severity::Discard,
                            type_code,
                            subcode::OPTIONAL_ATTRIBUTE_ERROR,
                            Vec::new(),
                            "AS4_AGGREGATOR with AS 0 (RFC 7607 2)".into(),
                        );
                    } else {
                        self.as4_aggregator = Some((asn, addr));
                    }
                }
            }
            MP_REACH_NLRI => self.mp_reach(flags, value)?,
            MP_UNREACH_NLRI => self.mp_unreach(flags, value)?,
            opaque_type::ORIGINATOR_ID | opaque_type::OTC => {
                if value.len() != 4 {
                    bad_len(self, Severity::Withdraw, "4");
                } else {
                    self.keep_raw(flags, type_code, value);
                }
            }
            opaque_type::CLUSTER_LIST => {
                if value.is_empty() || value.len() % 4 != 0 {
                    bad_len(self, Severity::Withdraw, "a non-zero multiple of 4");
                } else {
                    self.keep_raw(flags, type_code, value);
                }
            }
            opaque_type::LARGE_COMMUNITY => {
                if value.is_empty() || value.len() % 12 != 0 {
                    bad_len(self, Severity::Withdraw, "a non-zero multiple of 12");
                } else {
                    self.keep_raw(flags, type_code, value);
                }
            }
            _ => self.keep_raw(flags, type_code, value),
        }
        Ok(())
    }

    fn unknown(&mut self, flags: u8, type_code: u8, value: &[u8]) -> Result<(), DecodeError> {
        if flags & attr_flags::OPTIONAL == 0 {
            // RFC 4271 6.3; RFC 7606 leaves this one a session reset.
            return Err(DecodeError::update(
                subcode::UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE,
                attr_bytes(flags, type_code, value),
                format!("unrecognized well-known attribute {type_code}"),
            ));
        }
        self.keep_raw(flags, type_code, value);
        Ok(())
    }

    fn keep_raw(&mut self, flags: u8, type_code: u8, value: &[u8]) {
        let mut flags =
            flags & (attr_flags::OPTIONAL | attr_flags::TRANSITIVE | attr_flags::PARTIAL);
        if flags & attr_flags::TRANSITIVE != 0 {
            flags |= attr_flags::PARTIAL; // RFC 4271 9: passed on with the Partial bit set.
        }
        self.pa.unknown.push(RawAttribute {
            flags,
            type_code,
            value: value.to_vec(),
        });
    }

    fn mp_error(flags: u8, type_code: u8, value: &[u8], reason: String) -> DecodeError {
        DecodeError::update(
            subcode::OPTIONAL_ATTRIBUTE_ERROR,
            attr_bytes(flags, type_code, value),
            reason,
        )
    }

    /// The family of an MP attribute, or `None` (attribute discarded) when it is not negotiated.
    fn mp_family(&mut self, type_code: u8, afi: u16, safi: u8) -> Option<Family> {
        match Family::from_afi_safi(afi, safi) {
            Some(f) if self.ctx.families.contains(&f) => Some(f),
            _ => {
                self.problem(
                    Severity::Discard,
                    type_code,
                    subcode::OPTIONAL_ATTRIBUTE_ERROR,
                    Vec::new(),
                    format!(
                        "attribute {type_code} for AFI {afi} SAFI {safi}, not negotiated: ignored"
                    ),
                );
                None
            }
        }
    }

    /// MP_REACH_NLRI (RFC 4760 3). Malformed = session reset (RFC 7606 7.11).
    fn mp_reach(&mut self, flags: u8, value: &[u8]) -> Result<(), DecodeError> {
        let t = attr_type::MP_REACH_NLRI;
        let err =
            |reason: String| Self::mp_error(flags, t, value, format!("MP_REACH_NLRI: {reason}"));
        let mut r = Reader::new(value);
        let (Some(afi), Some(safi), Some(nh_len)) = (r.u16(), r.u8(), r.u8()) else {
            return Err(err(format!("{} octets", value.len())));
        };
        let nh_len = usize::from(nh_len);
        let Some(nh) = r.bytes(nh_len) else {
            return Err(err(format!(
                "next hop length {nh_len} overruns the attribute"
            )));
        };
        if r.u8().is_none() {
            return Err(err("reserved octet missing".into()));
        }
        let Some(family) = self.mp_family(t, afi, safi) else {
            return Ok(());
        };
        let mut nr = Reader::new(nh);
        let next_hops: Vec<IpAddr> = match (family, nh_len) {
            (Family::Ipv4Unicast, 4) => nr.ipv4().map(IpAddr::V4).into_iter().collect(),
            (Family::Ipv6Unicast, 16) => nr.ipv6().map(IpAddr::V6).into_iter().collect(),
            (Family::Ipv6Unicast, 32) => [nr.ipv6(), nr.ipv6()]
                .into_iter()
                .flatten()
                .map(IpAddr::V6)
                .collect(),
            (f, n) => return Err(err(format!("next hop length {n} for {f:?}"))),
        };
        let mut nlri = Vec::new();
        decode_prefixes(r.rest(), family, &mut nlri).map_err(|e| err(format!("NLRI: {e}")))?;
        if let Some(first) = next_hops.first() {
            if !valid_next_hop(*first) && !nlri.is_empty() {
                self.problem(
                    Severity::Withdraw,
                    t,
                    subcode::INVALID_NEXT_HOP_ATTRIBUTE,
                    attr_bytes(flags, t, value),
                    format!("MP_REACH_NLRI next hop {first} is not a host address (RFC 7606 7.11)"),
                );
            }
        }
        self.mp_reach = Some(MpReach {
            family,
            next_hops,
            nlri,
        });
        Ok(())
    }

    /// MP_UNREACH_NLRI (RFC 4760 4). Malformed = session reset (RFC 7606 7.12).
    fn mp_unreach(&mut self, flags: u8, value: &[u8]) -> Result<(), DecodeError> {
        let t = attr_type::MP_UNREACH_NLRI;
        let mut r = Reader::new(value);
        let (Some(afi), Some(safi)) = (r.u16(), r.u8()) else {
            return Err(Self::mp_error(
                flags,
                t,
                value,
                format!("MP_UNREACH_NLRI of {} octets", value.len()),
            ));
        };
        let Some(family) = self.mp_family(t, afi, safi) else {
            return Ok(());
        };
        let mut withdrawn = Vec::new();
        decode_prefixes(r.rest(), family, &mut withdrawn)
            .map_err(|e| Self::mp_error(flags, t, value, format!("MP_UNREACH_NLRI: {e}")))?;
        self.mp_unreach = Some(MpUnreach { family, withdrawn });
        Ok(())
    }

    /// RFC 6793 4.2.3: rebuilds the 4-octet AS_PATH and AGGREGATOR of a 2-octet peer.
    fn merge_as4(&mut self) {
        let as4_path = self.as4_path.take();
        let as4_agg = self.as4_aggregator.take();
        if let Some((asn, _)) = self.pa.aggregator {
            if asn != AS_TRANS {
                // The aggregating speaker was a 2-octet one: AS4_* came from before it and are stale.
                return;
            }
            if let Some(a) = as4_agg {
                self.pa.aggregator = Some(a);
            }
        }
        let Some(as4) = as4_path else {
            return;
        };
        if !self.as_path_ok {
            return;
        }
        let (n_old, n_new) = (self.pa.as_path.len(), as4.len());
        if n_old < n_new {
            return; // AS4_PATH is ignored, AS_PATH used as is.
        }
        let mut segments = leading_segments(&self.pa.as_path, n_old - n_new);
        for s in as4.segments {
            match (segments.last_mut(), s) {
                (Some(AsSegment::Sequence(a)), AsSegment::Sequence(b))
                    if a.len() + b.len() <= 255 =>
                {
                    a.extend(b)
                }
                (_, s) => segments.push(s),
            }
        }
        self.pa.as_path = AsPath { segments };
    }
}

/// The first `n` ASes of `path` as segments (an AS_SET counts as one), for the AS4_PATH merge.
fn leading_segments(path: &AsPath, mut n: usize) -> Vec<AsSegment> {
    let mut out = Vec::new();
    for s in &path.segments {
        if n == 0 {
            break;
        }
        match s {
            AsSegment::Sequence(v) => {
                let k = n.min(v.len());
                out.push(AsSegment::Sequence(v[..k].to_vec()));
                n -= k;
            }
            AsSegment::Set(v) => {
                out.push(AsSegment::Set(v.clone()));
                n -= 1;
            }
        }
    }
    out
}

/// AS_PATH / AS4_PATH segments (RFC 4271 4.3, RFC 7606 7.2): AS_SET (1) and AS_SEQUENCE (2); confederation
/// segments, unknown types, empty segments, overruns and a lone trailing octet are malformed.
fn decode_as_path(value: &[u8], asn_width: usize) -> Result<AsPath, String> {
    let mut r = Reader::new(value);
    let mut segments = Vec::new();
    while r.remaining() > 0 {
        let (Some(kind), Some(count)) = (r.u8(), r.u8()) else {
            return Err("a single octet after the last segment".into());
        };
        if count == 0 {
            return Err(format!("segment of type {kind} with length 0"));
        }
        let bytes = r
            .bytes(usize::from(count) * asn_width)
            .ok_or_else(|| format!("segment of {count} ASNs overruns the attribute"))?;
        let asns: Vec<Asn> = if asn_width == 4 {
            bytes
                .chunks_exact(4)
                .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            bytes
                .chunks_exact(2)
                .map(|c| Asn::from(u16::from_be_bytes([c[0], c[1]])))
                .collect()
        };
        segments.push(match kind {
            1 => AsSegment::Set(asns),
            2 => AsSegment::Sequence(asns),
            3 | 4 => return Err(format!("confederation segment type {kind}")),
            k => return Err(format!("segment type {k}")),
        });
    }
    Ok(AsPath { segments })
}

/// RFC 4271 6.3: a next hop must be a host address (not 0.0.0.0, multicast or broadcast; for IPv6 not ::
/// or multicast). IPv4-mapped IPv6 next hops (sent over IPv4 sessions) are accepted.
fn valid_next_hop(nh: IpAddr) -> bool {
    match nh {
        IpAddr::V4(a) => !(a.is_unspecified() || a.is_multicast() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_unspecified() || a.is_multicast()),
    }
}

fn decode_update(body: &[u8], ctx: &Negotiated) -> Result<Update, DecodeError> {
    let mut r = Reader::new(body);
    let malformed = |reason: String| {
        DecodeError::update(
            subcode::MALFORMED_ATTRIBUTE_LIST,
            Vec::new(),
            format!("{reason} (RFC 7606 3.b)"),
        )
    };
    let wlen = usize::from(r.u16().unwrap_or(0));
    let withdrawn_bytes = r.bytes(wlen).ok_or_else(|| {
        malformed(format!(
            "withdrawn routes length {wlen} overruns the message"
        ))
    })?;
    let alen = r.u16().map(usize::from).ok_or_else(|| {
        malformed(format!(
            "withdrawn routes length {wlen} leaves no room for the attribute length"
        ))
    })?;
    let attrs = r.bytes(alen).ok_or_else(|| {
        malformed(format!(
            "total path attribute length {alen} overruns the message"
        ))
    })?;
    let nlri_bytes = r.rest();

    let mut update = Update::default();
    let invalid = |what: &str, e: String| {
        DecodeError::update(
            subcode::INVALID_NETWORK_FIELD,
            Vec::new(),
            format!("{what}: {e} (RFC 7606 5.3)"),
        )
    };
    decode_prefixes(withdrawn_bytes, Family::Ipv4Unicast, &mut update.withdrawn)
        .map_err(|e| invalid("withdrawn routes", e))?;
    decode_prefixes(nlri_bytes, Family::Ipv4Unicast, &mut update.nlri)
        .map_err(|e| invalid("NLRI", e))?;

    if attrs.is_empty() {
        if !update.nlri.is_empty() {
            for t in [attr_type::ORIGIN, attr_type::AS_PATH, attr_type::NEXT_HOP] {
                update.errors.push(Rfc7606Action::TreatAsWithdraw {
                    type_code: t,
                    reason: format!("NLRI without well-known attribute {t} (RFC 7606 3.d)"),
                });
            }
        }
        return Ok(update);
    }

    let mut w = AttrWalk {
        ctx,
        has_ipv4_nlri: !update.nlri.is_empty(),
        pa: PathAttributes::default(),
        seen: [false; 256],
        problems: Vec::new(),
        mp_reach: None,
        mp_unreach: None,
        as_path_ok: false,
        as4_path: None,
        as4_aggregator: None,
        next_hop_raw: None,
        abandoned: false,
        other_than_mp_unreach: false,
    };
    w.walk(attrs)?;
    if !ctx.four_octet_asn {
        w.merge_as4();
    }

    // NEXT_HOP matters only for IPv4 NLRI (RFC 4760 3: ignored otherwise).
    if let Some((nh, data)) = w.next_hop_raw.take() {
        if w.has_ipv4_nlri {
            if valid_next_hop(IpAddr::V4(nh)) {
                w.pa.next_hop = Some(nh);
            } else {
                w.problem(
                    Severity::Withdraw,
                    attr_type::NEXT_HOP,
                    subcode::INVALID_NEXT_HOP_ATTRIBUTE,
                    data,
                    format!("NEXT_HOP {nh} is not a host address (RFC 7606 7.3)"),
                );
            }
        }
    }

    let mp_nlri = w.mp_reach.as_ref().is_some_and(|m| !m.nlri.is_empty());
    let reachable = w.has_ipv4_nlri || mp_nlri;
    if reachable && !w.abandoned {
        let mut mandatory = vec![attr_type::ORIGIN, attr_type::AS_PATH];
        if w.has_ipv4_nlri {
            mandatory.push(attr_type::NEXT_HOP);
        }
        for t in mandatory {
            if !w.seen[usize::from(t)] {
                w.problem(
                    Severity::Withdraw,
                    t,
                    subcode::MISSING_WELL_KNOWN_ATTRIBUTE,
                    vec![t],
                    format!("NLRI without well-known attribute {t} (RFC 7606 3.d)"),
                );
            }
        }
    }

    // RFC 7606 5.2: attributes (other than a lone MP_UNREACH_NLRI) with nothing reachable to withdraw:
    // anything stronger than attribute discard resets the session.
    if !reachable && w.other_than_mp_unreach {
        if let Some(p) = w.problems.iter().find(|p| p.severity == Severity::Withdraw) {
            return Err(DecodeError::update(
                p.subcode,
                p.data.clone(),
                format!(
                    "{} in an UPDATE without reachable NLRI (RFC 7606 5.2)",
                    p.reason
                ),
            ));
        }
    }

    w.pa.unknown.sort_by_key(|a| a.type_code);
    update.errors = w
        .problems
        .into_iter()
        .map(|p| match p.severity {
            Severity::Withdraw => Rfc7606Action::TreatAsWithdraw {
                type_code: p.type_code,
                reason: p.reason,
            },
            Severity::Discard => Rfc7606Action::AttributeDiscard {
                type_code: p.type_code,
                reason: p.reason,
            },
        })
        .collect();
    update.attributes = Some(Arc::new(w.pa));
    update.mp_reach = w.mp_reach;
    update.mp_unreach = w.mp_unreach;
    Ok(update)
}

// ------------------------------------------------------------------------------------------------
// Encoding.

/// Appends one message to `out`. `ctx` gives the ASN width of UPDATEs; `None` (no OPEN exchanged) encodes
/// them as for a 2-octet-ASN peer (AS_TRANS + AS4_PATH). A message that would exceed [`MAX_MESSAGE_LEN`]
/// is not written at all (see [`try_encode`]); [`encode_announce`] and [`encode_withdraw`] split for you.
pub fn encode(msg: &Message, ctx: Option<&Negotiated>, out: &mut Vec<u8>) {
    let _ = try_encode(msg, ctx, out);
}

/// [`encode`], telling whether the message was written: `Ok(octets written)`, or `Err(TooLong)` with `out`
/// left as it was.
pub fn try_encode(
    msg: &Message,
    ctx: Option<&Negotiated>,
    out: &mut Vec<u8>,
) -> Result<usize, EncodeError> {
    let start = out.len();
    let kind = match msg {
        Message::Open(_) => message_type::OPEN,
        Message::Update(_) => message_type::UPDATE,
        Message::Notification(_) => message_type::NOTIFICATION,
        Message::Keepalive => message_type::KEEPALIVE,
        Message::RouteRefresh(_) => message_type::ROUTE_REFRESH,
    };
    put_header(out, kind);
    match msg {
        Message::Open(o) => encode_open_body(o, out),
        Message::Update(u) => {
            let four = ctx.is_some_and(|c| c.four_octet_asn);
            encode_update_body(u, four, out)
        }
        Message::Notification(n) => {
            out.push(n.code);
            out.push(n.subcode);
            out.extend_from_slice(&n.data);
        }
        Message::Keepalive => {}
        Message::RouteRefresh(f) => {
            out.extend_from_slice(&f.afi().to_be_bytes());
            out.push(0);
            out.push(f.safi());
        }
    }
    finish(out, start)
}

fn put_header(out: &mut Vec<u8>, kind: u8) {
    out.extend_from_slice(&[0xFF; 16]);
    out.extend_from_slice(&[0, 0, kind]);
}

/// Fills in the length of the message that starts at `start`, or removes it if it is too long.
fn finish(out: &mut Vec<u8>, start: usize) -> Result<usize, EncodeError> {
    let len = out.len() - start;
    if len > MAX_MESSAGE_LEN {
        out.truncate(start);
        return Err(EncodeError::TooLong { len });
    }
    out[start + 16..start + 18].copy_from_slice(&(len as u16).to_be_bytes());
    Ok(len)
}

fn encode_open_body(o: &Open, out: &mut Vec<u8>) {
    let my_as = u16::try_from(o.asn).unwrap_or(AS_TRANS as u16);
    out.push(4);
    out.extend_from_slice(&my_as.to_be_bytes());
    out.extend_from_slice(&o.hold_time.to_be_bytes());
    out.extend_from_slice(&o.bgp_id.octets());
    let mut caps = Vec::with_capacity(64);
    for c in &o.capabilities {
        let (code, value): (u8, Vec<u8>) = match c {
            Capability::Multiprotocol(f) => {
                let a = f.afi().to_be_bytes();
                (
                    capability_code::MULTIPROTOCOL,
                    vec![a[0], a[1], 0, f.safi()],
                )
            }
            Capability::RouteRefresh => (capability_code::ROUTE_REFRESH, Vec::new()),
            Capability::FourOctetAsn(a) => {
                (capability_code::FOUR_OCTET_ASN, a.to_be_bytes().to_vec())
            }
            Capability::GracefulRestart(v) => (capability_code::GRACEFUL_RESTART, v.clone()),
            Capability::Unknown { code, value } => (*code, value.clone()),
        };
        // A capability value has a 1-octet length; a longer one cannot be sent.
        if let Ok(len) = u8::try_from(value.len()) {
            caps.push(code);
            caps.push(len);
            caps.extend_from_slice(&value);
        }
    }
    if caps.is_empty() {
        out.push(0);
    } else if caps.len() <= 253 {
        out.push((caps.len() + 2) as u8);
        out.push(param_type::CAPABILITIES);
        out.push(caps.len() as u8);
        out.extend_from_slice(&caps);
    } else {
        // RFC 9072 extended optional parameters (the length check in `finish` bounds the u16s).
        out.push(255);
        out.push(param_type::EXTENDED_LENGTH);
        out.extend_from_slice(&((caps.len() + 3) as u16).to_be_bytes());
        out.push(param_type::CAPABILITIES);
        out.extend_from_slice(&(caps.len() as u16).to_be_bytes());
        out.extend_from_slice(&caps);
    }
}

/// Writes one path attribute, with the Extended Length bit when the value exceeds 255 octets.
fn put_attr(out: &mut Vec<u8>, flags: u8, type_code: u8, value: &[u8]) {
    if value.len() > 255 {
        out.push(flags | attr_flags::EXTENDED_LENGTH);
        out.push(type_code);
        out.extend_from_slice(&(value.len().min(usize::from(u16::MAX)) as u16).to_be_bytes());
    } else {
        out.push(flags & !attr_flags::EXTENDED_LENGTH);
        out.push(type_code);
        out.push(value.len() as u8);
    }
    out.extend_from_slice(value);
}

/// Writes an attribute whose value is produced by `f`, fixing up the length afterwards (no temporary).
fn put_attr_with(out: &mut Vec<u8>, flags: u8, type_code: u8, f: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    // Reserve the extended (2-octet) length, then shrink if the value turns out short.
    out.extend_from_slice(&[flags | attr_flags::EXTENDED_LENGTH, type_code, 0, 0]);
    f(out);
    let len = out.len() - start - 4;
    if len > 255 {
        let l = (len.min(usize::from(u16::MAX)) as u16).to_be_bytes();
        out[start + 2] = l[0];
        out[start + 3] = l[1];
    } else {
        out[start] = flags & !attr_flags::EXTENDED_LENGTH;
        out[start + 2] = len as u8;
        out.remove(start + 3);
    }
}

fn put_prefix(out: &mut Vec<u8>, p: &Prefix) {
    let len = p.len();
    let n = usize::from(len).div_ceil(8);
    out.push(len);
    match p.addr() {
        IpAddr::V4(a) => out.extend_from_slice(&a.octets()[..n.min(4)]),
        IpAddr::V6(a) => out.extend_from_slice(&a.octets()[..n.min(16)]),
    }
}

fn prefix_wire_len(p: &Prefix) -> usize {
    1 + usize::from(p.len()).div_ceil(8)
}

fn put_as_path(out: &mut Vec<u8>, path: &AsPath, four: bool) {
    for s in &path.segments {
        let (kind, asns) = match s {
            AsSegment::Set(v) => (1u8, v),
            AsSegment::Sequence(v) => (2u8, v),
        };
        for chunk in asns.chunks(255) {
            out.push(kind);
            out.push(chunk.len() as u8);
            for &a in chunk {
                if four {
                    out.extend_from_slice(&a.to_be_bytes());
                } else {
                    out.extend_from_slice(
                        &u16::try_from(a).unwrap_or(AS_TRANS as u16).to_be_bytes(),
                    );
                }
            }
        }
    }
}

fn next_hop_octets(family: Family, next_hops: &[IpAddr], out: &mut Vec<u8>) {
    match family {
        Family::Ipv4Unicast => {
            let a = match next_hops.first() {
                Some(IpAddr::V4(a)) => *a,
                Some(IpAddr::V6(a)) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
                None => Ipv4Addr::UNSPECIFIED,
            };
            out.push(4);
            out.extend_from_slice(&a.octets());
        }
        Family::Ipv6Unicast => {
            let v6 = |a: &IpAddr| match a {
                IpAddr::V6(a) => *a,
                IpAddr::V4(a) => a.to_ipv6_mapped(),
            };
            let hops: Vec<Ipv6Addr> = if next_hops.is_empty() {
                vec![Ipv6Addr::UNSPECIFIED]
            } else {
                next_hops.iter().take(2).map(v6).collect()
            };
            out.push((hops.len() * 16) as u8);
            for h in hops {
                out.extend_from_slice(&h.octets());
            }
        }
    }
}

fn put_mp_reach(out: &mut Vec<u8>, family: Family, next_hops: &[IpAddr], nlri: &[Prefix]) {
    put_attr_with(out, attr_flags::OPTIONAL, attr_type::MP_REACH_NLRI, |v| {
        v.extend_from_slice(&family.afi().to_be_bytes());
        v.push(family.safi());
        next_hop_octets(family, next_hops, v);
        v.push(0);
        for p in nlri.iter().filter(|p| Family::of(p) == family) {
            put_prefix(v, p);
        }
    });
}

fn put_mp_unreach(out: &mut Vec<u8>, family: Family, withdrawn: &[Prefix]) {
    put_attr_with(out, attr_flags::OPTIONAL, attr_type::MP_UNREACH_NLRI, |v| {
        v.extend_from_slice(&family.afi().to_be_bytes());
        v.push(family.safi());
        for p in withdrawn.iter().filter(|p| Family::of(p) == family) {
            put_prefix(v, p);
        }
    });
}

/// The path attributes other than MP_REACH/MP_UNREACH, in type-code order (unknown optional transitive
/// ones interleaved by type code, with the Partial bit; non-transitive unknown ones are never sent).
fn put_path_attributes(
    out: &mut Vec<u8>,
    pa: &PathAttributes,
    next_hop: Option<Ipv4Addr>,
    four: bool,
) {
    use attr_flags::{OPTIONAL, PARTIAL, TRANSITIVE};
    use attr_type::*;
    let mut unknown: Vec<&RawAttribute> = pa
        .unknown
        .iter()
        .filter(|a| {
            a.flags & (OPTIONAL | TRANSITIVE) == OPTIONAL | TRANSITIVE && !is_modelled(a.type_code)
        })
        .collect();
    unknown.sort_by_key(|a| a.type_code);
    let mut unknown = unknown.into_iter().peekable();
    const WELL_KNOWN: u8 = TRANSITIVE;
    const OPT_TRANS: u8 = OPTIONAL | TRANSITIVE;

    // Unknown attributes whose type code is below `below`, in order.
    let mut flush = |out: &mut Vec<u8>, below: u16| {
        while let Some(a) = unknown.next_if(|a| u16::from(a.type_code) < below) {
            put_attr(out, a.flags | PARTIAL, a.type_code, &a.value);
        }
    };

    flush(out, ORIGIN.into());
    put_attr(out, WELL_KNOWN, ORIGIN, &[pa.origin as u8]);
    flush(out, AS_PATH.into());
    put_attr_with(out, WELL_KNOWN, AS_PATH, |v| {
        put_as_path(v, &pa.as_path, four)
    });
    flush(out, NEXT_HOP.into());
    if let Some(nh) = next_hop {
        put_attr(out, WELL_KNOWN, NEXT_HOP, &nh.octets());
    }
    flush(out, MULTI_EXIT_DISC.into());
    if let Some(m) = pa.med {
        put_attr(out, OPTIONAL, MULTI_EXIT_DISC, &m.to_be_bytes());
    }
    flush(out, LOCAL_PREF.into());
    if let Some(l) = pa.local_pref {
        put_attr(out, WELL_KNOWN, LOCAL_PREF, &l.to_be_bytes());
    }
    flush(out, ATOMIC_AGGREGATE.into());
    if pa.atomic_aggregate {
        put_attr(out, WELL_KNOWN, ATOMIC_AGGREGATE, &[]);
    }
    flush(out, AGGREGATOR.into());
    if let Some((asn, addr)) = pa.aggregator {
        let mut v = [0u8; 8];
        if four {
            v[..4].copy_from_slice(&asn.to_be_bytes());
            v[4..].copy_from_slice(&addr.octets());
            put_attr(out, OPT_TRANS, AGGREGATOR, &v);
        } else {
            let a16 = u16::try_from(asn).unwrap_or(AS_TRANS as u16);
            v[..2].copy_from_slice(&a16.to_be_bytes());
            v[2..6].copy_from_slice(&addr.octets());
            put_attr(out, OPT_TRANS, AGGREGATOR, &v[..6]);
        }
    }
    flush(out, COMMUNITIES.into());
    if !pa.communities.is_empty() {
        put_attr_with(out, OPT_TRANS, COMMUNITIES, |v| {
            for c in &pa.communities {
                v.extend_from_slice(&c.to_be_bytes());
            }
        });
    }
    flush(out, EXTENDED_COMMUNITIES.into());
    if !pa.ext_communities.is_empty() {
        put_attr_with(out, OPT_TRANS, EXTENDED_COMMUNITIES, |v| {
            for c in &pa.ext_communities {
                v.extend_from_slice(&c.0);
            }
        });
    }
    flush(out, AS4_PATH.into());
    if !four && pa.as_path.asns().any(|a| a > 0xFFFF) {
        put_attr_with(out, OPT_TRANS, AS4_PATH, |v| {
            put_as_path(v, &pa.as_path, true)
        });
    }
    flush(out, AS4_AGGREGATOR.into());
    if let Some((asn, addr)) = pa.aggregator {
        if !four && asn > 0xFFFF {
            let mut v = [0u8; 8];
            v[..4].copy_from_slice(&asn.to_be_bytes());
            v[4..].copy_from_slice(&addr.octets());
            put_attr(out, OPT_TRANS, AS4_AGGREGATOR, &v);
        }
    }
    flush(out, 256);
}

fn encode_update_body(u: &Update, four: bool, out: &mut Vec<u8>) {
    // Withdrawn routes (IPv4 only in this field).
    let wstart = out.len();
    out.extend_from_slice(&[0, 0]);
    for p in u.withdrawn.iter().filter(|p| p.addr().is_ipv4()) {
        put_prefix(out, p);
    }
    let wlen = out.len() - wstart - 2;
    out[wstart..wstart + 2]
        .copy_from_slice(&(wlen.min(usize::from(u16::MAX)) as u16).to_be_bytes());

    let astart = out.len();
    out.extend_from_slice(&[0, 0]);
    let ipv4_nlri = u.nlri.iter().any(|p| p.addr().is_ipv4());
    let reachable = ipv4_nlri || u.mp_reach.is_some();
    // RFC 7606 5.1: the MP attributes first.
    if let Some(m) = &u.mp_unreach {
        put_mp_unreach(out, m.family, &m.withdrawn);
    }
    if let Some(m) = &u.mp_reach {
        put_mp_reach(out, m.family, &m.next_hops, &m.nlri);
    }
    if let Some(pa) = &u.attributes {
        // An End-of-RIB (or any pure MP_UNREACH) carries nothing else (RFC 4724 2).
        if reachable || u.mp_unreach.is_none() || **pa != PathAttributes::default() {
            let nh = if ipv4_nlri { pa.next_hop } else { None };
            put_path_attributes(out, pa, nh, four);
        }
    }
    let alen = out.len() - astart - 2;
    out[astart..astart + 2]
        .copy_from_slice(&(alen.min(usize::from(u16::MAX)) as u16).to_be_bytes());

    for p in u.nlri.iter().filter(|p| p.addr().is_ipv4()) {
        put_prefix(out, p);
    }
}

/// Announces `prefixes` (all of `family`; others are skipped) with `attrs`, in as many UPDATEs as the
/// 4096-octet limit needs. IPv4 goes in the NLRI field with NEXT_HOP = the first IPv4 address of
/// `next_hops` (else `attrs.next_hop`); IPv6 goes in MP_REACH_NLRI with `next_hops` (a global address and
/// optionally a link-local one, RFC 2545; IPv4 addresses are sent IPv4-mapped). Returns the number of
/// messages written: 0 if there is nothing to announce, or if the attributes alone leave no room for a
/// single prefix (then nothing is written).
pub fn encode_announce(
    attrs: &PathAttributes,
    family: Family,
    next_hops: &[IpAddr],
    prefixes: &[Prefix],
    ctx: &Negotiated,
    out: &mut Vec<u8>,
) -> usize {
    let four = ctx.four_octet_asn;
    let mut prefixes = prefixes
        .iter()
        .filter(|p| Family::of(p) == family)
        .peekable();
    if prefixes.peek().is_none() {
        return 0;
    }
    // The attributes are the same in every message: encode them once.
    let mut common = Vec::with_capacity(128);
    let next_hop = match family {
        Family::Ipv4Unicast => next_hops
            .iter()
            .find_map(|a| match a {
                IpAddr::V4(a) => Some(*a),
                IpAddr::V6(_) => None,
            })
            .or(attrs.next_hop),
        Family::Ipv6Unicast => None,
    };
    put_path_attributes(&mut common, attrs, next_hop, four);
    let mut mp_head = Vec::with_capacity(40);
    if family == Family::Ipv6Unicast {
        mp_head.extend_from_slice(&family.afi().to_be_bytes());
        mp_head.push(family.safi());
        next_hop_octets(family, next_hops, &mut mp_head);
        mp_head.push(0);
    }
    // Room for prefixes: header, two length fields, the attributes, and for IPv6 the MP_REACH attribute
    // header (counted as extended, 4 octets) and its fixed part.
    let fixed = HEADER_LEN
        + 4
        + common.len()
        + if mp_head.is_empty() {
            0
        } else {
            4 + mp_head.len()
        };
    let Some(room) = MAX_MESSAGE_LEN.checked_sub(fixed) else {
        return 0;
    };
    let mut messages = 0;
    let mut chunk: Vec<u8> = Vec::with_capacity(room.min(MAX_MESSAGE_LEN));
    while prefixes.peek().is_some() {
        chunk.clear();
        while let Some(p) = prefixes.next_if(|p| chunk.len() + prefix_wire_len(p) <= room) {
            put_prefix(&mut chunk, p);
        }
        if chunk.is_empty() {
            return messages; // not even one prefix fits next to these attributes
        }
        let start = out.len();
        put_header(out, message_type::UPDATE);
        out.extend_from_slice(&[0, 0]); // no withdrawn routes
        let astart = out.len();
        out.extend_from_slice(&[0, 0]);
        if mp_head.is_empty() {
            out.extend_from_slice(&common);
            let alen = (out.len() - astart - 2) as u16;
            out[astart..astart + 2].copy_from_slice(&alen.to_be_bytes());
            out.extend_from_slice(&chunk);
        } else {
            put_attr_with(out, attr_flags::OPTIONAL, attr_type::MP_REACH_NLRI, |v| {
                v.extend_from_slice(&mp_head);
                v.extend_from_slice(&chunk);
            });
            out.extend_from_slice(&common);
            let alen = (out.len() - astart - 2) as u16;
            out[astart..astart + 2].copy_from_slice(&alen.to_be_bytes());
        }
        if finish(out, start).is_ok() {
            messages += 1;
        }
    }
    messages
}

/// Withdraws `prefixes` (all of `family`; others are skipped) in as many UPDATEs as needed: IPv4 in the
/// Withdrawn Routes field, IPv6 in MP_UNREACH_NLRI. Returns the number of messages written.
pub fn encode_withdraw(
    family: Family,
    prefixes: &[Prefix],
    ctx: &Negotiated,
    out: &mut Vec<u8>,
) -> usize {
    let _ = ctx; // Withdrawals do not depend on the negotiated ASN width.
    let mut prefixes = prefixes
        .iter()
        .filter(|p| Family::of(p) == family)
        .peekable();
    // IPv4: header + withdrawn length + attribute length. IPv6: + MP_UNREACH header (4) + AFI/SAFI (3).
    let room = match family {
        Family::Ipv4Unicast => MAX_MESSAGE_LEN - HEADER_LEN - 4,
        Family::Ipv6Unicast => MAX_MESSAGE_LEN - HEADER_LEN - 4 - 4 - 3,
    };
    let mut messages = 0;
    let mut chunk = Vec::with_capacity(room);
    while prefixes.peek().is_some() {
        chunk.clear();
        while let Some(p) = prefixes.next_if(|p| chunk.len() + prefix_wire_len(p) <= room) {
            put_prefix(&mut chunk, p);
        }
        let start = out.len();
        put_header(out, message_type::UPDATE);
        match family {
            Family::Ipv4Unicast => {
                out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
                out.extend_from_slice(&chunk);
                out.extend_from_slice(&[0, 0]);
            }
            Family::Ipv6Unicast => {
                out.extend_from_slice(&[0, 0]);
                let astart = out.len();
                out.extend_from_slice(&[0, 0]);
                put_attr_with(out, attr_flags::OPTIONAL, attr_type::MP_UNREACH_NLRI, |v| {
                    v.extend_from_slice(&family.afi().to_be_bytes());
                    v.push(family.safi());
                    v.extend_from_slice(&chunk);
                });
                let alen = (out.len() - astart - 2) as u16;
                out[astart..astart + 2].copy_from_slice(&alen.to_be_bytes());
            }
        }
        if finish(out, start).is_ok() {
            messages += 1;
        }
    }
    messages
}

/// The End-of-RIB marker of `family` (RFC 4724 2): an empty UPDATE for IPv4, an UPDATE with only an empty
/// MP_UNREACH_NLRI otherwise.
pub fn encode_end_of_rib(family: Family, out: &mut Vec<u8>) {
    let start = out.len();
    put_header(out, message_type::UPDATE);
    out.extend_from_slice(&[0, 0]);
    match family {
        Family::Ipv4Unicast => out.extend_from_slice(&[0, 0]),
        Family::Ipv6Unicast => {
            out.extend_from_slice(&[0, 6]);
            put_mp_unreach(out, family, &[]);
        }
    }
    let _ = finish(out, start);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> Negotiated {
        Negotiated::default_for_tests()
    }

    #[test]
    fn keepalive_bytes() {
        let mut out = Vec::new();
        encode(&Message::Keepalive, None, &mut out);
        let mut want = vec![0xFF; 16];
        want.extend_from_slice(&[0x00, 0x13, 0x04]);
        assert_eq!(out, want);
        assert_eq!(frame_len(&out), Ok(Some(19)));
        assert_eq!(decode(&out, None), Ok(Message::Keepalive));
    }

    #[test]
    fn frame_len_needs_a_header_and_checks_it() {
        let mut out = Vec::new();
        encode(&Message::Keepalive, None, &mut out);
        assert_eq!(frame_len(&out[..18]), Ok(None));
        let mut bad = out.clone();
        bad[3] = 0;
        assert_eq!(
            frame_len(&bad).unwrap_err().subcode,
            subcode::CONNECTION_NOT_SYNCHRONIZED
        );
        let mut long = out.clone();
        long[16..18].copy_from_slice(&4097u16.to_be_bytes());
        let n = frame_len(&long).unwrap_err();
        assert_eq!((n.code, n.subcode, n.data), (1, 2, vec![0x10, 0x01]));
    }

    #[test]
    fn end_of_rib_markers_decode_as_such() {
        for f in Family::ALL {
            let mut out = Vec::new();
            encode_end_of_rib(f, &mut out);
            let Ok(Message::Update(u)) = decode(&out, Some(&ctx())) else {
                panic!("EoR does not decode");
            };
            assert_eq!(u.end_of_rib(), Some(f));
            assert!(u.errors.is_empty());
        }
    }

    #[test]
    fn put_attr_with_switches_to_extended_length_only_when_needed() {
        let mut out = Vec::new();
        put_attr_with(&mut out, attr_flags::OPTIONAL, 99, |v| {
            v.extend_from_slice(&[1; 255])
        });
        assert_eq!(&out[..3], &[attr_flags::OPTIONAL, 99, 255]);
        assert_eq!(out.len(), 258);
        out.clear();
        put_attr_with(&mut out, attr_flags::OPTIONAL, 99, |v| {
            v.extend_from_slice(&[1; 256])
        });
        assert_eq!(
            &out[..4],
            &[attr_flags::OPTIONAL | attr_flags::EXTENDED_LENGTH, 99, 1, 0]
        );
        assert_eq!(out.len(), 260);
    }

    #[test]
    fn as4_merge_takes_leading_ases_from_as_path() {
        // RFC 6793 4.2.3: AS_PATH 65001 AS_TRANS AS_TRANS (3), AS4_PATH 4200000001 4200000002 (2).
        let old = AsPath::from_sequence(&[65001, AS_TRANS, AS_TRANS]);
        let lead = leading_segments(&old, 1);
        assert_eq!(lead, vec![AsSegment::Sequence(vec![65001])]);
        let set = AsPath {
            segments: vec![AsSegment::Set(vec![1, 2]), AsSegment::Sequence(vec![3, 4])],
        };
        assert_eq!(
            leading_segments(&set, 2),
            vec![AsSegment::Set(vec![1, 2]), AsSegment::Sequence(vec![3])]
        );
    }
}
