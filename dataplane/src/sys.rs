//! The operating-system layer: every `unsafe` block of braid lives here.
//!
//! What it wraps, and nothing more:
//! - the Linux TUN device (`/dev/net/tun`, `TUNSETIFF` with `IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`, the offloads
//!   it accepts with `TUNSETOFFLOAD`), and the classic interface
//!   ioctls for MTU, flags, index and transmit queue (`SIOCSIFMTU`, `SIOCGIFFLAGS`/`SIOCSIFFLAGS`,
//!   `SIOCGIFINDEX`, `SIOCSIFTXQLEN`);
//! - a minimal rtnetlink client that adds interface addresses (`RTM_NEWADDR`), because the ioctl interface can
//!   hold only one IPv4 address per device and braid puts one inside address per tunnel on the same device;
//! - routes through the same client ([`RouteSocket`]): `RTM_NEWROUTE`/`RTM_DELROUTE` of prefixes out of one
//!   interface with braid's own protocol number [`RTPROT_BRAID`], batched many to a `sendmsg` with only
//!   failures answered, and an `RTM_GETROUTE` dump to find braid's routes; `crate::kernel` keeps the state;
//! - `getifaddrs(3)` to find which interface owns an uplink's local address (for its MTU);
//! - `poll(2)` on one descriptor, for the rare wait on a full socket send buffer;
//! - UDP receive batching: `recvmmsg(2)` into buffers allocated once ([`RecvBatch`]), with the sender's address
//!   and the `UDP_GRO` segment size of each message, and the `UDP_GRO` socket option ([`set_udp_gro`]); for
//!   tests, `ETHTOOL_SGRO` on an interface and running a closure inside a network namespace.
//! - `sendmmsg(2)` of batches of UDP messages, with UDP GSO (`UDP_SEGMENT`) where a message is a run of
//!   equal-size datagrams ([`send_batch`]).
//! - for the outbound path's flow table: a cache prefetch hint ([`prefetch`]) and a table on transparent huge
//!   pages ([`HugeArray`]: an aligned allocation and `madvise(MADV_HUGEPAGE)`).
//!
//! Deliberately left out: routes with gateways, multipath routes and tables other than main (braid's routes point straight
//! at its point-to-point TUN device); netlink extended acks and multicast groups.

use std::ffi::CStr;
use std::fs::{File, OpenOptions};
use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const IFF_TUN: libc::c_short = 0x0001;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
const IFF_MULTI_QUEUE: libc::c_short = 0x0100;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
/// `TUNSETOFFLOAD` flags: the checksum may be left partial (`NEEDS_CSUM`).
pub const TUN_F_CSUM: u32 = 0x01;
/// `TUNSETOFFLOAD` flags: IPv4 TCP super-packets.
pub const TUN_F_TSO4: u32 = 0x02;
/// `TUNSETOFFLOAD` flags: IPv6 TCP super-packets.
pub const TUN_F_TSO6: u32 = 0x04;
/// `TUNSETOFFLOAD` flags: TCP super-packets with ECN.
pub const TUN_F_TSO_ECN: u32 = 0x08;
/// `TUNSETOFFLOAD` flags: IPv4 UDP super-packets (USO, kernel 6.2+).
pub const TUN_F_USO4: u32 = 0x20;
/// `TUNSETOFFLOAD` flags: IPv6 UDP super-packets (USO, kernel 6.2+).
pub const TUN_F_USO6: u32 = 0x40;

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
    /// `ifr_qlen`: a transmit queue's length.
    qlen: libc::c_int,
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

/// Opens (creating if needed) the TUN device `name`, without packet information, with a virtio-net header in
/// front of every packet (`crate::vnet`), non-blocking. No offloads are enabled yet ([`tun_set_offload`]).
/// Returns the device file and the name the kernel gave it.
pub fn tun_open(name: &str) -> io::Result<(File, String)> {
    tun_attach(name, 0)
}

/// [`tun_open`] with `queues` queues (`IFF_MULTI_QUEUE`, one file per queue; the kernel hashes each flow to one
/// queue). One queue opens the device without the flag, as [`tun_open`] does. A device that exists without
/// multi-queue (a persistent one) refuses the flag with `EINVAL`.
pub fn tun_open_queues(name: &str, queues: usize) -> io::Result<(Vec<File>, String)> {
    if queues <= 1 {
        let (file, name) = tun_attach(name, 0)?;
        return Ok((vec![file], name));
    }
    let (first, actual) = tun_attach(name, IFF_MULTI_QUEUE)?;
    let mut files = vec![first];
    for _ in 1..queues {
        files.push(tun_attach(&actual, IFF_MULTI_QUEUE)?.0);
    }
    Ok((files, actual))
}

fn tun_attach(name: &str, extra: libc::c_short) -> io::Result<(File, String)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")?;
    let mut req = IfReq::new(name)?;
    req.data.flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR | extra;
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

/// Tells the TUN device which offloads braid takes on its reads (`TUN_F_*`); the kernel refuses flags it does
/// not know with `EINVAL`. 0 turns them all off: every read is then a finished packet.
pub fn tun_set_offload(tun: &File, flags: u32) -> io::Result<()> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value (an unsigned int of flags); no memory is passed.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETOFFLOAD as _, flags as libc::c_ulong) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
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

/// Sets the transmit queue length of interface `name` (`txqueuelen`; per queue of a multi-queue device).
pub fn set_tx_queue_len(name: &str, len: u32) -> io::Result<()> {
    let mut req = IfReq::new(name)?;
    req.data.qlen = libc::c_int::try_from(len)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "queue length too large"))?;
    ifreq_ioctl(libc::SIOCSIFTXQLEN, &mut req)
}

/// Reads the transmit queue length of interface `name`.
pub fn get_tx_queue_len(name: &str) -> io::Result<u32> {
    let mut req = IfReq::new(name)?;
    ifreq_ioctl(libc::SIOCGIFTXQLEN, &mut req)?;
    // SAFETY: SIOCGIFTXQLEN filled the `qlen` member.
    Ok(unsafe { req.data.qlen } as u32)
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

/// Asks the CPU to bring the cache line holding `value` into its caches, without waiting for it (x86-64's
/// `PREFETCHT0`; nothing elsewhere). A hint: it reads nothing and cannot fault.
#[inline(always)]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is part of SSE, which every x86-64 CPU has; it only hints at an address (here a valid
    // reference) and never faults or changes memory.
    unsafe {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// The size and alignment of a transparent huge page on x86-64 (and of the arrays [`HugeArray`] makes).
const HUGE_PAGE: usize = 2 << 20;

/// A fixed-size heap array aligned to 2 MiB, which the kernel is asked to back with transparent huge pages
/// (`MADV_HUGEPAGE`, before the first touch): a large table looked up at random then takes one TLB entry per
/// 2 MiB instead of one per 4 KiB page (a TLB miss is a page walk, in a virtual machine a nested one). Where
/// the kernel has no huge pages (or says no) it is an ordinary array.
pub struct HugeArray<T: Copy> {
    ptr: std::ptr::NonNull<T>,
    len: usize,
    layout: std::alloc::Layout,
}

// SAFETY: a HugeArray owns its elements as a Box<[T]> would.
unsafe impl<T: Copy + Send> Send for HugeArray<T> {}
// SAFETY: as above; shared access only reads.
unsafe impl<T: Copy + Sync> Sync for HugeArray<T> {}

impl<T: Copy> HugeArray<T> {
    /// `len` copies of `fill`. Panics when `len` elements do not fit in memory's address space (as `vec!`
    /// does); aborts when the allocation fails.
    pub fn new(len: usize, fill: T) -> HugeArray<T> {
        let layout = std::alloc::Layout::array::<T>(len.max(1))
            .and_then(|l| l.align_to(HUGE_PAGE))
            .expect("a HugeArray fits the address space");
        // SAFETY: the layout's size is non-zero.
        let raw = unsafe { std::alloc::alloc(layout) }.cast::<T>();
        let Some(ptr) = std::ptr::NonNull::new(raw) else {
            std::alloc::handle_alloc_error(layout);
        };
        // SAFETY: [raw, raw + size) is this allocation, page-aligned (2 MiB); the advice only changes how the
        // kernel backs it. Refused advice (no THP in this kernel) leaves ordinary pages: nothing to handle.
        unsafe { libc::madvise(raw.cast(), layout.size(), libc::MADV_HUGEPAGE) };
        for i in 0..len {
            // SAFETY: i < len, within the allocation; every element is written before any is read.
            unsafe { raw.add(i).write(fill) };
        }
        HugeArray { ptr, len, layout }
    }
}

impl<T: Copy> std::ops::Deref for HugeArray<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr holds len initialised elements for as long as self lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> std::ops::DerefMut for HugeArray<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self is the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for HugeArray<T> {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout; T: Copy needs no drop.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr().cast(), self.layout) };
    }
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

// ---- UDP receive batching

/// `setsockopt(SOL_UDP, UDP_GRO)` (Linux 5.0+): the kernel may hand the socket several datagrams of one flow
/// in one message, back to back, with their size in a `UDP_GRO` control message.
const UDP_GRO: libc::c_int = 104;
/// Control-message space per received message: one `UDP_GRO` (`CMSG_SPACE(sizeof(int))` = 24) with room to
/// spare, 8-aligned.
const RECV_CONTROL_WORDS: usize = 8;
/// The most messages one [`RecvBatch::recv`] asks for.
pub const RECV_BATCH_MAX: usize = 64;

/// Turns UDP GRO on or off for socket `fd` ([`RecvBatch`] parses what it produces).
pub fn set_udp_gro(fd: RawFd, on: bool) -> io::Result<()> {
    setsockopt_int(fd, libc::SOL_UDP, UDP_GRO, on.into())
}

/// `setsockopt(2)` of an `int` option on the caller's socket `fd`.
fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and the length passed is its size; `fd` is the caller's socket (a bad
    // one is an `EBADF`, not undefined behaviour).
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// One message of a [`RecvBatch`].
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq)]
pub struct RecvMeta {
    /// Octets received (all datagrams of a GRO message).
    pub len: usize,
    /// The sender (IPv4 or IPv6), if the kernel named one of those families.
    pub from: Option<SocketAddr>,
    /// With UDP GRO: the size of each datagram in the message (the last may be shorter); 0 = one datagram.
    pub segment: usize,
    /// The message did not fit its slot (`MSG_TRUNC`): its contents are incomplete.
    pub truncated: bool,
}

/// Buffers for receiving up to `count` UDP messages with one `recvmmsg(2)`, allocated once: one slot of
/// `slot_len` octets per message, its sender's address and its control messages. Each call sets up the
/// kernel's `mmsghdr`/`iovec` arrays on the stack (they hold pointers, so they are not kept), and allocates
/// nothing.
pub struct RecvBatch {
    data: Box<[u8]>,
    slot_len: usize,
    names: Box<[libc::sockaddr_storage]>,
    controls: Box<[[u64; RECV_CONTROL_WORDS]]>,
    meta: Box<[RecvMeta]>,
    filled: usize,
}

impl RecvBatch {
    /// Room for `count` messages (at most [`RECV_BATCH_MAX`]) of at most `slot_len` octets each.
    pub fn new(count: usize, slot_len: usize) -> RecvBatch {
        let count = count.clamp(1, RECV_BATCH_MAX);
        RecvBatch {
            data: vec![0u8; count * slot_len].into_boxed_slice(),
            slot_len,
            // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
            names: (0..count).map(|_| unsafe { mem::zeroed() }).collect(),
            controls: vec![[0u64; RECV_CONTROL_WORDS]; count].into_boxed_slice(),
            meta: vec![RecvMeta::default(); count].into_boxed_slice(),
            filled: 0,
        }
    }

    /// Receives what is queued on the non-blocking UDP socket `fd`, up to the batch's size, without waiting.
    /// Returns the number of messages (at least 1); `WouldBlock` when nothing is queued.
    pub fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let count = self.meta.len();
        self.filled = 0;
        // SAFETY: iovec and mmsghdr are plain old data; all-zero (null pointers, zero lengths) is valid.
        let mut iovs: [libc::iovec; RECV_BATCH_MAX] = unsafe { mem::zeroed() };
        // SAFETY: as above.
        let mut hdrs: [libc::mmsghdr; RECV_BATCH_MAX] = unsafe { mem::zeroed() };
        let base = self.data.as_mut_ptr();
        for i in 0..count {
            iovs[i].iov_base = base.wrapping_add(i * self.slot_len).cast();
            iovs[i].iov_len = self.slot_len;
            let h = &mut hdrs[i].msg_hdr;
            h.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            h.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_iov = &mut iovs[i];
            h.msg_iovlen = 1;
            h.msg_control = self.controls[i].as_mut_ptr().cast();
            h.msg_controllen = (RECV_CONTROL_WORDS * 8) as _;
        }
        // SAFETY: `hdrs[..count]` are valid mmsghdrs whose pointers (slots of `data`, `names`, `controls`,
        // `iovs`) stay valid and unaliased for the call; each buffer length passed is its real size.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                count as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = rc as usize;
        for (i, (hdr, meta)) in hdrs[..n].iter().zip(self.meta.iter_mut()).enumerate() {
            let h = &hdr.msg_hdr;
            *meta = RecvMeta {
                len: (hdr.msg_len as usize).min(self.slot_len),
                from: sockaddr_to_std(&self.names[i], h.msg_namelen),
                segment: gro_segment(h),
                truncated: h.msg_flags & libc::MSG_TRUNC != 0,
            };
        }
        self.filled = n;
        Ok(n)
    }

    /// Empties the batch, to [`push`](Self::push) messages into it as if they had been received
    /// (benchmarks and tests).
    pub fn clear(&mut self) {
        self.filled = 0;
    }

    /// Adds `message` from `from` as if [`recv`](Self::recv) had received it (`segment` > 0: a UDP GRO
    /// message of datagrams of that size); false if the batch or the slot is too small for it.
    pub fn push(&mut self, message: &[u8], from: SocketAddr, segment: usize) -> bool {
        let i = self.filled;
        if i >= self.meta.len() || message.len() > self.slot_len {
            return false;
        }
        self.data[i * self.slot_len..][..message.len()].copy_from_slice(message);
        self.meta[i] = RecvMeta {
            len: message.len(),
            from: Some(from),
            segment,
            truncated: false,
        };
        self.filled += 1;
        true
    }

    /// Messages the last [`recv`](Self::recv) returned.
    pub fn len(&self) -> usize {
        self.filled
    }

    pub fn is_empty(&self) -> bool {
        self.filled == 0
    }

    /// Message `i` of the last receive.
    ///
    /// # Panics
    /// If `i` is not below [`len`](Self::len).
    pub fn meta(&self, i: usize) -> RecvMeta {
        self.meta[..self.filled][i]
    }

    /// The whole slot of message `i` (its octets are `..meta(i).len`).
    ///
    /// # Panics
    /// If `i` is beyond the batch's size.
    pub fn slot(&self, i: usize) -> &[u8] {
        &self.data[i * self.slot_len..(i + 1) * self.slot_len]
    }

    /// [`slot`](Self::slot), writable (for opening ESP in place).
    pub fn slot_mut(&mut self, i: usize) -> &mut [u8] {
        &mut self.data[i * self.slot_len..(i + 1) * self.slot_len]
    }
}

/// The `UDP_GRO` segment size among the control messages of `h`, or 0.
fn gro_segment(h: &libc::msghdr) -> usize {
    // SAFETY: `h` is a msghdr the kernel filled: msg_control/msg_controllen describe the control messages it
    // wrote into our buffer, and CMSG_FIRSTHDR/CMSG_NXTHDR stay within them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(h);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == UDP_GRO {
                let data = libc::CMSG_DATA(c);
                if (*c).cmsg_len as usize
                    >= libc::CMSG_LEN(mem::size_of::<libc::c_int>() as u32) as usize
                {
                    let v = std::ptr::read_unaligned(data.cast::<libc::c_int>());
                    return v.max(0) as usize;
                }
            }
            c = libc::CMSG_NXTHDR(h, c);
        }
    }
    0
}

/// A `sockaddr_storage` the kernel filled with `len` octets, as a std address (IPv4 or IPv6 only).
fn sockaddr_to_std(ss: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match ss.ss_family as libc::c_int {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is large enough.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: the family says the storage holds a sockaddr_in6, and it is large enough.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

#[cfg(test)]
mod recv_batch_tests {
    use super::*;
    use std::net::UdpSocket;

    /// `UDP_SEGMENT` as a socket option: every send is cut into datagrams of this size (the test's sender).
    fn set_udp_segment(sock: &UdpSocket, size: libc::c_int) -> io::Result<()> {
        setsockopt_int(sock.as_raw_fd(), libc::SOL_UDP, 103, size)
    }

    #[test]
    fn batches_addresses_and_gro_segments() {
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(rx) = UdpSocket::bind(local) else {
                continue; // no IPv6 loopback here
            };
            rx.set_nonblocking(true).unwrap();
            let tx = UdpSocket::bind(local).unwrap();
            let to = rx.local_addr().unwrap();
            let mut batch = RecvBatch::new(8, 4096);
            assert_eq!(
                batch.recv(rx.as_raw_fd()).unwrap_err().kind(),
                io::ErrorKind::WouldBlock
            );
            for n in 1..=3u8 {
                tx.send_to(&vec![n; 100 * n as usize], to).unwrap();
            }
            assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 3);
            for i in 0..3 {
                let m = batch.meta(i);
                assert_eq!(m.from, Some(tx.local_addr().unwrap()));
                assert_eq!((m.len, m.segment, m.truncated), (100 * (i + 1), 0, false));
                assert!(batch.slot(i)[..m.len].iter().all(|&b| b == i as u8 + 1));
            }
            // Too long for a slot: marked, not mistaken for a whole datagram.
            tx.send_to(&[7; 5000], to).unwrap();
            assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
            assert!(batch.meta(0).truncated);

            // UDP GRO: a GSO send of 3 datagrams arrives as one message with its segment size.
            if set_udp_gro(rx.as_raw_fd(), true).is_err() || set_udp_segment(&tx, 1000).is_err() {
                continue;
            }
            let data: Vec<u8> = (0..2500u32).map(|i| i as u8).collect();
            tx.send_to(&data, to).unwrap();
            assert_eq!(batch.recv(rx.as_raw_fd()).unwrap(), 1);
            let m = batch.meta(0);
            assert_eq!((m.len, m.segment), (2500, 1000), "{local}");
            assert_eq!(&batch.slot(0)[..2500], &data[..]);
        }
    }
}

/// `SIOCETHTOOL` with `ETHTOOL_SGRO`: turns generic receive offload on or off on interface `name`, in the
/// calling thread's network namespace (what `ethtool -K NAME gro on` does). On a veth, GRO on also turns on
/// its NAPI receive path, which is what makes it coalesce UDP for sockets with UDP GRO: tests use it.
pub fn set_interface_gro(name: &str, on: bool) -> io::Result<()> {
    const ETHTOOL_SGRO: u32 = 0x2c;
    #[repr(C)]
    struct EthtoolValue {
        cmd: u32,
        data: u32,
    }
    #[repr(C)]
    struct IfReqData {
        name: [libc::c_char; libc::IFNAMSIZ],
        data: *mut EthtoolValue,
        _pad: [u8; 16],
    }
    check_ifname(name)?;
    let mut value = EthtoolValue {
        cmd: ETHTOOL_SGRO,
        data: on.into(),
    };
    let mut req = IfReqData {
        name: [0; libc::IFNAMSIZ],
        data: &mut value,
        _pad: [0; 16],
    };
    for (dst, src) in req.name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    let sock = ioctl_socket()?;
    // SAFETY: SIOCETHTOOL reads an ifreq whose data member points to the ethtool command; both outlive the call.
    let rc = unsafe {
        libc::ioctl(
            sock.as_raw_fd(),
            libc::SIOCETHTOOL as _,
            &mut req as *mut IfReqData,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs `f` on a new thread that has joined the network namespace at `path` (e.g. `/run/netns/NAME`): a
/// network namespace belongs to a thread, so the caller's stays where it is.
pub fn in_netns<T: Send>(path: &std::path::Path, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let ns = File::open(path)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setns with a namespace file descriptor we own; it changes only this thread.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("thread in the namespace panicked")))
    })
}

/// The Generalized TTL Security Mechanism for a single-hop protocol (RFC 5082; BFD's RFC 5881 section 5):
/// packets leave `fd` with TTL (hop limit) 255 and the kernel drops received packets with less, so nothing
/// more than one hop away can inject into the session. `ipv6` selects the IPv6 options.
pub fn set_gtsm(fd: RawFd, ipv6: bool) -> io::Result<()> {
    let opts: [(libc::c_int, libc::c_int); 2] = if ipv6 {
        [
            (libc::IPPROTO_IPV6, libc::IPV6_UNICAST_HOPS),
            (libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT),
        ]
    } else {
        [
            (libc::IPPROTO_IP, libc::IP_TTL),
            (libc::IPPROTO_IP, libc::IP_MINTTL),
        ]
    };
    for (level, name) in opts {
        setsockopt_int(fd, level, name, 255)?;
    }
    Ok(())
}

// ---- rtnetlink: the socket ----

const NLMSG_HDR_LEN: usize = 16;

/// Bytes of one `recv` from rtnetlink: more than the kernel puts in one dump datagram (32 KiB at most).
const NETLINK_RECV_LEN: usize = 64 * 1024;

/// How long to wait for the kernel's answer before giving up.
const NETLINK_TIMEOUT: Duration = Duration::from_secs(5);

/// A `NETLINK_ROUTE` socket talking to the kernel, with its own sequence numbers.
struct Netlink {
    fd: OwnedFd,
    seq: u32,
}

impl Netlink {
    fn open() -> io::Result<Netlink> {
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
        Ok(Netlink {
            // SAFETY: `fd` is fresh and owned by nothing else.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: 0,
        })
    }

    /// Sets an `int` socket option.
    fn set_option(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        setsockopt_int(self.fd.as_raw_fd(), level, name, value)
    }

    /// The next `count` sequence numbers; returns the first.
    fn take_seq(&mut self, count: u32) -> u32 {
        let first = self.seq.wrapping_add(1);
        self.seq = self.seq.wrapping_add(count);
        first
    }

    /// Sends `buf` (one or more netlink messages) to the kernel in one datagram.
    fn send(&self, buf: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value (pid 0 = the kernel).
        let mut kernel: libc::sockaddr_nl = unsafe { mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `buf` is a valid buffer of the given length; `kernel` is a valid sockaddr_nl.
        let sent = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receives one datagram into `buf`, waiting at most [`NETLINK_TIMEOUT`].
    fn recv<'a>(&self, buf: &'a mut [u8]) -> io::Result<&'a [u8]> {
        loop {
            if !poll_one(self.fd.as_raw_fd(), libc::POLLIN, NETLINK_TIMEOUT)? {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no answer from rtnetlink",
                ));
            }
            // Slice again by length: returning the `Some` borrowed inside the loop does not pass the borrow
            // checker.
            let n = match self.recv_now(buf)? {
                Some(d) => d.len(),
                None => continue,
            };
            return Ok(&buf[..n]);
        }
    }

    /// Receives one datagram into `buf` if one is queued, without waiting. A datagram longer than `buf` is
    /// an error (`InvalidData`), not a silent truncation.
    fn recv_now<'a>(&self, buf: &'a mut [u8]) -> io::Result<Option<&'a [u8]>> {
        // SAFETY: `buf` is a writable buffer of the given length. MSG_TRUNC makes the call return the
        // datagram's real length.
        let n = unsafe {
            libc::recv(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_TRUNC | libc::MSG_DONTWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(e),
            };
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("rtnetlink datagram of {n} bytes truncated"),
            ));
        }
        Ok(Some(&buf[..n]))
    }
}

/// One netlink message of a received datagram.
#[derive(Clone, Copy, Debug)]
struct NlMsg<'a> {
    kind: u16,
    flags: u16,
    seq: u32,
    /// The bytes after the 16-byte header.
    payload: &'a [u8],
}

/// Splits a datagram into its netlink messages (`NLMSG_ALIGN`ed); a header whose length runs past the
/// datagram or is shorter than a header is an error.
fn nl_messages(mut buf: &[u8]) -> impl Iterator<Item = io::Result<NlMsg<'_>>> {
    std::iter::from_fn(move || {
        if buf.len() < NLMSG_HDR_LEN {
            return None;
        }
        let len = u32::from_ne_bytes(buf[0..4].try_into().unwrap()) as usize;
        if len < NLMSG_HDR_LEN || len > buf.len() {
            buf = &[];
            return Some(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "truncated netlink message",
            )));
        }
        let msg = NlMsg {
            kind: u16::from_ne_bytes(buf[4..6].try_into().unwrap()),
            flags: u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            seq: u32::from_ne_bytes(buf[8..12].try_into().unwrap()),
            payload: &buf[NLMSG_HDR_LEN..len],
        };
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some(Ok(msg))
    })
}

/// The errno of an `NLMSG_ERROR` message's payload: 0 for an acknowledgement, else positive.
fn nlmsg_errno(payload: &[u8]) -> io::Result<i32> {
    let errno = payload
        .get(0..4)
        .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "short netlink error"))?;
    Ok(-errno)
}

/// Starts a netlink message of type `kind` in `buf` (length filled in by [`nlmsg_end`]); returns its offset.
fn nlmsg_begin(buf: &mut Vec<u8>, kind: u16, flags: u16, seq: u32) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    start
}

/// Writes the length of the message started at `start`.
fn nlmsg_end(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

fn nla_put(buf: &mut Vec<u8>, kind: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(payload);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

/// The attributes (type without the nested/byte-order flags, payload) of a netlink message body.
fn nla_iter(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let kind = u16::from_ne_bytes([buf[2], buf[3]]) & 0x3fff;
        if len < 4 || len > buf.len() {
            return None;
        }
        let payload = &buf[4..len];
        buf = &buf[((len + 3) & !3).min(buf.len())..];
        Some((kind, payload))
    })
}

// ---- rtnetlink: RTM_NEWADDR ----

const IFADDRMSG_LEN: usize = 8;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;

/// Builds an `RTM_NEWADDR` request (create or replace) for `addr/prefix_len` on `ifindex`.
/// IPv6 addresses are added with `IFA_F_NODAD`: a tunnel inside address has no neighbours to collide with,
/// and duplicate-address detection would keep it tentative (unusable) for a second or more.
fn newaddr_request(ifindex: u32, addr: IpAddr, prefix_len: u8, seq: u32) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64);
    let flags =
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK | libc::NLM_F_CREATE | libc::NLM_F_REPLACE) as u16;
    let start = nlmsg_begin(&mut msg, libc::RTM_NEWADDR, flags, seq);
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
    nlmsg_end(&mut msg, start);
    msg
}

/// Adds `addr/prefix_len` to interface `ifindex` through rtnetlink and waits for the kernel's answer.
pub fn add_address(ifindex: u32, addr: IpAddr, prefix_len: u8) -> io::Result<()> {
    let mut nl = Netlink::open()?;
    let seq = nl.take_seq(1);
    nl.send(&newaddr_request(ifindex, addr, prefix_len, seq))?;
    let mut answer = vec![0u8; NETLINK_RECV_LEN];
    loop {
        if let Some(result) = parse_ack(nl.recv(&mut answer)?, seq) {
            return result;
        }
    }
}

/// Reads an `NLMSG_ERROR` answer for `seq`: `Some(Ok)` for an ACK, `Some(Err)` for a kernel error,
/// `None` if the buffer holds no answer to `seq`.
fn parse_ack(buf: &[u8], seq: u32) -> Option<io::Result<()>> {
    for msg in nl_messages(buf) {
        let msg = match msg {
            Ok(m) => m,
            Err(e) => return Some(Err(e)),
        };
        if msg.kind == libc::NLMSG_ERROR as u16 && msg.seq == seq {
            return Some(match nlmsg_errno(msg.payload) {
                Ok(0) => Ok(()),
                Ok(errno) => Err(io::Error::from_raw_os_error(errno)),
                Err(e) => Err(e),
            });
        }
    }
    None
}

// ---- rtnetlink: routes ----

/// The `rtm_protocol` of every route braid installs, so that `ip route show proto 212` (or
/// `proto braid` after `echo "212 braid" > /etc/iproute2/rt_protos.d/braid.conf`) lists exactly braid's
/// routes, and so that braid's deletes and its stale-route flush touch nothing else. 212 is neither one of
/// the kernel's `RTPROT_*` values (`include/uapi/linux/rtnetlink.h`, 0-18, 42, 99, 186-192) nor in
/// iproute2's `rt_protos`; there is no registry beyond those two.
pub const RTPROT_BRAID: u8 = 212;

/// `sizeof(struct rtmsg)`.
const RTMSG_LEN: usize = 12;

/// Requests per `sendmsg` are packed up to this many bytes (about a thousand routes).
const ROUTE_BATCH_BYTES: usize = 64 * 1024;

/// Receive buffer asked for on a route socket, so that the kernel's error answers to a whole batch fit.
const ROUTE_SOCKET_RCVBUF: libc::c_int = 4 << 20;

/// Whether a route change adds (create or replace) or deletes.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum RouteOp {
    /// `RTM_NEWROUTE` with `NLM_F_CREATE | NLM_F_REPLACE`: idempotent; replaces a route of the same
    /// prefix and metric in the main table, whoever installed it.
    Replace,
    /// `RTM_DELROUTE` of braid's route (protocol [`RTPROT_BRAID`]) to the prefix out of the interface.
    Delete,
}

/// A unicast route in the main table to `dst/len` straight out of interface `ifindex` (no gateway: the
/// TUN device is point-to-point), with protocol [`RTPROT_BRAID`] and an optional metric.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct RouteSpec {
    /// The destination prefix's address, host bits clear.
    pub dst: IpAddr,
    pub len: u8,
    pub ifindex: u32,
    /// `RTA_PRIORITY` (the metric `ip route` shows); `None` leaves the kernel's default (0 for IPv4, 1024
    /// for IPv6) on add and matches any metric on delete.
    pub metric: Option<u32>,
}

/// A route as an `RTM_GETROUTE` dump lists it (the fields braid looks at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelRoute {
    pub dst: IpAddr,
    pub len: u8,
    /// Routing table id (`RTA_TABLE`, else `rtm_table`).
    pub table: u32,
    pub protocol: u8,
    /// `rtm_type` (`RTN_UNICAST` = 1, ...).
    pub kind: u8,
    /// Output interface; `None` for multipath or interface-less routes.
    pub oif: Option<u32>,
    pub metric: Option<u32>,
}

/// Appends one `RTM_NEWROUTE`/`RTM_DELROUTE` message for `route` to `buf`. In a batch, without `ack`: the
/// kernel then answers only if the change fails, and the batch ends with an acknowledged `NLMSG_NOOP`.
fn route_request(buf: &mut Vec<u8>, op: RouteOp, route: &RouteSpec, seq: u32, ack: bool) {
    let (kind, mut flags) = match op {
        RouteOp::Replace => (
            libc::RTM_NEWROUTE,
            libc::NLM_F_REQUEST | libc::NLM_F_CREATE | libc::NLM_F_REPLACE,
        ),
        RouteOp::Delete => (libc::RTM_DELROUTE, libc::NLM_F_REQUEST),
    };
    if ack {
        flags |= libc::NLM_F_ACK;
    }
    let start = nlmsg_begin(buf, kind, flags as u16, seq);
    let family = match route.dst {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    // IPv4 routes without a gateway are link-scoped (as `ip route add P dev D` makes them); the kernel keeps
    // no scope for IPv6 routes and lists them as universe. A delete matches any scope.
    let scope = match (op, route.dst) {
        (RouteOp::Delete, _) => libc::RT_SCOPE_NOWHERE,
        (RouteOp::Replace, IpAddr::V4(_)) => libc::RT_SCOPE_LINK,
        (RouteOp::Replace, IpAddr::V6(_)) => libc::RT_SCOPE_UNIVERSE,
    };
    // struct rtmsg { family, dst_len, src_len, tos, table, protocol, scope, type, flags: u32 }
    buf.extend_from_slice(&[
        family as u8,
        route.len,
        0,
        0,
        libc::RT_TABLE_MAIN,
        RTPROT_BRAID,
        scope,
        libc::RTN_UNICAST,
    ]);
    buf.extend_from_slice(&0u32.to_ne_bytes());
    match route.dst {
        IpAddr::V4(a) => nla_put(buf, libc::RTA_DST, &a.octets()),
        IpAddr::V6(a) => nla_put(buf, libc::RTA_DST, &a.octets()),
    }
    nla_put(buf, libc::RTA_OIF, &route.ifindex.to_ne_bytes());
    if let Some(metric) = route.metric {
        nla_put(buf, libc::RTA_PRIORITY, &metric.to_ne_bytes());
    }
    nlmsg_end(buf, start);
}

/// Appends an `NLMSG_NOOP` with `NLM_F_ACK`: the kernel acknowledges it after every message before it.
fn noop_request(buf: &mut Vec<u8>, seq: u32) {
    let start = nlmsg_begin(
        buf,
        libc::NLMSG_NOOP as u16,
        (libc::NLM_F_REQUEST | libc::NLM_F_ACK) as u16,
        seq,
    );
    nlmsg_end(buf, start);
}

/// Reads the kernel's answers to a batch from one datagram: the errno of each failed request (sequence
/// numbers `first..first + errors.len()`) into `errors`; returns whether the acknowledgement of the closing
/// `NLMSG_NOOP` (sequence `noop`) came, after which nothing more about the batch will.
fn batch_answers(buf: &[u8], first: u32, noop: u32, errors: &mut [i32]) -> io::Result<bool> {
    let mut done = false;
    for msg in nl_messages(buf) {
        let msg = msg?;
        if msg.kind != libc::NLMSG_ERROR as u16 {
            continue;
        }
        if msg.seq == noop {
            done = true;
            continue;
        }
        let i = msg.seq.wrapping_sub(first) as usize;
        if let Some(e) = errors.get_mut(i) {
            *e = nlmsg_errno(msg.payload)?;
        }
    }
    Ok(done)
}

/// Parses one `RTM_NEWROUTE` message of a dump (payload after the netlink header).
fn parse_route(payload: &[u8]) -> Option<KernelRoute> {
    if payload.len() < RTMSG_LEN {
        return None;
    }
    let family = i32::from(payload[0]);
    let mut route = KernelRoute {
        dst: match family {
            libc::AF_INET => IpAddr::from([0u8; 4]),
            libc::AF_INET6 => IpAddr::from([0u8; 16]),
            _ => return None,
        },
        len: payload[1],
        table: u32::from(payload[4]),
        protocol: payload[5],
        kind: payload[7],
        oif: None,
        metric: None,
    };
    for (kind, value) in nla_iter(&payload[RTMSG_LEN..]) {
        match kind {
            libc::RTA_DST => {
                route.dst = match (family, value.len()) {
                    (libc::AF_INET, 4) => IpAddr::from(<[u8; 4]>::try_from(value).ok()?),
                    (libc::AF_INET6, 16) => IpAddr::from(<[u8; 16]>::try_from(value).ok()?),
                    _ => return None,
                }
            }
            libc::RTA_TABLE => route.table = u32::from_ne_bytes(value.try_into().ok()?),
            libc::RTA_OIF => route.oif = Some(u32::from_ne_bytes(value.try_into().ok()?)),
            libc::RTA_PRIORITY => route.metric = Some(u32::from_ne_bytes(value.try_into().ok()?)),
            _ => {}
        }
    }
    Some(route)
}

/// An rtnetlink socket for changing and listing routes, with batched requests.
pub struct RouteSocket {
    nl: Netlink,
    /// Reused for requests and answers.
    buf: Vec<u8>,
    answer: Vec<u8>,
    /// Batches whose error answers overflowed the receive buffer and were redone one route at a time.
    overflows: u64,
}

impl RouteSocket {
    /// Opens the socket: a 4 MiB receive buffer (forced when the process may, as braid with
    /// `CAP_NET_ADMIN` does) and `NETLINK_CAP_ACK`, so that an error answer does not carry a copy of the
    /// failed request.
    pub fn open() -> io::Result<RouteSocket> {
        let nl = Netlink::open()?;
        if nl
            .set_option(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, ROUTE_SOCKET_RCVBUF)
            .is_err()
        {
            nl.set_option(libc::SOL_SOCKET, libc::SO_RCVBUF, ROUTE_SOCKET_RCVBUF)?;
        }
        // Older kernels (before 4.3) lack it; answers are then just longer.
        let _ = nl.set_option(libc::SOL_NETLINK, libc::NETLINK_CAP_ACK, 1);
        Ok(RouteSocket {
            nl,
            buf: Vec::with_capacity(ROUTE_BATCH_BYTES + 256),
            answer: vec![0u8; NETLINK_RECV_LEN],
            overflows: 0,
        })
    }

    /// Applies `changes` in order, packing as many requests into each `sendmsg` as fit in 64 KiB, and
    /// returns one result per change. A change that fails (`EEXIST`, `ENETDOWN`, `ESRCH` for a delete of an
    /// absent route, ...) fails alone; the rest of its batch still applies. `Err` means the socket itself
    /// failed; changes of batches sent before that have been applied.
    pub fn apply(&mut self, changes: &[(RouteOp, RouteSpec)]) -> io::Result<Vec<io::Result<()>>> {
        let mut results = Vec::with_capacity(changes.len());
        let mut rest = changes;
        while !rest.is_empty() {
            self.buf.clear();
            // Requests take sequence numbers `first..noop`, the closing NOOP takes `noop`.
            let first = self.nl.seq.wrapping_add(1);
            let mut count = 0;
            for (op, route) in rest {
                if count > 0 && self.buf.len() + 128 > ROUTE_BATCH_BYTES {
                    break;
                }
                route_request(
                    &mut self.buf,
                    *op,
                    route,
                    first.wrapping_add(count as u32),
                    false,
                );
                count += 1;
            }
            let noop = first.wrapping_add(count as u32);
            self.nl.seq = noop;
            noop_request(&mut self.buf, noop);
            let errors = self.send_batch(first, noop, count)?;
            let errors = match errors {
                Some(errors) => errors,
                None => {
                    // Error answers were lost to a full receive buffer: redo this batch one change at a
                    // time (adds replace, deletes of what is gone answer ESRCH), so every result is known.
                    self.overflows += 1;
                    rest[..count]
                        .iter()
                        .map(|(op, route)| self.apply_one(*op, route))
                        .collect::<io::Result<Vec<i32>>>()?
                }
            };
            results.extend(errors.into_iter().map(|errno| {
                if errno == 0 {
                    Ok(())
                } else {
                    Err(io::Error::from_raw_os_error(errno))
                }
            }));
            rest = &rest[count..];
        }
        Ok(results)
    }

    /// Sends the batch in `self.buf` and collects its answers: the errno of each of its `count` requests
    /// (0 for success), or `None` if the kernel dropped answers because the receive buffer was full.
    fn send_batch(&mut self, first: u32, noop: u32, count: usize) -> io::Result<Option<Vec<i32>>> {
        let mut errors = vec![0i32; count];
        self.nl.send(&self.buf)?;
        let mut overflowed = false;
        loop {
            // rtnetlink handles the whole datagram inside sendmsg, so every answer is queued by now: if the
            // acknowledgement of the NOOP is not among them after an overflow, it was dropped.
            let datagram = if overflowed {
                match self.nl.recv_now(&mut self.answer)? {
                    Some(d) => d,
                    None => return Ok(None),
                }
            } else {
                match self.nl.recv(&mut self.answer) {
                    Ok(d) => d,
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        overflowed = true;
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            };
            if batch_answers(datagram, first, noop, &mut errors)? {
                return Ok(if overflowed { None } else { Some(errors) });
            }
        }
    }

    /// One change with `NLM_F_ACK`, waiting for its answer: the errno, 0 for success.
    fn apply_one(&mut self, op: RouteOp, route: &RouteSpec) -> io::Result<i32> {
        self.buf.clear();
        let seq = self.nl.take_seq(1);
        route_request(&mut self.buf, op, route, seq, true);
        self.nl.send(&self.buf)?;
        loop {
            let datagram = self.nl.recv(&mut self.answer)?;
            for msg in nl_messages(datagram) {
                let msg = msg?;
                if msg.kind == libc::NLMSG_ERROR as u16 && msg.seq == seq {
                    return nlmsg_errno(msg.payload);
                }
            }
        }
    }

    /// Sets the socket's receive buffer (`SO_RCVBUF`; the kernel doubles it). Small buffers make the
    /// kernel drop error answers to a large batch, which [`RouteSocket::apply`] then recovers from route by
    /// route: tests use this to reach that path.
    pub fn set_receive_buffer(&mut self, bytes: usize) -> io::Result<()> {
        let bytes = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
        self.nl.set_option(libc::SOL_SOCKET, libc::SO_RCVBUF, bytes)
    }

    /// How many batches had to be redone one route at a time because answers overflowed.
    pub fn overflows(&self) -> u64 {
        self.overflows
    }

    /// Every IPv4 and IPv6 route of every table (`RTM_GETROUTE` with `NLM_F_DUMP`). A dump the kernel marks
    /// as interrupted by a concurrent change (`NLM_F_DUMP_INTR`) is started again, up to three times.
    pub fn dump(&mut self) -> io::Result<Vec<KernelRoute>> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.dump_once()? {
                Some(routes) => return Ok(routes),
                None if attempts < 3 => continue,
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::Interrupted,
                        "route dump interrupted by changes three times",
                    ))
                }
            }
        }
    }

    /// One dump; `None` if it was interrupted.
    fn dump_once(&mut self) -> io::Result<Option<Vec<KernelRoute>>> {
        self.buf.clear();
        let seq = self.nl.take_seq(1);
        let start = nlmsg_begin(
            &mut self.buf,
            libc::RTM_GETROUTE,
            (libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16,
            seq,
        );
        self.buf.push(libc::AF_UNSPEC as u8);
        self.buf.extend_from_slice(&[0u8; RTMSG_LEN - 1]);
        nlmsg_end(&mut self.buf, start);
        self.nl.send(&self.buf)?;
        let mut routes = Vec::new();
        let mut interrupted = false;
        loop {
            let datagram = self.nl.recv(&mut self.answer)?;
            for msg in nl_messages(datagram) {
                let msg = msg?;
                if msg.seq != seq {
                    continue;
                }
                interrupted |= msg.flags & libc::NLM_F_DUMP_INTR as u16 != 0;
                match msg.kind {
                    k if k == libc::NLMSG_DONE as u16 => {
                        return Ok((!interrupted).then_some(routes));
                    }
                    k if k == libc::NLMSG_ERROR as u16 => {
                        let errno = nlmsg_errno(msg.payload)?;
                        return Err(io::Error::from_raw_os_error(errno.max(1)));
                    }
                    libc::RTM_NEWROUTE => routes.extend(parse_route(msg.payload)),
                    _ => {}
                }
            }
        }
    }
}

impl std::fmt::Debug for RouteSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteSocket")
            .field("fd", &self.nl.fd.as_raw_fd())
            .field("overflows", &self.overflows)
            .finish()
    }
}

// ---- UDP send batching
//
// `sendmmsg(2)` of a batch of messages, each one contiguous range of a caller-owned buffer to one destination,
// optionally cut by the kernel into datagrams of `segment` octets (UDP GSO: a `UDP_SEGMENT` control message,
// Linux 4.18+). The arrays the system call reads (mmsghdr, iovec, sockaddr, cmsg) live in a [`SendBatch`]
// allocated once and refilled for every call: nothing is allocated per call.

/// The most datagrams one UDP GSO message may carry (the kernel's `UDP_MAX_SEGMENTS`).
pub const UDP_MAX_SEGMENTS: usize = 64;
/// The most octets one UDP GSO message may carry: the largest IPv6 payload less the UDP header (within the
/// IPv4 limit too).
pub const UDP_GSO_MAX_BYTES: usize = 65535 - 40 - 8;

/// One message of a [`SendBatch`]: `len` octets at `start` of the buffer given to [`send_batch`], to `to`.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SendMsg {
    pub start: usize,
    pub len: usize,
    pub to: std::net::SocketAddr,
    /// The datagram size for UDP GSO (the last datagram may be shorter); 0 sends the range as one datagram.
    pub segment: u16,
}

// SAFETY: CMSG_SPACE is arithmetic on its argument only.
const CMSG_U16_SPACE: usize = unsafe { libc::CMSG_SPACE(2) } as usize;

/// Room for one control message carrying a `u16`, aligned for `cmsghdr`.
#[repr(C, align(8))]
#[derive(Copy, Clone)]
struct CmsgU16([u8; CMSG_U16_SPACE]);

/// A batch of messages for [`send_batch`], with the system call's arrays (allocated once, reused).
pub struct SendBatch {
    msgs: Vec<SendMsg>,
    hdrs: Box<[libc::mmsghdr]>,
    iovs: Box<[libc::iovec]>,
    addrs: Box<[libc::sockaddr_in6]>,
    cmsgs: Box<[CmsgU16]>,
}

// SAFETY: the raw pointers in `hdrs` and `iovs` are written and used only inside `send_batch`, where they point
// into the batch itself and the buffer borrowed for that call; nothing dereferences them between calls.
unsafe impl Send for SendBatch {}

impl SendBatch {
    /// A batch of at most `capacity` messages (at least 1).
    pub fn with_capacity(capacity: usize) -> SendBatch {
        let n = capacity.max(1);
        // SAFETY: mmsghdr, iovec and sockaddr_in6 are plain C structs for which all-zero bytes are valid
        // (null pointers, zero lengths).
        let (hdr, iov, addr) = unsafe {
            (
                mem::zeroed::<libc::mmsghdr>(),
                mem::zeroed::<libc::iovec>(),
                mem::zeroed::<libc::sockaddr_in6>(),
            )
        };
        SendBatch {
            msgs: Vec::with_capacity(n),
            hdrs: vec![hdr; n].into_boxed_slice(),
            iovs: vec![iov; n].into_boxed_slice(),
            addrs: vec![addr; n].into_boxed_slice(),
            cmsgs: vec![CmsgU16([0; CMSG_U16_SPACE]); n].into_boxed_slice(),
        }
    }

    /// Adds a message; `false` (and nothing added) when the batch is full.
    pub fn push(&mut self, msg: SendMsg) -> bool {
        if self.msgs.len() == self.hdrs.len() {
            return false;
        }
        self.msgs.push(msg);
        true
    }

    pub fn clear(&mut self) {
        self.msgs.clear();
    }

    pub fn msgs(&self) -> &[SendMsg] {
        &self.msgs
    }

    pub fn len(&self) -> usize {
        self.msgs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.msgs.len() == self.hdrs.len()
    }
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("msgs", &self.msgs)
            .field("capacity", &self.hdrs.len())
            .finish()
    }
}

/// Sends messages `from..` of `batch` on the UDP socket `fd`, whose ranges lie in `buf`, in one `sendmmsg`.
/// Returns how many messages went out (at least 1); the kernel stops at the first message it refuses, and a
/// later call starting there returns that message's error.
///
/// # Errors
/// The error of message `from` (`WouldBlock` when the socket buffer is full; `EIO`, `EINVAL` or
/// `ENOPROTOOPT` when the kernel refuses UDP GSO on this socket or route); `InvalidInput` for a range outside
/// `buf`, a destination of the wrong family for `fd` notwithstanding (the kernel answers that), or `from` past
/// the batch.
pub fn send_batch(fd: RawFd, buf: &[u8], batch: &mut SendBatch, from: usize) -> io::Result<usize> {
    let count = batch.msgs.len().saturating_sub(from);
    if count == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no message to send",
        ));
    }
    for (j, msg) in batch.msgs[from..].iter().enumerate() {
        let data = msg
            .start
            .checked_add(msg.len)
            .and_then(|end| buf.get(msg.start..end))
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "message outside the buffer")
            })?;
        batch.iovs[j] = libc::iovec {
            iov_base: data.as_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        let addr = &mut batch.addrs[j];
        let addr_len = match msg.to {
            std::net::SocketAddr::V4(a) => {
                let sin = libc::sockaddr_in {
                    sin_family: libc::AF_INET as libc::sa_family_t,
                    sin_port: a.port().to_be(),
                    sin_addr: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.ip().octets()),
                    },
                    sin_zero: [0; 8],
                };
                // SAFETY: a sockaddr_in (16 octets, align 4) fits in the sockaddr_in6 slot (28 octets, align 4).
                unsafe {
                    (addr as *mut libc::sockaddr_in6)
                        .cast::<libc::sockaddr_in>()
                        .write(sin)
                };
                mem::size_of::<libc::sockaddr_in>()
            }
            std::net::SocketAddr::V6(a) => {
                *addr = libc::sockaddr_in6 {
                    sin6_family: libc::AF_INET6 as libc::sa_family_t,
                    sin6_port: a.port().to_be(),
                    sin6_flowinfo: a.flowinfo(),
                    sin6_addr: libc::in6_addr {
                        s6_addr: a.ip().octets(),
                    },
                    sin6_scope_id: a.scope_id(),
                };
                mem::size_of::<libc::sockaddr_in6>()
            }
        };
        let (control, control_len) = if msg.segment != 0 {
            let space = &mut batch.cmsgs[j];
            let cmsg = space.0.as_mut_ptr().cast::<libc::cmsghdr>();
            // SAFETY: `space` is CMSG_SPACE(2) octets aligned for cmsghdr: room for the header and a u16 after
            // it, which CMSG_DATA points at.
            unsafe {
                (*cmsg).cmsg_len = libc::CMSG_LEN(2) as _;
                (*cmsg).cmsg_level = libc::SOL_UDP;
                (*cmsg).cmsg_type = libc::UDP_SEGMENT;
                libc::CMSG_DATA(cmsg)
                    .cast::<u16>()
                    .write_unaligned(msg.segment);
            }
            (cmsg.cast::<libc::c_void>(), CMSG_U16_SPACE)
        } else {
            (std::ptr::null_mut(), 0)
        };
        let h = &mut batch.hdrs[j];
        h.msg_len = 0;
        h.msg_hdr.msg_name = (addr as *mut libc::sockaddr_in6).cast();
        h.msg_hdr.msg_namelen = addr_len as libc::socklen_t;
        h.msg_hdr.msg_iov = &mut batch.iovs[j];
        h.msg_hdr.msg_iovlen = 1;
        h.msg_hdr.msg_control = control;
        h.msg_hdr.msg_controllen = control_len as _;
        h.msg_hdr.msg_flags = 0;
    }
    // SAFETY: the first `count` mmsghdrs point at live iovecs, addresses and control messages of `batch`, and
    // the iovecs at ranges of `buf` checked above; all outlive the call, which only reads them.
    let rc = unsafe { libc::sendmmsg(fd, batch.hdrs.as_mut_ptr(), count as libc::c_uint, 0) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else if rc == 0 {
        Err(io::Error::from(io::ErrorKind::WriteZero))
    } else {
        Ok(rc as usize)
    }
}

#[cfg(test)]
mod tests {

    /// A huge array holds its fill, takes writes, is aligned to a huge page, and frees itself.
    #[test]
    fn huge_array_is_an_aligned_array() {
        use super::{HugeArray, HUGE_PAGE};
        #[derive(Copy, Clone, PartialEq, Debug)]
        struct Slot(u64, u32);
        let mut a = HugeArray::new(100_000, Slot(7, 9));
        assert_eq!(a.len(), 100_000);
        assert_eq!(a.as_ptr() as usize % HUGE_PAGE, 0);
        assert!(a.iter().all(|s| *s == Slot(7, 9)));
        a[99_999] = Slot(1, 2);
        a[0].0 = 3;
        assert_eq!(
            (a[0], a[99_999], a[50_000]),
            (Slot(3, 9), Slot(1, 2), Slot(7, 9))
        );
        let empty = HugeArray::new(0, 0u8);
        assert!(empty.is_empty());
        drop((a, empty));
    }

    #[test]
    fn gtsm_sets_ttl_and_minimum_ttl() {
        use std::os::fd::AsRawFd;
        let v4 = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        set_gtsm(v4.as_raw_fd(), false).unwrap();
        assert_eq!(v4.ttl().unwrap(), 255);
        let v6 = std::net::UdpSocket::bind("[::1]:0");
        if let Ok(v6) = v6 {
            set_gtsm(v6.as_raw_fd(), true).unwrap();
        }
        assert!(set_gtsm(-1, false).is_err());
    }

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

    /// An `NLMSG_ERROR` answer to `seq` with `errno` (0 = acknowledgement), capped as with
    /// `NETLINK_CAP_ACK`: the error code and the failed request's header.
    fn error_answer(seq: u32, errno: i32) -> Vec<u8> {
        let mut m = vec![0u8; 36];
        m[0..4].copy_from_slice(&36u32.to_ne_bytes());
        m[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        m[6..8].copy_from_slice(&0x100u16.to_ne_bytes()); // NLM_F_CAPPED
        m[8..12].copy_from_slice(&seq.to_ne_bytes());
        m[16..20].copy_from_slice(&(-errno).to_ne_bytes());
        m
    }

    #[test]
    fn route_request_layout() {
        let v4 = RouteSpec {
            dst: "192.0.2.128".parse().unwrap(),
            len: 25,
            ifindex: 7,
            metric: None,
        };
        let mut buf = Vec::new();
        route_request(&mut buf, RouteOp::Replace, &v4, 41, false);
        // header 16, rtmsg 12, RTA_DST 8, RTA_OIF 8
        assert_eq!(buf.len(), 44);
        assert_eq!(u32::from_ne_bytes(buf[0..4].try_into().unwrap()), 44);
        assert_eq!(u16::from_ne_bytes(buf[4..6].try_into().unwrap()), 24); // RTM_NEWROUTE
        assert_eq!(
            u16::from_ne_bytes(buf[6..8].try_into().unwrap()),
            0x001 | 0x400 | 0x100, // REQUEST | CREATE | REPLACE, no ACK
        );
        assert_eq!(u32::from_ne_bytes(buf[8..12].try_into().unwrap()), 41);
        // family, dst_len, src_len, tos, table main, protocol, scope link, type unicast, flags
        assert_eq!(&buf[16..24], &[2, 25, 0, 0, 254, RTPROT_BRAID, 253, 1]);
        assert_eq!(&buf[24..28], &[0, 0, 0, 0]);
        assert_eq!(u16::from_ne_bytes(buf[28..30].try_into().unwrap()), 8);
        assert_eq!(u16::from_ne_bytes(buf[30..32].try_into().unwrap()), 1); // RTA_DST
        assert_eq!(&buf[32..36], &[192, 0, 2, 128]);
        assert_eq!(u16::from_ne_bytes(buf[36..38].try_into().unwrap()), 8);
        assert_eq!(u16::from_ne_bytes(buf[38..40].try_into().unwrap()), 4); // RTA_OIF
        assert_eq!(u32::from_ne_bytes(buf[40..44].try_into().unwrap()), 7);

        // Appended to the same buffer: an IPv6 delete with a metric.
        let v6 = RouteSpec {
            dst: "2001:db8:1::".parse().unwrap(),
            len: 48,
            ifindex: 7,
            metric: Some(1500),
        };
        route_request(&mut buf, RouteOp::Delete, &v6, 42, false);
        let m = &buf[44..];
        // header 16, rtmsg 12, RTA_DST 20, RTA_OIF 8, RTA_PRIORITY 8
        assert_eq!(m.len(), 64);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()), 64);
        assert_eq!(u16::from_ne_bytes(m[4..6].try_into().unwrap()), 25); // RTM_DELROUTE
        assert_eq!(u16::from_ne_bytes(m[6..8].try_into().unwrap()), 0x001);
        // A delete matches any scope, and only braid's routes.
        assert_eq!(&m[16..24], &[10, 48, 0, 0, 254, RTPROT_BRAID, 255, 1]);
        assert_eq!(u16::from_ne_bytes(m[28..30].try_into().unwrap()), 20);
        assert_eq!(&m[32..36], &[0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(u16::from_ne_bytes(m[58..60].try_into().unwrap()), 6); // RTA_PRIORITY
        assert_eq!(u32::from_ne_bytes(m[60..64].try_into().unwrap()), 1500);

        // IPv6 routes are added with universe scope; a single change asks for its acknowledgement.
        let mut add6 = Vec::new();
        route_request(&mut add6, RouteOp::Replace, &v6, 1, true);
        assert_eq!(add6[22], 0);
        assert_eq!(u16::from_ne_bytes(add6[6..8].try_into().unwrap()), 0x505);

        let mut noop = Vec::new();
        noop_request(&mut noop, 43);
        assert_eq!(noop.len(), 16);
        assert_eq!(u16::from_ne_bytes(noop[4..6].try_into().unwrap()), 1); // NLMSG_NOOP
        assert_eq!(u16::from_ne_bytes(noop[6..8].try_into().unwrap()), 0x005); // REQUEST | ACK
    }

    #[test]
    fn batch_answers_per_request() {
        // A batch of 5 requests (seq 100..105) and its NOOP (seq 105): requests 101 and 104 failed.
        let mut errors = [0i32; 5];
        let mut datagram = error_answer(101, libc::EEXIST);
        datagram.extend(error_answer(99, libc::EINVAL)); // an older answer: not ours, ignored
        datagram.extend(error_answer(104, libc::ESRCH));
        assert!(!batch_answers(&datagram, 100, 105, &mut errors).unwrap());
        assert_eq!(errors, [0, libc::EEXIST, 0, 0, libc::ESRCH]);
        // The NOOP's acknowledgement closes the batch, possibly in a later datagram.
        let mut last = error_answer(102, libc::ENETUNREACH);
        last.extend(error_answer(105, 0));
        assert!(batch_answers(&last, 100, 105, &mut errors).unwrap());
        assert_eq!(errors, [0, libc::EEXIST, libc::ENETUNREACH, 0, libc::ESRCH]);

        // Sequence numbers that wrap around inside a batch.
        let mut errors = [0i32; 3];
        let mut d = error_answer(0, libc::ENODEV);
        d.extend(error_answer(1, 0));
        assert!(batch_answers(&d, u32::MAX - 1, 1, &mut errors).unwrap());
        assert_eq!(errors, [0, 0, libc::ENODEV]);

        // A message running past the datagram is an error, not a silent stop.
        let cut = error_answer(101, libc::EEXIST);
        assert!(batch_answers(&cut[..30], 100, 105, &mut [0; 5]).is_err());
        let mut bad = error_answer(101, libc::EEXIST);
        bad[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(batch_answers(&bad, 100, 105, &mut [0; 5]).is_err());
    }

    #[test]
    fn dump_message_parsing() {
        // An RTM_NEWROUTE as the kernel dumps it: 203.0.113.0/24 dev 9 proto braid metric 20, table main.
        let mut m = Vec::new();
        let start = nlmsg_begin(&mut m, libc::RTM_NEWROUTE, 0x2, 5);
        m.extend_from_slice(&[2, 24, 0, 0, 254, RTPROT_BRAID, 253, 1, 0, 0, 0, 0]);
        nla_put(&mut m, libc::RTA_TABLE, &254u32.to_ne_bytes());
        nla_put(&mut m, libc::RTA_DST, &[203, 0, 113, 0]);
        nla_put(&mut m, libc::RTA_PRIORITY, &20u32.to_ne_bytes());
        nla_put(&mut m, libc::RTA_OIF, &9u32.to_ne_bytes());
        nlmsg_end(&mut m, start);
        let msg = nl_messages(&m).next().unwrap().unwrap();
        assert_eq!(msg.kind, libc::RTM_NEWROUTE);
        assert_eq!(
            parse_route(msg.payload),
            Some(KernelRoute {
                dst: "203.0.113.0".parse().unwrap(),
                len: 24,
                table: 254,
                protocol: RTPROT_BRAID,
                kind: 1,
                oif: Some(9),
                metric: Some(20),
            })
        );
        // A default route has no RTA_DST; an IPv6 route has a 16-byte one; a bad length is refused.
        let default = [10u8, 0, 0, 0, 254, 3, 0, 1, 0, 0, 0, 0];
        let r = parse_route(&default).unwrap();
        assert_eq!((r.dst, r.len, r.oif), ("::".parse().unwrap(), 0, None));
        let mut bad = default.to_vec();
        nla_put(&mut bad, libc::RTA_DST, &[1, 2, 3, 4]);
        assert_eq!(parse_route(&bad), None);
        assert_eq!(parse_route(&default[..8]), None);
    }

    #[test]
    fn interface_names() {
        assert!(check_ifname("braid0").is_ok());
        assert!(check_ifname("").is_err());
        assert!(check_ifname("a/b").is_err());
        assert!(check_ifname("sixteen-chars-xx").is_err());
    }

    #[test]
    fn send_batch_with_and_without_udp_gso() {
        use std::net::UdpSocket;
        for local in ["127.0.0.1:0", "[::1]:0"] {
            let (Ok(rx), Ok(tx)) = (UdpSocket::bind(local), UdpSocket::bind(local)) else {
                continue; // no IPv6 here
            };
            rx.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let to = rx.local_addr().unwrap();
            let buf: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
            let mut batch = SendBatch::with_capacity(3);
            assert!(batch.is_empty());
            // 350 octets in datagrams of 100, then one plain datagram of 50, then 200 in two of 100.
            for (start, len, segment) in [(0, 350, 100), (400, 50, 0), (600, 200, 100)] {
                assert!(batch.push(SendMsg {
                    start,
                    len,
                    to,
                    segment
                }));
            }
            assert!(batch.is_full());
            assert!(!batch.push(batch.msgs()[0]));
            let mut sent = 0;
            while sent < batch.len() {
                sent += send_batch(tx.as_raw_fd(), &buf, &mut batch, sent).unwrap();
            }
            let expect: [(usize, usize); 7] = [
                (0, 100),
                (100, 100),
                (200, 100),
                (300, 50),
                (400, 50),
                (600, 100),
                (700, 100),
            ];
            let mut got = [0u8; 2000];
            for (start, len) in expect {
                let n = rx.recv(&mut got).unwrap();
                assert_eq!(&got[..n], &buf[start..start + len], "{local}");
            }
            // A range outside the buffer is refused before the system call.
            batch.clear();
            batch.push(SendMsg {
                start: 990,
                len: 20,
                to,
                segment: 0,
            });
            let e = send_batch(tx.as_raw_fd(), &buf, &mut batch, 0).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(send_batch(tx.as_raw_fd(), &buf, &mut batch, 1).is_err());
            // A message the kernel refuses (1000 segments: more than its UDP_MAX_SEGMENTS, 64 or 128) is an
            // error, not a silent send.
            batch.clear();
            batch.push(SendMsg {
                start: 0,
                len: 1000,
                to,
                segment: 1,
            });
            assert!(send_batch(tx.as_raw_fd(), &buf, &mut batch, 0).is_err());
        }
    }
}
