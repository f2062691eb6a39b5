//! Diffie-Hellman for the KE payload: group 19 (ECP-256, RFC 5903) and group 31 (Curve25519,
//! RFC 8031), both through ring's `agreement` module.
//!
//! Encodings: for ECP-256 the Key Exchange Data is x || y, 64 octets, without SEC1's 0x04
//! prefix, and the shared secret is the x coordinate (RFC 5903 sections 7 and 9); for
//! Curve25519 both are 32-octet little-endian u-coordinates and an all-zero shared secret is
//! refused (RFC 8031 sections 2 and 2.3, which ring checks). A public value of the wrong length
//! or not on the curve is an error that the session turns into INVALID_SYNTAX.
//!
//! Private keys are derived from 32 octets of the session's DRBG: ring takes them through its
//! fixed-output `SecureRandom` test helper (ring seals the trait, so there is no other way to
//! give it chosen randomness). The seed copy is zeroized here; ring's own copy of the scalar
//! lives in its `EphemeralPrivateKey`, which ring does not zeroize and
//! `#![forbid(unsafe_code)]` leaves no way to clear. Each private key is used at most once.
//! Deliberately left out: MODP groups and other curves.

use ring::agreement::{self, EphemeralPrivateKey, UnparsedPublicKey};
use zeroize::Zeroizing;

use crate::ike::keys::Secret;
use crate::ike::proposal::DhGroup;

/// A Diffie-Hellman failure.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum DhError {
    /// The peer's public value has the wrong length or is not a valid point.
    BadPublicValue,
    /// The seed is not a valid private key (only ECP-256 can refuse, with probability
    /// about 2^-32); draw another.
    BadSeed,
}

impl std::fmt::Display for DhError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DhError::BadPublicValue => "invalid Diffie-Hellman public value",
            DhError::BadSeed => "seed is not a valid private key",
        })
    }
}

impl std::error::Error for DhError {}

/// An ephemeral private key and its public value (the KE payload data).
pub struct DhPrivate {
    group: DhGroup,
    key: EphemeralPrivateKey,
    public: Vec<u8>,
}

impl std::fmt::Debug for DhPrivate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DhPrivate")
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

fn algorithm(group: DhGroup) -> &'static agreement::Algorithm {
    match group {
        DhGroup::Ecp256 => &agreement::ECDH_P256,
        DhGroup::Curve25519 => &agreement::X25519,
    }
}

impl DhPrivate {
    /// The private key whose scalar (ECP-256, big-endian, must be in 1..n) or clamped seed
    /// (Curve25519) is `seed`.
    ///
    /// # Errors
    /// [`DhError::BadSeed`] for an ECP-256 seed outside the scalar range.
    pub fn from_seed(group: DhGroup, seed: &[u8; 32]) -> Result<DhPrivate, DhError> {
        let seed = Zeroizing::new(*seed);
        #[allow(deprecated)]
        let rng = ring::test::rand::FixedSliceRandom { bytes: &seed[..] };
        let key =
            EphemeralPrivateKey::generate(algorithm(group), &rng).map_err(|_| DhError::BadSeed)?;
        let public = key.compute_public_key().map_err(|_| DhError::BadSeed)?;
        let public = match group {
            // SEC1 uncompressed 0x04 || x || y  ->  x || y (RFC 5903 section 7).
            DhGroup::Ecp256 => public.as_ref().get(1..).unwrap_or_default().to_vec(),
            DhGroup::Curve25519 => public.as_ref().to_vec(),
        };
        Ok(DhPrivate { group, key, public })
    }

    /// The group.
    pub fn group(&self) -> DhGroup {
        self.group
    }

    /// The Key Exchange Data to send.
    pub fn public_value(&self) -> &[u8] {
        &self.public
    }

    /// The shared secret g^ir with the peer's Key Exchange Data; consumes the key.
    ///
    /// # Errors
    /// [`DhError::BadPublicValue`] for a value of the wrong length, off the curve, or giving
    /// an all-zero X25519 result.
    pub fn agree(self, peer: &[u8]) -> Result<Secret, DhError> {
        if peer.len() != self.group.public_len() {
            return Err(DhError::BadPublicValue);
        }
        let peer = match self.group {
            DhGroup::Ecp256 => {
                let mut p = Vec::with_capacity(65);
                p.push(0x04);
                p.extend_from_slice(peer);
                p
            }
            DhGroup::Curve25519 => peer.to_vec(),
        };
        agreement::agree_ephemeral(
            self.key,
            &UnparsedPublicKey::new(algorithm(self.group), &peer),
            |s| Secret::new(s.to_vec()),
        )
        .map_err(|_| DhError::BadPublicValue)
    }
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

    fn seed(s: &str) -> [u8; 32] {
        hex(s).try_into().unwrap()
    }

    // RFC 5903 section 8.1: the 256-bit random ECP group.
    #[test]
    fn ecp256_rfc5903() {
        let i = DhPrivate::from_seed(
            DhGroup::Ecp256,
            &seed("C88F01F510D9AC3F70A292DAA2316DE544E9AAB8AFE84049C62A9C57862D1433"),
        )
        .unwrap();
        let r = DhPrivate::from_seed(
            DhGroup::Ecp256,
            &seed("C6EF9C5D78AE012A011164ACB397CE2088685D8F06BF9BE0B283AB46476BEE53"),
        )
        .unwrap();
        let gi = hex(
            "DAD0B65394221CF9B051E1FECA5787D098DFE637FC90B9EF945D0C3772581180
             5271A0461CDB8252D61F1C456FA3E59AB1F45B33ACCF5F58389E0577B8990BB3",
        );
        let gr = hex(
            "D12DFB5289C8D4F81208B70270398C342296970A0BCCB74C736FC7554494BF63
             56FBF3CA366CC23E8157854C13C58D6AAC23F046ADA30F8353E74F33039872AB",
        );
        assert_eq!(i.public_value(), gi);
        assert_eq!(r.public_value(), gr);
        let girx = hex("D6840F6B42F6EDAFD13116E0E12565202FEF8E9ECE7DCE03812464D04B9442DE");
        assert_eq!(i.agree(&gr).unwrap().as_bytes(), girx);
        assert_eq!(r.agree(&gi).unwrap().as_bytes(), girx);
    }

    // RFC 7748 section 6.1: X25519 Diffie-Hellman.
    #[test]
    fn x25519_rfc7748() {
        let a = DhPrivate::from_seed(
            DhGroup::Curve25519,
            &seed("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a"),
        )
        .unwrap();
        let b = DhPrivate::from_seed(
            DhGroup::Curve25519,
            &seed("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb"),
        )
        .unwrap();
        let pa = hex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a");
        let pb = hex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f");
        assert_eq!(a.public_value(), pa);
        assert_eq!(b.public_value(), pb);
        let k = hex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742");
        assert_eq!(a.agree(&pb).unwrap().as_bytes(), k);
        assert_eq!(b.agree(&pa).unwrap().as_bytes(), k);
    }

    #[test]
    fn bad_public_values_are_refused() {
        let s = [9u8; 32];
        let k = || DhPrivate::from_seed(DhGroup::Ecp256, &s).unwrap();
        assert_eq!(k().agree(&[0; 63]).unwrap_err(), DhError::BadPublicValue);
        assert_eq!(
            k().agree(&[1; 64]).unwrap_err(),
            DhError::BadPublicValue,
            "not on the curve"
        );
        let x = || DhPrivate::from_seed(DhGroup::Curve25519, &s).unwrap();
        assert_eq!(
            x().agree(&[0; 32]).unwrap_err(),
            DhError::BadPublicValue,
            "all-zero result"
        );
        assert_eq!(x().agree(&[0; 64]).unwrap_err(), DhError::BadPublicValue);
        // The ECP-256 order n is not a valid scalar.
        let n = seed("FFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551");
        assert_eq!(
            DhPrivate::from_seed(DhGroup::Ecp256, &n).unwrap_err(),
            DhError::BadSeed
        );
        assert!(!format!("{:?}", k()).contains("key:"));
    }
}
