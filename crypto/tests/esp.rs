//! ESP SA behaviour through the public API: round trips, buffer handling, tampering,
//! truncation, the replay window as seen by `InboundSa`, and the size helpers.

mod common;

use braid_crypto::{
    max_inner_len, sealed_len, Cipher, InboundSa, KeyLenError, NextHeader, OpenError, OutboundSa,
    SaKey, SealError, Spi, UnknownCipher, ESP_HEADER_LEN, HEADROOM, ICV_LEN, IV_LEN, KEYMAT_LEN,
    MAX_TAILROOM, MIN_ESP_LEN,
};
use common::{keymat, pair, seal, Rng, SPI};

#[test]
fn round_trips_random_sizes() {
    let mut rng = Rng::new(0x4303);
    for cipher in Cipher::ALL {
        for esn in [false, true] {
            let (out, mut inb) = pair(cipher, esn, 1024);
            let mut total = 0u64;
            for i in 0..400u64 {
                // Always cover the edges, then random sizes.
                let len = match i {
                    0 => 1,
                    1 => 1500,
                    2..=5 => i as usize, // every residue mod 4
                    _ => rng.range(1, 1500) as usize,
                };
                let next = if rng.next_u64() % 2 == 0 {
                    NextHeader::Ipv4
                } else {
                    NextHeader::Ipv6
                };
                let mut inner = vec![0u8; len];
                rng.fill(&mut inner);
                // Random extra headroom in front and slack behind, as a pooled buffer has.
                let front = HEADROOM + rng.range(0, 40) as usize;
                let slack = rng.range(0, 40) as usize;
                let mut buf = vec![0xeeu8; front + len + MAX_TAILROOM + slack];
                buf[front..front + len].copy_from_slice(&inner);

                let esp = out.seal(&mut buf, front..front + len, next).unwrap();
                assert_eq!(esp.start, front - HEADROOM);
                assert_eq!(esp.len(), sealed_len(len));
                assert_eq!((esp.len() - HEADROOM - ICV_LEN) % 4, 0);
                let seq = i + 1;
                assert_eq!(out.last_seq(), seq);
                // Header: SPI, low 32 bits of the sequence number, IV = 64-bit seq.
                assert_eq!(buf[esp.start..esp.start + 4], SPI.0.to_be_bytes());
                assert_eq!(
                    buf[esp.start + 4..esp.start + 8],
                    (seq as u32).to_be_bytes()
                );
                assert_eq!(buf[esp.start + 8..esp.start + 16], seq.to_be_bytes());
                // Nothing outside the ESP packet was touched.
                assert!(buf[..esp.start].iter().all(|&b| b == 0xee));
                assert!(buf[esp.end..].iter().all(|&b| b == 0xee));
                if len >= 16 {
                    assert_ne!(buf[front..front + 16], inner[..16], "not encrypted");
                }

                let mut packet = buf[esp].to_vec();
                let opened = inb.open(&mut packet).unwrap();
                assert_eq!(opened.seq, seq);
                assert_eq!(opened.next_header, next);
                assert_eq!(opened.inner, HEADROOM..HEADROOM + len);
                assert_eq!(packet[opened.inner], inner[..]);
                total += len as u64;
            }
            assert_eq!(out.packets(), 400);
            assert_eq!(out.bytes(), total);
            assert_eq!(inb.packets(), 400);
            assert_eq!(inb.bytes(), total);
            assert_eq!(inb.highest_seq(), 400);
        }
    }
}

#[test]
fn padding_on_the_wire() {
    // Inner lengths 0..8 need 2, 1, 0, 3, 2, 1, 0, 3 padding octets; the peer decrypts in
    // place, so the trailer can be read after opening.
    for (len, pad) in [
        (0, 2),
        (1, 1),
        (2, 0),
        (3, 3),
        (4, 2),
        (5, 1),
        (6, 0),
        (7, 3),
    ] {
        assert_eq!(
            sealed_len(len),
            HEADROOM + len + pad + 2 + ICV_LEN,
            "len {len}"
        );
        let (mut out, mut inb) = pair(Cipher::ChaCha20Poly1305, false, 64);
        let mut packet = seal(&mut out, &vec![0xab; len], NextHeader::Ipv4);
        let opened = inb.open(&mut packet).unwrap();
        assert_eq!(opened.inner, HEADROOM..HEADROOM + len);
        // The decrypted trailer follows the inner packet in place.
        let trailer = &packet[HEADROOM + len..packet.len() - ICV_LEN];
        let mut want: Vec<u8> = (1..=pad as u8).collect();
        want.extend([pad as u8, 4]);
        assert_eq!(trailer, &want[..], "len {len}");
    }
}

#[test]
fn seal_buffer_errors() {
    for cipher in Cipher::ALL {
        let (out, mut inb) = pair(cipher, false, 64);
        let inner = [0x45u8; 41]; // 41 + 2 -> 44: one octet of padding
        let need = sealed_len(inner.len());
        let mut buf = vec![0u8; 64 + need];

        // Headroom: 15 octets is one short.
        assert_eq!(
            out.seal(&mut buf, 15..15 + inner.len(), NextHeader::Ipv4),
            Err(SealError::NoHeadroom)
        );
        assert_eq!(
            out.seal(&mut buf, 0..inner.len(), NextHeader::Ipv4),
            Err(SealError::NoHeadroom)
        );
        // Tailroom: the buffer ends one octet before the ICV would.
        let mut short = vec![0u8; need - 1];
        assert_eq!(
            out.seal(
                &mut short,
                HEADROOM..HEADROOM + inner.len(),
                NextHeader::Ipv4
            ),
            Err(SealError::NoTailroom)
        );
        assert!(short.iter().all(|&b| b == 0), "refused seal wrote nothing");
        // Ranges that are not inside the buffer (an inverted one on purpose).
        #[allow(clippy::reversed_empty_ranges)]
        let inverted = 20..10;
        assert_eq!(
            out.seal(&mut buf, inverted, NextHeader::Ipv4),
            Err(SealError::NoTailroom)
        );
        let len = buf.len();
        assert_eq!(
            out.seal(&mut buf, 20..len + 1, NextHeader::Ipv4),
            Err(SealError::NoTailroom)
        );
        assert_eq!(
            out.seal(&mut buf, 20..usize::MAX, NextHeader::Ipv4),
            Err(SealError::NoTailroom)
        );
        assert_eq!(
            out.seal(&mut [], 16..16, NextHeader::Ipv4),
            Err(SealError::NoTailroom)
        );
        // None of that used a sequence number.
        assert_eq!(out.last_seq(), 0);
        assert_eq!(out.packets(), 0);

        // Exactly enough room works, and is the first packet.
        let mut exact = vec![0u8; need];
        exact[HEADROOM..HEADROOM + inner.len()].copy_from_slice(&inner);
        let esp = out
            .seal(
                &mut exact,
                HEADROOM..HEADROOM + inner.len(),
                NextHeader::Ipv6,
            )
            .unwrap();
        assert_eq!(esp, 0..need);
        assert_eq!(out.last_seq(), 1);
        let opened = inb.open(&mut exact).unwrap();
        assert_eq!(opened.seq, 1);
        assert_eq!(exact[opened.inner], inner[..]);

        // An empty inner packet is the minimal ESP packet.
        let mut empty = vec![0u8; MIN_ESP_LEN];
        let esp = out
            .seal(&mut empty, HEADROOM..HEADROOM, NextHeader::Ipv4)
            .unwrap();
        assert_eq!(esp, 0..MIN_ESP_LEN);
        let opened = inb.open(&mut empty).unwrap();
        assert_eq!(opened.inner, HEADROOM..HEADROOM);
    }
}

/// One SA pair and a genuine packet with sequence number 1.
fn genuine(cipher: Cipher) -> (InboundSa, Vec<u8>, Vec<u8>) {
    let (mut out, inb) = pair(cipher, false, 64);
    let inner: Vec<u8> = (0..100u8).collect();
    let packet = seal(&mut out, &inner, NextHeader::Ipv4);
    (inb, packet, inner)
}

#[test]
fn tampering_with_any_octet() {
    for cipher in Cipher::ALL {
        let (mut inb, packet, inner) = genuine(cipher);
        let len = packet.len();
        for i in 0..len {
            for flip in [0x01u8, 0x80] {
                let mut p = packet.clone();
                p[i] ^= flip;
                let want = match i {
                    0..=3 => OpenError::SpiMismatch,
                    // Flipping the low bit of seq 1 gives seq 0: refused before the ICV check.
                    7 if flip == 0x01 => OpenError::Replay,
                    // Sequence number, IV, ciphertext, ICV: all authenticated.
                    _ => OpenError::AuthFailed,
                };
                assert_eq!(
                    inb.open(&mut p),
                    Err(want),
                    "{cipher}: octet {i} ^ {flip:#x}"
                );
            }
        }
        // None of the forgeries moved the window: the genuine packet still opens.
        assert_eq!(inb.highest_seq(), 0);
        let mut p = packet.clone();
        let opened = inb.open(&mut p).unwrap();
        assert_eq!(p[opened.inner], inner[..]);
    }
}

#[test]
fn truncated_and_extended_packets() {
    for cipher in Cipher::ALL {
        let (mut inb, packet, _) = genuine(cipher);
        for n in 0..packet.len() {
            let mut p = packet[..n].to_vec();
            let want = if n < MIN_ESP_LEN || (n - HEADROOM - ICV_LEN) % 4 != 0 {
                OpenError::TooShort
            } else {
                // Well-formed length, but the ICV is now other octets.
                OpenError::AuthFailed
            };
            assert_eq!(inb.open(&mut p), Err(want), "{cipher}: truncated to {n}");
        }
        for extra in 1..=8 {
            let mut p = packet.clone();
            p.extend(std::iter::repeat_n(0, extra));
            let want = if extra % 4 == 0 {
                OpenError::AuthFailed
            } else {
                OpenError::TooShort
            };
            assert_eq!(inb.open(&mut p), Err(want), "{cipher}: extended by {extra}");
        }
        // Shorter than the SPI itself.
        for n in 0..4 {
            assert_eq!(inb.open(&mut vec![0x12; n]), Err(OpenError::TooShort));
        }
        assert_eq!(inb.highest_seq(), 0);
        assert!(inb.open(&mut packet.clone()).is_ok());
    }
}

#[test]
fn wrong_key_spi_cipher_or_esn() {
    let inner = [0x45u8; 60];
    for cipher in Cipher::ALL {
        let key = SaKey::new(cipher, &keymat(7)).unwrap();
        let mut out = OutboundSa::new(SPI, &key, false);
        let packet = seal(&mut out, &inner, NextHeader::Ipv4);

        let other_key = SaKey::new(cipher, &keymat(8)).unwrap();
        let mut inb = InboundSa::new(SPI, &other_key, false, 64);
        assert_eq!(inb.open(&mut packet.clone()), Err(OpenError::AuthFailed));

        // Same key octets with the salt changed: the nonce differs.
        let mut salted = keymat(7);
        salted[KEYMAT_LEN - 1] ^= 1;
        let salted = SaKey::new(cipher, &salted).unwrap();
        let mut inb = InboundSa::new(SPI, &salted, false, 64);
        assert_eq!(inb.open(&mut packet.clone()), Err(OpenError::AuthFailed));

        let other_cipher = if cipher == Cipher::Aes256Gcm16 {
            Cipher::ChaCha20Poly1305
        } else {
            Cipher::Aes256Gcm16
        };
        let crossed = SaKey::new(other_cipher, &keymat(7)).unwrap();
        let mut inb = InboundSa::new(SPI, &crossed, false, 64);
        assert_eq!(inb.open(&mut packet.clone()), Err(OpenError::AuthFailed));

        let mut inb = InboundSa::new(SPI, &key, true, 64);
        assert_eq!(inb.open(&mut packet.clone()), Err(OpenError::AuthFailed));

        let mut inb = InboundSa::new(Spi(SPI.0 + 1), &key, false, 64);
        assert_eq!(inb.open(&mut packet.clone()), Err(OpenError::SpiMismatch));

        let mut inb = InboundSa::new(SPI, &key, false, 64);
        assert!(inb.open(&mut packet.clone()).is_ok());
    }
}

#[test]
fn forged_packet_does_not_move_the_window() {
    for cipher in Cipher::ALL {
        for esn in [false, true] {
            let (mut out, mut inb) = pair(cipher, esn, 64);
            let packets: Vec<Vec<u8>> = (1..=1000)
                .map(|i| seal(&mut out, &[i as u8; 40], NextHeader::Ipv4))
                .collect();
            assert!(inb.open(&mut packets[9].clone()).is_ok()); // seq 10
            let genuine = &packets[999]; // seq 1000

            // A forgery carrying seq 1000 (bad ICV) ...
            let mut forged = genuine.clone();
            let last = forged.len() - 1;
            forged[last] ^= 0x55;
            assert_eq!(inb.open(&mut forged), Err(OpenError::AuthFailed));
            assert_eq!(inb.highest_seq(), 10);
            // ... and one that claims seq 5000 with garbage.
            let mut far = genuine.clone();
            far[4..8].copy_from_slice(&5000u32.to_be_bytes());
            assert_eq!(inb.open(&mut far), Err(OpenError::AuthFailed));
            assert_eq!(inb.highest_seq(), 10);
            // The genuine seq 1000 still opens, and everything from 937 up is still
            // acceptable, as it would be had the forgeries never arrived.
            assert_eq!(inb.open(&mut genuine.clone()).unwrap().seq, 1000);
            assert_eq!(inb.open(&mut packets[936].clone()).unwrap().seq, 937);
            assert_eq!(
                inb.open(&mut packets[935].clone()),
                if esn {
                    // Below the window with ESN: inferred into the next epoch.
                    Err(OpenError::AuthFailed)
                } else {
                    Err(OpenError::Replay)
                }
            );
            assert_eq!(inb.open(&mut genuine.clone()), Err(OpenError::Replay));
        }
    }
}

#[test]
fn replay_through_the_sa() {
    for window in [0u32, 64, 1024, 8192] {
        let (mut out, mut inb) = pair(Cipher::Aes256Gcm16, false, window);
        assert_eq!(inb.replay_window(), window);
        let packets: Vec<Vec<u8>> = (0..(window as usize + 200))
            .map(|_| seal(&mut out, &[0x45; 20], NextHeader::Ipv4))
            .collect();
        // Deliver in reverse order: everything within the window of the newest is accepted.
        let newest = packets.len();
        for (i, p) in packets.iter().enumerate().rev() {
            let seq = i + 1;
            let got = inb.open(&mut p.clone()).map(|o| o.seq);
            if window == 0 || newest - seq < window as usize {
                assert_eq!(got, Ok(seq as u64), "window {window} seq {seq}");
            } else {
                assert_eq!(got, Err(OpenError::Replay), "window {window} seq {seq}");
            }
        }
        // And duplicates are refused only when the window is on.
        let got = inb.open(&mut packets[newest - 1].clone());
        if window == 0 {
            assert!(got.is_ok());
        } else {
            assert_eq!(got, Err(OpenError::Replay));
        }
    }
}

#[test]
fn sealed_len_and_max_inner_len_agree() {
    assert_eq!(sealed_len(0), MIN_ESP_LEN);
    assert_eq!(MIN_ESP_LEN, 36);
    assert_eq!(HEADROOM, ESP_HEADER_LEN + IV_LEN);
    assert_eq!(max_inner_len(1472), 1438);
    assert_eq!(sealed_len(1438), 1472);
    assert_eq!(sealed_len(1439), 1476);
    // IPv6 outer: 1500 - 40 - 8.
    assert_eq!(max_inner_len(1452), 1418);
    assert_eq!(sealed_len(usize::MAX), usize::MAX);
    assert_eq!(sealed_len(usize::MAX - 4), usize::MAX);
    for budget in 0..2000usize {
        let m = max_inner_len(budget);
        if budget < MIN_ESP_LEN {
            assert_eq!(m, 0, "budget {budget}");
            assert!(sealed_len(0) > budget);
        } else {
            assert!(sealed_len(m) <= budget, "budget {budget}");
            assert!(sealed_len(m + 1) > budget, "budget {budget}");
        }
    }
    for len in 0..2000usize {
        let s = sealed_len(len);
        assert_eq!((s - HEADROOM - ICV_LEN) % 4, 0);
        assert!(s - HEADROOM - len <= MAX_TAILROOM, "len {len}");
        assert!(s - HEADROOM - len >= 2 + ICV_LEN, "len {len}");
        assert!(sealed_len(len + 1) >= s);
    }
}

#[test]
fn names_and_keys() {
    for cipher in Cipher::ALL {
        assert_eq!(cipher.name().parse::<Cipher>(), Ok(cipher));
        assert_eq!(cipher.to_string(), cipher.name());
    }
    assert_eq!(Cipher::Aes256Gcm16.name(), "aes256gcm16");
    assert_eq!(Cipher::ChaCha20Poly1305.name(), "chacha20poly1305");
    for bad in [
        "",
        "aes256gcm",
        "AES256GCM16",
        "aes128gcm16",
        "chacha20poly1305 ",
    ] {
        assert_eq!(bad.parse::<Cipher>(), Err(UnknownCipher));
    }

    let names: Vec<&str> = OpenError::ALL.iter().map(|e| e.as_str()).collect();
    assert_eq!(
        names,
        [
            "too_short",
            "spi_mismatch",
            "replay",
            "auth_failed",
            "bad_padding",
            "bad_next_header",
            "dummy"
        ]
    );
    assert_eq!(OpenError::AuthFailed.to_string(), "auth_failed");

    for len in [0, 32, 35, 37, 64] {
        assert_eq!(
            SaKey::new(Cipher::Aes256Gcm16, &vec![1; len]).err(),
            Some(KeyLenError)
        );
    }
    let key = SaKey::new(Cipher::ChaCha20Poly1305, &[0xa5; KEYMAT_LEN]).unwrap();
    assert_eq!(key.cipher(), Cipher::ChaCha20Poly1305);
    let shown = format!("{key:?}");
    assert_eq!(shown, "SaKey { cipher: ChaCha20Poly1305, .. }");
    let out = OutboundSa::new(SPI, &key, true);
    assert!(!format!("{out:?}").contains("a5"));
    assert_eq!(
        (out.spi(), out.esn(), out.cipher()),
        (SPI, true, Cipher::ChaCha20Poly1305)
    );
    assert_eq!((out.last_seq(), out.remaining()), (0, u64::MAX));
    let inb = InboundSa::new(SPI, &key, false, 100_000);
    assert_eq!(inb.replay_window(), 65536);
    assert_eq!(
        (inb.spi(), inb.esn(), inb.cipher()),
        (SPI, false, Cipher::ChaCha20Poly1305)
    );
    assert_eq!(
        OutboundSa::new(SPI, &key, false).remaining(),
        u64::from(u32::MAX)
    );
    assert_eq!(Spi(0xc0de).to_string(), "0x0000c0de");
}
