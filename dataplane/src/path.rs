//! Which tunnel a flow takes: the outbound path's decision (FIB longest-prefix match, the live members of the
//! next-hop group, weighted rendezvous pick by the flow hash) replayed for one flow tuple, for `braid path`.
//!
//! This is the choice for a *new* flow. The data path's flow table keeps an existing flow on the tunnel it
//! started on while that tunnel stays in the group, so a flow that began before the group last changed (or that
//! was steered away from a full uplink) may still be elsewhere; in a steady state both agree.

use std::net::IpAddr;
use std::sync::Arc;

use crate::engine::{Liveness, MAX_LIVE};
use crate::fib::{Fib, Member, NextHopGroup};
use crate::scheduler;

/// The path of one flow.
#[derive(Clone, Debug)]
pub struct FlowPath {
    /// The next-hop group the destination resolves to.
    pub group: Arc<NextHopGroup>,
    /// The members that carry traffic now (live actives, else live backups, else the actives).
    pub candidates: Vec<Member>,
    /// The tunnel (index) a new flow with this hash is sent on.
    pub tunnel: Option<u32>,
}

/// The path a new flow to `dst` with flow hash `hash` takes; `None` when the FIB has no route to `dst`.
pub fn flow_path(fib: &Fib, liveness: &Liveness, dst: IpAddr, hash: u64) -> Option<FlowPath> {
    let group = fib.lookup(dst)?.clone();
    let mut buf = [Member {
        tunnel: 0,
        weight: 0,
        backup: false,
    }; MAX_LIVE];
    let candidates = liveness.members(&group, &mut buf).to_vec();
    let tunnel = match candidates.as_slice() {
        [only] => Some(only.tunnel),
        many => scheduler::pick(many, hash),
    };
    Some(FlowPath {
        group,
        candidates,
        tunnel,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fib::FibBuilder;
    use crate::prefix::Prefix;

    fn member(tunnel: u32, backup: bool) -> Member {
        Member {
            tunnel,
            weight: 1,
            backup,
        }
    }

    #[test]
    fn the_path_follows_liveness_and_the_pick() {
        let mut b = FibBuilder::new();
        let group =
            NextHopGroup::new(vec![member(0, false), member(1, false), member(2, true)]).unwrap();
        b.insert("192.0.2.128/25".parse::<Prefix>().unwrap(), Arc::new(group));
        let fib = b.build();
        let live = Liveness::new(3);
        let dst: IpAddr = "192.0.2.194".parse().unwrap();
        assert!(flow_path(&fib, &live, "198.51.100.1".parse().unwrap(), 1).is_none());
        let mut seen = [false; 3];
        for h in 0..64u64 {
            let p = flow_path(&fib, &live, dst, h.wrapping_mul(0x9e37_79b9_7f4a_7c15)).unwrap();
            assert_eq!(p.candidates.len(), 2);
            let t = p.tunnel.unwrap();
            assert_eq!(
                Some(t),
                scheduler::pick(&p.candidates, h.wrapping_mul(0x9e37_79b9_7f4a_7c15))
            );
            seen[t as usize] = true;
        }
        assert_eq!(
            seen,
            [true, true, false],
            "flows spread over the actives only"
        );
        live.set(0, false);
        live.set(1, false);
        let p = flow_path(&fib, &live, dst, 7).unwrap();
        assert_eq!(p.tunnel, Some(2), "the backup takes over");
    }
}
