//! `braid bench`: the data path's per-packet work on synthetic traffic, without root.
//!
//! Two gateways, A and B, are built in memory as a configuration would build them: four tunnels between
//! them (SPIs and keys mirrored), a FIB on each side with a few prefixes and one 4-member next-hop group
//! (equal weights) towards the other site, [`Liveness`], per-tunnel and per-uplink counters. A batch of
//! synthetic inner IPv4 packets (half UDP, half TCP, [`FLOWS`] flows over different addresses and ports by
//! default, up to [`MAX_FLOWS`] with `--flows`, all of the chosen size) then goes through the engine's own
//! code:
//!
//! - **outbound** (A's TUN side to A's uplink): the engine's outbound worker path itself
//!   ([`OutboundPath::read_placed`], the code the engine's worker runs per TUN read, with a [`Wire`] that
//!   sends nothing): [`wire::inspect`], the offload plan, [`Fib::lookup`] in the worker's FIB snapshot,
//!   [`Liveness::members`], the flow hash and the flow table (a flow seen before keeps its tunnel, a new one
//!   is hashed onto a member), the tunnel-MTU check, the sequence numbers (one [`OutboundSa::reserve`] per
//!   read) and the seal in place in the next slot of a 128-datagram / 256 KiB batch buffer, where the TUN
//!   device's `readv` put the packet. That copy is the kernel's (a system call's work, which these figures
//!   leave out): the round's stand-in for it writes the read's headers into the slot and leaves the payload
//!   octets as an earlier round left them (see [`tun_read`]). A full batch (and the batch at the end of a round) is
//!   flushed as the engine flushes it: its runs formed (one tunnel, back to back, equal sizes; UDP GSO
//!   messages) into one `sendmmsg`'s messages, which the wire takes whole; the tunnel and uplink counters
//!   added once per run, the SA counters counted and published once per tunnel, the reads counted. The
//!   kernel writes the UDP and IP headers, so no framing beyond that is done in user space.
//! - **outbound TSO**: the same path for a TCP super-packet of up to 32 segments (`NEEDS_CSUM`,
//!   `GSO_TCPV4`): the read's slot part copied to the spill buffer (where the kernel put the rest), routing
//!   once per read, each segment cut, checksummed while copied into the batch and sealed there.
//! - **inbound** (A's uplink to A's TUN side): the engine's inbound worker path itself
//!   ([`InboundPath::receive`], with a [`TunWire`] that takes every write). Before each round, untimed, B
//!   seals its next batch (fresh sequence numbers, as a peer sends them) and the datagrams are copied into
//!   receive slots, 32 messages a batch (the stand-in for `recvmmsg`'s copy, the kernel's work); the round is
//!   A's path handling each batch: classification (RFC 3948), the SPI lookup, the replay check (default
//!   1024-packet window) and the open in place, the inner-packet checks (version, length, the source allowed
//!   on that tunnel), the TUN queue, GRO coalescing where packets allow it, the TUN writes and the counters
//!   once per batch.
//! - **raw ring AEAD seal** over the same number of octets with an 8-octet AAD: the reference the fast path's
//!   target is stated against (80% of it). braid's ESP seals with aws-lc-rs, whose AES-GCM is faster than
//!   ring's on CPUs with AVX-512 and VAES, so the path can pass 100% of it; the path's own cost shows against
//!   the ESP seal line (`outbound_vs_esp_seal`).
//! - **ESP seal**: the four tunnels' SAs sealing packets of that size in turn, each in its own buffer
//!   ([`OutboundSa::seal_next`] after one [`OutboundSa::reserve`]): ESP's header, padding, trailer, nonce and AAD
//!   around braid's AEAD (aws-lc-rs), without the path: the outbound path's distance from it is the path's own
//!   work.
//!
//! Each direction runs on one thread, so the figures are per core. `--loopback` sends the sealed datagrams
//! for real, from a sender thread (A's outbound path) to a receiver thread (B's inbound path) over UDP
//! sockets on 127.0.0.1, with the engine's batched system calls: each full batch goes out with
//! [`sys::send_batch`] (one `sendmmsg`, runs of one tunnel's datagrams as UDP GSO messages; after a refusal
//! one datagram per message, as the engine falls back), and the receiver takes up to 32 messages per
//! `recvmmsg` ([`RecvBatch`]) with UDP GRO on and hands each batch to B's inbound path (which splits coalesced
//! messages at their segment size). The report says which modes ran and how many datagrams each call carried.
//!
//! Left out: the uplink cap (the shaper; benches run uncapped), ICMP too-big generation, IPv6, the TUN device.

use std::cell::RefCell;
use std::hint::black_box;
use std::io::IoSlice;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use braid_crypto::{
    sealed_len, Cipher, InboundSa, NextHeader, OutboundSa, SaKey, Spi, HEADROOM, KEYMAT_LEN,
    MAX_TAILROOM,
};
use braid_dataplane::inbound::{InboundPath, TunWire};
use braid_dataplane::outbound::{OutboundPath, Sockets, Wire};
use braid_dataplane::sys::{self, RecvBatch, SendBatch};
use braid_dataplane::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, VNET_HDR_LEN};
use braid_dataplane::wire;
use braid_dataplane::{
    Fib, FibBuilder, FibCell, Liveness, Member, NextHopGroup, Prefix, TunStats, TunnelIo,
    TunnelStats, UplinkStats,
};
use serde::Serialize;

/// Packets per round: about 370 KiB of 1400-octet packets, within one core's L2 cache, as a batch of the
/// fast path would be.
pub const BATCH: usize = 256;
/// Distinct flows by default (half UDP, half TCP): a batch holds four packets of each.
pub const FLOWS: usize = 64;
/// The most flows `--flows` takes (the synthetic rounds hold a read per flow, at least a batch).
pub const MAX_FLOWS: usize = 16384;
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
    /// Distinct flows (1 to [`MAX_FLOWS`]); above a batch, the outbound rounds take the flows' packets in
    /// turn, a batch at a time.
    pub flows: usize,
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
    /// ring's AEAD seal alone over `size` octets: the reference of the ratios `*_vs_raw`.
    pub raw_seal: Rate,
    /// The SAs' ESP seal alone (framing and AEAD, no path) over `size` octets.
    pub esp_seal: Rate,
    pub outbound: Rate,
    /// The outbound path of TCP super-packets read with TSO (up to [`TSO_SEGMENTS`] segments each): per segment only
    /// the segmentation copy and the seal; routing once per super-packet. What a TCP stream costs.
    pub outbound_tso: Rate,
    pub inbound: Rate,
    /// ESP seal packets/s over raw seal packets/s.
    pub esp_seal_vs_raw: f64,
    /// outbound packets/s over raw seal packets/s.
    pub outbound_vs_raw: f64,
    pub outbound_tso_vs_raw: f64,
    pub inbound_vs_raw: f64,
    /// outbound packets/s over ESP seal packets/s: the path's own cost, against braid's own AEAD.
    pub outbound_vs_esp_seal: f64,
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
    rate_line("raw ring AEAD seal (reference)", &r.raw_seal, "");
    rate_line(
        "ESP seal: framing + aws-lc AEAD",
        &r.esp_seal,
        &format!("  {:.0}% of raw", r.esp_seal_vs_raw * 100.0),
    );
    rate_line(
        "outbound: inspect..seal..queue",
        &r.outbound,
        &format!(
            "  {:.0}% of raw, {:.0}% of ESP seal",
            r.outbound_vs_raw * 100.0,
            r.outbound_vs_esp_seal * 100.0
        ),
    );
    rate_line(
        "outbound TSO: segment..seal",
        &r.outbound_tso,
        &format!("  {:.0}% of raw", r.outbound_tso_vs_raw * 100.0),
    );
    rate_line(
        "inbound: open..checks..write",
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

/// Messages per `recvmmsg` on the loopback receiver (the engine's `RX_BATCH`).
const RX_BATCH: usize = 32;

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

/// One gateway's outbound half, the TUN side to the uplink: the engine's own per-read path
/// ([`OutboundPath`]) over one uncapped uplink, with the counters it adds to.
struct Outbound {
    path: OutboundPath,
    tunnels: Vec<Arc<TunnelStats>>,
    uplink: Arc<UplinkStats>,
    tun: Arc<TunStats>,
}

impl Outbound {
    /// Gateway `side`'s tunnels to `remote` (inner packets up to `size`, at least 1400), sealing with `cipher`.
    fn new(side: Side, cipher: Cipher, remote: SocketAddr, size: usize) -> Outbound {
        let a_to_b = side == Side::A;
        let tunnels: Vec<Arc<TunnelStats>> = (0..TUNNELS).map(|_| Arc::default()).collect();
        let io = tunnels
            .iter()
            .enumerate()
            .map(|(t, stats)| TunnelIo {
                name: format!("t{t}"),
                uplink: 0,
                remote,
                outbound: Some(OutboundSa::new(
                    spi(t, a_to_b),
                    &SaKey::new(cipher, &keymat(t, a_to_b)).expect("36 octets"),
                    false,
                )),
                inbound: Vec::new(),
                allowed_sources: Vec::new(),
                max_inner: size.max(1400),
                icmp_source_v4: None,
                icmp_source_v6: None,
                stats: stats.clone(),
            })
            .collect();
        let uplink = Arc::new(UplinkStats::default());
        let tun = Arc::new(TunStats::default());
        let path = OutboundPath::standalone(
            io,
            vec![uplink.clone()],
            Arc::new(FibCell::new(fib(side))),
            Liveness::new(TUNNELS),
            tun.clone(),
            FLOW_SEED,
        );
        Outbound {
            path,
            tunnels,
            uplink,
            tun,
        }
    }

    /// Packets dropped on the way out, for any reason.
    fn drops(&self) -> u64 {
        self.tun.drops.total() + self.tunnels.iter().map(|t| t.drops.total()).sum::<u64>()
    }

    /// Datagrams sent so far (as the path counts them: what the wire took).
    fn sent(&self) -> u64 {
        self.uplink.tx_packets.load(Ordering::Relaxed)
    }
}

/// The synthetic rounds' wire: takes every message whole, as the kernel would, without a system call; with
/// `keep`, it also keeps a copy of each datagram (GSO messages split at their segment size).
#[derive(Default)]
struct Sink {
    keep: bool,
    kept: Vec<Vec<u8>>,
}

impl Sink {
    /// A sink that keeps what it is sent.
    fn keeping() -> Sink {
        Sink {
            keep: true,
            kept: Vec::new(),
        }
    }
}

impl Wire for Sink {
    fn send_batch(
        &mut self,
        _: usize,
        buf: &[u8],
        msgs: &mut SendBatch,
        from: usize,
    ) -> std::io::Result<usize> {
        black_box((buf.as_ptr(), msgs.msgs()));
        if self.keep {
            for m in &msgs.msgs()[from..] {
                let step = if m.segment > 0 {
                    m.segment as usize
                } else {
                    m.len
                };
                self.kept.extend(
                    buf[m.start..m.start + m.len]
                        .chunks(step)
                        .map(<[u8]>::to_vec),
                );
            }
        }
        Ok(msgs.len() - from)
    }

    fn send_to(&mut self, _: usize, datagram: &[u8], _: SocketAddr) -> std::io::Result<()> {
        black_box(datagram);
        if self.keep {
            self.kept.push(datagram.to_vec());
        }
        Ok(())
    }

    fn writable(&mut self, _: usize, _: Duration) -> bool {
        true
    }

    fn write_tun(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        Ok(frame.len())
    }
}

/// The loopback sender's wire: the engine's sockets, with the system calls and datagrams counted.
struct Counted {
    wire: Sockets,
    calls: u64,
    datagrams: u64,
}

impl Wire for Counted {
    fn send_batch(
        &mut self,
        uplink: usize,
        buf: &[u8],
        msgs: &mut SendBatch,
        from: usize,
    ) -> std::io::Result<usize> {
        self.calls += 1;
        let n = self.wire.send_batch(uplink, buf, msgs, from)?;
        self.datagrams += msgs.msgs()[from..from + n]
            .iter()
            .map(|m| match m.segment {
                0 => 1,
                s => m.len.div_ceil(s as usize) as u64,
            })
            .sum::<u64>();
        Ok(n)
    }

    fn send_to(&mut self, uplink: usize, datagram: &[u8], to: SocketAddr) -> std::io::Result<()> {
        self.calls += 1;
        self.wire.send_to(uplink, datagram, to)?;
        self.datagrams += 1;
        Ok(())
    }

    fn writable(&mut self, uplink: usize, wait: Duration) -> bool {
        self.wire.writable(uplink, wait)
    }

    fn write_tun(&mut self, frame: &[u8]) -> std::io::Result<usize> {
        self.wire.write_tun(frame)
    }
}

/// One gateway's inbound half, the uplink to the TUN side: the engine's own per-batch path ([`InboundPath`])
/// with the counters it adds to.
struct Inbound {
    path: InboundPath,
    tunnels: Vec<Arc<TunnelStats>>,
    uplink: Arc<UplinkStats>,
}

impl Inbound {
    /// Gateway `side`'s inbound SAs (what the other side seals with `cipher`), replay window
    /// [`REPLAY_WINDOW`]. A tunnel accepts the peer's inside address from its own prefixes and the other
    /// site's sources through the FIB (the BGP-learned case), the longer of the engine's two checks.
    fn new(side: Side, cipher: Cipher) -> Inbound {
        // We receive what the other side sends.
        let a_to_b = side == Side::B;
        let tunnels: Vec<Arc<TunnelStats>> = (0..TUNNELS).map(|_| Arc::default()).collect();
        let io = tunnels
            .iter()
            .enumerate()
            .map(|(t, stats)| {
                let key = SaKey::new(cipher, &keymat(t, a_to_b)).expect("36 octets");
                TunnelIo {
                    name: format!("t{t}"),
                    uplink: 0,
                    remote: SocketAddr::from(([198, 51, 100, 2], 4500)),
                    outbound: None,
                    inbound: vec![InboundSa::new(spi(t, a_to_b), &key, false, REPLAY_WINDOW)],
                    allowed_sources: vec![Prefix::new(
                        IpAddr::V4(Ipv4Addr::new(169, 254, t as u8, 0)),
                        30,
                    )
                    .expect("prefix")],
                    max_inner: 1400,
                    icmp_source_v4: None,
                    icmp_source_v6: None,
                    stats: stats.clone(),
                }
            })
            .collect();
        let uplink = Arc::new(UplinkStats::default());
        let path = InboundPath::standalone(
            io,
            vec![uplink.clone()],
            Arc::new(FibCell::new(fib(side))),
            Arc::default(),
        )
        .expect("distinct SPIs");
        Inbound {
            path,
            tunnels,
            uplink,
        }
    }

    /// Inner packets written to the TUN device so far.
    fn delivered(&self) -> u64 {
        self.tunnels
            .iter()
            .map(|t| t.rx_packets.load(Ordering::Relaxed))
            .sum()
    }

    /// Datagrams dropped on the way in, for any reason.
    fn drops(&self) -> u64 {
        self.uplink.drops.total() + self.tunnels.iter().map(|t| t.drops.total()).sum::<u64>()
    }
}

/// The TUN side of the benches: takes every write whole, without a system call.
struct TunSink;

impl TunWire for TunSink {
    fn write(&mut self, _: usize, frame: &[u8]) -> std::io::Result<usize> {
        black_box(frame.as_ptr());
        Ok(frame.len())
    }

    fn write_vectored(&mut self, _: usize, iov: &[IoSlice<'_>]) -> std::io::Result<usize> {
        black_box(iov.as_ptr());
        Ok(iov.iter().map(|s| s.len()).sum())
    }
}

// ---------------------------------------------------------------------------------------------------------
// Synthetic traffic.

/// Packet `i` of a batch from `side`'s site to the other's: IPv4 with DF, UDP for even flows and TCP for
/// odd ones, `size` octets in all, a valid header checksum.
fn packet(side: Side, i: usize, size: usize, flows: usize) -> Vec<u8> {
    let flow = i % flows.max(1);
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
fn packets(side: Side, size: usize, flows: usize) -> Vec<Vec<u8>> {
    (0..BATCH).map(|i| packet(side, i, size, flows)).collect()
}

/// A TUN read: the virtio-net header `hdr`, then packet `p`.
fn with_vnet_hdr(hdr: &VnetHdr, p: &[u8]) -> Vec<u8> {
    let mut read = vec![0u8; VNET_HDR_LEN + p.len()];
    hdr.write(&mut read);
    read[VNET_HDR_LEN..].copy_from_slice(p);
    read
}

/// One benchmark round: its preparation (not timed), then the round itself (timed).
type Round<'a> = (&'a mut dyn FnMut(), &'a mut dyn FnMut());

/// Runs the `rounds` (each handles [`BATCH`] packets; each a preparation, not timed, and the round itself) in
/// turn, each round timed on its own, for about `secs` each in all, after one unmeasured round of each.
/// Interleaving exposes all of them to the same contention, and the median round is what one core does when
/// it is not preempted (a round takes 0.1-1 ms; a time slice is several): the figures stay comparable on a
/// busy machine.
fn measure(secs: f64, size: usize, rounds: &mut [Round<'_>]) -> Vec<Rate> {
    for (prepare, r) in rounds.iter_mut() {
        prepare();
        r();
    }
    let budget = Duration::from_secs_f64(secs * rounds.len() as f64);
    let start = Instant::now();
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); rounds.len()];
    while start.elapsed() < budget || times[0].len() < 3 {
        for ((prepare, r), t) in rounds.iter_mut().zip(&mut times) {
            prepare();
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

/// The tunnels' SAs sealing [`BATCH`] packets of `size` octets in place, in turn (as the outbound round spreads
/// them): ESP's framing (header, padding, trailer, nonce and AAD, a sequence number reserved per packet) and the
/// AEAD, without the path around them.
fn esp_seal_round(cipher: Cipher, size: usize) -> impl FnMut() {
    let sas: Vec<OutboundSa> = (0..TUNNELS)
        .map(|t| {
            let key = SaKey::new(cipher, &keymat(t, true)).expect("36 octets");
            OutboundSa::new(spi(t, true), &key, false)
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = (0..BATCH)
        .map(|i| vec![i as u8; HEADROOM + size + MAX_TAILROOM])
        .collect();
    move || {
        for (i, buf) in bufs.iter_mut().enumerate() {
            let sa = &sas[i % TUNNELS];
            let mut seq = sa.reserve(1).expect("sequence numbers");
            let esp = sa
                .seal_next(
                    black_box(buf),
                    HEADROOM..HEADROOM + size,
                    NextHeader::Ipv4,
                    &mut seq,
                )
                .expect("seal");
            black_box(esp);
        }
    }
}

/// Octets of a read the synthetic rounds write into its read areas: the virtio-net header and the inner IP and
/// transport headers, all that the path reads before it seals.
const READ_HEADERS: usize = VNET_HDR_LEN + HEADER_LEN;

/// A TUN read as the synthetic rounds stand in for it. The TUN device copies a read into the areas the path
/// gives (the batch's next slot, and the spill buffer for the rest of a super-packet); that copy is the
/// kernel's work, in the `readv`, and these figures leave system calls out, so only the read's headers are
/// written. The payload octets are left as they lie from an earlier round (the same read lands in the same
/// place each round; what the path does with payload octets does not depend on their values), and they are
/// not fresh in the cache as the kernel's copy would leave them.
fn tun_read(path: &mut OutboundPath, read: &[u8], wire: &mut Sink) {
    let (slot, _) = path.read_areas(wire);
    let headers = READ_HEADERS.min(read.len()).min(slot.len());
    slot[..headers].copy_from_slice(&read[..headers]);
    path.read_placed(read.len(), wire);
}

/// Runs the synthetic benchmark.
pub fn synthetic(opts: &BenchOptions) -> SyntheticReport {
    let machine = Machine::probe();
    let size = opts.size;
    let remote: SocketAddr = "198.51.100.2:4500".parse().expect("address");

    let mut raw_round = raw_seal_round(opts.cipher, size);
    let mut esp_round = esp_seal_round(opts.cipher, size);

    // Outbound: A's TUN side to its uplink, one finished packet per read (virtio-net header first). With more
    // flows than a batch holds, a packet of each flow, and the rounds take them a batch at a time, in turn.
    let flows = opts.flows.clamp(1, MAX_FLOWS);
    let mut a_out = Outbound::new(Side::A, opts.cipher, remote, size);
    let reads: Vec<Vec<u8>> = (0..flows.next_multiple_of(BATCH))
        .map(|i| with_vnet_hdr(&VnetHdr::default(), &packet(Side::A, i, size, flows)))
        .collect();
    let mut out_sink = Sink::default();
    // The first pass (not measured) copies the reads whole; the measured rounds write their headers.
    for r in &reads {
        a_out.path.read(r, &mut out_sink);
    }
    a_out.path.flush(&mut out_sink);
    let spread: Vec<usize> = a_out
        .tunnels
        .iter()
        .map(|t| t.tx_packets.load(Ordering::Relaxed) as usize)
        .collect();
    let first_pass = reads.len() as u64;
    let mut turn = reads.chunks(BATCH).cycle();
    let mut out_round = || {
        for r in turn.next().expect("a batch of reads") {
            tun_read(&mut a_out.path, r, &mut out_sink);
        }
        a_out.path.flush(&mut out_sink);
    };

    // Outbound with TSO: TCP super-packets of TSO_SEGMENTS segments of `size` octets, BATCH segments a round.
    let gso_size = (size - HEADER_LEN).max(1);
    // As many segments as fit a 64 KiB IP packet, at most TSO_SEGMENTS, a power of two (divides BATCH).
    let fit = (usize::from(u16::MAX) - HEADER_LEN) / gso_size;
    let segments = 1 << fit.clamp(1, TSO_SEGMENTS).ilog2();
    let tso_hdr = VnetHdr {
        flags: F_NEEDS_CSUM,
        gso_type: GSO_TCPV4,
        hdr_len: HEADER_LEN as u16,
        gso_size: gso_size as u16,
        csum_start: 20,
        csum_offset: 16,
    };
    let super_read = with_vnet_hdr(
        &tso_hdr,
        &packet(Side::A, 1, HEADER_LEN + segments * gso_size, flows),
    );
    let mut a_tso = Outbound::new(Side::A, opts.cipher, remote, size);
    let mut tso_sink = Sink::default();
    for _ in 0..BATCH / segments {
        a_tso.path.read(&super_read, &mut tso_sink);
    }
    a_tso.path.flush(&mut tso_sink);
    let mut tso_round = || {
        for _ in 0..BATCH / segments {
            tun_read(&mut a_tso.path, &super_read, &mut tso_sink);
        }
        a_tso.path.flush(&mut tso_sink);
    };

    // Inbound: before each round (untimed), B seals the next batch (fresh sequence numbers, as a peer sends
    // them); the round copies them into receive slots, 32 messages at a time (the stand-in for `recvmmsg`'s
    // copy), and A's inbound path handles each batch as the engine does, up to the TUN write.
    let mut b_out = Outbound::new(Side::B, opts.cipher, remote, size);
    let b_reads: Vec<Vec<u8>> = packets(Side::B, size, flows)
        .iter()
        .map(|p| with_vnet_hdr(&VnetHdr::default(), p))
        .collect();
    let sealed = RefCell::new(Sink::keeping());
    let mut seal_next = || {
        let mut keep = sealed.borrow_mut();
        keep.kept.clear();
        for r in &b_reads {
            b_out.path.read(r, &mut *keep);
        }
        b_out.path.flush(&mut *keep);
    };
    seal_next();
    assert_eq!(sealed.borrow().kept.len(), BATCH, "B forwards its batch");
    debug_assert!(sealed
        .borrow()
        .kept
        .iter()
        .all(|s| s.len() == sealed_len(size)));
    let mut a_in = Inbound::new(Side::A, opts.cipher);
    let from = SocketAddr::from(([198, 51, 100, 2], 4500));
    // The receive slots of a round's `recvmmsg` calls, filled before it (the kernel's copy is not timed).
    let received = RefCell::new(
        (0..BATCH.div_ceil(RX_BATCH))
            .map(|_| RecvBatch::new(RX_BATCH, sealed_len(size)))
            .collect::<Vec<_>>(),
    );
    let mut prepare_in = || {
        seal_next();
        let kept = &sealed.borrow().kept;
        for (rx, chunk) in received.borrow_mut().iter_mut().zip(kept.chunks(RX_BATCH)) {
            rx.clear();
            for d in chunk {
                rx.push(d, from, 0);
            }
        }
    };
    let mut in_round = || {
        let kept = sealed.borrow().kept.len();
        for (i, rx) in received.borrow_mut().iter_mut().enumerate() {
            let n = (kept - i * RX_BATCH).min(RX_BATCH);
            a_in.path.receive(0, rx, n, &mut TunSink);
        }
    };
    let rates = measure(
        opts.secs,
        size,
        &mut [
            (&mut || {}, &mut raw_round),
            (&mut || {}, &mut esp_round),
            (&mut || {}, &mut out_round),
            (&mut || {}, &mut tso_round),
            (&mut prepare_in, &mut in_round),
        ],
    );
    let [raw, esp_seal, outbound, outbound_tso, inbound] =
        <[Rate; 5]>::try_from(rates).expect("five rates");
    assert_eq!(a_out.drops(), 0, "outbound drops");
    assert_eq!(a_tso.drops(), 0, "outbound TSO drops");
    // Every packet of every round (and of the first pass and the first round, unmeasured) went out.
    assert_eq!(
        a_out.sent(),
        outbound.packets + first_pass + BATCH as u64,
        "outbound sent"
    );
    assert_eq!(
        a_tso.sent(),
        outbound_tso.packets + 2 * BATCH as u64,
        "outbound TSO sent"
    );
    assert_eq!(a_in.drops(), 0, "inbound drops");
    assert_eq!(
        a_in.delivered(),
        inbound.packets + BATCH as u64,
        "every packet delivered"
    );

    // Packets/s of `r` over those of `base` (0 where the base measured nothing).
    let share = |r: &Rate, base: &Rate| {
        if base.mpps > 0.0 {
            r.mpps / base.mpps
        } else {
            0.0
        }
    };
    SyntheticReport {
        mode: "synthetic",
        cipher: opts.cipher.name(),
        size,
        batch: BATCH,
        flows,
        machine,
        esp_seal_vs_raw: share(&esp_seal, &raw),
        outbound_vs_raw: share(&outbound, &raw),
        outbound_tso_vs_raw: share(&outbound_tso, &raw),
        inbound_vs_raw: share(&inbound, &raw),
        outbound_vs_esp_seal: share(&outbound, &esp_seal),
        raw_seal: raw,
        esp_seal,
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
    let flows = opts.flows.clamp(1, MAX_FLOWS);

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
                            b_in.path.receive(0, &mut batch, n, &mut TunSink);
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
                r.ok = b_in.delivered();
                r.bad += b_in.drops();
                r
            })?
    };

    // The sender: A's outbound path, each full batch sent with sendmmsg.
    let secs = opts.secs;
    let sender = std::thread::Builder::new().name("bench-tx".into()).spawn(
        move || -> (Rate, Counted, u64, bool) {
            let mut a_out = Outbound::new(Side::A, cipher, to, size);
            let reads: Vec<Vec<u8>> = packets(Side::A, size, flows)
                .iter()
                .map(|p| with_vnet_hdr(&VnetHdr::default(), p))
                .collect();
            let mut wire = Counted {
                wire: Sockets::new(Arc::new(vec![vec![tx_sock]]), 0, None),
                calls: 0,
                datagrams: 0,
            };
            let budget = Duration::from_secs_f64(secs);
            let start = Instant::now();
            while start.elapsed() < budget {
                for r in &reads {
                    a_out.path.read(r, &mut wire);
                }
            }
            a_out.path.flush(&mut wire);
            let elapsed = start.elapsed();
            let sent = a_out.sent();
            let gso_sends = a_out.uplink.gso_sends.load(Ordering::Relaxed);
            let gso = a_out.uplink.gso_fallbacks.load(Ordering::Relaxed) == 0;
            (Rate::new(sent, size, elapsed), wire, gso_sends, gso)
        },
    )?;
    let (sent, tx, gso_sends, gso) = sender
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
        send_mode: if gso {
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
            let p = packet(Side::A, 3, size, FLOWS);
            let inner = wire::inspect(&p).unwrap();
            assert_eq!(inner.len, size);
            assert_eq!(wire::checksum(0, &p[..20]), 0, "header checksum");
        }
        let r = synthetic(&BenchOptions {
            cipher: Cipher::Aes256Gcm16,
            size: 200,
            secs: 0.01,
            flows: FLOWS,
            json: false,
            loopback: false,
        });
        assert_eq!(r.tunnel_spread.iter().sum::<usize>(), BATCH);
        assert!(r.tunnel_spread.iter().all(|&n| n > 0), "{r:?}");
        assert!(r.outbound.packets >= BATCH as u64 && r.inbound.packets >= BATCH as u64);
        // More flows than a batch: a packet of each goes out first, then the rounds take them in turn.
        let r = synthetic(&BenchOptions {
            cipher: Cipher::Aes256Gcm16,
            size: 200,
            secs: 0.01,
            flows: 1000,
            json: false,
            loopback: false,
        });
        assert_eq!(r.flows, 1000);
        assert_eq!(r.tunnel_spread.iter().sum::<usize>(), 1024);
        assert!(r.tunnel_spread.iter().all(|&n| n > 0), "{r:?}");
    }

    #[test]
    fn loopback_delivers() {
        let r = loopback(&BenchOptions {
            cipher: Cipher::ChaCha20Poly1305,
            size: 1400,
            secs: 0.05,
            flows: FLOWS,
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
}
