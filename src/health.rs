//! Health votes: several liveness detectors, one verdict per tunnel.
//!
//! More than one thing can tell that a tunnel must not carry traffic: BFD (its session is Down), IKE (the
//! tunnel has no child SA, or its peer was declared dead), inbound silence. Each is a [`Source`] that votes
//! per tunnel; a tunnel is live only while no source votes it down, and that AND is what the data path's
//! [`Liveness`] holds. A source that never votes counts as live, so a tunnel with neither BFD nor IKE stays
//! live as before.
//!
//! Votes are bits in one atomic word per tunnel (bit `source as u32`): reading them is lock-free. Writers
//! (the control plane's drivers, never the data path) serialise on a small mutex so that the verdict written
//! into [`Liveness`] is always the AND of the latest votes, however the drivers interleave.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use braid_dataplane::Liveness;

/// A liveness detector.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Source {
    /// BFD over the tunnel: down while the session is not Up (past its hold-down).
    Bfd = 0,
    /// IKE: down while the tunnel has no child SA to send with.
    Ike = 1,
    /// Inbound silence: down while nothing authentic arrives from the peer.
    Silence = 2,
}

impl Source {
    pub const ALL: [Source; 3] = [Source::Bfd, Source::Ike, Source::Silence];

    pub fn name(self) -> &'static str {
        match self {
            Source::Bfd => "bfd",
            Source::Ike => "ike",
            Source::Silence => "silence",
        }
    }

    fn bit(self) -> u32 {
        1 << (self as u8)
    }
}

/// Per tunnel, which sources vote it down; writes their AND into the data path's [`Liveness`]. Cheap to clone.
#[derive(Clone)]
pub struct Health {
    liveness: Liveness,
    down: Arc<[AtomicU32]>,
    write: Arc<Mutex<()>>,
}

impl Health {
    /// Votes for `tunnels` tunnels, all live, written into `liveness`.
    pub fn new(liveness: Liveness, tunnels: usize) -> Health {
        for t in 0..tunnels {
            liveness.set(t, true);
        }
        Health {
            liveness,
            down: (0..tunnels).map(|_| AtomicU32::new(0)).collect(),
            write: Arc::new(Mutex::new(())),
        }
    }

    /// `source` votes `tunnel` live or down; the tunnel's [`Liveness`] becomes the AND of all votes. Returns
    /// whether the tunnel is live now. Unknown tunnels are ignored (and reported dead).
    pub fn vote(&self, tunnel: usize, source: Source, live: bool) -> bool {
        let Some(word) = self.down.get(tunnel) else {
            return false;
        };
        let _w = self.write.lock().unwrap_or_else(|p| p.into_inner());
        let votes = if live {
            word.fetch_and(!source.bit(), Ordering::Relaxed) & !source.bit()
        } else {
            word.fetch_or(source.bit(), Ordering::Relaxed) | source.bit()
        };
        self.liveness.set(tunnel, votes == 0);
        votes == 0
    }

    /// Whether no source votes `tunnel` down.
    pub fn is_live(&self, tunnel: usize) -> bool {
        self.down
            .get(tunnel)
            .is_some_and(|w| w.load(Ordering::Relaxed) == 0)
    }

    /// The sources that vote `tunnel` down now.
    pub fn down_votes(&self, tunnel: usize) -> Vec<Source> {
        let v = self
            .down
            .get(tunnel)
            .map_or(0, |w| w.load(Ordering::Relaxed));
        Source::ALL
            .into_iter()
            .filter(|s| v & s.bit() != 0)
            .collect()
    }

    /// The data path's flags this writes.
    pub fn liveness(&self) -> &Liveness {
        &self.liveness
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_is_the_and_of_all_votes() {
        let l = Liveness::new(2);
        let h = Health::new(l.clone(), 2);
        assert!(l.is_live(0) && l.is_live(1));
        assert!(!h.vote(0, Source::Ike, false));
        assert!(!l.is_live(0) && l.is_live(1));
        assert!(!h.vote(0, Source::Bfd, false));
        assert_eq!(h.down_votes(0), vec![Source::Bfd, Source::Ike]);
        // One source alone cannot bring it back.
        assert!(!h.vote(0, Source::Bfd, true));
        assert!(!l.is_live(0));
        assert!(h.vote(0, Source::Ike, true));
        assert!(l.is_live(0) && h.is_live(0));
        assert!(h.down_votes(0).is_empty());
        // Repeated votes are idempotent; other tunnels are untouched; unknown ones ignored.
        h.vote(1, Source::Silence, false);
        h.vote(1, Source::Silence, false);
        assert!(!l.is_live(1) && l.is_live(0));
        assert!(!h.vote(7, Source::Bfd, true));
    }
}
