//! `braid bench`: the data path's per-packet work on synthetic traffic, without root.
//!
//! Two gateways, A and B, are built in memory as a configuration would build them: four tunnels between
//! them (SPIs and keys mirrored), a FIB on each side with a few prefixes and one 4-member next-hop group
//! (equal weights) towards the other site, [`Liveness`], per-tunnel and per-uplink counters. A batch of
//! synthetic inner IPv4 packets (half UDP, half TCP, [`FLOWS`] flows over different addresses and ports, all
//! of the chosen size) then goes through the same functions the engine calls:
//!
//! - **outbound** (A's TUN side to A's uplink): the engine's `forward` per read of a finished packet:
//!   [`wire::inspect`], [`Plan::new`], [`Fib::lookup`] in the published snapshot, [`Liveness::members`],
//!   [`flow_hash_inspected`] and the engine's flow table ([`FlowTable`]: a flow
//!   seen before keeps its tunnel, a new one goes to [`scheduler::pick`]), the tunnel-MTU check, the sequence numbers ([`OutboundSa::reserve`]), the one
//!   user-space copy ([`Plan::write`] from the read buffer into the next slot of a 128-datagram / 256 KiB batch
//!   buffer at `end + HEADROOM`) and [`OutboundSa::seal_next`] in place there. When the batch is full (and at
//!   the end of a round) it is "sent" as the engine sends it: its runs formed (one tunnel, back to back, equal
//!   sizes; UDP GSO messages) and the tunnel and uplink counters added once per run; then the SA counters are
//!   counted and published once per tunnel and the reads counted. The kernel writes the UDP and IP headers, so
//!   no framing beyond that is done in user space. The templates are only read, never sealed in place.
//! - **outbound TSO**: the same `forward` for a TCP super-packet of up to 32 segments (`NEEDS_CSUM`,
//!   `GSO_TCPV4`): routing once per read, each segment cut, checksummed while copied and sealed in the batch.
//! - **inbound** (A's uplink to A's TUN side): each datagram sealed by B is copied into the receive buffer
//!   (the stand-in for `recv`'s copy), then [`classify`] (RFC 3948), the SPI lookup (a `HashMap` as in the
//!   engine), [`InboundSa::open`] with the default 1024-packet replay window, the counters, the inner-packet
//!   checks (version, length, the inner source allowed on that tunnel: the engine's own `check_inner`
//!   and `source_allowed`) and the packet queued for the TUN write. The SAs are created anew
//!   each round (the batch's sequence numbers repeat), 4 per round of [`BATCH`] packets.
//! - **raw ring AEAD seal** over the same number of octets with an 8-octet AAD: the ceiling.
//!
//! Each direction runs on one thread, so the figures are per core. `--loopback` sends the sealed datagrams
//! for real, from a sender thread (A's outbound path) to a receiver thread (B's inbound path) over UDP
//! sockets on 127.0.0.1, with the engine's batched system calls: each full batch goes out with
//! [`sys::send_batch`] (one `sendmmsg`, runs of one tunnel's datagrams as UDP GSO messages; after a refusal
//! one datagram per message, as the engine falls back), and the receiver takes up to 32 messages per
//! `recvmmsg` ([`RecvBatch`]) with UDP GRO on, splitting coalesced messages at their segment size. The report
//! says which modes ran and how many datagrams each call carried.
//!
//! Left out: the uplink cap (the shaper; benches run uncapped), ICMP too-big generation, IPv6, the TUN device.

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::ops::Range;
use std::os::fd::{AsRawFd, RawFd};
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
use braid_dataplane::scheduler::{self, FlowTable};
use braid_dataplane::stats::add;
use braid_dataplane::sys::{
    self, RecvBatch, SendBatch, SendMsg, UDP_GSO_MAX_BYTES, UDP_MAX_SEGMENTS,
};
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
    /// How the sender sent: `sendmmsg + UDP GSO`, or `sendmmsg` after the kernel refused UDP GSO.
    pub send_mode: &'static str,
    /// How the receiver received: `recvmmsg + UDP GRO`, or `recvmmsg` when the socket refused UDP GRO.
    pub recv_mode: &'static str,
    /// Datagrams per `sendmmsg` call (mean).
    pub datagrams_per_send: f64,
    /// Datagrams per `recvmmsg` call (mean).
    pub datagrams_per_recv: f64,
    /// UDP GSO messages (runs of more than one datagram) sent.
    pub gso_sends: u64,
    /// What the sender sealed and sent (the kernel took it).
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
        "loopback UDP, batched syscalls",
        r.cipher,
        r.size,
        &r.machine,
    );
    println!(
        "  sender: {} ({:.1} datagrams per call, {} GSO messages); receiver: {} ({:.1} datagrams per call)",
        r.send_mode, r.datagrams_per_send, r.gso_sends, r.recv_mode, r.datagrams_per_recv
    );
    rate_line("sender: seal + sendmmsg", &r.sent, "");
    rate_line(
        "receiver: recvmmsg + open + checks",
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
    /// Stand-in for the engine's published SA counters (three relaxed stores per batch and tunnel).
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
    /// The FIB snapshot, refreshed once per batch (as the engine refreshes it per wake-up).
    fib_now: Option<Arc<Fib>>,
    liveness: Liveness,
    tunnels: Vec<OutTunnel>,
    tun_stats: TunStats,
    uplink_stats: UplinkStats,
    /// Reads since the last flush (counted once per batch, as the engine does).
    reads: u64,
    /// The engine's flow table ([`FlowTable`]).
    flows: FlowTable,
    /// Coarse seconds since `epoch`, taken once per batch as the engine does.
    now_s: u32,
    epoch: Instant,
}

/// One sealed datagram in an [`OutBatch`].
#[derive(Copy, Clone)]
struct Queued {
    tunnel: u32,
    start: u32,
    end: u32,
    /// The inner packet's octets.
    inner: u32,
}

/// Messages per `recvmmsg` on the loopback receiver (the engine's `RX_BATCH`).
const RX_BATCH: usize = 32;
/// Most datagrams in an outbound batch (the engine's `BATCH_DATAGRAMS`).
const BATCH_DATAGRAMS: usize = 128;
/// Octets of an outbound batch buffer (the engine's `BATCH_BYTES`).
const BATCH_BYTES: usize = 256 * 1024;

/// The engine's outbound batch: sealed datagrams back to back in one buffer (each segment written at
/// `end + HEADROOM` and sealed there), their entries, and what each tunnel sealed since the last flush.
struct OutBatch {
    buf: Vec<u8>,
    end: usize,
    datagrams: Vec<Queued>,
    /// Per tunnel: packets and inner octets sealed, counted on the SA once per flush.
    sealed: Vec<(u64, u64)>,
}

impl OutBatch {
    fn new() -> OutBatch {
        OutBatch {
            buf: vec![0u8; BATCH_BYTES],
            end: 0,
            datagrams: Vec::with_capacity(BATCH_DATAGRAMS),
            sealed: vec![(0, 0); TUNNELS],
        }
    }

    /// Whether a packet of `len` octets still fits.
    fn fits(&self, len: usize) -> bool {
        self.datagrams.len() < BATCH_DATAGRAMS
            && self.end + HEADROOM + len + MAX_TAILROOM <= self.buf.len()
    }

    /// The engine's send runs, in order: datagrams of one tunnel, back to back, of the first one's size (the
    /// last may be shorter), at most [`UDP_MAX_SEGMENTS`] and [`UDP_GSO_MAX_BYTES`] (with `gso`; else one
    /// datagram each), from datagram `from` on. Calls `run(first, last, octets)` for each.
    #[inline]
    fn runs(&self, from: usize, gso: bool, mut run: impl FnMut(usize, usize, usize)) {
        let ds = &self.datagrams;
        let mut i = from;
        while i < ds.len() {
            let first = ds[i];
            let len = (first.end - first.start) as usize;
            let (mut last, mut bytes) = (i + 1, len);
            if gso {
                while last < ds.len() && last - i < UDP_MAX_SEGMENTS {
                    let d = ds[last];
                    let dlen = (d.end - d.start) as usize;
                    if d.tunnel != first.tunnel
                        || d.start != ds[last - 1].end
                        || dlen > len
                        || bytes + dlen > UDP_GSO_MAX_BYTES
                    {
                        break;
                    }
                    bytes += dlen;
                    last += 1;
                    if dlen < len {
                        break;
                    }
                }
            }
            run(i, last, bytes);
            i = last;
        }
    }
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
        let cell = Arc::new(FibCell::new(fib(side)));
        Outbound {
            fib_now: Some(cell.snapshot()),
            fib: cell,
            liveness: Liveness::new(TUNNELS),
            tunnels,
            tun_stats: TunStats::default(),
            uplink_stats: UplinkStats::default(),
            reads: 0,
            flows: FlowTable::default(),
            now_s: 0,
            epoch: Instant::now(),
        }
    }

    /// The tunnel for a packet to `group`, as the engine's `choose` picks it (without its spray mode and
    /// the uplink-cap headroom): a flow seen within [`scheduler::FLOW_IDLE_S`] on a live member keeps its tunnel (the
    /// steady state of a long flow), a new one is hashed onto a member ([`scheduler::pick`]).
    #[inline]
    fn choose(&mut self, group: &NextHopGroup, pkt: &[u8], inner: &Inner) -> Option<usize> {
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
        if let Some(t) = self.flows.lookup(hash, self.now_s, members) {
            return Some(t as usize);
        }
        let tunnel = scheduler::pick(members, hash)?;
        self.flows.remember(hash, tunnel, self.now_s);
        Some(tunnel as usize)
    }

    /// Forwards one read from the TUN device, `pkt` with its virtio-net header `hdr` (a finished packet or a
    /// super-packet): the engine's `forward` without the shaper and the ICMP error. Routing, the flow's
    /// tunnel, the MTU check and the sequence numbers (one [`OutboundSa::reserve`]) once per read; then each
    /// segment written ([`Plan::write`], the one user-space copy) into the next slot of `out` at
    /// `end + HEADROOM` and sealed there ([`OutboundSa::seal_next`]). A full batch is sent (`send`) and
    /// flushed first. Returns the packets sealed.
    #[inline]
    fn forward(
        &mut self,
        hdr: &VnetHdr,
        pkt: &[u8],
        out: &mut OutBatch,
        send: &mut impl FnMut(&mut Outbound, &OutBatch),
    ) -> usize {
        self.reads += 1;
        // Matched by reference: moving the results out copies them through the stack, where loads wider
        // than the stores that wrote them stall (store forwarding).
        let inspected = wire::inspect(pkt);
        let Ok(inner) = &inspected else {
            self.tun_stats.drops.count(DropReason::InnerMalformed);
            return 0;
        };
        let planned = Plan::new(hdr, pkt);
        let Ok(plan) = &planned else {
            self.tun_stats.drops.count(DropReason::OffloadMalformed);
            return 0;
        };
        let count = plan.count();
        let fib = self.fib_now.take().unwrap_or_else(|| self.fib.snapshot());
        let routed = fib
            .lookup(inner.dst)
            .and_then(|group| self.choose(group, pkt, inner))
            .filter(|&t| t < self.tunnels.len());
        self.fib_now = Some(fib);
        let Some(t) = routed else {
            self.tun_stats
                .drops
                .count_many(DropReason::NoRoute, count as u64);
            return 0;
        };
        let tunnel = &self.tunnels[t];
        if plan.max_segment_len() > tunnel.max_inner && inner.dont_fragment {
            tunnel
                .stats
                .drops
                .count_many(DropReason::TooBig, count as u64);
            return 0;
        }
        let next = if inner.version == 4 {
            NextHeader::Ipv4
        } else {
            NextHeader::Ipv6
        };
        let Ok(mut seq) = tunnel.sa.reserve(count as u64) else {
            tunnel
                .stats
                .drops
                .count_many(DropReason::SeqExhausted, count as u64);
            return 0;
        };
        for i in 0..count {
            let len = plan.segment_len(i);
            if !out.fits(len) {
                send(self, out);
                self.flush(out);
            }
            let slot = out.end;
            plan.write(pkt, i, &mut out.buf[slot + HEADROOM..]);
            match self.tunnels[t].sa.seal_next(
                &mut out.buf,
                slot + HEADROOM..slot + HEADROOM + len,
                next,
                &mut seq,
            ) {
                Ok(esp) => {
                    out.datagrams.push(Queued {
                        tunnel: t as u32,
                        start: esp.start as u32,
                        end: esp.end as u32,
                        inner: len as u32,
                    });
                    out.end = esp.end;
                    let s = &mut out.sealed[t];
                    s.0 += 1;
                    s.1 += len as u64;
                }
                Err(_) => {
                    self.tunnels[t]
                        .stats
                        .drops
                        .count_many(DropReason::SeqExhausted, (count - i) as u64);
                    return i;
                }
            }
        }
        count
    }

    /// The engine's flush after the send: the SA counters counted and published once per tunnel, the reads
    /// counted, the batch emptied. (The tunnel and uplink send counters are the send's, per run.)
    fn flush(&mut self, out: &mut OutBatch) {
        for (tunnel, s) in self.tunnels.iter().zip(&mut out.sealed) {
            if s.0 > 0 {
                tunnel.sa.count(s.0, s.1);
                let [p, b, q] = &tunnel.sa_counters;
                p.store(tunnel.sa.packets(), Ordering::Relaxed);
                b.store(tunnel.sa.bytes(), Ordering::Relaxed);
                q.store(tunnel.sa.last_seq(), Ordering::Relaxed);
                *s = (0, 0);
            }
        }
        add(&self.tun_stats.rx_packets, std::mem::take(&mut self.reads));
        self.now_s = self.epoch.elapsed().as_secs().min(u32::MAX as u64 - 1) as u32;
        if let Some(fib) = &mut self.fib_now {
            self.fib.refresh(fib);
        }
        out.datagrams.clear();
        out.end = 0;
    }

    /// Counts a send run's datagrams (`out.datagrams[first..last]`, `octets` in all) as sent: the engine's
    /// `account_run`, once per run.
    #[inline]
    fn account_run(&self, out: &OutBatch, first: usize, last: usize, octets: usize) {
        let ds = &out.datagrams[first..last];
        let tunnel = &self.tunnels[ds[0].tunnel as usize];
        let packets = ds.len() as u64;
        let inner: u64 = ds.iter().map(|d| u64::from(d.inner)).sum();
        add(&tunnel.stats.tx_packets, packets);
        add(&tunnel.stats.tx_bytes, inner);
        add(&self.uplink_stats.tx_packets, packets);
        add(&self.uplink_stats.tx_bytes, octets as u64);
        if packets > 1 {
            add(&self.uplink_stats.gso_sends, 1);
        }
    }
}

/// One gateway's inbound half: the uplink to the TUN side.
struct Inbound {
    side: Side,
    cipher: Cipher,
    fib: Arc<FibCell>,
    /// The FIB snapshot, refreshed once per batch (as the engine does).
    fib_now: Arc<Fib>,
    sas: HashMap<u32, (usize, InboundSa)>,
    tunnels: Vec<InTunnel>,
    uplink_stats: UplinkStats,
    epoch: Instant,
}

impl Inbound {
    fn new(side: Side, cipher: Cipher) -> Inbound {
        let cell = Arc::new(FibCell::new(fib(side)));
        let mut r = Inbound {
            side,
            cipher,
            fib_now: cell.snapshot(),
            fib: cell,
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
        let checked = check_inner(payload, opened.next_header);
        let inner = match &checked {
            Ok(i) => i,
            Err(reason) => {
                tunnel.stats.drops.count(*reason);
                return None;
            }
        };
        if !source_allowed(inner.src, *t as u32, &tunnel.allowed, &self.fib_now) {
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

/// A batch of [`BATCH`] packets from `side`'s site (see [`packet`]).
fn packets(side: Side, size: usize) -> Vec<Vec<u8>> {
    (0..BATCH).map(|i| packet(side, i, size)).collect()
}

/// The synthetic rounds' send: the batch's runs formed and counted as the engine's send does (no system
/// call).
fn account_sent(o: &mut Outbound, b: &OutBatch) {
    b.runs(0, true, |first, last, octets| {
        o.account_run(b, first, last, octets)
    });
    black_box(&b.datagrams);
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

    // Outbound: A's TUN side to its uplink, one finished packet per read.
    let plain = VnetHdr::default();
    let mut a_out = Outbound::new(Side::A, opts.cipher, remote, size);
    let templates = packets(Side::A, size);
    let mut out = OutBatch::new();
    let mut spread = vec![0usize; TUNNELS];
    let mut tally = |o: &mut Outbound, b: &OutBatch| {
        for d in &b.datagrams {
            spread[d.tunnel as usize] += 1;
        }
        account_sent(o, b);
    };
    for p in &templates {
        a_out.forward(&plain, p, &mut out, &mut tally);
    }
    tally(&mut a_out, &out);
    a_out.flush(&mut out);
    let mut out_round = || {
        let mut n = 0;
        for p in &templates {
            n += a_out.forward(&plain, p, &mut out, &mut account_sent);
        }
        account_sent(&mut a_out, &out);
        a_out.flush(&mut out);
        assert_eq!(n, BATCH, "every packet sealed");
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
    let mut tso_out = OutBatch::new();
    let mut tso_round = || {
        let mut n = 0;
        for _ in 0..BATCH / segments {
            n += a_tso.forward(&tso_hdr, &super_packet, &mut tso_out, &mut account_sent);
        }
        account_sent(&mut a_tso, &tso_out);
        a_tso.flush(&mut tso_out);
        assert_eq!(n, BATCH, "every segment sealed");
    };

    // Inbound: B seals a batch once; A opens copies of it.
    let mut b_out = Outbound::new(Side::B, opts.cipher, remote, size);
    let mut b_batch = OutBatch::new();
    let mut sealed: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut keep = |_: &mut Outbound, b: &OutBatch| {
        for d in &b.datagrams {
            sealed.push(b.buf[d.start as usize..d.end as usize].to_vec());
        }
    };
    for p in &packets(Side::B, size) {
        b_out.forward(&plain, p, &mut b_batch, &mut keep);
    }
    keep(&mut b_out, &b_batch);
    b_out.flush(&mut b_batch);
    assert_eq!(sealed.len(), BATCH, "B forwards its batch");
    debug_assert!(sealed.iter().all(|s| s.len() == sealed_len(size)));
    let mut a_in = Inbound::new(Side::A, opts.cipher);
    let mut rx: Vec<Vec<u8>> = sealed.iter().map(|s| vec![0u8; s.len()]).collect();
    let mut delivered: Vec<Range<usize>> = Vec::with_capacity(BATCH);
    let mut in_round = || {
        a_in.rekey();
        a_in.fib.refresh(&mut a_in.fib_now);
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
    s.set_nonblocking(true)?;
    Ok(s.into())
}

/// How long a full socket buffer is waited for (the engine's `SEND_WAIT`).
const SEND_WAIT: Duration = Duration::from_millis(20);

/// The loopback sender's half of the engine's send: the batch's runs as `sendmmsg` messages (UDP GSO for runs
/// of more than one datagram until the kernel refuses it), counted per run.
struct Sender {
    fd: RawFd,
    send: SendBatch,
    /// Per message: the datagrams of its run and its octets.
    runs: Vec<(usize, usize, usize)>,
    gso: bool,
    calls: u64,
    datagrams: u64,
    /// Datagrams the kernel did not take (counted as not sent).
    errors: u64,
}

impl Sender {
    fn new(fd: RawFd) -> Sender {
        Sender {
            fd,
            send: SendBatch::with_capacity(BATCH_DATAGRAMS),
            runs: Vec::with_capacity(BATCH_DATAGRAMS),
            gso: true,
            calls: 0,
            datagrams: 0,
            errors: 0,
        }
    }

    /// Sends the datagrams of `b` from the `from`-th on.
    fn send(&mut self, o: &mut Outbound, b: &OutBatch, from: usize) {
        let Sender {
            send, runs, gso, ..
        } = self;
        send.clear();
        runs.clear();
        b.runs(from, *gso, |first, last, octets| {
            let d = b.datagrams[first];
            send.push(SendMsg {
                start: d.start as usize,
                len: octets,
                to: o.tunnels[d.tunnel as usize].remote,
                segment: if last - first > 1 {
                    (d.end - d.start) as u16
                } else {
                    0
                },
            });
            runs.push((first, last, octets));
        });
        let messages = self.send.len();
        let mut m = 0;
        while m < messages {
            match sys::send_batch(self.fd, &b.buf, &mut self.send, m) {
                Ok(n) => {
                    self.calls += 1;
                    for &(first, last, octets) in &self.runs[m..m + n] {
                        o.account_run(b, first, last, octets);
                        self.datagrams += (last - first) as u64;
                    }
                    m += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if !sys::poll_one(self.fd, libc::POLLOUT, SEND_WAIT).unwrap_or(false) {
                        let (first, last, _) = self.runs[m];
                        self.errors += (last - first) as u64;
                        m += 1;
                    }
                }
                Err(e)
                    if self.send.msgs()[m].segment != 0
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EMSGSIZE)
                        ) =>
                {
                    // The engine's fallback: one datagram per message from here on.
                    self.gso = false;
                    let first = self.runs[m].0;
                    return self.send(o, b, first);
                }
                Err(_) => {
                    let (first, last, _) = self.runs[m];
                    self.errors += (last - first) as u64;
                    m += 1;
                }
            }
        }
    }
}

/// What the receiver thread counted.
struct Received {
    ok: u64,
    bad: u64,
    calls: u64,
    gro: bool,
    first: Option<Instant>,
    last: Option<Instant>,
}

/// Runs the loopback benchmark: a sender thread (A) and a receiver thread (B), with the engine's batched
/// system calls: `sendmmsg` with UDP GSO runs on the sender, `recvmmsg` with UDP GRO on the receiver.
pub fn loopback(opts: &BenchOptions) -> Result<LoopbackReport> {
    let machine = Machine::probe();
    let size = opts.size;
    let rx_sock = udp_socket().context("receiver socket on 127.0.0.1")?;
    let tx_sock = udp_socket().context("sender socket on 127.0.0.1")?;
    let to = rx_sock.local_addr()?;
    let done = Arc::new(AtomicBool::new(false));
    let cipher = opts.cipher;

    let receiver = {
        let done = done.clone();
        std::thread::Builder::new()
            .name("bench-rx".into())
            .spawn(move || -> Received {
                let fd = rx_sock.as_raw_fd();
                let gro = sys::set_udp_gro(fd, true).is_ok();
                let mut b_in = Inbound::new(Side::B, cipher);
                let mut batch = RecvBatch::new(RX_BATCH, 1 << 16);
                let mut r = Received {
                    ok: 0,
                    bad: 0,
                    calls: 0,
                    gro,
                    first: None,
                    last: None,
                };
                loop {
                    match batch.recv(fd) {
                        Ok(n) => {
                            let now = Instant::now();
                            r.first.get_or_insert(now);
                            r.last = Some(now);
                            r.calls += 1;
                            let now_ms = (b_in.epoch.elapsed().as_millis() as u64).max(1);
                            for i in 0..n {
                                let meta = batch.meta(i);
                                if meta.truncated {
                                    r.bad += 1;
                                    continue;
                                }
                                // With UDP GRO a message is several datagrams of `segment` octets back to
                                // back, the last maybe shorter.
                                let step = if meta.segment > 0 && meta.segment < meta.len {
                                    meta.segment
                                } else {
                                    meta.len
                                };
                                let slot = batch.slot_mut(i);
                                let mut at = 0;
                                while at < meta.len {
                                    let len = step.min(meta.len - at);
                                    match b_in.receive(&mut slot[at..], len, now_ms) {
                                        Some(range) => {
                                            black_box(&slot[at + range.start..at + range.end]);
                                            r.ok += 1;
                                        }
                                        None => r.bad += 1,
                                    }
                                    at += len;
                                }
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            let wait = Duration::from_millis(200);
                            if !sys::poll_one(fd, libc::POLLIN, wait).unwrap_or(false)
                                && done.load(Ordering::Relaxed)
                            {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(_) => r.bad += 1,
                    }
                }
                r
            })?
    };

    // The sender: A's outbound path, each full batch sent with sendmmsg.
    let secs = opts.secs;
    let sender = std::thread::Builder::new().name("bench-tx".into()).spawn(
        move || -> (Rate, Sender, u64) {
            let plain = VnetHdr::default();
            let mut a_out = Outbound::new(Side::A, cipher, to, size);
            let templates = packets(Side::A, size);
            let mut out = OutBatch::new();
            let mut tx = Sender::new(tx_sock.as_raw_fd());
            let mut send = |o: &mut Outbound, b: &OutBatch| tx.send(o, b, 0);
            let budget = Duration::from_secs_f64(secs);
            let start = Instant::now();
            while start.elapsed() < budget {
                for p in &templates {
                    a_out.forward(&plain, p, &mut out, &mut send);
                }
            }
            send(&mut a_out, &out);
            a_out.flush(&mut out);
            let elapsed = start.elapsed();
            // Keep the socket open until the counts are taken.
            drop(tx_sock);
            let sent = a_out.uplink_stats.tx_packets.load(Ordering::Relaxed);
            let gso_sends = a_out.uplink_stats.gso_sends.load(Ordering::Relaxed);
            (Rate::new(sent, size, elapsed), tx, gso_sends)
        },
    )?;
    let (sent, tx, gso_sends) = sender
        .join()
        .map_err(|_| anyhow::anyhow!("sender thread panicked"))?;
    done.store(true, Ordering::Relaxed);
    let r = receiver
        .join()
        .map_err(|_| anyhow::anyhow!("receiver thread panicked"))?;
    let span = match (r.first, r.last) {
        (Some(f), Some(l)) => l.duration_since(f),
        _ => Duration::ZERO,
    };
    let received = Rate::new(r.ok, size, span);
    let per = |n: u64, calls: u64| {
        if calls == 0 {
            0.0
        } else {
            n as f64 / calls as f64
        }
    };
    Ok(LoopbackReport {
        mode: "loopback",
        cipher: cipher.name(),
        size,
        machine,
        send_mode: if tx.gso {
            "sendmmsg + UDP GSO"
        } else {
            "sendmmsg (UDP GSO refused)"
        },
        recv_mode: if r.gro {
            "recvmmsg + UDP GRO"
        } else {
            "recvmmsg (UDP GRO refused)"
        },
        datagrams_per_send: per(tx.datagrams, tx.calls),
        datagrams_per_recv: per(r.ok + r.bad, r.calls),
        gso_sends,
        loss_pct: if sent.packets == 0 {
            0.0
        } else {
            100.0 * sent.packets.saturating_sub(r.ok + r.bad) as f64 / sent.packets as f64
        },
        sent,
        received,
        rejected: r.bad,
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
        // Batched: whole batches per sendmmsg (the last may be partial), and runs of one tunnel's datagrams
        // as UDP GSO messages unless the kernel refused them.
        assert!(r.send_mode.starts_with("sendmmsg"), "{r:?}");
        assert!(r.recv_mode.starts_with("recvmmsg"), "{r:?}");
        assert!(r.datagrams_per_send > 1.0, "{r:?}");
        assert!(r.datagrams_per_recv >= 1.0, "{r:?}");
        assert!(
            r.send_mode != "sendmmsg + UDP GSO" || r.gso_sends > 0,
            "{r:?}"
        );
        // Loss accounting: what arrived (good or bad) never exceeds what the kernel took.
        assert!(r.received.packets + r.rejected <= r.sent.packets, "{r:?}");
    }

    /// The send runs are the engine's: one tunnel, back to back, equal sizes but a shorter last one, at most
    /// UDP_MAX_SEGMENTS datagrams.
    #[test]
    fn runs_follow_the_engines_rules() {
        let mut b = OutBatch::new();
        let mut at = 0u32;
        let mut push = |b: &mut OutBatch, tunnel: u32, len: u32| {
            b.datagrams.push(Queued {
                tunnel,
                start: at,
                end: at + len,
                inner: len,
            });
            at += len;
        };
        for _ in 0..3 {
            push(&mut b, 0, 100);
        }
        push(&mut b, 0, 60); // shorter: ends the run
        push(&mut b, 0, 100);
        push(&mut b, 1, 100); // another tunnel
        for _ in 0..70 {
            push(&mut b, 2, 50);
        }
        let mut runs = Vec::new();
        b.runs(0, true, |f, l, n| runs.push((f, l, n)));
        assert_eq!(
            runs,
            vec![
                (0, 4, 360),
                (4, 5, 100),
                (5, 6, 100),
                (6, 6 + UDP_MAX_SEGMENTS, UDP_MAX_SEGMENTS * 50),
                (6 + UDP_MAX_SEGMENTS, 76, (70 - UDP_MAX_SEGMENTS) * 50),
            ]
        );
        let mut singles = 0;
        b.runs(3, false, |f, l, _| {
            assert_eq!(l, f + 1);
            singles += 1;
        });
        assert_eq!(singles, 76 - 3);
    }
}
