//! Receive-side coalescing ("GRO") of the inner packets one inbound batch opened, so the TUN device gets a few
//! large writes instead of one write per packet.
//!
//! The inbound thread opens a batch of ESP datagrams in place, then hands each inner packet to a [`Gro`] in
//! arrival order. Consecutive TCP segments of one flow (and, where the kernel takes USO writes, equal-size UDP
//! datagrams of one flow) become one *super-packet*: the first packet's IP and transport header, edited, and
//! the payloads of all of them back to back, written with a virtio-net header ([`crate::vnet`]) that tells the
//! kernel how to cut it again (`gso_type`, `gso_size`) and where the checksum goes (`NEEDS_CSUM`,
//! `csum_start`/`csum_offset`). The kernel keeps it whole as far as it can (a local socket takes it in one go;
//! a forwarding path re-segments it), exactly as if a NIC's GRO had built it. Nothing is copied: the output
//! names the header (built here, in the run's own small buffer) and the payload ranges of the packets where
//! they lie ([`Piece`]); the caller writes them with one `writev`.
//!
//! The rules (those of the kernel's `tcp_gro_receive`/`inet_gro_receive`/`ipv6_gro_receive` and of
//! wireguard-go's `tun/offload_linux.go`, written anew):
//! - same flow: tunnel (the caller's `tag`), addresses, protocol, ports;
//! - IPv4 without options and not a fragment, IPv6 with TCP or UDP as its first next header (no extension
//!   headers); version, TOS/traffic class, flow label, TTL/hop limit and the DF bit all equal;
//! - IPv4 IDs all equal (only with DF, where RFC 6864 makes the ID meaningless; the kernel's re-segmentation
//!   then numbers them upwards) or incrementing by one;
//! - TCP: flags exactly ACK, or ACK|PSH on the packet that ends the run (SYN, FIN, RST, URG, ECE and CWR are
//!   never coalesced, so no `GSO_ECN` is needed); acknowledgement number, window, urgent pointer and the
//!   option bytes identical, timestamps included (as the kernel does: segments of one burst share their
//!   timestamp); sequence numbers contiguous;
//! - UDP: the length field matches the packet, the checksum is not zero (IPv4's "no checksum" stays as it is);
//! - every segment carries `gso_size` payload octets (the first packet's), the last one may carry fewer and
//!   ends the run; at most [`MAX_SEGMENTS`] segments and [`MAX_SUPER_LEN`] octets of IP packet;
//! - every packet's own TCP/UDP checksum verifies before it joins a run, because the super-packet's checksum is
//!   computed afresh by the kernel (`NEEDS_CSUM`): a packet the sender got wrong is written alone, for the
//!   kernel to drop as before.
//!
//! The super-packet's header: IPv4 total length and header checksum recomputed, IPv6 payload length set, the
//! TCP PSH flag of the last segment, UDP length covering every datagram, and the transport checksum field set
//! to the folded (not inverted) pseudo-header sum over the whole transport length, which the kernel completes.
//!
//! Order: a flow's packets leave in the order they came. A packet that cannot join its flow's run ends that run
//! (it is written first); a packet that cannot be coalesced at all is written at once, after its flow's run;
//! fragments and IPv6 extension headers end every run between the same two addresses. Runs of different flows
//! may be written in another order than their packets interleaved, as with any GRO.
//!
//! Left out: coalescing across batches (a run ends with its batch: no timer, no added latency), IPv4 options
//! and IPv6 extension headers, TCP with CWR/ECE (GSO_ECN), and merging of differing TCP timestamps.

use crate::gso::sum;
use crate::vnet::{VnetHdr, F_NEEDS_CSUM, GSO_TCPV4, GSO_TCPV6, GSO_UDP_L4, VNET_HDR_LEN};
use crate::wire::{PROTO_TCP, PROTO_UDP, TCP_ACK, TCP_PSH};

/// The most packets in one super-packet.
pub const MAX_SEGMENTS: usize = 64;
/// The most runs (flows) open at once; when a new flow needs one, the oldest run is written.
pub const MAX_RUNS: usize = 8;
/// The largest super-packet, IP header included (IPv4's total length field).
pub const MAX_SUPER_LEN: usize = 65535;
/// The longest IP + transport header a run holds: IPv6 and TCP with 40 octets of options.
const MAX_HEADERS: usize = 40 + 60;
/// Octets of a super-packet's header buffer: the virtio-net header, then IP and transport headers.
pub const SUPER_HEADER_LEN: usize = VNET_HDR_LEN + MAX_HEADERS;

const TCP_CSUM_OFFSET: u16 = 16;
const UDP_CSUM_OFFSET: u16 = 6;

/// Which kinds of super-packet may be built (the caller turns a kind off when the kernel refuses it).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Offloads {
    pub tcp: bool,
    pub udp: bool,
}

/// The payload of one packet within a super-packet: octets `start..end` of the caller's packet `id`.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct Piece {
    pub id: u32,
    pub start: usize,
    pub end: usize,
}

/// What to write to the TUN device next.
#[derive(Debug)]
pub enum Output<'a> {
    /// Packet `id` alone, as it is, behind a zero virtio-net header.
    Single(u32),
    /// A super-packet.
    Super(Super<'a>),
}

/// A coalesced packet: `header` (virtio-net header, IP and transport header), then each piece's payload.
#[derive(Debug)]
pub struct Super<'a> {
    pub header: &'a [u8],
    pub pieces: &'a [Piece],
    /// The tag its packets were pushed with (the tunnel).
    pub tag: u32,
    /// UDP (USO) rather than TCP.
    pub udp: bool,
    /// Octets after the virtio-net header: the IP packet's total length.
    pub ip_len: usize,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
struct FlowKey {
    tag: u32,
    v6: bool,
    proto: u8,
    addrs: [u8; 32],
    ports: [u8; 4],
}

impl FlowKey {
    fn same_hosts(&self, other: &FlowKey) -> bool {
        self.tag == other.tag && self.v6 == other.v6 && self.addrs == other.addrs
    }
}

/// A packet that may lead or join a run.
#[derive(Copy, Clone, Debug)]
struct Candidate {
    key: FlowKey,
    udp: bool,
    /// IP header octets.
    ip_hdr: usize,
    /// IP + transport header octets.
    hdr_len: usize,
    payload: usize,
    seq: u32,
    psh: bool,
    ip_id: u16,
    df: bool,
}

/// What [`classify`] learned about a packet.
#[derive(Debug)]
enum Kind {
    Candidate(Candidate),
    /// A TCP or UDP packet that cannot be coalesced: it ends its flow's run.
    Flow(FlowKey),
    /// A fragment or an IPv6 extension header: it ends every run between the same two hosts.
    Hosts(FlowKey),
    /// Anything else (ICMP, ...): written at once, no run is touched.
    Other,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum IdMode {
    /// One packet so far.
    Unknown,
    Equal,
    Incrementing,
}

struct Run {
    active: bool,
    /// When the run started (a counter), to find the oldest.
    started: u64,
    key: FlowKey,
    udp: bool,
    /// Virtio-net header, then the first packet's IP and transport header.
    header: [u8; SUPER_HEADER_LEN],
    ip_hdr: usize,
    hdr_len: usize,
    gso_size: usize,
    payload: usize,
    next_seq: u32,
    first_id: u16,
    ids: IdMode,
    df: bool,
    psh: bool,
    /// Ended by a short or PSH segment: the next packet of the flow cannot join.
    closed: bool,
    count: usize,
    pieces: [Piece; MAX_SEGMENTS],
}

impl Run {
    fn empty() -> Run {
        Run {
            active: false,
            started: 0,
            key: FlowKey {
                tag: 0,
                v6: false,
                proto: 0,
                addrs: [0; 32],
                ports: [0; 4],
            },
            udp: false,
            header: [0; SUPER_HEADER_LEN],
            ip_hdr: 0,
            hdr_len: 0,
            gso_size: 0,
            payload: 0,
            next_seq: 0,
            first_id: 0,
            ids: IdMode::Unknown,
            df: false,
            psh: false,
            closed: false,
            count: 0,
            pieces: [Piece::default(); MAX_SEGMENTS],
        }
    }

    fn start(&mut self, id: u32, pkt: &[u8], c: &Candidate, started: u64) {
        self.active = true;
        self.started = started;
        self.key = c.key;
        self.udp = c.udp;
        self.header[VNET_HDR_LEN..VNET_HDR_LEN + c.hdr_len].copy_from_slice(&pkt[..c.hdr_len]);
        self.ip_hdr = c.ip_hdr;
        self.hdr_len = c.hdr_len;
        self.gso_size = c.payload;
        self.payload = c.payload;
        self.next_seq = c.seq.wrapping_add(c.payload as u32);
        self.first_id = c.ip_id;
        self.ids = IdMode::Unknown;
        self.df = c.df;
        self.psh = c.psh;
        self.closed = c.psh;
        self.count = 1;
        self.pieces[0] = Piece {
            id,
            start: c.hdr_len,
            end: pkt.len(),
        };
    }

    /// Whether `pkt` (classified as `c`, of this run's flow) can be the run's next segment; if so, the IPv4 ID
    /// mode it implies.
    fn accepts(&self, pkt: &[u8], c: &Candidate) -> Option<IdMode> {
        if self.closed
            || self.count == MAX_SEGMENTS
            || c.hdr_len != self.hdr_len
            || c.ip_hdr != self.ip_hdr
            || c.payload > self.gso_size
            || self.hdr_len + self.payload + c.payload > MAX_SUPER_LEN
        {
            return None;
        }
        let h = &self.header[VNET_HDR_LEN..VNET_HDR_LEN + self.hdr_len];
        let mut ids = self.ids;
        if self.key.v6 {
            // Version, traffic class, flow label; hop limit.
            if pkt[0..4] != h[0..4] || pkt[7] != h[7] {
                return None;
            }
        } else {
            // Version/IHL, TOS; DF (MF and the offset are zero in candidates); TTL.
            if pkt[0..2] != h[0..2] || c.df != self.df || pkt[8] != h[8] {
                return None;
            }
            let next = self.first_id.wrapping_add(self.count as u16);
            ids = match self.ids {
                IdMode::Unknown if c.ip_id == self.first_id && self.df => IdMode::Equal,
                IdMode::Unknown | IdMode::Incrementing if c.ip_id == next => IdMode::Incrementing,
                IdMode::Equal if c.ip_id == self.first_id => IdMode::Equal,
                _ => return None,
            };
        }
        if !self.udp {
            let t = &pkt[self.ip_hdr..self.hdr_len];
            let ht = &h[self.ip_hdr..self.hdr_len];
            // Ack number and data offset; window; urgent pointer and options. Not seq, flags, checksum.
            if c.seq != self.next_seq
                || t[8..13] != ht[8..13]
                || t[14..16] != ht[14..16]
                || t[18..] != ht[18..]
            {
                return None;
            }
        }
        Some(ids)
    }

    fn append(&mut self, id: u32, pkt: &[u8], c: &Candidate, ids: IdMode) {
        self.pieces[self.count] = Piece {
            id,
            start: c.hdr_len,
            end: pkt.len(),
        };
        self.count += 1;
        self.payload += c.payload;
        self.next_seq = self.next_seq.wrapping_add(c.payload as u32);
        self.ids = ids;
        self.psh = c.psh;
        self.closed = c.psh || c.payload < self.gso_size;
    }

    /// Ends the run: one packet is written as it is, more become a super-packet.
    fn emit(&mut self, out: &mut impl FnMut(Output<'_>)) {
        self.active = false;
        if self.count == 1 {
            return out(Output::Single(self.pieces[0].id));
        }
        let ip_len = self.hdr_len + self.payload;
        let l4_len = ip_len - self.ip_hdr;
        let (ip_hdr, udp, v6) = (self.ip_hdr, self.udp, self.key.v6);
        let ip = &mut self.header[VNET_HDR_LEN..VNET_HDR_LEN + self.hdr_len];
        if v6 {
            ip[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
        } else {
            ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
            ip[10..12].copy_from_slice(&[0, 0]);
            let c = !fold(sum(0, &ip[..ip_hdr]));
            ip[10..12].copy_from_slice(&c.to_be_bytes());
        }
        let proto = if udp { PROTO_UDP } else { PROTO_TCP };
        let pseudo = fold(pseudo_sum(&ip[..ip_hdr], v6, proto, l4_len));
        let csum_offset = if udp {
            ip[ip_hdr + 4..ip_hdr + 6].copy_from_slice(&(l4_len as u16).to_be_bytes());
            UDP_CSUM_OFFSET
        } else {
            if self.psh {
                ip[ip_hdr + 13] |= TCP_PSH;
            }
            TCP_CSUM_OFFSET
        };
        let at = ip_hdr + csum_offset as usize;
        ip[at..at + 2].copy_from_slice(&pseudo.to_be_bytes());
        VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: match (udp, v6) {
                (true, _) => GSO_UDP_L4,
                (false, false) => GSO_TCPV4,
                (false, true) => GSO_TCPV6,
            },
            hdr_len: self.hdr_len as u16,
            gso_size: self.gso_size as u16,
            csum_start: ip_hdr as u16,
            csum_offset,
        }
        .write(&mut self.header);
        out(Output::Super(Super {
            header: &self.header[..VNET_HDR_LEN + self.hdr_len],
            pieces: &self.pieces[..self.count],
            tag: self.key.tag,
            udp,
            ip_len,
        }))
    }
}

/// The coalescer of one inbound thread: its runs are allocated once, in [`Gro::new`].
pub struct Gro {
    runs: Vec<Run>,
    offloads: Offloads,
    clock: u64,
}

impl Default for Gro {
    fn default() -> Self {
        Gro::new()
    }
}

impl Gro {
    /// A coalescer with TCP and UDP coalescing on.
    pub fn new() -> Gro {
        Gro {
            runs: (0..MAX_RUNS).map(|_| Run::empty()).collect(),
            offloads: Offloads {
                tcp: true,
                udp: true,
            },
            clock: 0,
        }
    }

    pub fn offloads(&self) -> Offloads {
        self.offloads
    }

    /// Which kinds of super-packet to build from now on (runs already open are not affected).
    pub fn set_offloads(&mut self, offloads: Offloads) {
        self.offloads = offloads;
    }

    /// Takes the caller's packet `id` (a whole IP packet, `pkt`, nothing after it) that came from tunnel `tag`;
    /// hands `out` what must be written now, if anything. Packets stay where the caller has them: `out` names
    /// them by `id` and by ranges within them, and the caller must keep every pushed packet in place, unchanged,
    /// until [`flush`](Self::flush) returns.
    ///
    /// # Panics
    /// Never, for any `pkt`.
    pub fn push(&mut self, id: u32, tag: u32, pkt: &[u8], out: &mut impl FnMut(Output<'_>)) {
        match classify(pkt, tag, self.offloads) {
            Kind::Candidate(c) => {
                if let Some(run) = self.runs.iter_mut().find(|r| r.active && r.key == c.key) {
                    if let Some(ids) = run.accepts(pkt, &c) {
                        return run.append(id, pkt, &c, ids);
                    }
                    run.emit(out);
                }
                let free = match self.runs.iter().position(|r| !r.active) {
                    Some(i) => i,
                    None => {
                        let oldest = (0..self.runs.len())
                            .min_by_key(|&i| self.runs[i].started)
                            .unwrap_or(0);
                        self.runs[oldest].emit(out);
                        oldest
                    }
                };
                self.clock += 1;
                let run = &mut self.runs[free];
                run.start(id, pkt, &c, self.clock);
                if run.closed {
                    run.emit(out);
                }
            }
            Kind::Flow(key) => {
                if let Some(run) = self.runs.iter_mut().find(|r| r.active && r.key == key) {
                    run.emit(out);
                }
                out(Output::Single(id));
            }
            Kind::Hosts(key) => {
                for run in self
                    .runs
                    .iter_mut()
                    .filter(|r| r.active && r.key.same_hosts(&key))
                {
                    run.emit(out);
                }
                out(Output::Single(id));
            }
            Kind::Other => out(Output::Single(id)),
        }
    }

    /// Writes every open run, oldest first. Call it at the end of each batch.
    pub fn flush(&mut self, out: &mut impl FnMut(Output<'_>)) {
        while let Some(i) = (0..self.runs.len())
            .filter(|&i| self.runs[i].active)
            .min_by_key(|&i| self.runs[i].started)
        {
            self.runs[i].emit(out);
        }
    }
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Sorts a packet into what [`Gro::push`] does with it. Never panics: every index is checked first.
fn classify(pkt: &[u8], tag: u32, offloads: Offloads) -> Kind {
    let mut key = FlowKey {
        tag,
        v6: false,
        proto: 0,
        addrs: [0; 32],
        ports: [0; 4],
    };
    let (ip_hdr, proto, ip_id, df) = match pkt.first().map(|b| b >> 4) {
        Some(4) if pkt.len() >= 20 => {
            let ihl = (pkt[0] & 0x0f) as usize * 4;
            if ihl < 20 || pkt.len() < ihl || be16(pkt, 2) as usize != pkt.len() {
                return Kind::Other;
            }
            key.addrs[..8].copy_from_slice(&pkt[12..20]);
            let frag = be16(pkt, 6);
            if frag & 0x3fff != 0 {
                // MF or a fragment offset: its transport header, if any, says nothing reliable.
                return Kind::Hosts(key);
            }
            if ihl != 20 {
                // Options: never coalesced, but the flow is known.
                return match ports(pkt, ihl, pkt[9], key) {
                    Some(k) => Kind::Flow(k),
                    None => Kind::Other,
                };
            }
            (ihl, pkt[9], be16(pkt, 4), frag & 0x4000 != 0)
        }
        Some(6) if pkt.len() >= 40 => {
            if 40 + be16(pkt, 4) as usize != pkt.len() {
                return Kind::Other;
            }
            key.v6 = true;
            key.addrs.copy_from_slice(&pkt[8..40]);
            match pkt[6] {
                PROTO_TCP | PROTO_UDP => {}
                // Hop-by-hop, routing, fragment, destination options, AH, ESP, mobility, HIP, shim6: a transport
                // header may hide behind them.
                0 | 43 | 44 | 60 | 51 | 50 | 135 | 139 | 140 => return Kind::Hosts(key),
                _ => return Kind::Other,
            }
            (40, pkt[6], 0, true)
        }
        _ => return Kind::Other,
    };
    let Some(key) = ports(pkt, ip_hdr, proto, key) else {
        return Kind::Other;
    };
    let l4 = &pkt[ip_hdr..];
    let (hdr_len, seq, psh) = if proto == PROTO_TCP {
        let doff = (l4[12] >> 4) as usize * 4;
        let flags = l4[13];
        if !offloads.tcp || doff < 20 || doff > l4.len() || flags & !TCP_PSH != TCP_ACK {
            return Kind::Flow(key);
        }
        let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
        (ip_hdr + doff, seq, flags & TCP_PSH != 0)
    } else {
        if !offloads.udp || be16(l4, 4) as usize != l4.len() || (!key.v6 && be16(l4, 6) == 0) {
            return Kind::Flow(key);
        }
        (ip_hdr + 8, 0, false)
    };
    let payload = pkt.len() - hdr_len;
    if payload == 0
        || hdr_len > MAX_HEADERS
        || fold(sum(pseudo_sum(pkt, key.v6, proto, l4.len()), l4)) != 0xffff
    {
        return Kind::Flow(key);
    }
    Kind::Candidate(Candidate {
        key,
        udp: proto == PROTO_UDP,
        ip_hdr,
        hdr_len,
        payload,
        seq,
        psh,
        ip_id,
        df,
    })
}

/// `key` completed with the protocol and ports of the TCP or UDP header at `pkt[at..]`; `None` for other
/// protocols or a header too short.
fn ports(pkt: &[u8], at: usize, proto: u8, mut key: FlowKey) -> Option<FlowKey> {
    let min = match proto {
        PROTO_TCP => 20,
        PROTO_UDP => 8,
        _ => return None,
    };
    if pkt.len() < at + min {
        return None;
    }
    key.proto = proto;
    key.ports.copy_from_slice(&pkt[at..at + 4]);
    Some(key)
}

/// The pseudo-header sum (RFC 793/768, RFC 8200 8.1) of the IP header at the start of `ip`, unfolded.
fn pseudo_sum(ip: &[u8], v6: bool, proto: u8, l4_len: usize) -> u64 {
    let addrs = if v6 { &ip[8..40] } else { &ip[12..20] };
    sum(proto as u64 + l4_len as u64, addrs)
}

fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

#[cfg(test)]
mod tests;
