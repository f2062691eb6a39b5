//! `braid_control::bgp::wire::decode` on arbitrary bytes, in the three contexts a session goes through:
//! no OPEN exchanged yet (`None`), a 4-octet-ASN session and a 2-octet-ASN one (both families).
//!
//! Nothing may panic; a decoded message must be exactly one frame (`frame_len`), and must survive a
//! re-encode: what `try_encode` writes decodes again, and, for messages without RFC 7606 actions, decodes
//! to the same message minus what the encoder deliberately drops (unknown non-transitive attributes).
//! Messages that grow past 4096 octets on re-encode (AS4_PATH added for a 2-octet peer) are refused by
//! `try_encode`, which is checked to leave the buffer untouched. Seeds: `seeds/bgp_decode/`, the messages
//! BIRD, FRR and GoBGP sent in `control/tests/captures/`.

#![no_main]

use std::sync::Arc;

use braid_control::bgp::types::{attr_flags, Message, Negotiated};
use braid_control::bgp::wire::{decode, frame_len, try_encode};
use libfuzzer_sys::fuzz_target;

fn resent(m: &Message) -> Message {
    let mut m = m.clone();
    if let Message::Update(u) = &mut m {
        if let Some(a) = &mut u.attributes {
            Arc::make_mut(a)
                .unknown
                .retain(|r| r.flags & attr_flags::TRANSITIVE != 0);
        }
    }
    m
}

fn check(data: &[u8], ctx: Option<&Negotiated>) {
    let Ok(msg) = decode(data, ctx) else {
        return;
    };
    assert_eq!(frame_len(data), Ok(Some(data.len())));
    let clean = !matches!(&msg, Message::Update(u) if !u.errors.is_empty());
    let mut out = vec![0xA5];
    if try_encode(&msg, ctx, &mut out).is_err() {
        assert_eq!(out, [0xA5]);
        return;
    }
    let again = decode(&out[1..], ctx).expect("re-encoded message must decode");
    if clean {
        assert_eq!(again, resent(&msg));
    }
}

fuzz_target!(|data: &[u8]| {
    let four = Negotiated::default_for_tests();
    let two = Negotiated {
        four_octet_asn: false,
        ..four.clone()
    };
    check(data, None);
    check(data, Some(&four));
    check(data, Some(&two));
});
