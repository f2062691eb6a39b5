//! The forwarding engine: the two data-path threads and what they own.
//!
//! ```text
//!              +----------------------------- outbound thread ("braid-tx") -----------------------------+
//!  TUN read -> | inspect inner -> FIB (LPM -> next-hop group) -> flow hash + pick a tunnel -> MTU check  | -> UDP send
//!              | (ICMP back) -> ESP seal -> uplink cap: send now, hold briefly, or drop                   |  (uplink)
//!              +------------------------------------------------------------------------------------------+
//!              +--------------------- inbound thread ("braid-rx") ---------------------+
//!  UDP recv -> | classify (ESP / IKE / keepalive) -> SPI lookup -> anti-replay + open   | -> TUN write
//!  (uplinks)   | -> inner sanity (version, length, source allowed on that tunnel)     |
//!              +-----------------------------------------------------------------------+
//! ```
//! Workers: there are N outbound threads (`braid-tx0..`) and N inbound threads (`braid-rx0..`), N =
//! `DataplaneSpec::tun.len()` (TUN queues) and the uplinks' socket count. Nothing passes between them: outbound
//! worker `i` reads TUN queue `i` of a multi-queue device (the kernel keeps a flow on one queue), inbound worker
//! `i` receives on socket `i` of each uplink's `SO_REUSEPORT` group (the kernel keeps a peer on one socket) and
//! writes each flow to the TUN queue of its [`queue_hash`](crate::flow::queue_hash) (so the kernel steers the flow's other direction to
//! the outbound worker of that queue). Per-flow order holds without any reordering step. The workers share each
//! SA: an [`OutboundSa`] seals through `&self` with an atomic sequence number, reserved once per TUN read; an
//! inbound SA sits behind a mutex that a worker takes once per run of datagrams with its SPI (uncontended: the
//! port group pins a peer to one worker). The uplink cap's token bucket is shared and lock-free (one
//! compare-and-swap per datagram on a capped uplink, [`TokenBucket`]). Each worker blocks in `epoll` (mio) with a waker for shutdown, never on the tokio runtime.
//! Counters are relaxed atomics read by the control plane, moved once per batch.
//!
//! Routing: both threads read the control plane's current [`Fib`](crate::fib::Fib) snapshot from a [`FibCell`] (read-copy-update,
//! no lock). A prefix maps to a [`NextHopGroup`]; the tunnel for a packet is chosen per flow (5-tuple, or 3-tuple
//! for fragments and other protocols: [`flow_hash`](crate::flow::flow_hash)) by weighted rendezvous hashing
//! ([`scheduler::pick`](crate::scheduler::pick)), so a member leaving a group moves only its own flows. A flow table remembers each live flow's tunnel: a flow stays
//! on its tunnel while that tunnel is in the group (no reordering, even when members join), and a *new* flow
//! whose hashed member's uplink is at its cap goes to a member whose uplink has headroom. Per-packet spraying
//! ([`scheduler::pick_spray`](crate::scheduler::pick_spray)) is an option for links that tolerate reordering.
//!
//! Tunnels the control plane marks dead ([`Liveness`]) are skipped in every group at once, without a FIB
//! rebuild; a group left with no live active member uses its live backups.
//!
//! Inbound, an inner source is accepted from a tunnel if the tunnel's own inside/static prefixes contain it, or
//! if the FIB's group for the source includes that tunnel (as a member or a backup): a prefix learned over a
//! tunnel may send from it, a prefix never learned there may not.
//!
//! Egress caps: an uplink with a cap has a [`TokenBucket`]. A packet over the cap is held (copied into a small
//! pooled buffer) until its tokens accrue, at most the bucket's queue delay, and sent in order; beyond that it
//! is dropped and counted as `cap_exceeded` on the uplink. The cap counts outer IP bytes (IP + UDP + ESP).
//!
//! SAs change at run time (IKE creates, rekeys and deletes child SAs): the control plane sends commands through
//! a [`SaControl`] to every worker of the SA's direction, each applying them at its next wake-up or before its
//! next packet (see [`crate::sa`]). A tunnel may have no outbound SA (before IKE's first child SA, or after
//! [`SaControl::clear`]): its packets are dropped as `no_sa`. When IKE removes a tunnel's outbound SA while a
//! new one is on its way ([`SaControl::remove_outbound`] with a hold), each worker keeps that tunnel's reads as
//! they came (at most [`HOLD_PACKETS`] packets and [`HOLD_BYTES`], for at most the hold) and forwards them,
//! in order and before anything it reads later, as soon as the next SA is set; what is still held when the
//! hold ends is dropped as `no_sa`. Like the kernel's queue for packets waiting on IKE (`xfrm_larval_drop = 0`),
//! this costs nothing while a tunnel has its SA. Inbound, each tunnel may have several SAs at once
//! (old and new during a rekey), looked up by SPI. IKE messages go out through an [`IkeSender`] on the uplink
//! sockets themselves, so they leave from the address and port the peer knows (RFC 7296 2.23).
//!
//! Routes come from a FIB snapshot each worker holds ([`FibCell::refresh`]: once per wake-up and every 256
//! packets outbound, once per receive batch inbound), so a published table takes effect within a batch and a
//! packet costs no atomic operation for its route.
//!
//! The outbound fast path (per read: [`crate::outbound`], whose [`OutboundPath`] takes its system calls from a
//! [`Wire`](crate::outbound::Wire), so `braid bench` runs the same code). The TUN device runs with offloads ([`Dataplane::start`] turns on TSO4/TSO6 with
//! ECN, partial checksums and, where the kernel has it, USO), so one read may bring a TCP or UDP super-packet
//! of up to 64 KiB. Per wake-up the outbound thread reads until the device would block, and for each read
//! decides routing, the flow's tunnel, the SA and the MTU check once (all segments share the 5-tuple; the
//! check is on the segment size), then writes each segment ([`crate::gso`]) straight into the next slot of
//! its batch buffer at `slot + HEADROOM` and seals it there, so the sealed datagrams lie back to back. A
//! batch (at most 128 datagrams) goes out when full and when the device is drained: per uplink, runs of
//! equal-size datagrams of one tunnel (the last may be shorter; at most 64 and 64 KiB) become one message with
//! a `UDP_SEGMENT` control message (UDP GSO), and the messages of the batch one `sendmmsg`. An uplink whose
//! kernel refuses UDP GSO (`EIO`, `EINVAL`, `ENOPROTOOPT`) is remembered (by every worker at once), the refused
//! datagrams are resent one by one, and later batches send one datagram per message. `EMSGSIZE` on a GSO message (its datagrams no
//! longer fit the route's MTU, which the kernel would fragment one by one) counts as a refusal for 30 s, after
//! which GSO is tried again. Tunnel and uplink counters are added once per run,
//! SA counters published once per batch.
//!
//! Inbound fast path (per batch: [`crate::inbound`], whose [`InboundPath`] takes its TUN writes from a
//! [`TunWire`](crate::inbound::TunWire), so `braid bench` runs the same code): the inbound thread takes up to 32 messages per `recvmmsg` into receive slots it
//! allocated once ([`RecvBatch`], 64 KiB each). The uplink sockets have UDP GRO on, so
//! one message may be several ESP datagrams of one sender back to back (the `UDP_GRO` control message gives
//! their size); each datagram is classified, looked up, checked against the replay window and opened in place
//! exactly as if it had come alone. The inner packets of the whole batch then go through [`Gro`](crate::gro::Gro)
//! ([`crate::gro`]): consecutive TCP segments (and equal-size UDP datagrams) of one flow become one
//! super-packet written with one `writev` (a virtio-net header with the GSO type, and the payloads where they
//! lie: no copy); everything else is written one packet per write, as before, in order per flow. Counters move
//! once per batch: uplink rx counters, each SA's published counters, each tunnel's `last_rx_ms` and rx
//! counters. A TUN device that refuses a kind of super-packet (`EINVAL`) gets that kind packet by packet from
//! then on (logged once, counted in `gro_fallbacks`).
//!
//! Left out here, on purpose: the liveness detection itself (BFD, DPD), and spreading one tunnel's inbound ESP
//! over several workers (its 4-tuple is one socket's; several tunnels spread).

use std::fs::File;
use std::io::{self, IoSliceMut, Read};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use braid_crypto::udp_encap::NAT_KEEPALIVE;
use braid_crypto::{InboundSa, OutboundSa, NON_ESP_MARKER};
use crossbeam_channel::Receiver;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::fib::{FibCell, Member, NextHopGroup};
use crate::inbound::{self, InTunnel, InboundPath, TunQueues};
use crate::outbound::{self, OutTunnel, OutboundPath, Sockets, UplinkGso};
use crate::prefix::Prefix;
use crate::sa::{Board, InboundSas, OutboundEntry, RxCommand, SaControl, TxCommand};
use crate::shaper::TokenBucket;
use crate::stats::{add, TunStats, TunnelStats, UplinkStats, WorkerStats};
use crate::sys::{self, RecvBatch};

const WAKE: Token = Token(usize::MAX);
const TUN: Token = Token(usize::MAX - 1);
/// Minimum spacing of repeated warnings from one thread (never one log line per packet).
const WARN_EVERY: Duration = Duration::from_secs(10);
pub use crate::outbound::{HOLD_BYTES, HOLD_PACKETS};

/// An uplink as the data path sees it.
pub struct UplinkIo {
    pub name: String,
    /// Its sockets, all bound to the uplink's address and port: one per inbound worker (an `SO_REUSEPORT`
    /// group, [`crate::open_uplink_sockets`]), at least one. Inbound worker `i` receives on socket `i` of each
    /// uplink that has one; outbound workers send from any of them.
    pub sockets: Vec<UdpSocket>,
    pub stats: Arc<UplinkStats>,
    /// The egress cap, if any.
    pub cap: Option<Cap>,
}

/// An uplink's egress cap: a token bucket's rate and burst.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Cap {
    pub rate_bps: u64,
    pub burst_bytes: u64,
}

impl Cap {
    /// A cap of `rate_bps` with the default burst: 5 ms at the rate, at least 32 KiB (a few full-size packets,
    /// so the bucket never starves a single TCP flow at low rates).
    pub fn with_default_burst(rate_bps: u64) -> Cap {
        Cap {
            rate_bps,
            burst_bytes: (rate_bps / 8 / 200).max(32 * 1024),
        }
    }
}

/// One tunnel: its SAs to one remote endpoint over one uplink.
pub struct TunnelIo {
    pub name: String,
    /// Index into the uplinks.
    pub uplink: usize,
    pub remote: SocketAddr,
    /// The SA packets are sealed with; `None` (an IKE tunnel before its first child SA) drops them as `no_sa`
    /// until [`SaControl::set_outbound`].
    pub outbound: Option<OutboundSa>,
    /// The SAs packets are accepted on (usually one; none before IKE's first child SA). Their SPIs must be
    /// unique across all tunnels.
    pub inbound: Vec<InboundSa>,
    /// Inner source prefixes accepted from this tunnel.
    pub allowed_sources: Vec<Prefix>,
    /// The largest inner packet that fits the uplink's MTU once sealed.
    pub max_inner: usize,
    /// Source of ICMP errors about this tunnel: the peer's inside address, one per family. It must not be a
    /// local address of the gateway (Linux drops such packets as martians).
    pub icmp_source_v4: Option<Ipv4Addr>,
    pub icmp_source_v6: Option<Ipv6Addr>,
    pub stats: Arc<TunnelStats>,
}

/// Which tunnels may carry traffic, as the control plane's liveness detection (BFD, dead-peer detection,
/// inbound silence) sees them. All tunnels start live. A dead tunnel is skipped in every next-hop group at once,
/// without a FIB rebuild: its flows move to the group's live members (only its own flows move, as when a member
/// leaves the group), and a group whose active members are all dead falls back to its live backups. A group with
/// no live member at all keeps using its active members: that is what keeps the peer's inside address (a
/// connected route, one member) reachable, so BGP and BFD can see the tunnel come back, and a wrong verdict
/// never blackholes a route that has nowhere else to go.
#[derive(Clone)]
pub struct Liveness {
    live: Arc<[AtomicBool]>,
    /// Counts the verdicts that changed (what the outbound workers' route cache stamps its entries with).
    generation: Arc<AtomicU64>,
}

impl Liveness {
    pub fn new(tunnels: usize) -> Liveness {
        Liveness {
            live: (0..tunnels).map(|_| AtomicBool::new(true)).collect(),
            generation: Arc::default(),
        }
    }

    /// Marks `tunnel` live or dead; unknown tunnels are ignored.
    pub fn set(&self, tunnel: usize, live: bool) {
        if let Some(f) = self.live.get(tunnel) {
            if f.swap(live, Ordering::Relaxed) != live {
                // Released after the verdict: whoever sees the new generation sees the new verdict.
                self.generation.fetch_add(1, Ordering::Release);
            }
        }
    }

    #[inline]
    pub fn is_live(&self, tunnel: u32) -> bool {
        self.live
            .get(tunnel as usize)
            .is_some_and(|f| f.load(Ordering::Relaxed))
    }

    /// How many verdicts have changed so far: while it is the same, every group's [`members`](Self::members)
    /// are the same.
    #[inline]
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The members of `group` that carry traffic now: its active members that are live, else its live backups,
    /// else (nothing live) its active members. Copies into `buf` (at most its length) only when some member is
    /// dead.
    pub fn members<'a>(
        &self,
        group: &'a NextHopGroup,
        buf: &'a mut [Member; MAX_LIVE],
    ) -> &'a [Member] {
        let active = group.active();
        if active.iter().all(|m| self.is_live(m.tunnel)) {
            return active;
        }
        let mut n = 0;
        for backups in [false, true] {
            for m in group.members().iter().filter(|m| m.backup == backups) {
                if n < buf.len() && self.is_live(m.tunnel) {
                    buf[n] = *m;
                    n += 1;
                }
            }
            if n > 0 {
                return &buf[..n];
            }
        }
        active
    }
}

/// The most members [`Liveness::members`] returns when it has to filter.
pub const MAX_LIVE: usize = 16;

pub(crate) const NO_MEMBER: Member = Member {
    tunnel: 0,
    weight: 0,
    backup: false,
};

/// An IKE message received behind the non-ESP marker, for the control plane.
#[derive(Debug)]
pub struct IkeDatagram {
    pub uplink: usize,
    pub from: SocketAddr,
    pub message: Vec<u8>,
}

/// Everything the data path needs to start.
pub struct DataplaneSpec {
    /// The TUN device's queues, one per outbound worker (a multi-queue device, [`crate::Tun::create`]), at
    /// least one. The kernel hashes each flow to one queue, so one worker sees a flow's packets, in order.
    pub tun: Vec<File>,
    pub uplinks: Vec<UplinkIo>,
    pub tunnels: Vec<TunnelIo>,
    /// The forwarding table the control plane publishes; members are indexes into `tunnels`.
    pub fib: Arc<FibCell>,
    pub tun_stats: Arc<TunStats>,
    /// Where IKE messages go; `None` counts and discards them (no IKE configured).
    pub ike: Option<crossbeam_channel::Sender<IkeDatagram>>,
    /// Spread packets rather than flows over a group's members (reorders packets within a flow).
    pub spray: bool,
    /// The flow-hash key; random per gateway.
    pub flow_seed: u64,
    /// Which tunnels are live (one flag per tunnel).
    pub liveness: Liveness,
}

/// A running data path. Dropping it stops the threads.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    workers: Arc<[WorkerStats]>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
    epoch: Instant,
    control: SaControl,
    ike: IkeSender,
}

impl Dataplane {
    /// Starts the outbound and inbound threads.
    ///
    /// # Errors
    /// The poll and thread set-up errors, and `InvalidInput` if two inbound SAs share an SPI or one has a
    /// reserved SPI.
    pub fn start(spec: DataplaneSpec) -> io::Result<Dataplane> {
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        if spec.tun.is_empty() || spec.uplinks.iter().any(|u| u.sockets.is_empty()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the data path needs a TUN queue and a socket per uplink",
            ));
        }
        // The offloads are the device's, whichever queue sets them.
        enable_offloads(&spec.tun[0]);
        let tuns: Vec<Arc<File>> = spec.tun.into_iter().map(Arc::new).collect();
        let mut sockets = Vec::new();
        let mut uplink_stats = Vec::new();
        let mut caps = Vec::new();
        for u in spec.uplinks {
            sockets.push(u.sockets);
            uplink_stats.push(u.stats);
            caps.push(
                u.cap
                    .map(|c| Arc::new(TokenBucket::new(c.rate_bps, c.burst_bytes, epoch))),
            );
        }
        let sockets = Arc::new(sockets);
        let gso: Arc<[UplinkGso]> = sockets.iter().map(|_| UplinkGso::default()).collect();
        let tx_workers = tuns.len();
        let rx_workers = sockets.iter().map(Vec::len).max().unwrap_or(1);
        let workers: Arc<[WorkerStats]> = (0..tx_workers.max(rx_workers))
            .map(|_| WorkerStats::default())
            .collect();

        let board = Arc::new(Board::new(spec.tunnels.iter().map(|t| t.remote)));
        let mut outbound = Vec::with_capacity(spec.tunnels.len());
        let mut inbound = Vec::with_capacity(spec.tunnels.len());
        let mut sas = InboundSas::default();
        for (i, mut t) in spec.tunnels.into_iter().enumerate() {
            for sa in std::mem::take(&mut t.inbound) {
                inbound::install(&mut sas, i, &t.name, sa)?;
            }
            board.set_inbound(i, sas.counters(i));
            let sa = t.outbound.take().map(|sa| Arc::new(OutboundEntry::new(sa)));
            board.set_outbound(i, sa.as_ref().map(|e| e.counters.clone()));
            outbound.push(OutTunnel::new(&t, sa));
            inbound.push(InTunnel::new(i, &t));
        }

        let mut tx_polls = Vec::new();
        let mut tx_wakers = Vec::new();
        for tun in &tuns {
            let poll = Poll::new()?;
            tx_wakers.push(Arc::new(Waker::new(poll.registry(), WAKE)?));
            poll.registry()
                .register(&mut SourceFd(&tun.as_raw_fd()), TUN, Interest::READABLE)?;
            tx_polls.push(poll);
        }
        let mut rx_polls = Vec::new();
        let mut rx_wakers = Vec::new();
        for w in 0..rx_workers {
            let poll = Poll::new()?;
            rx_wakers.push(Arc::new(Waker::new(poll.registry(), WAKE)?));
            for (u, group) in sockets.iter().enumerate() {
                if let Some(s) = group.get(w) {
                    poll.registry().register(
                        &mut SourceFd(&s.as_raw_fd()),
                        Token(u),
                        Interest::READABLE,
                    )?;
                }
            }
            rx_polls.push(poll);
        }
        let (control, queues) = SaControl::new(board.clone(), tx_wakers.clone(), rx_wakers.clone());
        let ike = IkeSender {
            sockets: sockets.clone(),
            stats: uplink_stats.clone().into(),
        };

        let shared = outbound::Shared {
            tunnels: outbound,
            uplink_stats: uplink_stats.clone(),
            caps,
            gso,
            fib: spec.fib.clone(),
            liveness: spec.liveness.clone(),
            tun_stats: spec.tun_stats.clone(),
            worker_stats: workers.clone(),
            spray: spec.spray,
            flow_seed: spec.flow_seed,
            epoch,
        };
        let mut threads = Vec::new();
        for (w, (poll, commands)) in tx_polls.into_iter().zip(queues.tx).enumerate() {
            let tx = Outbound {
                poll,
                stop: stop.clone(),
                tun: tuns[w].clone(),
                commands,
                board: board.clone(),
                path: OutboundPath::new(w, &shared),
                wire: Sockets::new(sockets.clone(), w, Some(tuns[w].clone())),
                last_warn: None,
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("braid-tx{w}"))
                    .spawn(move || tx.run())?,
            );
        }
        let rx_shared = inbound::Shared {
            queues: tuns.len(),
            tunnels: inbound,
            uplink_stats: uplink_stats.clone(),
            sas,
            fib: spec.fib.clone(),
            ike: spec.ike.clone(),
            tun_stats: spec.tun_stats.clone(),
            worker_stats: workers.clone(),
            epoch,
        };
        for (w, (poll, commands)) in rx_polls.into_iter().zip(queues.rx).enumerate() {
            let rx = Inbound {
                poll,
                stop: stop.clone(),
                tuns: TunQueues(tuns.clone().into()),
                sockets: sockets.clone(),
                worker: w,
                commands,
                board: board.clone(),
                last_warn: None,
                batch: RecvBatch::new(RX_BATCH, RX_SLOT),
                path: InboundPath::new(w, &rx_shared),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("braid-rx{w}"))
                    .spawn(move || rx.run())?,
            );
        }
        tracing::info!(
            outbound = tx_workers,
            inbound = rx_workers,
            "data path workers started"
        );
        let mut wakers = tx_wakers;
        wakers.extend(rx_wakers);
        Ok(Dataplane {
            stop,
            workers,
            wakers,
            threads,
            epoch,
            control,
            ike,
        })
    }

    /// The handle that installs, replaces and removes SAs while traffic flows (cheap to clone).
    pub fn sa_control(&self) -> SaControl {
        self.control.clone()
    }

    /// The handle that sends IKE messages from the uplink sockets (cheap to clone).
    pub fn ike_sender(&self) -> IkeSender {
        self.ike.clone()
    }

    /// Each worker's counters (worker `i`: outbound thread `i` and inbound thread `i`).
    pub fn worker_stats(&self) -> Arc<[WorkerStats]> {
        self.workers.clone()
    }

    /// When the data path started; `TunnelStats::last_rx_ms` counts from here.
    pub fn epoch(&self) -> Instant {
        self.epoch
    }

    /// Stops both threads and waits for them.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.wake();
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Dataplane {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Sends IKE messages (and NAT keepalives) for the control plane from the uplink sockets, so they leave from
/// the address and port that carry the ESP traffic (port 4500: RFC 7296 2.23, RFC 3948). Cheap to clone; sends
/// from the calling thread, on the same sockets the data path uses (a datagram send is atomic, no lock).
#[derive(Clone)]
pub struct IkeSender {
    sockets: Arc<Vec<Vec<UdpSocket>>>,
    stats: Arc<[Arc<UplinkStats>]>,
}

impl IkeSender {
    /// Sends one IKE `message` (header onwards) to `to` from uplink `uplink`, behind the non-ESP marker (RFC
    /// 3948 2.2). Allocates (a control-plane path). Waits briefly (20 ms at most) if the socket buffer is full.
    ///
    /// # Errors
    /// `InvalidInput` for an unknown uplink; the socket's error otherwise.
    pub fn send(&self, uplink: usize, to: SocketAddr, message: &[u8]) -> io::Result<()> {
        let mut datagram = Vec::with_capacity(NON_ESP_MARKER.len() + message.len());
        datagram.extend_from_slice(&NON_ESP_MARKER);
        datagram.extend_from_slice(message);
        self.send_raw(uplink, to, &datagram)?;
        add(&self.stats[uplink].ike_sent, 1);
        Ok(())
    }

    /// Sends a NAT keepalive (RFC 3948 2.3: one 0xFF octet) to `to` from uplink `uplink`.
    ///
    /// # Errors
    /// As [`send`](Self::send).
    pub fn send_keepalive(&self, uplink: usize, to: SocketAddr) -> io::Result<()> {
        self.send_raw(uplink, to, &NAT_KEEPALIVE)
    }

    /// The local address and port of uplink `uplink`'s socket.
    ///
    /// # Errors
    /// `InvalidInput` for an unknown uplink; the socket's error otherwise.
    pub fn local_addr(&self, uplink: usize) -> io::Result<SocketAddr> {
        self.socket(uplink)?.local_addr()
    }

    fn socket(&self, uplink: usize) -> io::Result<&UdpSocket> {
        self.sockets
            .get(uplink)
            .and_then(|g| g.first())
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("no uplink {uplink}"))
            })
    }

    fn send_raw(&self, uplink: usize, to: SocketAddr, datagram: &[u8]) -> io::Result<()> {
        // Worker 0's socket of the uplink, the one `socket` names (the same error for an unknown uplink); a full
        // buffer is waited for briefly.
        let mut wire = Sockets::new(self.sockets.clone(), 0, None);
        outbound::send_one(&mut wire, uplink, datagram, to)
    }
}

/// Logs a warning at most once per [`WARN_EVERY`].
pub(crate) fn warn_limited(last: &mut Option<Instant>, f: impl FnOnce()) {
    let now = Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
        *last = Some(now);
        f();
    }
}

/// An outbound worker: its TUN queue and its wake-ups; the per-read work is its [`OutboundPath`].
struct Outbound {
    poll: Poll,
    stop: Arc<AtomicBool>,
    /// This worker's TUN queue.
    tun: Arc<File>,
    commands: Receiver<TxCommand>,
    board: Arc<Board>,
    path: OutboundPath,
    /// The sockets this worker sends from, and its TUN queue for ICMP errors.
    wire: Sockets,
    last_warn: Option<Instant>,
}

impl Outbound {
    fn run(mut self) {
        let mut events = Events::with_capacity(8);
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = self
                .path
                .next_due()
                .map(|due| due.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "outbound poll failed; data path stopping");
                return;
            }
            self.path.tick();
            self.apply_commands();
            self.path.release_holds(&mut self.wire);
            self.path.release_due(Instant::now(), &mut self.wire);
            // Edge-triggered: drain the device until it would block, sealing into the batch, which goes out
            // whenever it is full and once the device is drained.
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                // Under load there is no wake-up between packets: look for SA changes before each one (after
                // sending what the current SAs sealed).
                if !self.commands.is_empty() {
                    self.path.flush(&mut self.wire);
                    self.apply_commands();
                    self.path.release_holds(&mut self.wire);
                }
                // One copy: the kernel's, straight into the batch's next slot (a larger read's rest into the
                // spill buffer).
                let (slot, spill) = self.path.read_areas(&mut self.wire);
                let mut areas = [IoSliceMut::new(slot), IoSliceMut::new(spill)];
                let n = match (&*self.tun).read_vectored(&mut areas) {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        warn_limited(
                            &mut self.last_warn,
                            || tracing::warn!(error = %e, "TUN read failed"),
                        );
                        break;
                    }
                };
                self.path.read_placed(n, &mut self.wire);
            }
            self.path.flush(&mut self.wire);
        }
    }

    /// Applies the control plane's SA and remote changes waiting in the queue.
    fn apply_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            self.path.apply(&self.board, command);
        }
    }
}

/// Turns on the TUN offloads the outbound thread handles ([`crate::gso`]): TSO for IPv4 and IPv6 (with ECN),
/// partial checksums, and USO where the kernel has it (6.2+; refused with `EINVAL` before). A device that takes
/// none (or a file that is not a TUN device) still works: its reads are finished packets.
fn enable_offloads(tun: &File) {
    let tso = sys::TUN_F_CSUM | sys::TUN_F_TSO4 | sys::TUN_F_TSO6 | sys::TUN_F_TSO_ECN;
    let uso = sys::TUN_F_USO4 | sys::TUN_F_USO6;
    match sys::tun_set_offload(tun, tso | uso) {
        Ok(()) => tracing::info!("TUN offloads on: checksum, TSO4/6 with ECN, USO4/6"),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => match sys::tun_set_offload(tun, tso) {
            Ok(()) => tracing::info!("TUN offloads on: checksum, TSO4/6 with ECN (no USO here)"),
            Err(e) => tracing::info!(error = %e, "TUN offloads refused; reading finished packets"),
        },
        Err(e) => tracing::info!(error = %e, "TUN offloads refused; reading finished packets"),
    }
}

/// Messages one `recvmmsg` takes from an uplink socket.
pub(crate) const RX_BATCH: usize = 32;
/// Octets of one receive slot: a UDP GRO message carries up to 64 KiB of datagrams.
const RX_SLOT: usize = 1 << 16;
/// An inbound worker: its sockets and its wake-ups; the per-batch work is its [`InboundPath`].
struct Inbound {
    poll: Poll,
    stop: Arc<AtomicBool>,
    /// Every TUN queue: a flow's packets are written to queue [`queue_hash`](crate::flow::queue_hash) mod
    /// queues, so that the kernel steers the flow's other direction to the outbound worker reading that queue.
    tuns: TunQueues,
    /// Per uplink, its sockets; this worker receives on socket `worker` of each uplink that has one.
    sockets: Arc<Vec<Vec<UdpSocket>>>,
    worker: usize,
    commands: Receiver<RxCommand>,
    board: Arc<Board>,
    last_warn: Option<Instant>,
    /// The receive buffers, allocated once: ESP is opened in place in them and written to the TUN from there.
    batch: RecvBatch,
    path: InboundPath,
}

impl Inbound {
    fn run(mut self) {
        let mut events = Events::with_capacity(16);
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "inbound poll failed; data path stopping");
                return;
            }
            self.apply_commands();
            for ev in events.iter() {
                if ev.token() == WAKE {
                    continue;
                }
                let u = ev.token().0;
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    // Under load there is no wake-up between batches: look for SA changes before each one.
                    if !self.commands.is_empty() {
                        self.apply_commands();
                    }
                    let Some(socket) = self.sockets[u].get(self.worker) else {
                        break;
                    };
                    match self.batch.recv(socket.as_raw_fd()) {
                        Ok(n) => self.path.receive(u, &mut self.batch, n, &mut self.tuns),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            // E.g. ECONNREFUSED from an ICMP port unreachable: not fatal for a UDP socket.
                            warn_limited(
                                &mut self.last_warn,
                                || tracing::debug!(error = %e, "uplink receive error"),
                            );
                            continue;
                        }
                    }
                }
            }
        }
    }

    /// Applies the control plane's SA changes waiting in the queue.
    fn apply_commands(&mut self) {
        while let Ok(command) = self.commands.try_recv() {
            self.path.apply(&self.board, command);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_tunnels_leave_groups_and_backups_take_over() {
        let m = |tunnel, backup| Member {
            tunnel,
            weight: 1,
            backup,
        };
        let group =
            NextHopGroup::new(vec![m(0, false), m(1, false), m(2, true), m(3, true)]).unwrap();
        let live = Liveness::new(4);
        let tunnels = |ms: &[Member]| ms.iter().map(|m| m.tunnel).collect::<Vec<_>>();
        let mut buf = [NO_MEMBER; MAX_LIVE];
        assert_eq!(tunnels(live.members(&group, &mut buf)), vec![0, 1]);
        live.set(1, false);
        assert_eq!(tunnels(live.members(&group, &mut buf)), vec![0]);
        live.set(0, false);
        assert_eq!(
            tunnels(live.members(&group, &mut buf)),
            vec![2, 3],
            "backups take over"
        );
        live.set(3, false);
        assert_eq!(tunnels(live.members(&group, &mut buf)), vec![2]);
        live.set(2, false);
        assert_eq!(
            tunnels(live.members(&group, &mut buf)),
            vec![0, 1],
            "nothing live: the active members, so probes still reach the peers"
        );
        live.set(1, true);
        assert_eq!(
            tunnels(live.members(&group, &mut buf)),
            vec![1],
            "primaries come back first"
        );
        live.set(99, false); // unknown: ignored
        assert!(!live.is_live(99));
    }
}
