//! The kernel route mirror (`kernel_routes = true`): the prefixes braid forwards from BGP, installed in the
//! host's main routing table towards the TUN device, so the host (and a LAN router pointing at it) sends them
//! into braid without static routes. Routes carry braid's own protocol number
//! ([`braid_dataplane::kernel::RTPROT_BRAID`]); leftovers of a run that died without cleaning up are flushed at
//! start, and every route braid added is removed at exit. Failures are logged (rate-limited) and counted, never
//! fatal: forwarding inside braid does not depend on the kernel's table.

use std::time::{Duration, Instant};

use braid_dataplane::kernel::KernelRoutes;
use braid_dataplane::Prefix;

/// See the module documentation.
pub struct Mirror {
    routes: KernelRoutes,
    failures: u64,
    last_warn: Option<Instant>,
}

impl Mirror {
    /// Opens rtnetlink for routes out of `device` and removes stale braid routes.
    pub fn open(device: &str) -> std::io::Result<Mirror> {
        let mut routes = KernelRoutes::open(device)?;
        match routes.flush_stale() {
            Ok(0) => {}
            Ok(n) => tracing::info!(routes = n, "removed stale kernel routes of an earlier run"),
            Err(e) => tracing::warn!(error = %e, "cannot list stale kernel routes"),
        }
        Ok(Mirror {
            routes,
            failures: 0,
            last_warn: None,
        })
    }

    /// Adds and removes routes as the FIB changed.
    pub fn apply(&mut self, added: &[Prefix], removed: &[Prefix]) {
        if added.is_empty() && removed.is_empty() {
            return;
        }
        let failed = self.routes.apply(added, removed);
        self.failures += failed.len() as u64;
        if let Some((prefix, e)) = failed.first() {
            let now = Instant::now();
            if self
                .last_warn
                .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(10))
            {
                self.last_warn = Some(now);
                tracing::warn!(%prefix, error = %e, failed = failed.len(), total_failures = self.failures,
                    "kernel route changes failed");
            }
        }
        tracing::debug!(
            added = added.len(),
            removed = removed.len(),
            installed = self.routes.installed().len(),
            "kernel routes updated"
        );
    }

    /// Removes every route this run added.
    pub fn remove_all(&mut self) {
        let n = self.routes.installed().len();
        let failed = self.routes.remove_all();
        if let Some((prefix, e)) = failed.first() {
            tracing::warn!(%prefix, error = %e, failed = failed.len(), "kernel routes left behind");
        }
        tracing::info!(routes = n - failed.len().min(n), "kernel routes removed");
    }
}
