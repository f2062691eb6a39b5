//! ESP security associations: sealing and opening tunnel-mode ESP packets in place.
//!
//! Implements RFC 4303 (IP Encapsulating Security Payload) in tunnel mode with combined-mode
//! (AEAD) transforms only: AES-256-GCM with a 16-octet ICV (RFC 4106, "aes256gcm16") and
//! ChaCha20-Poly1305 (RFC 7634). Covered: the packet format (section 2), padding with the
//! default 1, 2, 3, ... contents and 4-octet alignment (2.4), the TFC dummy packet (next
//! header 59, 2.6), sequence number generation without ever cycling (3.3.3), extended
//! sequence numbers (2.2.1, 3.3.3; only the low 32 bits on the wire, the high 32 bits in the
//! AAD, RFC 4106 section 5 / RFC 7634 section 3), inbound processing in the order of 3.4
//! (SPI, replay pre-check, ICV verification with decryption, and only then the window
//! update) and the nonce construction salt || IV of RFC 4106 section 4 / RFC 7634 section 2,
//! with the 64-bit sequence number as the IV (the counter RFC 4106 section 3.1 recommends,
//! unique per SA by construction).
//!
//! Layout of a sealed packet around the inner packet at `buf[payload]`, as
//! [`OutboundSa::seal`] writes it and [`InboundSa::open`] reads it:
//!
//! ```text
//! payload.start - 16        payload.start         payload.end
//! |                         |                     |
//! | SPI | Seq | IV          | inner IP packet     | padding | pad len | next hdr | ICV |
//! |  4  |  4  |  8          |                     |  0..=3  |    1    |    1     | 16  |
//! |<------ HEADROOM ------->|<--- encrypted, a multiple of 4 octets ------------>|
//!                                                 |<------ at most MAX_TAILROOM ------>|
//! ```
//!
//! Deliberately left out: transport mode, non-AEAD transforms and AES-GCM ICVs shorter than
//! 16 octets, the UDP encapsulation header (see [`crate::udp_encap`]; this module sees the
//! ESP packet only), TFC padding on output, SA lifetimes (the packet and byte counters they
//! need are here) and the ESN re-synchronisation of RFC 4303 Appendix A3. The inner packet is
//! not parsed: in tunnel mode the peer may append TFC padding after it (RFC 4303 section 2.7),
//! so the caller trims [`Opened::inner`] with the inner IP header's length field.
//!
//! The AEAD is aws-lc-rs's (AWS-LC, the provider rustls defaults to), not ring's, which the rest
//! of braid uses: on CPUs with AVX-512 and VAES its AES-GCM seals a 1400-octet packet in ~175 ns
//! against ring's ~220 (ring 0.17 has VAES only with 256-bit vectors), 1.6x faster at 8 KiB;
//! ChaCha20-Poly1305 is the same speed in both. See the README's dependency notes.
//!
//! Key hygiene: [`SaKey`] keeps the salt in a buffer zeroized on drop and hands the key
//! itself to aws-lc-rs at construction; raw key bytes are not retained. The expanded key lives in
//! AWS-LC's `EVP_AEAD_CTX`, which `EVP_AEAD_CTX_free` releases through `OPENSSL_free`, and that
//! cleanses the allocation.

use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use aws_lc_rs::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroize;

use crate::replay::ReplayWindow;

/// Length of the AEAD key in the KEYMAT (both ciphers use 256-bit keys).
pub const KEY_LEN: usize = 32;
/// Length of the salt that follows the key in the KEYMAT (RFC 4106 section 8.1, RFC 7634
/// section 4).
pub const SALT_LEN: usize = 4;
/// KEYMAT octets per SA and direction: the key, then the salt.
pub const KEYMAT_LEN: usize = KEY_LEN + SALT_LEN;
/// SPI (4) and Sequence Number (4) fields.
pub const ESP_HEADER_LEN: usize = 8;
/// The explicit IV carried in every packet (RFC 4106 section 3.1, RFC 7634 section 2).
pub const IV_LEN: usize = 8;
/// The Integrity Check Value (authentication tag) length of both transforms.
pub const ICV_LEN: usize = 16;
/// Octets [`OutboundSa::seal`] writes in front of the inner packet: ESP header and IV.
pub const HEADROOM: usize = ESP_HEADER_LEN + IV_LEN;
/// The most octets [`OutboundSa::seal`] writes after the inner packet: up to 3 octets of
/// padding, pad length, next header, and the ICV.
pub const MAX_TAILROOM: usize = 3 + 2 + ICV_LEN;
/// The smallest well-formed ESP packet: header (8), IV (8), the shortest encrypted part (4:
/// an empty payload, 2 octets of padding, pad length and next header, since the encrypted
/// part must be a multiple of 4 and holds at least the 2 trailer octets) and ICV (16): 36.
/// Equal to `sealed_len(0)`.
pub const MIN_ESP_LEN: usize = ESP_HEADER_LEN + IV_LEN + 4 + ICV_LEN;

/// Next header value of a TFC dummy packet (RFC 4303 section 2.6; IPv6 "No Next Header").
const NEXT_HEADER_DUMMY: u8 = 59;

/// A Security Parameters Index (RFC 4303 section 2.1), as a host-order number.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Spi(pub u32);

impl Spi {
    /// Whether this SPI must not appear on the wire: 0 is reserved for local use and
    /// 1..=255 are reserved by IANA (RFC 4303 section 2.1).
    pub const fn is_reserved(self) -> bool {
        self.0 <= 255
    }

    /// The SPI in network byte order, as it appears on the wire.
    pub const fn to_be_bytes(self) -> [u8; 4] {
        self.0.to_be_bytes()
    }
}

impl std::fmt::Display for Spi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "0x{:08x}", self.0)
    }
}

impl From<u32> for Spi {
    fn from(v: u32) -> Spi {
        Spi(v)
    }
}

/// The ESP transforms braid implements.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Cipher {
    /// AES-GCM with a 256-bit key and 16-octet ICV (RFC 4106; IKEv2 ENCR_AES_GCM_16, 256 bits).
    Aes256Gcm16,
    /// ChaCha20-Poly1305 (RFC 7634; IKEv2 ENCR_CHACHA20_POLY1305).
    ChaCha20Poly1305,
}

impl Cipher {
    /// Every cipher, for iterating in tests, benches and configuration help.
    pub const ALL: [Cipher; 2] = [Cipher::Aes256Gcm16, Cipher::ChaCha20Poly1305];

    /// The proposal keyword, as in strongSwan: `"aes256gcm16"` or `"chacha20poly1305"`.
    pub fn name(self) -> &'static str {
        match self {
            Cipher::Aes256Gcm16 => "aes256gcm16",
            Cipher::ChaCha20Poly1305 => "chacha20poly1305",
        }
    }

    fn algorithm(self) -> &'static aead::Algorithm {
        match self {
            Cipher::Aes256Gcm16 => &aead::AES_256_GCM,
            Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
        }
    }
}

impl std::fmt::Display for Cipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Cipher {
    type Err = UnknownCipher;

    /// Accepts exactly the names [`Cipher::name`] returns.
    fn from_str(s: &str) -> Result<Cipher, UnknownCipher> {
        Cipher::ALL
            .into_iter()
            .find(|c| c.name() == s)
            .ok_or(UnknownCipher)
    }
}

/// A cipher name other than `aes256gcm16` or `chacha20poly1305`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct UnknownCipher;

impl std::fmt::Display for UnknownCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("unknown ESP cipher (expected aes256gcm16 or chacha20poly1305)")
    }
}

impl std::error::Error for UnknownCipher {}

/// KEYMAT of a length other than [`KEYMAT_LEN`].
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct KeyLenError;

impl std::fmt::Display for KeyLenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ESP KEYMAT must be {KEYMAT_LEN} octets ({KEY_LEN}-octet key, {SALT_LEN}-octet salt)"
        )
    }
}

impl std::error::Error for KeyLenError {}

/// The keying material of one SA in one direction: a cipher, its 256-bit key and the 4-octet
/// salt.
///
/// Built from the 36 octets of KEYMAT that IKEv2 derives for the SA, key first and salt last
/// (RFC 4106 section 8.1, RFC 7634 section 4). `Debug` shows the cipher only; dropping a
/// `SaKey` zeroizes the salt, and the key bytes live only inside aws-lc-rs (see the module notes).
/// Clones share the one expanded key.
#[derive(Clone)]
pub struct SaKey {
    cipher: Cipher,
    key: Arc<LessSafeKey>,
    /// The salt's four octets in the low half of a word, as the nonce's first eight octets start
    /// (see [`SaKey::nonce`]).
    salt: u64,
}

impl SaKey {
    /// Prepares `keymat` (exactly [`KEYMAT_LEN`] octets: key then salt) for `cipher`.
    ///
    /// The caller should zeroize its copy of `keymat` afterwards.
    ///
    /// # Errors
    /// [`KeyLenError`] unless `keymat.len() == KEYMAT_LEN`.
    pub fn new(cipher: Cipher, keymat: &[u8]) -> Result<SaKey, KeyLenError> {
        if keymat.len() != KEYMAT_LEN {
            return Err(KeyLenError);
        }
        let (key, salt) = keymat.split_at(KEY_LEN);
        let key = UnboundKey::new(cipher.algorithm(), key).map_err(|_| KeyLenError)?;
        let [s0, s1, s2, s3]: [u8; SALT_LEN] = salt.try_into().map_err(|_| KeyLenError)?;
        let salt = u64::from_le_bytes([s0, s1, s2, s3, 0, 0, 0, 0]);
        Ok(SaKey {
            cipher,
            key: Arc::new(LessSafeKey::new(key)),
            salt,
        })
    }

    /// The cipher this key is for.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    /// The AEAD nonce for an explicit IV: salt || IV.
    ///
    /// Its first eight octets are one word (the salt's word OR'ed with the IV's first half), stored
    /// as the AEAD loads them: stored as salt and IV (octets 0..4, 4..12), an 8-octet load of
    /// 0..8 (ring's) spanned two stores and waited for both to reach the cache (a store-forwarding stall
    /// on every packet).
    #[inline(always)]
    fn nonce(&self, iv: [u8; IV_LEN]) -> Nonce {
        let [i0, i1, i2, i3, i4, i5, i6, i7] = iv;
        let head = self.salt | u64::from(u32::from_le_bytes([i0, i1, i2, i3])) << 32;
        let mut nonce = [0u8; SALT_LEN + IV_LEN];
        nonce[..8].copy_from_slice(&head.to_le_bytes());
        nonce[8..].copy_from_slice(&[i4, i5, i6, i7]);
        Nonce::assume_unique_for_key(nonce)
    }
}

impl Drop for SaKey {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl std::fmt::Debug for SaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SaKey")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

/// The Next Header values a tunnel-mode SA carries (RFC 4303 section 2.6): the inner packet's
/// IP version.
#[repr(u8)]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum NextHeader {
    /// IPv4 (IP-in-IP, protocol 4).
    Ipv4 = 4,
    /// IPv6 (protocol 41).
    Ipv6 = 41,
}

impl NextHeader {
    /// The Next Header for an on-wire protocol number, if tunnel mode carries it.
    pub const fn from_u8(v: u8) -> Option<NextHeader> {
        match v {
            4 => Some(NextHeader::Ipv4),
            41 => Some(NextHeader::Ipv6),
            _ => None,
        }
    }
}

/// The length of the ESP packet (header to ICV) that sealing an `inner_len`-octet packet
/// produces: `HEADROOM + align4(inner_len + 2) + ICV_LEN`. Saturates at `usize::MAX` for
/// lengths no buffer can hold.
pub fn sealed_len(inner_len: usize) -> usize {
    inner_len
        .checked_add(2 + 3)
        .map(|n| n & !3)
        .and_then(|n| n.checked_add(HEADROOM + ICV_LEN))
        .unwrap_or(usize::MAX)
}

/// The largest `inner_len` with `sealed_len(inner_len) <= esp_budget`, or 0 if there is none
/// (`esp_budget < MIN_ESP_LEN`).
///
/// `esp_budget` is what the path leaves for the ESP packet, e.g. 1500 - 20 (outer IPv4) - 8
/// (UDP, RFC 3948) = 1472, which gives an inner MTU of 1438.
pub fn max_inner_len(esp_budget: usize) -> usize {
    match esp_budget.checked_sub(HEADROOM + ICV_LEN) {
        Some(encrypted) if encrypted >= 4 => (encrypted & !3) - 2,
        _ => 0,
    }
}

/// The octets the encrypted part occupies for an inner packet of `inner_len` octets
/// (`inner_len <= isize::MAX`, so this cannot overflow).
fn padded_len(inner_len: usize) -> usize {
    (inner_len + 2 + 3) & !3
}

/// The AAD of RFC 4106 section 5 / RFC 7634 section 3: SPI || Seq (8 octets), or with ESN
/// SPI || Seq high || Seq low (12 octets).
fn aad(spi: Spi, seq: u64, esn: bool) -> ([u8; 12], usize) {
    let mut aad = [0u8; 12];
    aad[..4].copy_from_slice(&spi.to_be_bytes());
    if esn {
        aad[4..].copy_from_slice(&seq.to_be_bytes());
        (aad, 12)
    } else {
        aad[4..8].copy_from_slice(&(seq as u32).to_be_bytes());
        (aad, 8)
    }
}

/// Why [`OutboundSa::seal`] refused a packet. Nothing was written and no sequence number was
/// used.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SealError {
    /// Fewer than [`HEADROOM`] octets in front of the payload.
    NoHeadroom,
    /// The buffer ends before the padding, trailer and ICV would (or the payload range does
    /// not lie inside the buffer).
    NoTailroom,
    /// The SA has sent its last sequence number (2^32 - 1, or 2^64 - 1 with ESN) and must be
    /// replaced by a new one (RFC 4303 section 3.3.3).
    SeqExhausted,
}

impl SealError {
    /// A stable snake_case name, for drop counters.
    pub fn as_str(self) -> &'static str {
        match self {
            SealError::NoHeadroom => "no_headroom",
            SealError::NoTailroom => "no_tailroom",
            SealError::SeqExhausted => "seq_exhausted",
        }
    }
}

impl std::fmt::Display for SealError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for SealError {}

/// The sending half of a child SA: seals inner packets into ESP packets.
///
/// Shareable between threads (`&self` everywhere): the sequence number is an atomic counter, so several
/// data-path workers may seal with one SA at once, each packet with its own sequence number (and so its own
/// nonce). A worker that seals several packets at once (the segments of one super-packet) reserves their
/// numbers with one atomic operation ([`reserve`](Self::reserve)) and seals each with
/// [`seal_next`](Self::seal_next); its packets and those of other workers may then leave out of sequence
/// order, which the receiver's anti-replay window absorbs (RFC 4303 3.4.3). A number that is reserved but
/// never used leaves a gap, which ESP allows.
pub struct OutboundSa {
    spi: Spi,
    /// The SPI's four octets as they go on the wire, in the low half of a word (the ESP header's
    /// first eight octets are put together as one word: see [`OutboundSa::encrypt`]).
    spi_word: u64,
    esn: bool,
    key: SaKey,
    /// Tells this SA's [`SeqRange`]s from other SAs'.
    id: u64,
    /// The last sequence number handed out; 0 before the first packet.
    last_seq: AtomicU64,
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// Sequence numbers reserved on one [`OutboundSa`] by [`OutboundSa::reserve`], used one by one by
/// [`OutboundSa::seal_next`]. Neither `Clone` nor `Copy`: a number can be used once only.
#[derive(Debug)]
pub struct SeqRange {
    sa: u64,
    next: u64,
    left: u64,
}

impl SeqRange {
    /// Numbers left.
    pub fn len(&self) -> u64 {
        self.left
    }

    /// Whether every number has been used.
    pub fn is_empty(&self) -> bool {
        self.left == 0
    }
}

/// Tells SAs apart for [`SeqRange`] (never reused within a process).
static NEXT_SA_ID: AtomicU64 = AtomicU64::new(1);

impl OutboundSa {
    /// An SA sending with `spi` (the SPI the peer chose for its inbound SA) and `key`. The
    /// first packet gets sequence number 1. `esn` must match what IKE negotiated.
    pub fn new(spi: Spi, key: &SaKey, esn: bool) -> OutboundSa {
        let [s0, s1, s2, s3] = spi.to_be_bytes();
        OutboundSa {
            spi,
            spi_word: u64::from_le_bytes([s0, s1, s2, s3, 0, 0, 0, 0]),
            esn,
            key: key.clone(),
            id: NEXT_SA_ID.fetch_add(1, Relaxed),
            last_seq: AtomicU64::new(0),
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
        }
    }

    /// The SPI written into every packet.
    pub fn spi(&self) -> Spi {
        self.spi
    }

    /// Whether extended (64-bit) sequence numbers are in use.
    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The transform.
    pub fn cipher(&self) -> Cipher {
        self.key.cipher
    }

    /// The last sequence number handed out (sealed, or reserved for sealing); 0 before the first.
    pub fn last_seq(&self) -> u64 {
        self.last_seq.load(Relaxed)
    }

    /// How many more packets this SA can seal before [`SealError::SeqExhausted`].
    pub fn remaining(&self) -> u64 {
        self.seq_limit().saturating_sub(self.last_seq())
    }

    /// Packets counted so far: by [`seal`](Self::seal) and by [`count`](Self::count).
    pub fn packets(&self) -> u64 {
        self.packets.load(Relaxed)
    }

    /// Inner-packet octets counted so far.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Relaxed)
    }

    /// Adds packets and inner octets sealed with [`seal_next`](Self::seal_next) to the SA's counters (callers
    /// count once per batch, not per packet).
    pub fn count(&self, packets: u64, bytes: u64) {
        self.packets.fetch_add(packets, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
    }

    /// Reserves the next `n` sequence numbers (one atomic operation, whichever thread asks).
    ///
    /// # Errors
    /// [`SealError::SeqExhausted`] if fewer than `n` are left; nothing is reserved then.
    pub fn reserve(&self, n: u64) -> Result<SeqRange, SealError> {
        let limit = self.seq_limit();
        let last = self
            .last_seq
            .fetch_update(Relaxed, Relaxed, |s| {
                s.checked_add(n).filter(|&e| e <= limit)
            })
            .map_err(|_| SealError::SeqExhausted)?;
        Ok(SeqRange {
            sa: self.id,
            next: last.wrapping_add(1),
            left: n,
        })
    }

    /// Seals the inner packet at `buf[payload]` in place into an ESP packet.
    ///
    /// Writes the ESP header and IV into `buf[payload.start - 16 .. payload.start]`, and the
    /// padding (1, 2, 3, ... up to 4-octet alignment), pad length, `next` and the ICV after
    /// `payload.end`; the payload itself is encrypted in place. Buffer requirements:
    /// `payload.start >= HEADROOM` and `buf.len() >= payload.start + sealed_len(len) -
    /// HEADROOM`, which [`MAX_TAILROOM`] octets after the payload always satisfy.
    ///
    /// Returns the range of the whole ESP packet in `buf` (from the SPI to the end of the
    /// ICV), of length [`sealed_len`]`(payload.len())`.
    ///
    /// # Errors
    /// [`SealError::NoHeadroom`], [`SealError::NoTailroom`] (also for a payload range that is
    /// not inside `buf`), [`SealError::SeqExhausted`]. On error `buf` and the SA are unchanged.
    ///
    /// # Panics
    /// Never.
    pub fn seal(
        &self,
        buf: &mut [u8],
        payload: Range<usize>,
        next: NextHeader,
    ) -> Result<Range<usize>, SealError> {
        let inner_len = payload.len() as u64;
        let esp = self.seal_with(buf, payload, next as u8, None, None)?;
        self.count(1, inner_len);
        Ok(esp)
    }

    /// [`seal`](Self::seal) with the next number of `seq` (reserved on this SA), without counting the
    /// packet (see [`count`](Self::count)).
    ///
    /// # Errors
    /// As [`seal`](Self::seal); [`SealError::SeqExhausted`] also when `seq` is used up or was reserved on
    /// another SA. On error `seq` is unchanged.
    #[inline]
    pub fn seal_next(
        &self,
        buf: &mut [u8],
        payload: Range<usize>,
        next: NextHeader,
        seq: &mut SeqRange,
    ) -> Result<Range<usize>, SealError> {
        self.seal_with(buf, payload, next as u8, Some(seq), None)
    }

    /// [`seal`](Self::seal) with any next header octet and, for known-answer tests only, a
    /// chosen IV instead of the sequence number.
    #[inline(always)]
    fn seal_with(
        &self,
        buf: &mut [u8],
        payload: Range<usize>,
        next_header: u8,
        seq: Option<&mut SeqRange>,
        iv: Option<[u8; IV_LEN]>,
    ) -> Result<Range<usize>, SealError> {
        let Range { start, end } = payload;
        if start < HEADROOM {
            return Err(SealError::NoHeadroom);
        }
        if start > end || end > buf.len() {
            return Err(SealError::NoTailroom);
        }
        let inner_len = end - start;
        let padded = padded_len(inner_len);
        let pad_len = padded - inner_len - 2;
        let ct_end = start + padded;
        if ct_end + ICV_LEN > buf.len() {
            return Err(SealError::NoTailroom);
        }
        let seq = self.take(seq)?;

        let trailer = &mut buf[end..ct_end];
        for (i, octet) in trailer[..pad_len].iter_mut().enumerate() {
            *octet = i as u8 + 1;
        }
        trailer[pad_len] = pad_len as u8;
        trailer[pad_len + 1] = next_header;

        self.encrypt(buf, start - HEADROOM, ct_end, seq, iv)
    }

    /// Test and fuzz hook: seals `buf[plaintext]` exactly as given (the caller supplies any
    /// padding, pad length and next header) with the next sequence number and, optionally, a
    /// chosen IV. Lets tests build authentic packets with malformed trailers. Compiled only
    /// for this crate's unit tests and under `--cfg fuzzing`: reusing an IV is catastrophic.
    #[cfg(any(test, fuzzing))]
    #[doc(hidden)]
    pub fn seal_raw(
        &self,
        buf: &mut [u8],
        plaintext: Range<usize>,
        iv: Option<[u8; IV_LEN]>,
    ) -> Result<Range<usize>, SealError> {
        let Range { start, end } = plaintext;
        if start < HEADROOM {
            return Err(SealError::NoHeadroom);
        }
        if start > end || end.checked_add(ICV_LEN).is_none_or(|e| e > buf.len()) {
            return Err(SealError::NoTailroom);
        }
        let seq = self.take(None)?;
        self.encrypt(buf, start - HEADROOM, end, seq, iv)
    }

    /// Test hook: positions the SA as if `last_seq` had just been sent.
    #[cfg(test)]
    pub(crate) fn set_last_seq(&mut self, last_seq: u64) {
        self.last_seq.store(last_seq, Relaxed);
    }

    /// Test hook: [`seal`](Self::seal) with a chosen IV and raw next header octet, for
    /// reproducing published vectors whose IV is not a counter.
    #[cfg(test)]
    pub(crate) fn seal_with_iv(
        &self,
        buf: &mut [u8],
        payload: Range<usize>,
        next_header: u8,
        iv: [u8; IV_LEN],
    ) -> Result<Range<usize>, SealError> {
        let inner_len = payload.len() as u64;
        let esp = self.seal_with(buf, payload, next_header, None, Some(iv))?;
        self.count(1, inner_len);
        Ok(esp)
    }

    /// The highest sequence number this SA may use.
    fn seq_limit(&self) -> u64 {
        if self.esn {
            u64::MAX
        } else {
            u64::from(u32::MAX)
        }
    }

    /// The next number of `seq`, or (`None`) a newly reserved one.
    #[inline(always)]
    fn take(&self, seq: Option<&mut SeqRange>) -> Result<u64, SealError> {
        match seq {
            Some(r) if r.sa == self.id && r.left > 0 => {
                let seq = r.next;
                r.next = r.next.wrapping_add(1);
                r.left -= 1;
                Ok(seq)
            }
            Some(_) => Err(SealError::SeqExhausted),
            None => Ok(self.reserve(1)?.next),
        }
    }

    /// Writes the header at `buf[esp_start..esp_start + HEADROOM]`, encrypts
    /// `buf[esp_start + HEADROOM..ct_end]` and writes the ICV after it.
    /// The caller has checked `esp_start + HEADROOM <= ct_end` and `ct_end + ICV_LEN <=
    /// buf.len()`.
    #[inline(always)]
    fn encrypt(
        &self,
        buf: &mut [u8],
        esp_start: usize,
        ct_end: usize,
        seq: u64,
        iv: Option<[u8; IV_LEN]>,
    ) -> Result<Range<usize>, SealError> {
        let iv = iv.unwrap_or(seq.to_be_bytes());
        let esp_end = ct_end + ICV_LEN;
        let (esp, _) = buf.split_at_mut(esp_end);
        let (head, icv) = esp.split_at_mut(ct_end);
        let (header, plaintext) = head.split_at_mut(esp_start + HEADROOM);
        let header = &mut header[esp_start..];
        // SPI and sequence number as one word, so that the AAD read from here loads what one store
        // wrote (two 4-octet stores read back as one 8-octet load stall on store forwarding).
        let seq32 = u32::from_le_bytes((seq as u32).to_be_bytes());
        let head = self.spi_word | u64::from(seq32) << 32;
        header[..8].copy_from_slice(&head.to_le_bytes());
        header[8..].copy_from_slice(&iv);

        // The AAD (RFC 4106 section 5, RFC 7634 section 2.1): SPI and the 32-bit sequence number,
        // the header itself; with ESN, SPI and the whole 64-bit sequence number.
        let esn_aad;
        let aad = if self.esn {
            esn_aad = aad(self.spi, seq, true);
            &esn_aad.0[..esn_aad.1]
        } else {
            &header[..8]
        };
        let sealed =
            self.key
                .key
                .seal_in_place_separate_tag(self.key.nonce(iv), Aad::from(aad), plaintext);
        // Copied from where the AEAD returned it, in one 16-octet move: mapping the result first copied the tag
        // through the stack in overlapping pieces, whose reload stalled on store forwarding (~10 ns a packet).
        // The AEAD refuses only inputs of tens of GiB (AES-GCM's limit is about 2^36 octets), which no packet
        // buffer holds; report it as a buffer that cannot be used.
        let Ok(tag) = &sealed else {
            return Err(SealError::NoTailroom);
        };
        let tag: &[u8; ICV_LEN] = tag.as_ref().try_into().map_err(|_| SealError::NoTailroom)?;
        icv.copy_from_slice(tag);
        Ok(esp_start..esp_end)
    }
}

impl std::fmt::Debug for OutboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboundSa")
            .field("spi", &self.spi)
            .field("cipher", &self.key.cipher)
            .field("esn", &self.esn)
            .field("last_seq", &self.last_seq)
            .field("packets", &self.packets)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// A packet [`InboundSa::open`] accepted.
///
/// (Not `Copy`: `Range` is not.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Opened {
    /// The full (ESN-inferred) sequence number.
    pub seq: u64,
    /// The inner packet's IP version.
    pub next_header: NextHeader,
    /// Where the decrypted inner packet now is in the buffer (always starting at
    /// [`HEADROOM`]). It may end in TFC padding; trim with the inner IP header's length.
    pub inner: Range<usize>,
}

/// Why [`InboundSa::open`] dropped a packet; each variant is a counted drop reason.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OpenError {
    /// Shorter than [`MIN_ESP_LEN`], or the encrypted part is not a multiple of 4 octets.
    TooShort,
    /// The packet's SPI is not this SA's.
    SpiMismatch,
    /// A duplicate, older than the replay window, or sequence number 0.
    Replay,
    /// The ICV check failed; the replay window was not updated.
    AuthFailed,
    /// The pad length exceeds the payload, or the padding is not 1, 2, 3, ...
    BadPadding,
    /// The next header is not 4 (IPv4), 41 (IPv6) or 59 (dummy).
    BadNextHeader,
    /// Next header 59: a TFC dummy packet (RFC 4303 section 2.6). Authentic, carries
    /// nothing; discard it.
    Dummy,
}

impl OpenError {
    /// Every reason, for registering counters.
    pub const ALL: [OpenError; 7] = [
        OpenError::TooShort,
        OpenError::SpiMismatch,
        OpenError::Replay,
        OpenError::AuthFailed,
        OpenError::BadPadding,
        OpenError::BadNextHeader,
        OpenError::Dummy,
    ];

    /// A stable snake_case name, for drop counters and `braid show`.
    pub fn as_str(self) -> &'static str {
        match self {
            OpenError::TooShort => "too_short",
            OpenError::SpiMismatch => "spi_mismatch",
            OpenError::Replay => "replay",
            OpenError::AuthFailed => "auth_failed",
            OpenError::BadPadding => "bad_padding",
            OpenError::BadNextHeader => "bad_next_header",
            OpenError::Dummy => "dummy",
        }
    }
}

impl std::fmt::Display for OpenError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for OpenError {}

/// The authenticated, decrypted contents of a packet before the next header is judged.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RawOpened {
    pub(crate) seq: u64,
    pub(crate) next_header: u8,
    pub(crate) inner: Range<usize>,
}

/// The receiving half of a child SA: verifies and opens ESP packets.
pub struct InboundSa {
    spi: Spi,
    esn: bool,
    key: SaKey,
    window: ReplayWindow,
    packets: u64,
    bytes: u64,
}

impl InboundSa {
    /// An SA receiving on `spi` (the SPI we chose) with `key`.
    ///
    /// `replay_window` is the anti-replay window in packets: 0 disables the check, values up
    /// to [`crate::MAX_REPLAY_WINDOW`] (65536) are honoured and larger ones clamped; braid's
    /// default is 1024. The window's bitmap is allocated here, never per packet.
    pub fn new(spi: Spi, key: &SaKey, esn: bool, replay_window: u32) -> InboundSa {
        InboundSa {
            spi,
            esn,
            key: key.clone(),
            window: ReplayWindow::new(replay_window),
            packets: 0,
            bytes: 0,
        }
    }

    /// The SPI this SA accepts.
    pub fn spi(&self) -> Spi {
        self.spi
    }

    /// Whether extended (64-bit) sequence numbers are in use.
    pub fn esn(&self) -> bool {
        self.esn
    }

    /// The transform.
    pub fn cipher(&self) -> Cipher {
        self.key.cipher
    }

    /// The replay window size in packets (0: disabled), after clamping.
    pub fn replay_window(&self) -> u32 {
        self.window.size()
    }

    /// The highest authenticated sequence number so far (0 before the first).
    pub fn highest_seq(&self) -> u64 {
        self.window.highest()
    }

    /// Packets opened successfully (returned `Ok`) so far.
    pub fn packets(&self) -> u64 {
        self.packets
    }

    /// Inner-packet octets opened successfully so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Verifies and decrypts, in place, the ESP packet that is the whole of `buf` (starting
    /// at the SPI; no UDP header, no non-ESP marker).
    ///
    /// In order (RFC 4303 section 3.4): the SPI must be this SA's; the length must be at least
    /// [`MIN_ESP_LEN`] with an encrypted part that is a multiple of 4; the sequence number must
    /// pass the replay window's pre-check (which infers the high bits under ESN); the ICV
    /// must verify, and only then is the window updated and the payload, now decrypted in
    /// place, examined: the pad length must fit, the padding must read 1, 2, 3, ..., and the
    /// next header must be IPv4, IPv6 or the dummy value 59.
    ///
    /// On success the inner packet is at `buf[opened.inner]`. After an error the contents of
    /// `buf` are unspecified (an `AuthFailed` packet may be partly decrypted by the AEAD).
    ///
    /// # Errors
    /// See [`OpenError`]. Errors after authentication (`BadPadding`, `BadNextHeader`, `Dummy`)
    /// have already advanced the replay window: the packet was genuine.
    ///
    /// # Panics
    /// Never, for any input.
    pub fn open(&mut self, buf: &mut [u8]) -> Result<Opened, OpenError> {
        let raw = self.open_raw(buf)?;
        let next_header = match raw.next_header {
            4 => NextHeader::Ipv4,
            41 => NextHeader::Ipv6,
            NEXT_HEADER_DUMMY => return Err(OpenError::Dummy),
            _ => return Err(OpenError::BadNextHeader),
        };
        self.packets = self.packets.saturating_add(1);
        self.bytes = self.bytes.saturating_add(raw.inner.len() as u64);
        Ok(Opened {
            seq: raw.seq,
            next_header,
            inner: raw.inner,
        })
    }

    /// [`open`](Self::open) up to and including the padding check, leaving the next header
    /// as a raw octet.
    pub(crate) fn open_raw(&mut self, buf: &mut [u8]) -> Result<RawOpened, OpenError> {
        let spi = read_u32(buf, 0).ok_or(OpenError::TooShort)?;
        if spi != self.spi.0 {
            return Err(OpenError::SpiMismatch);
        }
        let len = buf.len();
        if len < MIN_ESP_LEN || (len - HEADROOM - ICV_LEN) % 4 != 0 {
            return Err(OpenError::TooShort);
        }
        let seq_low = read_u32(buf, 4).ok_or(OpenError::TooShort)?;
        let seq = self
            .window
            .check(seq_low, self.esn)
            .map_err(|_| OpenError::Replay)?;

        let (header, sealed) = buf.split_at_mut(HEADROOM);
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&header[ESP_HEADER_LEN..]);
        let (aad_buf, aad_len) = aad(self.spi, seq, self.esn);
        let plaintext = self
            .key
            .key
            .open_in_place(self.key.nonce(iv), Aad::from(&aad_buf[..aad_len]), sealed)
            .map_err(|_| OpenError::AuthFailed)?;
        self.window.update(seq);

        // plaintext = payload || padding || pad length || next header, at least 4 octets.
        let [.., pad_len, next_header] = *plaintext else {
            return Err(OpenError::TooShort);
        };
        let pad_len = usize::from(pad_len);
        let inner_len = plaintext
            .len()
            .checked_sub(2 + pad_len)
            .ok_or(OpenError::BadPadding)?;
        let padding = &plaintext[inner_len..inner_len + pad_len];
        if !padding
            .iter()
            .zip(1..=u8::MAX)
            .all(|(&octet, want)| octet == want)
        {
            return Err(OpenError::BadPadding);
        }
        Ok(RawOpened {
            seq,
            next_header,
            inner: HEADROOM..HEADROOM + inner_len,
        })
    }
}

impl std::fmt::Debug for InboundSa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboundSa")
            .field("spi", &self.spi)
            .field("cipher", &self.key.cipher)
            .field("esn", &self.esn)
            .field("window", &self.window)
            .field("packets", &self.packets)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// The big-endian u32 at `buf[at..at + 4]`, if the buffer is long enough.
fn read_u32(buf: &[u8], at: usize) -> Option<u32> {
    let bytes = buf.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes(bytes.try_into().ok()?))
}

#[cfg(test)]
mod tests;
