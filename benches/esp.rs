//! ESP seal/open throughput, against ring's raw AEAD as the ceiling.
//!
//! Groups:
//! - `seal/<cipher>/<len>`: `OutboundSa::seal` of one `len`-octet inner packet in place,
//!   without ESN (the common negotiation). The same buffer is resealed every iteration: the
//!   contents do not change the cost, and the header, trailer and ICV are rewritten each time.
//! - `open/<cipher>/<len>`: `InboundSa::open` of a batch of [`BATCH`] packets pre-sealed with
//!   sequence numbers 1..=BATCH, opened in order. Opening decrypts in place, so every batch
//!   gets fresh copies of the sealed packets and a fresh `InboundSa` with the default replay
//!   window of 1024 (the window check and update are part of what is measured; the copies
//!   and the SA setup are not: `iter_batched`). Throughput counts the inner octets of the
//!   whole batch.
//! - `ring_aead_raw/<cipher>/<len>`: ring's `seal_in_place_separate_tag` over `len` octets
//!   (1400 is the headline figure; the smaller sizes show the fixed per-call cost) with an
//!   8-octet AAD and a counter nonce, nothing else: the ceiling `seal` is measured against
//!   (the difference is the ESP header, padding, trailer and bookkeeping).
//!
//! Run with `cargo bench -p braid --bench esp`.

use std::hint::black_box;

use braid_crypto::{
    sealed_len, Cipher, InboundSa, NextHeader, OutboundSa, SaKey, Spi, HEADROOM, KEYMAT_LEN,
    MAX_TAILROOM,
};
use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};

/// Inner packet sizes: a small packet (TCP ACK-sized), a middling one, and a full tunnel MTU.
const SIZES: [usize; 3] = [64, 512, 1400];

/// Packets opened per measured batch in the `open` group.
const BATCH: usize = 256;

const SPI: Spi = Spi(0xb4a1_d001);

fn key(cipher: Cipher) -> SaKey {
    let keymat: Vec<u8> = (0..KEYMAT_LEN as u8).collect();
    SaKey::new(cipher, &keymat).expect("36-octet KEYMAT")
}

/// A buffer with an IPv4-looking inner packet at HEADROOM and exactly MAX_TAILROOM behind it.
fn packet_buf(len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; HEADROOM + len + MAX_TAILROOM];
    for (i, b) in buf[HEADROOM..HEADROOM + len].iter_mut().enumerate() {
        *b = i as u8;
    }
    buf[HEADROOM] = 0x45;
    buf
}

fn seal(c: &mut Criterion) {
    let mut group = c.benchmark_group("seal");
    for cipher in Cipher::ALL {
        for len in SIZES {
            group.throughput(Throughput::Bytes(len as u64));
            group.bench_with_input(BenchmarkId::new(cipher.name(), len), &len, |b, &len| {
                let sa = OutboundSa::new(SPI, &key(cipher), false);
                let mut buf = packet_buf(len);
                b.iter(|| {
                    let esp = sa
                        .seal(
                            black_box(&mut buf),
                            HEADROOM..HEADROOM + len,
                            NextHeader::Ipv4,
                        )
                        .expect("seal");
                    black_box(esp)
                });
            });
        }
    }
    group.finish();
}

fn open(c: &mut Criterion) {
    let mut group = c.benchmark_group("open");
    for cipher in Cipher::ALL {
        for len in SIZES {
            let key = key(cipher);
            let out = OutboundSa::new(SPI, &key, false);
            let sealed: Vec<Vec<u8>> = (0..BATCH)
                .map(|_| {
                    let mut buf = packet_buf(len);
                    let esp = out
                        .seal(&mut buf, HEADROOM..HEADROOM + len, NextHeader::Ipv4)
                        .expect("seal");
                    assert_eq!(esp.len(), sealed_len(len));
                    buf[esp].to_vec()
                })
                .collect();
            group.throughput(Throughput::Bytes((len * BATCH) as u64));
            group.bench_with_input(BenchmarkId::new(cipher.name(), len), &len, |b, _| {
                b.iter_batched(
                    || (InboundSa::new(SPI, &key, false, 1024), sealed.clone()),
                    |(mut sa, mut packets)| {
                        for p in &mut packets {
                            let opened = sa.open(black_box(p)).expect("open");
                            black_box(opened);
                        }
                        (sa, packets)
                    },
                    BatchSize::LargeInput,
                );
            });
        }
    }
    group.finish();
}

fn ring_aead_raw(c: &mut Criterion) {
    let mut group = c.benchmark_group("ring_aead_raw");
    for (cipher, algorithm) in [
        (Cipher::Aes256Gcm16, &AES_256_GCM),
        (Cipher::ChaCha20Poly1305, &CHACHA20_POLY1305),
    ] {
        let key = LessSafeKey::new(UnboundKey::new(algorithm, &[0x42; 32]).expect("32-octet key"));
        for len in SIZES {
            let mut buf = vec![0x45u8; len];
            let mut counter = 0u64;
            group.throughput(Throughput::Bytes(len as u64));
            group.bench_function(BenchmarkId::new(cipher.name(), len), |b| {
                b.iter(|| {
                    counter += 1;
                    let mut nonce = [0u8; 12];
                    nonce[4..].copy_from_slice(&counter.to_be_bytes());
                    let mut aad = [0u8; 8];
                    aad[..4].copy_from_slice(&SPI.0.to_be_bytes());
                    aad[4..].copy_from_slice(&(counter as u32).to_be_bytes());
                    let tag = key
                        .seal_in_place_separate_tag(
                            Nonce::assume_unique_for_key(nonce),
                            Aad::from(aad),
                            black_box(&mut buf),
                        )
                        .expect("seal");
                    black_box(tag)
                });
            });
        }
    }
    group.finish();
}

criterion_group!(benches, seal, open, ring_aead_raw);
criterion_main!(benches);
