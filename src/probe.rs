//! Sequence-numbered probe flows for failover drills: `braid lab-tool probe-source` sends N UDP flows (one
//! socket, so one source port, per flow) at a fixed packet rate each; `probe-sink` receives them and accounts,
//! per flow, for every packet lost and every outage ("blip": the time between the last packet before a gap and
//! the first after it). The accounting ([`FlowTrack`], [`ProbeReport`]) is sans-IO and unit-tested; the tools
//! around it only move datagrams.
//!
//! A probe datagram is 32 bytes: magic `b"BRPB"`, flow (u32), sequence (u64), 16 bytes of zeros (room for
//! future timestamps), all big-endian. A datagram that is not a probe is counted and ignored.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub const MAGIC: [u8; 4] = *b"BRPB";
/// The most schedule slots a probe flow sends at once after the source was descheduled; older ones are skipped.
const MAX_CATCH_UP: u64 = 4;
pub const PROBE_LEN: usize = 32;

/// Builds probe `seq` of `flow`.
pub fn encode(flow: u32, seq: u64) -> [u8; PROBE_LEN] {
    let mut p = [0u8; PROBE_LEN];
    p[..4].copy_from_slice(&MAGIC);
    p[4..8].copy_from_slice(&flow.to_be_bytes());
    p[8..16].copy_from_slice(&seq.to_be_bytes());
    p
}

/// (flow, sequence) of a probe, or `None` for anything else.
pub fn decode(d: &[u8]) -> Option<(u32, u64)> {
    if d.len() != PROBE_LEN || d[..4] != MAGIC {
        return None;
    }
    Some((
        u32::from_be_bytes(d[4..8].try_into().ok()?),
        u64::from_be_bytes(d[8..16].try_into().ok()?),
    ))
}

/// One outage of a flow.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Gap {
    /// When the last packet before the gap arrived, ms since the sink started.
    pub at_ms: f64,
    /// From the last packet before the gap to the first after it, ms.
    pub ms: f64,
    /// Sequence numbers skipped.
    pub lost: u64,
}

/// What the sink knows about one flow.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowTrack {
    pub flow: u32,
    pub received: u64,
    /// Arrived with a sequence number below the highest seen (reordered or duplicated).
    pub late: u64,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    #[serde(skip)]
    last_at: Option<Duration>,
    pub gaps: Vec<Gap>,
}

impl FlowTrack {
    /// Accounts for probe `seq` arriving at `at` (since the sink started). A jump of the sequence number
    /// records a gap; late packets are counted, not treated as recoveries.
    pub fn arrive(&mut self, seq: u64, at: Duration) {
        self.received += 1;
        match self.last_seq {
            Some(last) if seq <= last => {
                self.late += 1;
                return;
            }
            Some(last) if seq > last + 1 => {
                let since = self.last_at.unwrap_or(at);
                self.gaps.push(Gap {
                    at_ms: ms(since),
                    ms: ms(at.saturating_sub(since)),
                    lost: seq - last - 1,
                });
            }
            None => self.first_seq = Some(seq),
            _ => {}
        }
        self.last_seq = Some(seq);
        self.last_at = Some(at);
    }

    /// Packets missing between the first and the last arrived. Late arrivals fill holes back in (they are
    /// taken as distinct: the tunnel's anti-replay window drops duplicates before they get here).
    pub fn lost(&self) -> u64 {
        match (self.first_seq, self.last_seq) {
            (Some(f), Some(l)) => (l - f + 1).saturating_sub(self.received),
            _ => 0,
        }
    }

    /// The longest outage, ms (0 without gaps).
    pub fn worst_gap_ms(&self) -> f64 {
        self.gaps.iter().map(|g| g.ms).fold(0.0, f64::max)
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The sink's summary.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProbeReport {
    pub flows: Vec<FlowTrack>,
    pub received: u64,
    pub lost: u64,
    pub flows_heard: usize,
    pub flows_with_loss: usize,
    pub worst_gap_ms: f64,
    pub not_probes: u64,
}

impl ProbeReport {
    pub fn new(flows: Vec<FlowTrack>, not_probes: u64) -> ProbeReport {
        ProbeReport {
            received: flows.iter().map(|f| f.received).sum(),
            lost: flows.iter().map(FlowTrack::lost).sum(),
            flows_heard: flows.iter().filter(|f| f.received > 0).count(),
            flows_with_loss: flows.iter().filter(|f| f.lost() > 0).count(),
            worst_gap_ms: flows
                .iter()
                .map(FlowTrack::worst_gap_ms)
                .fold(0.0, f64::max),
            flows,
            not_probes,
        }
    }
}

/// `probe-source`: `flows` UDP flows from `from` to `to`, `pps` packets per second each, for at most `secs`
/// or until SIGTERM/SIGINT. Flow `i` is sent from port `sport_base + i` (an ephemeral port each when
/// `sport_base` is 0), so a drill can ask which path each flow takes. Prints one JSON line: totals and, per
/// flow, the number of probes sent (`per_flow_sent`), which the sink's report is measured against.
pub fn source(
    from: IpAddr,
    to: SocketAddr,
    flows: usize,
    pps: f64,
    secs: f64,
    sport_base: u16,
) -> Result<()> {
    if sport_base != 0 && sport_base as usize + flows > u16::MAX as usize {
        anyhow::bail!("--sport-base {sport_base} + {flows} flows runs past port 65535");
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let sockets: Vec<UdpSocket> = (0..flows)
        .map(|i| {
            let port = if sport_base == 0 {
                0
            } else {
                sport_base + i as u16
            };
            let s = UdpSocket::bind(SocketAddr::new(from, port))
                .with_context(|| format!("binding {from} port {port}"))?;
            s.connect(to)?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent, mut errors, mut skipped) = (0u64, 0u64, 0u64);
    // Per flow: the next sequence number (= probes handed to the kernel) and the schedule slots used up.
    let mut seq = vec![0u64; flows];
    let mut slots = vec![0u64; flows];
    while Instant::now() < end && !stop.load(std::sync::atomic::Ordering::Relaxed) {
        // Every flow keeps to its schedule; flows are phase-shifted so the packets interleave. Sequence numbers
        // count only probes the kernel took, so a gap at the sink is loss in the network, never here. A source
        // that fell behind (descheduled) skips the missed slots rather than bursting them out.
        let t = start.elapsed().as_secs_f64();
        for (i, s) in sockets.iter().enumerate() {
            let due = (t * pps + i as f64 / flows as f64) as u64;
            if due > slots[i] + MAX_CATCH_UP {
                skipped += due - slots[i] - 1;
                slots[i] = due - 1;
            }
            while slots[i] < due {
                match s.send(&encode(i as u32, seq[i])) {
                    Ok(_) => {
                        sent += 1;
                        seq[i] += 1;
                        slots[i] += 1;
                    }
                    Err(_) => {
                        // Socket buffer full: try again next round, same sequence number.
                        errors += 1;
                        break;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    println!(
        "{}",
        serde_json::json!({
            "sent": sent,
            "send_errors": errors,
            "skipped_slots": skipped,
            "secs": start.elapsed().as_secs_f64(),
            "per_flow_sent": seq,
        })
    );
    Ok(())
}

/// `probe-sink`: receives probes on `listen` and prints a [`ProbeReport`] as one JSON line, after `secs`; or,
/// with `idle_exit`, once probes have arrived and then none for that long; or half a second after SIGTERM
/// (what the drill uses once its sources have stopped: the last probes in flight still count, and an outage
/// of any length in between does not end the sink early).
pub fn sink(
    listen: SocketAddr,
    flows: usize,
    secs: f64,
    idle_exit: Option<Duration>,
) -> Result<()> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, stop.clone())?;
    }
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(listen),
        socket2::Type::DGRAM,
        None,
    )?;
    // Room for bursts: a sink that cannot keep up must not show up as tunnel loss.
    let _ = socket.set_recv_buffer_size(8 << 20);
    socket
        .bind(&listen.into())
        .with_context(|| format!("binding {listen}"))?;
    let socket: UdpSocket = socket.into();
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut tracks: Vec<FlowTrack> = (0..flows)
        .map(|i| FlowTrack {
            flow: i as u32,
            ..FlowTrack::default()
        })
        .collect();
    let mut not_probes = 0u64;
    let start = Instant::now();
    let mut end = start + Duration::from_secs_f64(secs);
    let mut last_probe: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    let mut stopping = false;
    while Instant::now() < end {
        if !stopping && stop.load(std::sync::atomic::Ordering::Relaxed) {
            stopping = true;
            end = end.min(Instant::now() + Duration::from_millis(500));
        }
        if let (Some(idle), Some(last)) = (idle_exit, last_probe) {
            if last.elapsed() >= idle {
                break;
            }
        }
        match socket.recv(&mut buf) {
            Ok(n) => match decode(&buf[..n]) {
                Some((flow, seq)) if (flow as usize) < flows => {
                    tracks[flow as usize].arrive(seq, start.elapsed());
                    last_probe = Some(Instant::now());
                }
                _ => not_probes += 1,
            },
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock
                        | std::io::ErrorKind::TimedOut
                        | std::io::ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(e).context("receiving probes"),
        }
    }
    println!(
        "{}",
        serde_json::to_string(&ProbeReport::new(tracks, not_probes))?
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    #[test]
    fn probes_round_trip_and_others_are_refused() {
        assert_eq!(decode(&encode(7, 1 << 40)), Some((7, 1 << 40)));
        assert_eq!(decode(&[0u8; PROBE_LEN]), None);
        assert_eq!(decode(&encode(1, 2)[..31]), None);
    }

    #[test]
    fn a_gap_is_measured_from_the_last_packet_before_it_to_the_first_after() {
        let mut f = FlowTrack::default();
        for s in 0..10 {
            f.arrive(s, at(s));
        }
        // 10..=309 lost: 300 packets, 1 ms apart; 310 arrives at 310 ms.
        f.arrive(310, at(310));
        f.arrive(311, at(311));
        assert_eq!(f.lost(), 300);
        assert_eq!(f.gaps.len(), 1);
        assert_eq!(f.gaps[0].lost, 300);
        assert!((f.worst_gap_ms() - 301.0).abs() < 1e-9);
        assert!((f.gaps[0].at_ms - 9.0).abs() < 1e-9);
    }

    #[test]
    fn late_packets_fill_holes_and_are_not_recoveries() {
        let mut f = FlowTrack::default();
        f.arrive(0, at(0));
        f.arrive(2, at(2));
        f.arrive(1, at(3));
        f.arrive(3, at(4));
        assert_eq!(f.late, 1);
        assert_eq!(f.lost(), 0);
        assert_eq!(f.gaps.len(), 1, "the jump is still recorded as an outage");
    }

    #[test]
    fn report_totals() {
        let mut a = FlowTrack::default();
        let mut b = FlowTrack {
            flow: 1,
            ..FlowTrack::default()
        };
        for s in 0..5 {
            a.arrive(s, at(s));
        }
        b.arrive(0, at(0));
        b.arrive(4, at(40));
        let r = ProbeReport::new(vec![a, b, FlowTrack::default()], 2);
        assert_eq!((r.received, r.lost), (7, 3));
        assert_eq!((r.flows_heard, r.flows_with_loss), (2, 1));
        assert!((r.worst_gap_ms - 40.0).abs() < 1e-9);
        assert_eq!(r.not_probes, 2);
    }
}
