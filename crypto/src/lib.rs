//! braid-crypto: braid's sans-IO IPsec core.
//!
//! This crate holds the per-packet half of IPsec: ESP security associations in tunnel mode
//! ([`esp`], RFC 4303 with the AEAD transforms of RFC 4106 and RFC 7634, including extended
//! sequence numbers), the anti-replay window ([`replay`], RFC 4303 section 3.4.3 and
//! Appendix A) and the demultiplexing of UDP-encapsulated traffic on port 4500
//! ([`udp_encap`], RFC 3948), and the IKEv2 key management that creates and rekeys those SAs
//! ([`ike`], RFC 7296 with PSK authentication, DH groups 19 and 31, rekeying, DPD, cookies and
//! NAT detection).
//!
//! Everything is a plain state machine: no sockets, no clocks, no threads and no logging; the
//! ESP data path works over caller-owned buffers without allocating per packet, and its errors
//! are small `Copy` enums that the data path counts as drop reasons. Deliberately left out:
//! transport mode, non-AEAD transforms (CBC + HMAC, NULL), AH, and SPI lookup (the data plane
//! owns the SA table; IKE tells it what to install and remove).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod esp;
pub mod ike;
pub mod replay;
pub mod udp_encap;

pub use esp::{
    max_inner_len, sealed_len, Cipher, InboundSa, KeyLenError, NextHeader, OpenError, Opened,
    OutboundSa, SaKey, SealError, SeqRange, Spi, UnknownCipher, ESP_HEADER_LEN, HEADROOM, ICV_LEN,
    IV_LEN, KEYMAT_LEN, KEY_LEN, MAX_TAILROOM, MIN_ESP_LEN, SALT_LEN,
};
pub use replay::{ReplayError, ReplayWindow, MAX_REPLAY_WINDOW};
pub use udp_encap::{classify, UdpPayload, NON_ESP_MARKER};
