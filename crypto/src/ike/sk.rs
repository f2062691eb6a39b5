//! The Encrypted and Authenticated (SK) payload with AEAD ciphers.
//!
//! Implements RFC 7296 section 3.14 with the AEAD construction of RFC 5282 (AES-GCM with a
//! 16-octet ICV, section 3 and 5) and RFC 7634 section 3 (ChaCha20-Poly1305): the SK payload
//! is the generic header, an 8-octet IV, the ciphertext of the inner payloads followed by
//! padding and the Pad Length octet, and a 16-octet ICV. The nonce is the 4-octet salt from
//! the end of SK_e followed by the IV; the AAD is everything before the IV (the IKE header,
//! any unencrypted payloads, and the SK generic header), with the final lengths already in
//! place.
//!
//! The IV is a per-key counter, so it never repeats for a key. No padding is sent (neither
//! cipher needs block alignment); any padding received is accepted and stripped. Deliberately
//! left out: non-AEAD ciphers and IKE fragmentation (RFC 7383).

use ring::aead::{self, Aad, LessSafeKey, Nonce, UnboundKey};
use zeroize::Zeroizing;

use crate::esp::{Cipher, KeyLenError, ICV_LEN, IV_LEN, KEY_LEN, SALT_LEN};
use crate::ike::message::{
    encode_payloads, payload_type, Header, Payload, GENERIC_LEN, HEADER_LEN, MAX_MESSAGE,
};

/// Why an SK payload did not open. Unauthenticated: the message is dropped and counted.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum SkError {
    /// Too short for IV, Pad Length and ICV.
    TooShort,
    /// The ICV does not verify.
    AuthFailed,
    /// The Pad Length exceeds the plaintext.
    BadPadding,
}

impl std::fmt::Display for SkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SkError::TooShort => "SK payload too short",
            SkError::AuthFailed => "SK payload integrity check failed",
            SkError::BadPadding => "SK payload pad length too long",
        })
    }
}

impl std::error::Error for SkError {}

/// One direction's SK_e: the AEAD key, the salt and the IV counter for sending.
pub struct SkCipher {
    cipher: Cipher,
    pub(crate) key: LessSafeKey,
    pub(crate) salt: Zeroizing<[u8; SALT_LEN]>,
    next_iv: u64,
}

impl std::fmt::Debug for SkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkCipher")
            .field("cipher", &self.cipher)
            .finish_non_exhaustive()
    }
}

fn algorithm(c: Cipher) -> &'static aead::Algorithm {
    match c {
        Cipher::Aes256Gcm16 => &aead::AES_256_GCM,
        Cipher::ChaCha20Poly1305 => &aead::CHACHA20_POLY1305,
    }
}

impl SkCipher {
    /// Prepares SK_ei or SK_er (36 octets: key then salt) for `cipher`.
    ///
    /// # Errors
    /// [`KeyLenError`] for any other length.
    pub fn new(cipher: Cipher, sk_e: &[u8]) -> Result<SkCipher, KeyLenError> {
        if sk_e.len() != KEY_LEN + SALT_LEN {
            return Err(KeyLenError);
        }
        let key = UnboundKey::new(algorithm(cipher), &sk_e[..KEY_LEN]).map_err(|_| KeyLenError)?;
        let mut salt = Zeroizing::new([0u8; SALT_LEN]);
        salt.copy_from_slice(&sk_e[KEY_LEN..]);
        Ok(SkCipher {
            cipher,
            key: LessSafeKey::new(key),
            salt,
            next_iv: 1,
        })
    }

    /// The cipher.
    pub fn cipher(&self) -> Cipher {
        self.cipher
    }

    fn nonce(&self, iv: &[u8; IV_LEN]) -> Nonce {
        let mut n = [0u8; SALT_LEN + IV_LEN];
        n[..SALT_LEN].copy_from_slice(&self.salt[..]);
        n[SALT_LEN..].copy_from_slice(iv);
        Nonce::assume_unique_for_key(n)
    }

    /// Builds a whole message: `header` (its Next Payload and Length are set here), an SK
    /// payload holding `payloads`, encrypted with the next IV.
    pub fn seal(&mut self, header: &Header, payloads: &[Payload]) -> Vec<u8> {
        let (first, inner) = encode_payloads(payloads);
        let sk_len = GENERIC_LEN + IV_LEN + inner.len() + 1 + ICV_LEN;
        let total = HEADER_LEN + sk_len;
        let mut h = *header;
        h.next_payload = payload_type::SK;
        h.length = total as u32;
        let mut out = Vec::with_capacity(total);
        h.encode(&mut out);
        out.push(first);
        out.push(0);
        out.extend_from_slice(&(sk_len.min(usize::from(u16::MAX)) as u16).to_be_bytes());
        let iv = self.next_iv.to_be_bytes();
        self.next_iv = self.next_iv.wrapping_add(1);
        out.extend_from_slice(&iv);
        let ct_start = out.len();
        out.extend_from_slice(&inner);
        out.push(0); // Pad Length
        let (head, plaintext) = out.split_at_mut(ct_start);
        let aad = &head[..HEADER_LEN + GENERIC_LEN];
        let tag = self
            .key
            .seal_in_place_separate_tag(self.nonce(&iv), Aad::from(aad), plaintext)
            // ring refuses only inputs of many GiB; a message is at most 64 KiB.
            .map(|t| t.as_ref().to_vec())
            .unwrap_or_else(|_| vec![0; ICV_LEN]);
        out.extend_from_slice(&tag);
        debug_assert!(out.len() <= MAX_MESSAGE || payloads.len() > 1000);
        out
    }

    /// Verifies and decrypts the SK payload whose generic header is at `msg[sk_at..]` (it runs
    /// to the end of `msg`). Returns the inner payload chain without padding.
    ///
    /// # Errors
    /// See [`SkError`].
    ///
    /// # Panics
    /// Never.
    pub fn open(&self, msg: &[u8], sk_at: usize) -> Result<Vec<u8>, SkError> {
        let iv_at = sk_at.checked_add(GENERIC_LEN).ok_or(SkError::TooShort)?;
        let ct_at = iv_at + IV_LEN;
        if msg.len() < ct_at + 1 + ICV_LEN {
            return Err(SkError::TooShort);
        }
        let mut iv = [0u8; IV_LEN];
        iv.copy_from_slice(&msg[iv_at..ct_at]);
        let mut sealed = msg[ct_at..].to_vec();
        let plain = self
            .key
            .open_in_place(self.nonce(&iv), Aad::from(&msg[..iv_at]), &mut sealed)
            .map_err(|_| SkError::AuthFailed)?;
        let [.., pad_len] = *plain else {
            return Err(SkError::TooShort);
        };
        let end = plain
            .len()
            .checked_sub(1 + usize::from(pad_len))
            .ok_or(SkError::BadPadding)?;
        sealed.truncate(end);
        Ok(sealed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ike::message::{
        decode, decode_payloads, exchange, Body, Notify, FLAG_INITIATOR, VERSION,
    };

    fn header() -> Header {
        Header {
            spi_i: 0x1111,
            spi_r: 0x2222,
            next_payload: 0,
            version: VERSION,
            exchange: exchange::INFORMATIONAL,
            flags: FLAG_INITIATOR,
            message_id: 7,
            length: 0,
        }
    }

    #[test]
    fn seal_open_round_trip_and_tamper() {
        for cipher in Cipher::ALL {
            let key: Vec<u8> = (0..36).collect();
            let mut tx = SkCipher::new(cipher, &key).unwrap();
            let rx = SkCipher::new(cipher, &key).unwrap();
            let payloads = vec![Payload::Notify(Notify::new(16384, vec![]))];
            let msg = tx.seal(&header(), &payloads);
            let (h, body) = decode(&msg).unwrap();
            assert_eq!(h.message_id, 7);
            let Body::Encrypted {
                first_inner,
                sk_at,
                outer,
            } = body
            else {
                panic!("not encrypted")
            };
            assert!(outer.is_empty());
            assert_eq!(sk_at, HEADER_LEN);
            let inner = rx.open(&msg, sk_at).unwrap();
            assert_eq!(decode_payloads(first_inner, &inner).unwrap(), payloads);
            // The IV is a counter: the next message uses another one.
            let msg2 = tx.seal(&header(), &payloads);
            assert_ne!(msg[32..40], msg2[32..40]);
            // Any flipped bit, including in the header (AAD), fails authentication.
            for i in [0, 19, 31, 35, msg.len() - 1] {
                let mut bad = msg.clone();
                bad[i] ^= 1;
                assert_eq!(rx.open(&bad, sk_at), Err(SkError::AuthFailed), "octet {i}");
            }
            assert_eq!(rx.open(&msg[..40], sk_at), Err(SkError::TooShort));
            assert_eq!(rx.open(&msg, usize::MAX), Err(SkError::TooShort));
            assert!(!format!("{tx:?}").contains("salt"));
        }
        assert!(SkCipher::new(Cipher::Aes256Gcm16, &[0; 32]).is_err());
    }
}
