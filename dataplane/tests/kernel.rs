//! Kernel routes against the real kernel, as root, inside a throwaway network namespace (they refuse to run
//! anywhere else):
//!
//! ```text
//! ip netns add t-kr
//! ip netns exec t-kr cargo test -p braid-dataplane --test kernel -- --ignored --nocapture
//! ip netns del t-kr
//! ```
//!
//! Each test makes its own veth pair (this kernel has no `dummy` module), uses only documentation prefixes
//! (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32) and sends no traffic.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::time::Instant;

use braid_dataplane::{KernelRoutes, Prefix, RTPROT_BRAID};

/// Runs `ip ARGS`, panicking on failure; returns its standard output.
fn ip(args: &str) -> String {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("running ip");
    assert!(
        out.status.success(),
        "ip {args}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Panics unless this process is in a named network namespace other than the host's.
fn require_throwaway_namespace() {
    let out = Command::new("ip")
        .args(["netns", "identify", &std::process::id().to_string()])
        .output()
        .expect("running ip netns identify");
    let name = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !name.is_empty(),
        "refusing to change routes outside a throwaway namespace: run with \
         `ip netns add t-kr && ip netns exec t-kr cargo test -p braid-dataplane --test kernel -- --ignored`"
    );
}

/// A veth pair `name`/`name`p, both up.
fn veth(name: &str) {
    ip(&format!("link add {name} type veth peer name {name}p"));
    ip(&format!("link set {name} up"));
    ip(&format!("link set {name}p up"));
}

/// braid's routes on `dev` as `ip` lists them, both families.
fn listed(dev: &str) -> Vec<String> {
    let mut lines: Vec<String> = Vec::new();
    for family in ["-4", "-6"] {
        let out = ip(&format!(
            "{family} route show proto {RTPROT_BRAID} dev {dev}"
        ));
        lines.extend(out.lines().map(|l| l.trim().to_owned()));
    }
    lines
}

/// The destination column of `ip route` lines, as prefixes (`ip` prints host routes without `/32`).
fn listed_prefixes(dev: &str) -> BTreeSet<Prefix> {
    listed(dev)
        .iter()
        .map(|l| {
            let dst = l.split_whitespace().next().unwrap();
            match dst.parse::<Prefix>() {
                Ok(p) => p,
                Err(_) => Prefix::host(dst.parse().unwrap()),
            }
        })
        .collect()
}

fn v4(a: [u8; 4], len: u8) -> Prefix {
    Prefix::new(IpAddr::V4(Ipv4Addr::from(a)), len).unwrap()
}

fn v6(a: u128, len: u8) -> Prefix {
    Prefix::new(IpAddr::V6(Ipv6Addr::from(a)), len).unwrap()
}

/// 1,000 prefixes: 639 IPv4 (every host of 192.0.2.0/24 and 198.51.100.0/24, and 203.0.113.0/24 with its
/// subnets down to /30, so nested) and 361 IPv6 (/64s and their /48 and /56 in 2001:db8::/32).
fn thousand() -> Vec<Prefix> {
    let mut v = Vec::new();
    for net in [[192, 0, 2], [198, 51, 100]] {
        for host in 0..=255u8 {
            v.push(v4([net[0], net[1], net[2], host], 32));
        }
    }
    for len in 24..=30u8 {
        let step = 1u32 << (32 - len);
        for i in 0..(256 / step) {
            v.push(v4([203, 0, 113, (i * step) as u8], len));
        }
    }
    let base: u128 = 0x2001_0db8_0001_u128 << 80;
    v.push(v6(base, 48));
    v.push(v6(base, 56));
    for i in 0..359u128 {
        v.push(v6(base | (i << 64), 64));
    }
    assert_eq!(v.len(), 1000);
    v
}

#[test]
#[ignore = "needs root in a throwaway network namespace"]
fn install_list_remove_and_flush() {
    require_throwaway_namespace();
    veth("kr0");
    let mut routes = KernelRoutes::open("kr0").unwrap();
    assert_eq!(routes.flush_stale().unwrap(), 0);

    let all = thousand();
    let failed = routes.apply(&all, &[]);
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(routes.installed().len(), 1000);
    let want: BTreeSet<Prefix> = all.iter().copied().collect();
    assert_eq!(listed_prefixes("kr0"), want);
    // As `ip` shows them (without the `dev` it was asked about).
    let lines = listed("kr0");
    assert!(
        lines.iter().any(|l| l == "192.0.2.7 scope link"),
        "{:?}",
        &lines[..3]
    );
    assert!(lines
        .iter()
        .any(|l| l.starts_with("2001:db8:1::/48 metric 1024")));
    assert_eq!(routes.list().unwrap().len(), 1000);

    // Applying the same routes again replaces them in place.
    assert!(routes.apply(&all[..10], &[]).is_empty());
    assert_eq!(listed("kr0").len(), 1000);

    // Withdraw every other prefix.
    let (gone, kept): (Vec<_>, Vec<_>) = all.iter().enumerate().partition(|(i, _)| i % 2 == 0);
    let gone: Vec<Prefix> = gone.into_iter().map(|(_, p)| *p).collect();
    let kept: BTreeSet<Prefix> = kept.into_iter().map(|(_, p)| *p).collect();
    assert!(routes.apply(&[], &gone).is_empty());
    assert_eq!(listed_prefixes("kr0"), kept);
    assert_eq!(routes.installed(), &kept);
    // Withdrawing again is not a failure (ESRCH is ignored).
    assert!(routes.apply(&[], &gone[..20]).is_empty());

    // Someone else's route to a prefix braid also routes: braid's delete and flush leave it alone.
    ip("route add 192.0.2.1/32 dev kr0 proto static metric 50");
    assert!(routes.apply(&[], &[v4([192, 0, 2, 1], 32)]).is_empty());
    assert!(routes.apply(&[], &[v4([192, 0, 2, 1], 32)]).is_empty());
    assert_eq!(
        ip("route show 192.0.2.1/32 dev kr0").trim(),
        "192.0.2.1 proto static scope link metric 50"
    );

    // A crashed run's routes (this instance forgets them) are found and flushed by the next run.
    let left = listed("kr0").len();
    assert_eq!(left, 499);
    let mut next_run = KernelRoutes::open("kr0").unwrap();
    assert_eq!(next_run.list().unwrap().len(), left);
    assert_eq!(next_run.flush_stale().unwrap(), left);
    assert!(listed("kr0").is_empty());
    assert_eq!(ip("route show 192.0.2.1/32 dev kr0").lines().count(), 1);

    // remove_all after everything is gone already: nothing fails, nothing is left installed.
    assert!(routes.remove_all().is_empty());
    assert!(routes.installed().is_empty());

    // And the normal exit: install, remove_all, nothing listed.
    assert!(routes.apply(&all, &[]).is_empty());
    assert_eq!(listed("kr0").len(), 1000);
    assert!(routes.remove_all().is_empty());
    assert!(listed("kr0").is_empty());
    assert!(routes.installed().is_empty());
    ip("link del kr0");
}

#[test]
#[ignore = "needs root in a throwaway network namespace"]
fn failures_are_reported_per_route() {
    require_throwaway_namespace();
    // IPv6 is disabled on kr1: its IPv6 routes fail, its IPv4 routes in the same batches do not.
    veth("kr1");
    ip("link set kr1 down");
    std::fs::write("/proc/sys/net/ipv6/conf/kr1/disable_ipv6", "1").unwrap();
    ip("link set kr1 up");
    let mut routes = KernelRoutes::open("kr1").unwrap().with_metric(77);
    let all = thousand();
    let failed = routes.apply(&all, &[]);
    let failed_prefixes: BTreeSet<Prefix> = failed.iter().map(|(p, _)| *p).collect();
    let v6: BTreeSet<Prefix> = all.iter().filter(|p| p.addr().is_ipv6()).copied().collect();
    assert_eq!(failed_prefixes, v6);
    println!("IPv6 route on an IPv6-disabled device: {}", failed[0].1);
    assert_eq!(routes.installed().len(), 639);
    assert!(listed("kr1").iter().all(|l| l.ends_with("metric 77")));
    assert_eq!(listed("kr1").len(), 639);

    // Answers overflowing a small receive buffer: the batch is redone route by route and every failure is
    // still reported exactly.
    routes.socket_mut().set_receive_buffer(4096).unwrap();
    let failed = routes.apply(&all, &[]);
    assert_eq!(failed.len(), 361);
    assert!(routes.socket().overflows() > 0, "no overflow reached");
    println!(
        "batches redone after an overflow: {}",
        routes.socket().overflows()
    );

    // With the device down, IPv4 routes fail too.
    ip("link set kr1 down");
    let more = [v4([198, 51, 100, 0], 24), v4([198, 51, 100, 128], 25)];
    let failed = routes.apply(&more, &[]);
    assert_eq!(failed.len(), 2);
    println!("IPv4 route on a down device: {}", failed[0].1);
    ip("link del kr1");
}

#[test]
#[ignore = "needs root in a throwaway network namespace"]
fn hundred_thousand_routes() {
    require_throwaway_namespace();
    veth("kr2");
    let mut routes = KernelRoutes::open("kr2").unwrap();
    // 100,000 /64s under 2001:db8:8000::/33 (IPv4's documentation ranges hold only 1,533 prefixes).
    let prefixes: Vec<Prefix> = (0..100_000u128)
        .map(|i| v6((0x2001_0db8_8000_u128 << 80) | (i << 64), 64))
        .collect();
    let t = Instant::now();
    let failed = routes.apply(&prefixes, &[]);
    let add = t.elapsed();
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(3)]);
    let t = Instant::now();
    let listed = routes.list().unwrap().len();
    let dump = t.elapsed();
    assert_eq!(listed, 100_000);
    let t = Instant::now();
    let failed = routes.remove_all();
    let remove = t.elapsed();
    assert!(failed.is_empty());
    assert!(routes.list().unwrap().is_empty());
    println!(
        "100,000 IPv6 routes: add {:.0} ms ({:.1} us/route), dump {:.0} ms, remove {:.0} ms; overflows {}",
        add.as_secs_f64() * 1e3,
        add.as_secs_f64() * 1e6 / 1e5,
        dump.as_secs_f64() * 1e3,
        remove.as_secs_f64() * 1e3,
        routes.socket().overflows()
    );
    ip("link del kr2");
}
