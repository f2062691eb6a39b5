//! The anti-replay window (RFC 4303 section 3.4.3, Appendix A) through its public API.

mod common;

use std::collections::BTreeSet;

use braid_crypto::{ReplayError, ReplayWindow, MAX_REPLAY_WINDOW};
use common::Rng;

const SIZES: [u32; 4] = [64, 1024, 8192, 65536];

/// Marks `seq` after a successful check, as `InboundSa::open` does.
fn accept(w: &mut ReplayWindow, seq: u64) {
    assert_eq!(w.check(seq as u32, false), Ok(seq), "check {seq}");
    w.update(seq);
}

#[test]
fn start_of_the_sa() {
    for size in SIZES {
        let mut w = ReplayWindow::new(size);
        assert_eq!(w.size(), size);
        assert_eq!(w.highest(), 0);
        assert_eq!(w.check(0, false), Err(ReplayError));
        assert_eq!(w.check(0, true), Err(ReplayError));
        assert_eq!(w.check(1, false), Ok(1));
        assert_eq!(w.check(1, true), Ok(1));
        w.update(1);
        assert_eq!(w.highest(), 1);
        assert_eq!(w.check(1, false), Err(ReplayError));
        assert_eq!(w.check(0, false), Err(ReplayError));
        assert_eq!(w.check(2, false), Ok(2));
        // Out of order at the start: 5 then 3, 4, 2.
        accept(&mut w, 5);
        for s in [3, 4, 2] {
            accept(&mut w, s);
        }
        for s in 1..=5 {
            assert_eq!(w.check(s, false), Err(ReplayError), "dup {s}");
        }
        // update(0) is ignored.
        w.update(0);
        assert_eq!(w.highest(), 5);
    }
}

#[test]
fn edges_of_the_window() {
    for size in SIZES {
        let size64 = u64::from(size);
        let mut w = ReplayWindow::new(size);
        let top = 3 * size64 + 17;
        accept(&mut w, top);
        // T - W + 1 is the oldest acceptable number, T - W the newest refused one.
        assert_eq!(
            w.check((top - size64 + 1) as u32, false),
            Ok(top - size64 + 1)
        );
        assert_eq!(w.check((top - size64) as u32, false), Err(ReplayError));
        assert_eq!(w.check(1, false), Err(ReplayError));
        accept(&mut w, top - size64 + 1);
        assert_eq!(w.check((top - size64 + 1) as u32, false), Err(ReplayError));
        // Every unseen number in the window is still acceptable.
        for s in top - size64 + 2..top {
            assert_eq!(w.check(s as u32, false), Ok(s), "size {size} seq {s}");
        }
        assert_eq!(w.check(top as u32, false), Err(ReplayError));
        // Sliding by one moves both edges by one.
        accept(&mut w, top + 1);
        assert_eq!(w.check((top - size64 + 1) as u32, false), Err(ReplayError));
        assert_eq!(
            w.check((top - size64 + 2) as u32, false),
            Ok(top - size64 + 2)
        );
    }
}

#[test]
fn sliding_keeps_the_seen_bits() {
    for size in SIZES {
        let mut w = ReplayWindow::new(size);
        // Every third number, for four windows' worth, arriving in order.
        let end = 4 * u64::from(size);
        for s in (1..=end).step_by(3) {
            accept(&mut w, s);
        }
        let top = w.highest();
        for s in top.saturating_sub(u64::from(size) - 1).max(1)..=top {
            let want = if (s - 1) % 3 == 0 {
                Err(ReplayError)
            } else {
                Ok(s)
            };
            assert_eq!(w.check(s as u32, false), want, "size {size} seq {s}");
        }
    }
}

#[test]
fn far_jumps_clear_the_bitmap() {
    for size in SIZES {
        let size64 = u64::from(size);
        // Jumps below, at and above the window and the bitmap's ring length, including
        // multiples of the ring length where stale bits would alias exactly.
        for jump in [
            1,
            63,
            64,
            65,
            size64 - 1,
            size64,
            size64 + 1,
            2 * size64,
            2 * size64 + 64,
            4 * size64,
            1 << 20,
            (1 << 31) + 5,
        ] {
            let mut w = ReplayWindow::new(size);
            let base = 10 * size64;
            // Fill the whole window below `base`.
            for s in base - size64 + 1..=base {
                w.update(s);
            }
            for s in base - size64 + 1..=base {
                assert_eq!(w.check(s as u32, false), Err(ReplayError));
            }
            let top = base + jump;
            accept(&mut w, top);
            // In the new window, exactly the numbers marked before are refused.
            let lo = top - size64 + 1;
            for s in lo..top {
                let want = if s <= base { Err(ReplayError) } else { Ok(s) };
                assert_eq!(
                    w.check(s as u32, false),
                    want,
                    "size {size} jump {jump} seq {s}"
                );
            }
            // Everything older than the new window is refused.
            for s in [lo - 1, base - size64 + 1, 1] {
                if s < lo {
                    assert_eq!(w.check(s as u32, false), Err(ReplayError));
                }
            }
            assert_eq!(w.check(top as u32, false), Err(ReplayError));
        }
    }
}

#[test]
fn matches_a_reference_model() {
    // Random arrivals (in order, reordered, duplicated, far ahead, far behind) against the
    // definition: acceptable iff seq != 0 and (seq > T or (T - seq < W and unseen)).
    let mut rng = Rng::new(6479);
    for size in [1u32, 2, 63, 64, 65, 100, 1024, 8192] {
        let mut w = ReplayWindow::new(size);
        let mut seen = BTreeSet::new();
        let mut top = 0u64;
        for _ in 0..20_000 {
            let span = u64::from(size) * 2 + 10;
            let seq = match rng.range(0, 9) {
                0 => top + 1,
                1 => top + rng.range(1, 4 * span),
                2 => top + rng.range(1, 200 * u64::from(size)),
                3 => top.saturating_sub(rng.range(0, 3)),
                _ => top.saturating_sub(rng.range(0, span)),
            }
            .min(u64::from(u32::MAX));
            let expect_ok =
                seq != 0 && (seq > top || (top - seq < u64::from(size) && !seen.contains(&seq)));
            let got = w.check(seq as u32, false);
            assert_eq!(got.is_ok(), expect_ok, "size {size} T {top} seq {seq}");
            // Authentication "succeeds" for most accepted packets.
            if got.is_ok() && rng.range(0, 9) != 0 {
                w.update(seq);
                seen.insert(seq);
                top = top.max(seq);
            }
            assert_eq!(w.highest(), top);
        }
    }
}

#[test]
fn esn_wraps_into_the_high_bits() {
    for size in [64u32, 1024, 8192] {
        let size64 = u64::from(size);
        let wrap = 1u64 << 32;
        let mut w = ReplayWindow::new(size);
        let top = wrap - 10;
        w.update(top);
        // Case A: small low values are the next epoch, values in the window this one.
        assert_eq!(w.check(5, true), Ok(wrap + 5));
        assert_eq!(w.check(0, true), Ok(wrap));
        assert_eq!(w.check((top - 1) as u32, true), Ok(top - 1));
        assert_eq!(w.check(top as u32, true), Err(ReplayError));
        assert_eq!(w.check((wrap - 1) as u32, true), Ok(wrap - 1));
        // Without ESN the same low values are just old.
        assert_eq!(w.check(5, false), Err(ReplayError));
        assert_eq!(w.check(0, false), Err(ReplayError));

        // Cross the wrap: T = 2^32 + 5, the window now spans both epochs (Case B).
        w.update(wrap + 5);
        assert_eq!(w.highest(), wrap + 5);
        let bottom = wrap + 5 - size64 + 1;
        assert_eq!(w.check(bottom as u32, true), Ok(bottom));
        assert_eq!(w.check((wrap - 1) as u32, true), Ok(wrap - 1));
        assert_eq!(
            w.check(top as u32, true),
            Err(ReplayError),
            "seen before the wrap"
        );
        assert_eq!(w.check(3, true), Ok(wrap + 3));
        assert_eq!(w.check(5, true), Err(ReplayError));
        assert_eq!(w.check(6, true), Ok(wrap + 6));
        // Just below the window: inferred as the next epoch's (it cannot be told apart from
        // a packet 2^32 ahead), so authentication, not the window, refuses it.
        assert_eq!(w.check((bottom - 1) as u32, true), Ok(wrap + bottom - 1));
        assert_eq!(w.check(0, true), Ok(wrap));
        // Seq 2^32 has low bits 0 and is a perfectly good number.
        w.update(wrap);
        assert_eq!(w.check(0, true), Err(ReplayError));

        // Far into the new epoch, a low value from the end of the old epoch now reads as
        // the end of this one.
        w.update(wrap + 10 * size64);
        assert_eq!(w.check(u32::MAX, true), Ok(wrap + u64::from(u32::MAX)));
        assert_eq!(
            w.check((wrap + 10 * size64 - 1) as u32, true),
            Ok(wrap + 10 * size64 - 1)
        );
    }
}

#[test]
fn esn_at_the_very_start_and_end() {
    let mut w = ReplayWindow::new(64);
    // Epoch 0, T = 0: low values near 2^32 would be from epoch -1, which does not exist.
    assert_eq!(w.check(u32::MAX, true), Err(ReplayError));
    assert_eq!(w.check(u32::MAX - 62, true), Err(ReplayError));
    assert_eq!(w.check(u32::MAX - 63, true), Ok(u64::from(u32::MAX - 63)));
    // The last epoch has no successor.
    w.update(u64::MAX - 1000);
    assert_eq!(w.check(5, true), Err(ReplayError));
    assert_eq!(w.check(u32::MAX, true), Ok(u64::MAX));
    w.update(u64::MAX);
    assert_eq!(w.check(u32::MAX, true), Err(ReplayError));
    assert_eq!(w.highest(), u64::MAX);
}

#[test]
fn disabled_window() {
    let mut w = ReplayWindow::new(0);
    assert_eq!(w.size(), 0);
    for _ in 0..3 {
        assert_eq!(w.check(0, false), Ok(0));
        assert_eq!(w.check(1, false), Ok(1));
        w.update(1);
    }
    w.update(1000);
    w.update(10);
    assert_eq!(w.highest(), 1000);
    assert_eq!(w.check(1000, false), Ok(1000));
    assert_eq!(w.check(1, false), Ok(1));
    // ESN inference still works, picking the candidate nearest to T.
    let wrap = 1u64 << 32;
    w.update(wrap - 10);
    assert_eq!(w.check(5, true), Ok(wrap + 5));
    assert_eq!(w.check(u32::MAX - 100, true), Ok(u64::from(u32::MAX - 100)));
    assert_eq!(w.check(7, false), Ok(7));
    w.update(wrap + 5);
    assert_eq!(w.check(u32::MAX - 100, true), Ok(u64::from(u32::MAX - 100)));
    assert_eq!(w.check(100, true), Ok(wrap + 100));
    assert_eq!(w.check(1, true), Ok(wrap + 1));
    // At the bottom of the space there is no previous epoch: stay in T's.
    let w = ReplayWindow::new(0);
    assert_eq!(w.check(u32::MAX, true), Ok(u64::from(u32::MAX)));
}

#[test]
fn sizes_are_clamped() {
    assert_eq!(
        ReplayWindow::new(MAX_REPLAY_WINDOW).size(),
        MAX_REPLAY_WINDOW
    );
    assert_eq!(
        ReplayWindow::new(MAX_REPLAY_WINDOW + 1).size(),
        MAX_REPLAY_WINDOW
    );
    assert_eq!(ReplayWindow::new(u32::MAX).size(), MAX_REPLAY_WINDOW);
    assert_eq!(ReplayWindow::new(1).size(), 1);
    let mut w = ReplayWindow::new(1);
    accept(&mut w, 10);
    assert_eq!(w.check(9, false), Err(ReplayError));
    assert_eq!(w.check(10, false), Err(ReplayError));
    assert_eq!(w.check(11, false), Ok(11));
}
