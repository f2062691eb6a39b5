//! SAs replaced while traffic flows, through two real data paths on real TUN devices: rekeys without a lost or
//! reordered packet, a tunnel that starts with no SA, a peer that moves (NAT-T), IKE sent from the uplink, and
//! an outbound SA deleted before its successor exists (packets held, then sent in order, or dropped as `no_sa`).
//!
//! Each test re-runs itself inside a throwaway network namespace `T` (deleted afterwards, also on failure) with
//! a second one, `N`, next to it:
//!
//! ```text
//!   namespace N (ip_forward)                 |  namespace T (the test process)
//!   test <-> sa-s0 (fd held by the test)     |
//!            192.0.2.0/24 via sa-s0          |
//!            sa-a0 169.254.60.1/30 <-> data path A =(ESP in UDP, 127.0.0.1)= data path B <-> sa-b0 169.254.60.2/30
//!                                            |                                   192.0.2.0/24 via sa-b0, test sockets
//! ```
//! A to B: the test writes IPv4/UDP packets from 192.0.2.10 to 169.254.60.2 into `sa-s0`; N forwards them into
//! `sa-a0`, A seals them, B opens them into `sa-b0`, and T delivers them to the test's socket. B to A: the
//! test's socket in T sends to 192.0.2.10 through `sa-b0`; they come out of A into N, which forwards them to
//! `sa-s0`, where the test reads them. Every payload carries a sequence number.
//!
//! Needs root and `ip`. Without them the tests skip with a loud message, except under `CI=true`, where they
//! fail. Only TEST-NET, link-local and loopback addresses are used.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use braid_crypto::{Cipher, InboundSa, OutboundSa, SaKey, Spi};
use braid_dataplane::engine::IkeDatagram;
use braid_dataplane::vnet::VNET_HDR_LEN;
use braid_dataplane::{
    open_uplink_sockets, sys, Dataplane, DataplaneSpec, DropReason, FibBuilder, FibCell,
    InsideAddr, Liveness, NextHopGroup, Prefix, SaControl, SaInfo, Tun, TunStats, TunnelIo,
    TunnelStats, UplinkIo, UplinkSocketSpec, UplinkStats,
};

/// Set (to `test:N`) in the re-run that executes inside the namespace.
const CHILD_ENV: &str = "BRAID_SA_NETNS_CHILD";

const SITE: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
const A_INSIDE: Ipv4Addr = Ipv4Addr::new(169, 254, 60, 1);
const B_INSIDE: Ipv4Addr = Ipv4Addr::new(169, 254, 60, 2);
/// A to B: from SITE:AB_SPORT to B_INSIDE:AB_DPORT. B to A: from B_INSIDE:BA_SPORT to SITE:BA_DPORT.
const AB_SPORT: u16 = 7000;
const AB_DPORT: u16 = 7001;
const BA_SPORT: u16 = 7002;
const BA_DPORT: u16 = 7003;
const PAYLOAD: usize = 120;

// ---------------------------------------------------------------------------------------------------------
// Running inside throwaway namespaces.

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

fn have_ip() -> bool {
    Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `ip ARGS`, panicking on failure.
fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Deletes the namespaces when dropped (also during a panic).
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip")
                .args(["netns", "del", n])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Runs `body` inside a fresh namespace `T` with a peer namespace `N` (its name is the argument): re-runs this
/// test binary, filtered to `test`, under `ip netns exec T`. Returns without running when root or `ip` is
/// missing (loudly; under CI=true it panics instead).
fn in_namespaces(test: &str, body: fn(&str)) {
    if let Ok(v) = std::env::var(CHILD_ENV) {
        let (name, peer) = v.split_once(':').expect("child marker");
        assert_eq!(name, test, "re-run filtered to another test");
        return body(peer);
    }
    let mut missing = Vec::new();
    if !is_root() {
        missing.push("root");
    }
    if !std::path::Path::new("/dev/net/tun").exists() {
        missing.push("/dev/net/tun");
    }
    if !have_ip() {
        missing.push("ip");
    }
    if !missing.is_empty() {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!("CI=true and namespace test `{test}` cannot run: missing {missing:?}");
        }
        eprintln!("\n!!!!! SKIPPING namespace test `{test}`: missing {missing:?}. Run as root (scripts/test.sh does). Under CI=true this FAILS. !!!!!\n");
        return;
    }
    let tag: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(12)
        .collect();
    let t = format!("braid-{}-{tag}-t", std::process::id());
    let n = format!("braid-{}-{tag}-n", std::process::id());
    let _cleanup = Namespaces(vec![t.clone(), n.clone()]);
    for ns in [&t, &n] {
        ip(&["netns", "add", ns]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let exe = std::env::current_exe().expect("test binary path");
    let out = Command::new("ip")
        .args(["netns", "exec", &t])
        .arg(exe)
        .args([test, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{test}:{n}"))
        .stdin(Stdio::null())
        .output()
        .expect("re-running the test in its namespace");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- {test} in namespace {t} ---\n{stdout}\n{stderr}");
    assert!(
        out.status.success(),
        "{test} failed in its namespace ({})",
        out.status
    );
    assert!(
        stdout.contains("1 passed"),
        "the re-run did not run {test}:\n{stdout}"
    );
}

// ---------------------------------------------------------------------------------------------------------
// Two data paths back to back.

/// The SAs of one generation `k`: A to B (A's outbound, B's inbound) and B to A.
struct Generation {
    ab: Spi,
    ba: Spi,
    key_ab: SaKey,
    key_ba: SaKey,
}

impl Generation {
    fn new(k: u32) -> Generation {
        let key = |dir: u8| {
            let mut m = [0u8; braid_crypto::KEYMAT_LEN];
            for (i, b) in m.iter_mut().enumerate() {
                *b = (i as u8).wrapping_mul(31) ^ (k as u8).wrapping_mul(7) ^ dir;
            }
            SaKey::new(Cipher::Aes256Gcm16, &m).unwrap()
        };
        Generation {
            ab: Spi(0x0a0b_0000 + k),
            ba: Spi(0x0b0a_0000 + k),
            key_ab: key(0xab),
            key_ba: key(0xba),
        }
    }
    fn a_out(&self) -> OutboundSa {
        OutboundSa::new(self.ab, &self.key_ab, true)
    }
    fn b_in(&self) -> InboundSa {
        InboundSa::new(self.ab, &self.key_ab, true, 1024)
    }
    fn b_out(&self) -> OutboundSa {
        OutboundSa::new(self.ba, &self.key_ba, true)
    }
    fn a_in(&self) -> InboundSa {
        InboundSa::new(self.ba, &self.key_ba, true, 1024)
    }
}

struct Side {
    dataplane: Dataplane,
    control: SaControl,
    stats: Arc<TunnelStats>,
    uplink: Arc<UplinkStats>,
    tun_stats: Arc<TunStats>,
    addr: SocketAddr,
}

struct Rig {
    a: Side,
    b: Side,
    /// `sa-s0` in N: A-to-B packets are written here, B-to-A packets read here.
    site: Arc<File>,
    /// In T: receives A-to-B payloads.
    b_rx: UdpSocket,
    /// In T: sends B-to-A payloads.
    b_tx: UdpSocket,
    ike_b: crossbeam_channel::Receiver<IkeDatagram>,
}

/// Data-path workers per direction on both sides: SA commands must reach every worker, and a flow must stay in
/// order with several.
const WORKERS: usize = 2;

fn sockets(local: SocketAddr, count: usize) -> Vec<UdpSocket> {
    open_uplink_sockets(
        &UplinkSocketSpec {
            local,
            device: None,
            fwmark: None,
            socket_buffer: 4 << 20,
        },
        count,
    )
    .unwrap_or_else(|e| panic!("socket {local}: {e}"))
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[allow(clippy::too_many_arguments)]
fn side(
    tun: Vec<File>,
    sockets: Vec<UdpSocket>,
    remote: SocketAddr,
    route: &str,
    allowed: &str,
    sas: Option<(OutboundSa, InboundSa)>,
    ike: Option<crossbeam_channel::Sender<IkeDatagram>>,
) -> Side {
    let addr = sockets[0].local_addr().unwrap();
    let stats = Arc::new(TunnelStats::default());
    let uplink = Arc::new(UplinkStats::default());
    let tun_stats = Arc::new(TunStats::default());
    let mut fib = FibBuilder::new();
    fib.insert(
        route.parse::<Prefix>().unwrap(),
        Arc::new(NextHopGroup::single(0)),
    );
    let (outbound, inbound) = match sas {
        Some((o, i)) => (Some(o), vec![i]),
        None => (None, Vec::new()),
    };
    let dataplane = Dataplane::start(DataplaneSpec {
        tun,
        uplinks: vec![UplinkIo {
            name: "lo".into(),
            sockets,
            stats: uplink.clone(),
            cap: None,
        }],
        tunnels: vec![TunnelIo {
            name: "t0".into(),
            uplink: 0,
            remote,
            outbound,
            inbound,
            allowed_sources: vec![allowed.parse().unwrap()],
            max_inner: braid_dataplane::tunnel_mtu(1500, false),
            icmp_source_v4: None,
            icmp_source_v6: None,
            stats: stats.clone(),
        }],
        fib: Arc::new(FibCell::new(fib.build())),
        tun_stats: tun_stats.clone(),
        ike,
        spray: false,
        flow_seed: 1,
        liveness: Liveness::new(1),
    })
    .expect("starting a data path");
    let control = dataplane.sa_control();
    Side {
        dataplane,
        control,
        stats,
        uplink,
        tun_stats,
        addr,
    }
}

/// Builds the topology of the module docs in T (this process's namespace) and `n`; with generation 0's SAs
/// installed from the start, or none.
fn rig(n: &str, with_sas: bool) -> Rig {
    let create = |name: &str, addrs: &[InsideAddr], queues: usize| {
        let tun = Tun::create_queues(name, 1400, addrs, queues)
            .unwrap_or_else(|e| panic!("TUN {name}: {e}"));
        assert_eq!(tun.queues(), queues, "TUN {name}: multi-queue");
        tun.into_files()
    };
    let a_tun = create("sa-a0", &[], WORKERS);
    let site = create("sa-s0", &[], 1).remove(0);
    let b_tun = create(
        "sa-b0",
        &[InsideAddr {
            addr: B_INSIDE.into(),
            prefix_len: 30,
        }],
        WORKERS,
    );
    ip(&["link", "set", "sa-b0", "txqueuelen", "10000"]);
    ip(&["route", "add", "192.0.2.0/24", "dev", "sa-b0"]);
    // A's TUN and the test's site TUN move to N (the descriptors stay attached); N routes between them.
    for dev in ["sa-a0", "sa-s0"] {
        ip(&["link", "set", dev, "netns", n]);
        ip(&["-n", n, "link", "set", dev, "up", "txqueuelen", "10000"]);
    }
    ip(&[
        "-n",
        n,
        "addr",
        "add",
        &format!("{A_INSIDE}/30"),
        "dev",
        "sa-a0",
    ]);
    ip(&["-n", n, "route", "add", "192.0.2.0/24", "dev", "sa-s0"]);
    let out = Command::new("ip")
        .args(["netns", "exec", n, "sh", "-c"])
        .arg("echo 1 > /proc/sys/net/ipv4/ip_forward")
        .status()
        .unwrap();
    assert!(out.success(), "enabling forwarding in {n}");

    let a_sock = sockets(loopback(), WORKERS);
    let b_sock = sockets(loopback(), WORKERS);
    let (a_addr, b_addr) = (
        a_sock[0].local_addr().unwrap(),
        b_sock[0].local_addr().unwrap(),
    );
    let g = Generation::new(0);
    let (ike_tx, ike_b) = crossbeam_channel::bounded(16);
    let a = side(
        a_tun,
        a_sock,
        b_addr,
        "169.254.60.0/30",
        "169.254.60.0/30",
        with_sas.then(|| (g.a_out(), g.a_in())),
        None,
    );
    let b = side(
        b_tun,
        b_sock,
        a_addr,
        "192.0.2.0/24",
        "192.0.2.0/24",
        with_sas.then(|| (g.b_out(), g.b_in())),
        Some(ike_tx),
    );
    Rig {
        a,
        b,
        site: Arc::new(site),
        b_rx: sockets(SocketAddr::from((B_INSIDE, AB_DPORT)), 1).remove(0),
        b_tx: sockets(SocketAddr::from((B_INSIDE, BA_SPORT)), 1).remove(0),
        ike_b,
    }
}

/// An IPv4/UDP packet (UDP checksum 0: none) carrying `seq` and padding.
fn udp4(src: Ipv4Addr, sport: u16, dst: Ipv4Addr, dport: u16, seq: u64) -> Vec<u8> {
    let total = 20 + 8 + PAYLOAD;
    let mut p = vec![0u8; total];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(total as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 17;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let mut sum: u32 = p[..20]
        .chunks(2)
        .map(|w| u16::from_be_bytes([w[0], w[1]]) as u32)
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    p[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    p[24..26].copy_from_slice(&((8 + PAYLOAD) as u16).to_be_bytes());
    p[28..36].copy_from_slice(&seq.to_be_bytes());
    p
}

/// The sequence number of a B-to-A packet read from the site TUN, if that is what it is.
fn parse_ba(p: &[u8]) -> Option<u64> {
    if p.len() < 20 || p[0] >> 4 != 4 || p[9] != 17 {
        return None;
    }
    let u = &p[((p[0] & 0xf) as usize) * 4..];
    if u.len() < 16 || u16::from_be_bytes([u[2], u[3]]) != BA_DPORT {
        return None;
    }
    Some(u64::from_be_bytes(u[8..16].try_into().unwrap()))
}

fn payload(seq: u64) -> [u8; PAYLOAD] {
    let mut p = [0u8; PAYLOAD];
    p[..8].copy_from_slice(&seq.to_be_bytes());
    p
}

impl Rig {
    fn send_ab(&self, seq: u64) {
        // The TUN device carries a virtio-net header in front of every packet: a zero one, a finished packet.
        let mut p = vec![0u8; VNET_HDR_LEN];
        p.extend_from_slice(&udp4(SITE, AB_SPORT, B_INSIDE, AB_DPORT, seq));
        (&*self.site)
            .write_all(&p)
            .expect("writing to the site TUN");
    }

    fn send_ba(&self, seq: u64) {
        self.b_tx
            .send_to(&payload(seq), SocketAddr::from((SITE, BA_DPORT)))
            .expect("sending B to A");
    }

    /// The next A-to-B sequence number B delivered, within `timeout`.
    fn recv_ab(&self, timeout: Duration) -> Option<u64> {
        recv_ab(&self.b_rx, timeout)
    }

    /// The next B-to-A sequence number A delivered, within `timeout`.
    fn recv_ba(&self, timeout: Duration) -> Option<u64> {
        recv_ba(&self.site, timeout)
    }
}

fn recv_ab(s: &UdpSocket, timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        match s.recv(&mut buf) {
            Ok(n) if n >= 8 => return Some(u64::from_be_bytes(buf[..8].try_into().unwrap())),
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("receiving A to B: {e}"),
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        sys::poll_one(
            s.as_raw_fd(),
            libc::POLLIN,
            left.min(Duration::from_millis(50)),
        )
        .unwrap();
    }
}

fn recv_ba(site: &File, timeout: Duration) -> Option<u64> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    loop {
        match (&*site).read(&mut buf) {
            Ok(n) => {
                // Behind the virtio-net header (no offloads on the site TUN: always a zero one).
                if let Some(seq) = parse_ba(buf.get(VNET_HDR_LEN..n).unwrap_or_default()) {
                    return Some(seq);
                }
                continue; // the kernel's own packets (IPv6 router solicitations, ...)
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("reading the site TUN: {e}"),
        }
        let left = deadline.checked_duration_since(Instant::now())?;
        sys::poll_one(
            site.as_raw_fd(),
            libc::POLLIN,
            left.min(Duration::from_millis(50)),
        )
        .unwrap();
    }
}

/// Polls `cond` every 10 ms for up to 5 s; panics with `what` and `diag()` if it never holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool, diag: impl Fn() -> String) {
    let start = Instant::now();
    while !cond() {
        if start.elapsed() > Duration::from_secs(5) {
            panic!("timed out waiting for: {what}\n{}", diag());
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn sas(c: &SaControl) -> braid_dataplane::TunnelSas {
    c.sas(0).expect("tunnel 0")
}

fn inbound_spis(c: &SaControl) -> Vec<Spi> {
    sas(c).inbound.iter().map(|s| s.spi).collect()
}

fn inbound(c: &SaControl, spi: Spi) -> Option<SaInfo> {
    sas(c).inbound.into_iter().find(|s| s.spi == spi)
}

const APPLIED: Duration = Duration::from_secs(2);

// ---------------------------------------------------------------------------------------------------------
// A steady flow each way while the tunnel is rekeyed, make-before-break.

/// What a receiver saw: packets, and any that came out of order (not exactly the next sequence number).
#[derive(Debug, Default)]
struct Seen {
    received: u64,
    out_of_order: Vec<(u64, u64)>,
}

const FLOW: u64 = 20_000;
const RATE_PPS: u64 = 4_000;
const REKEYS: u32 = 5;

#[test]
fn rekey_without_loss_or_reordering() {
    in_namespaces("rekey_without_loss_or_reordering", |n| {
        let rig = Arc::new(rig(n, true));
        let sent = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);

        // Senders: paced, one per direction.
        let senders: Vec<_> = (0..2)
            .map(|dir| {
                let (rig, sent) = (rig.clone(), sent.clone());
                thread::spawn(move || {
                    let start = Instant::now();
                    for seq in 0..FLOW {
                        let due = start + Duration::from_micros(seq * 1_000_000 / RATE_PPS);
                        if let Some(wait) = due.checked_duration_since(Instant::now()) {
                            thread::sleep(wait);
                        }
                        if dir == 0 {
                            rig.send_ab(seq);
                        } else {
                            rig.send_ba(seq);
                        }
                        sent[dir].store(seq + 1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        // Receivers: until every packet is in, or nothing arrives for 3 s.
        let receivers: Vec<_> = (0..2)
            .map(|dir| {
                let rig = rig.clone();
                thread::spawn(move || {
                    let mut seen = Seen::default();
                    let mut next = 0u64;
                    while seen.received < FLOW {
                        let got = if dir == 0 {
                            rig.recv_ab(Duration::from_secs(3))
                        } else {
                            rig.recv_ba(Duration::from_secs(3))
                        };
                        let Some(seq) = got else { break };
                        seen.received += 1;
                        if seq != next && seen.out_of_order.len() < 20 {
                            seen.out_of_order.push((next, seq));
                        }
                        next = seq + 1;
                    }
                    seen
                })
            })
            .collect();

        // Rekey REKEYS times, evenly through the flow, make-before-break; tally what each retired SA opened.
        let (a, b) = (&rig.a.control, &rig.b.control);
        let diag = || {
            format!(
                "A: {:?} drops {:?}\nB: {:?} drops {:?}\nA uplink drops {:?}, B uplink drops {:?}\n\
                 TUN drops (before a tunnel) A {:?}, B {:?}",
                sas(a),
                rig.a.stats.drops.nonzero().collect::<Vec<_>>(),
                sas(b),
                rig.b.stats.drops.nonzero().collect::<Vec<_>>(),
                rig.a.uplink.drops.nonzero().collect::<Vec<_>>(),
                rig.b.uplink.drops.nonzero().collect::<Vec<_>>(),
                rig.a.tun_stats.drops.nonzero().collect::<Vec<_>>(),
                rig.b.tun_stats.drops.nonzero().collect::<Vec<_>>(),
            )
        };
        let mut retired = [0u64; 2]; // packets opened by removed inbound SAs: B (A to B), A (B to A)
        for k in 1..=REKEYS {
            let at = FLOW * k as u64 / (REKEYS as u64 + 1);
            wait_for(
                "the flow to reach the next rekey",
                || sent[0].load(Ordering::Relaxed) >= at && sent[1].load(Ordering::Relaxed) >= at,
                diag,
            );
            let (old, new) = (Generation::new(k - 1), Generation::new(k));
            // B (responder) installs its new inbound SA, and only then answers.
            b.install_inbound(0, new.b_in())
                .wait_timeout(APPLIED)
                .unwrap();
            // A (initiator) installs its new inbound SA and switches its outbound SA.
            a.install_inbound(0, new.a_in())
                .wait_timeout(APPLIED)
                .unwrap();
            a.set_outbound(0, new.a_out())
                .wait_timeout(APPLIED)
                .unwrap();
            // B switches its outbound SA.
            b.set_outbound(0, new.b_out())
                .wait_timeout(APPLIED)
                .unwrap();
            assert_eq!(sas(a).outbound.unwrap().spi, new.ab);
            assert_eq!(sas(b).outbound.unwrap().spi, new.ba);
            assert_eq!(
                inbound_spis(b),
                vec![old.ab, new.ab],
                "old and new live at once"
            );
            assert_eq!(inbound_spis(a), vec![old.ba, new.ba]);
            // The new SAs carry the traffic, both ways.
            wait_for(
                "packets on the new SAs",
                || {
                    inbound(b, new.ab).is_some_and(|s| s.packets > 0)
                        && inbound(a, new.ba).is_some_and(|s| s.packets > 0)
                },
                diag,
            );
            // Grace period for packets in flight on the old SAs, then the old inbound halves go.
            thread::sleep(Duration::from_millis(200));
            retired[0] += inbound(b, old.ab).unwrap().packets;
            retired[1] += inbound(a, old.ba).unwrap().packets;
            b.remove_inbound(0, old.ab).wait_timeout(APPLIED).unwrap();
            a.remove_inbound(0, old.ba).wait_timeout(APPLIED).unwrap();
            assert_eq!(inbound_spis(b), vec![new.ab]);
            assert_eq!(inbound_spis(a), vec![new.ba]);
            let out = sas(a).outbound.unwrap();
            assert!(
                out.packets > 0 && out.seq == out.packets,
                "A's new outbound SA: {out:?}"
            );
            println!(
                "rekey {k}: at packet {at}, A->B now on {}, B->A on {}; old SAs opened {} and {} so far",
                new.ab, new.ba, retired[0], retired[1]
            );
        }

        for s in senders {
            s.join().unwrap();
        }
        let seen: Vec<Seen> = receivers.into_iter().map(|r| r.join().unwrap()).collect();
        let last = Generation::new(REKEYS);
        println!("A to B: {:?}\nB to A: {:?}\n{}", seen[0], seen[1], diag());
        for (dir, s) in seen.iter().enumerate() {
            assert_eq!(
                s.received,
                FLOW,
                "direction {dir}: packets lost\n{}",
                diag()
            );
            assert!(
                s.out_of_order.is_empty(),
                "direction {dir}: out of order {:?}",
                s.out_of_order
            );
        }
        // Every packet was opened by exactly one SA: the retired ones plus the current one.
        assert_eq!(retired[0] + inbound(b, last.ab).unwrap().packets, FLOW);
        assert_eq!(retired[1] + inbound(a, last.ba).unwrap().packets, FLOW);
        assert!(retired.iter().all(|&r| r > 0));
        for side in [&rig.a, &rig.b] {
            assert_eq!(side.stats.drops.total(), 0, "{}", diag());
            assert_eq!(side.uplink.drops.total(), 0, "{}", diag());
        }
    });
}

// ---------------------------------------------------------------------------------------------------------
// A tunnel with no SA, then SAs installed; the peer moves; IKE from the uplink socket.

#[test]
fn no_sa_then_installed_remote_moves_and_ike_goes_out() {
    in_namespaces("no_sa_then_installed_remote_moves_and_ike_goes_out", |n| {
        let rig = rig(n, false);
        let (a, b) = (&rig.a.control, &rig.b.control);
        assert_eq!(sas(a).outbound, None);
        assert!(sas(a).inbound.is_empty());

        // No SA: every packet A routes into the tunnel is dropped and counted, and none reaches B.
        for seq in 0..100 {
            rig.send_ab(seq);
        }
        wait_for(
            "100 no_sa drops on A",
            || rig.a.stats.drops.get(DropReason::NoSa) >= 100,
            || format!("{:?}", rig.a.stats.drops.nonzero().collect::<Vec<_>>()),
        );
        assert_eq!(rig.recv_ab(Duration::from_millis(200)), None);
        assert_eq!(rig.a.stats.tx_packets.load(Ordering::Relaxed), 0);
        for seq in 0..10 {
            rig.send_ba(seq);
        }
        wait_for(
            "10 no_sa drops on B",
            || rig.b.stats.drops.get(DropReason::NoSa) >= 10,
            || format!("{:?}", rig.b.stats.drops.nonzero().collect::<Vec<_>>()),
        );

        // SAs installed: traffic flows both ways, in order.
        let g = Generation::new(0);
        b.install_inbound(0, g.b_in())
            .wait_timeout(APPLIED)
            .unwrap();
        a.install_inbound(0, g.a_in())
            .wait_timeout(APPLIED)
            .unwrap();
        a.set_outbound(0, g.a_out()).wait_timeout(APPLIED).unwrap();
        b.set_outbound(0, g.b_out()).wait_timeout(APPLIED).unwrap();
        // An SPI already in use is refused.
        assert_eq!(
            b.install_inbound(0, g.b_in()).wait_timeout(APPLIED),
            Err(braid_dataplane::SaError::SpiInUse {
                spi: g.ab,
                tunnel: 0
            })
        );
        for seq in 100..200 {
            rig.send_ab(seq);
            rig.send_ba(seq);
        }
        for seq in 100..200 {
            assert_eq!(rig.recv_ab(Duration::from_secs(2)), Some(seq));
            assert_eq!(rig.recv_ba(Duration::from_secs(2)), Some(seq));
        }
        assert_eq!(inbound(b, g.ab).unwrap().packets, 100);
        assert_eq!(sas(a).outbound.unwrap().seq, 100);

        // The peer moves (a NAT rebinding): A sends where it is told, from the next packet on.
        // A plain socket, not an uplink one: without UDP GRO every datagram arrives on its own.
        let moved = UdpSocket::bind(loopback()).unwrap();
        let moved_addr = moved.local_addr().unwrap();
        a.set_remote(0, moved_addr).wait_timeout(APPLIED).unwrap();
        assert_eq!(sas(a).remote, moved_addr);
        let b_before = rig.b.uplink.rx_packets.load(Ordering::Relaxed);
        for seq in 200..250 {
            rig.send_ab(seq);
        }
        let mut buf = [0u8; 2048];
        for _ in 200..250 {
            assert!(
                sys::poll_one(moved.as_raw_fd(), libc::POLLIN, Duration::from_secs(2)).unwrap(),
                "ESP at the new remote"
            );
            let n = moved.recv(&mut buf).unwrap();
            assert_eq!(&buf[..4], &g.ab.to_be_bytes(), "ESP with A's SPI");
            assert!(n > 8 + PAYLOAD);
        }
        assert_eq!(rig.recv_ab(Duration::from_millis(200)), None);
        assert_eq!(
            rig.b.uplink.rx_packets.load(Ordering::Relaxed),
            b_before,
            "nothing reached the old address"
        );
        // Back to B: the flow resumes where B is (the packets sent to the other port never reached it).
        a.set_remote(0, rig.b.addr).wait_timeout(APPLIED).unwrap();
        for seq in 250..260 {
            rig.send_ab(seq);
        }
        for seq in 250..260 {
            assert_eq!(rig.recv_ab(Duration::from_secs(2)), Some(seq));
        }

        // Clear: both halves gone; packets are no_sa again on A, unknown_spi on B.
        let no_sa = rig.a.stats.drops.get(DropReason::NoSa);
        a.clear(0).wait_timeout(APPLIED).unwrap();
        assert_eq!(sas(a).outbound, None);
        assert!(sas(a).inbound.is_empty());
        rig.send_ab(300);
        wait_for(
            "a no_sa drop after clear",
            || rig.a.stats.drops.get(DropReason::NoSa) > no_sa,
            String::new,
        );
        rig.send_ba(300);
        wait_for(
            "B's packet to a cleared A counted as unknown_spi",
            || rig.a.uplink.drops.get(DropReason::UnknownSpi) >= 1,
            String::new,
        );

        // IKE leaves from A's uplink socket, behind the non-ESP marker, and B hands it to its IKE channel.
        let ike = rig.a.dataplane.ike_sender();
        assert_eq!(ike.local_addr(0).unwrap(), rig.a.addr);
        ike.send(0, rig.b.addr, b"an IKE_SA_INIT").unwrap();
        let got = rig
            .ike_b
            .recv_timeout(Duration::from_secs(2))
            .expect("IKE message at B");
        assert_eq!(got.from, rig.a.addr);
        assert_eq!(got.uplink, 0);
        assert_eq!(got.message, b"an IKE_SA_INIT");
        assert_eq!(rig.a.uplink.ike_sent.load(Ordering::Relaxed), 1);
        assert_eq!(rig.b.uplink.ike_received.load(Ordering::Relaxed), 1);
        assert!(ike.send(5, rig.b.addr, b"x").is_err(), "unknown uplink");
        ike.send_keepalive(0, rig.b.addr).unwrap();
        wait_for(
            "a NAT keepalive at B",
            || rig.b.uplink.nat_keepalives.load(Ordering::Relaxed) == 1,
            String::new,
        );
    });
}

// ---------------------------------------------------------------------------------------------------------
// The outbound SA deleted before the next one exists (a peer that deletes a child SA, then creates one).

fn held(side: &Side) -> u64 {
    side.stats.held_for_sa.load(Ordering::Relaxed)
}

/// Installs generation `k` for A to B (B's inbound, then A's outbound).
fn next_ab(rig: &Rig, k: u32) {
    let g = Generation::new(k);
    rig.b
        .control
        .install_inbound(0, g.b_in())
        .wait_timeout(APPLIED)
        .unwrap();
    rig.a
        .control
        .set_outbound(0, g.a_out())
        .wait_timeout(APPLIED)
        .unwrap();
}

#[test]
fn packets_wait_for_the_next_outbound_sa_in_order_bounded_and_not_forever() {
    in_namespaces(
        "packets_wait_for_the_next_outbound_sa_in_order_bounded_and_not_forever",
        |n| {
            let rig = rig(n, true);
            let a = &rig.a.control;
            let drops = || format!("{:?}", rig.a.stats.drops.nonzero().collect::<Vec<_>>());
            for seq in 0..100 {
                rig.send_ab(seq);
            }
            for seq in 0..100 {
                assert_eq!(rig.recv_ab(Duration::from_secs(2)), Some(seq));
            }

            // Deleted with a hold: the next packets wait, none is lost, none goes out.
            a.remove_outbound(0, Duration::from_secs(5))
                .wait_timeout(APPLIED)
                .unwrap();
            assert_eq!(sas(a).outbound, None);
            for seq in 100..400 {
                rig.send_ab(seq);
            }
            wait_for("300 packets held on A", || held(&rig.a) == 300, drops);
            assert_eq!(rig.recv_ab(Duration::from_millis(200)), None);
            // The next SA: the held packets go first, in order, then the new ones.
            next_ab(&rig, 1);
            for seq in 400..500 {
                rig.send_ab(seq);
            }
            for seq in 100..500 {
                assert_eq!(
                    rig.recv_ab(Duration::from_secs(2)),
                    Some(seq),
                    "{}",
                    drops()
                );
            }
            assert_eq!(rig.a.stats.drops.get(DropReason::NoSa), 0, "{}", drops());
            assert_eq!(sas(a).outbound.unwrap().packets, 400);

            // A hold that ends with no SA: what it held is dropped as no_sa, never sent later.
            a.remove_outbound(0, Duration::from_millis(300))
                .wait_timeout(APPLIED)
                .unwrap();
            for seq in 500..600 {
                rig.send_ab(seq);
            }
            wait_for(
                "100 no_sa drops when the hold ends",
                || rig.a.stats.drops.get(DropReason::NoSa) == 100,
                drops,
            );
            assert_eq!(held(&rig.a), 400);
            next_ab(&rig, 2);
            for seq in 600..610 {
                rig.send_ab(seq);
            }
            for seq in 600..610 {
                assert_eq!(
                    rig.recv_ab(Duration::from_secs(2)),
                    Some(seq),
                    "{}",
                    drops()
                );
            }

            // Bounded: past HOLD_PACKETS per worker, packets are dropped as no_sa at once; the rest go out in
            // order with the next SA.
            let (held_before, no_sa_before) =
                (held(&rig.a), rig.a.stats.drops.get(DropReason::NoSa));
            a.remove_outbound(0, Duration::from_secs(10))
                .wait_timeout(APPLIED)
                .unwrap();
            let burst = 2 * braid_dataplane::engine::HOLD_PACKETS * WORKERS as u64;
            for seq in 1000..1000 + burst {
                rig.send_ab(seq);
                if seq % 200 == 0 {
                    // Paced a little: the site TUN's queue must not overflow before A reads it.
                    thread::sleep(Duration::from_millis(2));
                }
            }
            let counted = || {
                held(&rig.a) - held_before + rig.a.stats.drops.get(DropReason::NoSa) - no_sa_before
            };
            wait_for(
                "every packet of the burst held or dropped",
                || counted() == burst,
                drops,
            );
            let kept = held(&rig.a) - held_before;
            assert!(
                kept > 0 && kept <= braid_dataplane::engine::HOLD_PACKETS * WORKERS as u64,
                "held {kept} of {burst}"
            );
            next_ab(&rig, 3);
            let mut last = None;
            for _ in 0..kept {
                let seq = rig.recv_ab(Duration::from_secs(2));
                assert!(
                    seq.is_some(),
                    "held packets delivered: after {last:?}, {}",
                    drops()
                );
                assert!(seq > last, "in order: {seq:?} after {last:?}");
                last = seq;
            }
            assert_eq!(
                rig.recv_ab(Duration::from_millis(200)),
                None,
                "nothing beyond what was held"
            );
        },
    );
}
