//! Child SAs replaced at run time: the control plane's handle on the data path's SAs.
//!
//! IKEv2 (RFC 7296) creates child SAs, rekeys them (section 2.8) and deletes them (section 1.4.1) while traffic
//! flows. The data path's workers share every SA (see [`crate::engine`]): outbound SAs seal through `&self` with
//! an atomic sequence number, inbound SAs (with their replay windows) are shared entries each worker locks once
//! per run of datagrams with that SPI. Each worker keeps its own table of them. The control plane changes them
//! through a [`SaControl`]: each call wraps the SA in a shared entry, sends a command with it over a channel to
//! every worker of its direction and wakes them. A worker applies its commands at every wake-up and, under
//! load, before its next packet whenever its queue is not empty, so a command takes effect after at most one
//! packet. Every call returns a [`Pending`] that resolves once every worker has applied the command, so IKE can
//! know that a new inbound SA is in place *before* it sends the CREATE_CHILD_SA response that makes the peer
//! use it.
//!
//! A rekey without loss, make-before-break (RFC 7296 2.8): the responder installs its new inbound SA, then
//! answers; the initiator installs its new inbound SA and switches its outbound SA to the new one; the responder
//! switches its outbound SA; each side removes the old inbound SA after a grace period, so packets still in
//! flight on the old SA arrive. Several inbound SAs of one tunnel may therefore be live at once; an SPI names
//! one SA across all tunnels (it is what the inbound thread looks packets up by).
//!
//! A tunnel may have no SA at all (an IKE tunnel before its first child SA, or after its IKE SA died): packets
//! routed to it are dropped and counted as [`DropReason::NoSa`](crate::DropReason::NoSa).
//!
//! Visibility: per tunnel, the installed SPIs and per SA the packets, inner octets and sequence number (outbound:
//! the last one sent; inbound: the highest authenticated), which the owning thread stores (relaxed) after every
//! packet it seals or opens, and [`SaControl::sas`] lists. They are what SA lifetimes (RFC 7296 2.8: by octets
//! or packets) and `braid show tunnels` need.
//!
//! Left out, on purpose: lifetimes and the decision to rekey (the IKE driver's, from these counters), traffic
//! selectors (a tunnel carries what its FIB routes), and following a NAT'ed peer's new address by itself (RFC
//! 7296 2.23: the IKE driver, which sees authenticated messages, decides and calls [`SaControl::set_remote`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::{ArcSwap, ArcSwapOption};
use braid_crypto::{InboundSa, OutboundSa, Spi};
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

/// Why an SA change was refused, or could not be confirmed.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SaError {
    /// No tunnel has this index.
    UnknownTunnel(usize),
    /// SPIs 0..=255 never appear on the wire (RFC 4303 2.1): an inbound SA with one could never receive.
    ReservedSpi(Spi),
    /// An inbound SA with this SPI is already installed (on `tunnel`); SPIs must be unique on a gateway.
    SpiInUse { spi: Spi, tunnel: usize },
    /// The tunnel has no inbound SA with this SPI.
    NoSuchSa(Spi),
    /// The data path has stopped: the command was not applied.
    Stopped,
    /// [`Pending::wait_timeout`] gave up waiting; the command may still be applied later.
    Timeout,
}

impl std::fmt::Display for SaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SaError::UnknownTunnel(t) => write!(f, "no tunnel {t}"),
            SaError::ReservedSpi(spi) => write!(f, "SPI {spi} is reserved"),
            SaError::SpiInUse { spi, tunnel } => {
                write!(
                    f,
                    "SPI {spi} is already used by an inbound SA of tunnel {tunnel}"
                )
            }
            SaError::NoSuchSa(spi) => write!(f, "no inbound SA with SPI {spi} on this tunnel"),
            SaError::Stopped => f.write_str("the data path has stopped"),
            SaError::Timeout => f.write_str("timed out waiting for the data path"),
        }
    }
}

impl std::error::Error for SaError {}

/// The outcome of a command, sent back by the thread that applied it.
pub(crate) type Ack = Sender<Result<(), SaError>>;

/// Commands for the outbound thread.
pub(crate) enum TxCommand {
    /// Seal with this SA from now on; every outbound worker gets the same SA. `None`: no SA, and the
    /// tunnel's packets are held for up to `hold` (in order, bounded) for the next SA, then dropped as
    /// `no_sa`; a zero `hold` drops them at once (and what was held).
    SetOutbound {
        tunnel: usize,
        sa: Option<Arc<OutboundEntry>>,
        hold: Duration,
        done: Ack,
    },
    /// Send to this address from now on.
    SetRemote {
        tunnel: usize,
        remote: SocketAddr,
        done: Ack,
    },
}

/// Commands for the inbound thread.
pub(crate) enum RxCommand {
    /// Every inbound worker gets the same entry.
    Install {
        entry: Arc<InboundEntry>,
        done: Ack,
    },
    Remove {
        tunnel: usize,
        spi: Spi,
        done: Ack,
    },
    Clear {
        tunnel: usize,
        done: Ack,
    },
}

/// One SA's counters, stored by the thread that owns the SA and read by the control plane.
pub(crate) struct SaCounters {
    spi: Spi,
    packets: AtomicU64,
    bytes: AtomicU64,
    seq: AtomicU64,
}

impl SaCounters {
    fn new(spi: Spi) -> Arc<SaCounters> {
        Arc::new(SaCounters {
            spi,
            packets: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            seq: AtomicU64::new(0),
        })
    }

    /// Copies an outbound SA's own counters (after a seal).
    #[inline]
    pub(crate) fn publish_outbound(&self, sa: &OutboundSa) {
        self.packets.store(sa.packets(), Relaxed);
        self.bytes.store(sa.bytes(), Relaxed);
        self.seq.store(sa.last_seq(), Relaxed);
    }

    /// Copies an inbound SA's own counters (after an open).
    #[inline]
    pub(crate) fn publish_inbound(&self, sa: &InboundSa) {
        self.packets.store(sa.packets(), Relaxed);
        self.bytes.store(sa.bytes(), Relaxed);
        self.seq.store(sa.highest_seq(), Relaxed);
    }

    fn info(&self) -> SaInfo {
        SaInfo {
            spi: self.spi,
            packets: self.packets.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            seq: self.seq.load(Relaxed),
        }
    }
}

/// One SA as [`SaControl::sas`] shows it.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SaInfo {
    pub spi: Spi,
    /// Packets sealed (outbound) or opened (inbound) with this SA.
    pub packets: u64,
    /// Inner-packet octets sealed or opened.
    pub bytes: u64,
    /// Outbound: the last sequence number used (0 before the first packet). Inbound: the highest authenticated.
    pub seq: u64,
}

/// A tunnel's SAs and peer address as the data path uses them now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TunnelSas {
    /// The SA every packet is sealed with; `None` drops them (`no_sa`).
    pub outbound: Option<SaInfo>,
    /// The inbound SAs, oldest first.
    pub inbound: Vec<SaInfo>,
    /// Where the outbound thread sends this tunnel's packets.
    pub remote: SocketAddr,
}

/// What the owning threads publish for the control plane, per tunnel. Written only when a command is applied.
pub(crate) struct Board {
    tunnels: Box<[TunnelBoard]>,
}

struct TunnelBoard {
    outbound: ArcSwapOption<SaCounters>,
    inbound: ArcSwap<Vec<Arc<SaCounters>>>,
    remote: ArcSwap<SocketAddr>,
}

impl Board {
    /// A board for tunnels sending to `remotes`, with no SAs yet.
    pub(crate) fn new(remotes: impl IntoIterator<Item = SocketAddr>) -> Board {
        Board {
            tunnels: remotes
                .into_iter()
                .map(|r| TunnelBoard {
                    outbound: ArcSwapOption::empty(),
                    inbound: ArcSwap::from_pointee(Vec::new()),
                    remote: ArcSwap::from_pointee(r),
                })
                .collect(),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.tunnels.len()
    }

    pub(crate) fn set_outbound(&self, tunnel: usize, counters: Option<Arc<SaCounters>>) {
        if let Some(t) = self.tunnels.get(tunnel) {
            t.outbound.store(counters);
        }
    }

    pub(crate) fn set_inbound(&self, tunnel: usize, counters: Vec<Arc<SaCounters>>) {
        if let Some(t) = self.tunnels.get(tunnel) {
            t.inbound.store(Arc::new(counters));
        }
    }

    pub(crate) fn set_remote(&self, tunnel: usize, remote: SocketAddr) {
        if let Some(t) = self.tunnels.get(tunnel) {
            t.remote.store(Arc::new(remote));
        }
    }

    pub(crate) fn snapshot(&self, tunnel: usize) -> Option<TunnelSas> {
        let t = self.tunnels.get(tunnel)?;
        Some(TunnelSas {
            outbound: t.outbound.load().as_ref().map(|c| c.info()),
            inbound: t.inbound.load().iter().map(|c| c.info()).collect(),
            remote: **t.remote.load(),
        })
    }
}

/// The outbound SA of a tunnel with its published counters, shared by the outbound workers (the SA's
/// sequence number is atomic: see [`OutboundSa`]).
pub(crate) struct OutboundEntry {
    pub(crate) sa: OutboundSa,
    pub(crate) counters: Arc<SaCounters>,
}

impl OutboundEntry {
    pub(crate) fn new(sa: OutboundSa) -> OutboundEntry {
        let counters = SaCounters::new(sa.spi());
        counters.publish_outbound(&sa);
        OutboundEntry { sa, counters }
    }
}

/// An inbound SA with the tunnel it belongs to and its published counters, shared by the inbound workers.
///
/// The SA (its replay window) sits behind a mutex. A worker locks it once per run of consecutive datagrams
/// with its SPI (a UDP GRO message is one sender's run), not per packet, and the lock is uncontended in
/// practice: the uplink sockets' `SO_REUSEPORT` group hashes a peer's 4-tuple to one worker, so one SA's
/// datagrams all reach the same worker unless the peer's address or port changes.
pub(crate) struct InboundEntry {
    pub(crate) tunnel: usize,
    sa: Mutex<InboundSa>,
    pub(crate) counters: Arc<SaCounters>,
    spi: Spi,
    /// Install order, for listing oldest first.
    serial: u64,
}

/// Install order across the process (every worker's table sees the same serials).
static SERIAL: AtomicU64 = AtomicU64::new(1);

impl InboundEntry {
    pub(crate) fn new(tunnel: usize, sa: InboundSa) -> Arc<InboundEntry> {
        let spi = sa.spi();
        let counters = SaCounters::new(spi);
        counters.publish_inbound(&sa);
        Arc::new(InboundEntry {
            tunnel,
            sa: Mutex::new(sa),
            counters,
            spi,
            serial: SERIAL.fetch_add(1, Relaxed),
        })
    }

    /// The SA, locked (a poisoned lock is taken over: the SA's state is a replay window and counters, which a
    /// panic cannot leave half-written in a way that matters more than losing the tunnel).
    #[inline]
    pub(crate) fn lock(&self) -> MutexGuard<'_, InboundSa> {
        self.sa.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Every tunnel's inbound SAs by SPI: one inbound worker's view of the SA table (each worker has its own map
/// of the same shared entries). One lookup per packet finds both the SA and its tunnel.
#[derive(Default, Clone)]
pub(crate) struct InboundSas {
    by_spi: HashMap<u32, Arc<InboundEntry>>,
}

impl InboundSas {
    /// Adds `sa` to `tunnel`. Refuses a reserved SPI and an SPI that is already installed (on any tunnel).
    pub(crate) fn install(&mut self, tunnel: usize, sa: InboundSa) -> Result<(), SaError> {
        self.insert(InboundEntry::new(tunnel, sa))
    }

    /// Adds a shared entry (the same one goes to every worker).
    pub(crate) fn insert(&mut self, entry: Arc<InboundEntry>) -> Result<(), SaError> {
        let spi = entry.spi;
        if spi.is_reserved() {
            return Err(SaError::ReservedSpi(spi));
        }
        if let Some(e) = self.by_spi.get(&spi.0) {
            return Err(SaError::SpiInUse {
                spi,
                tunnel: e.tunnel,
            });
        }
        self.by_spi.insert(spi.0, entry);
        Ok(())
    }

    /// The SA for an ESP packet's SPI.
    #[inline]
    pub(crate) fn get(&self, spi: Spi) -> Option<&Arc<InboundEntry>> {
        self.by_spi.get(&spi.0)
    }

    /// Removes `tunnel`'s SA with `spi` (another tunnel's SA with that SPI is left alone).
    pub(crate) fn remove(&mut self, tunnel: usize, spi: Spi) -> Result<Arc<InboundEntry>, SaError> {
        match self.by_spi.get(&spi.0) {
            Some(e) if e.tunnel == tunnel => {}
            _ => return Err(SaError::NoSuchSa(spi)),
        }
        self.by_spi.remove(&spi.0).ok_or(SaError::NoSuchSa(spi))
    }

    /// Removes every SA of `tunnel`; returns how many there were.
    pub(crate) fn clear(&mut self, tunnel: usize) -> usize {
        let before = self.by_spi.len();
        self.by_spi.retain(|_, e| e.tunnel != tunnel);
        before - self.by_spi.len()
    }

    /// `tunnel`'s SAs' counters, oldest first.
    pub(crate) fn counters(&self, tunnel: usize) -> Vec<Arc<SaCounters>> {
        let mut v: Vec<&Arc<InboundEntry>> = self
            .by_spi
            .values()
            .filter(|e| e.tunnel == tunnel)
            .collect();
        v.sort_by_key(|e| e.serial);
        v.into_iter().map(|e| e.counters.clone()).collect()
    }

    /// Applies one command from the control plane and answers it.
    pub(crate) fn apply(&mut self, board: &Board, command: RxCommand) {
        let (tunnel, result, done) = match command {
            RxCommand::Install { entry, done } => (entry.tunnel, self.insert(entry), done),
            RxCommand::Remove { tunnel, spi, done } => {
                (tunnel, self.remove(tunnel, spi).map(drop), done)
            }
            RxCommand::Clear { tunnel, done } => {
                self.clear(tunnel);
                (tunnel, Ok(()), done)
            }
        };
        if result.is_ok() {
            board.set_inbound(tunnel, self.counters(tunnel));
        }
        // The caller may have stopped waiting: that is fine.
        let _ = done.send(result);
    }
}

/// The control plane's handle on the data path's SAs: cheap to clone, usable from any thread. Every call
/// returns at once with a [`Pending`] that resolves when the owning thread has applied the change.
///
/// Tunnels are named by their index in [`DataplaneSpec::tunnels`](crate::DataplaneSpec::tunnels).
#[derive(Clone)]
pub struct SaControl {
    shared: Arc<Shared>,
}

struct Shared {
    /// One queue and waker per outbound worker, and per inbound worker.
    tx: Vec<(Sender<TxCommand>, Arc<Waker>)>,
    rx: Vec<(Sender<RxCommand>, Arc<Waker>)>,
    board: Arc<Board>,
}

/// The receiving ends of a [`SaControl`]'s commands, one per data-path worker.
pub(crate) struct CommandQueues {
    pub(crate) tx: Vec<Receiver<TxCommand>>,
    pub(crate) rx: Vec<Receiver<RxCommand>>,
}

/// One command channel per worker: the control's ends (with the worker's waker) and the workers' ends.
type Channels<C> = (Vec<(Sender<C>, Arc<Waker>)>, Vec<Receiver<C>>);

fn channels<C>(wakers: Vec<Arc<Waker>>) -> Channels<C> {
    wakers
        .into_iter()
        .map(|w| {
            let (s, r) = crossbeam_channel::unbounded();
            ((s, w), r)
        })
        .unzip()
}

impl SaControl {
    /// A control for outbound workers woken by `tx_wakers` and inbound workers woken by `rx_wakers` (one
    /// each); every command goes to every worker of its direction.
    pub(crate) fn new(
        board: Arc<Board>,
        tx_wakers: Vec<Arc<Waker>>,
        rx_wakers: Vec<Arc<Waker>>,
    ) -> (SaControl, CommandQueues) {
        let (tx, tx_queues) = channels(tx_wakers);
        let (rx, rx_queues) = channels(rx_wakers);
        let control = SaControl {
            shared: Arc::new(Shared { tx, rx, board }),
        };
        (
            control,
            CommandQueues {
                tx: tx_queues,
                rx: rx_queues,
            },
        )
    }

    /// How many tunnels the data path has.
    pub fn tunnels(&self) -> usize {
        self.shared.board.len()
    }

    fn check(&self, tunnel: usize) -> Result<(), SaError> {
        if tunnel < self.tunnels() {
            Ok(())
        } else {
            Err(SaError::UnknownTunnel(tunnel))
        }
    }

    /// Adds an inbound SA to `tunnel`, next to those it has (old and new live together during a rekey).
    /// Resolves to [`SaError::SpiInUse`] if any tunnel already has an SA with this SPI.
    pub fn install_inbound(&self, tunnel: usize, sa: InboundSa) -> Pending {
        if let Err(e) = self.check(tunnel) {
            return Pending::ready(Err(e));
        }
        if sa.spi().is_reserved() {
            return Pending::ready(Err(SaError::ReservedSpi(sa.spi())));
        }
        let entry = InboundEntry::new(tunnel, sa);
        let (done, pending) = Pending::new(self.shared.rx.len());
        self.to_rx(|| RxCommand::Install {
            entry: entry.clone(),
            done: done.clone(),
        });
        pending
    }

    /// Removes `tunnel`'s inbound SA with `spi`; packets for it count as `unknown_spi` from then on.
    pub fn remove_inbound(&self, tunnel: usize, spi: Spi) -> Pending {
        if let Err(e) = self.check(tunnel) {
            return Pending::ready(Err(e));
        }
        let (done, pending) = Pending::new(self.shared.rx.len());
        self.to_rx(|| RxCommand::Remove {
            tunnel,
            spi,
            done: done.clone(),
        });
        pending
    }

    /// Seals every packet `tunnel` sends from now on with `sa` (datagrams the uplink cap already holds were
    /// sealed with the previous SA and go out as they are).
    /// Packets held while the tunnel waited for this SA (see [`remove_outbound`](Self::remove_outbound)) are
    /// sealed with it first, in the order they were read.
    pub fn set_outbound(&self, tunnel: usize, sa: OutboundSa) -> Pending {
        self.outbound(
            tunnel,
            Some(Arc::new(OutboundEntry::new(sa))),
            Duration::ZERO,
        )
    }

    /// Stops sealing for `tunnel` (IKE deleted the child SA without a replacement; inbound SAs stay). For up
    /// to `hold`, its packets are kept, in order, and sent with the next [`set_outbound`](Self::set_outbound)
    /// (a peer that deletes a child SA before it creates the next one, as strongSwan does when a child SA
    /// expires unrekeyed, costs no packet); at most [`HOLD_PACKETS`](crate::engine::HOLD_PACKETS) packets and
    /// [`HOLD_BYTES`](crate::engine::HOLD_BYTES) per outbound worker, counted in `held_for_sa`. Past that, or
    /// after `hold` (zero: at once), they are dropped as `no_sa`.
    pub fn remove_outbound(&self, tunnel: usize, hold: Duration) -> Pending {
        self.outbound(tunnel, None, hold)
    }

    fn outbound(&self, tunnel: usize, sa: Option<Arc<OutboundEntry>>, hold: Duration) -> Pending {
        if let Err(e) = self.check(tunnel) {
            return Pending::ready(Err(e));
        }
        let (done, pending) = Pending::new(self.shared.tx.len());
        self.to_tx(|| TxCommand::SetOutbound {
            tunnel,
            sa: sa.clone(),
            hold,
            done: done.clone(),
        });
        pending
    }

    /// Removes both halves of every SA of `tunnel` (its IKE SA was deleted, or the peer is dead): its packets
    /// are dropped as `no_sa` until new SAs are installed.
    pub fn clear(&self, tunnel: usize) -> Pending {
        if let Err(e) = self.check(tunnel) {
            return Pending::ready(Err(e));
        }
        let (done, pending) = Pending::new(self.shared.tx.len() + self.shared.rx.len());
        self.to_tx(|| TxCommand::SetOutbound {
            tunnel,
            sa: None,
            hold: Duration::ZERO,
            done: done.clone(),
        });
        self.to_rx(|| RxCommand::Clear {
            tunnel,
            done: done.clone(),
        });
        pending
    }

    /// Sends `tunnel`'s packets to `remote` from now on: a NAT'ed peer's address or port changed (RFC 3948,
    /// RFC 7296 2.23: follow the source address of authenticated messages).
    pub fn set_remote(&self, tunnel: usize, remote: SocketAddr) -> Pending {
        if let Err(e) = self.check(tunnel) {
            return Pending::ready(Err(e));
        }
        let (done, pending) = Pending::new(self.shared.tx.len());
        self.to_tx(|| TxCommand::SetRemote {
            tunnel,
            remote,
            done: done.clone(),
        });
        pending
    }

    /// `tunnel`'s SAs and remote as the data path uses them now, with their counters.
    pub fn sas(&self, tunnel: usize) -> Option<TunnelSas> {
        self.shared.board.snapshot(tunnel)
    }

    // A failed send means the worker is gone: the command (and its ack) is dropped, and the Pending resolves
    // to `Stopped` once every other ack is in. A failed wake means the same.
    fn to_tx(&self, command: impl Fn() -> TxCommand) {
        for (queue, waker) in &self.shared.tx {
            if queue.send(command()).is_ok() {
                let _ = waker.wake();
            }
        }
    }

    fn to_rx(&self, command: impl Fn() -> RxCommand) {
        for (queue, waker) in &self.shared.rx {
            if queue.send(command()).is_ok() {
                let _ = waker.wake();
            }
        }
    }
}

/// A command on its way to the data path. Wait on it to know that the change is in effect; dropping it is fine
/// (the command is applied all the same).
///
/// The waits block the calling thread (for as long as the data path takes to reach its next packet, normally
/// microseconds); from async code, wait inside `spawn_blocking`.
#[must_use = "a Pending says whether the change was applied"]
pub struct Pending {
    state: PendingState,
}

enum PendingState {
    Ready(Result<(), SaError>),
    Waiting {
        answers: Receiver<Result<(), SaError>>,
        left: usize,
    },
}

impl Pending {
    fn ready(result: Result<(), SaError>) -> Pending {
        Pending {
            state: PendingState::Ready(result),
        }
    }

    /// A pending command that needs `answers` acknowledgements (one per thread it involves).
    fn new(answers: usize) -> (Ack, Pending) {
        let (done, rx) = crossbeam_channel::bounded(answers);
        (
            done,
            Pending {
                state: PendingState::Waiting {
                    answers: rx,
                    left: answers,
                },
            },
        )
    }

    /// Blocks until the command is applied; its outcome.
    pub fn wait(self) -> Result<(), SaError> {
        self.wait_until(None)
    }

    /// [`wait`](Self::wait), giving up with [`SaError::Timeout`] after `timeout`.
    pub fn wait_timeout(self, timeout: Duration) -> Result<(), SaError> {
        self.wait_until(Some(std::time::Instant::now() + timeout))
    }

    fn wait_until(self, deadline: Option<std::time::Instant>) -> Result<(), SaError> {
        let (answers, left) = match self.state {
            PendingState::Ready(r) => return r,
            PendingState::Waiting { answers, left } => (answers, left),
        };
        let mut outcome = Ok(());
        for _ in 0..left {
            let answer = match deadline {
                None => answers.recv().map_err(|_| SaError::Stopped),
                Some(d) => answers.recv_deadline(d).map_err(|e| match e {
                    crossbeam_channel::RecvTimeoutError::Timeout => SaError::Timeout,
                    crossbeam_channel::RecvTimeoutError::Disconnected => SaError::Stopped,
                }),
            };
            // The first error wins; keep collecting so every thread's answer is awaited.
            match answer {
                Ok(r) => outcome = outcome.and(r),
                Err(e) => return outcome.and(Err(e)),
            }
        }
        outcome
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use braid_crypto::{Cipher, SaKey};

    fn key(n: u8) -> SaKey {
        SaKey::new(Cipher::Aes256Gcm16, &[n; braid_crypto::KEYMAT_LEN]).unwrap()
    }

    fn inbound(spi: u32) -> InboundSa {
        InboundSa::new(Spi(spi), &key(spi as u8), false, 64)
    }

    fn spis(sas: &InboundSas, tunnel: usize) -> Vec<u32> {
        sas.counters(tunnel).iter().map(|c| c.spi.0).collect()
    }

    /// Seals a small packet with `out` and opens it with the table's SA for its SPI; the tunnel it came in on.
    fn roundtrip(out: &mut OutboundSa, sas: &mut InboundSas) -> Option<usize> {
        let mut buf = vec![0u8; 256];
        let start = braid_crypto::HEADROOM;
        buf[start] = 0x45;
        let esp = out
            .seal(&mut buf, start..start + 40, braid_crypto::NextHeader::Ipv4)
            .unwrap();
        let spi = Spi(u32::from_be_bytes(
            buf[esp.start..esp.start + 4].try_into().unwrap(),
        ));
        let e = sas.get(spi)?;
        let mut sa = e.lock();
        sa.open(&mut buf[esp]).ok()?;
        e.counters.publish_inbound(&sa);
        Some(e.tunnel)
    }

    #[test]
    fn install_lookup_two_at_once_remove_clear() {
        let mut sas = InboundSas::default();
        assert!(sas.get(Spi(0x1000)).is_none());
        sas.install(0, inbound(0x1000)).unwrap();
        sas.install(1, inbound(0x2000)).unwrap();
        assert_eq!(sas.get(Spi(0x1000)).unwrap().tunnel, 0);
        assert_eq!(sas.get(Spi(0x2000)).unwrap().tunnel, 1);

        // A rekey: old and new live together on tunnel 0, each opening its own packets.
        sas.install(0, inbound(0x1001)).unwrap();
        assert_eq!(spis(&sas, 0), vec![0x1000, 0x1001], "oldest first");
        let mut old = OutboundSa::new(Spi(0x1000), &key(0x00), false);
        let mut new = OutboundSa::new(Spi(0x1001), &key(0x01), false);
        assert_eq!(roundtrip(&mut new, &mut sas), Some(0));
        assert_eq!(
            roundtrip(&mut old, &mut sas),
            Some(0),
            "late packet on the old SA"
        );
        assert_eq!(roundtrip(&mut new, &mut sas), Some(0));
        let counted: Vec<(u32, u64, u64)> = sas
            .counters(0)
            .iter()
            .map(|c| (c.spi.0, c.info().packets, c.info().seq))
            .collect();
        assert_eq!(counted, vec![(0x1000, 1, 1), (0x1001, 2, 2)]);

        // Removing: only the tunnel's own SA, only once.
        assert_eq!(
            sas.remove(1, Spi(0x1000)).err(),
            Some(SaError::NoSuchSa(Spi(0x1000))),
            "another tunnel's SPI"
        );
        assert_eq!(sas.remove(0, Spi(0x1000)).unwrap().spi, Spi(0x1000));
        assert_eq!(
            sas.remove(0, Spi(0x1000)).err(),
            Some(SaError::NoSuchSa(Spi(0x1000)))
        );
        assert_eq!(roundtrip(&mut old, &mut sas), None, "old SA gone");
        assert_eq!(roundtrip(&mut new, &mut sas), Some(0));

        // Clear takes every SA of one tunnel and nothing else.
        sas.install(0, inbound(0x1002)).unwrap();
        assert_eq!(sas.clear(0), 2);
        assert!(spis(&sas, 0).is_empty());
        assert_eq!(spis(&sas, 1), vec![0x2000]);
        assert_eq!(sas.clear(0), 0);
        // The SPIs are free again.
        sas.install(2, inbound(0x1001)).unwrap();
        assert_eq!(sas.get(Spi(0x1001)).unwrap().tunnel, 2);
    }

    #[test]
    fn duplicate_and_reserved_spis_are_refused() {
        let mut sas = InboundSas::default();
        sas.install(3, inbound(0x5000)).unwrap();
        for tunnel in [3, 4] {
            assert_eq!(
                sas.install(tunnel, inbound(0x5000)),
                Err(SaError::SpiInUse {
                    spi: Spi(0x5000),
                    tunnel: 3
                })
            );
        }
        for spi in [0, 1, 255] {
            assert_eq!(
                sas.install(3, inbound(spi)),
                Err(SaError::ReservedSpi(Spi(spi)))
            );
        }
        assert_eq!(spis(&sas, 3), vec![0x5000]);
        assert!(spis(&sas, 4).is_empty());
    }

    #[test]
    fn control_commands_are_applied_answered_and_published() {
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let remote: SocketAddr = "127.0.0.1:4500".parse().unwrap();
        let board = Arc::new(Board::new([remote, remote]));
        let (control, queues) = SaControl::new(board.clone(), vec![waker.clone()], vec![waker]);
        let mut sas = InboundSas::default();
        let drain = |sas: &mut InboundSas| {
            while let Ok(c) = queues.rx[0].try_recv() {
                sas.apply(&board, c);
            }
        };

        // Refused at once, without a round trip.
        assert_eq!(
            control.install_inbound(2, inbound(0x7000)).wait(),
            Err(SaError::UnknownTunnel(2))
        );
        assert_eq!(
            control.install_inbound(0, inbound(7)).wait(),
            Err(SaError::ReservedSpi(Spi(7)))
        );

        // Not visible before the inbound thread applies it; answered once it has.
        let p = control.install_inbound(1, inbound(0x7000));
        assert!(control.sas(1).unwrap().inbound.is_empty());
        drain(&mut sas);
        assert_eq!(p.wait(), Ok(()));
        let shown = control.sas(1).unwrap();
        assert_eq!(shown.inbound.len(), 1);
        assert_eq!(shown.inbound[0].spi, Spi(0x7000));
        assert_eq!(shown.remote, remote);
        assert_eq!(shown.outbound, None);

        let dup = control.install_inbound(0, inbound(0x7000));
        let second = control.install_inbound(1, inbound(0x7001));
        drain(&mut sas);
        assert_eq!(
            dup.wait(),
            Err(SaError::SpiInUse {
                spi: Spi(0x7000),
                tunnel: 1
            })
        );
        assert_eq!(second.wait(), Ok(()));
        let listed: Vec<Spi> = control
            .sas(1)
            .unwrap()
            .inbound
            .iter()
            .map(|s| s.spi)
            .collect();
        assert_eq!(listed, vec![Spi(0x7000), Spi(0x7001)]);
        assert!(control.sas(0).unwrap().inbound.is_empty());

        let gone = control.remove_inbound(1, Spi(0x7000));
        let missing = control.remove_inbound(0, Spi(0x7001));
        drain(&mut sas);
        assert_eq!(gone.wait(), Ok(()));
        assert_eq!(missing.wait(), Err(SaError::NoSuchSa(Spi(0x7001))));
        let listed: Vec<Spi> = control
            .sas(1)
            .unwrap()
            .inbound
            .iter()
            .map(|s| s.spi)
            .collect();
        assert_eq!(listed, vec![Spi(0x7001)]);

        // Clear needs both threads' answers: the inbound one alone is not enough.
        let cleared = control.clear(1);
        drain(&mut sas);
        assert!(control.sas(1).unwrap().inbound.is_empty());
        let tx = queues.tx[0].try_recv().unwrap();
        let TxCommand::SetOutbound {
            tunnel: 1,
            sa: None,
            hold: Duration::ZERO,
            done,
        } = tx
        else {
            panic!("clear sends no outbound SA (and no hold) to tunnel 1");
        };
        let cleared = match cleared.state {
            PendingState::Waiting { answers, left } => {
                assert_eq!(left, 2);
                assert!(answers.try_recv().is_ok(), "inbound answered");
                assert!(answers.try_recv().is_err(), "outbound not yet");
                done.send(Ok(())).unwrap();
                Pending {
                    state: PendingState::Waiting { answers, left: 1 },
                }
            }
            PendingState::Ready(_) => panic!("clear resolved without the threads"),
        };
        assert_eq!(cleared.wait(), Ok(()));

        // A thread that is gone: waits end with Stopped, never hang.
        let p = control.set_remote(0, remote);
        drop(queues);
        assert_eq!(p.wait(), Err(SaError::Stopped));
        assert_eq!(
            control.install_inbound(0, inbound(0x7002)).wait(),
            Err(SaError::Stopped)
        );
        assert_eq!(
            control
                .set_remote(0, remote)
                .wait_timeout(Duration::from_secs(5)),
            Err(SaError::Stopped)
        );
    }

    #[test]
    fn wait_timeout_gives_up() {
        let (_done, p) = Pending::new(1);
        assert_eq!(
            p.wait_timeout(Duration::from_millis(10)),
            Err(SaError::Timeout)
        );
    }
}
