//! BFD Control packets (RFC 5880 4.1) on arbitrary input: decoding never panics, and what decodes re-encodes
//! to the same 24 bytes and decodes to the same packet.

#![no_main]

use braid_control::bfd::packet::ControlPacket;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = ControlPacket::decode(data) {
        let bytes = p.to_bytes();
        assert_eq!(&bytes[..], &data[..bytes.len()]);
        assert_eq!(ControlPacket::decode(&bytes), Ok(p));
    }
});
