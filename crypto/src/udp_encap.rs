//! Demultiplexing UDP-encapsulated IPsec traffic (RFC 3948) on port 4500.
//!
//! Implements the receiver's classification of RFC 3948 section 2: a datagram whose first
//! four octets are zero (the non-ESP marker, 2.2) carries an IKE message; a single 0xFF octet
//! is a NAT-keepalive (2.3); anything else is an ESP packet whose first four octets are the
//! SPI (2.1), which can never be zero. SPIs 1..=255 are reserved (RFC 4303 section 2.1) and
//! are refused here so that they never reach an SA lookup.
//!
//! Deliberately left out: the UDP header itself (the socket layer strips it), checksum
//! handling (RFC 3948 section 3.1.2: the sender sends 0, the receiver ignores it), the
//! transport-mode checksum fix-ups (braid is tunnel mode only), and sending keepalives
//! (a timer concern of the driver; [`NAT_KEEPALIVE`] is the payload to send).

use crate::esp::Spi;

/// The four zero octets that precede an IKE message on port 4500 (RFC 3948 section 2.2).
pub const NON_ESP_MARKER: [u8; 4] = [0; 4];

/// The payload of a NAT-keepalive packet (RFC 3948 section 2.3).
pub const NAT_KEEPALIVE: [u8; 1] = [0xff];

/// The UDP port of IKE and UDP-encapsulated ESP (RFC 3948 section 2, RFC 7296 section 2.23).
pub const NAT_T_PORT: u16 = 4500;

/// What a UDP datagram received on port 4500 carries.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum UdpPayload<'a> {
    /// An ESP packet: the whole datagram, starting with this SPI.
    Esp(Spi),
    /// An IKE message: the non-ESP marker was present and this is what follows it. It must be
    /// passed up to IKE, not dropped.
    Ike(&'a [u8]),
    /// A NAT-keepalive: a single 0xFF octet. Nothing to do.
    NatKeepalive,
    /// Neither: shorter than 4 octets (other than a keepalive), or an ESP SPI in the reserved
    /// range 1..=255.
    Malformed,
}

/// Classifies the payload of a UDP datagram received on port 4500.
///
/// # Panics
/// Never.
pub fn classify(datagram: &[u8]) -> UdpPayload<'_> {
    match datagram {
        [0xff] => UdpPayload::NatKeepalive,
        [a, b, c, d, rest @ ..] => match Spi(u32::from_be_bytes([*a, *b, *c, *d])) {
            Spi(0) => UdpPayload::Ike(rest),
            spi if spi.is_reserved() => UdpPayload::Malformed,
            spi => UdpPayload::Esp(spi),
        },
        _ => UdpPayload::Malformed,
    }
}
