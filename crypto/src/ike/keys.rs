//! IKEv2 key derivation with PRF_HMAC_SHA2_256.
//!
//! Implements RFC 7296 section 2.13 (prf+), 2.14 (SKEYSEED and the SK_* keys of an IKE SA),
//! 2.17 (KEYMAT of child SAs, with and without PFS), 2.18 (SKEYSEED of a rekeyed IKE SA) and
//! 2.15 (the AUTH payload of a pre-shared key: `prf(prf(Shared Secret, "Key Pad for IKEv2"),
//! <SignedOctets>)`), with the key sizes of RFC 5282 section 7.1 and RFC 7634 section 4 for the
//! AEAD ciphers: 32 octets of key and 4 of salt per direction, and no SK_a keys.
//!
//! Every secret is held in zeroizing memory and redacted from `Debug`. Deliberately left out:
//! PRFs other than HMAC-SHA-256, integrity keys, and PPK (RFC 8784).

use std::fmt;

use ring::hmac;
use zeroize::Zeroizing;

use crate::esp::KEYMAT_LEN;

/// The output (and preferred key) length of PRF_HMAC_SHA2_256.
pub const PRF_LEN: usize = 32;
/// SK_ei / SK_er length for braid's AEAD ciphers: a 32-octet key and a 4-octet salt.
pub const SK_E_LEN: usize = 36;

/// A secret byte string: zeroized on drop, never shown by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Takes ownership of `bytes`.
    pub fn new(bytes: Vec<u8>) -> Secret {
        Secret(Zeroizing::new(bytes))
    }

    /// The secret octets.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The length in octets.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the secret is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} octets, redacted)", self.0.len())
    }
}

/// `prf(key, data[0] | data[1] | ...)` with HMAC-SHA-256 (RFC 2104, RFC 4868).
pub fn prf(key: &[u8], data: &[&[u8]]) -> Zeroizing<[u8; PRF_LEN]> {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut ctx = hmac::Context::with_key(&key);
    for d in data {
        ctx.update(d);
    }
    let tag = ctx.sign();
    let mut out = Zeroizing::new([0u8; PRF_LEN]);
    out.copy_from_slice(tag.as_ref());
    out
}

/// `prf+(key, seed)` truncated to `len` octets (RFC 7296 section 2.13): T1 = prf(K, S | 0x01),
/// Tn = prf(K, Tn-1 | S | n). Returns `None` past 255 iterations (8160 octets), which the RFC
/// forbids.
pub fn prf_plus(key: &[u8], seed: &[&[u8]], len: usize) -> Option<Secret> {
    if len > 255 * PRF_LEN {
        return None;
    }
    let mut out = Zeroizing::new(Vec::with_capacity(len + PRF_LEN));
    let mut t = Zeroizing::new([0u8; PRF_LEN]);
    let mut n: u8 = 1;
    while out.len() < len {
        let prev: &[u8] = if n == 1 { &[] } else { &t[..] };
        let mut parts: Vec<&[u8]> = Vec::with_capacity(seed.len() + 2);
        parts.push(prev);
        parts.extend_from_slice(seed);
        let counter = [n];
        parts.push(&counter);
        let next = prf(key, &parts);
        *t = *next;
        out.extend_from_slice(&t[..]);
        n = n.wrapping_add(1);
    }
    out.truncate(len);
    Some(Secret(out))
}

/// SKEYSEED = prf(Ni | Nr, g^ir) (RFC 7296 section 2.14).
pub fn skeyseed(ni: &[u8], nr: &[u8], g_ir: &[u8]) -> Secret {
    let mut key = Zeroizing::new(Vec::with_capacity(ni.len() + nr.len()));
    key.extend_from_slice(ni);
    key.extend_from_slice(nr);
    Secret::new(prf(&key, &[g_ir]).to_vec())
}

/// SKEYSEED of a new IKE SA created by rekeying: prf(SK_d (old), g^ir (new) | Ni | Nr)
/// (RFC 7296 section 2.18).
pub fn skeyseed_rekey(old_sk_d: &[u8], g_ir: &[u8], ni: &[u8], nr: &[u8]) -> Secret {
    Secret::new(prf(old_sk_d, &[g_ir, ni, nr]).to_vec())
}

/// The keys of an IKE SA: {SK_d | SK_ai | SK_ar | SK_ei | SK_er | SK_pi | SK_pr} =
/// prf+(SKEYSEED, Ni | Nr | SPIi | SPIr), with empty SK_a keys (AEAD).
#[derive(Clone)]
pub struct IkeSaKeys {
    /// SK_d: derives child SA keys and the next SKEYSEED.
    pub sk_d: Secret,
    /// SK_ei: protects messages from the original initiator (key || salt).
    pub sk_ei: Secret,
    /// SK_er: protects messages from the original responder.
    pub sk_er: Secret,
    /// SK_pi: MACs the initiator's ID into its AUTH.
    pub sk_pi: Secret,
    /// SK_pr: MACs the responder's ID into its AUTH.
    pub sk_pr: Secret,
}

impl fmt::Debug for IkeSaKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("IkeSaKeys(redacted)")
    }
}

impl IkeSaKeys {
    /// Derives the keys from SKEYSEED (RFC 7296 section 2.14).
    pub fn derive(skeyseed: &Secret, ni: &[u8], nr: &[u8], spi_i: u64, spi_r: u64) -> IkeSaKeys {
        let total = PRF_LEN + 2 * SK_E_LEN + 2 * PRF_LEN;
        let km = prf_plus(
            skeyseed.as_bytes(),
            &[ni, nr, &spi_i.to_be_bytes(), &spi_r.to_be_bytes()],
            total,
        )
        .unwrap_or_else(|| Secret::new(vec![0; total])); // total is far below the limit
        let b = km.as_bytes();
        let take = |at: usize, len: usize| Secret::new(b[at..at + len].to_vec());
        IkeSaKeys {
            sk_d: take(0, PRF_LEN),
            sk_ei: take(PRF_LEN, SK_E_LEN),
            sk_er: take(PRF_LEN + SK_E_LEN, SK_E_LEN),
            sk_pi: take(PRF_LEN + 2 * SK_E_LEN, PRF_LEN),
            sk_pr: take(2 * PRF_LEN + 2 * SK_E_LEN, PRF_LEN),
        }
    }
}

/// The keying material of one child SA in one direction: 32 octets of key then 4 of salt,
/// ready for [`crate::esp::SaKey::new`]. Zeroized on drop; `Debug` is redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct Keymat(Zeroizing<[u8; KEYMAT_LEN]>);

impl Keymat {
    /// The key || salt octets.
    pub fn as_bytes(&self) -> &[u8; KEYMAT_LEN] {
        &self.0
    }

    fn from_slice(b: &[u8]) -> Keymat {
        let mut k = Zeroizing::new([0u8; KEYMAT_LEN]);
        k.copy_from_slice(b);
        Keymat(k)
    }
}

impl fmt::Debug for Keymat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keymat(redacted)")
    }
}

/// KEYMAT of a child SA (RFC 7296 section 2.17): prf+(SK_d, [g^ir (new) |] Ni | Nr), where Ni
/// and Nr are the nonces of the exchange that created the SA. Returns (initiator-to-responder,
/// responder-to-initiator), "initiator" meaning the initiator of that exchange.
pub fn child_keymat(sk_d: &[u8], g_ir: Option<&[u8]>, ni: &[u8], nr: &[u8]) -> (Keymat, Keymat) {
    let seed: Vec<&[u8]> = g_ir.into_iter().chain([ni, nr]).collect();
    let km = prf_plus(sk_d, &seed, 2 * KEYMAT_LEN)
        .unwrap_or_else(|| Secret::new(vec![0; 2 * KEYMAT_LEN])); // 72 octets: never refused
    let b = km.as_bytes();
    (
        Keymat::from_slice(&b[..KEYMAT_LEN]),
        Keymat::from_slice(&b[KEYMAT_LEN..]),
    )
}

/// The key pad of RFC 7296 section 2.15.
pub const KEY_PAD: &[u8] = b"Key Pad for IKEv2";

/// The AUTH data of a pre-shared key (RFC 7296 section 2.15): prf(prf(psk, "Key Pad for
/// IKEv2"), RealMessage | Nonce | prf(SK_p, IDpayload body)).
pub fn psk_auth(
    psk: &[u8],
    real_message: &[u8],
    nonce: &[u8],
    sk_p: &[u8],
    id_body: &[u8],
) -> Zeroizing<[u8; PRF_LEN]> {
    let maced_id = prf(sk_p, &[id_body]);
    let key = prf(psk, &[KEY_PAD]);
    prf(&key[..], &[real_message, nonce, &maced_id[..]])
}

/// Constant-time comparison of an AUTH value.
pub fn auth_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        digits
            .chunks(2)
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
            .collect()
    }

    // RFC 4231 section 4.2 (test case 1) and 4.3 (test case 2): HMAC-SHA-256.
    #[test]
    fn hmac_sha256_rfc4231() {
        assert_eq!(
            prf(&[0x0b; 20], &[b"Hi There"])[..],
            hex("b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7")[..]
        );
        assert_eq!(
            prf(b"Jefe", &[b"what do ya want ", b"for nothing?"])[..],
            hex("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843")[..]
        );
        // Test case 6: a key longer than the block size is hashed first.
        assert_eq!(
            prf(
                &[0xaa; 131],
                &[b"Test Using Larger Than Block-Size Key - Hash Key First"]
            )[..],
            hex("60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54")[..]
        );
    }

    // NIST CAVS 12.0 IKEv2 KDF sample vectors for SHA-256 (Ni and Nr of 64 bits, g^ir of 256
    // bits, DKM of 1056 bits), as carried by NSS's ike-sha256-vectors (NIST samples 6-10).
    const NI: &str = "3f302be1abcb28e1";
    const NR: &str = "8c332ee006064c9b";
    const SPI_I: u64 = 0x40da_c39e_1e1a_8640;
    const SPI_R: u64 = 0x8619_a1cf_9a6e_4c07;
    const G_IR: &str = "0f4d257d7a58fc4545c7d7a88119eee5d5c9690c5b4c989171d3abbfd99d1d29";
    const SKEYSEED: &str = "5f00d1bd2c58ec224b1e6b71fa0f19a1faa7a193952c444411b47c1a9d8ba6fe";
    const DKM: &str = "0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ece98aca531\
        188d16041b3bb936d2dbb3b4993a6e768a809160de45d0283f273a6cdf6854379e31be72b\
        8d3d1fa990cf9c5b015ca9f918a7df6253c958114a09d4e1c19bdcd4db14b29d98db1a74a\
        d405c588662c14a04d0d36aa4ab55e90f8986d12d4aad";

    #[test]
    fn skeyseed_and_prf_plus_nist_cavs() {
        let s = skeyseed(&hex(NI), &hex(NR), &hex(G_IR));
        assert_eq!(s.as_bytes(), hex(SKEYSEED));
        let dkm = prf_plus(
            s.as_bytes(),
            &[
                &hex(NI),
                &hex(NR),
                &SPI_I.to_be_bytes(),
                &SPI_R.to_be_bytes(),
            ],
            132,
        )
        .unwrap();
        assert_eq!(dkm.as_bytes(), hex(DKM));
        // Shorter outputs are prefixes (NIST samples 9 and 10: 32 and 15 octets).
        let short = prf_plus(
            s.as_bytes(),
            &[
                &hex(NI),
                &hex(NR),
                &SPI_I.to_be_bytes(),
                &SPI_R.to_be_bytes(),
            ],
            15,
        )
        .unwrap();
        assert_eq!(short.as_bytes(), &hex(DKM)[..15]);
        // The SK_* split takes SK_d first: the first 32 octets of the DKM.
        let keys = IkeSaKeys::derive(&s, &hex(NI), &hex(NR), SPI_I, SPI_R);
        assert_eq!(keys.sk_d.as_bytes(), &hex(DKM)[..32]);
        assert_eq!(keys.sk_ei.as_bytes(), &hex(DKM)[32..68]);
        assert_eq!(keys.sk_er.as_bytes(), &hex(DKM)[68..104]);
        assert_eq!(&keys.sk_pi.as_bytes()[..28], &hex(DKM)[104..132]);
    }

    // NIST sample 7: SKEYSEED of a rekeyed IKE SA, prf(SK_d, g^ir (new) | Ni | Nr).
    #[test]
    fn rekey_skeyseed_nist_cavs() {
        let sk_d = hex("0b137d669b0947d7d026d593f0305ad401ff0c471357d695778a9c7f4b4869ec");
        let g_ir_new = hex("25f3b12d6f282739256e39bf54eda53b60ffcf379bb7bcc90c27b4c4c578616c");
        let s = skeyseed_rekey(&sk_d, &g_ir_new, &hex(NI), &hex(NR));
        assert_eq!(
            s.as_bytes(),
            hex("2d63f6debc92048b4fef3889c4c99ca67d6496e0fac14a2bca9a2d6566ff2398")
        );
    }

    #[test]
    fn prf_plus_iterates_as_specified() {
        // T1 = prf(K, S | 0x01), T2 = prf(K, T1 | S | 0x02), computed independently.
        let k = b"key";
        let s = b"seed";
        let t1 = prf(k, &[s, &[1]]);
        let t2 = prf(k, &[&t1[..], s, &[2]]);
        let out = prf_plus(k, &[s], 40).unwrap();
        assert_eq!(&out.as_bytes()[..32], &t1[..]);
        assert_eq!(&out.as_bytes()[32..], &t2[..8]);
        assert!(prf_plus(k, &[s], 255 * 32).is_some());
        assert!(prf_plus(k, &[s], 255 * 32 + 1).is_none());
    }

    #[test]
    fn child_keymat_directions_and_pfs() {
        let sk_d = [7u8; 32];
        let (i2r, r2i) = child_keymat(&sk_d, None, b"ni", b"nr");
        let all = prf_plus(&sk_d, &[b"ni", b"nr"], 72).unwrap();
        assert_eq!(&i2r.as_bytes()[..], &all.as_bytes()[..36]);
        assert_eq!(&r2i.as_bytes()[..], &all.as_bytes()[36..]);
        let (p, _) = child_keymat(&sk_d, Some(b"gir"), b"ni", b"nr");
        let all = prf_plus(&sk_d, &[b"gir", b"ni", b"nr"], 72).unwrap();
        assert_eq!(&p.as_bytes()[..], &all.as_bytes()[..36]);
        assert_eq!(format!("{p:?}"), "Keymat(redacted)");
    }

    #[test]
    fn psk_auth_matches_definition() {
        let psk = b"secret";
        let got = psk_auth(psk, b"msg", b"nonce", b"skp", b"\x01\0\0\0\xc0\0\x02\x01");
        let inner = prf(psk, &[b"Key Pad for IKEv2"]);
        let maced = prf(b"skp", &[b"\x01\0\0\0\xc0\0\x02\x01"]);
        let want = prf(&inner[..], &[b"msgnonce", &maced[..]]);
        assert_eq!(got, want);
        assert!(auth_equal(&got[..], &want[..]));
        assert!(!auth_equal(&got[..], &want[..31]));
        assert_eq!(
            format!("{:?}", Secret::new(vec![1, 2, 3])),
            "Secret(3 octets, redacted)"
        );
    }
}
