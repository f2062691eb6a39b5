//! One outbound worker's work per TUN read, without its system calls: [`OutboundPath`].
//!
//! A read (a virtio-net header and a finished packet or a super-packet) is inspected, routed through the
//! worker's FIB snapshot, given a tunnel (per flow from the flow table, or sprayed), checked against the
//! tunnel MTU (an ICMP "too big" goes back otherwise), and sealed into the next slots of the worker's batch
//! buffer, so that the sealed datagrams lie back to back. The TUN device reads straight into the next slot
//! ([`OutboundPath::read_areas`]: one `readv`, the slot first, a spill buffer for the rest of a larger read),
//! so a finished packet is sealed where the kernel put it, with no copy in user space; a super-packet's
//! segments ([`crate::gso`]) are written from the spill buffer into the slots (the segmentation is the copy).
//! A finished packet is sealed one read late: a read is inspected first (its flow's slot in the flow table
//! fetched in the background), then the packet read before it is sealed, then it is decided and waits in
//! its slot, its sealed length kept, so the slot's cache miss (the common case with many flows) overlaps an
//! AEAD instead of stalling the route cache. The flush, an SA command and a read through the spill buffer
//! seal the waiting packet first: the order of the reads and each packet's SA are kept.
//! The sequence numbers of all of a read's segments are reserved with one atomic step. A capped uplink's
//! datagrams pass its token bucket (sent, held briefly, or dropped). A full batch, and the batch once the
//! device is drained, goes out per uplink: runs of equal-size datagrams of one tunnel (the last may be
//! shorter; at most 64 and 64 KiB) become one UDP GSO message, the messages of the batch one `sendmmsg`. An
//! uplink whose kernel refuses UDP GSO is remembered by every worker at once ([`UplinkGso`]). Tunnel and
//! uplink counters move once per run, SA counters once per batch.
//!
//! Everything that touches the kernel goes through a [`Wire`]: the engine's worker passes its sockets and its
//! TUN queue ([`Sockets`]); `braid bench` passes one that sends nothing (the synthetic figures) or a loopback
//! socket. So the benchmark measures this very code, not a copy of it.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use braid_crypto::{NextHeader, SealError, SeqRange};

use crate::buffer::{PacketBuf, HEADROOM};
use crate::engine::{warn_limited, Liveness, TunnelIo, MAX_LIVE, NO_MEMBER};
use crate::fib::{Fib, FibCell, NextHopGroup};
use crate::flow::{flow_key, FlowKey};
use crate::gso::Plan;
use crate::sa::{Board, OutboundEntry, SaError, TxCommand};
use crate::scheduler::{self, FlowTable};
use crate::shaper::{Admit, TokenBucket};
use crate::stats::{add, DropReason, TunStats, TunnelStats, UplinkStats, WorkerStats};
use crate::sys::{self, SendBatch, SendMsg, UDP_GSO_MAX_BYTES, UDP_MAX_SEGMENTS};
use crate::vnet::{VnetHdr, VNET_HDR_LEN};
use crate::wire::{self, Inner};

/// How long an uplink sends one datagram per message after the kernel refused UDP GSO with `EMSGSIZE`.
const GSO_RETRY: Duration = Duration::from_secs(30);
/// How long a send waits for room in a full socket buffer before the datagram is dropped.
pub const SEND_WAIT: Duration = Duration::from_millis(20);
/// An uplink with less unused cap than this is "full" for new flows.
const MIN_HEADROOM: f64 = 0.05;
/// The most datagrams one uplink's cap may hold back at once, whatever their delay.
const MAX_HELD: usize = 4096;
/// The most sealed datagrams in one outbound batch (one flush).
pub const BATCH_DATAGRAMS: usize = 128;
/// Octets of the outbound batch buffer, where the sealed datagrams lie back to back (room for the largest
/// packet even when the batch is not empty).
const BATCH_BYTES: usize = 256 * 1024;
/// The most packets (segments of super-packets included) one outbound worker holds per tunnel while the
/// tunnel waits for its next outbound SA.
pub const HOLD_PACKETS: u64 = 1024;
/// The most octets of reads one outbound worker holds per tunnel while it waits for its next outbound SA.
pub const HOLD_BYTES: usize = 1 << 20;
/// Octets of packet the batch's next slot takes from a TUN read at first: a finished packet up to this size is
/// sealed where the kernel put it (no copy in user space).
const SLOT_ROOM_MIN: usize = 2048;
/// The most the slot grows to after larger finished packets (a TUN MTU above [`SLOT_ROOM_MIN`]).
const SLOT_ROOM_MAX: usize = 16 * 1024;
/// Reads between two refreshes of the coarse clock and the FIB snapshot under load.
const TICK_READS: u32 = 256;

/// The system calls of an outbound worker: what [`OutboundPath`] asks of the kernel.
pub trait Wire {
    /// Sends `msgs[from..]` (ranges of `buf`) on uplink `uplink` with one `sendmmsg` ([`sys::send_batch`]);
    /// returns how many messages the kernel took.
    fn send_batch(
        &mut self,
        uplink: usize,
        buf: &[u8],
        msgs: &mut SendBatch,
        from: usize,
    ) -> io::Result<usize>;
    /// Sends one datagram on uplink `uplink`.
    fn send_to(&mut self, uplink: usize, datagram: &[u8], to: SocketAddr) -> io::Result<()>;
    /// Waits at most `wait` for room in uplink `uplink`'s send buffer; whether there is.
    fn writable(&mut self, uplink: usize, wait: Duration) -> bool;
    /// Writes one packet, virtio-net header first, to the TUN device (an ICMP error for the site).
    fn write_tun(&mut self, frame: &[u8]) -> io::Result<usize>;
}

/// The engine's [`Wire`]: the uplinks' sockets (this worker sends from socket `worker % len` of each) and,
/// if any, this worker's TUN queue.
pub struct Sockets {
    sockets: Arc<Vec<Vec<UdpSocket>>>,
    worker: usize,
    tun: Option<Arc<File>>,
}

impl Sockets {
    /// Per uplink, its sockets; `tun` takes the ICMP errors (without one they are not sent).
    pub fn new(
        sockets: Arc<Vec<Vec<UdpSocket>>>,
        worker: usize,
        tun: Option<Arc<File>>,
    ) -> Sockets {
        Sockets {
            sockets,
            worker,
            tun,
        }
    }

    fn socket(&self, uplink: usize) -> io::Result<&UdpSocket> {
        let group = self
            .sockets
            .get(uplink)
            .filter(|g| !g.is_empty())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no uplink {uplink}"))
            })?;
        Ok(&group[self.worker % group.len()])
    }
}

impl Wire for Sockets {
    fn send_batch(
        &mut self,
        uplink: usize,
        buf: &[u8],
        msgs: &mut SendBatch,
        from: usize,
    ) -> io::Result<usize> {
        sys::send_batch(self.socket(uplink)?.as_raw_fd(), buf, msgs, from)
    }

    fn send_to(&mut self, uplink: usize, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
        self.socket(uplink)?.send_to(datagram, to).map(drop)
    }

    fn writable(&mut self, uplink: usize, wait: Duration) -> bool {
        self.socket(uplink)
            .and_then(|s| sys::poll_one(s.as_raw_fd(), libc::POLLOUT, wait))
            .unwrap_or(false)
    }

    fn write_tun(&mut self, frame: &[u8]) -> io::Result<usize> {
        match &self.tun {
            Some(tun) => (&**tun).write(frame),
            None => Err(io::Error::new(io::ErrorKind::NotFound, "no TUN device")),
        }
    }
}

/// A tunnel as an outbound worker sees it.
#[derive(Clone)]
pub(crate) struct OutTunnel {
    pub(crate) uplink: usize,
    pub(crate) remote: SocketAddr,
    pub(crate) sa: Option<Arc<OutboundEntry>>,
    /// Reads kept while the tunnel waits for its next outbound SA.
    hold: Option<SaHold>,
    max_inner: usize,
    icmp_source_v4: Option<Ipv4Addr>,
    icmp_source_v6: Option<Ipv6Addr>,
    stats: Arc<TunnelStats>,
}

impl OutTunnel {
    /// Tunnel `t`'s outbound half, sealing with `sa`.
    pub(crate) fn new(t: &TunnelIo, sa: Option<Arc<OutboundEntry>>) -> OutTunnel {
        OutTunnel {
            uplink: t.uplink,
            remote: t.remote,
            sa,
            hold: None,
            max_inner: t.max_inner,
            icmp_source_v4: t.icmp_source_v4,
            icmp_source_v6: t.icmp_source_v6,
            stats: t.stats.clone(),
        }
    }
}

/// One worker's reads of one tunnel kept while the tunnel waits for its next outbound SA (the peer deleted the
/// child SA and the next one is being negotiated).
#[derive(Clone)]
struct SaHold {
    until: Instant,
    /// Each read as it came (virtio-net header and packet).
    reads: Vec<Vec<u8>>,
    /// The packets they carry (segments of super-packets included).
    packets: u64,
    bytes: usize,
}

impl SaHold {
    fn new(until: Instant) -> SaHold {
        SaHold {
            until,
            reads: Vec::new(),
            packets: 0,
            bytes: 0,
        }
    }

    /// Keeps `read` (carrying `packets` packets) if the hold has room and time left.
    fn keep(&mut self, read: &[u8], packets: u64, now: Instant) -> bool {
        if now >= self.until
            || self.packets + packets > HOLD_PACKETS
            || self.bytes + read.len() > HOLD_BYTES
        {
            return false;
        }
        self.reads.push(read.to_vec());
        self.packets += packets;
        self.bytes += read.len();
        true
    }
}

/// Whether an uplink's kernel takes UDP GSO, shared by the outbound workers so that one refusal tells them all:
/// 0 = on, `u64::MAX` = off for good, else off until that many milliseconds after the epoch (after an
/// `EMSGSIZE` refusal: a path MTU that may grow back).
#[derive(Default)]
pub struct UplinkGso(AtomicU64);

impl UplinkGso {
    /// Whether to build GSO runs now (`now_ms` since the epoch); turns GSO back on once a retry is due.
    fn is_on(&self, now_ms: u64) -> bool {
        match self.0.load(Ordering::Relaxed) {
            0 => true,
            u64::MAX => false,
            until if now_ms >= until => {
                // Only the first worker to see the retry due turns it back on.
                let _ = self
                    .0
                    .compare_exchange(until, 0, Ordering::Relaxed, Ordering::Relaxed);
                true
            }
            _ => false,
        }
    }

    /// Turns GSO off until `until_ms` (`u64::MAX`: for good); whether it was on (the first refusal).
    fn refuse(&self, until_ms: u64) -> bool {
        self.0.swap(until_ms, Ordering::Relaxed) == 0
    }
}

/// The outbound worker's batch: sealed datagrams back to back in one buffer, each written at
/// `end + HEADROOM` and sealed there, so datagram `i + 1` starts where `i` ends.
struct TxBatch {
    buf: Box<[u8]>,
    /// Where the next datagram starts.
    end: usize,
    datagrams: Vec<Datagram>,
    /// The messages of one `sendmmsg` and, for each, the datagrams it carries (`first..last`).
    send: SendBatch,
    runs: Vec<(usize, usize)>,
    /// Tunnels whose outbound SA sealed in this batch, with the packets and inner octets sealed: their SA
    /// counters move once, at the flush.
    sealed: Vec<(usize, u64, u64)>,
    /// The finished packet last read into its slot, decided on and waiting to be sealed there (its room, up to
    /// `end`, is kept; see [`OutboundPath::forward_in_slot`]).
    pending: Option<Pending>,
}

/// A finished packet in its slot of the batch, decided on: sealed there when the next read has been inspected,
/// or at the flush.
struct Pending {
    segments: Segments<'static>,
    seq: SeqRange,
}

/// TUN reads of one outbound worker not yet added to the shared counters.
#[derive(Default)]
struct ReadCounts {
    reads: u64,
    gso_reads: u64,
    gso_segments: u64,
}

/// What one outbound worker's batch sent, not yet added to the shared counters: per tunnel (packets, inner
/// octets), per uplink (packets, octets, UDP GSO messages).
#[derive(Default)]
struct SentCounts {
    tunnels: Vec<(u64, u64)>,
    uplinks: Vec<(u64, u64, u64)>,
}

/// One sealed datagram in the batch.
#[derive(Copy, Clone, Debug)]
struct Datagram {
    start: usize,
    len: usize,
    tunnel: usize,
    inner_len: usize,
    /// Within the tunnel MTU, so it may go out in a UDP GSO run (an oversize IPv4 packet without DF is sealed
    /// whole and left to the kernel to fragment: never in a run).
    gso: bool,
}

impl TxBatch {
    fn new() -> TxBatch {
        TxBatch {
            buf: vec![0u8; BATCH_BYTES].into_boxed_slice(),
            end: 0,
            datagrams: Vec::with_capacity(BATCH_DATAGRAMS),
            send: SendBatch::with_capacity(BATCH_DATAGRAMS),
            runs: Vec::with_capacity(BATCH_DATAGRAMS),
            sealed: Vec::new(),
            pending: None,
        }
    }

    /// Whether an inner packet of `len` octets still fits, sealed (after the pending packet, if any).
    fn fits(&self, len: usize) -> bool {
        self.datagrams.len() + usize::from(self.pending.is_some()) < BATCH_DATAGRAMS
            && self.end + HEADROOM + len + braid_crypto::MAX_TAILROOM <= self.buf.len()
    }
}

/// One uplink's cap as one outbound worker sees it: the bucket (shared by all workers, lock-free) and the
/// datagrams this worker holds back, oldest first.
struct Shaper {
    bucket: Arc<TokenBucket>,
    held: VecDeque<Held>,
}

/// A sealed datagram waiting for its tokens.
struct Held {
    due: Instant,
    tunnel: usize,
    inner_len: usize,
    datagram: Vec<u8>,
}

/// What one outbound worker shares with the others and the control plane.
pub(crate) struct Shared {
    pub(crate) tunnels: Vec<OutTunnel>,
    pub(crate) uplink_stats: Vec<Arc<UplinkStats>>,
    /// Per uplink: its cap's bucket, if it has one.
    pub(crate) caps: Vec<Option<Arc<TokenBucket>>>,
    pub(crate) gso: Arc<[UplinkGso]>,
    pub(crate) fib: Arc<FibCell>,
    pub(crate) liveness: Liveness,
    pub(crate) tun_stats: Arc<TunStats>,
    pub(crate) worker_stats: Arc<[WorkerStats]>,
    pub(crate) spray: bool,
    pub(crate) flow_seed: u64,
    pub(crate) epoch: Instant,
}

/// One outbound worker's state and its per-read work: everything but the system calls (see the module docs).
pub struct OutboundPath {
    worker: usize,
    worker_stats: Arc<[WorkerStats]>,
    /// Reads since the last flush, counted into the shared counters once per batch.
    reads: ReadCounts,
    /// What the current batch's sends took, per tunnel and uplink, added to the shared counters at its end.
    sent: SentCounts,
    /// Reads since the last refresh of the clock and the FIB snapshot.
    since_tick: u32,
    uplink_stats: Vec<Arc<UplinkStats>>,
    tunnels: Vec<OutTunnel>,
    /// How many of `tunnels` hold reads for their next SA (none: the hold costs nothing).
    holding: usize,
    fib: Arc<FibCell>,
    /// The FIB snapshot this worker routes from, refreshed per wake-up and every few hundred packets (taken
    /// out while a packet is routed).
    fib_now: Option<Arc<Fib>>,
    tun_stats: Arc<TunStats>,
    last_warn: Option<Instant>,
    /// Per uplink: its cap, if it has one.
    shapers: Vec<Option<Shaper>>,
    /// Datagrams held by all shapers.
    held: usize,
    /// Spare buffers for held datagrams.
    pool: Vec<Vec<u8>>,
    /// Which tunnel each flow took, and the route cache.
    flows: FlowTable,
    /// Counts the FIB snapshots this worker has routed from (part of the route cache's stamp).
    fib_generation: u64,
    /// Which 65536 routing changes the stamp is in (see [`OutboundPath::route_stamp`]).
    route_epoch: u64,
    spray: bool,
    spray_counter: u64,
    flow_seed: u64,
    liveness: Liveness,
    epoch: Instant,
    /// A coarse clock for the flow table: whole seconds since `epoch`, refreshed per wake-up and every few
    /// hundred packets.
    now_s: u32,
    /// The sealed datagrams waiting to be sent.
    batch: TxBatch,
    /// Per uplink: whether the kernel takes UDP GSO on its sockets (shared by the workers).
    gso: Arc<[UplinkGso]>,
    /// Where an ICMP error is built.
    icmp: PacketBuf,
    /// Octets of packet a read may put into the batch's next slot (see [`OutboundPath::read_areas`]).
    slot_room: usize,
    /// Where the rest of a read larger than the slot goes, and where it is made whole (taken out while it is
    /// forwarded).
    spill: Option<PacketBuf>,
}

impl OutboundPath {
    /// Worker `worker`'s path.
    pub(crate) fn new(worker: usize, shared: &Shared) -> OutboundPath {
        OutboundPath {
            worker,
            worker_stats: shared.worker_stats.clone(),
            reads: ReadCounts::default(),
            sent: SentCounts {
                tunnels: vec![(0, 0); shared.tunnels.len()],
                uplinks: vec![(0, 0, 0); shared.uplink_stats.len()],
            },
            since_tick: 0,
            uplink_stats: shared.uplink_stats.clone(),
            tunnels: shared.tunnels.clone(),
            holding: 0,
            fib: shared.fib.clone(),
            fib_now: Some(shared.fib.snapshot()),
            tun_stats: shared.tun_stats.clone(),
            last_warn: None,
            shapers: shared
                .caps
                .iter()
                .map(|c| {
                    c.as_ref().map(|bucket| Shaper {
                        bucket: bucket.clone(),
                        held: VecDeque::new(),
                    })
                })
                .collect(),
            held: 0,
            pool: Vec::new(),
            flows: FlowTable::new(shared.flow_seed),
            fib_generation: 0,
            route_epoch: 0,
            spray: shared.spray,
            spray_counter: worker as u64,
            flow_seed: shared.flow_seed,
            liveness: shared.liveness.clone(),
            epoch: shared.epoch,
            now_s: 0,
            batch: TxBatch::new(),
            gso: shared.gso.clone(),
            icmp: PacketBuf::new(),
            slot_room: SLOT_ROOM_MIN,
            spill: Some(PacketBuf::new()),
        }
    }

    /// A worker's path outside the engine, for `braid bench`: `tunnels` (their inbound SAs are not used) over
    /// `uplinks` (uncapped), flows hashed with `flow_seed`.
    pub fn standalone(
        tunnels: Vec<TunnelIo>,
        uplinks: Vec<Arc<UplinkStats>>,
        fib: Arc<FibCell>,
        liveness: Liveness,
        tun_stats: Arc<TunStats>,
        flow_seed: u64,
    ) -> OutboundPath {
        let shared = Shared {
            tunnels: tunnels
                .into_iter()
                .map(|mut t| {
                    let sa = t.outbound.take().map(|sa| Arc::new(OutboundEntry::new(sa)));
                    OutTunnel::new(&t, sa)
                })
                .collect(),
            caps: uplinks.iter().map(|_| None).collect(),
            gso: uplinks.iter().map(|_| UplinkGso::default()).collect(),
            uplink_stats: uplinks,
            fib,
            liveness,
            tun_stats,
            worker_stats: Arc::new([WorkerStats::default()]),
            spray: false,
            flow_seed,
            epoch: Instant::now(),
        };
        OutboundPath::new(0, &shared)
    }

    /// Where the next TUN read goes (one `readv` of both): the batch's next slot, where a finished packet that
    /// fits (2 KiB at first, growing to the largest finished packet seen, at most 16 KiB) is sealed where the
    /// kernel put it (the virtio-net header just before it), and the worker's spill buffer for the rest of a
    /// larger read (a super-packet). Sends the batch first if it has no room for a slot.
    pub fn read_areas(&mut self, wire: &mut impl Wire) -> (&mut [u8], &mut [u8]) {
        if !self.batch.fits(self.slot_room) {
            self.flush(wire);
        }
        let (start, room) = (self.slot_start(), VNET_HDR_LEN + self.slot_room);
        let spill = self.spill.get_or_insert_with(PacketBuf::new);
        (
            &mut self.batch.buf[start..start + room],
            &mut spill.vnet_payload_area()[room..],
        )
    }

    /// Where a read into the batch's next slot starts: its virtio-net header, just before the packet's place.
    fn slot_start(&self) -> usize {
        self.batch.end + HEADROOM - VNET_HDR_LEN
    }

    /// Handles the TUN read of `n` octets that went into [`read_areas`](Self::read_areas): counts it and
    /// forwards it (see the module docs); under load, refreshes the clock and the FIB snapshot every 256 reads.
    /// A finished packet is sealed in its slot; a super-packet, or a packet larger than the slot, is first made
    /// whole in the spill buffer (its slot part copied there) and its segments written into the batch.
    pub fn read_placed(&mut self, n: usize, wire: &mut impl Wire) {
        self.reads.reads += 1;
        let (start, room) = (self.slot_start(), VNET_HDR_LEN + self.slot_room);
        if n < VNET_HDR_LEN {
            self.tun_stats.drops.count(DropReason::InnerMalformed);
        } else if n <= room && !is_super(&self.batch.buf[start..]) {
            self.forward_in_slot(n, wire);
        } else {
            // Taken out while it is forwarded (a move), put back after.
            let mut spill = self.spill.take().unwrap_or_default();
            let first = n.min(room);
            spill.vnet_payload_area()[..first]
                .copy_from_slice(&self.batch.buf[start..start + first]);
            let read = &spill.as_slice()[HEADROOM - VNET_HDR_LEN..][..n];
            if n > room && !is_super(read) {
                // A packet larger than the slot (the TUN MTU is above it): later slots take such packets.
                self.slot_room = (n - VNET_HDR_LEN).min(SLOT_ROOM_MAX);
            }
            self.forward(read, wire);
            self.spill = Some(spill);
        }
        self.since_tick += 1;
        if self.since_tick >= TICK_READS {
            self.tick();
        }
    }

    /// Handles one read that is not in the batch (`read` = virtio-net header and packet) as if the TUN device
    /// had just put it there: copied into [`read_areas`](Self::read_areas) (as the kernel's `readv` would),
    /// then [`read_placed`](Self::read_placed). For callers without a TUN device (`braid bench`, tests).
    pub fn read(&mut self, read: &[u8], wire: &mut impl Wire) {
        let (slot, spill) = self.read_areas(wire);
        let first = read.len().min(slot.len());
        slot[..first].copy_from_slice(&read[..first]);
        let rest = (read.len() - first).min(spill.len());
        spill[..rest].copy_from_slice(&read[first..first + rest]);
        self.read_placed(first + rest, wire);
    }

    /// Refreshes the coarse clock and the FIB snapshot (per wake-up, and under load every few hundred reads).
    pub fn tick(&mut self) {
        self.since_tick = 0;
        self.now_s = self.epoch.elapsed().as_secs().min(u32::MAX as u64 - 1) as u32;
        if let Some(fib) = &mut self.fib_now {
            if self.fib.refresh(fib) {
                self.fib_generation = self.fib_generation.wrapping_add(1);
            }
        }
    }

    /// The stamp of the routing a flow's tunnel is found under (the FIB snapshot and the liveness verdicts):
    /// it changes whenever either does, and the route cache ([`FlowTable::cached`]) holds only under it. The
    /// stamp is the low 16 bits of a count that only grows; when the count passes into its next 65536, the flow
    /// table is emptied, so no old stamp can come round again (its flows are placed afresh, where rendezvous
    /// hashing puts them back on their tunnels).
    #[inline]
    fn route_stamp(&mut self) -> u16 {
        let count = self.fib_generation.wrapping_add(self.liveness.generation());
        if count >> 16 != self.route_epoch {
            self.route_epoch = count >> 16;
            self.flows.forget_all();
        }
        count as u16
    }

    /// Applies one command of the control plane to this worker's tunnels and answers it (the caller may have
    /// stopped waiting: that is fine).
    pub(crate) fn apply(&mut self, board: &Board, command: TxCommand) {
        // The packet waiting in its slot holds sequence numbers of the SA it was decided under.
        self.settle();
        apply_tx(&mut self.tunnels, board, command);
        self.holding = self.tunnels.iter().filter(|t| t.hold.is_some()).count();
    }

    /// The tunnel for a packet of flow `flow` (`None`: sprayed, or no flow key): from the route cache when the
    /// flow's tunnel was found under the current routing; otherwise routed to its next-hop group and chosen
    /// there, per flow (remembered in the flow table) or per packet (spray). `None`: no route.
    fn route(&mut self, inner: &Inner, flow: Option<FlowKey>) -> Option<usize> {
        let stamp = self.route_stamp();
        if let Some(t) = flow.and_then(|key| self.flows.cached(&key, self.now_s, stamp)) {
            return Some(t as usize);
        }
        // The snapshot is taken out while `choose` borrows the worker, and put back (a move, no atomics).
        let fib = self.fib_now.take().unwrap_or_else(|| self.fib.snapshot());
        let routed = fib
            .lookup(inner.dst)
            .and_then(|group| self.choose(group, flow, stamp));
        self.fib_now = Some(fib);
        routed
    }

    /// The tunnel for a packet of flow `flow` (`None`: sprayed, or no flow key) to `group`, under the routing
    /// stamped `stamp`.
    fn choose(&mut self, group: &NextHopGroup, flow: Option<FlowKey>, stamp: u16) -> Option<usize> {
        let mut live = [NO_MEMBER; MAX_LIVE];
        let members = self.liveness.members(group, &mut live);
        if let [only] = members {
            // One way to go: remembered for the route cache.
            if let Some(key) = &flow {
                self.flows.remember(key, only.tunnel, self.now_s, stamp);
            }
            return Some(only.tunnel as usize);
        }
        let Some(key) = flow else {
            if self.spray {
                self.spray_counter = self.spray_counter.wrapping_add(1);
                return scheduler::pick_spray(members, self.spray_counter).map(|t| t as usize);
            }
            return scheduler::pick(members, 0).map(|t| t as usize);
        };
        if let Some(t) = self.flows.lookup(&key, self.now_s, members, stamp) {
            return Some(t as usize);
        }
        // A new flow (or its tunnel left the group): hash it, but away from a full uplink if another has room.
        let hash = key.hash(self.flow_seed);
        let mut tunnel = scheduler::pick(members, hash)?;
        let at = Instant::now();
        if !self.has_headroom(tunnel, at) {
            let mut roomy = [NO_MEMBER; MAX_LIVE];
            let mut n = 0;
            for m in members.iter().take(roomy.len()) {
                if self.has_headroom(m.tunnel, at) {
                    roomy[n] = *m;
                    n += 1;
                }
            }
            if let Some(t) = scheduler::pick(&roomy[..n], hash) {
                tunnel = t;
            }
        }
        self.flows.remember(&key, tunnel, self.now_s, stamp);
        Some(tunnel as usize)
    }

    /// Whether `tunnel`'s uplink has unused cap (always, for an uncapped uplink).
    fn has_headroom(&self, tunnel: u32, now: Instant) -> bool {
        let Some(t) = self.tunnels.get(tunnel as usize) else {
            return false;
        };
        match &self.shapers[t.uplink] {
            Some(s) => s.bucket.headroom(now) >= MIN_HEADROOM,
            None => true,
        }
    }

    /// Forwards one read that lies outside the batch (its virtio-net header, then a finished packet, one whose
    /// checksum is still to be completed, or a super-packet to segment): what happens to it is decided once
    /// for all its segments ([`decide`](Self::decide)); each segment is then written into the batch and sealed
    /// there.
    fn forward(&mut self, read: &[u8], wire: &mut impl Wire) {
        let inspected = self.inspect(read);
        // The packet waiting in its slot goes into the batch first: the batch keeps the order of the reads.
        self.settle();
        let source = Source::Packet(&read[VNET_HDR_LEN..]);
        let Some((segments, mut seq)) = inspected.and_then(|i| self.decide(read, &i, source, wire))
        else {
            return;
        };
        let count = segments.plan.count();
        let mut i = 0;
        while i < count {
            match self.seal_segments(&segments, i, &mut seq) {
                // The batch is full: send it, go on with the rest (a segment that fits no batch at all, which
                // a 64 KiB read cannot make, is dropped rather than retried forever).
                Some(stopped) if stopped < count => {
                    if stopped == i && self.batch.datagrams.is_empty() && self.batch.end == 0 {
                        return self.tunnels[segments.t]
                            .stats
                            .drops
                            .count_many(DropReason::InnerMalformed, (count - i) as u64);
                    }
                    self.flush(wire);
                    i = stopped;
                }
                _ => return,
            }
        }
    }

    /// Forwards the finished packet of `n` octets (virtio-net header included) that the TUN device read into
    /// the batch's next slot ([`read_areas`](Self::read_areas)): inspected, then decided as any read, and sealed
    /// where it lies when the next read has been inspected (or at the flush). So the packet's flow slot, whose
    /// fetch [`inspect`](Self::inspect) starts, arrives while the packet before it is sealed, instead of
    /// stalling the route cache's look (with many flows the slot is a cache miss more often than not). The
    /// waiting packet's room in the batch, its sealed length, is kept: the next slot starts after it.
    fn forward_in_slot(&mut self, n: usize, wire: &mut impl Wire) {
        let start = self.slot_start();
        let inspected = self.inspect(&self.batch.buf[start..start + n]);
        self.settle();
        let Some(inspected) = inspected else {
            return;
        };
        // The batch buffer is taken out while the read in it is decided on (a move), and put back.
        let buf = std::mem::take(&mut self.batch.buf);
        let slot = Source::Slot(self.batch.end);
        let decided = self.decide(&buf[start..start + n], &inspected, slot, wire);
        self.batch.buf = buf;
        let Some((segments, seq)) = decided else {
            return;
        };
        self.batch.end += braid_crypto::sealed_len(segments.plan.segment_len(0));
        self.batch.pending = Some(Pending { segments, seq });
    }

    /// Seals the packet waiting in its slot, if any ([`forward_in_slot`](Self::forward_in_slot)).
    fn settle(&mut self) {
        if let Some(Pending { segments, mut seq }) = self.batch.pending.take() {
            // Its room was kept: it cannot stop for room (`None`, counted: the SA ran out of sequence numbers).
            let _ = self.seal_segments(&segments, 0, &mut seq);
        }
    }

    /// A read's first look: its inner packet's fields, its offload plan and its flow key (`None` when sprayed
    /// or the packet has none), with the fetch of the flow's slot in the flow table started. `None` (counted)
    /// when the read is malformed.
    fn inspect(&self, read: &[u8]) -> Option<Inspected> {
        let hdr = VnetHdr::parse(read).unwrap_or_default();
        let pkt = read.get(VNET_HDR_LEN..).unwrap_or_default();
        let Ok(inner) = wire::inspect(pkt) else {
            self.tun_stats.drops.count(DropReason::InnerMalformed);
            return None;
        };
        let Ok(plan) = Plan::new(&hdr, pkt) else {
            self.tun_stats.drops.count(DropReason::OffloadMalformed);
            return None;
        };
        let flow = if self.spray {
            None
        } else {
            flow_key(pkt, &inner, self.flow_seed)
        };
        if let Some(key) = &flow {
            self.flows.prefetch(key);
        }
        Some(Inspected { inner, plan, flow })
    }

    /// Decides what happens to one `inspected` read, once for all its segments (they share the 5-tuple): routed,
    /// given a tunnel, an SA and the segments' sequence numbers, checked against the tunnel MTU. Returns the
    /// segments to seal from `source`, or `None` when the read was dropped, held for the next SA,
    /// or answered with an ICMP "too big" (each counted).
    ///
    /// Always inlined: its result, returned through the stack, was read back by loads wider than the stores
    /// that wrote it (a store-forwarding stall, ~9 ns a packet in `braid bench`).
    #[inline(always)]
    fn decide<'a>(
        &mut self,
        read: &[u8],
        inspected: &Inspected,
        source: Source<'a>,
        wire: &mut impl Wire,
    ) -> Option<(Segments<'a>, SeqRange)> {
        let pkt = &read[VNET_HDR_LEN..];
        let Inspected { inner, plan, flow } = inspected;
        let count = plan.count();
        if plan.is_gso() {
            self.reads.gso_reads += 1;
            self.reads.gso_segments += count as u64;
        }
        let routed = self.route(inner, *flow).filter(|&t| t < self.tunnels.len());
        let Some(t) = routed else {
            self.tun_stats
                .drops
                .count_many(DropReason::NoRoute, count as u64);
            return None;
        };
        let tunnel = &mut self.tunnels[t];
        let Some(entry) = &tunnel.sa else {
            // Waiting for the next SA: keep the read as it came (it is forwarded again when the SA is set).
            if let Some(hold) = tunnel.hold.as_mut() {
                if hold.keep(read, count as u64, Instant::now()) {
                    add(&tunnel.stats.held_for_sa, count as u64);
                    return None;
                }
            }
            tunnel
                .stats
                .drops
                .count_many(DropReason::NoSa, count as u64);
            return None;
        };
        let segment_len = plan.max_segment_len();
        if segment_len > tunnel.max_inner && inner.dont_fragment {
            // Too big and may not be fragmented: tell the sender the tunnel MTU (PMTUD through braid).
            tunnel
                .stats
                .drops
                .count_many(DropReason::TooBig, count as u64);
            let from = match inner.version {
                4 => tunnel.icmp_source_v4.map(IpAddr::V4),
                _ => tunnel.icmp_source_v6.map(IpAddr::V6),
            };
            if let Some(from) = from {
                let (hdr, out) = self.icmp.as_mut_slice().split_at_mut(VNET_HDR_LEN);
                VnetHdr::default().write(hdr);
                if let Some(len) =
                    wire::icmp_too_big(pkt, inner, from, tunnel.max_inner as u32, out)
                {
                    if wire
                        .write_tun(&self.icmp.as_slice()[..VNET_HDR_LEN + len])
                        .is_ok()
                    {
                        add(&tunnel.stats.icmp_too_big, 1);
                    }
                }
            }
            return None;
        }
        // The segments' sequence numbers: one atomic step for the whole read, whichever workers share the SA.
        let seq = match entry.sa.reserve(count as u64) {
            Ok(r) => r,
            Err(_) => {
                tunnel
                    .stats
                    .drops
                    .count_many(DropReason::SeqExhausted, count as u64);
                return None;
            }
        };
        let u = tunnel.uplink;
        let segments = Segments {
            t,
            plan: *plan,
            source,
            next: if inner.version == 4 {
                NextHeader::Ipv4
            } else {
                NextHeader::Ipv6
            },
            // IPv4 without DF that exceeds the tunnel MTU is sealed whole; the kernel fragments the outer
            // datagram.
            gso: segment_len <= tunnel.max_inner,
            on_wire_extra: crate::outer_overhead(tunnel.remote.is_ipv6()),
            // The cap's clock: once per read, not per segment.
            now: self.shapers[u].as_ref().map(|_| Instant::now()),
        };
        Some((segments, seq))
    }

    /// Writes and seals segments `from..` of one read into the batch until they are done or the batch is full;
    /// returns where it stopped (`None` when the SA ran out of sequence numbers: the rest are dropped).
    fn seal_segments(
        &mut self,
        s: &Segments<'_>,
        from: usize,
        seq: &mut SeqRange,
    ) -> Option<usize> {
        let OutboundPath {
            tunnels,
            batch,
            shapers,
            pool,
            held,
            uplink_stats,
            ..
        } = self;
        let tunnel = &tunnels[s.t];
        let (u, count) = (tunnel.uplink, s.plan.count());
        // Borrowed, not cloned: no reference count moves per read.
        let entry = tunnel.sa.as_ref()?;
        let mut sealed = (0u64, 0u64);
        let mut i = from;
        while i < count {
            let len = s.plan.segment_len(i);
            let slot = match s.source {
                Source::Packet(_) if !batch.fits(len) => break,
                Source::Packet(_) => batch.end,
                // Read into its slot, whose room was kept.
                Source::Slot(slot) => slot,
            };
            i += 1;
            match s.source {
                Source::Packet(pkt) => {
                    s.plan.write(pkt, i - 1, &mut batch.buf[slot + HEADROOM..]);
                }
                // Read into this slot: finished where it lies.
                Source::Slot(_) => {
                    s.plan
                        .finish_in_place(&mut batch.buf[slot + HEADROOM..slot + HEADROOM + len]);
                }
            }
            let esp = match entry.sa.seal_next(
                &mut batch.buf,
                slot + HEADROOM..slot + HEADROOM + len,
                s.next,
                seq,
            ) {
                Ok(r) => r,
                Err(SealError::SeqExhausted) => {
                    note_sealed(&mut batch.sealed, s.t, sealed);
                    tunnel
                        .stats
                        .drops
                        .count_many(DropReason::SeqExhausted, (count - i + 1) as u64);
                    return None;
                }
                Err(_) => {
                    tunnel.stats.drops.count(DropReason::InnerMalformed);
                    continue;
                }
            };
            sealed.0 += 1;
            sealed.1 += len as u64;
            if let (Some(shaper), Some(now)) = (&mut shapers[u], s.now) {
                let datagram = &batch.buf[esp.clone()];
                let verdict = shaper.bucket.admit(now, datagram.len() + s.on_wire_extra);
                let due = match verdict {
                    // Tokens now, and nothing held ahead of it: into the batch.
                    Admit::Send if shaper.held.is_empty() => None,
                    Admit::Send => Some(now),
                    Admit::Delay(wait) if shaper.held.len() < MAX_HELD => Some(now + wait),
                    Admit::Delay(_) | Admit::Drop => {
                        uplink_stats[u].drops.count(DropReason::CapExceeded);
                        continue;
                    }
                };
                if let Some(due) = due {
                    // Held: copied out, and its slot is taken by the next datagram.
                    let mut copy = pool.pop().unwrap_or_default();
                    copy.clear();
                    copy.extend_from_slice(datagram);
                    shaper.held.push_back(Held {
                        due,
                        tunnel: s.t,
                        inner_len: len,
                        datagram: copy,
                    });
                    *held += 1;
                    add(&uplink_stats[u].cap_delayed, 1);
                    continue;
                }
            }
            batch.datagrams.push(Datagram {
                start: esp.start,
                len: esp.len(),
                tunnel: s.t,
                inner_len: len,
                gso: s.gso,
            });
            match s.source {
                Source::Packet(_) => batch.end = esp.end,
                Source::Slot(slot) => debug_assert_eq!(
                    esp.end,
                    slot + braid_crypto::sealed_len(len),
                    "its kept room"
                ),
            }
        }
        note_sealed(&mut batch.sealed, s.t, sealed);
        Some(i)
    }

    /// Sends the batch: per uplink, in order, runs of equal-size datagrams to one tunnel's remote as one UDP GSO
    /// message each (the last of a run may be shorter), all the messages of a stretch of the batch in one
    /// `sendmmsg`. Then publishes the SA counters, empties the batch and sends what the caps have released.
    pub fn flush(&mut self, wire: &mut impl Wire) {
        self.settle();
        let total = self.batch.datagrams.len();
        let mut i = 0;
        while i < total {
            let u = self.tunnels[self.batch.datagrams[i].tunnel].uplink;
            let gso_on = self.gso[u].is_on(self.epoch.elapsed().as_millis() as u64);
            self.batch.send.clear();
            self.batch.runs.clear();
            while i < total && !self.batch.send.is_full() {
                let ds = &self.batch.datagrams;
                let first = ds[i];
                let tunnel = &self.tunnels[first.tunnel];
                if tunnel.uplink != u {
                    break;
                }
                let mut last = i + 1;
                let mut bytes = first.len;
                if first.gso && gso_on {
                    while last < total && last - i < UDP_MAX_SEGMENTS {
                        let d = ds[last];
                        if d.tunnel != first.tunnel
                            || !d.gso
                            || d.start != ds[last - 1].start + ds[last - 1].len
                            || d.len > first.len
                            || bytes + d.len > UDP_GSO_MAX_BYTES
                        {
                            break;
                        }
                        bytes += d.len;
                        last += 1;
                        if d.len < first.len {
                            break; // a shorter datagram ends its run
                        }
                    }
                }
                self.batch.send.push(SendMsg {
                    start: first.start,
                    len: bytes,
                    to: tunnel.remote,
                    segment: if last - i > 1 { first.len as u16 } else { 0 },
                });
                self.batch.runs.push((i, last));
                i = last;
            }
            self.send_runs(u, wire);
        }
        for &(t, packets, bytes) in &self.batch.sealed {
            if let Some(e) = &self.tunnels[t].sa {
                e.sa.count(packets, bytes);
                e.counters.publish_outbound(&e.sa);
            }
        }
        self.batch.sealed.clear();
        self.batch.datagrams.clear();
        self.batch.end = 0;
        self.publish_sent();
        let reads = std::mem::take(&mut self.reads);
        if reads.reads > 0 {
            add(&self.tun_stats.rx_packets, reads.reads);
            add(&self.worker_stats[self.worker].tun_reads, reads.reads);
        }
        if reads.gso_reads > 0 {
            add(&self.tun_stats.gso_reads, reads.gso_reads);
            add(&self.tun_stats.gso_segments, reads.gso_segments);
        }
        if self.held > 0 {
            self.release_due(Instant::now(), wire);
        }
    }

    /// Sends the messages in `self.batch.send` on uplink `u` and counts them. A full socket buffer is waited for
    /// briefly ([`SEND_WAIT`]); a refusal of UDP GSO turns it off for the uplink and sends the refused run (and
    /// the rest) one datagram at a time. A refusal is `EIO` (the route's device has no checksum offload),
    /// `EINVAL` or `ENOPROTOOPT` (no UDP GSO), or `EMSGSIZE` (the datagrams no longer fit the route's MTU, e.g.
    /// the uplink's MTU was lowered: single datagrams are still fragmented by the kernel, as before the fast
    /// path, while a GSO message is refused whole).
    fn send_runs(&mut self, u: usize, wire: &mut impl Wire) {
        let messages = self.batch.send.len();
        let mut from = 0;
        while from < messages {
            match wire.send_batch(u, &self.batch.buf, &mut self.batch.send, from) {
                Ok(n) => {
                    for m in from..from + n {
                        self.account_run(u, self.batch.runs[m], Ok(()));
                    }
                    from += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !wire.writable(u, SEND_WAIT) {
                        self.account_run(u, self.batch.runs[from], Err(e));
                        from += 1;
                    }
                }
                Err(e)
                    if self.batch.send.msgs()[from].segment != 0
                        && matches!(
                            e.raw_os_error(),
                            Some(libc::EIO | libc::EINVAL | libc::ENOPROTOOPT | libc::EMSGSIZE)
                        ) =>
                {
                    // The path's MTU shrank with EMSGSIZE; it may grow back: try GSO again later.
                    let for_a_while = e.raw_os_error() == Some(libc::EMSGSIZE);
                    let until = if for_a_while {
                        (self.epoch.elapsed() + GSO_RETRY).as_millis() as u64
                    } else {
                        u64::MAX
                    };
                    if self.gso[u].refuse(until) {
                        add(&self.uplink_stats[u].gso_fallbacks, 1);
                        if for_a_while {
                            tracing::info!(uplink = u, error = %e,
                                "UDP GSO datagrams exceed the route's MTU; one datagram per message for a while");
                        } else {
                            tracing::info!(uplink = u, error = %e,
                                "the kernel refuses UDP GSO on this uplink; sending one datagram per message");
                        }
                    }
                    for m in from..messages {
                        let (first, last) = self.batch.runs[m];
                        for d in first..last {
                            let d = self.batch.datagrams[d];
                            let tunnel = &self.tunnels[d.tunnel];
                            let datagram = &self.batch.buf[d.start..d.start + d.len];
                            let result = send_one(wire, u, datagram, tunnel.remote);
                            account(
                                result,
                                tunnel,
                                &self.uplink_stats[u],
                                d.inner_len,
                                d.len,
                                &mut self.last_warn,
                            );
                        }
                    }
                    return;
                }
                Err(e) => {
                    self.account_run(u, self.batch.runs[from], Err(e));
                    from += 1;
                }
            }
        }
    }

    /// Adds what the batch sent to the tunnels' and uplinks' shared counters, once per counter.
    fn publish_sent(&mut self) {
        for (t, sent) in self.tunnels.iter().zip(&mut self.sent.tunnels) {
            if sent.0 > 0 {
                let (packets, bytes) = std::mem::take(sent);
                add(&t.stats.tx_packets, packets);
                add(&t.stats.tx_bytes, bytes);
            }
        }
        for (us, sent) in self.uplink_stats.iter().zip(&mut self.sent.uplinks) {
            if sent.0 > 0 {
                let (packets, bytes, gso_sends) = std::mem::take(sent);
                add(&us.tx_packets, packets);
                add(&us.tx_bytes, bytes);
                if gso_sends > 0 {
                    add(&us.gso_sends, gso_sends);
                }
            }
        }
    }

    /// Counts a run's send outcome on its tunnel and uplink, once for the run.
    fn account_run(&mut self, u: usize, (first, last): (usize, usize), result: io::Result<()>) {
        let ds = &self.batch.datagrams[first..last];
        let tunnel = &self.tunnels[ds[0].tunnel];
        let packets = ds.len() as u64;
        match result {
            Ok(()) => {
                // Counted here, added to the shared counters once per batch (`publish_sent`): with many flows
                // over several tunnels a run is often one datagram, and the workers share these counters'
                // cache lines (four atomic additions per datagram before; on one core `braid bench` showed no
                // difference, the gain is in not bouncing the lines between workers).
                let inner: usize = ds.iter().map(|d| d.inner_len).sum();
                let outer: usize = ds.iter().map(|d| d.len).sum();
                let t = &mut self.sent.tunnels[ds[0].tunnel];
                t.0 += packets;
                t.1 += inner as u64;
                let us = &mut self.sent.uplinks[u];
                us.0 += packets;
                us.1 += outer as u64;
                us.2 += u64::from(packets > 1);
            }
            Err(e) => {
                tunnel
                    .stats
                    .drops
                    .count_many(DropReason::SendFailed, packets);
                let remote = tunnel.remote;
                warn_limited(
                    &mut self.last_warn,
                    || tracing::warn!(%remote, error = %e, "uplink send failed"),
                );
            }
        }
    }

    /// Forwards the reads held for tunnels whose next SA has come, in the order they were read, and drops as
    /// `no_sa` those whose hold has ended.
    pub fn release_holds(&mut self, wire: &mut impl Wire) {
        if self.holding == 0 {
            return;
        }
        let now = Instant::now();
        for t in 0..self.tunnels.len() {
            let tunnel = &mut self.tunnels[t];
            let ready = tunnel.sa.is_some();
            if !tunnel
                .hold
                .as_ref()
                .is_some_and(|h| ready || now >= h.until)
            {
                continue;
            }
            let Some(hold) = tunnel.hold.take() else {
                continue;
            };
            self.holding -= 1;
            if !ready {
                self.tunnels[t]
                    .stats
                    .drops
                    .count_many(DropReason::NoSa, hold.packets);
                continue;
            }
            for read in hold.reads {
                self.forward(&read, wire);
            }
        }
    }

    /// When the earliest held datagram is due or the earliest hold for an SA ends, if any.
    pub fn next_due(&self) -> Option<Instant> {
        if self.held == 0 && self.holding == 0 {
            return None;
        }
        let holds = self
            .tunnels
            .iter()
            .filter_map(|t| t.hold.as_ref().map(|h| h.until));
        self.shapers
            .iter()
            .flatten()
            .filter_map(|s| s.held.front().map(|h| h.due))
            .chain(holds)
            .min()
    }

    /// Sends every held datagram whose time has come, in order per uplink.
    pub fn release_due(&mut self, now: Instant, wire: &mut impl Wire) {
        if self.held == 0 {
            return;
        }
        for u in 0..self.shapers.len() {
            let Some(shaper) = &mut self.shapers[u] else {
                continue;
            };
            while shaper.held.front().is_some_and(|h| h.due <= now) {
                let Some(h) = shaper.held.pop_front() else {
                    break;
                };
                self.held -= 1;
                let tunnel = &self.tunnels[h.tunnel];
                let result = send_one(wire, u, &h.datagram, tunnel.remote);
                account(
                    result,
                    tunnel,
                    &self.uplink_stats[u],
                    h.inner_len,
                    h.datagram.len(),
                    &mut self.last_warn,
                );
                self.pool.push(h.datagram);
            }
        }
    }
}

/// Remembers in a batch's `sealed` list that tunnel `t`'s SA sealed `(packets, octets)`, for its counters at
/// the flush.
fn note_sealed(sealed: &mut Vec<(usize, u64, u64)>, t: usize, (packets, bytes): (u64, u64)) {
    if packets == 0 {
        return;
    }
    match sealed.iter_mut().find(|s| s.0 == t) {
        Some(s) => {
            s.1 += packets;
            s.2 += bytes;
        }
        None => sealed.push((t, packets, bytes)),
    }
}

/// Whether a read (virtio-net header first) is a super-packet to segment (or too short to tell).
fn is_super(read: &[u8]) -> bool {
    VnetHdr::parse(read).is_none_or(|h| h.gso_kind() != crate::vnet::GSO_NONE)
}

/// What [`OutboundPath::inspect`] finds in a read.
struct Inspected {
    inner: Inner,
    plan: Plan,
    flow: Option<FlowKey>,
}

/// One read's segments as [`OutboundPath::seal_segments`] seals them: decided once per read.
struct Segments<'a> {
    t: usize,
    plan: Plan,
    source: Source<'a>,
    next: NextHeader,
    gso: bool,
    on_wire_extra: usize,
    now: Option<Instant>,
}

/// Where a read's segments come from.
#[derive(Copy, Clone)]
enum Source<'a> {
    /// A finished packet the TUN device read into the batch's slot starting here (the packet at
    /// `slot + HEADROOM`): sealed where it lies.
    Slot(usize),
    /// The packet they are written from into the batch (a super-packet, or a read larger than the slot).
    Packet(&'a [u8]),
}

/// Applies one command to an outbound worker's tunnels and answers it (the caller may have stopped waiting:
/// that is fine).
fn apply_tx(tunnels: &mut [OutTunnel], board: &Board, command: TxCommand) {
    match command {
        TxCommand::SetOutbound {
            tunnel,
            sa,
            hold,
            done,
        } => {
            let applied = tunnels.get_mut(tunnel).map(|t| {
                board.set_outbound(tunnel, sa.as_ref().map(|e| e.counters.clone()));
                if sa.is_none() {
                    if hold.is_zero() {
                        // No SA is coming: what was held is lost.
                        if let Some(h) = t.hold.take() {
                            t.stats.drops.count_many(DropReason::NoSa, h.packets);
                        }
                    } else {
                        let until = Instant::now() + hold;
                        match &mut t.hold {
                            Some(h) => h.until = until,
                            None => t.hold = Some(SaHold::new(until)),
                        }
                    }
                }
                // With an SA, the worker forwards what it held (`release_holds`).
                t.sa = sa;
            });
            let _ = done.send(applied.ok_or(SaError::UnknownTunnel(tunnel)));
        }
        TxCommand::SetRemote {
            tunnel,
            remote,
            done,
        } => {
            let applied = tunnels.get_mut(tunnel).map(|t| {
                t.remote = remote;
                board.set_remote(tunnel, remote);
            });
            let _ = done.send(applied.ok_or(SaError::UnknownTunnel(tunnel)));
        }
    }
}

/// Counts a send's outcome on the tunnel and its uplink.
fn account(
    result: io::Result<()>,
    tunnel: &OutTunnel,
    uplink: &UplinkStats,
    inner_len: usize,
    datagram_len: usize,
    last_warn: &mut Option<Instant>,
) {
    match result {
        Ok(()) => {
            add(&tunnel.stats.tx_packets, 1);
            add(&tunnel.stats.tx_bytes, inner_len as u64);
            add(&uplink.tx_packets, 1);
            add(&uplink.tx_bytes, datagram_len as u64);
        }
        Err(e) => {
            tunnel.stats.drops.count(DropReason::SendFailed);
            let remote = tunnel.remote;
            warn_limited(
                last_warn,
                || tracing::warn!(%remote, error = %e, "uplink send failed"),
            );
        }
    }
}

/// Sends one datagram on uplink `u`; waits briefly for room if the socket buffer is full.
pub(crate) fn send_one(
    wire: &mut impl Wire,
    u: usize,
    datagram: &[u8],
    to: SocketAddr,
) -> io::Result<()> {
    loop {
        match wire.send_to(u, datagram, to) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !wire.writable(u, SEND_WAIT) {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sa::{Board, OutboundEntry};
    use braid_crypto::OutboundSa;

    /// Records what the path sends: per `sendmmsg`, its messages (start, octets, segment size); and every
    /// datagram (GSO messages split at their segment size).
    #[derive(Default)]
    struct Recorder {
        calls: Vec<Vec<(usize, usize, u16)>>,
        datagrams: Vec<Vec<u8>>,
        /// Fail GSO messages with this error (a kernel that refuses UDP GSO).
        refuse: Option<i32>,
        singles: usize,
    }

    impl Wire for Recorder {
        fn send_batch(
            &mut self,
            _: usize,
            buf: &[u8],
            msgs: &mut SendBatch,
            from: usize,
        ) -> io::Result<usize> {
            let msgs = &msgs.msgs()[from..];
            if let (Some(errno), true) = (self.refuse, msgs.iter().any(|m| m.segment != 0)) {
                return Err(io::Error::from_raw_os_error(errno));
            }
            for m in msgs {
                let step = if m.segment > 0 {
                    m.segment as usize
                } else {
                    m.len
                };
                let message = buf[m.start..m.start + m.len].chunks(step);
                self.datagrams.extend(message.map(<[u8]>::to_vec));
            }
            self.calls
                .push(msgs.iter().map(|m| (m.start, m.len, m.segment)).collect());
            Ok(msgs.len())
        }
        fn send_to(&mut self, _: usize, _: &[u8], _: SocketAddr) -> io::Result<()> {
            self.singles += 1;
            Ok(())
        }
        fn writable(&mut self, _: usize, _: Duration) -> bool {
            true
        }
        fn write_tun(&mut self, frame: &[u8]) -> io::Result<usize> {
            Ok(frame.len())
        }
    }

    /// Tunnel `t` on uplink 0 to 192.0.2.(1 + t), sealing with `sa`.
    fn tunnel_io(t: u8, sa: Option<OutboundSa>, max_inner: usize) -> TunnelIo {
        TunnelIo {
            name: format!("t{t}"),
            uplink: 0,
            remote: SocketAddr::from(([192, 0, 2, 1 + t], 4500)),
            outbound: sa,
            inbound: Vec::new(),
            allowed_sources: Vec::new(),
            max_inner,
            icmp_source_v4: None,
            icmp_source_v6: None,
            stats: Arc::default(),
        }
    }

    fn path_with_tunnels(n: usize) -> OutboundPath {
        let tunnels = (0..n).map(|t| tunnel_io(t as u8, None, 1400)).collect();
        OutboundPath::standalone(
            tunnels,
            vec![Arc::default()],
            Arc::new(FibCell::new(crate::fib::FibBuilder::new().build())),
            Liveness::new(n),
            Arc::default(),
            1,
        )
    }

    /// The send runs: one tunnel, back to back, equal sizes but a shorter last one, at most
    /// UDP_MAX_SEGMENTS datagrams; after a GSO refusal one datagram per message, for every worker.
    #[test]
    fn flush_sends_runs_of_one_tunnels_equal_datagrams() {
        let mut p = path_with_tunnels(3);
        let fill = |p: &mut OutboundPath| {
            let mut at = 0;
            let mut push = |p: &mut OutboundPath, tunnel: usize, len: usize| {
                p.batch.datagrams.push(Datagram {
                    start: at,
                    len,
                    tunnel,
                    inner_len: len,
                    gso: true,
                });
                at += len;
            };
            for _ in 0..3 {
                push(p, 0, 100);
            }
            push(p, 0, 60); // shorter: ends the run
            push(p, 0, 100);
            push(p, 1, 100); // another tunnel
            for _ in 0..70 {
                push(p, 2, 50);
            }
        };
        fill(&mut p);
        let mut wire = Recorder::default();
        p.flush(&mut wire);
        assert_eq!(
            wire.calls,
            vec![vec![
                (0, 360, 100),
                (360, 100, 0),
                (460, 100, 0),
                (560, UDP_MAX_SEGMENTS * 50, 50),
                (
                    560 + UDP_MAX_SEGMENTS * 50,
                    (70 - UDP_MAX_SEGMENTS) * 50,
                    50
                ),
            ]]
        );
        let uplink = p.uplink_stats[0].clone();
        assert_eq!(uplink.tx_packets.load(Ordering::Relaxed), 76);
        assert_eq!(uplink.gso_sends.load(Ordering::Relaxed), 3);
        assert!(p.batch.datagrams.is_empty(), "the flush empties the batch");

        // The kernel refuses UDP GSO: the refused run and the rest go one by one, later batches too.
        fill(&mut p);
        let mut wire = Recorder {
            refuse: Some(libc::EINVAL),
            ..Recorder::default()
        };
        p.flush(&mut wire);
        assert_eq!(wire.singles, 76);
        assert_eq!(uplink.gso_fallbacks.load(Ordering::Relaxed), 1);
        fill(&mut p);
        p.flush(&mut wire);
        assert_eq!(wire.calls.len(), 1);
        assert!(wire.calls[0].iter().all(|&(_, _, segment)| segment == 0));
        assert_eq!(wire.calls[0].len() + wire.singles, 2 * 76);
        assert_eq!(uplink.tx_packets.load(Ordering::Relaxed), 3 * 76);
    }

    /// An IPv4 UDP packet of `len` octets from 192.0.2.10 to 198.51.100.20 (DF set if `df`), its header
    /// checksum and its UDP checksum right.
    fn udp_v4(len: usize, df: bool, fill: u8) -> Vec<u8> {
        let mut p = vec![fill; len];
        p[..20].copy_from_slice(&[
            0x45, 0, 0, 0, 0, 7, 0, 0, 64, 17, 0, 0, 192, 0, 2, 10, 198, 51, 100, 20,
        ]);
        p[2..4].copy_from_slice(&(len as u16).to_be_bytes());
        p[6] = if df { 0x40 } else { 0 };
        let c = wire::checksum(0, &p[..20]);
        p[10..12].copy_from_slice(&c.to_be_bytes());
        p[20..28].copy_from_slice(&[0x9c, 0x40, 0x14, 0x51, 0, 0, 0, 0]);
        p[24..26].copy_from_slice(&((len - 20) as u16).to_be_bytes());
        let pseudo = crate::gso::sum((len - 20) as u64 + 17, &p[12..20]);
        let c = crate::gso::fold(crate::gso::sum(pseudo, &p[20..]));
        p[26..28].copy_from_slice(&if c == 0 { 0xffff } else { c }.to_be_bytes());
        p
    }

    /// Reads go into the batch's next slot: a finished packet is sealed where the TUN device put it (its
    /// checksum completed there when the kernel left it to braid); a packet larger than the slot, or a
    /// super-packet, is made whole in the spill buffer and its segments written into the batch. Each comes
    /// out of the tunnel octet for octet as it went in, and a larger packet makes later slots larger.
    #[test]
    fn reads_in_their_slot_or_through_the_spill_come_out_intact() {
        use crate::fib::{FibBuilder, NextHopGroup};
        use crate::vnet::{F_NEEDS_CSUM, GSO_UDP_L4};
        use braid_crypto::{InboundSa, Spi};
        let sa = OutboundSa::new(Spi(0x200), &key_for_test(), false);
        let tunnel = tunnel_io(0, Some(sa), 9000);
        let mut fib = FibBuilder::new();
        let all = crate::prefix::Prefix::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).unwrap();
        fib.insert(all, Arc::new(NextHopGroup::single(0)));
        let mut p = OutboundPath::standalone(
            vec![tunnel],
            vec![Arc::default()],
            Arc::new(FibCell::new(fib.build())),
            Liveness::new(1),
            Arc::default(),
            1,
        );
        let with_hdr = |hdr: VnetHdr, pkt: &[u8]| {
            let mut read = vec![0u8; VNET_HDR_LEN];
            hdr.write(&mut read);
            read.extend_from_slice(pkt);
            read
        };
        let mut wire = Recorder::default();
        let mut sent = Vec::new();

        // A finished packet: in its slot.
        let plain = udp_v4(1000, true, 0x11);
        p.read(&with_hdr(VnetHdr::default(), &plain), &mut wire);
        sent.push(plain);
        // A packet whose UDP checksum the kernel left to braid (the pseudo-header sum in its field).
        let full = udp_v4(600, true, 0x22);
        let mut partial = full.clone();
        let pseudo = !crate::gso::fold(crate::gso::sum(580 + 17, &partial[12..20]));
        partial[26..28].copy_from_slice(&pseudo.to_be_bytes());
        let needs_csum = VnetHdr {
            flags: F_NEEDS_CSUM,
            csum_start: 20,
            csum_offset: 6,
            ..VnetHdr::default()
        };
        p.read(&with_hdr(needs_csum, &partial), &mut wire);
        sent.push(full);
        assert_eq!(p.slot_room, SLOT_ROOM_MIN);
        // Larger than the slot (a TUN MTU above it): through the spill, and later slots take such packets.
        for fill in [0x33, 0x44] {
            let big = udp_v4(3000, false, fill);
            p.read(&with_hdr(VnetHdr::default(), &big), &mut wire);
            sent.push(big);
            assert_eq!(p.slot_room, 3000);
        }
        // A UDP super-packet of three 500-octet segments: through the spill.
        let superpacket = udp_v4(28 + 1500, true, 0x55);
        let uso = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_UDP_L4,
            hdr_len: 28,
            gso_size: 500,
            csum_start: 20,
            csum_offset: 6,
        };
        p.read(&with_hdr(uso, &superpacket), &mut wire);
        p.flush(&mut wire);

        let mut inbound = InboundSa::new(Spi(0x200), &key_for_test(), false, 64);
        let inner: Vec<Vec<u8>> = wire
            .datagrams
            .iter_mut()
            .map(|d| {
                let opened = inbound.open(d).expect("authentic");
                let pkt = &d[opened.inner];
                pkt[..u16::from_be_bytes([pkt[2], pkt[3]]) as usize].to_vec()
            })
            .collect();
        assert_eq!(inner.len(), sent.len() + 3);
        assert_eq!(inner[..sent.len()], sent[..]);
        for (i, segment) in inner[sent.len()..].iter().enumerate() {
            assert_eq!(segment.len(), 528);
            assert_eq!(segment[28..], superpacket[28 + 500 * i..28 + 500 * (i + 1)]);
        }
        assert_eq!(p.tun_stats.drops.total(), 0);
    }

    /// A finished packet read into its slot is sealed when the next read has been inspected, or at the flush.
    /// Sealed datagrams still lie back to back (one GSO run), in the order read; and an SA switch in between
    /// seals the waiting packet first, under the SA and sequence number it was decided with.
    #[test]
    fn a_packet_waiting_in_its_slot_is_sealed_in_order_under_its_sa() {
        use crate::fib::{FibBuilder, NextHopGroup};
        use braid_crypto::{InboundSa, Spi};
        let remote = SocketAddr::from(([192, 0, 2, 1], 4500));
        let board = Board::new([remote]);
        let sa = OutboundSa::new(Spi(0x300), &key_for_test(), false);
        let mut fib = FibBuilder::new();
        let all = crate::prefix::Prefix::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).unwrap();
        fib.insert(all, Arc::new(NextHopGroup::single(0)));
        let mut p = OutboundPath::standalone(
            vec![tunnel_io(0, Some(sa), 1400)],
            vec![Arc::default()],
            Arc::new(FibCell::new(fib.build())),
            Liveness::new(1),
            Arc::default(),
            1,
        );
        let read = |fill: u8| {
            let mut r = vec![0u8; VNET_HDR_LEN];
            VnetHdr::default().write(&mut r);
            r.extend_from_slice(&udp_v4(500, true, fill));
            r
        };
        let mut wire = Recorder::default();

        for fill in [0x61, 0x62, 0x63] {
            p.read(&read(fill), &mut wire);
            assert!(p.batch.pending.is_some(), "the last read waits in its slot");
            assert!(wire.datagrams.is_empty());
        }
        assert_eq!(p.batch.datagrams.len(), 2, "the reads before it are sealed");
        // A rekey while the third waits: it is sealed first, on the old SA.
        let (done, answer) = crossbeam_channel::bounded(1);
        let next = OutboundSa::new(Spi(0x301), &key_for_test(), false);
        p.apply(
            &board,
            TxCommand::SetOutbound {
                tunnel: 0,
                sa: Some(Arc::new(OutboundEntry::new(next))),
                hold: Duration::ZERO,
                done,
            },
        );
        answer.try_recv().expect("answered").expect("applied");
        assert!(p.batch.pending.is_none());
        p.read(&read(0x64), &mut wire);
        p.flush(&mut wire);

        // One GSO run (one tunnel, one remote): the datagrams lie back to back, the old SA's and the new one's.
        let sealed_len = braid_crypto::sealed_len(500);
        assert_eq!(
            wire.calls,
            vec![vec![(0, 4 * sealed_len, sealed_len as u16)]]
        );
        let mut old = InboundSa::new(Spi(0x300), &key_for_test(), false, 64);
        let mut new = InboundSa::new(Spi(0x301), &key_for_test(), false, 64);
        for (d, (fill, spi, seq)) in wire.datagrams.iter_mut().zip([
            (0x61, 0x300u32, 1u32),
            (0x62, 0x300, 2),
            (0x63, 0x300, 3),
            (0x64, 0x301, 1),
        ]) {
            assert_eq!(d[..8], [spi.to_be_bytes(), seq.to_be_bytes()].concat()[..]);
            let sa = if spi == 0x300 { &mut old } else { &mut new };
            let opened = sa.open(d).expect("authentic");
            assert_eq!(d[opened.inner][..500], udp_v4(500, true, fill)[..]);
        }
        assert_eq!(p.tun_stats.drops.total(), 0);
    }

    /// The route cache follows the routing: a flow keeps its tunnel while nothing changes; when its tunnel
    /// is declared dead, or a new FIB sends its destination elsewhere, its very next packet follows; and when
    /// the routing count passes into its next 65536 the flow table starts afresh.
    #[test]
    fn route_cache_follows_liveness_and_fib_changes() {
        use crate::fib::{FibBuilder, Member, NextHopGroup};
        use braid_crypto::Spi;
        let tunnels: Vec<TunnelIo> = (0..2u8)
            .map(|t| {
                let sa = OutboundSa::new(Spi(0x300 + t as u32), &key_for_test(), false);
                tunnel_io(t, Some(sa), 1400)
            })
            .collect();
        let stats: Vec<Arc<TunnelStats>> = tunnels.iter().map(|t| t.stats.clone()).collect();
        let all = crate::prefix::Prefix::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0).unwrap();
        let fib_to = |members: &[u32]| {
            let group = NextHopGroup::new(
                members
                    .iter()
                    .map(|&tunnel| Member {
                        tunnel,
                        weight: 1,
                        backup: false,
                    })
                    .collect(),
            )
            .unwrap();
            let mut b = FibBuilder::new();
            b.insert(all, Arc::new(group));
            b.build()
        };
        let cell = Arc::new(FibCell::new(fib_to(&[0, 1])));
        let liveness = Liveness::new(2);
        let mut p = OutboundPath::standalone(
            tunnels,
            vec![Arc::default()],
            cell.clone(),
            liveness.clone(),
            Arc::default(),
            1,
        );
        let mut read = vec![0u8; VNET_HDR_LEN];
        read.extend_from_slice(&udp_v4(200, true, 0x66));
        let mut wire = Recorder::default();
        let sent = |p: &mut OutboundPath, wire: &mut Recorder| {
            p.read(&read, wire);
            p.flush(wire);
            let n: Vec<u64> = stats
                .iter()
                .map(|s| s.tx_packets.load(Ordering::Relaxed))
                .collect();
            n
        };
        let first = sent(&mut p, &mut wire);
        let on = first
            .iter()
            .position(|&n| n == 1)
            .expect("one tunnel took it");
        let other = 1 - on;
        let mut expect = first.clone();
        for _ in 0..3 {
            expect[on] += 1;
            assert_eq!(sent(&mut p, &mut wire), expect, "the flow keeps its tunnel");
        }
        // Its tunnel is declared dead: the next packet takes the other one, and stays there.
        liveness.set(on, false);
        expect[other] += 1;
        assert_eq!(sent(&mut p, &mut wire), expect);
        expect[other] += 1;
        assert_eq!(sent(&mut p, &mut wire), expect);
        // Back to life: the flow stays where it is (it is still a member); a new FIB with only the first
        // tunnel moves it back at once (the snapshot is taken at the next tick).
        liveness.set(on, true);
        expect[other] += 1;
        assert_eq!(sent(&mut p, &mut wire), expect);
        cell.publish(fib_to(&[on as u32]));
        p.tick();
        expect[on] += 1;
        assert_eq!(sent(&mut p, &mut wire), expect);
        // The count passes into its next 65536: every flow is forgotten, and placed afresh.
        p.fib_generation = (p.fib_generation | 0xffff) + 1 - p.liveness.generation();
        let before = p.route_epoch;
        expect[on] += 1;
        assert_eq!(sent(&mut p, &mut wire), expect);
        assert_eq!(p.route_epoch, before + 1);
        assert_eq!(p.tun_stats.drops.total(), 0);
    }

    #[test]
    fn one_gso_refusal_tells_every_worker_and_a_retry_comes_due() {
        let g = UplinkGso::default();
        assert!(g.is_on(0));
        assert!(g.refuse(30_000), "the first refusal turns it off");
        assert!(
            !g.refuse(30_000),
            "a second worker's refusal is not a second fallback"
        );
        assert!(!g.is_on(29_999));
        assert!(g.is_on(30_000), "due again");
        assert!(g.is_on(30_001));
        assert!(g.refuse(u64::MAX));
        assert!(!g.is_on(u64::MAX - 1), "off for good");
    }

    #[test]
    fn outbound_commands_switch_sa_and_remote() {
        use braid_crypto::Spi;
        let first: SocketAddr = "192.0.2.1:4500".parse().unwrap();
        let moved: SocketAddr = "192.0.2.1:61000".parse().unwrap();
        let board = Board::new([first]);
        let mut tunnels = vec![OutTunnel {
            uplink: 0,
            remote: first,
            sa: None,
            hold: None,
            max_inner: 1400,
            icmp_source_v4: None,
            icmp_source_v6: None,
            stats: Arc::default(),
        }];
        let apply = |tunnels: &mut Vec<OutTunnel>, command: fn(_) -> TxCommand| {
            let (done, answer) = crossbeam_channel::bounded(1);
            apply_tx(tunnels, &board, command(done));
            answer.try_recv().expect("answered at once")
        };
        let seal = |t: &mut OutTunnel| {
            let mut buf = PacketBuf::new();
            buf.as_mut_slice()[HEADROOM] = 0x45;
            let e = t.sa.as_mut().expect("an outbound SA");
            let esp =
                e.sa.seal(
                    buf.as_mut_slice(),
                    HEADROOM..HEADROOM + 60,
                    NextHeader::Ipv4,
                )
                .unwrap();
            e.counters.publish_outbound(&e.sa);
            u32::from_be_bytes(buf.as_slice()[esp.start..esp.start + 4].try_into().unwrap())
        };

        assert!(tunnels[0].sa.is_none());
        assert_eq!(board_sas(&board).outbound, None);
        // (`fn` pointers cannot capture, so each SA is made inside.)
        assert_eq!(
            apply(&mut tunnels, |done| TxCommand::SetOutbound {
                tunnel: 0,
                hold: Duration::ZERO,
                sa: Some(Arc::new(OutboundEntry::new(OutboundSa::new(
                    Spi(0x100),
                    &key_for_test(),
                    false
                )))),
                done
            }),
            Ok(())
        );
        assert_eq!(seal(&mut tunnels[0]), 0x100);
        assert_eq!(seal(&mut tunnels[0]), 0x100);
        let out = board_sas(&board).outbound.unwrap();
        assert_eq!(
            (out.spi, out.packets, out.bytes, out.seq),
            (Spi(0x100), 2, 120, 2)
        );

        // A rekey: the next packet goes out on the new SPI, starting at sequence number 1.
        apply(&mut tunnels, |done| TxCommand::SetOutbound {
            tunnel: 0,
            hold: Duration::ZERO,
            sa: Some(Arc::new(OutboundEntry::new(OutboundSa::new(
                Spi(0x101),
                &key_for_test(),
                false,
            )))),
            done,
        })
        .unwrap();
        assert_eq!(seal(&mut tunnels[0]), 0x101);
        let out = board_sas(&board).outbound.unwrap();
        assert_eq!((out.spi, out.packets, out.seq), (Spi(0x101), 1, 1));

        apply(&mut tunnels, |done| TxCommand::SetRemote {
            tunnel: 0,
            remote: "192.0.2.1:61000".parse().unwrap(),
            done,
        })
        .unwrap();
        assert_eq!(tunnels[0].remote, moved);
        assert_eq!(board_sas(&board).remote, moved);

        assert_eq!(
            apply(&mut tunnels, |done| TxCommand::SetOutbound {
                tunnel: 0,
                hold: Duration::ZERO,
                sa: None,
                done
            }),
            Ok(())
        );
        assert!(tunnels[0].sa.is_none());
        assert_eq!(board_sas(&board).outbound, None);

        assert_eq!(
            apply(&mut tunnels, |done| TxCommand::SetRemote {
                tunnel: 3,
                remote: "192.0.2.9:4500".parse().unwrap(),
                done
            }),
            Err(SaError::UnknownTunnel(3))
        );
        assert_eq!(tunnels[0].remote, moved, "unknown tunnel: nothing changed");
    }

    fn key_for_test() -> braid_crypto::SaKey {
        braid_crypto::SaKey::new(
            braid_crypto::Cipher::Aes256Gcm16,
            &[9; braid_crypto::KEYMAT_LEN],
        )
        .unwrap()
    }

    fn board_sas(board: &Board) -> crate::sa::TunnelSas {
        board.snapshot(0).unwrap()
    }
}
