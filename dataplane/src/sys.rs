//! The operating-system layer: every `unsafe` block of braid lives here.
//!
//! What it wraps, and nothing more:
//! - the Linux TUN device (`/dev/net/tun`, `TUNSETIFF` with `IFF_TUN | IFF_NO_PI`), and the classic interface
//!   ioctls for MTU, flags and index (`SIOCSIFMTU`, `SIOCGIFFLAGS`/`SIOCSIFFLAGS`, `SIOCGIFINDEX`);
//! - a minimal rtnetlink client that adds interface addresses (`RTM_NEWADDR`), because the ioctl interface can
//!   hold only one IPv4 address per device and braid puts one inside address per tunnel on the same device;
//! - `getifaddrs(3)` to find which interface owns an uplink's local address (for its MTU);
//! - `poll(2)` on one descriptor, for the rare wait on a full socket send buffer.
//!
//! Deliberately left out: `IFF_VNET_HDR`/`TUNSETOFFLOAD` and multi-queue TUN (the fast-path work adds them
//! here), routes via netlink (the multipath work), and any netlink dump parsing beyond reading an ACK.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;

/// `struct ifreq` with the union members braid uses.
#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: IfReqData,
}

#[repr(C)]
union IfReqData {
    flags: libc::c_short,
    mtu: libc::c_int,
    ifindex: libc::c_int,
    _pad: [u8; 24],
}

impl IfReq {
    fn new(name: &str) -> io::Result<IfReq> {
        check_ifname(name)?;
        let mut req = IfReq {
            name: [0; libc::IFNAMSIZ],
            data: IfReqData { _pad: [0; 24] },
        };
        for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
            *dst = src as libc::c_char;
        }
        Ok(req)
    }
}

/// Checks an interface name the way the kernel will: 1..=15 bytes, no '/', no whitespace, no NUL.
pub fn check_ifname(name: &str) -> io::Result<()> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == 0 || b.is_ascii_whitespace() || b == b':');
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("invalid interface name {name:?} (1-15 characters, no '/', ':' or spaces)"),
        ))
    }
}

/// Opens (creating if needed) the TUN device `name`, without packet information, non-blocking.
/// Returns the device file and the name the kernel gave it.
pub fn tun_open(name: &str) -> io::Result<(File, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq::new(name)?;
    req.data.flags = IFF_TUN | IFF_NO_PI;
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`; `req` is a properly sized, initialised ifreq that
    // outlives the call.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF as _, &mut req as *mut IfReq) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel NUL-terminates the name it writes back, within IFNAMSIZ.
    let actual = unsafe { CStr::from_ptr(req.name.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    Ok((file, actual))
}

fn ioctl_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned descriptor is owned exactly once below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq_ioctl(request: libc::c_ulong, req: &mut IfReq) -> io::Result<()> {
    let sock = ioctl_socket()?;
    // SAFETY: the SIOC*IF* requests used here read/write a `struct ifreq`, which `req` is.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), request as _, req as *mut IfReq) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Sets the MTU of interface `name`.
pub fn set_mtu(name: &str, mtu: u32) -> io::Result<()> {
    let mut req = IfReq::new(name)?;
    req.data.mtu = mtu as libc::c_int;
    ifreq_ioctl(libc::SIOCSIFMTU, &mut req)
}

/// Reads the MTU of interface `name`.
pub fn get_mtu(name: &str) -> io::Result<u32> {
    let mut req = IfReq::new(name)?;
    ifreq_ioctl(libc::SIOCGIFMTU, &mut req)?;
    // SAFETY: SIOCGIFMTU filled the `mtu` member.
    Ok(unsafe { req.data.mtu } as u32)
}

/// Brings interface `name` administratively up.
pub fn set_up(name: &str) -> io::Result<()> {
    let mut req = IfReq::new(name)?;
    ifreq_ioctl(libc::SIOCGIFFLAGS, &mut req)?;
    // SAFETY: SIOCGIFFLAGS filled the `flags` member.
    unsafe { req.data.flags |= libc::IFF_UP as libc::c_short };
    ifreq_ioctl(libc::SIOCSIFFLAGS, &mut req)
}

/// The kernel's index of interface `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let mut req = IfReq::new(name)?;
    ifreq_ioctl(libc::SIOCGIFINDEX, &mut req)?;
    // SAFETY: SIOCGIFINDEX filled the `ifindex` member.
    Ok(unsafe { req.data.ifindex } as u32)
}

/// The name of the interface that holds `addr`, if any (via `getifaddrs(3)`).
pub fn interface_with_address(addr: IpAddr) -> io::Result<Option<String>> {
    let mut list: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs allocates a list that we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut list) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut found = None;
    let mut cur = list;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, valid until freeifaddrs.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_addr points to a sockaddr whose family tells its real type.
        let family = unsafe { (*ifa.ifa_addr).sa_family } as libc::c_int;
        let this: Option<IpAddr> = match family {
            libc::AF_INET => {
                // SAFETY: family AF_INET means the storage is a sockaddr_in.
                let sin = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in) };
                Some(IpAddr::from(
                    u32::from_be(sin.sin_addr.s_addr).to_be_bytes(),
                ))
            }
            libc::AF_INET6 => {
                // SAFETY: family AF_INET6 means the storage is a sockaddr_in6.
                let sin6 = unsafe { &*(ifa.ifa_addr as *const libc::sockaddr_in6) };
                Some(IpAddr::from(sin6.sin6_addr.s6_addr))
            }
            _ => None,
        };
        if this == Some(addr) {
            // SAFETY: ifa_name is a NUL-terminated string owned by the list.
            found = Some(
                unsafe { CStr::from_ptr(ifa.ifa_name) }
                    .to_string_lossy()
                    .into_owned(),
            );
            break;
        }
    }
    // SAFETY: `list` came from getifaddrs and is freed exactly once.
    unsafe { libc::freeifaddrs(list) };
    Ok(found)
}

/// Waits until `fd` is ready for `events` (`libc::POLLIN`/`POLLOUT`) or `timeout` passes.
/// Returns whether it became ready.
pub fn poll_one(fd: RawFd, events: libc::c_short, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd, count 1.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    match rc {
        n if n < 0 => {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                Ok(false)
            } else {
                Err(e)
            }
        }
        0 => Ok(false),
        _ => Ok(pfd.revents & events != 0),
    }
}

// ---- rtnetlink: RTM_NEWADDR ----

const NLMSG_HDR_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;

fn nla_put(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// Builds an `RTM_NEWADDR` request (create or replace) for `addr/prefix_len` on `ifindex`.
/// IPv6 addresses are added with `IFA_F_NODAD`: a tunnel inside address has no neighbours to collide with,
/// and duplicate-address detection would keep it tentative (unusable) for a second or more.
fn newaddr_request(ifindex: u32, addr: IpAddr, prefix_len: u8, seq: u32) -> Vec<u8> {
    let mut msg = vec![0u8; NLMSG_HDR_LEN];
    let (family, bytes): (u8, Vec<u8>) = match addr {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    // struct ifaddrmsg { family, prefixlen, flags, scope, index }
    msg.push(family);
    msg.push(prefix_len);
    msg.push(0);
    msg.push(0); // RT_SCOPE_UNIVERSE
    msg.extend_from_slice(&ifindex.to_ne_bytes());
    debug_assert_eq!(msg.len(), NLMSG_HDR_LEN + IFADDRMSG_LEN);
    nla_put(&mut msg, IFA_LOCAL, &bytes);
    nla_put(&mut msg, IFA_ADDRESS, &bytes);
    if addr.is_ipv6() {
        nla_put(&mut msg, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    }
    let len = msg.len() as u32;
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    msg[0..4].copy_from_slice(&len.to_ne_bytes());
    msg[4..6].copy_from_slice(&libc::RTM_NEWADDR.to_ne_bytes());
    msg[6..8].copy_from_slice(&flags.to_ne_bytes());
    msg[8..12].copy_from_slice(&seq.to_ne_bytes());
    msg[12..16].copy_from_slice(&0u32.to_ne_bytes());
    msg
}

/// Adds `addr/prefix_len` to interface `ifindex` through rtnetlink and waits for the kernel's answer.
pub fn add_address(ifindex: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
    // SAFETY: plain socket(2) call; ownership taken exactly once below.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is fresh and owned by nothing else.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value (pid 0 = the kernel).
    let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    let seq = 1;
    let req = newaddr_request(ifindex, addr, prefix_len, seq);
    // SAFETY: `req` is a valid buffer of the given length; `kernel` is a valid sockaddr_nl.
    let sent = unsafe {
        libc::sendto(
            sock.as_raw_fd(),
            req.as_ptr().cast(),
            req.len(),
            0,
            (&kernel as *const libc::sockaddr_nl).cast(),
            mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut answer = [0u8; 4096];
    loop {
        if !poll_one(sock.as_raw_fd(), libc::POLLIN, Duration::from_secs(5))? {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "no answer from rtnetlink",
            ));
        }
        // SAFETY: `answer` is a writable buffer of the given length.
        let n = unsafe {
            libc::recv(
                sock.as_raw_fd(),
                answer.as_mut_ptr().cast(),
                answer.len(),
                0,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        match parse_ack(&answer[..n as usize], seq) {
            Some(result) => return result,
            None => continue,
        }
    }
}

/// Reads an `NLMSG_ERROR` answer for `seq`: `Some(Ok)` for an ACK, `Some(Err)` for a kernel error,
/// `None` if the buffer holds no answer to `seq`.
fn parse_ack(mut buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    while buf.len() >= NLMSG_HDR_LEN {
        let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
        let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
        let mseq = u32::from_ne_bytes(buf[8..12].try_into().ok()?);
        if len < NLMSG_HDR_LEN || len > buf.len() {
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink answer",
            )));
        }
        if kind == libc::NLMSG_ERROR as u16 && mseq == seq && len >= NLMSG_HDR_LEN + 4 {
            let errno = i32::from_ne_bytes(buf[16..20].try_into().ok()?);
            return Some(if errno == 0 {
                Ok(())
            } else {
                Err(io::Error::from_raw_os_error(-errno))
            });
        }
        let aligned = (len + 3) & !3;
        buf = &buf[aligned.min(buf.len())..];
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newaddr_request_layout() {
        let msg = newaddr_request(7, "169.254.0.1".parse().unwrap(), 30, 9);
        assert_eq!(
            msg.len() as u32,
            u32::from_ne_bytes(msg[0..4].try_into().unwrap())
        );
        assert_eq!(msg.len(), 16 + 8 + 8 + 8);
        assert_eq!(msg[16], libc::AF_INET as u8);
        assert_eq!(msg[17], 30);
        assert_eq!(u32::from_ne_bytes(msg[20..24].try_into().unwrap()), 7);
        assert_eq!(&msg[28..32], &[169, 254, 0, 1]);
        let v6 = newaddr_request(7, "2001:db8::1".parse().unwrap(), 127, 9);
        assert_eq!(v6.len(), 16 + 8 + 20 + 20 + 8);
    }

    #[test]
    fn ack_parsing() {
        let mut ok = vec![0u8; 36];
        ok[0..4].copy_from_slice(&36u32.to_ne_bytes());
        ok[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        ok[8..12].copy_from_slice(&5u32.to_ne_bytes());
        assert!(matches!(parse_ack(&ok, 5), Some(Ok(()))));
        assert!(parse_ack(&ok, 6).is_none());
        ok[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        let err = parse_ack(&ok, 5).unwrap().unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EEXIST));
        assert!(parse_ack(&ok[..10], 5).is_none());
    }

    #[test]
    fn interface_names() {
        assert!(check_ifname("braid0").is_ok());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("sixteen-chars-xx").is_err());
    }
}
