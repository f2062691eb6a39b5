//! One inbound worker's work per receive batch, without its system calls: [`InboundPath`].
//!
//! A batch of up to 32 messages from one uplink socket (`recvmmsg` into receive slots allocated once,
//! [`RecvBatch`]) is split into its datagrams (a UDP GRO message is several ESP datagrams of one sender back
//! to back), and each is classified (RFC 3948: ESP, IKE behind the non-ESP marker, NAT keepalive), looked up
//! by SPI, checked against the replay window and opened in place, exactly as if it had come alone. The inner
//! packet is checked (version, length, its source allowed on that tunnel) and gets a zero virtio-net header
//! where the ESP header was. The batch's inner packets then go through [`Gro`]: consecutive TCP segments (and
//! equal-size UDP datagrams) of one flow become one super-packet written with one `writev` (the payloads
//! where they lie, no copy); everything else is written one packet per write, in order per flow, to the TUN
//! queue of the flow's [`queue_hash`]. Counters move once per batch.
//!
//! The TUN writes go through a [`TunWire`]: the engine's worker passes its TUN queues ([`TunQueues`]);
//! `braid bench` passes one that takes every packet without a system call, so the benchmark measures this
//! very code.

use std::fs::File;
use std::io::{self, IoSlice, Write};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, MutexGuard};
use std::time::Instant;

use braid_crypto::{classify, InboundSa, NextHeader, UdpPayload};

use crate::engine::{warn_limited, IkeDatagram, TunnelIo};
use crate::fib::{Fib, FibCell};
use crate::flow::queue_hash;
use crate::gro::{self, Gro, Output};
use crate::prefix::Prefix;
use crate::sa::{Board, InboundEntry, InboundSas, RxCommand};
use crate::stats::{add, DropReason, TunStats, TunnelStats, UplinkStats, WorkerStats};
use crate::sys::RecvBatch;
use crate::vnet::{VnetHdr, VNET_HDR_LEN};
use crate::wire::{self, Inner};

/// Datagrams a batch usually holds at most (the kernel puts at most 64 in one GRO message); more only grows
/// the list once.
const RX_DATAGRAMS: usize = crate::engine::RX_BATCH * 64;

/// The TUN writes of an inbound worker: what [`InboundPath`] asks of the kernel.
pub trait TunWire {
    /// Writes one packet, virtio-net header first, to TUN queue `queue`.
    fn write(&mut self, queue: usize, frame: &[u8]) -> io::Result<usize>;
    /// Writes one super-packet, its virtio-net header in the first slice, to TUN queue `queue`.
    fn write_vectored(&mut self, queue: usize, iov: &[IoSlice<'_>]) -> io::Result<usize>;
}

/// The engine's [`TunWire`]: every queue of the TUN device.
pub struct TunQueues(pub Arc<[Arc<File>]>);

impl TunWire for TunQueues {
    fn write(&mut self, queue: usize, frame: &[u8]) -> io::Result<usize> {
        (&*self.0[queue]).write(frame)
    }

    fn write_vectored(&mut self, queue: usize, iov: &[IoSlice<'_>]) -> io::Result<usize> {
        (&*self.0[queue]).write_vectored(iov)
    }
}

/// A tunnel as an inbound worker sees it.
#[derive(Clone)]
pub(crate) struct InTunnel {
    /// This tunnel's index, as FIB members name it.
    index: u32,
    allowed_sources: Vec<Prefix>,
    stats: Arc<TunnelStats>,
}

impl InTunnel {
    /// Tunnel `index`'s inbound half.
    pub(crate) fn new(index: usize, t: &TunnelIo) -> InTunnel {
        InTunnel {
            index: index as u32,
            allowed_sources: t.allowed_sources.clone(),
            stats: t.stats.clone(),
        }
    }
}

/// An inner packet opened in place in a receive slot, waiting for the TUN write.
#[derive(Copy, Clone, Debug)]
struct RxPacket {
    slot: u16,
    /// The TUN queue it is written to.
    queue: u16,
    /// Where the inner packet starts in the slot; a zero virtio-net header lies just before it.
    start: u32,
    len: u32,
    tunnel: u32,
}

/// What one inbound worker shares with the others and the control plane.
pub(crate) struct Shared {
    pub(crate) tunnels: Vec<InTunnel>,
    pub(crate) uplink_stats: Vec<Arc<UplinkStats>>,
    pub(crate) sas: InboundSas,
    pub(crate) fib: Arc<FibCell>,
    pub(crate) ike: Option<crossbeam_channel::Sender<IkeDatagram>>,
    pub(crate) tun_stats: Arc<TunStats>,
    pub(crate) worker_stats: Arc<[WorkerStats]>,
    /// TUN queues to spread flows over.
    pub(crate) queues: usize,
    pub(crate) epoch: Instant,
}

/// One inbound worker's state and its per-batch work: everything but the system calls (see the module docs).
pub struct InboundPath {
    worker: usize,
    worker_stats: Arc<[WorkerStats]>,
    uplink_stats: Vec<Arc<UplinkStats>>,
    tunnels: Vec<InTunnel>,
    fib: Arc<FibCell>,
    /// The FIB snapshot this worker routes from, refreshed per batch.
    fib_now: Arc<Fib>,
    /// Every tunnel's inbound SAs by SPI, across all uplinks (shared entries; this worker's map).
    sas: InboundSas,
    ike: Option<crossbeam_channel::Sender<IkeDatagram>>,
    epoch: Instant,
    last_warn: Option<Instant>,
    tun_stats: Arc<TunStats>,
    /// TUN queues to spread flows over.
    queues: usize,
    /// The inner packets of the current batch, in arrival order.
    packets: Vec<RxPacket>,
    gro: Gro,
    /// Per tunnel, what the current batch delivered to the TUN device: packets, octets.
    delivered: Vec<(u64, u64)>,
    /// Tunnels that authenticated a packet in the current batch (their counters move once per batch).
    touched_tunnels: Vec<u32>,
}

impl InboundPath {
    /// Worker `worker`'s path.
    pub(crate) fn new(worker: usize, shared: &Shared) -> InboundPath {
        InboundPath {
            worker,
            worker_stats: shared.worker_stats.clone(),
            uplink_stats: shared.uplink_stats.clone(),
            tunnels: shared.tunnels.clone(),
            fib: shared.fib.clone(),
            fib_now: shared.fib.snapshot(),
            sas: shared.sas.clone(),
            ike: shared.ike.clone(),
            epoch: shared.epoch,
            last_warn: None,
            tun_stats: shared.tun_stats.clone(),
            queues: shared.queues,
            packets: Vec::with_capacity(RX_DATAGRAMS),
            gro: Gro::new(),
            delivered: vec![(0, 0); shared.tunnels.len()],
            touched_tunnels: Vec::new(),
        }
    }

    /// A worker's path outside the engine, for `braid bench`: `tunnels` (with their inbound SAs) over `uplinks`,
    /// one TUN queue, IKE messages counted and dropped.
    ///
    /// # Errors
    /// `InvalidInput` if two inbound SAs share an SPI or one has a reserved SPI.
    pub fn standalone(
        tunnels: Vec<TunnelIo>,
        uplinks: Vec<Arc<UplinkStats>>,
        fib: Arc<FibCell>,
        tun_stats: Arc<TunStats>,
    ) -> io::Result<InboundPath> {
        let mut sas = InboundSas::default();
        let mut ins = Vec::new();
        for (i, mut t) in tunnels.into_iter().enumerate() {
            for sa in std::mem::take(&mut t.inbound) {
                install(&mut sas, i, &t.name, sa)?;
            }
            ins.push(InTunnel::new(i, &t));
        }
        let shared = Shared {
            tunnels: ins,
            uplink_stats: uplinks,
            sas,
            fib,
            ike: None,
            tun_stats,
            worker_stats: Arc::new([WorkerStats::default()]),
            queues: 1,
            epoch: Instant::now(),
        };
        Ok(InboundPath::new(0, &shared))
    }

    /// Applies one SA change of the control plane.
    pub(crate) fn apply(&mut self, board: &Board, command: RxCommand) {
        self.sas.apply(board, command);
    }

    /// Handles the `n` messages just received on uplink `u` into `batch`: splits GRO messages into their
    /// datagrams, opens each in place, writes the inner packets to the TUN device (coalesced where they can
    /// be), then updates the counters once.
    pub fn receive(&mut self, u: usize, batch: &mut RecvBatch, n: usize, wire: &mut impl TunWire) {
        // A coarse clock and the FIB snapshot: once per batch, not per packet.
        let now_ms = (self.epoch.elapsed().as_millis() as u64).max(1);
        self.fib.refresh(&mut self.fib_now);
        self.packets.clear();
        let (mut datagrams, mut octets, mut coalesced) = (0u64, 0u64, 0u64);
        let mut cx = RxContext {
            uplink: u,
            stats: &self.uplink_stats[u],
            tunnels: &self.tunnels,
            sas: &self.sas,
            fib: &self.fib_now,
            ike: self.ike.as_ref(),
            queues: self.queues,
            packets: &mut self.packets,
            touched_tunnels: &mut self.touched_tunnels,
            run: None,
        };
        for m in 0..n {
            let meta = batch.meta(m);
            let (Some(from), false) = (meta.from, meta.truncated) else {
                // Larger than a slot (no UDP datagram is), or from an address family braid does not use.
                datagrams += 1;
                octets += meta.len as u64;
                cx.stats.drops.count(DropReason::Malformed);
                continue;
            };
            // With UDP GRO the message is several datagrams of `segment` octets back to back, the last maybe
            // shorter; each is handled exactly as if it had come alone.
            let segment = if meta.segment > 0 && meta.segment < meta.len {
                coalesced += 1;
                meta.segment
            } else {
                meta.len.max(1)
            };
            let slot = batch.slot_mut(m);
            let mut start = 0;
            loop {
                let end = (start + segment).min(meta.len);
                datagrams += 1;
                octets += (end - start) as u64;
                cx.open_datagram(m, &mut slot[start..end], start, from);
                start = end;
                if start >= meta.len {
                    break;
                }
            }
        }
        // The last run's SA: its counters are published and its lock released before the TUN writes.
        drop(cx);
        self.write_packets(batch, wire);

        let us = &self.uplink_stats[u];
        add(&us.rx_packets, datagrams);
        add(&us.rx_bytes, octets);
        add(&us.rx_batches, 1);
        add(&self.worker_stats[self.worker].uplink_datagrams, datagrams);
        if coalesced > 0 {
            add(&us.gro_receives, coalesced);
        }
        for t in self.touched_tunnels.drain(..) {
            let stats = &self.tunnels[t as usize].stats;
            stats.last_rx_ms.store(now_ms, Ordering::Relaxed);
            let (packets, bytes) = std::mem::take(&mut self.delivered[t as usize]);
            if packets > 0 {
                add(&stats.rx_packets, packets);
                add(&stats.rx_bytes, bytes);
            }
        }
    }

    /// Writes the batch's inner packets to the TUN device, in order per flow, coalescing what [`Gro`] can.
    fn write_packets(&mut self, batch: &RecvBatch, wire: &mut impl TunWire) {
        let InboundPath {
            packets,
            gro,
            tunnels,
            delivered,
            tun_stats,
            last_warn,
            ..
        } = self;
        let packets = &*packets;
        let mut offloads = gro.offloads();
        let mut sink = |out: Output<'_>| match out {
            Output::Single(id) => {
                let p = packets[id as usize];
                deliver(wire, frame(batch, p), p, tunnels, delivered, last_warn);
            }
            Output::Super(s) => {
                let mut iov = [IoSlice::new(&[]); gro::MAX_SEGMENTS + 1];
                iov[0] = IoSlice::new(s.header);
                for (slice, piece) in iov[1..].iter_mut().zip(s.pieces) {
                    let p = packets[piece.id as usize];
                    let start = p.start as usize;
                    *slice = IoSlice::new(
                        &batch.slot(p.slot as usize)[start + piece.start..start + piece.end],
                    );
                }
                // The TUN device copies the iovecs into one buffer and takes the virtio-net header from its
                // first octets: no copy here. The pieces are one flow's: one queue.
                let queue = s.pieces.first().map_or(0, |p| packets[p.id as usize].queue);
                match wire.write_vectored(queue as usize, &iov[..s.pieces.len() + 1]) {
                    Ok(n) if n == VNET_HDR_LEN + s.ip_len => {
                        add(&tun_stats.gro_writes, 1);
                        add(&tun_stats.gro_packets, s.pieces.len() as u64);
                        for piece in s.pieces {
                            count_delivered(delivered, packets[piece.id as usize]);
                        }
                    }
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                        // The kernel refuses this kind of super-packet (e.g. USO before Linux 6.2): stop building
                        // it, and write these packets one by one, so none is lost.
                        add(&tun_stats.gro_fallbacks, 1);
                        let kind = if s.udp {
                            &mut offloads.udp
                        } else {
                            &mut offloads.tcp
                        };
                        if std::mem::replace(kind, false) {
                            tracing::info!(
                                udp = s.udp,
                                error = %e,
                                "the TUN device refused a coalesced write; writing packets one by one"
                            );
                        }
                        for piece in s.pieces {
                            let p = packets[piece.id as usize];
                            deliver(wire, frame(batch, p), p, tunnels, delivered, last_warn);
                        }
                    }
                    Ok(_) | Err(_) => {
                        for piece in s.pieces {
                            let t = packets[piece.id as usize].tunnel as usize;
                            tunnels[t].stats.drops.count(DropReason::TunWriteFailed);
                        }
                        warn_limited(last_warn, || {
                            tracing::warn!(udp = s.udp, "TUN write failed")
                        });
                    }
                }
            }
        };
        for (id, p) in packets.iter().enumerate() {
            let start = p.start as usize;
            let pkt = &batch.slot(p.slot as usize)[start..start + p.len as usize];
            gro.push(id as u32, p.tunnel, pkt, &mut sink);
        }
        gro.flush(&mut sink);
        gro.set_offloads(offloads);
    }
}

/// What opening one batch's datagrams needs, borrowed from the inbound worker (apart from the receive slots,
/// which the datagrams are opened in).
struct RxContext<'a> {
    uplink: usize,
    stats: &'a UplinkStats,
    tunnels: &'a [InTunnel],
    sas: &'a InboundSas,
    /// The FIB snapshot of this batch.
    fib: &'a Fib,
    ike: Option<&'a crossbeam_channel::Sender<IkeDatagram>>,
    /// TUN queues to spread flows over.
    queues: usize,
    packets: &'a mut Vec<RxPacket>,
    touched_tunnels: &'a mut Vec<u32>,
    /// The SA of the current run of datagrams with one SPI, locked (see [`SaRun`]).
    run: Option<SaRun<'a>>,
}

/// An inbound SA locked for a run of consecutive datagrams with its SPI: one lock per run, not per packet.
/// When the run ends (another SPI, or the end of the batch) its counters are published and the lock released.
struct SaRun<'a> {
    spi: u32,
    entry: &'a InboundEntry,
    sa: MutexGuard<'a, InboundSa>,
}

impl Drop for SaRun<'_> {
    fn drop(&mut self) {
        self.entry.counters.publish_inbound(&self.sa);
    }
}

impl<'a> RxContext<'a> {
    /// Handles one datagram (at `offset` in receive slot `m`): IKE and keepalives go their way, ESP is opened
    /// in place; an inner packet that passes the checks gets a zero virtio-net header in front (where the ESP
    /// header was) and joins the batch's packets.
    fn open_datagram(&mut self, m: usize, datagram: &mut [u8], offset: usize, from: SocketAddr) {
        let us = self.stats;
        let spi = match classify(datagram) {
            UdpPayload::Esp(spi) => spi,
            UdpPayload::Ike(message) => {
                add(&us.ike_received, 1);
                if let Some(ike) = self.ike {
                    let _ = ike.try_send(IkeDatagram {
                        uplink: self.uplink,
                        from,
                        message: message.to_vec(),
                    });
                }
                return;
            }
            UdpPayload::NatKeepalive => return add(&us.nat_keepalives, 1),
            UdpPayload::Malformed => return us.drops.count(DropReason::Malformed),
        };
        if self.run.as_ref().map(|r| r.spi) != Some(spi.0) {
            self.run = None;
            let Some(entry) = self.sas.get(spi) else {
                return us.drops.count(DropReason::UnknownSpi);
            };
            self.run = Some(SaRun {
                spi: spi.0,
                entry,
                sa: entry.lock(),
            });
        }
        let Some(run) = &mut self.run else {
            return;
        };
        let Some(tunnel) = self.tunnels.get(run.entry.tunnel) else {
            return us.drops.count(DropReason::UnknownSpi);
        };
        let opened = match run.sa.open(datagram) {
            Ok(o) => o,
            Err(e) => return tunnel.stats.drops.count(e.into()),
        };
        if !self.touched_tunnels.contains(&tunnel.index) {
            self.touched_tunnels.push(tunnel.index);
        }
        let checked = check_inner(&datagram[opened.inner.clone()], opened.next_header);
        let inner = match &checked {
            Ok(i) => i,
            Err(reason) => return tunnel.stats.drops.count(*reason),
        };
        if !source_allowed(inner.src, tunnel.index, &tunnel.allowed_sources, self.fib) {
            return tunnel.stats.drops.count(DropReason::InnerSource);
        }
        let queue = if self.queues > 1 {
            queue_hash(&datagram[opened.inner.clone()], inner) as usize % self.queues
        } else {
            0
        };
        // The virtio-net header goes where the ESP header was: the packet is written from where it lies.
        VnetHdr::default().write(&mut datagram[opened.inner.start - VNET_HDR_LEN..]);
        self.packets.push(RxPacket {
            slot: m as u16,
            queue: queue as u16,
            start: (offset + opened.inner.start) as u32,
            len: inner.len as u32,
            tunnel: tunnel.index,
        });
    }
}

/// Packet `p` with the zero virtio-net header in front of it, as it lies in its receive slot.
fn frame(batch: &RecvBatch, p: RxPacket) -> &[u8] {
    let start = p.start as usize;
    &batch.slot(p.slot as usize)[start - VNET_HDR_LEN..start + p.len as usize]
}

/// Writes one packet (`frame`: header and packet) to the TUN device; counts it as delivered or dropped.
fn deliver(
    wire: &mut impl TunWire,
    frame: &[u8],
    p: RxPacket,
    tunnels: &[InTunnel],
    delivered: &mut [(u64, u64)],
    last_warn: &mut Option<Instant>,
) {
    // One packet per write on a TUN device: it is taken whole or refused.
    match wire.write(p.queue as usize, frame) {
        Ok(n) if n == frame.len() => count_delivered(delivered, p),
        Ok(_) => tunnels[p.tunnel as usize]
            .stats
            .drops
            .count(DropReason::TunWriteFailed),
        Err(e) => {
            tunnels[p.tunnel as usize]
                .stats
                .drops
                .count(DropReason::TunWriteFailed);
            warn_limited(last_warn, || tracing::warn!(error = %e, "TUN write failed"));
        }
    }
}

/// Adds packet `p` to its tunnel's delivered (packets, octets) of this batch.
fn count_delivered(delivered: &mut [(u64, u64)], p: RxPacket) {
    let d = &mut delivered[p.tunnel as usize];
    d.0 += 1;
    d.1 += u64::from(p.len);
}

/// Whether tunnel `index` may carry packets from `src`: its own inside/static prefixes, or a FIB route for `src`
/// that has the tunnel among its members (backups included).
pub fn source_allowed(src: IpAddr, index: u32, allowed: &[Prefix], fib: &Fib) -> bool {
    allowed.iter().any(|p| p.contains(src))
        || fib
            .lookup(src)
            .is_some_and(|g| g.members().iter().any(|m| m.tunnel == index))
}

/// The inner-packet sanity check after decryption: the version must match ESP's next header and the length
/// must be consistent.
pub fn check_inner(payload: &[u8], next: NextHeader) -> Result<Inner, DropReason> {
    let inner = wire::inspect(payload).map_err(|_| DropReason::InnerMalformed)?;
    let expected = match next {
        NextHeader::Ipv4 => 4,
        NextHeader::Ipv6 => 6,
    };
    if inner.version != expected {
        return Err(DropReason::InnerMalformed);
    }
    Ok(inner)
}

/// Installs inbound SA `sa` of tunnel `index` (named `name`, for the error) into `sas`.
pub(crate) fn install(
    sas: &mut InboundSas,
    index: usize,
    name: &str,
    sa: InboundSa,
) -> io::Result<()> {
    let spi = sa.spi();
    sas.install(index, sa).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("tunnel {name:?}: inbound SPI {spi}: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::{Member, NextHopGroup};
    use etherparse::PacketBuilder;

    #[test]
    fn inner_checks() {
        let mut ok = Vec::new();
        PacketBuilder::ipv4([192, 0, 2, 5], [198, 51, 100, 1], 64)
            .udp(1, 2)
            .write(&mut ok, &[0; 10])
            .unwrap();
        assert!(check_inner(&ok, NextHeader::Ipv4).is_ok());
        assert_eq!(
            check_inner(&ok, NextHeader::Ipv6),
            Err(DropReason::InnerMalformed)
        );
        assert_eq!(
            check_inner(&ok[..20], NextHeader::Ipv4),
            Err(DropReason::InnerMalformed)
        );
    }

    #[test]
    fn sources_allowed_by_static_prefixes_or_by_fib_membership() {
        use crate::fib::FibBuilder;
        let allowed: Vec<Prefix> = vec!["192.0.2.0/26".parse().unwrap()];
        let mut b = FibBuilder::new();
        // 198.51.100.0/24 learned over tunnels 1 (active) and 2 (backup); 203.0.113.0/24 over tunnel 3 only.
        let group = NextHopGroup::new(vec![
            Member {
                tunnel: 1,
                weight: 1,
                backup: false,
            },
            Member {
                tunnel: 2,
                weight: 1,
                backup: true,
            },
        ])
        .unwrap();
        b.insert("198.51.100.0/24".parse().unwrap(), Arc::new(group));
        b.insert(
            "203.0.113.0/24".parse().unwrap(),
            Arc::new(NextHopGroup::single(3)),
        );
        let fib = b.build();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(source_allowed(ip("192.0.2.5"), 1, &allowed, &fib));
        assert!(!source_allowed(ip("192.0.2.100"), 1, &allowed, &fib));
        assert!(source_allowed(ip("198.51.100.7"), 1, &allowed, &fib));
        assert!(
            source_allowed(ip("198.51.100.7"), 2, &allowed, &fib),
            "a backup member may send too"
        );
        assert!(!source_allowed(ip("198.51.100.7"), 3, &allowed, &fib));
        assert!(!source_allowed(ip("203.0.113.9"), 1, &allowed, &fib));
        assert!(source_allowed(ip("203.0.113.9"), 3, &[], &fib));
    }
}
