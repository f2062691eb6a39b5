//! Kernel routes (`kernel_routes = true`): the remote prefixes braid learns by BGP, installed in the host's
//! main routing table out of braid's TUN device, so that the host itself and anything it routes for reach
//! the remote sites through braid.
//!
//! [`KernelRoutes`] owns one rtnetlink socket ([`crate::sys::RouteSocket`]), the TUN device's index and the
//! set of prefixes it has installed. Every route carries braid's protocol number [`RTPROT_BRAID`]: `ip route
//! show proto 212` lists them, and braid's deletes name that protocol, so they never remove a route someone
//! else installed for the same prefix. Changes go to the kernel in batches of about a thousand routes per
//! `sendmsg`, and the kernel answers only the ones that fail; each failure is reported with its prefix and
//! the rest of the batch still applies.
//!
//! Life cycle: [`KernelRoutes::open`] at start, [`KernelRoutes::flush_stale`] to remove braid's routes left
//! on the device by a run that did not clean up, [`KernelRoutes::apply`] for every change of the BGP
//! best paths, [`KernelRoutes::remove_all`] at exit. Deleting the TUN device also makes the kernel drop
//! every route through it.
//!
//! Left out: routes in other tables or with other metrics per prefix, gateways and multipath routes (the
//! TUN device is point-to-point; braid picks the tunnel itself), and watching for routes that someone else
//! removes (the next `apply` of that prefix installs it again).

use std::collections::BTreeSet;
use std::io;
use std::net::IpAddr;

use crate::prefix::Prefix;
use crate::sys::{self, KernelRoute, RouteOp, RouteSocket, RouteSpec};

pub use crate::sys::RTPROT_BRAID;

/// The prefixes braid has installed in the kernel's main table, out of one device.
#[derive(Debug)]
pub struct KernelRoutes {
    socket: RouteSocket,
    ifname: String,
    ifindex: u32,
    metric: Option<u32>,
    installed: BTreeSet<Prefix>,
}

impl KernelRoutes {
    /// Opens an rtnetlink socket for routes out of interface `ifname` (normally braid's TUN device, which
    /// must exist). Needs `CAP_NET_ADMIN` for the changes themselves.
    pub fn open(ifname: &str) -> io::Result<KernelRoutes> {
        let ifindex = sys::ifindex(ifname)
            .map_err(|e| io::Error::new(e.kind(), format!("interface {ifname}: {e}")))?;
        Ok(KernelRoutes {
            socket: RouteSocket::open()?,
            ifname: ifname.to_owned(),
            ifindex,
            metric: None,
            installed: BTreeSet::new(),
        })
    }

    /// Installs routes with metric `metric` (`RTA_PRIORITY`) instead of the kernel's default (0 for IPv4,
    /// 1024 for IPv6). A route of braid replaces another route to the same prefix only when their metrics
    /// are equal, so a metric keeps an administrator's route of the same prefix (with another metric) in
    /// place, and the lower metric of the two wins.
    pub fn with_metric(mut self, metric: u32) -> KernelRoutes {
        self.metric = Some(metric);
        self
    }

    /// The interface the routes point at.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The prefixes installed by this `KernelRoutes`, in order.
    pub fn installed(&self) -> &BTreeSet<Prefix> {
        &self.installed
    }

    /// The underlying socket (for its overflow count).
    pub fn socket(&self) -> &RouteSocket {
        &self.socket
    }

    /// Mutable access to the underlying socket (tests shrink its receive buffer).
    pub fn socket_mut(&mut self) -> &mut RouteSocket {
        &mut self.socket
    }

    fn spec(&self, prefix: &Prefix, metric: Option<u32>) -> RouteSpec {
        RouteSpec {
            dst: prefix.addr(),
            len: prefix.len(),
            ifindex: self.ifindex,
            metric,
        }
    }

    /// braid's routes in the main table out of this device, as the kernel lists them now: those this
    /// `KernelRoutes` installed and any a previous run left (a crashed run on a persistent device). Routes
    /// of braid on other devices (another braid instance) are not listed.
    pub fn list(&mut self) -> io::Result<Vec<(Prefix, Option<u32>)>> {
        let ifindex = self.ifindex;
        Ok(self
            .socket
            .dump()?
            .into_iter()
            .filter(|r| is_ours(r, ifindex))
            .filter_map(|r| Some((Prefix::new(r.dst, r.len)?, r.metric)))
            .collect())
    }

    /// Removes every route of braid out of this device that the kernel has, whether this `KernelRoutes`
    /// installed it or a run that did not clean up did; returns how many it removed. A run that exits
    /// leaves no routes behind (they go with its non-persistent TUN device, or with
    /// [`KernelRoutes::remove_all`]), so this finds routes only after a crash on a persistent device.
    pub fn flush_stale(&mut self) -> io::Result<usize> {
        let stale = self.list()?;
        let changes: Vec<(RouteOp, RouteSpec)> = stale
            .iter()
            .map(|(p, metric)| (RouteOp::Delete, self.spec(p, *metric)))
            .collect();
        let results = self.socket.apply(&changes)?;
        let mut removed = 0;
        for ((prefix, _), result) in stale.iter().zip(results) {
            match result {
                Ok(()) => removed += 1,
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {}
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("removing stale route {prefix} dev {}: {e}", self.ifname),
                    ))
                }
            }
            self.installed.remove(prefix);
        }
        Ok(removed)
    }

    /// Removes the routes of `remove`, then installs (creates or replaces) the routes of `add`, and returns
    /// the changes that failed with their reasons; the other changes apply regardless. Removing a prefix
    /// that has no route of braid is not a failure. A prefix in both lists ends up installed.
    ///
    /// When the socket itself fails, every change not yet applied is reported with that error.
    pub fn apply(&mut self, add: &[Prefix], remove: &[Prefix]) -> Vec<(Prefix, io::Error)> {
        let changes: Vec<(RouteOp, RouteSpec)> = remove
            .iter()
            .map(|p| (RouteOp::Delete, self.spec(p, self.metric)))
            .chain(
                add.iter()
                    .map(|p| (RouteOp::Replace, self.spec(p, self.metric))),
            )
            .collect();
        let prefixes = remove.iter().chain(add);
        let results = match self.socket.apply(&changes) {
            Ok(results) => results,
            Err(e) => {
                return prefixes
                    .map(|p| (*p, io::Error::new(e.kind(), e.to_string())))
                    .collect()
            }
        };
        let mut failed = Vec::new();
        for (((op, _), prefix), result) in changes.iter().zip(prefixes).zip(results) {
            match (op, result) {
                (RouteOp::Replace, Ok(())) => {
                    self.installed.insert(*prefix);
                }
                (RouteOp::Delete, Ok(())) => {
                    self.installed.remove(prefix);
                }
                (RouteOp::Delete, Err(e)) if e.raw_os_error() == Some(libc::ESRCH) => {
                    self.installed.remove(prefix);
                }
                (_, Err(e)) => failed.push((*prefix, e)),
            }
        }
        failed
    }

    /// Removes every route this `KernelRoutes` installed (at exit); returns the removals that failed.
    pub fn remove_all(&mut self) -> Vec<(Prefix, io::Error)> {
        let all: Vec<Prefix> = self.installed.iter().copied().collect();
        self.apply(&[], &all)
    }
}

/// Whether the kernel's `route` is one of braid's, in the main table, out of `ifindex`.
fn is_ours(route: &KernelRoute, ifindex: u32) -> bool {
    route.protocol == RTPROT_BRAID
        && route.table == u32::from(libc::RT_TABLE_MAIN)
        && route.oif == Some(ifindex)
        && route.kind == libc::RTN_UNICAST
        && matches!(
            (route.dst, route.len),
            (IpAddr::V4(_), 0..=32) | (IpAddr::V6(_), 0..=128)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_braids_main_table_routes_on_the_device_are_ours() {
        let ours = KernelRoute {
            dst: "198.51.100.0".parse().unwrap(),
            len: 24,
            table: 254,
            protocol: RTPROT_BRAID,
            kind: libc::RTN_UNICAST,
            oif: Some(5),
            metric: None,
        };
        assert!(is_ours(&ours, 5));
        assert!(!is_ours(&ours, 6));
        assert!(!is_ours(
            &KernelRoute {
                protocol: 4,
                ..ours.clone()
            },
            5
        ));
        assert!(!is_ours(
            &KernelRoute {
                table: 255,
                ..ours.clone()
            },
            5
        ));
        assert!(!is_ours(
            &KernelRoute {
                oif: None,
                ..ours.clone()
            },
            5
        ));
        assert!(!is_ours(
            &KernelRoute {
                kind: 2,
                ..ours.clone()
            },
            5
        ));
        assert!(!is_ours(&KernelRoute { len: 33, ..ours }, 5));
    }
}
