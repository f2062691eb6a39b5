//! Inbound-silence liveness: a tunnel we keep sending on while nothing authentic comes back is taken out of
//! use, for peers that speak no BFD (cloud VPN gateways) and long before a 30-180 s BGP hold timer.
//!
//! Every 100 ms, per tunnel with `silence_ms` (on by default where the tunnel has no BFD): if we sent (or tried
//! to: `send_failed` counts) on the tunnel since the last authenticated inbound packet (`TunnelStats::last_rx_ms`), and that packet is older than
//! a third of `silence_ms`, an ICMP echo request goes to the peer's inside address through the tunnel (every
//! sixth of `silence_ms`): any live peer answers it, so one-way traffic and quiet BGP sessions never look
//! dead. Once the silence reaches `silence_ms`, the tunnel's [`Source::Silence`] vote goes down: its flows move
//! to the other members of their groups at once, as with BFD. The BGP session is left alone (a peer that drops
//! ICMP must not lose its routes; its hold timer still runs). While the tunnel is down, an echo goes out every
//! second (traffic to the peer's own inside address still uses the tunnel); once the peer has been heard again
//! for a second (a hold-down, as BFD's), the tunnel is back in use.
//!
//! Left out: the echo replies are not matched (any authenticated inbound packet counts, which is the point),
//! and a peer that answers neither echo nor anything else while alive is indistinguishable from a dead one:
//! turn it off for such a peer with `silence_ms = 0`.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Config;
use crate::control::GatewayState;
use crate::health::{Health, Source};

/// How often the tunnels are looked at.
const TICK: Duration = Duration::from_millis(100);
/// Echo interval while a tunnel is down.
const PROBE_WHILE_DOWN: Duration = Duration::from_secs(1);
/// How long the peer must have been heard again before a silent tunnel carries traffic again.
const HOLD_DOWN: Duration = Duration::from_secs(1);

/// One watched tunnel.
struct Watch {
    tunnel: usize,
    name: String,
    silence: Duration,
    local: IpAddr,
    peer: IpAddr,
    socket: Socket,
    /// The last `last_rx_ms` seen, and the tunnel's `tx_packets` then.
    rx_ms: u64,
    tx_at_rx: u64,
    last_probe: Option<Instant>,
    down_since: Option<Instant>,
    /// While down: when the peer was first heard again.
    heard_since: Option<Instant>,
    seq: u16,
}

/// Starts the detector for every tunnel that has it; `None` when none does.
pub fn start(config: &Config, state: &Arc<GatewayState>) -> Option<tokio::task::JoinHandle<()>> {
    let health = state.health.clone()?;
    let mut watches = Vec::new();
    for (i, t) in config.tunnels.iter().enumerate() {
        let Some(silence) = t.silence else { continue };
        // The first inside address family with a peer: IPv4 first.
        let pair = t
            .inside
            .iter()
            .filter_map(|a| {
                let peer = t
                    .peer_inside
                    .iter()
                    .find(|p| p.is_ipv4() == a.addr.is_ipv4())?;
                Some((a.addr, *peer))
            })
            .min_by_key(|(l, _)| !l.is_ipv4());
        let Some((local, peer)) = pair else { continue };
        let socket = match echo_socket(local) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(tunnel = %t.name, error = %e, "inbound-silence liveness off: no ICMP socket");
                continue;
            }
        };
        tracing::info!(tunnel = %t.name, silence_ms = silence.as_millis() as u64, %peer,
            "inbound-silence liveness on");
        watches.push(Watch {
            tunnel: i,
            name: t.name.clone(),
            silence,
            local,
            peer,
            socket,
            rx_ms: 0,
            tx_at_rx: 0,
            last_probe: None,
            down_since: None,
            heard_since: None,
            seq: 0,
        });
    }
    if watches.is_empty() {
        return None;
    }
    let state = state.clone();
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let now = Instant::now();
            let now_ms = now.duration_since(state.epoch()).as_millis() as u64;
            for w in watches.iter_mut() {
                check(w, &state, &health, now, now_ms);
            }
        }
    }))
}

/// One look at one tunnel.
fn check(w: &mut Watch, state: &GatewayState, health: &Health, now: Instant, now_ms: u64) {
    let Some(info) = state.tunnels().get(w.tunnel) else {
        return;
    };
    let rx_ms = info.stats.last_rx_ms.load(Relaxed);
    // What we tried to send: a datagram the uplink refused (no route, a local firewall) still means we are
    // using the tunnel.
    let tx = info.stats.tx_packets.load(Relaxed)
        + info
            .stats
            .drops
            .get(braid_dataplane::DropReason::SendFailed);
    if rx_ms != w.rx_ms {
        w.rx_ms = rx_ms;
        w.tx_at_rx = tx;
        if w.down_since.is_some() && w.heard_since.is_none() {
            w.heard_since = Some(now);
        }
    }
    // Back in use once the peer has been heard again for the hold-down (a restarted peer needs its routes
    // before it can take traffic; a flapping path must not pull flows back and forth).
    if let (Some(since), Some(heard)) = (w.down_since, w.heard_since) {
        if now.duration_since(heard) >= HOLD_DOWN
            && Duration::from_millis(now_ms.saturating_sub(rx_ms)) < w.silence
        {
            w.down_since = None;
            w.heard_since = None;
            health.vote(w.tunnel, Source::Silence, true);
            tracing::info!(tunnel = %w.name, down_ms = since.elapsed().as_millis() as u64,
                "inbound traffic resumed: tunnel back in use");
        }
        if Duration::from_millis(now_ms.saturating_sub(rx_ms)) >= w.silence {
            // Heard once, then silent again: start over.
            w.heard_since = None;
        }
    }
    let silent = Duration::from_millis(now_ms.saturating_sub(rx_ms));
    let sending = tx > w.tx_at_rx;
    let probe_every = match w.down_since {
        Some(_) => Some(PROBE_WHILE_DOWN),
        None if sending && silent >= w.silence / 3 => Some(w.silence / 6),
        None => None,
    };
    if let Some(every) = probe_every {
        if w.last_probe.is_none_or(|t| now.duration_since(t) >= every) {
            w.last_probe = Some(now);
            w.seq = w.seq.wrapping_add(1);
            if let Err(e) = send_echo(&w.socket, w.peer, w.tunnel as u16, w.seq) {
                tracing::debug!(tunnel = %w.name, error = %e, "echo probe not sent");
            }
        }
    }
    if w.down_since.is_none() && sending && silent >= w.silence {
        w.down_since = Some(now);
        health.vote(w.tunnel, Source::Silence, false);
        tracing::warn!(tunnel = %w.name, silent_ms = silent.as_millis() as u64, local = %w.local, peer = %w.peer,
            "nothing from the peer while sending: tunnel leaves its groups");
    }
}

/// A raw ICMP (or ICMPv6) socket bound to our inside address, so its packets are routed into the tunnel.
/// Replies are never read: the receive buffer is kept minimal.
fn echo_socket(local: IpAddr) -> std::io::Result<Socket> {
    let (domain, proto) = match local {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6),
    };
    let s = Socket::new(domain, Type::RAW, Some(proto))?;
    s.bind(&SocketAddr::new(local, 0).into())?;
    let _ = s.set_recv_buffer_size(1);
    s.set_nonblocking(true)?;
    Ok(s)
}

/// Sends an echo request (ICMP type 8, or ICMPv6 type 128: the kernel fills in the ICMPv6 checksum).
fn send_echo(s: &Socket, peer: IpAddr, id: u16, seq: u16) -> std::io::Result<()> {
    let mut m = [0u8; 16];
    m[0] = if peer.is_ipv4() { 8 } else { 128 };
    m[4..6].copy_from_slice(&id.to_be_bytes());
    m[6..8].copy_from_slice(&seq.to_be_bytes());
    m[8..16].copy_from_slice(b"braid-lv");
    if peer.is_ipv4() {
        let c = icmp_checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
    }
    s.send_to(&m, &SocketAddr::new(peer, 0).into())?;
    Ok(())
}

/// The Internet checksum (RFC 1071) of an ICMP message.
fn icmp_checksum(m: &[u8]) -> u16 {
    let mut sum: u32 = m
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u32)
        .sum();
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_verifies_to_zero() {
        let mut m = [
            8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'b', b'r', b'a', b'i', b'd', b'-', b'l', b'v',
        ];
        let c = icmp_checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(icmp_checksum(&m), 0);
    }
}
