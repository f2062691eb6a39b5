//! RFC 3948 classification of datagrams received on port 4500.

use braid_crypto::udp_encap::{NAT_KEEPALIVE, NAT_T_PORT};
use braid_crypto::{classify, Spi, UdpPayload, NON_ESP_MARKER};

#[test]
fn keepalive() {
    assert_eq!(classify(&NAT_KEEPALIVE), UdpPayload::NatKeepalive);
    assert_eq!(classify(&[0xff]), UdpPayload::NatKeepalive);
    // Only a lone 0xFF is a keepalive.
    assert_eq!(classify(&[0xfe]), UdpPayload::Malformed);
    assert_eq!(classify(&[0xff, 0xff]), UdpPayload::Malformed);
    assert_eq!(NAT_T_PORT, 4500);
}

#[test]
fn ike_after_the_non_esp_marker() {
    let mut datagram = NON_ESP_MARKER.to_vec();
    let ike_header = [0x11u8; 28];
    datagram.extend_from_slice(&ike_header);
    assert_eq!(classify(&datagram), UdpPayload::Ike(&ike_header[..]));
    match classify(&datagram) {
        UdpPayload::Ike(msg) => assert_eq!(msg.as_ptr(), datagram[4..].as_ptr()),
        other => panic!("{other:?}"),
    }
    // A marker with nothing after it is still IKE's to judge.
    assert_eq!(classify(&[0, 0, 0, 0]), UdpPayload::Ike(&[]));
}

#[test]
fn esp_and_reserved_spis() {
    let mut packet = vec![0xc0, 0xde, 0x00, 0x01];
    packet.extend_from_slice(&[0u8; 40]);
    assert_eq!(classify(&packet), UdpPayload::Esp(Spi(0xc0de_0001)));
    // Only the SPI is looked at; open() checks the rest.
    assert_eq!(classify(&[0, 0, 1, 0]), UdpPayload::Esp(Spi(256)));
    assert_eq!(
        classify(&[0xff, 0xff, 0xff, 0xff]),
        UdpPayload::Esp(Spi(u32::MAX))
    );
    for spi in [1u32, 2, 128, 255] {
        let mut p = spi.to_be_bytes().to_vec();
        p.extend_from_slice(&[0u8; 40]);
        assert_eq!(classify(&p), UdpPayload::Malformed, "spi {spi}");
    }
}

#[test]
fn short_datagrams() {
    assert_eq!(classify(&[]), UdpPayload::Malformed);
    assert_eq!(classify(&[0]), UdpPayload::Malformed);
    assert_eq!(classify(&[0, 0]), UdpPayload::Malformed);
    assert_eq!(classify(&[0, 0, 0]), UdpPayload::Malformed);
    assert_eq!(classify(&[0x12, 0x34, 0x56]), UdpPayload::Malformed);
}
