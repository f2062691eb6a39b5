//! The per-uplink egress cap: a token bucket with a short queue, shared by the outbound workers without a lock.
//!
//! A [`TokenBucket`] fills at the uplink's cap (`rate_bps`) up to `burst_bytes`. [`TokenBucket::admit`] asks
//! it, for each packet and at time `now`, what to do: [`Admit::Send`] now, [`Admit::Delay`] — hold the packet
//! and send it after the given wait — or [`Admit::Drop`]. A delayed packet takes its tokens at once (the
//! bucket goes into debt), so the packets behind it wait their turn after it, as in a FIFO queue that never
//! holds a packet longer than `max_queue_delay` (default [`DEFAULT_MAX_QUEUE_DELAY`]); a packet that would
//! wait longer is dropped and the caller counts a cap drop. Over any interval the bytes released never exceed
//! `burst_bytes + rate * interval`: this is what keeps a 250 Mbit/s line from being saturated by an
//! active/active spread, so the ISP's own queue (and its drops) stay out of the path.
//!
//! The bucket is kept as the generic cell rate algorithm's "theoretical arrival time" (GCRA, ITU-T I.371): the
//! time at which the bucket would be full again, one atomic word. Admitting a packet moves it forward by the
//! packet's time at the rate, in one compare-and-swap, so every outbound worker admits through `&self`,
//! lock-free; the verdicts are exactly a token bucket's (tokens = `burst - (tat - now) * rate`). Time is kept
//! in sixteenths of a nanosecond since the bucket was made (36 years fit), so the rounding of one packet's
//! time is below 0.1 ns.
//!
//! [`TokenBucket::headroom`] says how much of the cap went unused over about the last
//! [`HEADROOM_WINDOW`], so new flows can prefer members whose uplink has room; its window counters are
//! atomics too (an estimate: a rotation that races with an admission may put that packet in either window).
//! [`parse_rate`] reads caps as written in the configuration ("250Mbit", "1.5Gbit").
//!
//! Time is passed in; nothing here reads a clock.
//!
//! Left out: the queue itself (the caller holds delayed packets in its own buffers), and per-flow fairness
//! inside the queue.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// How long a packet may wait for tokens before it is dropped instead.
pub const DEFAULT_MAX_QUEUE_DELAY: Duration = Duration::from_millis(5);

/// The span over which [`TokenBucket::headroom`] measures the rate sent.
pub const HEADROOM_WINDOW: Duration = Duration::from_millis(100);

const NANOS_PER_SECOND: u128 = 1_000_000_000;
/// Time units per nanosecond.
const UNITS_PER_NANO: u128 = 16;

/// What the caller does with a packet.
#[must_use]
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Admit {
    /// Tokens were available: send it now.
    Send,
    /// Send it after this wait (at most the bucket's `max_queue_delay`); its tokens are already taken.
    Delay(Duration),
    /// Over the queue budget: drop it and count a cap drop on the uplink.
    Drop,
}

/// A token bucket shaping one uplink's egress to `rate_bps` with bursts of up to `burst_bytes`.
#[derive(Debug)]
pub struct TokenBucket {
    rate_bps: u64,
    burst_bytes: u64,
    max_queue_delay: Duration,
    /// Where the bucket's time starts.
    origin: Instant,
    /// `burst_bytes` and `max_queue_delay` in time units.
    burst_units: u64,
    max_delay_units: u64,
    /// GCRA's theoretical arrival time, in units since `origin`: at or before now, the bucket is full.
    tat: AtomicU64,
    /// With a rate of 0: what is left of the one burst.
    left: AtomicU64,
    /// Sliding-window estimate of the rate admitted: bytes admitted in the current window (which began at
    /// `window_start`, nanoseconds since `origin`) and in the one before it.
    window_start: AtomicU64,
    window_bytes: AtomicU64,
    previous_window_bytes: AtomicU64,
}

impl TokenBucket {
    /// A full bucket filling at `rate_bps` bits per second up to `burst_bytes`, as of `now`. A rate of 0 lets
    /// through nothing but the first burst.
    pub fn new(rate_bps: u64, burst_bytes: u64, now: Instant) -> Self {
        let mut bucket = TokenBucket {
            rate_bps,
            burst_bytes,
            max_queue_delay: DEFAULT_MAX_QUEUE_DELAY,
            origin: now,
            burst_units: 0,
            max_delay_units: 0,
            tat: AtomicU64::new(0),
            left: AtomicU64::new(burst_bytes),
            window_start: AtomicU64::new(0),
            window_bytes: AtomicU64::new(0),
            previous_window_bytes: AtomicU64::new(0),
        };
        bucket.burst_units = bucket.units_of(burst_bytes);
        bucket.max_delay_units = Self::units(bucket.max_queue_delay);
        bucket
    }

    /// Sets how long a packet may wait for tokens before it is dropped instead (0: never wait).
    pub fn with_max_queue_delay(mut self, max_queue_delay: Duration) -> Self {
        self.max_queue_delay = max_queue_delay;
        self.max_delay_units = Self::units(max_queue_delay);
        self
    }

    pub fn rate_bps(&self) -> u64 {
        self.rate_bps
    }

    pub fn burst_bytes(&self) -> u64 {
        self.burst_bytes
    }

    pub fn max_queue_delay(&self) -> Duration {
        self.max_queue_delay
    }

    /// Decides what to do at `now` with a packet of `bytes` (its length on the wire, as the cap counts it).
    /// Times before the bucket was made count as that time; a clock that steps back only makes the bucket
    /// stricter. Lock-free: safe to call from every worker at once.
    pub fn admit(&self, now: Instant, bytes: usize) -> Admit {
        let bytes = bytes as u64;
        if self.rate_bps == 0 {
            let verdict = match self
                .left
                .fetch_update(Relaxed, Relaxed, |l| l.checked_sub(bytes))
            {
                Ok(_) => Admit::Send,
                Err(_) => Admit::Drop,
            };
            if verdict == Admit::Send {
                self.count(now, bytes);
            }
            return verdict;
        }
        let now_units = Self::units(now.saturating_duration_since(self.origin));
        let cost = self.units_of(bytes);
        let mut tat = self.tat.load(Relaxed);
        loop {
            let new = tat.max(now_units).saturating_add(cost);
            // How far the bucket would then be from full, in time at the rate.
            let ahead = new - now_units;
            let verdict = if ahead <= self.burst_units {
                Admit::Send
            } else {
                let wait = ahead - self.burst_units;
                if wait > self.max_delay_units {
                    return Admit::Drop;
                }
                let nanos =
                    u64::try_from(u128::from(wait).div_ceil(UNITS_PER_NANO)).unwrap_or(u64::MAX);
                Admit::Delay(Duration::from_nanos(nanos))
            };
            match self.tat.compare_exchange_weak(tat, new, Relaxed, Relaxed) {
                Ok(_) => {
                    self.count(now, bytes);
                    return verdict;
                }
                Err(current) => tat = current,
            }
        }
    }

    /// The fraction of the cap unused over about the last [`HEADROOM_WINDOW`] before `now`: 1.0 when idle,
    /// 0.0 at or over the cap.
    pub fn headroom(&self, now: Instant) -> f64 {
        if self.rate_bps == 0 {
            return 0.0;
        }
        let (into, current, previous) = self.windows_at(now);
        let window = HEADROOM_WINDOW.as_nanos() as f64;
        // The sliding window [now - W, now]: all of the current window and the part of the previous one
        // still inside it, assuming it was sent evenly.
        let bytes = current as f64 + previous as f64 * (1.0 - into.as_nanos() as f64 / window);
        let rate = bytes * 8.0 * 1e9 / window;
        (1.0 - rate / self.rate_bps as f64).clamp(0.0, 1.0)
    }

    /// A span in time units (saturating).
    fn units(d: Duration) -> u64 {
        u64::try_from(d.as_nanos().saturating_mul(UNITS_PER_NANO)).unwrap_or(u64::MAX)
    }

    /// The time `bytes` take at the rate, in units, rounded up (saturating; the rate is not 0).
    fn units_of(&self, bytes: u64) -> u64 {
        if self.rate_bps == 0 {
            return u64::MAX;
        }
        let numerator = u128::from(bytes) * 8 * NANOS_PER_SECOND * UNITS_PER_NANO;
        u64::try_from(numerator.div_ceil(u128::from(self.rate_bps))).unwrap_or(u64::MAX)
    }

    fn nanos_since_origin(&self, now: Instant) -> u64 {
        u64::try_from(now.saturating_duration_since(self.origin).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The sliding-window counters as of `now`: time into the current window, its bytes, the previous one's.
    fn windows_at(&self, now: Instant) -> (Duration, u64, u64) {
        let start = self.window_start.load(Relaxed);
        let elapsed = Duration::from_nanos(self.nanos_since_origin(now).saturating_sub(start));
        if elapsed < HEADROOM_WINDOW {
            (
                elapsed,
                self.window_bytes.load(Relaxed),
                self.previous_window_bytes.load(Relaxed),
            )
        } else if elapsed < 2 * HEADROOM_WINDOW {
            (
                elapsed - HEADROOM_WINDOW,
                0,
                self.window_bytes.load(Relaxed),
            )
        } else {
            (Duration::ZERO, 0, 0)
        }
    }

    fn count(&self, now: Instant, bytes: u64) {
        let now = self.nanos_since_origin(now);
        let window = HEADROOM_WINDOW.as_nanos() as u64;
        let start = self.window_start.load(Relaxed);
        let elapsed = now.saturating_sub(start);
        if elapsed >= window {
            // One admission rotates the windows (the one whose swap of the start wins).
            let (new_start, keep) = if elapsed >= 2 * window {
                (now, false)
            } else {
                (start + window, true)
            };
            if self
                .window_start
                .compare_exchange(start, new_start, Relaxed, Relaxed)
                .is_ok()
            {
                let current = self.window_bytes.swap(0, Relaxed);
                self.previous_window_bytes
                    .store(if keep { current } else { 0 }, Relaxed);
            }
        }
        self.window_bytes.fetch_add(bytes, Relaxed);
    }
}

/// Parses a cap such as "250Mbit", "1Gbit", "1.5Gbit", "800kbit" or "100 Mbit" into bits per second.
///
/// Units are decimal (k = 10^3, M = 10^6, G = 10^9, T = 10^12), case-insensitive, and must be given: "bit",
/// "kbit", "Mbit", "Gbit" or "Tbit" (also "bps", "kbps", ... for bits per second). The result must be a
/// whole number of bits per second above zero.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let s = text.trim();
    let fail = |why: &str| Err(format!("invalid rate {text:?}: {why}"));
    let number_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = (&s[..number_end], s[number_end..].trim_start());
    if number.is_empty() {
        return fail("expected a number followed by a unit, e.g. \"250Mbit\"");
    }
    let multiplier: u128 = match unit.to_ascii_lowercase().as_str() {
        "" => return fail("missing unit (bit, kbit, Mbit, Gbit or Tbit), e.g. \"250Mbit\""),
        "bit" | "bps" => 1,
        "kbit" | "kbps" => 1_000,
        "mbit" | "mbps" => 1_000_000,
        "gbit" | "gbps" => 1_000_000_000,
        "tbit" | "tbps" => 1_000_000_000_000,
        "b" | "kb" | "mb" | "gb" | "tb" | "byte" | "kbyte" | "mbyte" | "gbyte" => {
            return fail("caps are in bits per second: write e.g. \"Mbit\", not bytes")
        }
        _ => return fail("unknown unit; use bit, kbit, Mbit, Gbit or Tbit"),
    };
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return fail("not a number");
    }
    if fraction.len() > 12 {
        return fail("too many decimal places");
    }
    let digits = |d: &str| -> Option<u128> {
        if d.is_empty() {
            Some(0)
        } else {
            d.parse::<u128>().ok()
        }
    };
    let (Some(whole), Some(fraction_value)) = (digits(whole), digits(fraction)) else {
        return fail("not a number");
    };
    let scale = 10u128.pow(fraction.len() as u32);
    let bits = whole
        .checked_mul(multiplier)
        .and_then(|w| w.checked_add(fraction_value * multiplier / scale))
        .filter(|&b| b <= u64::MAX as u128);
    let Some(bits) = bits else {
        return fail("too large");
    };
    if (fraction_value * multiplier) % scale != 0 {
        return fail("not a whole number of bits per second");
    }
    if bits == 0 {
        return fail("a cap must be above zero");
    }
    Ok(bits as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MBIT: u64 = 1_000_000;

    /// A virtual clock: a fixed base instant plus simulated nanoseconds.
    struct Clock(Instant);

    impl Clock {
        fn at(&self, nanos: u64) -> Instant {
            self.0 + Duration::from_nanos(nanos)
        }
    }

    #[test]
    fn flood_at_twice_the_rate_is_held_to_the_rate() {
        let clock = Clock(Instant::now());
        let rate = 250 * MBIT;
        let burst = 64 * 1024;
        let bucket = TokenBucket::new(rate, burst, clock.at(0));
        let packet = 1400usize;
        // Packets arriving at twice the rate for 10 simulated seconds.
        let interval = (packet as u64 * 8) * 1_000_000_000 / (2 * rate);
        let seconds = 10;
        let end = seconds * 1_000_000_000;
        let (mut sent, mut dropped, mut delayed) = (0u64, 0u64, 0u64);
        // Release times of the admitted packets, to check the cap holds over every span.
        let mut releases: Vec<(u64, u64)> = Vec::new();
        let mut t = 0;
        while t < end {
            match bucket.admit(clock.at(t), packet) {
                Admit::Send => {
                    sent += packet as u64;
                    releases.push((t, packet as u64));
                }
                Admit::Delay(wait) => {
                    assert!(wait <= DEFAULT_MAX_QUEUE_DELAY);
                    sent += packet as u64;
                    delayed += 1;
                    releases.push((t + wait.as_nanos() as u64, packet as u64));
                }
                Admit::Drop => dropped += packet as u64,
            }
            t += interval;
        }
        let cap = rate / 8 * seconds;
        let ratio = sent as f64 / cap as f64;
        assert!(
            (ratio - 1.0).abs() < 0.01,
            "sent {sent} bytes, cap {cap}: {ratio:.4}"
        );
        let offered = sent + dropped;
        assert!(
            (dropped as f64 / offered as f64 - 0.5).abs() < 0.01,
            "dropped {dropped} of {offered}"
        );
        assert!(delayed > 0);
        // Releases happen in order (FIFO), and never faster than burst + rate * span from the start.
        let mut released = 0u64;
        let mut last = 0;
        for &(at, bytes) in &releases {
            assert!(at >= last);
            last = at;
            released += bytes;
            let allowed = burst as u128 + at as u128 * rate as u128 / 8 / 1_000_000_000;
            assert!(released as u128 <= allowed, "{released} bytes by {at} ns");
        }
        // Saturated: no headroom.
        assert!(bucket.headroom(clock.at(end)) < 0.02);
    }

    #[test]
    fn bursts_up_to_burst_bytes_pass_at_once() {
        let clock = Clock(Instant::now());
        let bucket = TokenBucket::new(100 * MBIT, 15_000, clock.at(0));
        for _ in 0..10 {
            assert_eq!(bucket.admit(clock.at(0), 1500), Admit::Send);
        }
        // The 11th waits the time 1500 bytes take at 100 Mbit/s: 120 us.
        assert_eq!(
            bucket.admit(clock.at(0), 1500),
            Admit::Delay(Duration::from_micros(120))
        );
        // The next one waits behind it.
        assert_eq!(
            bucket.admit(clock.at(0), 1500),
            Admit::Delay(Duration::from_micros(240))
        );
        // With no queue, the packet over the burst is dropped.
        let strict =
            TokenBucket::new(100 * MBIT, 15_000, clock.at(0)).with_max_queue_delay(Duration::ZERO);
        for _ in 0..10 {
            assert_eq!(strict.admit(clock.at(0), 1500), Admit::Send);
        }
        assert_eq!(strict.admit(clock.at(0), 1500), Admit::Drop);
        // 120 us later there are tokens for exactly one more.
        assert_eq!(strict.admit(clock.at(120_000), 1500), Admit::Send);
        assert_eq!(strict.admit(clock.at(120_000), 1500), Admit::Drop);
    }

    #[test]
    fn the_queue_budget_bounds_the_wait() {
        let clock = Clock(Instant::now());
        // 8 Mbit/s = 1 byte per microsecond; no burst; 5 ms of queue = 5000 bytes.
        let bucket = TokenBucket::new(8 * MBIT, 0, clock.at(0));
        assert_eq!(
            bucket.admit(clock.at(0), 1000),
            Admit::Delay(Duration::from_micros(1000))
        );
        for i in 2..=5 {
            assert_eq!(
                bucket.admit(clock.at(0), 1000),
                Admit::Delay(Duration::from_micros(1000 * i))
            );
        }
        assert_eq!(bucket.admit(clock.at(0), 1), Admit::Drop);
        // A millisecond later, a millisecond's worth of queue has drained.
        assert_eq!(
            bucket.admit(clock.at(1_000_000), 1000),
            Admit::Delay(Duration::from_micros(5000))
        );
        assert_eq!(bucket.admit(clock.at(1_000_000), 1000), Admit::Drop);
    }

    #[test]
    fn idle_periods_refill_to_burst_only() {
        let clock = Clock(Instant::now());
        let bucket =
            TokenBucket::new(100 * MBIT, 15_000, clock.at(0)).with_max_queue_delay(Duration::ZERO);
        for _ in 0..10 {
            assert_eq!(bucket.admit(clock.at(0), 1500), Admit::Send);
        }
        // An hour idle fills the bucket to 15,000 bytes, not more.
        let later = 3_600 * 1_000_000_000;
        for _ in 0..10 {
            assert_eq!(bucket.admit(clock.at(later), 1500), Admit::Send);
        }
        assert_eq!(bucket.admit(clock.at(later), 1500), Admit::Drop);
        // A clock that steps back is treated as no time passing.
        assert_eq!(bucket.admit(clock.at(0), 1500), Admit::Drop);
        assert_eq!(bucket.headroom(clock.at(later * 2)), 1.0);
    }

    #[test]
    fn headroom_tracks_the_recent_rate() {
        let clock = Clock(Instant::now());
        let rate = 100 * MBIT;
        let bucket = TokenBucket::new(rate, 100_000, clock.at(0));
        assert_eq!(bucket.headroom(clock.at(0)), 1.0);
        // Send at 25% of the cap for a second: 1250-byte packets every 400 us.
        let mut t = 0;
        while t < 1_000_000_000 {
            assert_eq!(bucket.admit(clock.at(t), 1250), Admit::Send);
            t += 400_000;
        }
        let h = bucket.headroom(clock.at(t));
        assert!((h - 0.75).abs() < 0.02, "headroom {h}");
        // Half a window of silence halves the measured rate; two windows clear it.
        let h = bucket.headroom(clock.at(t + 50_000_000));
        assert!((h - 0.875).abs() < 0.03, "headroom {h}");
        assert_eq!(bucket.headroom(clock.at(t + 200_000_000)), 1.0);
        assert_eq!(
            TokenBucket::new(0, 0, clock.at(0)).headroom(clock.at(0)),
            0.0
        );
    }

    #[test]
    fn workers_admitting_at_once_share_one_bucket_exactly() {
        let clock = Clock(Instant::now());
        // 100 Mbit/s, 15,000 bytes of burst, 5 ms of queue: 10 packets of 1500 now and 41 more delayed (41 x
        // 120 us = 4.92 ms), however four threads interleave.
        let bucket = std::sync::Arc::new(TokenBucket::new(100 * MBIT, 15_000, clock.at(0)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (bucket, at) = (bucket.clone(), clock.at(0));
                std::thread::spawn(move || {
                    let mut v = (0, 0, 0);
                    for _ in 0..1000 {
                        match bucket.admit(at, 1500) {
                            Admit::Send => v.0 += 1,
                            Admit::Delay(_) => v.1 += 1,
                            Admit::Drop => v.2 += 1,
                        }
                    }
                    v
                })
            })
            .collect();
        let (mut sent, mut delayed) = (0, 0);
        for t in threads {
            let (s, d, _) = t.join().unwrap();
            sent += s;
            delayed += d;
        }
        assert_eq!((sent, delayed), (10, 41));
    }

    #[test]
    fn zero_rate_passes_only_the_burst() {
        let clock = Clock(Instant::now());
        let bucket = TokenBucket::new(0, 3000, clock.at(0));
        assert_eq!(bucket.admit(clock.at(0), 3000), Admit::Send);
        assert_eq!(bucket.admit(clock.at(1_000_000_000), 1), Admit::Drop);
    }

    #[test]
    fn parse_rate_cases() {
        assert_eq!(parse_rate("250Mbit"), Ok(250_000_000));
        assert_eq!(parse_rate("1Gbit"), Ok(1_000_000_000));
        assert_eq!(parse_rate("100Mbit"), Ok(100_000_000));
        assert_eq!(parse_rate("1.5Gbit"), Ok(1_500_000_000));
        assert_eq!(parse_rate("800kbit"), Ok(800_000));
        assert_eq!(parse_rate("800kbps"), Ok(800_000));
        assert_eq!(parse_rate(" 100 mbit "), Ok(100_000_000));
        assert_eq!(parse_rate("2.25gbit"), Ok(2_250_000_000));
        assert_eq!(parse_rate("10Tbit"), Ok(10_000_000_000_000));
        assert_eq!(parse_rate("64000bit"), Ok(64_000));
        assert_eq!(parse_rate(".5Mbit"), Ok(500_000));
        assert_eq!(parse_rate("1.Gbit"), Ok(1_000_000_000));
    }

    #[test]
    fn parse_rate_errors() {
        let cases = [
            ("", "expected a number"),
            ("Mbit", "expected a number"),
            ("250", "missing unit"),
            ("250MB", "bits per second"),
            ("250Mbyte", "bits per second"),
            ("250 furlongs", "unknown unit"),
            ("-5Mbit", "expected a number"),
            ("1.2.3Mbit", "not a number"),
            (".Mbit", "not a number"),
            ("0Mbit", "above zero"),
            ("0.0001kbit", "whole number"),
            ("1.5bit", "whole number"),
            ("99999999999Tbit", "too large"),
            ("1.0000000000001Gbit", "too many decimal places"),
        ];
        for (input, want) in cases {
            let err = parse_rate(input).expect_err(input);
            assert!(err.contains(want), "{input:?}: {err}");
            assert!(err.contains(&format!("{input:?}")), "{err}");
        }
    }
}
