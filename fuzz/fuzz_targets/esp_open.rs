//! `InboundSa::open` (and `OutboundSa::seal`) on arbitrary input: nothing may panic, and
//! every accepted packet must be consistent.
//!
//! The first input octet selects the setup; the rest depends on the mode:
//!
//! - bit 0: cipher (0 AES-256-GCM, 1 ChaCha20-Poly1305); bit 1: ESN;
//!   bits 2-3: replay window 0, 64, 1024 or 65536 packets; bits 4-5: mode.
//! - mode 0 and 1, packets: a sequence of up to 16 packets, each a big-endian u16 length and
//!   that many octets, opened in order by one SA (so the replay window sees a history). The
//!   fixed keys and SPIs are those of the published vectors (RFC 7634 Appendix A for
//!   ChaCha20-Poly1305, draft-mcgrew-gcm-test-01 case 3 for AES-256-GCM), so the seed
//!   corpus in `seeds/esp_open` holds authentic packets.
//! - mode 2, round trip: headroom (u8), tailroom (u8), next header (bit 0 of one octet),
//!   then the inner packet. `seal` must refuse exactly when the buffer is too small, and
//!   what it seals must open to the same bytes.
//! - mode 3, authentic plaintext (needs `--cfg fuzzing`, which `cargo fuzz` sets; otherwise
//!   treated as mode 0): the rest is an ESP payload including its trailer, sealed as is with
//!   the test hook `OutboundSa::seal_raw`, so `open`'s post-authentication checks (pad
//!   length, padding octets, next header) see arbitrary input; the result is compared
//!   with the rules of RFC 4303 section 2.4 restated here.

#![no_main]

use braid_crypto::{
    sealed_len, Cipher, InboundSa, NextHeader, OpenError, OutboundSa, SaKey, Spi, HEADROOM,
    MIN_ESP_LEN,
};
use libfuzzer_sys::fuzz_target;

/// RFC 7634 Appendix A.
const CHACHA_KEYMAT: [u8; 36] = [
    0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8a, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f,
    0x90, 0x91, 0x92, 0x93, 0x94, 0x95, 0x96, 0x97, 0x98, 0x99, 0x9a, 0x9b, 0x9c, 0x9d, 0x9e, 0x9f,
    0xa0, 0xa1, 0xa2, 0xa3,
];
const CHACHA_SPI: Spi = Spi(0x0102_0304);
/// draft-mcgrew-gcm-test-01 case 3.
const AES_KEYMAT: [u8; 36] = [
    0xab, 0xbc, 0xcd, 0xde, 0xf0, 0x01, 0x12, 0x23, 0x34, 0x45, 0x56, 0x67, 0x78, 0x89, 0x9a, 0xab,
    0xab, 0xbc, 0xcd, 0xde, 0xf0, 0x01, 0x12, 0x23, 0x34, 0x45, 0x56, 0x67, 0x78, 0x89, 0x9a, 0xab,
    0x11, 0x22, 0x33, 0x44,
];
const AES_SPI: Spi = Spi(0x4a2c_bfe3);

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (cipher, keymat, spi) = if sel & 1 == 0 {
        (Cipher::Aes256Gcm16, &AES_KEYMAT, AES_SPI)
    } else {
        (Cipher::ChaCha20Poly1305, &CHACHA_KEYMAT, CHACHA_SPI)
    };
    let esn = sel & 2 != 0;
    let window = [0, 64, 1024, 65536][usize::from((sel >> 2) & 3)];
    let key = SaKey::new(cipher, keymat).expect("36-octet KEYMAT");
    let mut inbound = InboundSa::new(spi, &key, esn, window);
    match (sel >> 4) & 3 {
        2 => round_trip(OutboundSa::new(spi, &key, esn), inbound, rest),
        #[cfg(fuzzing)]
        3 => authentic_plaintext(OutboundSa::new(spi, &key, esn), inbound, rest),
        _ => packets(&mut inbound, rest),
    }
});

fn packets(inbound: &mut InboundSa, mut rest: &[u8]) {
    let mut buf = Vec::new();
    for _ in 0..16 {
        let [hi, lo, tail @ ..] = rest else {
            return;
        };
        let len = usize::from(u16::from_be_bytes([*hi, *lo])).min(tail.len());
        let (packet, tail) = tail.split_at(len);
        rest = tail;
        buf.clear();
        buf.extend_from_slice(packet);
        let before = inbound.highest_seq();
        match inbound.open(&mut buf) {
            Ok(opened) => {
                assert!(buf.len() >= MIN_ESP_LEN);
                assert_eq!(opened.inner.start, HEADROOM);
                assert!(opened.inner.end <= buf.len() - 2 - 16);
                assert!(inbound.highest_seq() >= opened.seq);
                let window = u64::from(inbound.replay_window());
                if window > 0 {
                    // Accepted means new, or inside the window below the previous highest.
                    assert_ne!(opened.seq, 0);
                    assert!(opened.seq > before || before - opened.seq < window);
                }
            }
            Err(
                OpenError::TooShort
                | OpenError::SpiMismatch
                | OpenError::Replay
                | OpenError::AuthFailed,
            ) => {
                // Refused before or at authentication: the window must not have moved.
                assert_eq!(inbound.highest_seq(), before);
            }
            Err(_) => {}
        }
    }
}

fn round_trip(outbound: OutboundSa, mut inbound: InboundSa, rest: &[u8]) {
    let [headroom, tailroom, flags, inner @ ..] = rest else {
        return;
    };
    let (headroom, tailroom) = (usize::from(*headroom), usize::from(*tailroom));
    let next = if flags & 1 == 0 {
        NextHeader::Ipv4
    } else {
        NextHeader::Ipv6
    };
    let mut buf = vec![0u8; headroom + inner.len() + tailroom];
    buf[headroom..headroom + inner.len()].copy_from_slice(inner);
    let needed_tail = sealed_len(inner.len()) - HEADROOM - inner.len();
    let result = outbound.seal(&mut buf, headroom..headroom + inner.len(), next);
    if headroom < HEADROOM || tailroom < needed_tail {
        assert!(result.is_err());
        return;
    }
    let esp = result.expect("enough room");
    assert_eq!(esp.start, headroom - HEADROOM);
    assert_eq!(esp.len(), sealed_len(inner.len()));
    let packet = &mut buf[esp];
    let opened = inbound.open(packet).expect("own packet opens");
    assert_eq!(opened.seq, 1);
    assert_eq!(opened.next_header, next);
    assert_eq!(&packet[opened.inner], inner);
}

#[cfg(fuzzing)]
fn authentic_plaintext(outbound: OutboundSa, mut inbound: InboundSa, plaintext: &[u8]) {
    let mut buf = vec![0u8; HEADROOM + plaintext.len() + 16];
    buf[HEADROOM..HEADROOM + plaintext.len()].copy_from_slice(plaintext);
    let esp = outbound
        .seal_raw(&mut buf, HEADROOM..HEADROOM + plaintext.len(), None)
        .expect("room is exact");
    let got = inbound.open(&mut buf[esp]);

    // RFC 4303 section 2.4, restated.
    let len = plaintext.len();
    let expected: Result<(usize, NextHeader), OpenError> = if len < 4 || len % 4 != 0 {
        Err(OpenError::TooShort)
    } else {
        let pad_len = usize::from(plaintext[len - 2]);
        let next_header = plaintext[len - 1];
        if pad_len + 2 > len {
            Err(OpenError::BadPadding)
        } else if (0..pad_len).any(|i| usize::from(plaintext[len - 2 - pad_len + i]) != i + 1) {
            Err(OpenError::BadPadding)
        } else {
            match next_header {
                4 => Ok((len - 2 - pad_len, NextHeader::Ipv4)),
                41 => Ok((len - 2 - pad_len, NextHeader::Ipv6)),
                59 => Err(OpenError::Dummy),
                _ => Err(OpenError::BadNextHeader),
            }
        }
    };
    match (got, expected) {
        (Ok(opened), Ok((inner_len, next_header))) => {
            assert_eq!(opened.inner, HEADROOM..HEADROOM + inner_len);
            assert_eq!(opened.next_header, next_header);
            assert_eq!(&buf[opened.inner], &plaintext[..inner_len]);
        }
        (got, expected) => assert_eq!(got.map(|_| ()), expected.map(|_| ())),
    }
}
