//! `udp_encap::classify` on arbitrary datagrams: never panics, and its answer agrees with
//! RFC 3948's rules restated independently here.

#![no_main]

use braid_crypto::{classify, Spi, UdpPayload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match classify(data) {
        UdpPayload::NatKeepalive => assert_eq!(data, [0xff]),
        UdpPayload::Ike(msg) => {
            assert!(data.len() >= 4 && data[..4] == [0, 0, 0, 0]);
            assert_eq!(msg, &data[4..]);
        }
        UdpPayload::Esp(Spi(spi)) => {
            assert!(data.len() >= 4);
            assert_eq!(
                spi,
                u32::from_be_bytes([data[0], data[1], data[2], data[3]])
            );
            assert!(spi > 255);
        }
        UdpPayload::Malformed => {
            assert_ne!(data, [0xff]);
            if data.len() >= 4 {
                let spi = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
                assert!((1..=255).contains(&spi));
            }
        }
    }
});
