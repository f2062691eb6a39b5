//! `braid bench`: the data path's per-packet work on synthetic traffic, without root.
//!
//! Two gateways, A and B, are built in memory as a configuration would build them: four tunnels between
//! them (SPIs and keys mirrored), a FIB on each side with a few prefixes and one 4-member next-hop group
//! (equal weights) towards the other site, [`Liveness`], per-tunnel and per-uplink counters. A batch of
//! synthetic inner IPv4 packets (half UDP, half TCP, [`FLOWS`] flows over different addresses and ports, all
//! of the chosen size) then goes through the same functions the engine calls:
//!
//! - **outbound** (A's TUN side to A's uplink): [`wire::inspect`], [`Fib::lookup`] in the published
//!   snapshot, [`Liveness::members`], [`flow_hash_inspected`] + [`scheduler::pick`] (the new-flow path of
//!   the engine's flow table, which is private to `engine.rs`), the tunnel-MTU check, [`OutboundSa::seal`]
//!   in place, the counters, and the datagram queued as a (tunnel, remote, range) entry: the shape a
//!   `sendmmsg` batch takes. The kernel writes the UDP and IP headers, so no framing beyond that is done in
//!   user space. Between rounds the 40 header octets of each packet are restored from a template (sealing
//!   encrypted them); the payload stays ciphertext, which costs the AEAD the same.
//! - **inbound** (A's uplink to A's TUN side): each datagram sealed by B is copied into the receive buffer
//!   (the stand-in for `recv`'s copy), then [`classify`] (RFC 3948), the SPI lookup (a `HashMap` as in the
//!   engine), [`InboundSa::open`] with the default 1024-packet replay window, the counters, the inner-packet
//!   checks (version, length, the inner source allowed on that tunnel: the engine's own `check_inner`
//!   and `source_allowed`) and the packet queued for the TUN write. The SAs are created anew
//!   each round (the batch's sequence numbers repeat), 4 per round of [`BATCH`] packets.
//! - **raw ring AEAD seal** over the same number of octets with an 8-octet AAD: the ceiling.
//!
//! Each direction runs on one thread, so the figures are per core. `--loopback` sends the sealed datagrams
//! for real, from a sender thread (A's outbound path + `send_to`) to a receiver thread (B's inbound path
//! after `recv_from`) over UDP sockets on 127.0.0.1: one system call per packet with std's `UdpSocket`
//! until the fast path's batched I/O (`sendmmsg`/`recvmmsg`, GSO/GRO) lands in `dataplane::sys`.
//!
//! Left out: the uplink cap (the shaper; benches run uncapped), ICMP too-big generation, IPv6, the TUN device.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use braid_crypto::{
    classify, sealed_len, Cipher, InboundSa, NextHeader, OutboundSa, SaKey, Spi, UdpPayload,
    HEADROOM, KEYMAT_LEN, MAX_TAILROOM,
};
use braid_dataplane::engine::{check_inner, source_allowed, MAX_LIVE};
use braid_dataplane::flow::flow_hash_inspected;
use braid_dataplane::gso::Plan;
use braid_dataplane::scheduler;
use braid_dataplane::stats::add;
use braid_dataplane::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV4};
use braid_dataplane::wire::{self, Inner};
use braid_dataplane::{
    DropReason, Fib, FibBuilder, FibCell, Liveness, Member, NextHopGroup, Prefix, TunStats,
    TunnelStats, UplinkStats,
};
use serde::Serialize;

/// Packets per round: about 370 KiB of 1400-octet packets, within one core's L2 cache, as a batch of the
/// fast path would be.
pub const BATCH: usize = 256;
/// Distinct flows in a batch (half UDP, half TCP).
pub const FLOWS: usize = 64;
/// Tunnels between the two gateways, all in one next-hop group.
const TUNNELS: usize = 4;
/// The flow-hash seed of both gateways.
const FLOW_SEED: u64 = 0x5eed_b4a1_d000_0001;
/// Replay window of the inbound SAs (braid's default).
const REPLAY_WINDOW: u32 = 1024;
/// Smallest inner packet: an IPv4 header and a TCP header.
pub const MIN_SIZE: usize = 40;
/// Largest inner packet: sealed and UDP-encapsulated it must still fit one UDP datagram.
pub const MAX_SIZE: usize = 65_000;
/// Most segments of one TCP super-packet in the TSO round (a power of two, so it divides [`BATCH`]).
const TSO_SEGMENTS: usize = 32;
/// Octets restored from the template between rounds: the IPv4 and TCP/UDP headers.
const HEADER_LEN: usize = 40;

/// What `braid bench` runs.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub cipher: Cipher,
    /// Inner packet size in octets (IPv4 total length).
    pub size: usize,
    /// Seconds per measurement.
    pub secs: f64,
    pub json: bool,
    /// Real UDP sockets on 127.0.0.1 instead of the synthetic loop.
    pub loopback: bool,
}

/// One measured figure.
#[derive(Clone, Debug, Serialize)]
pub struct Rate {
    pub packets: u64,
    pub secs: f64,
    /// Inner (plaintext) octets per second, times 8, over 10^9 (synthetic: of the median round).
    pub gbit_s: f64,
    pub mpps: f64,
    pub ns_per_packet: f64,
    /// Synthetic only: `packets` over all rounds' time, preemptions included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_gbit_s: Option<f64>,
}

impl Rate {
    fn new(packets: u64, size: usize, elapsed: Duration) -> Rate {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let pps = packets as f64 / secs;
        Rate {
            packets,
            secs,
            gbit_s: pps * size as f64 * 8.0 / 1e9,
            mpps: pps / 1e6,
            ns_per_packet: if packets == 0 { 0.0 } else { 1e9 / pps },
            mean_gbit_s: None,
        }
    }

    /// `packets` in rounds of [`BATCH`] that took `total` in all, `median` for the median round.
    fn from_rounds(packets: u64, size: usize, median: Duration, total: Duration) -> Rate {
        let mean = Rate::new(packets, size, total);
        Rate {
            mean_gbit_s: Some(mean.gbit_s),
            ..Rate::new(BATCH as u64, size, median)
        }
        .with_totals(packets, total)
    }

    fn with_totals(mut self, packets: u64, total: Duration) -> Rate {
        self.packets = packets;
        self.secs = total.as_secs_f64();
        self
    }
}

/// Where the figures were taken.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    /// /proc/loadavg's 1-minute load when the run started.
    pub load1: f64,
}

impl Machine {
    fn probe() -> Machine {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpu = read("/proc/cpuinfo")
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        Machine {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            load1: read("/proc/loadavg")
                .split_whitespace()
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0),
        }
    }
}

/// The synthetic report.
#[derive(Clone, Debug, Serialize)]
pub struct SyntheticReport {
    pub mode: &'static str,
    pub cipher: &'static str,
    pub size: usize,
    pub batch: usize,
    pub flows: usize,
    pub machine: Machine,
    /// ring's AEAD seal alone over `size` octets: the ceiling.
    pub raw_seal: Rate,
    pub outbound: Rate,
    /// The outbound path of TCP super-packets read with TSO (up to [`TSO_SEGMENTS`] segments each): per segment only
    /// the segmentation copy and the seal; routing once per super-packet. What a TCP stream costs.
    pub outbound_tso: Rate,
    pub inbound: Rate,
    /// outbound packets/s over raw seal packets/s.
    pub outbound_vs_raw: f64,
    pub outbound_tso_vs_raw: f64,
    pub inbound_vs_raw: f64,
    /// Packets per tunnel in the outbound batch (the 4-member group's spread).
    pub tunnel_spread: Vec<usize>,
}

/// The loopback report.
#[derive(Clone, Debug, Serialize)]
pub struct LoopbackReport {
    pub mode: &'static str,
    pub cipher: &'static str,
    pub size: usize,
    pub machine: Machine,
    /// What the sender sealed and sent (`send_to` returned success).
    pub sent: Rate,
    /// What the receiver received, opened and passed its checks, over its own first-to-last time.
    pub received: Rate,
    /// Sent datagrams that never arrived (socket buffer overflow on loopback), in percent.
    pub loss_pct: f64,
    /// Datagrams received that failed (should be 0).
    pub rejected: u64,
}

/// Runs `braid bench`; returns the exit code.
pub fn run(opts: &BenchOptions) -> Result<i32> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&opts.size) {
        bail!("--size {}: want {MIN_SIZE} to {MAX_SIZE} octets", opts.size);
    }
    if !(opts.secs.is_finite() && opts.secs > 0.0 && opts.secs <= 3600.0) {
        bail!("--secs {}: want more than 0 and at most 3600", opts.secs);
    }
    if opts.loopback {
        let r = loopback(opts)?;
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print_loopback(&r);
        }
    } else {
        let r = synthetic(opts);
        if opts.json {
            println!("{}", serde_json::to_string_pretty(&r)?);
        } else {
            print_synthetic(&r);
        }
    }
    Ok(0)
}

fn print_header(mode: &str, cipher: &str, size: usize, m: &Machine) {
    println!(
        "braid bench ({mode}): {cipher}, {size}-octet inner IPv4 packets; {} ({} CPUs), kernel {}, load {:.2}",
        m.cpu, m.cpus, m.kernel, m.load1
    );
}

fn rate_line(what: &str, r: &Rate, extra: &str) {
    let mean = r
        .mean_gbit_s
        .map(|m| format!("  (mean {m:.2})"))
        .unwrap_or_default();
    println!(
        "  {what:<34} {:>7.2} Gbit/s  {:>6.3} Mpps  {:>7.1} ns/packet{extra}{mean}",
        r.gbit_s, r.mpps, r.ns_per_packet
    );
}

fn print_synthetic(r: &SyntheticReport) {
    print_header(
        "synthetic, one core per direction",
        r.cipher,
        r.size,
        &r.machine,
    );
    println!(
        "  {} packets per round, {} flows (UDP + TCP) over a 4-member group (per tunnel: {:?}); median round, mean Gbit/s in ()",
        r.batch, r.flows, r.tunnel_spread
    );
    rate_line("raw ring AEAD seal (ceiling)", &r.raw_seal, "");
    rate_line(
        "outbound: inspect..seal..queue",
        &r.outbound,
        &format!("  {:.0}% of raw", r.outbound_vs_raw * 100.0),
    );
    rate_line(
        "outbound TSO: segment..seal",
        &r.outbound_tso,
        &format!("  {:.0}% of raw", r.outbound_tso_vs_raw * 100.0),
    );
    rate_line(
        "inbound: copy..open..checks",
        &r.inbound,
        &format!("  {:.0}% of raw", r.inbound_vs_raw * 100.0),
    );
}

fn print_loopback(r: &LoopbackReport) {
    print_header(
        "loopback UDP, std send_to/recv_from, one packet per syscall",
        r.cipher,
        r.size,
        &r.machine,
    );
    rate_line("sender: seal + send_to", &r.sent, "");
    rate_line(
        "receiver: recv_from + open + checks",
        &r.received,
        &format!("  loss {:.2}%", r.loss_pct),
    );
    if r.rejected > 0 {
        println!("  !! {} datagrams failed to open or check", r.rejected);
    }
}

// ---------------------------------------------------------------------------------------------------------
// The two gateways.

/// Which end: A's site is 192.0.2.0/25, B's 192.0.2.128/25.
#[derive(Copy, Clone, PartialEq, Eq)]
enum Side {
    A,
    B,
}

impl Side {
    fn site(self) -> [u8; 4] {
        match self {
            Side::A => [192, 0, 2, 0],
            Side::B => [192, 0, 2, 128],
        }
    }
    fn other(self) -> Side {
        match self {
            Side::A => Side::B,
            Side::B => Side::A,
        }
    }
}

/// 36 octets of KEYMAT for tunnel `t` in the direction A->B (`a_to_b`) or B->A.
fn keymat(t: usize, a_to_b: bool) -> [u8; KEYMAT_LEN] {
    let mut k = [0u8; KEYMAT_LEN];
    for (i, b) in k.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(31) ^ (t as u8) ^ if a_to_b { 0x5a } else { 0xa5 };
    }
    k
}

/// SPI of tunnel `t`'s SA in the direction A->B or B->A.
fn spi(t: usize, a_to_b: bool) -> Spi {
    Spi(if a_to_b { 0x0000_1000 } else { 0x0000_2000 } + t as u32)
}

struct OutTunnel {
    sa: OutboundSa,
    /// Stand-in for the engine's published SA counters (three relaxed stores per seal).
    sa_counters: [AtomicU64; 3],
    remote: SocketAddr,
    max_inner: usize,
    stats: TunnelStats,
}

struct InTunnel {
    allowed: Vec<Prefix>,
    stats: TunnelStats,
}

/// One gateway's outbound half: the TUN side to the uplink.
struct Outbound {
    fib: Arc<FibCell>,
    liveness: Liveness,
    tunnels: Vec<OutTunnel>,
    tun_stats: TunStats,
    uplink_stats: UplinkStats,
}

/// One datagram ready to send: the `sendmmsg` entry.
#[derive(Copy, Clone)]
struct Queued {
    tunnel: u32,
    remote: SocketAddr,
    start: u32,
    end: u32,
}

/// The FIB of gateway `side`: the inside /30s (one member each), the other site's /25 over all four
/// tunnels, a couple of unrelated prefixes.
fn fib(side: Side) -> Fib {
    let group = Arc::new(
        NextHopGroup::new(
            (0..TUNNELS as u32)
                .map(|tunnel| Member {
                    tunnel,
                    weight: 1000,
                    backup: false,
                })
                .collect(),
        )
        .expect("a 4-member group"),
    );
    let mut b = FibBuilder::new();
    let o = side.other().site();
    b.insert(
        Prefix::new(IpAddr::V4(Ipv4Addr::from(o)), 25).expect("prefix"),
        group.clone(),
    );
    for t in 0..TUNNELS {
        let inside = Ipv4Addr::new(169, 254, t as u8, 0);
        b.insert(
            Prefix::new(IpAddr::V4(inside), 30).expect("prefix"),
            Arc::new(NextHopGroup::single(t as u32)),
        );
    }
    b.insert("198.51.100.0/24".parse().expect("prefix"), group.clone());
    b.insert("10.20.0.0/16".parse().expect("prefix"), group);
    b.build()
}

impl Outbound {
    fn new(side: Side, cipher: Cipher, remote: SocketAddr, size: usize) -> Outbound {
        let a_to_b = side == Side::A;
        let tunnels = (0..TUNNELS)
            .map(|t| OutTunnel {
                sa: OutboundSa::new(
                    spi(t, a_to_b),
                    &SaKey::new(cipher, &keymat(t, a_to_b)).expect("36 octets"),
                    false,
                ),
                sa_counters: Default::default(),
                remote,
                max_inner: size.max(1400),
                stats: TunnelStats::default(),
            })
            .collect();
        Outbound {
            fib: Arc::new(FibCell::new(fib(side))),
            liveness: Liveness::new(TUNNELS),
            tunnels,
            tun_stats: TunStats::default(),
            uplink_stats: UplinkStats::default(),
        }
    }

    /// The tunnel for a packet to `group`, as the engine picks it for a new flow.
    #[inline]
    fn choose(&self, group: &NextHopGroup, pkt: &[u8], inner: &Inner) -> Option<usize> {
        let mut live = [Member {
            tunnel: 0,
            weight: 0,
            backup: false,
        }; MAX_LIVE];
        let members = self.liveness.members(group, &mut live);
        if let [only] = members {
            return Some(only.tunnel as usize);
        }
        let hash = flow_hash_inspected(pkt, inner, FLOW_SEED).unwrap_or(0);
        scheduler::pick(members, hash).map(|t| t as usize)
    }

    /// Forwards the inner packet at `buf[HEADROOM..HEADROOM + n]`: the engine's `forward` without the
    /// shaper and the ICMP error. Returns the sealed datagram's entry.
    #[inline]
    fn forward(&mut self, buf: &mut [u8], n: usize) -> Option<Queued> {
        let pkt = &buf[HEADROOM..HEADROOM + n];
        add(&self.tun_stats.rx_packets, 1);
        let inner = match wire::inspect(pkt) {
            Ok(i) => i,
            Err(_) => {
                self.tun_stats.drops.count(DropReason::InnerMalformed);
                return None;
            }
        };
        let fib = self.fib.load();
        let Some(group) = fib.lookup(inner.dst) else {
            self.tun_stats.drops.count(DropReason::NoRoute);
            return None;
        };
        let Some(t) = self
            .choose(group, pkt, &inner)
            .filter(|&t| t < self.tunnels.len())
        else {
            self.tun_stats.drops.count(DropReason::NoRoute);
            return None;
        };
        drop(fib);
        let tunnel = &mut self.tunnels[t];
        if inner.len > tunnel.max_inner && inner.dont_fragment {
            tunnel.stats.drops.count(DropReason::TooBig);
            return None;
        }
        let next = if inner.version == 4 {
            NextHeader::Ipv4
        } else {
            NextHeader::Ipv6
        };
        let esp = match tunnel.sa.seal(buf, HEADROOM..HEADROOM + inner.len, next) {
            Ok(r) => r,
            Err(_) => {
                tunnel.stats.drops.count(DropReason::SeqExhausted);
                return None;
            }
        };
        let [p, b, s] = &tunnel.sa_counters;
        p.store(tunnel.sa.packets(), Ordering::Relaxed);
        b.store(tunnel.sa.bytes(), Ordering::Relaxed);
        s.store(tunnel.sa.last_seq(), Ordering::Relaxed);
        add(&tunnel.stats.tx_packets, 1);
        add(&tunnel.stats.tx_bytes, inner.len as u64);
        add(&self.uplink_stats.tx_packets, 1);
        add(&self.uplink_stats.tx_bytes, esp.len() as u64);
        Some(Queued {
            tunnel: t as u32,
            remote: tunnel.remote,
            start: esp.start as u32,
            end: esp.end as u32,
        })
    }
}

impl Outbound {
    /// Forwards a TCP super-packet read with offloads (`hdr` its virtio-net header): the engine's TSO path.
    /// Routing, the flow's tunnel and the MTU check once per super-packet, then each segment written
    /// ([`Plan::write`]) straight into the next slot of `out` at `slot + HEADROOM` and sealed there, so the
    /// datagrams lie back to back as for UDP GSO; counters once per super-packet. Returns the segments sealed.
    #[inline]
    fn forward_tso(&mut self, hdr: &VnetHdr, pkt: &[u8], out: &mut [u8]) -> usize {
        add(&self.tun_stats.rx_packets, 1);
        let Ok(plan) = Plan::new(hdr, pkt) else {
            self.tun_stats.drops.count(DropReason::OffloadMalformed);
            return 0;
        };
        let Ok(inner) = wire::inspect(pkt) else {
            self.tun_stats.drops.count(DropReason::InnerMalformed);
            return 0;
        };
        let fib = self.fib.load();
        let Some(t) = fib
            .lookup(inner.dst)
            .and_then(|group| self.choose(group, pkt, &inner))
            .filter(|&t| t < self.tunnels.len())
        else {
            self.tun_stats.drops.count(DropReason::NoRoute);
            return 0;
        };
        drop(fib);
        let tunnel = &mut self.tunnels[t];
        if plan.max_segment_len() > tunnel.max_inner {
            tunnel.stats.drops.count(DropReason::TooBig);
            return 0;
        }
        let (mut slot, mut inner_bytes) = (0, 0);
        for i in 0..plan.count() {
            let len = plan.write(pkt, i, &mut out[slot + HEADROOM..]);
            match tunnel.sa.seal(
                out,
                slot + HEADROOM..slot + HEADROOM + len,
                NextHeader::Ipv4,
            ) {
                Ok(esp) => slot = esp.end,
                Err(_) => {
                    tunnel.stats.drops.count(DropReason::SeqExhausted);
                    return i;
                }
            }
            inner_bytes += len;
        }
        let [p, b, s] = &tunnel.sa_counters;
        p.store(tunnel.sa.packets(), Ordering::Relaxed);
        b.store(tunnel.sa.bytes(), Ordering::Relaxed);
        s.store(tunnel.sa.last_seq(), Ordering::Relaxed);
        let n = plan.count() as u64;
        add(&tunnel.stats.tx_packets, n);
        add(&tunnel.stats.tx_bytes, inner_bytes as u64);
        add(&self.uplink_stats.tx_packets, n);
        add(&self.uplink_stats.tx_bytes, slot as u64);
        plan.count()
    }
}

/// One gateway's inbound half: the uplink to the TUN side.
struct Inbound {
    side: Side,
    cipher: Cipher,
    fib: Arc<FibCell>,
    sas: HashMap<u32, (usize, InboundSa)>,
    tunnels: Vec<InTunnel>,
    uplink_stats: UplinkStats,
    epoch: Instant,
}

impl Inbound {
    fn new(side: Side, cipher: Cipher) -> Inbound {
        let mut r = Inbound {
            side,
            cipher,
            fib: Arc::new(FibCell::new(fib(side))),
            sas: HashMap::new(),
            tunnels: (0..TUNNELS)
                .map(|t| InTunnel {
                    // The peer's inside address only: the site's sources are allowed through the FIB (the
                    // BGP-learned case), the longer of the engine's two checks.
                    allowed: vec![
                        Prefix::new(IpAddr::V4(Ipv4Addr::new(169, 254, t as u8, 0)), 30)
                            .expect("prefix"),
                    ],
                    stats: TunnelStats::default(),
                })
                .collect(),
            uplink_stats: UplinkStats::default(),
            epoch: Instant::now(),
        };
        r.rekey();
        r
    }

    /// Fresh inbound SAs (sequence numbers start over).
    fn rekey(&mut self) {
        // We receive what the other side sends.
        let a_to_b = self.side == Side::B;
        self.sas.clear();
        for t in 0..TUNNELS {
            let s = spi(t, a_to_b);
            let key = SaKey::new(self.cipher, &keymat(t, a_to_b)).expect("36 octets");
            self.sas
                .insert(s.0, (t, InboundSa::new(s, &key, false, REPLAY_WINDOW)));
        }
    }

    /// Handles the datagram at `buf[..n]`: the engine's `receive` up to the TUN write. Returns the inner
    /// packet's range.
    #[inline]
    fn receive(&mut self, buf: &mut [u8], n: usize, now_ms: u64) -> Option<Range<usize>> {
        let us = &self.uplink_stats;
        add(&us.rx_packets, 1);
        add(&us.rx_bytes, n as u64);
        let spi = match classify(&buf[..n]) {
            UdpPayload::Esp(spi) => spi,
            _ => {
                us.drops.count(DropReason::Malformed);
                return None;
            }
        };
        let Some((t, sa)) = self.sas.get_mut(&spi.0) else {
            us.drops.count(DropReason::UnknownSpi);
            return None;
        };
        let tunnel = &self.tunnels[*t];
        let opened = match sa.open(&mut buf[..n]) {
            Ok(o) => o,
            Err(e) => {
                tunnel.stats.drops.count(e.into());
                return None;
            }
        };
        let counters = [sa.packets(), sa.bytes(), sa.highest_seq()];
        black_box(counters);
        tunnel.stats.last_rx_ms.store(now_ms, Ordering::Relaxed);
        let payload = &buf[opened.inner.clone()];
        let inner = match check_inner(payload, opened.next_header) {
            Ok(i) => i,
            Err(reason) => {
                tunnel.stats.drops.count(reason);
                return None;
            }
        };
        if !source_allowed(inner.src, *t as u32, &tunnel.allowed, &self.fib) {
            tunnel.stats.drops.count(DropReason::InnerSource);
            return None;
        }
        add(&tunnel.stats.rx_packets, 1);
        add(&tunnel.stats.rx_bytes, inner.len as u64);
        Some(opened.inner.start..opened.inner.start + inner.len)
    }

    fn drops(&self) -> u64 {
        self.uplink_stats.drops.total()
            + self
                .tunnels
                .iter()
                .map(|t| t.stats.drops.total())
                .sum::<u64>()
    }
}

// ---------------------------------------------------------------------------------------------------------
// Synthetic traffic.

/// Packet `i` of a batch from `side`'s site to the other's: IPv4 with DF, UDP for even flows and TCP for
/// odd ones, `size` octets in all, a valid header checksum.
fn packet(side: Side, i: usize, size: usize) -> Vec<u8> {
    let flow = i % FLOWS;
    let mut p = vec![0u8; size];
    let mut src = side.site();
    let mut dst = side.other().site();
    src[3] += 1 + (flow % 16) as u8;
    dst[3] += 1 + (flow / 4 % 16) as u8;
    let udp = flow % 2 == 0;
    p[0] = 0x45;
    p[2..4].copy_from_slice(&(size as u16).to_be_bytes());
    p[4..6].copy_from_slice(&(i as u16).to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = if udp { 17 } else { 6 };
    p[12..16].copy_from_slice(&src);
    p[16..20].copy_from_slice(&dst);
    let csum = wire::checksum(0, &p[..20]);
    p[10..12].copy_from_slice(&csum.to_be_bytes());
    let sport = 40_000 + flow as u16;
    let dport = [5201u16, 443, 4789, 22][flow / 2 % 4];
    p[20..22].copy_from_slice(&sport.to_be_bytes());
    p[22..24].copy_from_slice(&dport.to_be_bytes());
    if udp {
        p[24..26].copy_from_slice(&((size - 20) as u16).to_be_bytes());
    } else {
        p[24..28].copy_from_slice(&(i as u32).to_be_bytes());
        p[32] = 0x50; // data offset 5
        p[33] = 0x18; // PSH ACK
        p[34..36].copy_from_slice(&512u16.to_be_bytes());
    }
    for (j, b) in p[HEADER_LEN..].iter_mut().enumerate() {
        *b = (i + j) as u8;
    }
    p
}

/// A batch of packets in buffers with headroom and tailroom, and the templates to restore them from.
struct Batch {
    bufs: Vec<Vec<u8>>,
    templates: Vec<Vec<u8>>,
    size: usize,
}

impl Batch {
    fn new(side: Side, size: usize) -> Batch {
        let templates: Vec<Vec<u8>> = (0..BATCH).map(|i| packet(side, i, size)).collect();
        let bufs = templates
            .iter()
            .map(|t| {
                let mut b = vec![0u8; HEADROOM + size + MAX_TAILROOM];
                b[HEADROOM..HEADROOM + size].copy_from_slice(t);
                b
            })
            .collect();
        Batch {
            bufs,
            templates,
            size,
        }
    }

    /// Restores the headers sealing encrypted.
    fn restore_headers(&mut self) {
        for (b, t) in self.bufs.iter_mut().zip(&self.templates) {
            b[HEADROOM..HEADROOM + HEADER_LEN].copy_from_slice(&t[..HEADER_LEN]);
        }
    }
}

/// Runs the `rounds` (each handles [`BATCH`] packets) in turn, each round timed on its own, for about
/// `secs` each in all, after one unmeasured round of each. Interleaving exposes all of them to the same
/// contention, and the median round is what one core does when it is not preempted (a round takes 0.1-1 ms;
/// a time slice is several): the figures stay comparable on a busy machine.
fn measure(secs: f64, size: usize, rounds: &mut [&mut dyn FnMut()]) -> Vec<Rate> {
    for r in rounds.iter_mut() {
        r();
    }
    let budget = Duration::from_secs_f64(secs * rounds.len() as f64);
    let start = Instant::now();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); rounds.len()];
    while start.elapsed() < budget || times[0].len() < 3 {
        for (r, t) in rounds.iter_mut().zip(&mut times) {
            let t0 = Instant::now();
            r();
            t.push(t0.elapsed());
        }
    }
    times
        .into_iter()
        .map(|mut t| {
            let total: Duration = t.iter().sum();
            t.sort_unstable();
            Rate::from_rounds(t.len() as u64 * BATCH as u64, size, t[t.len() / 2], total)
        })
        .collect()
}

/// ring's AEAD seal over `size` octets of each of [`BATCH`] buffers, with an 8-octet AAD and a counter nonce.
fn raw_seal_round(cipher: Cipher, size: usize) -> impl FnMut() {
    use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, CHACHA20_POLY1305};
    let algorithm = match cipher {
        Cipher::Aes256Gcm16 => &AES_256_GCM,
        Cipher::ChaCha20Poly1305 => &CHACHA20_POLY1305,
    };
    let key = LessSafeKey::new(UnboundKey::new(algorithm, &[0x42; 32]).expect("32-octet key"));
    let mut bufs: Vec<Vec<u8>> = (0..BATCH).map(|i| vec![i as u8; size]).collect();
    let mut counter = 0u64;
    move || {
        for buf in &mut bufs {
            counter += 1;
            let mut nonce = [0u8; 12];
            nonce[4..].copy_from_slice(&counter.to_be_bytes());
            let mut aad = [0u8; 8];
            aad[4..].copy_from_slice(&(counter as u32).to_be_bytes());
            let tag = key
                .seal_in_place_separate_tag(
                    Nonce::assume_unique_for_key(nonce),
                    Aad::from(aad),
                    black_box(buf.as_mut_slice()),
                )
                .expect("seal");
            let _ = black_box(tag);
        }
    }
}

/// Runs the synthetic benchmark.
pub fn synthetic(opts: &BenchOptions) -> SyntheticReport {
    let machine = Machine::probe();
    let size = opts.size;
    let remote: SocketAddr = "198.51.100.2:4500".parse().expect("address");

    let mut raw_round = raw_seal_round(opts.cipher, size);

    // Outbound: A's TUN side to its uplink.
    let mut a_out = Outbound::new(Side::A, opts.cipher, remote, size);
    let mut batch = Batch::new(Side::A, size);
    let mut queue: Vec<Queued> = Vec::with_capacity(BATCH);
    let mut spread = vec![0usize; TUNNELS];
    for b in &mut batch.bufs {
        if let Some(q) = a_out.forward(b, size) {
            spread[q.tunnel as usize] += 1;
        }
    }
    batch.restore_headers();
    let mut out_round = || {
        queue.clear();
        for b in &mut batch.bufs {
            if let Some(q) = a_out.forward(b, batch.size) {
                queue.push(q);
            }
        }
        black_box(&queue);
        batch.restore_headers();
    };

    // Outbound with TSO: TCP super-packets of TSO_SEGMENTS segments of `size` octets, BATCH segments a round.
    let gso_size = (size - HEADER_LEN).max(1);
    // As many segments as fit a 64 KiB IP packet, at most TSO_SEGMENTS, a power of two (divides BATCH).
    let fit = (usize::from(u16::MAX) - HEADER_LEN) / gso_size;
    let segments = 1 << fit.clamp(1, TSO_SEGMENTS).ilog2();
    let super_packet = packet(Side::A, 1, HEADER_LEN + segments * gso_size);
    let mut a_tso = Outbound::new(Side::A, opts.cipher, remote, size);
    let tso_hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: HEADER_LEN as u16,
        gso_size: gso_size as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    let mut tso_out = vec![0u8; segments * (sealed_len(size) + MAX_TAILROOM)];
    let mut tso_round = || {
        let mut n = 0;
        for _ in 0..BATCH / segments {
            n += a_tso.forward_tso(&tso_hdr, &super_packet, &mut tso_out);
        }
        black_box(&tso_out);
        assert_eq!(n, BATCH, "every segment sealed");
    };

    // Inbound: B seals a batch once; A opens copies of it.
    let mut b_out = Outbound::new(Side::B, opts.cipher, remote, size);
    let mut b_batch = Batch::new(Side::B, size);
    let sealed: Vec<Vec<u8>> = b_batch
        .bufs
        .iter_mut()
        .map(|b| {
            let q = b_out.forward(b, size).expect("B forwards its batch");
            b[q.start as usize..q.end as usize].to_vec()
        })
        .collect();
    debug_assert!(sealed.iter().all(|s| s.len() == sealed_len(size)));
    let mut a_in = Inbound::new(Side::A, opts.cipher);
    let mut rx: Vec<Vec<u8>> = sealed.iter().map(|s| vec![0u8; s.len()]).collect();
    let mut delivered: Vec<Range<usize>> = Vec::with_capacity(BATCH);
    let mut in_round = || {
        a_in.rekey();
        delivered.clear();
        let now_ms = (a_in.epoch.elapsed().as_millis() as u64).max(1);
        for (buf, s) in rx.iter_mut().zip(&sealed) {
            buf.copy_from_slice(s);
            if let Some(r) = a_in.receive(buf, s.len(), now_ms) {
                delivered.push(r);
            }
        }
        black_box(&delivered);
    };
    let rates = measure(
        opts.secs,
        size,
        &mut [
            &mut raw_round,
            &mut out_round,
            &mut tso_round,
            &mut in_round,
        ],
    );
    let [raw, outbound, outbound_tso, inbound] = <[Rate; 4]>::try_from(rates).expect("four rates");
    assert_eq!(a_out.tun_stats.drops.total(), 0, "outbound drops");
    assert_eq!(a_tso.tun_stats.drops.total(), 0, "outbound TSO drops");
    assert_eq!(a_in.drops(), 0, "inbound drops");
    assert_eq!(delivered.len(), BATCH, "every packet delivered");

    let ratio = |r: &Rate| {
        if raw.mpps > 0.0 {
            r.mpps / raw.mpps
        } else {
            0.0
        }
    };
    SyntheticReport {
        mode: "synthetic",
        cipher: opts.cipher.name(),
        size,
        batch: BATCH,
        flows: FLOWS,
        machine,
        outbound_vs_raw: ratio(&outbound),
        outbound_tso_vs_raw: ratio(&outbound_tso),
        inbound_vs_raw: ratio(&inbound),
        raw_seal: raw,
        outbound,
        outbound_tso,
        inbound,
        tunnel_spread: spread,
    }
}

// ---------------------------------------------------------------------------------------------------------
// Loopback.

fn udp_socket() -> Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
    // Larger buffers, as an uplink's `socket_buffer` would ask; the kernel caps them at rmem_max/wmem_max.
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
    Ok(s.into())
}

/// Runs the loopback benchmark: a sender thread (A) and a receiver thread (B).
pub fn loopback(opts: &BenchOptions) -> Result<LoopbackReport> {
    let machine = Machine::probe();
    let size = opts.size;
    let rx_sock = udp_socket().context("receiver socket on 127.0.0.1")?;
    let tx_sock = udp_socket().context("sender socket on 127.0.0.1")?;
    let to = rx_sock.local_addr()?;
    rx_sock.set_read_timeout(Some(Duration::from_millis(200)))?;
    let done = Arc::new(AtomicBool::new(false));
    let cipher = opts.cipher;

    let receiver = {
        let done = done.clone();
        std::thread::Builder::new().name("bench-rx".into()).spawn(
            move || -> (u64, u64, Option<Instant>, Option<Instant>) {
                let mut b_in = Inbound::new(Side::B, cipher);
                let mut buf = vec![0u8; 65_536];
                let (mut ok, mut bad) = (0u64, 0u64);
                let (mut first, mut last) = (None, None);
                loop {
                    match rx_sock.recv_from(&mut buf) {
                        Ok((n, _)) => {
                            let now = Instant::now();
                            first.get_or_insert(now);
                            last = Some(now);
                            let now_ms = (b_in.epoch.elapsed().as_millis() as u64).max(1);
                            match b_in.receive(&mut buf, n, now_ms) {
                                Some(r) => {
                                    black_box(&buf[r]);
                                    ok += 1;
                                }
                                None => bad += 1,
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) =>
                        {
                            if done.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => bad += 1,
                    }
                }
                (ok, bad, first, last)
            },
        )?
    };

    // The sender: A's outbound path and one send_to per datagram.
    let secs = opts.secs;
    let sender =
        std::thread::Builder::new()
            .name("bench-tx".into())
            .spawn(move || -> Result<Rate> {
                let mut a_out = Outbound::new(Side::A, cipher, to, size);
                let mut batch = Batch::new(Side::A, size);
                let mut send_errors = 0u64;
                let budget = Duration::from_secs_f64(secs);
                let start = Instant::now();
                while start.elapsed() < budget {
                    for b in &mut batch.bufs {
                        if let Some(q) = a_out.forward(b, batch.size) {
                            if tx_sock
                                .send_to(&b[q.start as usize..q.end as usize], q.remote)
                                .is_err()
                            {
                                send_errors += 1;
                            }
                        }
                    }
                    batch.restore_headers();
                }
                let elapsed = start.elapsed();
                let sent = a_out.uplink_stats.tx_packets.load(Ordering::Relaxed) - send_errors;
                Ok(Rate::new(sent, size, elapsed))
            })?;
    let sent = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??;
    done.store(true, Ordering::Relaxed);
    let (ok, bad, first, last) = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?;
    let span = match (first, last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => Duration::ZERO,
    };
    let received = Rate::new(ok, size, span);
    Ok(LoopbackReport {
        mode: "loopback",
        cipher: cipher.name(),
        size,
        machine,
        loss_pct: if sent.packets == 0 {
            0.0
        } else {
            100.0 * sent.packets.saturating_sub(ok + bad) as f64 / sent.packets as f64
        },
        sent,
        received,
        rejected: bad,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_well_formed_and_spread_over_the_group() {
        for size in [MIN_SIZE, 64, 1400] {
            let p = packet(Side::A, 3, size);
            let inner = wire::inspect(&p).unwrap();
            assert_eq!(inner.len, size);
            assert_eq!(wire::checksum(0, &p[..20]), 0, "header checksum");
        }
        let r = synthetic(&BenchOptions {
            cipher: Cipher::Aes256Gcm16,
            size: 200,
            secs: 0.01,
            json: false,
            loopback: false,
        });
        assert_eq!(r.tunnel_spread.iter().sum::<usize>(), BATCH);
        assert!(r.tunnel_spread.iter().all(|&n| n > 0), "{r:?}");
        assert!(r.outbound.packets >= BATCH as u64 && r.inbound.packets >= BATCH as u64);
    }

    #[test]
    fn loopback_delivers() {
        let r = loopback(&BenchOptions {
            cipher: Cipher::ChaCha20Poly1305,
            size: 1400,
            secs: 0.05,
            json: false,
            loopback: true,
        })
        .unwrap();
        assert_eq!(r.rejected, 0);
        assert!(r.received.packets > 0, "{r:?}");
    }
}
