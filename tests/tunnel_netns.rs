//! Two real `braid run` gateways in network namespaces, one ESP-in-UDP tunnel between them on real TUN
//! devices: traffic both ways, integrity, failure modes and their counted drops.

mod common;

use std::process::Stdio;
use std::time::Duration;

use braid::lab::*;
use braid_crypto::Cipher;
use common::*;

#[test]
fn ping_both_ways_ipv4_and_ipv6() {
    if !netns_ready("ping_both_ways_ipv4_and_ipv6", &["ip", "ping"]) {
        return;
    }
    let p = pair();
    for (side, dst, src) in [
        (Side::A, B_INSIDE4, A_INSIDE4),
        (Side::B, A_INSIDE4, B_INSIDE4),
        (Side::A, B_INSIDE6, A_INSIDE6),
        (Side::B, A_INSIDE6, B_INSIDE6),
        (Side::A, B_SITE4, A_SITE4),
        (Side::B, A_SITE4, B_SITE4),
        (Side::A, B_SITE6, A_SITE6),
        (Side::B, A_SITE6, B_SITE6),
    ] {
        let (got, text) = p.ping(side, dst, 3, &["-I", src]).unwrap();
        assert_eq!(got, 3, "ping {src} -> {dst} from {side:?}:\n{text}");
    }
    let a = p.tunnel(Side::A).unwrap();
    let b = p.tunnel(Side::B).unwrap();
    // 24 echo requests + 24 replies crossed the tunnel, 12 each way per side, at least.
    assert!(counter(&a, "tx_packets") >= 12, "{a}");
    assert!(counter(&a, "rx_packets") >= 12, "{a}");
    assert!(counter(&b, "rx_packets") >= 12, "{b}");
    assert_eq!(a["state"], "up");
    assert_eq!(
        drop_count(&a, "auth_failed") + drop_count(&b, "auth_failed"),
        0
    );
    assert_eq!(drop_count(&a, "replay") + drop_count(&b, "replay"), 0);
    // The TUN device's transmit queue is braid's default, in the kernel and in `braid show`.
    let shown = p.show(Side::A, "tunnels").unwrap();
    assert_eq!(shown["tun"]["queue_len"], 2000, "{shown}");
    let tun = shown["tun"]["name"].as_str().unwrap();
    let link = p.ns(Side::A).ip(&["link", "show", tun]).unwrap();
    let link = String::from_utf8_lossy(&link.stdout);
    assert!(link.contains("qlen 2000"), "{link}");
}

#[test]
fn tcp_transfer_50mb_content_verified_ipv4_and_ipv6() {
    if !netns_ready(
        "tcp_transfer_50mb_content_verified_ipv4_and_ipv6",
        &["ip", "ping"],
    ) {
        return;
    }
    let p = pair();
    let v = p
        .transfer(&binary(), Side::A, B_SITE4, 50_000_000, 42)
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["bytes"], 50_000_000u64);
    let v6 = p
        .transfer(&binary(), Side::B, A_SITE6, 8_000_000, 43)
        .unwrap();
    assert_eq!(v6["ok"], true, "{v6}");
    let b = p.tunnel(Side::B).unwrap();
    assert!(counter(&b, "rx_bytes") > 50_000_000, "{b}");
    assert_eq!(drop_count(&b, "auth_failed"), 0, "{b}");
}

#[test]
fn chacha20poly1305_with_esn() {
    if !netns_ready("chacha20poly1305_with_esn", &["ip", "ping"]) {
        return;
    }
    let p = pair_with(|o| {
        o.cipher = Cipher::ChaCha20Poly1305;
        o.esn = true;
        o.replay_window = Some(8192);
    });
    let (got, text) = p.ping(Side::A, B_INSIDE6, 3, &[]).unwrap();
    assert_eq!(got, 3, "{text}");
    let v = p
        .transfer(&binary(), Side::B, A_SITE4, 10_000_000, 7)
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let a = p.tunnel(Side::A).unwrap();
    assert_eq!(a["cipher"], "chacha20poly1305");
    assert_eq!(a["esn"], true);
    assert_eq!(a["replay_window"], 8192);
}

#[test]
fn wrong_key_counts_auth_failures_and_delivers_nothing() {
    if !netns_ready(
        "wrong_key_counts_auth_failures_and_delivers_nothing",
        &["ip", "ping"],
    ) {
        return;
    }
    let p = pair_with(|o| o.wrong_key_on_b = true);
    let (got, _) = p.ping(Side::A, B_INSIDE4, 4, &[]).unwrap();
    assert_eq!(got, 0, "nothing may get through with a wrong key");
    let b = p.tunnel(Side::B).unwrap();
    assert!(drop_count(&b, "auth_failed") >= 4, "{b}");
    assert_eq!(counter(&b, "rx_packets"), 0, "{b}");
    // Both gateways are alive and answering.
    let a = p.tunnel(Side::A).unwrap();
    assert!(counter(&a, "tx_packets") >= 4);
    // B -> A uses the good key: A receives, but A's replies fail at B.
    let (got, _) = p.ping(Side::B, A_INSIDE4, 2, &[]).unwrap();
    assert_eq!(got, 0);
    let a = p.tunnel(Side::A).unwrap();
    assert!(counter(&a, "rx_packets") >= 2, "{a}");
    let b2 = p.tunnel(Side::B).unwrap();
    assert!(drop_count(&b2, "auth_failed") >= 6, "{b2}");
}

/// Reads the UDP payload of the first packet of a pcap file (Ethernet link type).
fn first_udp_payload(pcap: &[u8]) -> Vec<u8> {
    assert!(
        pcap.len() > 24 + 16,
        "capture is empty ({} bytes)",
        pcap.len()
    );
    let linktype = u32::from_le_bytes(pcap[20..24].try_into().unwrap());
    assert_eq!(linktype, 1, "expected Ethernet captures");
    let caplen = u32::from_le_bytes(pcap[32..36].try_into().unwrap()) as usize;
    let frame = &pcap[40..40 + caplen];
    let ip = &frame[14..];
    assert_eq!(ip[0] >> 4, 4);
    let ihl = (ip[0] & 15) as usize * 4;
    let total = u16::from_be_bytes([ip[2], ip[3]]) as usize;
    assert_eq!(ip[9], 17, "not UDP");
    ip[ihl + 8..total].to_vec()
}

#[test]
fn replayed_datagram_is_a_counted_replay_drop() {
    if !netns_ready(
        "replayed_datagram_is_a_counted_replay_drop",
        &["ip", "ping", "tcpdump"],
    ) {
        return;
    }
    let p = pair();
    let cap = p.dir.join("one.pcap");
    let mut tcpdump =
        p.b.command(
            "tcpdump",
            &[
                // Stay root: the capture goes into the lab's private (0700) directory.
                "-Z",
                "root",
                "-i",
                "ul0",
                "-n",
                "-U",
                "-c",
                "1",
                "-w",
                cap.to_str().unwrap(),
                "udp and dst port 4500 and src host 198.51.100.1",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for tcpdump to listen.
    {
        use std::io::Read;
        let mut err = tcpdump.stderr.take().unwrap();
        let mut seen = Vec::new();
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains("listening on") {
            assert_eq!(
                err.read(&mut byte).unwrap(),
                1,
                "tcpdump ended: {}",
                String::from_utf8_lossy(&seen)
            );
            seen.push(byte[0]);
        }
        // Keep draining stderr: tcpdump prints its statistics there on exit, and a closed pipe would kill it
        // (SIGPIPE) before it flushes the capture file.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    }
    let (got, _) = p.ping(Side::A, B_INSIDE4, 1, &[]).unwrap();
    assert_eq!(got, 1);
    let status = tcpdump.wait().unwrap();
    assert!(status.success());
    let esp = first_udp_payload(&std::fs::read(&cap).unwrap());
    assert!(esp.len() > 40);

    let before = p.tunnel(Side::B).unwrap();
    let hex: String = esp.iter().map(|b| format!("{b:02x}")).collect();
    for _ in 0..3 {
        let out =
            p.a.exec(
                binary().to_str().unwrap(),
                &[
                    "lab-tool",
                    "udp-send",
                    "--from",
                    "198.51.100.1:0",
                    "--to",
                    "198.51.100.2:4500",
                    "--hex",
                    &hex,
                ],
            )
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = p.tunnel(Side::B).unwrap();
    assert_eq!(
        drop_count(&after, "replay"),
        drop_count(&before, "replay") + 3,
        "{after}"
    );
    assert_eq!(
        counter(&after, "rx_packets"),
        counter(&before, "rx_packets"),
        "a replay must not be delivered"
    );
    // A flipped byte in the replayed copy is an authentication failure, not a replay.
    let mut forged = esp.clone();
    let last = forged.len() - 1;
    forged[last] ^= 1;
    forged[4..8].copy_from_slice(&0xffff_fff0u32.to_be_bytes());
    let hex: String = forged.iter().map(|b| format!("{b:02x}")).collect();
    p.a.exec(
        binary().to_str().unwrap(),
        &[
            "lab-tool",
            "udp-send",
            "--from",
            "198.51.100.1:0",
            "--to",
            "198.51.100.2:4500",
            "--hex",
            &hex,
        ],
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let forged_after = p.tunnel(Side::B).unwrap();
    assert_eq!(
        drop_count(&forged_after, "auth_failed"),
        drop_count(&after, "auth_failed") + 1
    );
    // And the tunnel still works afterwards (the forgery did not advance the window).
    let (got, _) = p.ping(Side::A, B_INSIDE4, 2, &[]).unwrap();
    assert_eq!(got, 2);
}

#[test]
fn df_packet_above_tunnel_mtu_gets_icmp_too_big() {
    if !netns_ready(
        "df_packet_above_tunnel_mtu_gets_icmp_too_big",
        &["ip", "ping"],
    ) {
        return;
    }
    // TUN MTU 1500 over a 1500-byte uplink: the tunnel carries at most 1438 (1500 - 20 - 8 - 16 - 2 - 16).
    let p = pair_with(|o| o.gateway_mtu = Some(1500));
    let a = p.tunnel(Side::A).unwrap();
    assert_eq!(a["mtu"], 1438);
    let (got, text) = p
        .ping(Side::A, B_INSIDE4, 1, &["-M", "do", "-s", "1472"])
        .unwrap();
    assert_eq!(got, 0);
    assert!(
        text.contains("mtu = 1438") || text.contains("mtu=1438"),
        "no frag-needed reported:\n{text}"
    );
    // The data path counts the ICMP error after its write returns, which ping may see first: wait briefly.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    let a = loop {
        let a = p.tunnel(Side::A).unwrap();
        if counter(&a, "icmp_too_big_sent") >= 1 || std::time::Instant::now() > deadline {
            break a;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(drop_count(&a, "too_big") >= 1, "{a}");
    assert!(counter(&a, "icmp_too_big_sent") >= 1, "{a}");
    // The largest packet that fits goes through.
    let (got, text) = p
        .ping(Side::A, B_INSIDE4, 2, &["-M", "do", "-s", "1410"])
        .unwrap();
    assert_eq!(got, 2, "{text}");
    // IPv6: packet too big.
    let (got, text) = p
        .ping(Side::A, B_INSIDE6, 1, &["-M", "do", "-s", "1452"])
        .unwrap();
    assert_eq!(got, 0);
    assert!(
        text.contains("mtu=1438") || text.contains("mtu = 1438"),
        "no packet-too-big reported:\n{text}"
    );
    let (got, text) = p
        .ping(Side::A, B_INSIDE6, 2, &["-M", "do", "-s", "1390"])
        .unwrap();
    assert_eq!(got, 2, "{text}");
}

#[test]
fn inner_source_not_allowed_on_tunnel_is_dropped() {
    if !netns_ready(
        "inner_source_not_allowed_on_tunnel_is_dropped",
        &["ip", "ping"],
    ) {
        return;
    }
    let p = pair();
    // B sends from an address A does not route through the tunnel.
    p.b.ip(&["addr", "add", "203.0.113.5/32", "dev", "lo"])
        .unwrap();
    let (got, _) = p
        .ping(Side::B, A_INSIDE4, 2, &["-I", "203.0.113.5"])
        .unwrap();
    assert_eq!(got, 0);
    let a = p.tunnel(Side::A).unwrap();
    assert!(drop_count(&a, "inner_source") >= 2, "{a}");
}

#[test]
fn sigterm_exits_cleanly_and_removes_device_and_socket() {
    if !netns_ready(
        "sigterm_exits_cleanly_and_removes_device_and_socket",
        &["ip", "ping"],
    ) {
        return;
    }
    let mut p = pair();
    assert!(p.a.ip(&["link", "show", "braid0"]).is_ok());
    let status = p.stop(Side::A, Duration::from_secs(5)).unwrap();
    assert!(status.success(), "exit status {status}");
    assert!(
        p.a.ip(&["link", "show", "braid0"]).is_err(),
        "TUN device still there"
    );
    assert!(!p.socket(Side::A).exists(), "control socket left behind");
    // B is unaffected.
    assert!(p.show(Side::B, "tunnels").is_ok());
}

#[test]
fn uplinks_show_counts_and_ike_marker_is_passed_up() {
    if !netns_ready(
        "uplinks_show_counts_and_ike_marker_is_passed_up",
        &["ip", "ping"],
    ) {
        return;
    }
    let p = pair();
    // A non-ESP-marker datagram (IKE) and a NAT keepalive: neither is garbage.
    for hex in ["00000000deadbeefdeadbeef", "ff", "000001"] {
        let out =
            p.a.exec(
                binary().to_str().unwrap(),
                &[
                    "lab-tool",
                    "udp-send",
                    "--from",
                    "198.51.100.1:0",
                    "--to",
                    "198.51.100.2:4500",
                    "--hex",
                    hex,
                ],
            )
            .unwrap();
        assert!(out.status.success());
    }
    std::thread::sleep(Duration::from_millis(300));
    let u = p.show(Side::B, "uplinks").unwrap();
    let u = &u["uplinks"][0];
    assert_eq!(u["name"], "isp1");
    assert_eq!(u["ike_received"], 1, "{u}");
    assert_eq!(u["nat_keepalives"], 1, "{u}");
    assert_eq!(u["drops"]["malformed"], 1, "{u}");
    assert!(u["rx_packets"].as_u64().unwrap() >= 3);
}

/// The inbound fast path: B receives in batches and writes coalesced TCP super-packets to its TUN device;
/// verified 50 MB IPv4 and 8 MB IPv6 transfers from A to B arrive intact, with no drops on the way.
/// A's outbound fast path sends runs of ESP datagrams with UDP GSO, so B's uplink socket (UDP GRO on) must
/// receive messages that carry several datagrams (`gro_receives`); `sys::recv_batch_tests` proves the parsing.
#[test]
fn inbound_udp_gro_and_coalesced_tun_writes_ipv4_and_ipv6() {
    if !netns_ready(
        "inbound_udp_gro_and_coalesced_tun_writes_ipv4_and_ipv6",
        &["ip", "ping"],
    ) {
        return;
    }
    let p = pair();
    let netns = std::path::Path::new("/run/netns").join(p.ns(Side::B).name());
    braid_dataplane::sys::in_netns(&netns, || {
        braid_dataplane::sys::set_interface_gro("ul0", true)
    })
    .expect("entering B's namespace")
    .expect("GRO on B's ul0");
    let tun_counter = |key: &str| {
        p.show(Side::B, "tunnels").unwrap()["tun"][key]
            .as_u64()
            .unwrap_or_else(|| panic!("tun.{key} missing"))
    };
    let uplink = || p.show(Side::B, "uplinks").unwrap()["uplinks"][0].clone();

    let v = p
        .transfer(&binary(), Side::A, B_SITE4, 50_000_000, 44)
        .unwrap();
    assert_eq!(v["ok"], true, "{v}");
    let writes4 = tun_counter("gro_writes");
    let packets4 = tun_counter("gro_packets");
    assert!(writes4 > 0, "no coalesced TUN write (IPv4)");
    assert!(
        packets4 >= 2 * writes4,
        "{packets4} packets in {writes4} writes"
    );
    let u = uplink();
    eprintln!(
        "B uplink: {} datagrams in {} batches, {} UDP GRO messages",
        counter(&u, "rx_packets"),
        counter(&u, "rx_batches"),
        counter(&u, "gro_receives")
    );
    assert!(
        counter(&u, "rx_packets") > counter(&u, "rx_batches"),
        "no batch of more than one datagram: {u}"
    );
    assert!(
        counter(&u, "gro_receives") > 0,
        "no UDP GRO message from A's GSO sends: {u}"
    );

    let v6 = p
        .transfer(&binary(), Side::A, B_SITE6, 8_000_000, 45)
        .unwrap();
    assert_eq!(v6["ok"], true, "{v6}");
    assert!(
        tun_counter("gro_writes") > writes4,
        "no coalesced TUN write (IPv6)"
    );
    assert_eq!(tun_counter("gro_fallbacks"), 0);

    let b = p.tunnel(Side::B).unwrap();
    assert_eq!(counter(&b, "drops_total"), 0, "{b}");
    assert!(counter(&b, "rx_bytes") > 58_000_000, "{b}");
}

/// Two data-path workers on each side (`workers = 2`: a two-queue TUN device and two `SO_REUSEPORT` sockets
/// per uplink): twelve TCP transfers at once hash over both of A's TUN queues, so both outbound workers seal
/// with the one SA (its sequence numbers shared); B's anti-replay window absorbs their interleaving (no
/// replay drop), and every transfer arrives intact and in order (TCP content verified).
#[test]
fn two_workers_share_the_sa_and_keep_every_flow_intact() {
    if !netns_ready(
        "two_workers_share_the_sa_and_keep_every_flow_intact",
        &["ip", "ping"],
    ) {
        return;
    }
    let p = pair_with(|o| o.workers = Some(2));
    let workers = |side| p.show(side, "tunnels").unwrap()["tun"]["workers"].clone();
    assert_eq!(
        workers(Side::A).as_array().map(Vec::len),
        Some(2),
        "{}",
        workers(Side::A)
    );
    let results: Vec<serde_json::Value> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..12u16)
            .map(|i| {
                let p = &p;
                s.spawn(move || {
                    p.transfer_port(
                        &binary(),
                        Side::A,
                        B_SITE4,
                        5100 + i,
                        3_000_000,
                        100 + i as u64,
                    )
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for v in &results {
        assert_eq!(v["ok"], true, "{v}");
    }
    let a = workers(Side::A);
    eprintln!("A's workers: {a}");
    for (i, w) in a.as_array().unwrap().iter().enumerate() {
        assert!(
            counter(w, "tun_reads") > 0,
            "A's worker {i} read nothing from its TUN queue: {a}"
        );
    }
    let b = p.tunnel(Side::B).unwrap();
    assert_eq!(drop_count(&b, "replay"), 0, "{b}");
    assert_eq!(counter(&b, "drops_total"), 0, "{b}");
    assert!(counter(&b, "rx_bytes") >= 36_000_000, "{b}");
}
