//! The TUN device: the gateway's inside interface, where the kernel hands braid the packets it routes into
//! the tunnels and takes back the packets that come out of them.
//!
//! One device per gateway carries every tunnel; each tunnel's inside address (e.g. a /30) is added to it, so
//! the kernel has a connected route to each peer's inside address through it.

use std::fs::File;
use std::io;
use std::net::IpAddr;

use crate::prefix::Prefix;
use crate::sys;

/// An open TUN device (no packet-information header, non-blocking): one file per queue.
pub struct Tun {
    files: Vec<File>,
    name: String,
}

/// One address to put on the device, with its prefix length (e.g. 169.254.21.2/30).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct InsideAddr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl InsideAddr {
    /// The subnet the address is in.
    pub fn subnet(&self) -> Prefix {
        Prefix::new(self.addr, self.prefix_len).expect("prefix length checked at config time")
    }
}

impl Tun {
    /// Creates (or attaches to) the TUN device `name`, sets its MTU, adds `addrs` and brings it up.
    pub fn create(name: &str, mtu: u32, addrs: &[InsideAddr]) -> io::Result<Tun> {
        Tun::create_queues(name, mtu, addrs, 1)
    }

    /// [`create`](Self::create) with `queues` queues (a multi-queue device when more than one). A device that
    /// already exists without multi-queue (a persistent one) is opened with one queue, and a warning says so.
    pub fn create_queues(
        name: &str,
        mtu: u32,
        addrs: &[InsideAddr],
        queues: usize,
    ) -> io::Result<Tun> {
        let opened = match sys::tun_open_queues(name, queues) {
            Err(e) if queues > 1 && e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::warn!(tun = name, queues, error = %e,
                    "TUN device refuses multi-queue (a persistent single-queue device?): one queue");
                sys::tun_open_queues(name, 1)
            }
            other => other,
        };
        let (files, name) =
            opened.map_err(|e| annotate(e, &format!("opening TUN device {name}")))?;
        sys::set_mtu(&name, mtu)
            .map_err(|e| annotate(e, &format!("setting MTU {mtu} on {name}")))?;
        let index = sys::ifindex(&name)?;
        for a in addrs {
            sys::add_address(index, a.addr, a.prefix_len).map_err(|e| {
                annotate(e, &format!("adding {}/{} to {name}", a.addr, a.prefix_len))
            })?;
        }
        sys::set_up(&name).map_err(|e| annotate(e, &format!("bringing {name} up")))?;
        Ok(Tun { files, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets how many packets the device queues for its readers before the kernel drops (its transmit queue,
    /// per queue).
    pub fn set_queue_len(&self, len: u32) -> io::Result<()> {
        sys::set_tx_queue_len(&self.name, len)
            .map_err(|e| annotate(e, &format!("setting transmit queue {len} on {}", self.name)))
    }

    /// The first queue.
    pub fn file(&self) -> &File {
        &self.files[0]
    }

    /// How many queues the device was opened with.
    pub fn queues(&self) -> usize {
        self.files.len()
    }

    /// The first queue (the others are closed, which detaches them).
    pub fn into_file(self) -> File {
        self.files
            .into_iter()
            .next()
            .expect("a TUN device has a queue")
    }

    /// Every queue, for the data path's workers.
    pub fn into_files(self) -> Vec<File> {
        self.files
    }
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
