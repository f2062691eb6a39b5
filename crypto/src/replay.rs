//! The ESP anti-replay window.
//!
//! Implements the receiver side of RFC 4303 section 3.4.3 (sequence number verification) and
//! Appendix A: A1 (the sliding window for 32-bit sequence numbers) and A2 (extended sequence
//! numbers: inferring the high 32 bits that are not sent on the wire, A2.2, and checking the
//! window against the full 64-bit value, A2.3). The bitmap is laid out as in RFC 6479: blocks
//! of 64 bits in a ring whose length is a power of two, so sliding the window clears whole
//! blocks instead of shifting bits, and a jump of any size costs at most one pass over the ring.
//!
//! The window is split into a pre-authentication [`ReplayWindow::check`], which changes
//! nothing, and a post-authentication [`ReplayWindow::update`], so that forged packets can
//! never move the window (RFC 4303 section 3.4.3: "the receiver MUST update the window only
//! if the integrity verification succeeds").
//!
//! Deliberately left out: the re-synchronisation of A3 after a run of integrity failures
//! that suggests the high-order bits were inferred wrongly (the caller sees the `AuthFailed`
//! count rise; rekeying is the remedy braid uses), and any notion of time.

/// The largest window [`ReplayWindow::new`] honours; larger requests are clamped to it.
///
/// 65536 packets is about 0.8 s of 1400-byte packets at 1 Gbit/s of reordering depth, far
/// more than any path braid expects, and keeps the bitmap at 16 KiB.
pub const MAX_REPLAY_WINDOW: u32 = 65536;

/// Bits per bitmap block.
const BLOCK_BITS: u64 = 64;

/// An anti-replay window of a configurable number of packets.
///
/// `T` in RFC 4303 Appendix A is [`highest`](Self::highest); `W` is [`size`](Self::size).
/// A sequence number `s` is acceptable when `s > T`, or when `T - W < s <= T` and `s` has
/// not been seen. Everything at or below `T - W` is too old.
#[derive(Clone)]
pub struct ReplayWindow {
    /// W: the window size in packets; 0 disables the replay check.
    size: u32,
    /// T: the highest sequence number that passed authentication (0 before the first).
    top: u64,
    /// Ring of blocks; bit `s % 64` of block `(s / 64) & mask` records sequence number `s`.
    /// Empty when the window is disabled.
    bitmap: Box<[u64]>,
    /// `bitmap.len() - 1` (the length is a power of two).
    mask: u64,
}

/// A sequence number the window refuses: zero, a duplicate, or older than the window.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct ReplayError;

impl std::fmt::Display for ReplayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("replayed, too old, or zero ESP sequence number")
    }
}

impl std::error::Error for ReplayError {}

impl ReplayWindow {
    /// A window of `size` packets with nothing seen yet.
    ///
    /// `size` 0 disables anti-replay (RFC 4303 section 3.4.3: then "no inbound checks are
    /// performed on the Sequence Number"): [`check`](Self::check) accepts everything, but
    /// still infers the high-order bits of extended sequence numbers from the highest value
    /// seen. Sizes above [`MAX_REPLAY_WINDOW`] are clamped to it. The bitmap is allocated
    /// here, once: `(ceil(size / 64) + 1).next_power_of_two()` words (e.g. 256 bytes for
    /// 1024 packets, 2 KiB for 8192, 16 KiB for 65536).
    pub fn new(size: u32) -> ReplayWindow {
        let size = size.min(MAX_REPLAY_WINDOW);
        let blocks = if size == 0 {
            0
        } else {
            // A run of `size` consecutive numbers touches at most ceil(size/64) + 1 blocks.
            (size.div_ceil(64) as usize + 1).next_power_of_two()
        };
        ReplayWindow {
            size,
            top: 0,
            bitmap: vec![0u64; blocks].into_boxed_slice(),
            mask: (blocks as u64).saturating_sub(1),
        }
    }

    /// W, the window size in packets (0 when disabled), after clamping.
    pub fn size(&self) -> u32 {
        self.size
    }

    /// T, the highest sequence number marked by [`update`](Self::update) so far (0 initially).
    pub fn highest(&self) -> u64 {
        self.top
    }

    /// The pre-authentication check of a received sequence number.
    ///
    /// `seq_low` is the 32-bit Sequence Number field of the packet. Without ESN it is the
    /// whole sequence number. With ESN the high 32 bits are inferred from T and W as in
    /// RFC 4303 Appendix A2.2: a value inside (or above) the window belongs to T's epoch, a
    /// value below the window is taken to be from the next epoch (the sender wrapped its low
    /// bits); only authentication can tell whether the guess was right, so a genuinely old
    /// packet inferred into the next epoch fails the ICV check instead of this one. When the
    /// window is disabled the inference uses a window of 2^31 (the nearest candidate to T).
    ///
    /// Returns the full 64-bit sequence number to authenticate with (it is part of the AAD
    /// under ESN) and to pass to [`update`](Self::update) once authentication succeeded.
    ///
    /// # Errors
    /// [`ReplayError`] when the (inferred) sequence number is 0, was already seen, or is at or
    /// below `T - W`, or when ESN inference would leave the 64-bit space. Never when the
    /// window is disabled.
    pub fn check(&self, seq_low: u32, esn: bool) -> Result<u64, ReplayError> {
        let disabled = self.size == 0;
        let seq = if esn {
            // A disabled window still needs a span to infer from: take the widest sound one.
            let w = if disabled { 1u32 << 31 } else { self.size };
            match infer_esn(self.top, seq_low, w) {
                Some(seq) => seq,
                // Only possible at the very edges of the 64-bit space; with the check off,
                // fall back to T's own epoch rather than refusing.
                None if disabled => (self.top & !0xffff_ffff) | u64::from(seq_low),
                None => return Err(ReplayError),
            }
        } else {
            u64::from(seq_low)
        };
        if disabled {
            return Ok(seq);
        }
        if seq == 0 {
            return Err(ReplayError);
        }
        if seq > self.top {
            return Ok(seq);
        }
        if self.top - seq >= u64::from(self.size) {
            return Err(ReplayError);
        }
        if self.bit(seq) {
            return Err(ReplayError);
        }
        Ok(seq)
    }

    /// The post-authentication update: marks `seq` as seen and, when `seq > T`, slides the
    /// window so that `seq` becomes T (clearing every block the window moves over; a jump of
    /// more than the window clears the whole bitmap).
    ///
    /// Call it only for packets that passed the integrity check, with the value
    /// [`check`](Self::check) returned. Values that `check` would refuse as too old or zero
    /// are ignored; marking a duplicate again is harmless.
    pub fn update(&mut self, seq: u64) {
        if self.size == 0 {
            self.top = self.top.max(seq);
            return;
        }
        if seq == 0 {
            return;
        }
        if seq > self.top {
            let old_block = self.top / BLOCK_BITS;
            let new_block = seq / BLOCK_BITS;
            // Blocks old_block+1 ..= new_block enter the window and may hold bits from a
            // previous turn of the ring. More than a full ring: every block is stale.
            let stale = (new_block - old_block).min(self.mask + 1);
            for i in 1..=stale {
                let idx = ((old_block + i) & self.mask) as usize;
                if let Some(block) = self.bitmap.get_mut(idx) {
                    *block = 0;
                }
            }
            self.top = seq;
        } else if self.top - seq >= u64::from(self.size) {
            // Outside the window: its block may already stand for newer numbers.
            return;
        }
        let (idx, bit) = self.position(seq);
        if let Some(block) = self.bitmap.get_mut(idx) {
            *block |= bit;
        }
    }

    /// Whether `seq` (which must lie inside the window) is marked as seen.
    fn bit(&self, seq: u64) -> bool {
        let (idx, bit) = self.position(seq);
        self.bitmap.get(idx).is_some_and(|block| block & bit != 0)
    }

    /// Block index and bit mask of `seq` in the ring.
    fn position(&self, seq: u64) -> (usize, u64) {
        (
            ((seq / BLOCK_BITS) & self.mask) as usize,
            1u64 << (seq % BLOCK_BITS),
        )
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("size", &self.size)
            .field("highest", &self.top)
            .finish_non_exhaustive()
    }
}

/// RFC 4303 Appendix A2.2: the 64-bit sequence number for the on-wire low half `seq_low`,
/// given the highest authenticated number `top` (T) and the window size `w` (W, >= 1).
///
/// `None` when the inferred high half would be below 0 or above 2^32 - 1.
fn infer_esn(top: u64, seq_low: u32, w: u32) -> Option<u64> {
    let tl = top as u32;
    let th = (top >> 32) as u32;
    // Bottom of the window, Tl - W + 1, modulo 2^32 (Case B wraps below zero on purpose).
    let bottom = tl.wrapping_sub(w - 1);
    let seq_high = if tl >= w - 1 {
        // Case A: the window lies within one subspace of the low 32 bits.
        if seq_low >= bottom {
            th
        } else {
            th.checked_add(1)?
        }
    } else {
        // Case B: the window spans two subspaces.
        if seq_low >= bottom {
            th.checked_sub(1)?
        } else {
            th
        }
    };
    Some((u64::from(seq_high) << 32) | u64::from(seq_low))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_sizes() {
        assert_eq!(ReplayWindow::new(0).bitmap.len(), 0);
        assert_eq!(ReplayWindow::new(1).bitmap.len(), 2);
        assert_eq!(ReplayWindow::new(64).bitmap.len(), 2);
        assert_eq!(ReplayWindow::new(65).bitmap.len(), 4);
        assert_eq!(ReplayWindow::new(1024).bitmap.len(), 32);
        assert_eq!(ReplayWindow::new(8192).bitmap.len(), 256);
        assert_eq!(ReplayWindow::new(65536).bitmap.len(), 2048);
        assert_eq!(ReplayWindow::new(u32::MAX).size(), MAX_REPLAY_WINDOW);
        assert_eq!(ReplayWindow::new(u32::MAX).bitmap.len(), 2048);
    }

    #[test]
    fn infer_esn_cases() {
        // Case A, T = 2^32 + 1000, W = 64: the window is [2^32 + 937, 2^32 + 1000].
        let t = (1u64 << 32) + 1000;
        assert_eq!(infer_esn(t, 937, 64), Some((1 << 32) + 937));
        assert_eq!(infer_esn(t, 5000, 64), Some((1 << 32) + 5000));
        assert_eq!(infer_esn(t, 936, 64), Some((2 << 32) + 936));
        // Case B, T = 2^32 + 5: the window reaches back into epoch 0.
        let t = (1u64 << 32) + 5;
        assert_eq!(infer_esn(t, u32::MAX, 64), Some(u64::from(u32::MAX)));
        assert_eq!(
            infer_esn(t, u32::MAX - 57, 64),
            Some(u64::from(u32::MAX - 57))
        );
        assert_eq!(
            infer_esn(t, u32::MAX - 58, 64),
            Some((1 << 32) + u64::from(u32::MAX - 58))
        );
        assert_eq!(infer_esn(t, 3, 64), Some((1 << 32) + 3));
        // Case B in epoch 0 has no previous epoch.
        assert_eq!(infer_esn(5, u32::MAX, 64), None);
        assert_eq!(infer_esn(0, 1, 64), Some(1));
        // The last epoch has no next one.
        assert_eq!(infer_esn(u64::MAX - 100, 0, 64), None);
        // W = 1 is a degenerate but valid window.
        assert_eq!(infer_esn(10, 10, 1), Some(10));
        assert_eq!(infer_esn(10, 9, 1), Some((1 << 32) + 9));
    }
}
