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

/// An open TUN device (no packet-information header, non-blocking).
pub struct Tun {
    file: File,
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
        let (file, name) =
            sys::tun_open(name).map_err(|e| annotate(e, &format!("opening TUN device {name}")))?;
        sys::set_mtu(&name, mtu)
            .map_err(|e| annotate(e, &format!("setting MTU {mtu} on {name}")))?;
        let index = sys::ifindex(&name)?;
        for a in addrs {
            sys::add_address(index, a.addr, a.prefix_len).map_err(|e| {
                annotate(e, &format!("adding {}/{} to {name}", a.addr, a.prefix_len))
            })?;
        }
        sys::set_up(&name).map_err(|e| annotate(e, &format!("bringing {name} up")))?;
        Ok(Tun { file, name })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn into_file(self) -> File {
        self.file
    }
}

fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}
