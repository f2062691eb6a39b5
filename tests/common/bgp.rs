//! BGP interop fixtures: braid in one namespace, a real peer (BIRD 2, FRR bgpd or GoBGP) in another, joined by
//! a veth (198.51.100.1/24 + 2001:db8:1::1/64 for braid, .2 / ::2 for the peer). Everything is torn down on drop.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use braid::control::{self, Request};
use braid::netns::{self, Netns};
use serde_json::Value;

pub const BRAID4: &str = "198.51.100.1";
pub const BRAID6: &str = "2001:db8:1::1";
pub const PEER4: &str = "198.51.100.2";
pub const PEER6: &str = "2001:db8:1::2";
pub const BRAID_NET4: &str = "203.0.113.0/25";
pub const BRAID_NET6: &str = "2001:db8:a::/48";
pub const PEER_NET4: &str = "203.0.113.128/25";
pub const PEER_NET4_EXTRA: &str = "192.0.2.128/25";
pub const PEER_NET6: &str = "2001:db8:b::/48";

/// The addresses of one braid <-> peer link.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct Link {
    pub braid4: &'static str,
    pub braid6: &'static str,
    pub peer4: &'static str,
    pub peer6: &'static str,
    /// IPv4 prefix length of the link.
    pub len4: u8,
}

/// The first peer's link (namespace B).
pub const LINK_B: Link = Link {
    braid4: BRAID4,
    braid6: BRAID6,
    peer4: PEER4,
    peer6: PEER6,
    len4: 26,
};

/// A second peer's link (namespace C), for transit tests.
pub const LINK_C: Link = Link {
    braid4: "198.51.100.65",
    braid6: "2001:db8:2::1",
    peer4: "198.51.100.66",
    peer6: "2001:db8:2::2",
    len4: 26,
};

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Kind {
    Bird,
    Frr,
    Gobgp,
}

/// What the peer side is told.
#[derive(Clone, Debug)]
pub struct PeerSpec {
    pub kind: Kind,
    pub asn: u32,
    pub braid_asn: u32,
    pub hold: u16,
    /// IPv4 prefixes the peer originates.
    pub routes4: Vec<String>,
    pub routes6: Vec<String>,
    pub link: Link,
}

/// A running peer daemon in its namespace.
pub struct Peer {
    pub spec: PeerSpec,
    dir: PathBuf,
    child: Option<Child>,
    ns: String,
}

/// One route in the peer's table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerRoute {
    pub prefix: String,
    pub as_path: Vec<u32>,
}

fn run_in(ns: &str, program: &str, args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(["netns", "exec", ns, program])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("ip netns exec");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

impl Peer {
    pub fn start(spec: PeerSpec, ns: &Netns, dir: PathBuf) -> Peer {
        std::fs::create_dir_all(&dir).unwrap();
        let mut p = Peer {
            spec,
            dir,
            child: None,
            ns: ns.name().to_string(),
        };
        match p.spec.kind {
            Kind::Bird => p.start_bird(),
            Kind::Frr => p.start_frr(),
            Kind::Gobgp => p.start_gobgp(),
        }
        p
    }

    fn bird_config(&self) -> String {
        let s = &self.spec;
        let (p4, p6, b4, b6) = (s.link.peer4, s.link.peer6, s.link.braid4, s.link.braid6);
        let r4: String = s
            .routes4
            .iter()
            .map(|r| format!("  route {r} unreachable;\n"))
            .collect();
        let r6: String = s
            .routes6
            .iter()
            .map(|r| format!("  route {r} unreachable;\n"))
            .collect();
        format!(
            "router id {p4};\nprotocol device {{}}\n\
             protocol static s4 {{ ipv4;\n{r4}}}\nprotocol static s6 {{ ipv6;\n{r6}}}\n\
             protocol bgp braid4 {{ local {p4} as {asn}; neighbor {b4} as {basn}; hold time {hold}; keepalive time 1;\n\
               ipv4 {{ import all; export where source = RTS_STATIC; }}; }}\n\
             protocol bgp braid6 {{ local {p6} as {asn}; neighbor {b6} as {basn}; hold time {hold}; keepalive time 1;\n\
               ipv6 {{ import all; export where source = RTS_STATIC; }}; }}\n",
            asn = s.asn,
            basn = s.braid_asn,
            hold = s.hold
        )
    }

    fn start_bird(&mut self) {
        let conf = self.dir.join("bird.conf");
        std::fs::write(&conf, self.bird_config()).unwrap();
        let sock = self.dir.join("bird.ctl");
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "bird",
                "-f",
                "-c",
                conf.to_str().unwrap(),
                "-s",
                sock.to_str().unwrap(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.join("bird.log")).unwrap())
            .spawn()
            .expect("starting bird");
        self.child = Some(child);
    }

    fn frr_dir(&self) -> PathBuf {
        self.dir.join("frr")
    }

    fn start_frr(&mut self) {
        let d = self.frr_dir();
        std::fs::create_dir_all(&d).unwrap();
        let s = &self.spec;
        let (p4, b4, b6) = (s.link.peer4, s.link.braid4, s.link.braid6);
        std::fs::write(d.join("zebra.conf"), "hostname peer\nlog stdout\n").unwrap();
        let n4: String = s
            .routes4
            .iter()
            .map(|r| format!("  network {r}\n"))
            .collect();
        let n6: String = s
            .routes6
            .iter()
            .map(|r| format!("  network {r}\n"))
            .collect();
        let keep = (s.hold / 3).max(1);
        std::fs::write(
            d.join("bgpd.conf"),
            format!(
                "frr defaults traditional\nhostname peer\nlog file {}/bgpd.log\nrouter bgp {asn}\n bgp router-id {p4}\n\
                 no bgp ebgp-requires-policy\n no bgp network import-check\n timers bgp {keep} {hold}\n\
                 neighbor {b4} remote-as {basn}\n neighbor {b6} remote-as {basn}\n\
                 address-family ipv4 unicast\n{n4}  no neighbor {b6} activate\n exit-address-family\n\
                 address-family ipv6 unicast\n{n6}  neighbor {b6} activate\n exit-address-family\n",
                d.display(),
                asn = s.asn,
                basn = s.braid_asn,
                hold = s.hold
            ),
        )
        .unwrap();
        netns::sh("chown", &["-R", "frr:frr", d.to_str().unwrap()]).unwrap();
        let ds = d.to_str().unwrap();
        for daemon in ["zebra", "bgpd"] {
            let conf = format!("{ds}/{daemon}.conf");
            let pid = format!("{ds}/{daemon}.pid");
            let zserv = format!("{ds}/zserv.api");
            let mut args = vec![
                "-d",
                "-f",
                &conf,
                "--vty_socket",
                ds,
                "-z",
                &zserv,
                "-i",
                &pid,
            ];
            if daemon == "bgpd" {
                args.extend_from_slice(&["-p", "179", "-P", "0"]);
            } else {
                args.extend_from_slice(&["-P", "0"]);
            }
            let (ok, out) = run_in(&self.ns, &format!("/usr/lib/frr/{daemon}"), &args);
            assert!(ok, "starting FRR {daemon}: {out}");
            std::thread::sleep(Duration::from_millis(300));
        }
    }

    /// Starts FRR's bfdd next to the running zebra/bgpd with a single-hop BFD peer: braid's IPv4 address on
    /// the link, `interval_ms` both ways, `multiplier`.
    pub fn start_frr_bfdd(&mut self, interval_ms: u32, multiplier: u8) {
        assert_eq!(self.spec.kind, Kind::Frr, "bfdd is FRR's");
        let d = self.frr_dir();
        let (p4, b4) = (self.spec.link.peer4, self.spec.link.braid4);
        std::fs::write(
            d.join("bfdd.conf"),
            format!(
                "hostname peer\nlog file {}/bfdd.log\nbfd\n peer {b4} local-address {p4}\n  detect-multiplier {multiplier}\n  \
                 receive-interval {interval_ms}\n  transmit-interval {interval_ms}\n  no shutdown\n !\n!\n",
                d.display()
            ),
        )
        .unwrap();
        netns::sh("chown", &["-R", "frr:frr", d.to_str().unwrap()]).unwrap();
        let ds = d.to_str().unwrap();
        let conf = format!("{ds}/bfdd.conf");
        let pid = format!("{ds}/bfdd.pid");
        let zserv = format!("{ds}/zserv.api");
        let ctl = format!("{ds}/bfdd.sock");
        let (ok, out) = run_in(
            &self.ns,
            "/usr/lib/frr/bfdd",
            &[
                "-d",
                "-f",
                &conf,
                "--vty_socket",
                ds,
                "-z",
                &zserv,
                "-i",
                &pid,
                "--bfdctl",
                &ctl,
            ],
        );
        assert!(ok, "starting FRR bfdd: {out}");
    }

    /// FRR's `show bfd peers` output.
    pub fn frr_bfd_peers(&self) -> String {
        let (_, out) = run_in(
            &self.ns,
            "vtysh",
            &[
                "--vty_socket",
                self.frr_dir().to_str().unwrap(),
                "-c",
                "show bfd peers",
            ],
        );
        out
    }

    fn gobgp_sock(&self) -> String {
        format!("unix://{}", self.dir.join("gobgp.sock").display())
    }

    fn start_gobgp(&mut self) {
        let s = &self.spec;
        let (p4, p6, b4, b6) = (s.link.peer4, s.link.peer6, s.link.braid4, s.link.braid6);
        let keep = (s.hold / 3).max(1);
        let neighbor = |addr: &str, family: &str| {
            format!(
                "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{addr}\"\n    peer-as = {basn}\n\
                 [neighbors.timers.config]\n    hold-time = {hold}\n    keepalive-interval = {keep}\n    connect-retry = 1\n\
                 [[neighbors.afi-safis]]\n  [neighbors.afi-safis.config]\n    afi-safi-name = \"{family}\"\n",
                basn = s.braid_asn,
                hold = s.hold
            )
        };
        let conf = format!(
            "[global.config]\n  as = {}\n  router-id = \"{p4}\"\n  port = 179\n  local-address-list = [\"{p4}\", \"{p6}\"]\n\n{}\n{}",
            s.asn,
            neighbor(b4, "ipv4-unicast"),
            neighbor(b6, "ipv6-unicast")
        );
        let path = self.dir.join("gobgpd.toml");
        std::fs::write(&path, conf).unwrap();
        let sock = self.gobgp_sock();
        let child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &self.ns,
                "gobgpd",
                "-f",
                path.to_str().unwrap(),
                "-p",
                "--api-hosts",
                &sock,
                "--pprof-disable",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(self.dir.join("gobgpd.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting gobgpd");
        self.child = Some(child);
        // Wait for the API, then inject the routes.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.gobgp(&["global"]).0 {
            assert!(Instant::now() < deadline, "gobgpd API did not come up");
            std::thread::sleep(Duration::from_millis(100));
        }
        let routes: Vec<(String, &str)> = s
            .routes4
            .iter()
            .map(|r| (r.clone(), "ipv4"))
            .chain(s.routes6.iter().map(|r| (r.clone(), "ipv6")))
            .collect();
        for (r, fam) in routes {
            let (ok, out) = self.gobgp(&["global", "rib", "-a", fam, "add", &r]);
            assert!(ok, "gobgp add {r}: {out}");
        }
    }

    fn gobgp(&self, args: &[&str]) -> (bool, String) {
        let sock = self.gobgp_sock();
        let mut full = vec!["--target", &sock];
        full.extend_from_slice(args);
        run_in(&self.ns, "gobgp", &full)
    }

    /// The routes the peer learned from braid (over BGP) for `family` ("ipv4"/"ipv6").
    pub fn learned(&self, family: &str) -> Vec<PeerRoute> {
        match self.spec.kind {
            Kind::Bird => {
                let sock = self.dir.join("bird.ctl");
                let proto = if family == "ipv4" { "braid4" } else { "braid6" };
                let (_, out) = run_in(
                    &self.ns,
                    "birdc",
                    &[
                        "-s",
                        sock.to_str().unwrap(),
                        "show",
                        "route",
                        "protocol",
                        proto,
                        "all",
                    ],
                );
                let mut routes = Vec::new();
                for line in out.lines() {
                    let first = line.split_whitespace().next().unwrap_or("");
                    if !line.starts_with(char::is_whitespace) && first.contains('/') {
                        routes.push(PeerRoute {
                            prefix: first.to_string(),
                            as_path: vec![],
                        });
                    } else if let Some(p) = line.trim().strip_prefix("BGP.as_path:") {
                        if let Some(r) = routes.last_mut() {
                            r.as_path = p
                                .split_whitespace()
                                .filter_map(|a| a.parse().ok())
                                .collect();
                        }
                    }
                }
                routes
            }
            Kind::Frr => {
                let (_, out) = run_in(
                    &self.ns,
                    "vtysh",
                    &[
                        "--vty_socket",
                        self.frr_dir().to_str().unwrap(),
                        "-c",
                        &format!("show bgp {family} unicast json"),
                    ],
                );
                let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                let mut routes = Vec::new();
                for (prefix, paths) in v["routes"].as_object().into_iter().flatten() {
                    for p in paths.as_array().into_iter().flatten() {
                        let path = p["path"].as_str().unwrap_or("");
                        if path.is_empty() {
                            continue; // locally originated
                        }
                        routes.push(PeerRoute {
                            prefix: prefix.clone(),
                            as_path: path
                                .split_whitespace()
                                .filter_map(|a| a.parse().ok())
                                .collect(),
                        });
                    }
                }
                routes
            }
            Kind::Gobgp => {
                let (_, out) = self.gobgp(&["global", "rib", "-a", family, "-j"]);
                let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
                let mut routes = Vec::new();
                for (prefix, paths) in v.as_object().into_iter().flatten() {
                    for p in paths.as_array().into_iter().flatten() {
                        let mut as_path = Vec::new();
                        for a in p["attrs"].as_array().into_iter().flatten() {
                            if a["type"] == 2 {
                                for seg in a["as_paths"].as_array().into_iter().flatten() {
                                    as_path.extend(
                                        seg["asns"]
                                            .as_array()
                                            .into_iter()
                                            .flatten()
                                            .filter_map(Value::as_u64)
                                            .map(|x| x as u32),
                                    );
                                }
                            }
                        }
                        if !as_path.is_empty() {
                            routes.push(PeerRoute {
                                prefix: prefix.clone(),
                                as_path,
                            });
                        }
                    }
                }
                routes
            }
        }
    }

    /// Stops originating `prefix` (IPv4 or IPv6).
    pub fn withdraw(&mut self, prefix: &str) {
        self.spec.routes4.retain(|r| r != prefix);
        self.spec.routes6.retain(|r| r != prefix);
        let v6 = prefix.contains(':');
        match self.spec.kind {
            Kind::Bird => {
                std::fs::write(self.dir.join("bird.conf"), self.bird_config()).unwrap();
                let sock = self.dir.join("bird.ctl");
                let (ok, out) = run_in(
                    &self.ns,
                    "birdc",
                    &["-s", sock.to_str().unwrap(), "configure"],
                );
                assert!(ok, "birdc configure: {out}");
            }
            Kind::Frr => {
                let af = if v6 {
                    "address-family ipv6 unicast"
                } else {
                    "address-family ipv4 unicast"
                };
                let (ok, out) = run_in(
                    &self.ns,
                    "vtysh",
                    &[
                        "--vty_socket",
                        self.frr_dir().to_str().unwrap(),
                        "-c",
                        "configure terminal",
                        "-c",
                        &format!("router bgp {}", self.spec.asn),
                        "-c",
                        af,
                        "-c",
                        &format!("no network {prefix}"),
                    ],
                );
                assert!(ok, "vtysh no network: {out}");
            }
            Kind::Gobgp => {
                let fam = if v6 { "ipv6" } else { "ipv4" };
                let (ok, out) = self.gobgp(&["global", "rib", "-a", fam, "del", prefix]);
                assert!(ok, "gobgp del: {out}");
            }
        }
    }

    /// Freezes the peer (SIGSTOP): the TCP connection stays open, no KEEPALIVE is sent.
    pub fn freeze(&self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-STOP", &pid]).status();
        }
    }

    fn pids(&self) -> Vec<String> {
        let out = Command::new("ip")
            .args(["netns", "pids", &self.ns])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(String::from)
            .collect()
    }

    /// The peer's own account of its session to braid's IPv4 address (for BIRD: `show protocols all`).
    pub fn session_text(&self) -> String {
        match self.spec.kind {
            Kind::Bird => {
                let sock = self.dir.join("bird.ctl");
                run_in(
                    &self.ns,
                    "birdc",
                    &[
                        "-s",
                        sock.to_str().unwrap(),
                        "show",
                        "protocols",
                        "all",
                        "braid4",
                    ],
                )
                .1
            }
            Kind::Frr => {
                run_in(
                    &self.ns,
                    "vtysh",
                    &[
                        "--vty_socket",
                        self.frr_dir().to_str().unwrap(),
                        "-c",
                        &format!("show bgp neighbors {} json", self.spec.link.braid4),
                    ],
                )
                .1
            }
            Kind::Gobgp => self.gobgp(&["neighbor", self.spec.link.braid4]).1,
        }
    }

    pub fn log(&self) -> String {
        let f = match self.spec.kind {
            Kind::Bird => self.dir.join("bird.log"),
            Kind::Frr => self.frr_dir().join("bgpd.log"),
            Kind::Gobgp => self.dir.join("gobgpd.log"),
        };
        std::fs::read_to_string(f).unwrap_or_default()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        for pid in self.pids() {
            let _ = Command::new("kill").args(["-CONT", &pid]).status();
            let _ = Command::new("kill").args(["-9", &pid]).status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// braid (BGP only) in namespace A and a peer in namespace B.
pub struct BgpLab {
    braid: Option<Child>,
    pub peer: Peer,
    /// A second peer (namespace C, [`LINK_C`]), for transit tests.
    pub peer2: Option<Peer>,
    pub dir: PathBuf,
    pub a: Netns,
    pub b: Netns,
    pub c: Option<Netns>,
}

/// braid's side of the test.
#[derive(Clone, Debug)]
pub struct BraidSpec {
    pub asn: u32,
    pub peer_asn: u32,
    pub hold: u16,
    pub prepend: u8,
    pub max_prefix: Option<u32>,
    /// BFD to the first peer's IPv4 address: (interval_ms, multiplier).
    pub bfd: Option<(u32, u8)>,
}

impl BgpLab {
    pub fn start(braid_spec: BraidSpec, peer_spec: PeerSpec) -> BgpLab {
        BgpLab::start_with(braid_spec, peer_spec, None)
    }

    pub fn link(a: &Netns, a_if: &str, ns: &Netns, l: Link) {
        netns::veth(a, a_if, ns, "ul0").unwrap();
        for (ns, ifname, v4, v6) in [(a, a_if, l.braid4, l.braid6), (ns, "ul0", l.peer4, l.peer6)] {
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0").unwrap();
            ns.sysctl(&format!("net.ipv6.conf.{ifname}.accept_dad"), "0")
                .unwrap();
            ns.ip(&["addr", "add", &format!("{v4}/{}", l.len4), "dev", ifname])
                .unwrap();
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                ifname,
                "nodad",
            ])
            .unwrap();
        }
    }

    /// braid with the first peer on [`LINK_B`] and, optionally, a second peer on [`LINK_C`].
    pub fn start_with(
        braid_spec: BraidSpec,
        peer_spec: PeerSpec,
        second: Option<PeerSpec>,
    ) -> BgpLab {
        let a = Netns::new("bgpa").unwrap();
        let b = Netns::new("bgpb").unwrap();
        BgpLab::link(&a, "ul0", &b, LINK_B);
        let c = second.as_ref().map(|_| {
            let c = Netns::new("bgpc").unwrap();
            BgpLab::link(&a, "ul1", &c, LINK_C);
            c
        });
        let dir = std::env::temp_dir().join(format!("braid-bgp-{}", a.name()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let max = braid_spec
            .max_prefix
            .map(|m| format!("max_prefix = {m}\n"))
            .unwrap_or_default();
        let neighbor = |addr: &str, asn: u32| {
            format!(
                "[[bgp.neighbor]]\naddress = \"{addr}\"\nremote_asn = {asn}\nhold_time = {}\nprepend = {}\nconnect_retry = 1\n\
                 import = [\"0.0.0.0/0 le 32\", \"::/0 le 128\"]\nexport = [\"0.0.0.0/0 le 32\", \"::/0 le 128\"]\n{max}\n",
                braid_spec.hold, braid_spec.prepend
            )
        };
        let bfd = braid_spec
            .bfd
            .map(|(i, m)| {
                format!("bfd = {{ interval_ms = {i}, multiplier = {m}, hold_down_ms = 0 }}\n")
            })
            .unwrap_or_default();
        let mut neighbors = neighbor(PEER4, braid_spec.peer_asn)
            + &bfd
            + "\n"
            + &neighbor(PEER6, braid_spec.peer_asn);
        if let Some(p2) = &second {
            neighbors += &neighbor(LINK_C.peer4, p2.asn);
            neighbors += &neighbor(LINK_C.peer6, p2.asn);
        }
        let cfg = format!(
            "[gateway]\nname = \"bgp-a\"\nasn = {}\nrouter_id = \"192.0.2.1\"\ncontrol_socket = \"{}\"\n\n[bgp]\nnetworks = [\"{BRAID_NET4}\", \"{BRAID_NET6}\"]\n\n{neighbors}",
            braid_spec.asn,
            dir.join("braid.sock").display(),
        );
        std::fs::write(dir.join("braid.toml"), cfg).unwrap();
        let log = std::fs::File::create(dir.join("braid.log")).unwrap();
        let braid = a
            .command(
                super::binary().to_str().unwrap(),
                &["run", "-c", dir.join("braid.toml").to_str().unwrap()],
            )
            .env("BRAID_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let peer = Peer::start(peer_spec, &b, dir.join("peer"));
        let peer2 = second.map(|p2| Peer::start(p2, c.as_ref().unwrap(), dir.join("peer2")));
        BgpLab {
            braid: Some(braid),
            peer,
            peer2,
            dir,
            a,
            b,
            c,
        }
    }

    pub fn show(&self, what: &str) -> Value {
        control::request(&self.dir.join("braid.sock"), &Request::show(what)).unwrap_or(Value::Null)
    }

    /// braid's neighbor entry for `addr`.
    pub fn neighbor(&self, addr: &str) -> Value {
        let v = self.show("bgp");
        v["neighbors"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|n| n["neighbor"] == addr)
            .cloned()
            .unwrap_or(Value::Null)
    }

    /// braid's Loc-RIB entry for `prefix`.
    pub fn route(&self, prefix: &str) -> Option<Value> {
        let v = self.show("routes");
        v["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|r| r["prefix"] == prefix)
            .cloned()
    }

    /// Sends SIGTERM to braid and waits (bounded) for it to exit; returns whether it exited cleanly.
    pub fn stop_braid(&mut self) -> bool {
        match self.braid.take() {
            Some(mut c) => {
                netns::terminate(&mut c, Duration::from_secs(5)).is_some_and(|st| st.success())
            }
            None => false,
        }
    }

    pub fn braid_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("braid.log")).unwrap_or_default()
    }

    /// Polls `cond` every 100 ms until it holds or `timeout` passes; panics with `what` and the logs.
    pub fn wait(
        &self,
        what: &str,
        timeout: Duration,
        mut cond: impl FnMut(&BgpLab) -> bool,
    ) -> Duration {
        super::wait_until(
            what,
            timeout,
            || cond(self),
            || {
                format!(
                    "--- braid show bgp ---\n{}\n--- braid show bfd ---\n{}\n--- braid log (tail) ---\n{}\n--- peer log (tail) ---\n{}",
                    self.show("bgp"),
                    self.show("bfd"),
                    tail(&self.braid_log(), 30),
                    tail(&self.peer.log(), 30)
                )
            },
        )
    }
}

pub fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for BgpLab {
    fn drop(&mut self) {
        if let Some(mut c) = self.braid.take() {
            netns::terminate(&mut c, Duration::from_secs(3));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
