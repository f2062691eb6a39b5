//! Uplink sockets: one UDP socket per ISP uplink, bound to its local address and port (4500 by default),
//! carrying ESP-in-UDP (RFC 3948) and, behind the non-ESP marker, IKE.
//!
//! Optional per-uplink settings a multi-ISP box needs: bind to a device (`SO_BINDTODEVICE`), a firewall mark
//! (`SO_MARK`) for policy routing, and larger socket buffers. UDP GRO is turned on where the kernel has it.

use std::io;
use std::net::{SocketAddr, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// How to open an uplink socket.
#[derive(Clone, Debug)]
pub struct UplinkSocketSpec {
    pub local: SocketAddr,
    pub device: Option<String>,
    pub fwmark: Option<u32>,
    /// SO_RCVBUF / SO_SNDBUF in bytes (the kernel doubles and caps it; `*BUFFORCE` is tried first as root).
    pub socket_buffer: usize,
}

/// Opens a non-blocking UDP socket as `spec` says.
pub fn open_uplink_socket(spec: &UplinkSocketSpec) -> io::Result<UdpSocket> {
    open_one(spec, false)
}

/// Opens `count` sockets as `spec` says, all bound to its address and port as one `SO_REUSEPORT` group (when
/// `count > 1`): the kernel hashes each sender's address and port to one of them, so each peer's datagrams
/// (one tunnel's ESP) reach one inbound worker, in order. Another process of the same user could join the
/// group by binding the same port with `SO_REUSEPORT` too; one socket (`count = 1`) keeps the port exclusive.
///
/// Port 0 picks one free port for the whole group (the first socket's).
pub fn open_uplink_sockets(spec: &UplinkSocketSpec, count: usize) -> io::Result<Vec<UdpSocket>> {
    let first = open_one(spec, count > 1)?;
    let spec = UplinkSocketSpec {
        local: first.local_addr()?,
        ..spec.clone()
    };
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(open_one(&spec, true)?);
    }
    Ok(sockets)
}

fn open_one(spec: &UplinkSocketSpec, reuse_port: bool) -> io::Result<UdpSocket> {
    let domain = Domain::for_address(spec.local);
    let sock = Socket::new(domain, Type::DGRAM.cloexec(), Some(Protocol::UDP))?;
    if reuse_port {
        sock.set_reuse_port(true)?;
    }
    if spec.local.is_ipv6() {
        sock.set_only_v6(true)?;
    }
    if let Some(dev) = &spec.device {
        sock.bind_device(Some(dev.as_bytes()))
            .map_err(|e| io::Error::new(e.kind(), format!("binding to device {dev}: {e}")))?;
    }
    if let Some(mark) = spec.fwmark {
        sock.set_mark(mark)
            .map_err(|e| io::Error::new(e.kind(), format!("setting fwmark {mark:#x}: {e}")))?;
    }
    // Best effort: the buffers are a performance setting, not a correctness one.
    if sock.set_recv_buffer_size(spec.socket_buffer).is_err() {
        tracing::debug!(bytes = spec.socket_buffer, "SO_RCVBUF refused");
    }
    if sock.set_send_buffer_size(spec.socket_buffer).is_err() {
        tracing::debug!(bytes = spec.socket_buffer, "SO_SNDBUF refused");
    }
    sock.bind(&spec.local.into())
        .map_err(|e| io::Error::new(e.kind(), format!("binding UDP {}: {e}", spec.local)))?;
    sock.set_nonblocking(true)?;
    // Best effort: with UDP GRO the inbound thread takes many datagrams per message (`crate::engine`).
    if let Err(e) = crate::sys::set_udp_gro(std::os::fd::AsRawFd::as_raw_fd(&sock), true) {
        tracing::debug!(error = %e, "UDP_GRO refused");
    }
    Ok(sock.into())
}
