//! `braid lab`: a seed scenario built from real namespaces, veths, TUN devices and `braid run` processes.
//!
//! Scenario `pair`: two gateways A and B in their own namespaces, joined by a veth
//! underlay (198.51.100.1 and .2), one ESP-in-UDP tunnel keyed by IKEv2 with a fresh random PSK (A initiates;
//! `--keying static`: fresh random manual keys), inside addresses
//! 169.254.0.1/30 + 2001:db8:ffff::2/127 (A) and .2 + ::3 (B), and a "site" address behind each gateway
//! (192.0.2.1 / 2001:db8:a::1 at A, 192.0.2.129 / 2001:db8:b::1 at B) routed through the tunnel. The lab pings
//! both ways (IPv4 and IPv6, inside and site to site), runs a TCP transfer whose every byte is verified,
//! measures throughput with iperf3 (when installed) through the tunnel and over the plain veth, and reports.
//! Everything it made is removed at the end, on failure and on Ctrl-C ([`Pair`] cleans up on drop).
//!
//! [`Pair`] is also the fixture of the namespace integration tests. The multipath scenarios `dual-isp` (the
//! default) and `active-active` live in [`crate::scenario`].

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use braid_crypto::Cipher;
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::{json, Value};

use crate::control::{self, Request};
use crate::netns::{self, Netns};

pub const A_UNDERLAY: &str = "198.51.100.1";
pub const B_UNDERLAY: &str = "198.51.100.2";
pub const A_INSIDE4: &str = "169.254.0.1";
pub const B_INSIDE4: &str = "169.254.0.2";
pub const A_INSIDE6: &str = "2001:db8:ffff::2";
pub const B_INSIDE6: &str = "2001:db8:ffff::3";
pub const A_SITE4: &str = "192.0.2.1";
pub const B_SITE4: &str = "192.0.2.129";
pub const A_SITE6: &str = "2001:db8:a::1";
pub const B_SITE6: &str = "2001:db8:b::1";

/// How a lab keys its tunnels (`braid lab --keying ike|static`).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Keying {
    /// IKEv2 with a fresh random PSK per tunnel (mode 0600); the on-prem side (A in `pair`) initiates.
    Ike,
    /// Manual keys (`static = {...}`), fresh random keys per tunnel and direction.
    Static,
}

impl Keying {
    pub fn parse(s: &str) -> Option<Keying> {
        match s {
            "ike" | "ikev2" => Some(Keying::Ike),
            "static" | "manual" => Some(Keying::Static),
            _ => None,
        }
    }

    /// `ike` or `static`, as the reports say.
    pub fn name(self) -> &'static str {
        match self {
            Keying::Ike => "ike",
            Keying::Static => "static",
        }
    }

    /// In words, for the lab's header.
    pub fn describe(self) -> &'static str {
        match self {
            Keying::Ike => "IKEv2 (PSK per tunnel, on-prem side initiates)",
            Keying::Static => "manual keys (static SAs, anti-replay off)",
        }
    }
}

/// Which gateway of a pair.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Side {
    A,
    B,
}

/// How to build a pair.
#[derive(Clone, Debug)]
pub struct PairOptions {
    /// The `braid` executable to run as the gateways.
    pub binary: PathBuf,
    pub cipher: Cipher,
    pub esn: bool,
    pub replay_window: Option<u32>,
    /// Give B a wrong inbound key, so nothing A sends authenticates.
    pub wrong_key_on_b: bool,
    /// `[gateway] mtu` on both sides (default: derived from the uplink).
    pub gateway_mtu: Option<u32>,
    /// `[gateway] workers` on both sides (default: the machine's cores).
    pub workers: Option<usize>,
    /// Route by BGP over the tunnel instead of static routes: A is AS 65001 and originates site A, B is AS 65002
    /// and originates site B; both mirror BGP routes into the kernel (`kernel_routes = true`).
    pub bgp: bool,
    /// Extra `[[bgp.neighbor]]` tables for B (with `bgp`), e.g. a LAN-side router.
    pub b_extra_neighbors: String,
    /// BFD on the tunnel, both sides: (interval_ms, multiplier, hold_down_ms).
    pub bfd: Option<(u32, u8, u32)>,
    /// BGP hold time on both sides (with `bgp`).
    pub hold_time: Option<u16>,
    /// Key the tunnel with IKEv2 (A initiates) instead of static keys (`cipher`, `esn`, `wrong_key_on_b` then
    /// do not apply).
    pub ike: Option<IkeLab>,
}

/// The `ike = {...}` of a pair's tunnel: both sides get these, with a fresh random PSK; A is the initiator.
#[derive(Clone, Debug)]
pub struct IkeLab {
    pub proposal: String,
    pub esp_proposal: String,
    pub lifetime: String,
    pub child_lifetime: String,
    pub dpd_interval: String,
    /// More `key = value` pairs for the table, e.g. `retransmit = { timeout = "500ms", tries = 3 }`.
    pub extra: String,
    /// More `key = value` pairs for A's table only (the initiator), and for B's only (the responder).
    pub extra_a: String,
    pub extra_b: String,
}

impl Default for IkeLab {
    fn default() -> IkeLab {
        IkeLab {
            proposal: "aes256gcm16-prfsha256-ecp256".into(),
            esp_proposal: "aes256gcm16".into(),
            lifetime: "4h".into(),
            child_lifetime: "1h".into(),
            dpd_interval: "30s".into(),
            extra: String::new(),
            extra_a: String::new(),
            extra_b: String::new(),
        }
    }
}

impl PairOptions {
    pub fn new(binary: PathBuf) -> PairOptions {
        PairOptions {
            binary,
            cipher: Cipher::Aes256Gcm16,
            esn: false,
            replay_window: None,
            wrong_key_on_b: false,
            gateway_mtu: None,
            workers: None,
            bgp: false,
            b_extra_neighbors: String::new(),
            bfd: None,
            hold_time: None,
            ike: None,
        }
    }
}

/// Two gateways joined by one tunnel. Dropping it stops the gateways, deletes the namespaces and files.
pub struct Pair {
    children: Vec<(Side, Child)>,
    pub a: Netns,
    pub b: Netns,
    pub dir: PathBuf,
}

fn random_hex(rng: &SystemRandom, n: usize) -> Result<String> {
    let mut b = vec![0u8; n];
    rng.fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    let s = b.iter().map(|x| format!("{x:02x}")).collect();
    zeroize::Zeroize::zeroize(&mut b);
    Ok(s)
}

fn random_spi(rng: &SystemRandom) -> Result<u32> {
    let mut b = [0u8; 4];
    rng.fill(&mut b)
        .map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(u32::from_be_bytes(b) | 0x0100_0000)
}

fn write_private(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(text.as_bytes())?;
    Ok(())
}

use std::os::unix::fs::OpenOptionsExt;

#[allow(clippy::too_many_arguments)]
fn gateway_config(
    name: &str,
    local: &str,
    remote: &str,
    inside4: &str,
    inside6: &str,
    routes: &[&str],
    opts: &PairOptions,
    spi_out: u32,
    spi_in: u32,
    sock: &Path,
) -> String {
    let mut s = format!(
        "# written by `braid lab`\n[gateway]\nname = \"{name}\"\ntun = \"braid0\"\ncontrol_socket = \"{}\"\n",
        sock.display()
    );
    if let Some(m) = opts.gateway_mtu {
        s += &format!("mtu = {m}\n");
    }
    if let Some(n) = opts.workers {
        s += &format!("workers = {n}\n");
    }
    // With BGP, the routes are learned over the tunnel instead of configured.
    let routes = if opts.bgp { &[][..] } else { routes };
    if opts.bgp {
        let asn = if name == "a" { 65001 } else { 65002 };
        s += &format!("asn = {asn}\nrouter_id = \"{local}\"\nkernel_routes = true\nmetrics = \"127.0.0.1:9477\"\n");
    }
    s += &format!("\n[[uplink]]\nname = \"isp1\"\nlocal = \"{local}\"\n\n");
    s += &format!(
        "[[tunnel]]\nname = \"{name}-to-peer\"\nuplink = \"isp1\"\nremote = \"{remote}:4500\"\ninside = [\"{inside4}/30\", \"{inside6}/127\"]\nroutes = [{}]\n",
        routes.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", "),
    );
    if opts.ike.is_none() {
        s += &format!("esn = {}\n", opts.esn);
    }
    if let Some(w) = opts.replay_window {
        s += &format!("replay_window = {w}\n");
    }
    if let Some((interval, mult, hold_down)) = opts.bfd {
        s += &format!(
            "bfd = {{ interval_ms = {interval}, multiplier = {mult}, hold_down_ms = {hold_down} }}\n"
        );
    }
    if let Some(ike) = &opts.ike {
        let extra = [
            ike.extra.as_str(),
            if name == "a" {
                &ike.extra_a
            } else {
                &ike.extra_b
            },
        ]
        .into_iter()
        .filter(|e| !e.is_empty())
        .collect::<Vec<_>>()
        .join(", ");
        s += &format!(
            "ike = {{ psk_file = \"pair.psk\", initiator = {}, proposal = \"{}\", esp_proposal = \"{}\", lifetime = \"{}\", child_lifetime = \"{}\", dpd_interval = \"{}\"{}{} }}\n",
            name == "a",
            ike.proposal,
            ike.esp_proposal,
            ike.lifetime,
            ike.child_lifetime,
            ike.dpd_interval,
            if extra.is_empty() { "" } else { ", " },
            extra
        );
    } else {
        s += &format!(
            "static = {{ cipher = \"{}\", spi_out = \"{spi_out:#010x}\", spi_in = \"{spi_in:#010x}\", key_out_file = \"{name}.out.key\", key_in_file = \"{name}.in.key\" }}\n",
            opts.cipher.name()
        );
    }
    if opts.bgp {
        let (network4, network6, peer_asn) = if name == "a" {
            ("192.0.2.0/25", "2001:db8:a::/64", 65002)
        } else {
            ("192.0.2.128/25", "2001:db8:b::/64", 65001)
        };
        s += &format!(
            "\n[bgp]\nnetworks = [\"{network4}\", \"{network6}\"]\n\n[[bgp.neighbor]]\ntunnel = \"{name}-to-peer\"\n\
             remote_asn = {peer_asn}\nconnect_retry = 1\nimport = [\"0.0.0.0/0 le 32\", \"::/0 le 128\"]\nexport = [\"0.0.0.0/0 le 32\", \"::/0 le 128\"]\n"
        );
        if let Some(h) = opts.hold_time {
            s += &format!("hold_time = {h}\n");
        }
        if name == "b" {
            s += &opts.b_extra_neighbors;
        }
    }
    s
}

impl Pair {
    /// Builds the namespaces, writes configs with fresh keys, starts both gateways and waits until both
    /// answer on their control sockets and the site routes are in place.
    pub fn build(opts: &PairOptions) -> Result<Pair> {
        let a = Netns::new("a")?;
        let b = Netns::new("b")?;
        let dir = std::env::temp_dir().join(format!(
            "{}{}",
            netns::PREFIX,
            a.name().trim_start_matches(netns::PREFIX)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        let mut pair = Pair {
            children: Vec::new(),
            a,
            b,
            dir,
        };
        pair.setup(opts)?;
        Ok(pair)
    }

    fn setup(&mut self, opts: &PairOptions) -> Result<()> {
        netns::veth(&self.a, "ul0", &self.b, "ul0")?;
        self.a
            .ip(&["addr", "add", &format!("{A_UNDERLAY}/24"), "dev", "ul0"])?;
        self.b
            .ip(&["addr", "add", &format!("{B_UNDERLAY}/24"), "dev", "ul0"])?;
        for (ns, s4, s6) in [(&self.a, A_SITE4, A_SITE6), (&self.b, B_SITE4, B_SITE6)] {
            ns.ip(&["addr", "add", &format!("{s4}/32"), "dev", "lo"])?;
            ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{s6}/128"),
                "dev",
                "lo",
                "nodad",
            ])?;
        }

        let rng = SystemRandom::new();
        let k_ab = random_hex(&rng, 36)?;
        let k_ba = random_hex(&rng, 36)?;
        let (spi_ab, spi_ba) = (random_spi(&rng)?, random_spi(&rng)? ^ 0x0200_0000);
        write_private(&self.dir.join("a.out.key"), &k_ab)?;
        write_private(&self.dir.join("a.in.key"), &k_ba)?;
        write_private(&self.dir.join("b.out.key"), &k_ba)?;
        let b_in = if opts.wrong_key_on_b {
            random_hex(&rng, 36)?
        } else {
            k_ab.clone()
        };
        write_private(&self.dir.join("b.in.key"), &b_in)?;
        write_private(
            &self.dir.join("pair.psk"),
            &format!("0x{}", random_hex(&rng, 32)?),
        )?;

        let a_cfg = gateway_config(
            "a",
            A_UNDERLAY,
            B_UNDERLAY,
            A_INSIDE4,
            A_INSIDE6,
            &["192.0.2.128/25", "2001:db8:b::/64"],
            opts,
            spi_ab,
            spi_ba,
            &self.socket(Side::A),
        );
        let b_cfg = gateway_config(
            "b",
            B_UNDERLAY,
            A_UNDERLAY,
            B_INSIDE4,
            B_INSIDE6,
            &["192.0.2.0/25", "2001:db8:a::/64"],
            opts,
            spi_ba,
            spi_ab,
            &self.socket(Side::B),
        );
        std::fs::write(self.config(Side::A), a_cfg)?;
        std::fs::write(self.config(Side::B), b_cfg)?;
        // B (the IKE responder) first, so that A's first IKE_SA_INIT finds it listening instead of waiting out
        // a retransmission timeout (4 s).
        self.start(Side::B, &opts.binary)?;
        self.wait_ready(Side::B, Duration::from_secs(10))?;
        self.start(Side::A, &opts.binary)?;
        self.wait_ready(Side::A, Duration::from_secs(10))?;
        if opts.bgp {
            return Ok(());
        }
        self.a.ip(&[
            "route",
            "add",
            "192.0.2.128/25",
            "dev",
            "braid0",
            "src",
            A_SITE4,
        ])?;
        self.a.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:b::/64",
            "dev",
            "braid0",
            "src",
            A_SITE6,
        ])?;
        self.b.ip(&[
            "route",
            "add",
            "192.0.2.0/25",
            "dev",
            "braid0",
            "src",
            B_SITE4,
        ])?;
        self.b.ip(&[
            "-6",
            "route",
            "add",
            "2001:db8:a::/64",
            "dev",
            "braid0",
            "src",
            B_SITE6,
        ])?;
        Ok(())
    }

    pub fn ns(&self, side: Side) -> &Netns {
        match side {
            Side::A => &self.a,
            Side::B => &self.b,
        }
    }

    pub fn config(&self, side: Side) -> PathBuf {
        self.dir.join(match side {
            Side::A => "a.toml",
            Side::B => "b.toml",
        })
    }

    pub fn socket(&self, side: Side) -> PathBuf {
        self.dir.join(match side {
            Side::A => "a.sock",
            Side::B => "b.sock",
        })
    }

    pub fn log(&self, side: Side) -> PathBuf {
        self.dir.join(match side {
            Side::A => "a.log",
            Side::B => "b.log",
        })
    }

    /// Starts `braid run` for `side` inside its namespace, logging to its log file.
    pub fn start(&mut self, side: Side, binary: &Path) -> Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(side))?;
        let cfg = self.config(side);
        let child = self
            .ns(side)
            .command(
                binary.to_str().context("binary path is not UTF-8")?,
                &["run", "-c", cfg.to_str().unwrap_or_default()],
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting braid run")?;
        self.children.push((side, child));
        Ok(())
    }

    fn wait_ready(&mut self, side: Side, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.show(side, "tunnels").is_ok() {
                return Ok(());
            }
            for (s, c) in self.children.iter_mut() {
                if *s == side {
                    if let Some(status) = c.try_wait()? {
                        bail!(
                            "gateway {side:?} exited with {status}:\n{}",
                            self.log_tail(side)
                        );
                    }
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway {side:?} did not come up in {timeout:?}:\n{}",
                    self.log_tail(side)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The last lines of a gateway's log.
    pub fn log_tail(&self, side: Side) -> String {
        let text = std::fs::read_to_string(self.log(side)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// `braid show WHAT --json` of one gateway.
    pub fn show(&self, side: Side, what: &str) -> Result<Value> {
        control::request(&self.socket(side), &Request::show(what))
    }

    /// The first tunnel of `side` as shown by `braid show tunnels`.
    pub fn tunnel(&self, side: Side) -> Result<Value> {
        let v = self.show(side, "tunnels")?;
        Ok(v["tunnels"][0].clone())
    }

    /// Waits until the tunnel is live at both ends (with IKEv2: IKE and child SAs in place, an outbound SA
    /// set) and returns how long that took from the call.
    pub fn wait_live(&self, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let live = |side| {
                self.tunnel(side)
                    .is_ok_and(|t| t["live"] == true && t["spi_out"].is_string())
            };
            if live(Side::A) && live(Side::B) {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                bail!(
                    "the tunnel did not come up at both ends within {timeout:?}\nA: {}\nB: {}\n--- A log ---\n{}\n--- B log ---\n{}",
                    self.tunnel(Side::A).unwrap_or_default(),
                    self.tunnel(Side::B).unwrap_or_default(),
                    self.log_tail(Side::A),
                    self.log_tail(Side::B)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Sends SIGTERM to `side`'s gateway and waits (bounded) for it to exit.
    pub fn stop(&mut self, side: Side, timeout: Duration) -> Result<ExitStatus> {
        let i = self
            .children
            .iter()
            .position(|(s, _)| *s == side)
            .context("that gateway is not running")?;
        let (_, mut child) = self.children.remove(i);
        // `ip netns exec` execs braid, so the child's pid is braid's.
        netns::terminate(&mut child, timeout)
            .with_context(|| format!("gateway {side:?} did not exit within {timeout:?} of SIGTERM"))
    }

    /// Pings `dst` from `side` (`count` echoes, 0.2 s apart); returns replies received.
    pub fn ping(&self, side: Side, dst: &str, count: u32, extra: &[&str]) -> Result<(u32, String)> {
        let c = count.to_string();
        let mut args = vec!["-c", &c, "-i", "0.2", "-W", "2", "-n"];
        args.extend_from_slice(extra);
        args.push(dst);
        let out = self.ns(side).exec("ping", &args)?;
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let received = text
            .lines()
            .find(|l| l.contains("packets transmitted"))
            .and_then(|l| l.split(", ").nth(1))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok((received, text))
    }

    /// Sends `bytes` of a seeded stream from `from_side` to `to_addr:5001` (a listener started in the other
    /// namespace) and returns the sink's verdict `{ok, bytes, secs, gbps}`.
    pub fn transfer(
        &self,
        binary: &Path,
        from_side: Side,
        to_addr: &str,
        bytes: u64,
        seed: u64,
    ) -> Result<Value> {
        self.transfer_port(binary, from_side, to_addr, 5001, bytes, seed)
    }

    /// [`transfer`](Self::transfer) to port `port` (so that several can run at once).
    pub fn transfer_port(
        &self,
        binary: &Path,
        from_side: Side,
        to_addr: &str,
        port: u16,
        bytes: u64,
        seed: u64,
    ) -> Result<Value> {
        let to_side = match from_side {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        transfer_port(
            binary,
            self.ns(from_side),
            self.ns(to_side),
            to_addr,
            port,
            bytes,
            seed,
        )
    }

    /// iperf3 single-stream TCP from `from_side` to `to_addr` for `secs` seconds; returns Gbit/s.
    pub fn iperf3(&self, from_side: Side, to_addr: &str, secs: u32) -> Result<f64> {
        let to_side = match from_side {
            Side::A => Side::B,
            Side::B => Side::A,
        };
        let mut server = self
            .ns(to_side)
            .command("iperf3", &["-s", "-1", "-B", to_addr, "-p", "5201"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let t = secs.to_string();
        let mut last = String::new();
        for _ in 0..50 {
            let out = self
                .ns(from_side)
                .exec("iperf3", &["-c", to_addr, "-p", "5201", "-t", &t, "-J"])?;
            let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            if let Some(bps) = v["end"]["sum_received"]["bits_per_second"].as_f64() {
                let _ = server.kill();
                let _ = server.wait();
                return Ok(bps / 1e9);
            }
            last = v["error"].as_str().unwrap_or("no result").to_string();
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = server.kill();
        let _ = server.wait();
        bail!("iperf3 to {to_addr}: {last}")
    }
}

/// Sends `bytes` of a seeded stream from namespace `from` to `to_addr:5001` in namespace `to` (`braid lab-tool
/// tcp-source` / `tcp-sink`, which checks every byte) and returns the sink's verdict `{ok, bytes, secs, gbps}`.
pub fn transfer(
    binary: &Path,
    from: &Netns,
    to: &Netns,
    to_addr: &str,
    bytes: u64,
    seed: u64,
) -> Result<Value> {
    transfer_port(binary, from, to, to_addr, 5001, bytes, seed)
}

/// The rest of a lab-tool sink's standard output, line by line.
pub type SinkLines = std::io::Lines<BufReader<std::process::ChildStdout>>;

/// Starts a lab-tool sink (`cmd`, its output piped) and waits for its first line, which says it listens;
/// returns it with the rest of its output. A sink that says anything else is killed and reaped.
pub fn start_sink(mut cmd: std::process::Command, what: &str) -> Result<(Child, SinkLines)> {
    let mut sink = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut lines = BufReader::new(sink.stdout.take().context("sink stdout")?).lines();
    let first = lines.next().transpose()?.unwrap_or_default();
    if !first.contains("listening") {
        let _ = sink.kill();
        let _ = sink.wait();
        bail!("{what} did not start: {first}");
    }
    Ok((sink, lines))
}

/// [`transfer`] to port `port`.
pub fn transfer_port(
    binary: &Path,
    from: &Netns,
    to: &Netns,
    to_addr: &str,
    port: u16,
    bytes: u64,
    seed: u64,
) -> Result<Value> {
    let bin = binary.to_str().context("binary path is not UTF-8")?;
    let listen = socket_string(to_addr, port);
    let b = bytes.to_string();
    let s = seed.to_string();
    let (mut sink, mut lines) = start_sink(
        to.command(
            bin,
            &[
                "lab-tool", "tcp-sink", "--listen", &listen, "--bytes", &b, "--seed", &s,
            ],
        ),
        "tcp sink",
    )?;
    let src = from.exec(
        bin,
        &[
            "lab-tool",
            "tcp-source",
            "--connect",
            &listen,
            "--bytes",
            &b,
            "--seed",
            &s,
        ],
    )?;
    let verdict = lines.next().transpose()?.unwrap_or_default();
    let status = sink.wait()?;
    if !src.status.success() {
        bail!(
            "tcp source failed: {}",
            String::from_utf8_lossy(&src.stderr).trim()
        );
    }
    if !status.success() {
        let mut err = String::new();
        if let Some(mut e) = sink.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut err);
        }
        bail!("tcp sink failed: {}", err.trim());
    }
    serde_json::from_str(&verdict).with_context(|| format!("sink verdict {verdict:?}"))
}

/// `ADDR:PORT`, bracketing IPv6.
pub fn socket_string(addr: &str, port: u16) -> String {
    if addr.contains(':') {
        format!("[{addr}]:{port}")
    } else {
        format!("{addr}:{port}")
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        for (_, c) in self.children.iter_mut() {
            netns::terminate(c, Duration::from_secs(3));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces (fields) are deleted after this, taking veths and TUN devices with them.
    }
}

/// One check of the lab report.
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) ok: bool,
    pub(crate) detail: String,
}

impl Check {
    pub(crate) fn line(&self) -> String {
        format!(
            "  [{}] {:<28} {}",
            if self.ok { " ok " } else { "FAIL" },
            self.name,
            self.detail
        )
    }
}

/// Options of `braid lab`.
pub struct LabOptions {
    pub scenario: String,
    pub json: bool,
    pub transfer_bytes: u64,
    pub iperf_secs: u32,
    /// Multipath scenarios: parallel TCP flows and their duration.
    pub flows: usize,
    pub secs: f64,
    /// Pace each flow (0: unpaced).
    pub mbit_per_flow: f64,
    /// Multipath scenarios: run the failover drill's headline fault (dual-isp: ISP1; active-active: one
    /// tunnel) and its repair.
    pub drill: bool,
    /// Run the whole drill (tunnel cut, gateway kill, ISP failure, graceful stop, each repaired), with BFD and
    /// again on hold timers only.
    pub full_drill: bool,
    /// Drill probe flows per direction and their packet rate.
    pub probe_flows: usize,
    pub probe_pps: f64,
    /// Multipath scenarios: BFD (100 ms x 3) on every tunnel.
    pub bfd: bool,
    /// How the tunnels are keyed (IKEv2 by default).
    pub keying: Keying,
}

/// Runs the lab; returns the process exit code.
pub fn run(opts: &LabOptions) -> Result<i32> {
    match crate::scenario::Kind::parse(&opts.scenario) {
        Some(k @ (crate::scenario::Kind::ActiveActive | crate::scenario::Kind::DualIsp)) => {
            return crate::scenario::run(k, opts)
        }
        _ if opts.scenario == "pair" => {}
        _ => bail!(
            "unknown scenario {:?}: this version has `dual-isp` (the default), `active-active` and `pair`",
            opts.scenario
        ),
    }
    if !netns::is_root() {
        bail!("braid lab builds network namespaces and TUN devices: run it as root (sudo)");
    }
    for tool in ["ip", "ping"] {
        if !netns::have(tool) {
            bail!("`{tool}` is not installed (apt-get install iproute2 iputils-ping)");
        }
    }
    // Ctrl-C / SIGTERM: stop between steps and clean up through the guards' Drop.
    let interrupted = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, interrupted.clone())?;
    }
    let binary = std::env::current_exe()?;
    let say = |s: &str| {
        if !opts.json {
            println!("{s}");
        }
    };
    say(&format!(
        "braid lab: scenario `pair` (two gateways, one ESP-in-UDP tunnel, AES-256-GCM, keyed by {})",
        opts.keying.describe()
    ));
    say(&format!(
        "  underlay   A {A_UNDERLAY} <-> B {B_UNDERLAY} (veth)"
    ));
    say(&format!(
        "  inside     A {A_INSIDE4}, {A_INSIDE6} <-> B {B_INSIDE4}, {B_INSIDE6}"
    ));
    say(&format!(
        "  sites      A {A_SITE4}, {A_SITE6} <-> B {B_SITE4}, {B_SITE6}"
    ));
    let started = Instant::now();
    let mut pair_opts = PairOptions::new(binary.clone());
    if opts.keying == Keying::Ike {
        pair_opts.ike = Some(IkeLab::default());
    }
    let pair = Pair::build(&pair_opts)?;
    let live = pair.wait_live(Duration::from_secs(20))?;
    say(&format!(
        "  gateways up; tunnel live at both ends after {} ms ({}); checking traffic",
        live.as_millis(),
        opts.keying.name()
    ));

    let mut checks = Vec::new();
    let pings = [
        ("ping A -> B inside IPv4", Side::A, B_INSIDE4, A_INSIDE4),
        ("ping B -> A inside IPv4", Side::B, A_INSIDE4, B_INSIDE4),
        ("ping A -> B inside IPv6", Side::A, B_INSIDE6, A_INSIDE6),
        ("ping B -> A inside IPv6", Side::B, A_INSIDE6, B_INSIDE6),
        ("ping site A -> site B IPv4", Side::A, B_SITE4, A_SITE4),
        ("ping site B -> site A IPv6", Side::B, A_SITE6, B_SITE6),
    ];
    for (name, side, dst, src) in pings {
        if interrupted.load(Ordering::Relaxed) {
            bail!("interrupted; cleaned up");
        }
        let (got, _) = pair.ping(side, dst, 5, &["-I", src])?;
        let c = Check {
            name: name.into(),
            ok: got == 5,
            detail: format!("{got}/5 replies"),
        };
        say(&c.line());
        checks.push(c);
    }
    if interrupted.load(Ordering::Relaxed) {
        bail!("interrupted; cleaned up");
    }
    let transfer = pair.transfer(&binary, Side::A, B_SITE4, opts.transfer_bytes, 0x5eed);
    let transfer_json = match &transfer {
        Ok(v) => v.clone(),
        Err(e) => json!({ "ok": false, "error": e.to_string() }),
    };
    let c = Check {
        name: "TCP transfer site A -> B, content verified".into(),
        ok: transfer_json["ok"] == json!(true),
        detail: match &transfer {
            Ok(v) => format!(
                "{} MB in {:.2} s ({:.2} Gbit/s), every byte checked",
                v["bytes"].as_u64().unwrap_or(0) / 1_000_000,
                v["secs"].as_f64().unwrap_or(0.0),
                v["gbps"].as_f64().unwrap_or(0.0)
            ),
            Err(e) => format!("{e:#}"),
        },
    };
    say(&format!(
        "  [{}] {:<28} {}",
        if c.ok { " ok " } else { "FAIL" },
        "TCP transfer, verified",
        c.detail
    ));
    checks.push(c);

    let mut iperf = json!(null);
    if opts.iperf_secs > 0 && netns::have("iperf3") && !interrupted.load(Ordering::Relaxed) {
        let tunnel = pair.iperf3(Side::A, B_SITE4, opts.iperf_secs);
        let veth = pair.iperf3(Side::A, B_UNDERLAY, opts.iperf_secs);
        match (&tunnel, &veth) {
            (Ok(t), Ok(v)) => {
                say(&format!(
                    "  iperf3 single-stream TCP, {} s: through braid {t:.2} Gbit/s, plain veth {v:.2} Gbit/s ({:.0}% of veth)",
                    opts.iperf_secs,
                    t / v * 100.0
                ));
                iperf = json!({ "seconds": opts.iperf_secs, "tunnel_gbps": t, "veth_gbps": v, "ratio": t / v });
            }
            _ => {
                let e = tunnel
                    .err()
                    .or(veth.err())
                    .map(|e| e.to_string())
                    .unwrap_or_default();
                say(&format!("  iperf3 failed: {e}"));
                iperf = json!({ "error": e });
            }
        }
    } else if opts.iperf_secs > 0 && !netns::have("iperf3") {
        say("  (iperf3 not installed: throughput comparison skipped)");
    }

    let ta = pair.tunnel(Side::A)?;
    let tb = pair.tunnel(Side::B)?;
    for (label, t) in [("A", &ta), ("B", &tb)] {
        say(&format!(
            "  tunnel {label}: state {}, tx {} packets / {} bytes, rx {} packets / {} bytes, drops {}",
            t["state"].as_str().unwrap_or("?"),
            t["tx_packets"],
            t["tx_bytes"],
            t["rx_packets"],
            t["rx_bytes"],
            t["drops_total"]
        ));
    }
    let auth_drops = ta["drops"]["auth_failed"].as_u64().unwrap_or(0)
        + tb["drops"]["auth_failed"].as_u64().unwrap_or(0);
    let c = Check {
        name: "no authentication failures".into(),
        ok: auth_drops == 0,
        detail: format!("{auth_drops} auth_failed drops"),
    };
    say(&format!(
        "  [{}] {:<28} {}",
        if c.ok { " ok " } else { "FAIL" },
        c.name,
        c.detail
    ));
    checks.push(c);

    let ok = checks.iter().all(|c| c.ok);
    let report = json!({
        "scenario": "pair",
        "keying": opts.keying.name(),
        "live_ms": live.as_millis() as u64,
        "ok": ok,
        "seconds": started.elapsed().as_secs_f64(),
        "checks": checks.iter().map(|c| json!({"name": c.name, "ok": c.ok, "detail": c.detail})).collect::<Vec<_>>(),
        "transfer": transfer_json,
        "iperf3": iperf,
        "tunnels": { "a": ta, "b": tb },
    });
    if !ok && !opts.json {
        println!(
            "--- gateway A log ---\n{}\n--- gateway B log ---\n{}",
            pair.log_tail(Side::A),
            pair.log_tail(Side::B)
        );
    }
    drop(pair);
    if opts.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "braid lab: {} ({} checks, {:.1} s); namespaces, devices and files removed",
            if ok {
                "all checks passed"
            } else {
                "SOME CHECKS FAILED"
            },
            checks.len(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(if ok { 0 } else { 1 })
}
