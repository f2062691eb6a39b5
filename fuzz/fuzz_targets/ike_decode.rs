//! `braid_crypto::ike::message` and `IkeSession::handle_message` on arbitrary bytes.
//!
//! Nothing may panic. A message that decodes must re-encode: an unencrypted one to exactly the
//! same octets unless it held unknown non-critical payloads (which the decoder skips), and
//! then to something that decodes to the same payloads; the input is also decoded as the
//! inside of an SK payload (first octet: the first payload type), with the same rule. Finally
//! the bytes are fed to a responder session and to an initiator waiting for its IKE_SA_INIT
//! response, which must count what they cannot use rather than fail. Seeds:
//! `seeds/ike_decode/`, one message of each kind a handshake, a child rekey and a delete
//! produce (IKE_SA_INIT with and without a cookie, IKE_AUTH, CREATE_CHILD_SA, INFORMATIONAL).

#![no_main]

use std::time::Instant;

use braid_crypto::ike::message::{decode, decode_payloads, encode_payloads, encode_plain, Body};
use braid_crypto::ike::{IkeConfig, IkeSession, Psk};
use libfuzzer_sys::fuzz_target;

fn session(initiator: bool) -> IkeSession {
    let cfg = IkeConfig::new(initiator, Psk::new(b"fuzz".to_vec()), "fuzz.example".parse().unwrap());
    let a = "198.51.100.1:4500".parse().unwrap();
    let b = "203.0.113.1:4500".parse().unwrap();
    IkeSession::with_seed(cfg, a, b, Instant::now(), [7; 32])
}

fuzz_target!(|data: &[u8]| {
    if let Ok((h, Body::Plain(payloads))) = decode(data) {
        let again = encode_plain(&h, &payloads);
        let (h2, body2) = decode(&again).expect("re-encoded message must decode");
        assert_eq!(h2.message_id, h.message_id);
        assert_eq!(body2, Body::Plain(payloads));
    }
    if let Some((&first, rest)) = data.split_first() {
        if let Ok(payloads) = decode_payloads(first, rest) {
            let (f, bytes) = encode_payloads(&payloads);
            assert_eq!(decode_payloads(f, &bytes).expect("re-encoded chain must decode"), payloads);
        }
    }
    let now = Instant::now();
    let mut responder = session(false);
    responder.handle_message(now, "198.51.100.1:4500".parse().unwrap(), data);
    while responder.poll_transmit().is_some() {}
    let mut initiator = session(true);
    initiator.start(now);
    while initiator.poll_transmit().is_some() {}
    initiator.handle_message(now, "203.0.113.1:4500".parse().unwrap(), data);
    while initiator.poll_event().is_some() {}
});
