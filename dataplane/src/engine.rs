//! The forwarding engine: the two data-path threads and what they own.
//!
//! ```text
//!              +-------------------- outbound thread ("braid-tx") --------------------+
//!  TUN read -> | inspect inner -> route (LPM) -> MTU check (ICMP back) -> ESP seal -> | -> UDP send (uplink)
//!              +-----------------------------------------------------------------------+
//!              +--------------------- inbound thread ("braid-rx") ---------------------+
//!  UDP recv -> | classify (ESP / IKE / keepalive) -> SPI lookup -> anti-replay + open   | -> TUN write
//!  (uplinks)   | -> inner sanity (version, length, allowed source)                    |
//!              +-----------------------------------------------------------------------+
//! ```
//! Each thread owns its half of every SA (outbound SAs on the outbound thread, inbound SAs and their replay
//! windows on the inbound thread), so no lock is taken per packet. Both block in `epoll` (mio) with a waker for
//! shutdown, never on the tokio runtime. Counters are relaxed atomics read by the control plane.
//!
//! Left out here, on purpose: batching (`recvmmsg`/`sendmmsg`, GSO/GRO), offloads and multiple workers (the
//! fast-path work), SA replacement at run time (IKE rekeying), and the multipath scheduler.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use braid_crypto::{classify, InboundSa, NextHeader, OutboundSa, SealError, UdpPayload};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::buffer::{PacketBuf, HEADROOM, MAX_PACKET};
use crate::prefix::{Prefix, PrefixTable};
use crate::stats::{add, DropReason, TunStats, TunnelStats, UplinkStats};
use crate::wire::{self, Inner};

const WAKE: Token = Token(usize::MAX);
const TUN: Token = Token(usize::MAX - 1);
/// How long a send waits for room in a full socket buffer before the datagram is dropped.
const SEND_WAIT: Duration = Duration::from_millis(20);
/// Minimum spacing of repeated warnings from one thread (never one log line per packet).
const WARN_EVERY: Duration = Duration::from_secs(10);

/// An uplink as the data path sees it.
pub struct UplinkIo {
    pub name: String,
    pub socket: UdpSocket,
    pub stats: Arc<UplinkStats>,
}

/// One tunnel: a pair of SAs to one remote endpoint over one uplink.
pub struct TunnelIo {
    pub name: String,
    /// Index into the uplinks.
    pub uplink: usize,
    pub remote: SocketAddr,
    pub outbound: OutboundSa,
    pub inbound: InboundSa,
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

/// An IKE message received behind the non-ESP marker, for the control plane.
#[derive(Debug)]
pub struct IkeDatagram {
    pub uplink: usize,
    pub from: SocketAddr,
    pub message: Vec<u8>,
}

/// Everything the data path needs to start.
pub struct DataplaneSpec {
    pub tun: File,
    pub uplinks: Vec<UplinkIo>,
    pub tunnels: Vec<TunnelIo>,
    /// Destination prefix -> tunnel index.
    pub routes: PrefixTable<usize>,
    pub tun_stats: Arc<TunStats>,
    /// Where IKE messages go; `None` counts and discards them (no IKE configured).
    pub ike: Option<crossbeam_channel::Sender<IkeDatagram>>,
}

/// A running data path. Dropping it stops the threads.
pub struct Dataplane {
    stop: Arc<AtomicBool>,
    wakers: Vec<Arc<Waker>>,
    threads: Vec<JoinHandle<()>>,
    epoch: Instant,
}

impl Dataplane {
    /// Starts the outbound and inbound threads.
    pub fn start(spec: DataplaneSpec) -> io::Result<Dataplane> {
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let tun = Arc::new(spec.tun);
        let (sockets, uplink_stats): (Vec<UdpSocket>, Vec<Arc<UplinkStats>>) = spec
            .uplinks
            .into_iter()
            .map(|u| (u.socket, u.stats))
            .unzip();
        let sockets = Arc::new(sockets);

        let mut outbound = Vec::with_capacity(spec.tunnels.len());
        let mut inbound = Vec::with_capacity(spec.tunnels.len());
        let mut spis = HashMap::new();
        for (i, t) in spec.tunnels.into_iter().enumerate() {
            spis.insert(t.inbound.spi().0, i);
            outbound.push(OutTunnel {
                uplink: t.uplink,
                remote: t.remote,
                sa: t.outbound,
                max_inner: t.max_inner,
                icmp_source_v4: t.icmp_source_v4,
                icmp_source_v6: t.icmp_source_v6,
                stats: t.stats.clone(),
            });
            inbound.push(InTunnel {
                sa: t.inbound,
                allowed_sources: t.allowed_sources,
                stats: t.stats,
            });
        }

        let tx_poll = Poll::new()?;
        let tx_waker = Arc::new(Waker::new(tx_poll.registry(), WAKE)?);
        tx_poll
            .registry()
            .register(&mut SourceFd(&tun.as_raw_fd()), TUN, Interest::READABLE)?;
        let rx_poll = Poll::new()?;
        let rx_waker = Arc::new(Waker::new(rx_poll.registry(), WAKE)?);
        for (i, s) in sockets.iter().enumerate() {
            rx_poll.registry().register(
                &mut SourceFd(&s.as_raw_fd()),
                Token(i),
                Interest::READABLE,
            )?;
        }

        let tx = Outbound {
            poll: tx_poll,
            stop: stop.clone(),
            tun: tun.clone(),
            sockets: sockets.clone(),
            uplink_stats: uplink_stats.clone(),
            tunnels: outbound,
            routes: spec.routes,
            tun_stats: spec.tun_stats,
            last_warn: None,
        };
        let rx = Inbound {
            poll: rx_poll,
            stop: stop.clone(),
            tun,
            sockets,
            uplink_stats,
            tunnels: inbound,
            spis,
            ike: spec.ike,
            epoch,
            last_warn: None,
        };
        let threads = vec![
            std::thread::Builder::new()
                .name("braid-tx".into())
                .spawn(move || tx.run())?,
            std::thread::Builder::new()
                .name("braid-rx".into())
                .spawn(move || rx.run())?,
        ];
        Ok(Dataplane {
            stop,
            wakers: vec![tx_waker, rx_waker],
            threads,
            epoch,
        })
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

struct OutTunnel {
    uplink: usize,
    remote: SocketAddr,
    sa: OutboundSa,
    max_inner: usize,
    icmp_source_v4: Option<Ipv4Addr>,
    icmp_source_v6: Option<Ipv6Addr>,
    stats: Arc<TunnelStats>,
}

struct InTunnel {
    sa: InboundSa,
    allowed_sources: Vec<Prefix>,
    stats: Arc<TunnelStats>,
}

/// Logs a warning at most once per [`WARN_EVERY`].
fn warn_limited(last: &mut Option<Instant>, f: impl FnOnce()) {
    let now = Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= WARN_EVERY) {
        *last = Some(now);
        f();
    }
}

struct Outbound {
    poll: Poll,
    stop: Arc<AtomicBool>,
    tun: Arc<File>,
    sockets: Arc<Vec<UdpSocket>>,
    uplink_stats: Vec<Arc<UplinkStats>>,
    tunnels: Vec<OutTunnel>,
    routes: PrefixTable<usize>,
    tun_stats: Arc<TunStats>,
    last_warn: Option<Instant>,
}

impl Outbound {
    fn run(mut self) {
        let mut events = Events::with_capacity(8);
        let mut buf = PacketBuf::new();
        let mut icmp = PacketBuf::new();
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "outbound poll failed; data path stopping");
                return;
            }
            // Edge-triggered: drain the device until it would block.
            loop {
                if self.stop.load(Ordering::Relaxed) {
                    return;
                }
                let n = match (&*self.tun).read(buf.payload_area()) {
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
                add(&self.tun_stats.rx_packets, 1);
                self.forward(&mut buf, n, &mut icmp);
            }
        }
    }

    /// Forwards one packet read from the TUN device at `buf[HEADROOM..HEADROOM + n]`.
    fn forward(&mut self, buf: &mut PacketBuf, n: usize, icmp: &mut PacketBuf) {
        let pkt = &buf.as_slice()[HEADROOM..HEADROOM + n];
        let inner = match wire::inspect(pkt) {
            Ok(i) => i,
            Err(_) => return self.tun_stats.drops.count(DropReason::InnerMalformed),
        };
        let Some(&t) = self.routes.lookup(inner.dst) else {
            return self.tun_stats.drops.count(DropReason::NoRoute);
        };
        let tunnel = &mut self.tunnels[t];
        if inner.len > tunnel.max_inner && inner.dont_fragment {
            // Too big and may not be fragmented: tell the sender the tunnel MTU (PMTUD through braid).
            tunnel.stats.drops.count(DropReason::TooBig);
            let from = match inner.version {
                4 => tunnel.icmp_source_v4.map(IpAddr::V4),
                _ => tunnel.icmp_source_v6.map(IpAddr::V6),
            };
            if let Some(from) = from {
                if let Some(len) = wire::icmp_too_big(
                    pkt,
                    &inner,
                    from,
                    tunnel.max_inner as u32,
                    icmp.as_mut_slice(),
                ) {
                    if (&*self.tun).write(&icmp.as_slice()[..len]).is_ok() {
                        add(&tunnel.stats.icmp_too_big, 1);
                    }
                }
            }
            return;
        }
        // IPv4 without DF that exceeds the tunnel MTU is sealed whole; the kernel fragments the outer datagram.
        let next = if inner.version == 4 {
            NextHeader::Ipv4
        } else {
            NextHeader::Ipv6
        };
        let esp = match tunnel
            .sa
            .seal(buf.as_mut_slice(), HEADROOM..HEADROOM + inner.len, next)
        {
            Ok(r) => r,
            Err(SealError::SeqExhausted) => {
                return tunnel.stats.drops.count(DropReason::SeqExhausted)
            }
            Err(_) => return tunnel.stats.drops.count(DropReason::InnerMalformed),
        };
        let datagram = &buf.as_slice()[esp];
        let socket = &self.sockets[tunnel.uplink];
        match send(socket, datagram, tunnel.remote) {
            Ok(()) => {
                add(&tunnel.stats.tx_packets, 1);
                add(&tunnel.stats.tx_bytes, inner.len as u64);
                let us = &self.uplink_stats[tunnel.uplink];
                add(&us.tx_packets, 1);
                add(&us.tx_bytes, datagram.len() as u64);
            }
            Err(e) => {
                tunnel.stats.drops.count(DropReason::SendFailed);
                let remote = tunnel.remote;
                warn_limited(
                    &mut self.last_warn,
                    || tracing::warn!(%remote, error = %e, "uplink send failed"),
                );
            }
        }
    }
}

/// Sends one datagram; waits briefly for room if the socket buffer is full.
fn send(socket: &UdpSocket, datagram: &[u8], to: SocketAddr) -> io::Result<()> {
    loop {
        match socket.send_to(datagram, to) {
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if !crate::sys::poll_one(socket.as_raw_fd(), libc::POLLOUT, SEND_WAIT)? {
                    return Err(e);
                }
            }
            Err(e) => return Err(e),
        }
    }
}

struct Inbound {
    poll: Poll,
    stop: Arc<AtomicBool>,
    tun: Arc<File>,
    sockets: Arc<Vec<UdpSocket>>,
    uplink_stats: Vec<Arc<UplinkStats>>,
    tunnels: Vec<InTunnel>,
    /// Inbound SPI -> tunnel index, across all uplinks.
    spis: HashMap<u32, usize>,
    ike: Option<crossbeam_channel::Sender<IkeDatagram>>,
    epoch: Instant,
    last_warn: Option<Instant>,
}

impl Inbound {
    fn run(mut self) {
        let mut events = Events::with_capacity(16);
        let mut buf = PacketBuf::new();
        while !self.stop.load(Ordering::Relaxed) {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!(error = %e, "inbound poll failed; data path stopping");
                return;
            }
            // A coarse clock: once per wake-up, not per packet.
            let now_ms = (self.epoch.elapsed().as_millis() as u64).max(1);
            for ev in events.iter() {
                if ev.token() == WAKE {
                    continue;
                }
                let u = ev.token().0;
                loop {
                    if self.stop.load(Ordering::Relaxed) {
                        return;
                    }
                    let (n, from) =
                        match self.sockets[u].recv_from(&mut buf.as_mut_slice()[..MAX_PACKET]) {
                            Ok(r) => r,
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
                        };
                    self.receive(u, &mut buf, n, from, now_ms);
                }
            }
        }
    }

    /// Handles one datagram received on uplink `u` at `buf[..n]`.
    fn receive(&mut self, u: usize, buf: &mut PacketBuf, n: usize, from: SocketAddr, now_ms: u64) {
        let us = &self.uplink_stats[u];
        add(&us.rx_packets, 1);
        add(&us.rx_bytes, n as u64);
        let spi = match classify(&buf.as_slice()[..n]) {
            UdpPayload::Esp(spi) => spi,
            UdpPayload::Ike(message) => {
                add(&us.ike_received, 1);
                if let Some(ike) = &self.ike {
                    let _ = ike.try_send(IkeDatagram {
                        uplink: u,
                        from,
                        message: message.to_vec(),
                    });
                }
                return;
            }
            UdpPayload::NatKeepalive => return add(&us.nat_keepalives, 1),
            UdpPayload::Malformed => return us.drops.count(DropReason::Malformed),
        };
        let Some(&t) = self.spis.get(&spi.0) else {
            return us.drops.count(DropReason::UnknownSpi);
        };
        let tunnel = &mut self.tunnels[t];
        let opened = match tunnel.sa.open(&mut buf.as_mut_slice()[..n]) {
            Ok(o) => o,
            Err(e) => return tunnel.stats.drops.count(e.into()),
        };
        tunnel.stats.last_rx_ms.store(now_ms, Ordering::Relaxed);
        let payload = &buf.as_slice()[opened.inner];
        let inner = match check_inner(payload, opened.next_header, &tunnel.allowed_sources) {
            Ok(i) => i,
            Err(reason) => return tunnel.stats.drops.count(reason),
        };
        // One packet per write on a TUN device: it is taken whole or refused.
        match (&*self.tun).write(&payload[..inner.len]) {
            Ok(n) if n == inner.len => {
                add(&tunnel.stats.rx_packets, 1);
                add(&tunnel.stats.rx_bytes, inner.len as u64);
            }
            Ok(_) => tunnel.stats.drops.count(DropReason::TunWriteFailed),
            Err(e) => {
                tunnel.stats.drops.count(DropReason::TunWriteFailed);
                warn_limited(
                    &mut self.last_warn,
                    || tracing::warn!(error = %e, "TUN write failed"),
                );
            }
        }
    }
}

/// The inner-packet sanity check after decryption: the version must match ESP's next header, the length must
/// be consistent, and the source must be one the tunnel may carry.
fn check_inner(payload: &[u8], next: NextHeader, allowed: &[Prefix]) -> Result<Inner, DropReason> {
    let inner = wire::inspect(payload).map_err(|_| DropReason::InnerMalformed)?;
    let expected = match next {
        NextHeader::Ipv4 => 4,
        NextHeader::Ipv6 => 6,
    };
    if inner.version != expected {
        return Err(DropReason::InnerMalformed);
    }
    if !allowed.iter().any(|p| p.contains(inner.src)) {
        return Err(DropReason::InnerSource);
    }
    Ok(inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;

    #[test]
    fn inner_checks() {
        let allowed: Vec<Prefix> = vec!["192.0.2.0/24".parse().unwrap()];
        let mut ok = Vec::new();
        PacketBuilder::ipv4([192, 0, 2, 5], [198, 51, 100, 1], 64)
            .udp(1, 2)
            .write(&mut ok, &[0; 10])
            .unwrap();
        assert!(check_inner(&ok, NextHeader::Ipv4, &allowed).is_ok());
        assert_eq!(
            check_inner(&ok, NextHeader::Ipv6, &allowed),
            Err(DropReason::InnerMalformed)
        );
        assert_eq!(
            check_inner(&ok[..20], NextHeader::Ipv4, &allowed),
            Err(DropReason::InnerMalformed)
        );
        let mut spoofed = Vec::new();
        PacketBuilder::ipv4([203, 0, 113, 5], [198, 51, 100, 1], 64)
            .udp(1, 2)
            .write(&mut spoofed, &[0; 10])
            .unwrap();
        assert_eq!(
            check_inner(&spoofed, NextHeader::Ipv4, &allowed),
            Err(DropReason::InnerSource)
        );
    }
}
