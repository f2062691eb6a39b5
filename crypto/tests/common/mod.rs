//! Helpers shared by the integration tests.

#![allow(dead_code)]

use braid_crypto::{
    Cipher, InboundSa, NextHeader, OutboundSa, SaKey, Spi, HEADROOM, KEYMAT_LEN, MAX_TAILROOM,
};

/// SplitMix64: a small deterministic PRNG, so failures reproduce.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next_u64() as u8;
        }
    }
}

pub const SPI: Spi = Spi(0x1234_5678);

pub fn keymat(seed: u8) -> [u8; KEYMAT_LEN] {
    let mut k = [0u8; KEYMAT_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = seed.wrapping_mul(31).wrapping_add(i as u8);
    }
    k
}

/// A matching outbound/inbound pair.
pub fn pair(cipher: Cipher, esn: bool, window: u32) -> (OutboundSa, InboundSa) {
    let key = SaKey::new(cipher, &keymat(7)).unwrap();
    (
        OutboundSa::new(SPI, &key, esn),
        InboundSa::new(SPI, &key, esn, window),
    )
}

/// Seals `inner` and returns just the ESP packet.
pub fn seal(sa: &mut OutboundSa, inner: &[u8], next: NextHeader) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + inner.len() + MAX_TAILROOM];
    buf[HEADROOM..HEADROOM + inner.len()].copy_from_slice(inner);
    let esp = sa
        .seal(&mut buf, HEADROOM..HEADROOM + inner.len(), next)
        .unwrap();
    buf[esp].to_vec()
}
