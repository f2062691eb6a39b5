//! The virtio-net header (`struct virtio_net_hdr`, virtio 1.x section 5.1.6) that the TUN device puts in front
//! of every packet once it is opened with `IFF_VNET_HDR`.
//!
//! It is how the kernel and braid hand each other offload work: on a read, a TCP or UDP "super-packet" of up to
//! 64 KiB that still has to be cut into `gso_size` segments (`gso_type`), and a checksum still to be completed
//! (`NEEDS_CSUM` with `csum_start`/`csum_offset`); on a write, the same for a coalesced packet going up the
//! stack. With no offloads enabled (`TUNSETOFFLOAD` 0) every read carries a zero header and a finished packet,
//! and a write may carry a zero header.
//!
//! Layout (10 octets, host byte order on a TUN device without `TUNSETVNETLE`/`BE`):
//! `flags: u8, gso_type: u8, hdr_len: u16, gso_size: u16, csum_start: u16, csum_offset: u16`.

/// Octets of the header braid uses (the legacy header, the TUN default `vnet_hdr_sz`).
pub const VNET_HDR_LEN: usize = 10;

/// `flags`: the checksum at `csum_start + csum_offset` must still be completed over `csum_start..`.
pub const F_NEEDS_CSUM: u8 = 1;
/// `flags`: the checksums are known to be good (receive side).
pub const F_DATA_VALID: u8 = 2;

/// `gso_type`: a finished packet.
pub const GSO_NONE: u8 = 0;
/// `gso_type`: an IPv4 TCP super-packet.
pub const GSO_TCPV4: u8 = 1;
/// `gso_type`: IPv4 UDP fragmentation offload (UFO; braid never enables it).
pub const GSO_UDP: u8 = 3;
/// `gso_type`: an IPv6 TCP super-packet.
pub const GSO_TCPV6: u8 = 4;
/// `gso_type`: a UDP super-packet cut into datagrams of `gso_size` (USO, kernel 6.2+).
pub const GSO_UDP_L4: u8 = 5;
/// `gso_type` flag: the TCP segments carry ECN (CWR only on the first).
pub const GSO_ECN: u8 = 0x80;

/// One decoded virtio-net header.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct VnetHdr {
    pub flags: u8,
    pub gso_type: u8,
    /// Length of the headers (IP + transport) of a super-packet; a hint only, never trusted.
    pub hdr_len: u16,
    /// Payload octets per segment of a super-packet.
    pub gso_size: u16,
    pub csum_start: u16,
    pub csum_offset: u16,
}

impl VnetHdr {
    /// Decodes the header at the start of `buf`; `None` if `buf` is shorter than [`VNET_HDR_LEN`].
    pub fn parse(buf: &[u8]) -> Option<VnetHdr> {
        let b = buf.get(..VNET_HDR_LEN)?;
        let u16_at = |i: usize| u16::from_ne_bytes([b[i], b[i + 1]]);
        Some(VnetHdr {
            flags: b[0],
            gso_type: b[1],
            hdr_len: u16_at(2),
            gso_size: u16_at(4),
            csum_start: u16_at(6),
            csum_offset: u16_at(8),
        })
    }

    /// Encodes the header into the first [`VNET_HDR_LEN`] octets of `buf` (which must be that long).
    pub fn write(&self, buf: &mut [u8]) {
        let b = &mut buf[..VNET_HDR_LEN];
        b[0] = self.flags;
        b[1] = self.gso_type;
        b[2..4].copy_from_slice(&self.hdr_len.to_ne_bytes());
        b[4..6].copy_from_slice(&self.gso_size.to_ne_bytes());
        b[6..8].copy_from_slice(&self.csum_start.to_ne_bytes());
        b[8..10].copy_from_slice(&self.csum_offset.to_ne_bytes());
    }

    /// The GSO type without the ECN flag.
    pub fn gso_kind(&self) -> u8 {
        self.gso_type & !GSO_ECN
    }

    /// Whether this is a finished packet: no segmentation and no checksum left to do.
    pub fn is_plain(&self) -> bool {
        self.gso_kind() == GSO_NONE && self.flags & F_NEEDS_CSUM == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let h = VnetHdr {
            flags: F_NEEDS_CSUM,
            gso_type: GSO_TCPV4 | GSO_ECN,
            hdr_len: 54,
            gso_size: 1388,
            csum_start: 34,
            csum_offset: 16,
        };
        let mut b = [0u8; VNET_HDR_LEN];
        h.write(&mut b);
        assert_eq!(VnetHdr::parse(&b), Some(h));
        assert_eq!(h.gso_kind(), GSO_TCPV4);
        assert!(!h.is_plain());
        assert!(VnetHdr::parse(&b[..9]).is_none());
        assert!(VnetHdr::default().is_plain());
    }
}
