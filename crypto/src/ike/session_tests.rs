//! Tests that need the session's internals: every message the core emits is decrypted with
//! the receiver's keys and must re-encode to the same octets, and authenticated but
//! undecodable requests get INVALID_SYNTAX or UNSUPPORTED_CRITICAL_PAYLOAD.

use super::*;
use crate::ike::message::{decode, encode_payloads, payload_type, Header};

fn cfg(initiator: bool, esp: &str) -> IkeConfig {
    let mut c = IkeConfig::new(
        initiator,
        Psk::new(b"k".to_vec()),
        "gw.example".parse().unwrap(),
    );
    c.esp_proposals = EspProposal::parse_list(esp).unwrap();
    c.retransmit.base = Duration::from_millis(500);
    c.dpd_interval = Some(Duration::from_secs(10));
    c
}

struct Duo {
    now: Instant,
    s: [IkeSession; 2],
    checked_plain: usize,
    checked_sk: usize,
    /// Each side's events, with when they came.
    events: [Vec<(Instant, Event)>; 2],
}

impl Duo {
    fn new(esp: &str) -> Duo {
        let now = Instant::now();
        let a: SocketAddr = "198.51.100.1:4500".parse().unwrap();
        let b: SocketAddr = "203.0.113.1:4500".parse().unwrap();
        Duo {
            now,
            s: [
                IkeSession::with_seed(cfg(true, esp), a, b, now, [1; 32]),
                IkeSession::with_seed(cfg(false, esp), b, a, now, [2; 32]),
            ],
            checked_plain: 0,
            checked_sk: 0,
            events: [Vec::new(), Vec::new()],
        }
    }

    /// Checks one message on its way to side `to`.
    fn round_trip(&mut self, to: usize, msg: &[u8]) {
        let (h, body) = decode(msg).expect("emitted messages decode");
        match body {
            Body::Plain(payloads) => {
                assert_eq!(encode_plain(&h, &payloads), msg, "plain re-encode");
                self.checked_plain += 1;
            }
            Body::Encrypted {
                outer,
                first_inner,
                sk_at,
            } => {
                assert!(outer.is_empty());
                let sa = self.s[to]
                    .sas
                    .iter()
                    .find(|s| s.spi_i == h.spi_i && s.spi_r == h.spi_r)
                    .expect("receiver has the SA");
                let plain = sa.rx.open(msg, sk_at).expect("authentic");
                let payloads = decode_payloads(first_inner, &plain).expect("inner decodes");
                let (first, again) = encode_payloads(&payloads);
                assert_eq!(
                    (first, again.as_slice()),
                    (first_inner, plain.as_slice()),
                    "inner re-encode"
                );
                self.checked_sk += 1;
            }
        }
    }

    fn run(&mut self, d: Duration) {
        let end = self.now + d;
        let from = [self.s[0].local, self.s[1].local];
        loop {
            let mut moved = false;
            for (side, &sender) in from.iter().enumerate() {
                while let Some(t) = self.s[side].poll_transmit() {
                    moved = true;
                    self.round_trip(1 - side, &t.payload);
                    let now = self.now;
                    self.s[1 - side].handle_message(now, sender, &t.payload);
                }
                while let Some(e) = self.s[side].poll_event() {
                    self.events[side].push((self.now, e));
                }
            }
            if moved {
                continue;
            }
            let next = [self.s[0].poll_timeout(), self.s[1].poll_timeout()]
                .into_iter()
                .flatten()
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    let now = self.now;
                    for s in &mut self.s {
                        if s.poll_timeout().is_some_and(|t| t <= now) {
                            s.handle_timeout(now);
                        }
                    }
                }
                _ => {
                    self.now = end;
                    return;
                }
            }
        }
    }
}

#[test]
fn every_emitted_message_round_trips() {
    for esp in [
        "aes256gcm16-ecp256",
        "chacha20poly1305-x25519-noesn",
        "aes256gcm16",
    ] {
        let mut d = Duo::new(esp);
        d.s[1].set_under_load(true);
        let now = d.now;
        d.s[0].start(now);
        d.run(Duration::from_secs(1));
        assert_eq!(d.s[0].state(), SessionState::Established);
        let now = d.now;
        d.s[0].rekey_child(now);
        d.run(Duration::from_secs(1));
        d.s[1].rekey_ike(d.now);
        d.run(Duration::from_secs(1));
        d.s[1].rekey_child(d.now);
        d.run(Duration::from_secs(15)); // grace removals and a DPD exchange
        d.s[0].close(d.now);
        d.run(Duration::from_secs(1));
        assert_eq!(d.s[1].state(), SessionState::Idle);
        // COOKIE, 2x IKE_SA_INIT, IKE_AUTH x2, CREATE_CHILD_SA x6, deletes x6, DPD x2+, close x2.
        assert_eq!(d.checked_plain, 4, "{esp}");
        assert!(d.checked_sk >= 18, "{esp}: {}", d.checked_sk);
    }
}

/// Sends `inner` (raw payload chain starting with type `first`) as an INFORMATIONAL request
/// from side 0 to side 1 on the current SA; returns side 1's decrypted answer.
fn send_raw(d: &mut Duo, first: u8, inner: &[u8]) -> Vec<Payload> {
    let c = d.s[0].current().unwrap();
    let sa = &mut d.s[0].sas[c];
    let id = sa.next_id;
    sa.next_id += 1;
    let h = sa.header(exchange::INFORMATIONAL, id, false);
    // Build the SK payload by hand around the raw chain.
    let mut msg = Vec::new();
    let mut hh = h;
    hh.next_payload = payload_type::SK;
    let sk_len = 4 + 8 + inner.len() + 1 + 16;
    hh.length = (28 + sk_len) as u32;
    hh.encode(&mut msg);
    msg.extend_from_slice(&[first, 0]);
    msg.extend_from_slice(&(sk_len as u16).to_be_bytes());
    let iv = 0xdead_u64.to_be_bytes();
    msg.extend_from_slice(&iv);
    let mut pt = inner.to_vec();
    pt.push(0);
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(&sa.tx.salt[..]);
    nonce[4..].copy_from_slice(&iv);
    let tag = sa
        .tx
        .key
        .seal_in_place_separate_tag(
            ring::aead::Nonce::assume_unique_for_key(nonce),
            ring::aead::Aad::from(&msg[..32]),
            &mut pt,
        )
        .unwrap();
    msg.extend_from_slice(&pt);
    msg.extend_from_slice(tag.as_ref());
    let now = d.now;
    let from = d.s[0].local;
    d.s[1].handle_message(now, from, &msg);
    let t = d.s[1].poll_transmit().expect("an answer");
    let (rh, body): (Header, Body) = decode(&t.payload).unwrap();
    assert!(rh.is_response());
    assert_eq!(rh.message_id, id);
    let Body::Encrypted {
        first_inner, sk_at, ..
    } = body
    else {
        panic!()
    };
    let c = d.s[0].current().unwrap();
    let plain = d.s[0].sas[c].rx.open(&t.payload, sk_at).unwrap();
    decode_payloads(first_inner, &plain).unwrap()
}

#[test]
fn undecodable_authenticated_requests_get_their_notify() {
    let mut d = Duo::new("aes256gcm16");
    let now = d.now;
    d.s[0].start(now);
    d.run(Duration::from_secs(1));
    // A Nonce payload of 3 octets: INVALID_SYNTAX.
    let answer = send_raw(&mut d, payload_type::NONCE, &[0, 0, 0, 7, 1, 2, 3]);
    assert_eq!(
        answer,
        [Payload::Notify(Notify::new(
            notify_type::INVALID_SYNTAX,
            vec![]
        ))]
    );
    assert_eq!(d.s[1].drops().invalid_syntax, 1);
    // An unknown payload type 222 with the critical bit: UNSUPPORTED_CRITICAL_PAYLOAD(222).
    let answer = send_raw(&mut d, 222, &[0, 0x80, 0, 5, 9]);
    assert_eq!(
        answer,
        [Payload::Notify(Notify::new(
            notify_type::UNSUPPORTED_CRITICAL_PAYLOAD,
            vec![222]
        ))]
    );
    // Without the critical bit it is skipped: an empty INFORMATIONAL, answered empty.
    let answer = send_raw(&mut d, 222, &[0, 0, 0, 5, 9]);
    assert!(answer.is_empty());
    // Nothing of this took the SA down.
    assert_eq!(d.s[1].state(), SessionState::Established);
}

#[test]
fn retransmitted_request_gets_the_cached_response_once_authenticated() {
    let mut d = Duo::new("aes256gcm16");
    let now = d.now;
    d.s[0].start(now);
    d.run(Duration::from_secs(1));
    let now = d.now;
    d.s[0].rekey_child(now);
    let req = d.s[0].poll_transmit().unwrap();
    let from = d.s[0].local;
    d.s[1].handle_message(now, from, &req.payload);
    let first = d.s[1].poll_transmit().unwrap();
    d.s[1].handle_message(now, from, &req.payload);
    let again = d.s[1].poll_transmit().unwrap();
    assert_eq!(first, again);
    // A forged copy (bad ICV) of the same Message ID is not answered.
    let mut forged = req.payload.clone();
    let n = forged.len();
    forged[n - 1] ^= 1;
    d.s[1].handle_message(now, from, &forged);
    assert!(d.s[1].poll_transmit().is_none());
    assert_eq!(d.s[1].drops().decrypt_failed, 1);
    // Only one child was created by the two copies.
    let installs = std::iter::from_fn(|| d.s[1].poll_event())
        .filter(|e| matches!(e, Event::ChildInstallInbound { .. }))
        .count();
    assert_eq!(installs, 1, "one new child for two copies of the request");
}

/// RFC 7296 section 2.23: an initiator with `start_port = 500` sends IKE_SA_INIT to the peer's
/// port 500 from its own port 500, makes the peer see a NAT (so it encapsulates ESP), and floats
/// to the configured port (4500) for IKE_AUTH and everything after.
#[test]
fn initiator_starts_on_port_500_and_floats_to_4500() {
    let now = Instant::now();
    let a: SocketAddr = "198.51.100.1:4500".parse().unwrap();
    let b: SocketAddr = "203.0.113.1:4500".parse().unwrap();
    let (a500, b500): (SocketAddr, SocketAddr) = (
        "198.51.100.1:500".parse().unwrap(),
        "203.0.113.1:500".parse().unwrap(),
    );
    let mut ci = cfg(true, "aes256gcm16");
    ci.start_port = Some(500);
    let mut i = IkeSession::with_seed(ci, a, b, now, [1; 32]);
    let mut r = IkeSession::with_seed(cfg(false, "aes256gcm16"), b, a, now, [2; 32]);
    i.start(now);
    let init = i.poll_transmit().unwrap();
    assert_eq!(init.to, b500, "IKE_SA_INIT goes to port 500");
    assert!(i.poll_transmit().is_none());
    // The responder got it on its port 500 from our port 500 and answers there.
    r.handle_message(now, a500, &init.payload);
    let resp = r.poll_transmit().unwrap();
    assert_eq!(resp.to, a500);
    i.handle_message(now, b500, &resp.payload);
    // IKE_AUTH floats to the configured port.
    let auth = i.poll_transmit().unwrap();
    assert_eq!(auth.to, b);
    // It arrives from our port 4500: the responder saw a NAT and follows us there.
    r.handle_message(now, a, &auth.payload);
    let auth_resp = r.poll_transmit().unwrap();
    assert_eq!(auth_resp.to, a);
    i.handle_message(now, b, &auth_resp.payload);
    assert_eq!(i.state(), SessionState::Established);
    assert_eq!(r.state(), SessionState::Established);
    let nat = |s: &IkeSession| s.status().ike.unwrap().nat;
    assert!(nat(&i).local_behind_nat, "the initiator pretends a NAT");
    assert!(
        nat(&r).remote_behind_nat,
        "so the responder encapsulates ESP"
    );
    assert_eq!(i.status().remote, b);
    assert_eq!(r.status().remote, a);
    let mut events = Vec::new();
    while let Some(e) = r.poll_event() {
        events.push(e);
    }
    assert!(events
        .iter()
        .any(|e| matches!(e, Event::RemoteAddressChanged { remote } if *remote == a)));
}

/// Side `side` deletes its active child SA and creates no replacement (as an operator's
/// "terminate child" would).
fn delete_child_alone(d: &mut Duo, side: usize) {
    let now = d.now;
    let s = &mut d.s[side];
    let ch = s
        .children
        .iter_mut()
        .find(|c| c.state == ChildState::Active)
        .expect("an active child SA");
    ch.state = ChildState::Deleting;
    ch.outbound = false;
    let spi_in = ch.spi_in;
    let c = s.current().expect("an IKE SA");
    s.queue(
        c,
        exchange::INFORMATIONAL,
        vec![Payload::Delete(Delete::Esp(vec![spi_in]))],
        Req::DeleteChildren(vec![spi_in]),
    );
    s.pump(now);
}

/// Whether each outbound install of `events` said the peer had its half already.
fn peer_ready(events: &[(Instant, Event)]) -> Vec<bool> {
    events
        .iter()
        .filter_map(|(_, e)| match e {
            Event::ChildInstallOutbound { peer_ready, .. } => Some(*peer_ready),
            _ => None,
        })
        .collect()
}

fn outbound_events(events: &[(Instant, Event)]) -> Vec<(Instant, &'static str, u32)> {
    events
        .iter()
        .filter_map(|(t, e)| match e {
            Event::ChildInstallOutbound { spi, .. } => Some((*t, "install", spi.0)),
            Event::ChildRemoveOutbound { spi, .. } => Some((*t, "remove", spi.0)),
            _ => None,
        })
        .collect()
}

#[test]
fn an_initiator_creates_a_child_sa_when_the_peer_deleted_the_last_one_and_made_none() {
    let mut d = Duo::new("aes256gcm16-ecp256");
    d.s[0].start(d.now);
    d.run(Duration::from_secs(1));
    assert_eq!(d.s[0].state(), SessionState::Established);
    let old = d.s[0].status().children[0].spi_out.0;
    d.events = [Vec::new(), Vec::new()];
    let deleted_at = d.now;
    delete_child_alone(&mut d, 1);

    // Just under CHILD_RECREATE: the initiator stopped sending on the deleted SA and waits.
    d.run(CHILD_RECREATE - Duration::from_millis(10));
    assert_eq!(
        outbound_events(&d.events[0]),
        vec![(deleted_at, "remove", old)]
    );
    assert!(d.s[0].status().children.is_empty());

    // Then it creates one; both ends have it, and they agree on its SPIs.
    d.run(Duration::from_secs(2));
    let ev = outbound_events(&d.events[0]);
    assert_eq!(ev.len(), 2, "{ev:?}");
    let (at, what, new) = ev[1];
    assert_eq!(what, "install");
    assert_ne!(new, old);
    assert!(at >= deleted_at + CHILD_RECREATE, "{:?}", at - deleted_at);
    let (a, b) = (d.s[0].status(), d.s[1].status());
    assert_eq!(a.children.len(), 1);
    assert_eq!(b.children.len(), 1);
    assert_eq!(a.children[0].spi_out, b.children[0].spi_in);
    assert_eq!(a.children[0].spi_in, b.children[0].spi_out);
    assert!(outbound_events(&d.events[1])
        .iter()
        .any(|&(_, w, spi)| w == "install" && spi == a.children[0].spi_in.0));
    // The initiator of the exchange may send at once; the responder, only once the initiator has
    // its half (when our response arrives there).
    assert_eq!(peer_ready(&d.events[0]), [true]);
    assert_eq!(peer_ready(&d.events[1]), [false]);
}

#[test]
fn an_initiator_makes_no_second_child_sa_when_the_peer_creates_its_own_at_once() {
    // strongSwan at a child SA's hard lifetime: Delete, then at once a CREATE_CHILD_SA.
    let mut d = Duo::new("aes256gcm16-ecp256");
    d.s[0].start(d.now);
    d.run(Duration::from_secs(1));
    let c = d.s[1]
        .children
        .iter()
        .find(|c| c.state == ChildState::Active)
        .unwrap()
        .id;
    d.events = [Vec::new(), Vec::new()];
    let now = d.now;
    d.s[1].expire_child(now, c);
    d.s[1].pump(now);
    d.run(CHILD_RECREATE * 3);
    let (a, b) = (d.s[0].status(), d.s[1].status());
    assert_eq!(a.children.len(), 1, "{:?}", a.children);
    assert_eq!(b.children.len(), 1, "{:?}", b.children);
    assert_eq!(a.children[0].spi_out, b.children[0].spi_in);
    let ev = outbound_events(&d.events[0]);
    assert_eq!(
        ev.iter().map(|e| e.1).collect::<Vec<_>>(),
        ["remove", "install"],
        "{ev:?}"
    );
    // The peer created it: our answer must reach it before it can open what we send.
    assert_eq!(peer_ready(&d.events[0]), [false]);
}

#[test]
fn a_responder_waits_for_the_initiator_after_it_deleted_the_last_child_sa() {
    let mut d = Duo::new("aes256gcm16-ecp256");
    d.s[0].start(d.now);
    d.run(Duration::from_secs(1));
    let old = d.s[1].status().children[0].spi_out.0;
    d.events = [Vec::new(), Vec::new()];
    let deleted_at = d.now;
    delete_child_alone(&mut d, 0);
    d.run(CHILD_RECREATE * 5);
    assert_eq!(
        outbound_events(&d.events[1]),
        vec![(deleted_at, "remove", old)]
    );
    assert!(d.s[1].status().children.is_empty());
    assert_eq!(d.s[1].state(), SessionState::Established);
}
