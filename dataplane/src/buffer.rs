//! Packet buffers with headroom and tailroom.
//!
//! A packet is read once into a [`PacketBuf`] at offset [`HEADROOM`], so the ESP header and IV can be written in
//! front of it and the padding, trailer and ICV behind it, in place. Inbound, an ESP datagram is received at
//! offset 0 and decrypted in place; the inner packet is then written out from where it lies. No copies between
//! the read and the write.
//!
//! Each data-path thread allocates its buffers once when it starts and reuses them for every packet (no lock, no
//! per-packet allocation). Pools for batches of packets arrive with the fast path (`recvmmsg`/`sendmmsg`).

/// Bytes reserved in front of an inner packet: the ESP header and IV.
pub const HEADROOM: usize = braid_crypto::HEADROOM;
/// The largest inner packet a buffer holds (the largest IP packet).
pub const MAX_PACKET: usize = 65535;
/// Total size of one buffer: headroom, the largest packet, and tailroom for padding, trailer and ICV.
pub const BUF_LEN: usize = HEADROOM + MAX_PACKET + braid_crypto::MAX_TAILROOM + 11;

/// One packet buffer. The bytes are plain storage; the data path tracks which range holds the packet.
pub struct PacketBuf {
    data: Box<[u8]>,
}

impl PacketBuf {
    pub fn new() -> PacketBuf {
        PacketBuf {
            data: vec![0u8; BUF_LEN].into_boxed_slice(),
        }
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.data
    }

    /// The area a TUN read goes into: the virtio-net header just before the headroom's end, then the packet
    /// at [`HEADROOM`].
    pub fn vnet_payload_area(&mut self) -> &mut [u8] {
        &mut self.data[HEADROOM - crate::vnet::VNET_HDR_LEN..HEADROOM + MAX_PACKET]
    }
}

impl Default for PacketBuf {
    fn default() -> Self {
        PacketBuf::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn largest_packet_fits_with_esp_overhead() {
        let mut b = PacketBuf::new();
        assert_eq!(
            b.vnet_payload_area().len(),
            crate::vnet::VNET_HDR_LEN + MAX_PACKET
        );
        const { assert!(BUF_LEN >= HEADROOM + MAX_PACKET + braid_crypto::MAX_TAILROOM) };
        const { assert!(HEADROOM >= crate::vnet::VNET_HDR_LEN) };
    }
}
