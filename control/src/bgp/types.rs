//! The BGP message model: what the messages of RFC 4271 (and the extensions braid speaks) mean, without their
//! encoding. [`super::wire`] turns bytes into these and back; the FSM, RIB and policy work on these only.
//!
//! Prefixes are [`braid_dataplane::Prefix`] (IPv4 and IPv6 alike); an AS number is always 4 octets here
//! ([`Asn`]), whatever the peer's capability: the codec maps 2-octet peers through AS_TRANS and AS4_PATH.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

pub use braid_dataplane::Prefix;

/// An autonomous system number (4 octets, RFC 6793).
pub type Asn = u32;

/// AS_TRANS (RFC 6793): the 2-octet stand-in for a 4-octet ASN.
pub const AS_TRANS: Asn = 23456;

/// The BGP TCP port.
pub const BGP_PORT: u16 = 179;

/// An address family + subsequent address family braid carries (RFC 4760).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    /// AFI 1, SAFI 1.
    Ipv4Unicast,
    /// AFI 2, SAFI 1.
    Ipv6Unicast,
}

impl Family {
    pub const ALL: [Family; 2] = [Family::Ipv4Unicast, Family::Ipv6Unicast];

    pub fn afi(self) -> u16 {
        match self {
            Family::Ipv4Unicast => 1,
            Family::Ipv6Unicast => 2,
        }
    }

    pub fn safi(self) -> u8 {
        1
    }

    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (1, 1) => Some(Family::Ipv4Unicast),
            (2, 1) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }

    pub fn of(prefix: &Prefix) -> Family {
        if prefix.addr().is_ipv4() {
            Family::Ipv4Unicast
        } else {
            Family::Ipv6Unicast
        }
    }
}

/// A capability advertised in OPEN (RFC 5492). Known ones are decoded; the rest are kept raw and ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Capability {
    /// Code 1 (RFC 4760).
    Multiprotocol(Family),
    /// Code 2 (RFC 2918).
    RouteRefresh,
    /// Code 65 (RFC 6793).
    FourOctetAsn(Asn),
    /// Code 64 (RFC 4724): decoded enough to be skipped safely; braid does not act on it yet.
    GracefulRestart(Vec<u8>),
    /// Any other capability code, with its value, kept only to be ignored safely (and logged).
    Unknown { code: u8, value: Vec<u8> },
}

/// OPEN (RFC 4271 4.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Open {
    /// Always 4.
    pub version: u8,
    /// The sender's ASN: the real 4-octet value when it sent the 4-octet capability, else the 2-octet field.
    pub asn: Asn,
    /// Seconds; 0 or >= 3.
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub capabilities: Vec<Capability>,
}

impl Open {
    pub fn four_octet_asn(&self) -> Option<Asn> {
        self.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAsn(a) => Some(*a),
            _ => None,
        })
    }

    pub fn families(&self) -> Vec<Family> {
        self.capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::Multiprotocol(f) => Some(*f),
                _ => None,
            })
            .collect()
    }

    pub fn route_refresh(&self) -> bool {
        self.capabilities
            .iter()
            .any(|c| matches!(c, Capability::RouteRefresh))
    }
}

/// What two speakers agreed on in their OPENs; the context every UPDATE is decoded and encoded against.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Negotiated {
    /// Both sent the 4-octet ASN capability: AS_PATH carries 4-octet ASNs.
    pub four_octet_asn: bool,
    /// Families both sides announced (IPv4 unicast is implied when a peer announces no multiprotocol
    /// capability at all, RFC 4760 section 8).
    pub families: Vec<Family>,
    pub route_refresh: bool,
    /// min(ours, theirs); 0 = no keepalives and no hold timer.
    pub hold_time: u16,
    pub peer_asn: Asn,
    pub peer_id: Ipv4Addr,
}

impl Negotiated {
    /// The context assumed before an OPEN is exchanged, and for tests: 4-octet ASNs, both families.
    pub fn default_for_tests() -> Negotiated {
        Negotiated {
            four_octet_asn: true,
            families: Family::ALL.to_vec(),
            route_refresh: true,
            hold_time: 90,
            peer_asn: 65000,
            peer_id: Ipv4Addr::new(192, 0, 2, 1),
        }
    }
}

/// ORIGIN (RFC 4271 5.1.1).
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

/// One AS_PATH segment (RFC 4271 4.3; confederation segments of RFC 5065 are treated as malformed).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum AsSegment {
    Sequence(Vec<Asn>),
    Set(Vec<Asn>),
}

/// AS_PATH (RFC 4271 5.1.2), always with 4-octet ASNs in this model.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct AsPath {
    pub segments: Vec<AsSegment>,
}

impl AsPath {
    pub fn from_sequence(asns: &[Asn]) -> AsPath {
        if asns.is_empty() {
            return AsPath::default();
        }
        AsPath {
            segments: vec![AsSegment::Sequence(asns.to_vec())],
        }
    }

    /// Path length for best-path selection: each AS in a sequence counts 1, a whole AS_SET counts 1
    /// (RFC 4271 9.1.2.2 a).
    pub fn len(&self) -> usize {
        self.segments
            .iter()
            .map(|s| match s {
                AsSegment::Sequence(v) => v.len(),
                AsSegment::Set(v) => usize::from(!v.is_empty()),
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn contains(&self, asn: Asn) -> bool {
        self.segments.iter().any(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.contains(&asn),
        })
    }

    /// The first AS of the path (the neighbour AS for MED comparison), if the path starts with a sequence.
    pub fn first(&self) -> Option<Asn> {
        match self.segments.first() {
            Some(AsSegment::Sequence(v)) => v.first().copied(),
            _ => None,
        }
    }

    /// Prepends `asn` `count` times (as a sequence), as an eBGP speaker does on export.
    pub fn prepend(&mut self, asn: Asn, count: usize) {
        if count == 0 {
            return;
        }
        match self.segments.first_mut() {
            Some(AsSegment::Sequence(v)) if v.len() + count <= 255 => {
                v.splice(0..0, std::iter::repeat_n(asn, count));
            }
            _ => self
                .segments
                .insert(0, AsSegment::Sequence(vec![asn; count])),
        }
    }

    /// The ASNs in order (sets flattened), e.g. for display.
    pub fn asns(&self) -> impl Iterator<Item = Asn> + '_ {
        self.segments.iter().flat_map(|s| match s {
            AsSegment::Sequence(v) | AsSegment::Set(v) => v.iter().copied(),
        })
    }
}

impl std::fmt::Display for AsPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut first = true;
        for s in &self.segments {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            match s {
                AsSegment::Sequence(v) => {
                    let parts: Vec<String> = v.iter().map(|a| a.to_string()).collect();
                    f.write_str(&parts.join(" "))?;
                }
                AsSegment::Set(v) => {
                    let parts: Vec<String> = v.iter().map(|a| a.to_string()).collect();
                    write!(f, "{{{}}}", parts.join(","))?;
                }
            }
        }
        Ok(())
    }
}

/// An extended community (RFC 4360), 8 octets as on the wire.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExtCommunity(pub [u8; 8]);

impl ExtCommunity {
    /// The link-bandwidth extended community (draft-ietf-idr-link-bandwidth): type 0x40 (non-transitive)
    /// or 0x00, subtype 0x04, 2-octet AS, bandwidth in bytes per second as an IEEE float.
    pub fn link_bandwidth(&self) -> Option<(u16, f32)> {
        let b = &self.0;
        if (b[0] == 0x40 || b[0] == 0x00) && b[1] == 0x04 {
            Some((
                u16::from_be_bytes([b[2], b[3]]),
                f32::from_be_bytes([b[4], b[5], b[6], b[7]]),
            ))
        } else {
            None
        }
    }

    pub fn new_link_bandwidth(asn: u16, bytes_per_second: f32) -> ExtCommunity {
        let a = asn.to_be_bytes();
        let f = bytes_per_second.to_be_bytes();
        ExtCommunity([0x40, 0x04, a[0], a[1], f[0], f[1], f[2], f[3]])
    }
}

/// A path attribute braid does not interpret, kept to be passed on if optional transitive (with the partial
/// bit set when passed on, RFC 4271 5).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct RawAttribute {
    pub flags: u8,
    pub type_code: u8,
    pub value: Vec<u8>,
}

/// Path attribute flags (RFC 4271 4.3).
pub mod attr_flags {
    pub const OPTIONAL: u8 = 0x80;
    pub const TRANSITIVE: u8 = 0x40;
    pub const PARTIAL: u8 = 0x20;
    pub const EXTENDED_LENGTH: u8 = 0x10;
}

/// Path attribute type codes braid knows.
pub mod attr_type {
    pub const ORIGIN: u8 = 1;
    pub const AS_PATH: u8 = 2;
    pub const NEXT_HOP: u8 = 3;
    pub const MULTI_EXIT_DISC: u8 = 4;
    pub const LOCAL_PREF: u8 = 5;
    pub const ATOMIC_AGGREGATE: u8 = 6;
    pub const AGGREGATOR: u8 = 7;
    pub const COMMUNITIES: u8 = 8;
    pub const MP_REACH_NLRI: u8 = 14;
    pub const MP_UNREACH_NLRI: u8 = 15;
    pub const EXTENDED_COMMUNITIES: u8 = 16;
    pub const AS4_PATH: u8 = 17;
    pub const AS4_AGGREGATOR: u8 = 18;
}

/// The path attributes of a route (everything in an UPDATE except the NLRI and withdrawals themselves).
/// Shared between routes with `Arc`, since one UPDATE usually carries many prefixes.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PathAttributes {
    pub origin: Origin,
    pub as_path: AsPath,
    /// NEXT_HOP for IPv4 NLRI; for MP_REACH the next hop(s) are in [`MpReach`].
    pub next_hop: Option<Ipv4Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    /// (ASN, address); with 4-octet ASN (AS4_AGGREGATOR merged for 2-octet peers).
    pub aggregator: Option<(Asn, Ipv4Addr)>,
    pub communities: Vec<u32>,
    pub ext_communities: Vec<ExtCommunity>,
    /// Unrecognised optional attributes: transitive ones are passed on (partial bit set), non-transitive
    /// ones are kept here only until export, which drops them.
    pub unknown: Vec<RawAttribute>,
}

impl Default for PathAttributes {
    fn default() -> PathAttributes {
        PathAttributes {
            origin: Origin::Igp,
            as_path: AsPath::default(),
            next_hop: None,
            med: None,
            local_pref: None,
            atomic_aggregate: false,
            aggregator: None,
            communities: Vec::new(),
            ext_communities: Vec::new(),
            unknown: Vec::new(),
        }
    }
}

/// MP_REACH_NLRI (RFC 4760 3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpReach {
    pub family: Family,
    /// One next hop, or for IPv6 a global and a link-local one (RFC 2545).
    pub next_hops: Vec<IpAddr>,
    pub nlri: Vec<Prefix>,
}

/// MP_UNREACH_NLRI (RFC 4760 4).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<Prefix>,
}

/// What RFC 7606 made of an UPDATE with a malformed attribute that does not reset the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rfc7606Action {
    /// Every NLRI of the UPDATE (IPv4 and MP_REACH) must be handled as withdrawn (RFC 7606 2, 3).
    TreatAsWithdraw { type_code: u8, reason: String },
    /// The attribute was dropped and the UPDATE is otherwise valid (RFC 7606 2).
    AttributeDiscard { type_code: u8, reason: String },
}

/// UPDATE (RFC 4271 4.3, RFC 4760).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct Update {
    /// IPv4 withdrawn routes.
    pub withdrawn: Vec<Prefix>,
    /// Path attributes; `None` when the UPDATE carries none (withdrawals only).
    pub attributes: Option<Arc<PathAttributes>>,
    /// IPv4 NLRI.
    pub nlri: Vec<Prefix>,
    pub mp_reach: Option<MpReach>,
    pub mp_unreach: Option<MpUnreach>,
    /// Set by the decoder when RFC 7606 applied; empty when the UPDATE was clean.
    pub errors: Vec<Rfc7606Action>,
}

impl Update {
    /// Whether RFC 7606 says to treat this UPDATE's NLRI as withdrawn.
    pub fn treat_as_withdraw(&self) -> bool {
        self.errors
            .iter()
            .any(|e| matches!(e, Rfc7606Action::TreatAsWithdraw { .. }))
    }

    /// An End-of-RIB marker (RFC 4724 2): empty IPv4 UPDATE, or an MP_UNREACH with no prefixes.
    pub fn end_of_rib(&self) -> Option<Family> {
        if self.withdrawn.is_empty() && self.nlri.is_empty() && self.mp_reach.is_none() {
            match (&self.attributes, &self.mp_unreach) {
                (None, None) => return Some(Family::Ipv4Unicast),
                (Some(a), Some(u))
                    if u.withdrawn.is_empty() && **a == PathAttributes::default() =>
                {
                    return Some(u.family)
                }
                _ => {}
            }
        }
        None
    }
}

/// NOTIFICATION error codes (RFC 4271 4.5, RFC 7313).
pub mod error_code {
    pub const MESSAGE_HEADER: u8 = 1;
    pub const OPEN_MESSAGE: u8 = 2;
    pub const UPDATE_MESSAGE: u8 = 3;
    pub const HOLD_TIMER_EXPIRED: u8 = 4;
    pub const FSM: u8 = 5;
    pub const CEASE: u8 = 6;
    pub const ROUTE_REFRESH: u8 = 7;
}

/// Subcodes (RFC 4271 6.1-6.3, RFC 4486, RFC 5492, RFC 6608).
pub mod subcode {
    // Message header error.
    pub const CONNECTION_NOT_SYNCHRONIZED: u8 = 1;
    pub const BAD_MESSAGE_LENGTH: u8 = 2;
    pub const BAD_MESSAGE_TYPE: u8 = 3;
    // OPEN message error.
    pub const UNSUPPORTED_VERSION: u8 = 1;
    pub const BAD_PEER_AS: u8 = 2;
    pub const BAD_BGP_IDENTIFIER: u8 = 3;
    pub const UNSUPPORTED_OPTIONAL_PARAMETER: u8 = 4;
    pub const UNACCEPTABLE_HOLD_TIME: u8 = 6;
    pub const UNSUPPORTED_CAPABILITY: u8 = 7;
    // UPDATE message error.
    pub const MALFORMED_ATTRIBUTE_LIST: u8 = 1;
    pub const UNRECOGNIZED_WELL_KNOWN_ATTRIBUTE: u8 = 2;
    pub const MISSING_WELL_KNOWN_ATTRIBUTE: u8 = 3;
    pub const ATTRIBUTE_FLAGS_ERROR: u8 = 4;
    pub const ATTRIBUTE_LENGTH_ERROR: u8 = 5;
    pub const INVALID_ORIGIN_ATTRIBUTE: u8 = 6;
    pub const INVALID_NEXT_HOP_ATTRIBUTE: u8 = 8;
    pub const OPTIONAL_ATTRIBUTE_ERROR: u8 = 9;
    pub const INVALID_NETWORK_FIELD: u8 = 10;
    pub const MALFORMED_AS_PATH: u8 = 11;
    // FSM error (RFC 6608).
    pub const FSM_UNEXPECTED_IN_OPENSENT: u8 = 1;
    pub const FSM_UNEXPECTED_IN_OPENCONFIRM: u8 = 2;
    pub const FSM_UNEXPECTED_IN_ESTABLISHED: u8 = 3;
    // Cease (RFC 4486).
    pub const MAX_PREFIXES_REACHED: u8 = 1;
    pub const ADMINISTRATIVE_SHUTDOWN: u8 = 2;
    pub const PEER_DECONFIGURED: u8 = 3;
    pub const ADMINISTRATIVE_RESET: u8 = 4;
    pub const CONNECTION_REJECTED: u8 = 5;
    pub const OTHER_CONFIGURATION_CHANGE: u8 = 6;
    pub const CONNECTION_COLLISION_RESOLUTION: u8 = 7;
    pub const OUT_OF_RESOURCES: u8 = 8;
    /// RFC 8538.
    pub const HARD_RESET: u8 = 9;
    /// RFC 9384: the session went down because BFD declared the path down.
    pub const BFD_DOWN: u8 = 10;
}

/// NOTIFICATION (RFC 4271 4.5).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: Vec<u8>) -> Notification {
        Notification {
            code,
            subcode,
            data,
        }
    }

    /// Cease / Administrative Shutdown (or Reset) with a shutdown communication (RFC 8203, RFC 9003: a length
    /// octet and up to 255 octets of UTF-8, cut at a character boundary).
    pub fn shutdown(subcode: u8, message: &str) -> Notification {
        let mut end = message.len().min(255);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let mut data = vec![end as u8];
        data.extend_from_slice(&message.as_bytes()[..end]);
        Notification::new(error_code::CEASE, subcode, data)
    }

    /// The shutdown communication of a Cease / Administrative Shutdown or Reset, if present and valid UTF-8.
    pub fn shutdown_message(&self) -> Option<String> {
        if self.code != error_code::CEASE
            || !matches!(
                self.subcode,
                subcode::ADMINISTRATIVE_SHUTDOWN | subcode::ADMINISTRATIVE_RESET
            )
        {
            return None;
        }
        let (&len, rest) = self.data.split_first()?;
        let text = rest.get(..len as usize)?;
        String::from_utf8(text.to_vec()).ok()
    }

    /// A short human description, e.g. "Cease/Administrative Shutdown".
    pub fn describe(&self) -> String {
        use error_code::*;
        let code = match self.code {
            MESSAGE_HEADER => "Message Header Error",
            OPEN_MESSAGE => "OPEN Message Error",
            UPDATE_MESSAGE => "UPDATE Message Error",
            HOLD_TIMER_EXPIRED => "Hold Timer Expired",
            FSM => "Finite State Machine Error",
            CEASE => "Cease",
            ROUTE_REFRESH => "ROUTE-REFRESH Message Error",
            _ => "Unknown Error",
        };
        let sub = match (self.code, self.subcode) {
            (CEASE, subcode::MAX_PREFIXES_REACHED) => "Maximum Number of Prefixes Reached",
            (CEASE, subcode::ADMINISTRATIVE_SHUTDOWN) => "Administrative Shutdown",
            (CEASE, subcode::PEER_DECONFIGURED) => "Peer De-configured",
            (CEASE, subcode::ADMINISTRATIVE_RESET) => "Administrative Reset",
            (CEASE, subcode::CONNECTION_REJECTED) => "Connection Rejected",
            (CEASE, subcode::OTHER_CONFIGURATION_CHANGE) => "Other Configuration Change",
            (CEASE, subcode::CONNECTION_COLLISION_RESOLUTION) => "Connection Collision Resolution",
            (CEASE, subcode::OUT_OF_RESOURCES) => "Out of Resources",
            (CEASE, subcode::HARD_RESET) => "Hard Reset",
            (CEASE, subcode::BFD_DOWN) => "BFD Down",
            (OPEN_MESSAGE, subcode::BAD_PEER_AS) => "Bad Peer AS",
            (OPEN_MESSAGE, subcode::UNACCEPTABLE_HOLD_TIME) => "Unacceptable Hold Time",
            (OPEN_MESSAGE, subcode::BAD_BGP_IDENTIFIER) => "Bad BGP Identifier",
            (OPEN_MESSAGE, subcode::UNSUPPORTED_VERSION) => "Unsupported Version Number",
            (UPDATE_MESSAGE, subcode::MALFORMED_ATTRIBUTE_LIST) => "Malformed Attribute List",
            (UPDATE_MESSAGE, subcode::MALFORMED_AS_PATH) => "Malformed AS_PATH",
            (UPDATE_MESSAGE, subcode::INVALID_NETWORK_FIELD) => "Invalid Network Field",
            (MESSAGE_HEADER, subcode::BAD_MESSAGE_LENGTH) => "Bad Message Length",
            (MESSAGE_HEADER, subcode::BAD_MESSAGE_TYPE) => "Bad Message Type",
            (MESSAGE_HEADER, subcode::CONNECTION_NOT_SYNCHRONIZED) => "Connection Not Synchronized",
            _ => "",
        };
        if sub.is_empty() {
            format!("{code} (subcode {})", self.subcode)
        } else {
            format!("{code}/{sub}")
        }
    }
}

/// A BGP message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    /// ROUTE-REFRESH (RFC 2918) for one family.
    RouteRefresh(Family),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn as_path_length_prepend_and_display() {
        let mut p = AsPath {
            segments: vec![
                AsSegment::Sequence(vec![65001, 65002]),
                AsSegment::Set(vec![1, 2, 3]),
            ],
        };
        assert_eq!(p.len(), 3);
        assert!(p.contains(2));
        p.prepend(65000, 2);
        assert_eq!(p.len(), 5);
        assert_eq!(p.first(), Some(65000));
        assert_eq!(p.to_string(), "65000 65000 65001 65002 {1,2,3}");
        let mut empty = AsPath::default();
        empty.prepend(7, 1);
        assert_eq!(empty.to_string(), "7");
    }

    #[test]
    fn shutdown_communication_round_trip() {
        let n = Notification::shutdown(
            subcode::ADMINISTRATIVE_SHUTDOWN,
            "maintenance: back at 14:00",
        );
        assert_eq!(
            n.shutdown_message().as_deref(),
            Some("maintenance: back at 14:00")
        );
        assert_eq!(n.describe(), "Cease/Administrative Shutdown");
        let long = "é".repeat(200);
        let n = Notification::shutdown(subcode::ADMINISTRATIVE_SHUTDOWN, &long);
        assert!(n.data[0] as usize <= 255);
        assert!(n.shutdown_message().is_some());
    }

    #[test]
    fn link_bandwidth_round_trip() {
        let c = ExtCommunity::new_link_bandwidth(65001, 125_000_000.0);
        assert_eq!(c.link_bandwidth(), Some((65001, 125_000_000.0)));
    }
}
