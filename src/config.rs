//! The gateway configuration: TOML (DESIGN.md's contract) parsed strictly and validated into a model.
//!
//! Parsing rejects unknown keys; validation checks every value and cross-reference (uplink names, inside
//! subnets, SPIs, key lengths and key-file permissions). Every error names the file, the key and the problem,
//! e.g. `gw.toml: tunnel[0] "cloud1".static.key_out: expected 72 hex digits (32-byte key + 4-byte salt), got 64`.
//!
//! A tunnel is keyed either manually (`static = {...}`) or by IKEv2 (`ike = {...}`, RFC 7296 with a
//! pre-shared key), exactly one of the two. Secrets (keys, PSKs) are held in [`Secret`], which zeroizes on
//! drop and never prints; key and PSK files readable by group or others are refused.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use braid_crypto::ike::{EspProposal, Identity, IkeProposal, Retransmit, TrafficSelector};
use braid_crypto::{Cipher, KEYMAT_LEN};
use braid_dataplane::{InsideAddr, Prefix};
use serde::Deserialize;
use zeroize::Zeroizing;

/// The default UDP port of ESP-in-UDP and IKE NAT-T (RFC 3948).
pub const DEFAULT_PORT: u16 = 4500;
/// The default anti-replay window, in packets: wide enough for the reordering a sender with several workers
/// (a braid peer) brings, one batch per worker (RFC 4303 3.4.3 leaves the size to the receiver); its bitmap is
/// 1 KiB per SA.
pub const DEFAULT_REPLAY_WINDOW: u32 = 8192;
/// The TUN device's default transmit queue (Linux gives a TUN device 500): 2000 packets of 1400 octets are
/// 22 ms at 1 Gbit/s, enough for a sender's bursts while a worker is off its core (see the README).
pub const DEFAULT_TUN_QUEUE_LEN: u32 = 2000;
/// The longest TUN transmit queue accepted.
pub const MAX_TUN_QUEUE_LEN: u32 = 100_000;
/// The most data-path workers per direction.
pub const MAX_WORKERS: usize = 64;
/// The largest anti-replay window braid accepts.
pub const MAX_REPLAY_WINDOW: u32 = 65536;
/// Default socket buffer size per uplink.
pub const DEFAULT_SOCKET_BUFFER: usize = 4 << 20;

/// A configuration error: which file, which key, what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.problem)
        } else {
            write!(f, "{}: {}: {}", self.file.display(), self.key, self.problem)
        }
    }
}

impl std::error::Error for ConfigError {}

/// Key material that zeroizes on drop and never appears in `Debug` output or logs.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    pub fn expose(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(<{} bytes redacted>)", self.0.len())
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Secret) -> bool {
        // Constant time in the contents: secrets are compared only by `braid check`, but never leak via timing.
        self.0.len() == other.0.len()
            && self
                .0
                .iter()
                .zip(other.0.iter())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

// ---- the validated model ----

/// A validated gateway configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub path: PathBuf,
    pub gateway: Gateway,
    pub uplinks: Vec<Uplink>,
    pub tunnels: Vec<Tunnel>,
    /// The BGP speaker; `None` when the file has no `[bgp]`.
    pub bgp: Option<Bgp>,
}

/// `[bgp]` and its `[[bgp.neighbor]]`s.
#[derive(Debug, Clone)]
pub struct Bgp {
    /// Prefixes originated (ORIGIN IGP).
    pub networks: Vec<Prefix>,
    /// ECMP width.
    pub max_paths: usize,
    /// TCP port braid listens on for BGP (179).
    pub listen_port: u16,
    pub neighbors: Vec<Neighbor>,
}

/// One BGP neighbor.
#[derive(Debug, Clone)]
pub struct Neighbor {
    /// The peer's address: `address`, or the peer's inside address of `tunnel`.
    pub address: IpAddr,
    /// Index into `Config::tunnels` when the session runs inside a tunnel.
    pub tunnel: Option<usize>,
    /// The peer's TCP port (179; tests use others).
    pub port: u16,
    /// Source address of our connections (a tunnel's own inside address by default).
    pub local_address: Option<IpAddr>,
    pub remote_asn: u32,
    pub hold_time: u16,
    pub passive: bool,
    pub prepend: u8,
    /// Prefix-list entries (`PREFIX [ge N] [le N]`); `None` = no policy (RFC 8212: deny on eBGP).
    pub import: Option<Vec<String>>,
    pub export: Option<Vec<String>>,
    pub max_prefix: Option<u32>,
    /// Seconds before the first reconnect attempt (doubles up to 60 s).
    pub connect_retry: u32,
    /// BFD to a LAN-side (`address`) neighbour, single hop.
    pub bfd: Option<BfdConfig>,
}

#[derive(Debug, Clone)]
pub struct Gateway {
    pub name: String,
    pub asn: Option<u32>,
    pub router_id: Option<Ipv4Addr>,
    pub tun: String,
    pub control_socket: PathBuf,
    /// TUN MTU; `None` = the smallest tunnel MTU (uplink MTU less the real ESP-in-UDP overhead).
    pub mtu: Option<u32>,
    /// Where the Prometheus text endpoint listens (`GET /metrics`), if anywhere.
    pub metrics: Option<SocketAddr>,
    /// Mirror the forwarded BGP and static routes into the host's routing table via the TUN device.
    pub kernel_routes: bool,
    /// Spread packets (not flows) over a group's tunnels: reorders packets within a flow.
    pub spray: bool,
    /// Data-path workers per direction (TUN queues and uplink sockets); default: the machine's cores.
    pub workers: usize,
    /// IKE responders demand a cookie (RFC 7296 2.6) while at least this many half-open IKE SAs (answered
    /// IKE_SA_INIT, no IKE_AUTH yet, within the last 30 s) exist across all tunnels; 0 = always.
    pub ike_cookie_threshold: usize,
    /// The default of every uplink's `ike_port_500`.
    pub ike_port_500: bool,
    /// Packets the TUN device queues for the outbound workers (its transmit queue, per queue of a
    /// multi-queue device) before the kernel drops: what absorbs a sender's bursts while a worker is busy.
    pub tun_queue_len: u32,
}

#[derive(Debug, Clone)]
pub struct Uplink {
    pub name: String,
    pub local: IpAddr,
    pub port: u16,
    /// Uplink MTU; `None` = read from the interface that holds `local`.
    pub mtu: Option<u32>,
    pub device: Option<String>,
    pub fwmark: Option<u32>,
    pub socket_buffer: usize,
    /// Egress cap in bits per second.
    pub cap_bps: Option<u64>,
    /// Token bucket depth in bytes (`None`: the default for the cap).
    pub cap_burst: Option<u64>,
    /// Weight of this uplink's tunnels in a next-hop group (`None`: from the cap).
    pub weight: Option<u32>,
    /// Also answer IKE on `local`, UDP port 500 (plain IKE, no non-ESP marker; RFC 7296 section 2.23), when
    /// a tunnel on this uplink uses IKE. Default: `[gateway] ike_port_500`, else true.
    pub ike_port_500: bool,
}

impl Uplink {
    pub fn local_addr(&self) -> SocketAddr {
        SocketAddr::new(self.local, self.port)
    }
}

#[derive(Debug, Clone)]
pub struct Tunnel {
    pub name: String,
    /// Index into `Config::uplinks`.
    pub uplink: usize,
    pub remote: SocketAddr,
    /// Our inside addresses (one per family at most).
    pub inside: Vec<InsideAddr>,
    /// The peer's inside addresses, derived from `inside` (the other host of the /30, /31, /126 or /127).
    pub peer_inside: Vec<IpAddr>,
    /// Static routes through this tunnel; also the inner sources it may carry.
    pub routes: Vec<Prefix>,
    pub keying: Keying,
    pub replay_window: u32,
    /// Static keying: extended sequence numbers. IKE negotiates ESN (`esp_proposal`) instead.
    pub esn: bool,
    /// Weight in a next-hop group; `None`: the uplink's.
    pub weight: Option<u32>,
    /// BFD over the tunnel's inside addresses.
    pub bfd: Option<BfdConfig>,
    /// Inbound-silence liveness: the tunnel leaves its groups when nothing authentic has arrived for this long
    /// while we were sending on it (`None`: off; the default without BFD is [`DEFAULT_SILENCE`]).
    pub silence: Option<Duration>,
}

/// How long a tunnel without BFD may stay silent while we send on it before it is taken out of use.
pub const DEFAULT_SILENCE: Duration = Duration::from_millis(1500);

/// A tunnel's `bfd = { interval_ms, multiplier, hold_down_ms }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdConfig {
    /// Desired min TX and required min RX, ms.
    pub interval_ms: u32,
    pub multiplier: u8,
    /// How long a session must stay Up before the tunnel carries traffic again, ms.
    pub hold_down_ms: u32,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBfd {
    interval_ms: Option<u32>,
    multiplier: Option<u8>,
    hold_down_ms: Option<u32>,
}

/// Validates a `bfd = {...}` table found at `key`.
fn bfd_config(cx: &Ctx, key: &str, b: &RawBfd) -> Result<BfdConfig, ConfigError> {
    let c = BfdConfig {
        interval_ms: b.interval_ms.unwrap_or(300),
        multiplier: b.multiplier.unwrap_or(3),
        hold_down_ms: b.hold_down_ms.unwrap_or(1000),
    };
    if !(10..=10_000).contains(&c.interval_ms) {
        return Err(cx.err(
            format!("{key}.interval_ms"),
            format!("{} is outside 10..=10000", c.interval_ms),
        ));
    }
    if !(2..=50).contains(&c.multiplier) {
        return Err(cx.err(
            format!("{key}.multiplier"),
            format!(
                "{} is outside 2..=50 (1 declares a path dead on one lost packet)",
                c.multiplier
            ),
        ));
    }
    if c.hold_down_ms > 600_000 {
        return Err(cx.err(format!("{key}.hold_down_ms"), "at most 600000 (10 minutes)"));
    }
    Ok(c)
}

impl Tunnel {
    /// Inner source prefixes accepted from this tunnel: the peer's inside addresses and the routes.
    pub fn allowed_sources(&self) -> Vec<Prefix> {
        self.peer_inside
            .iter()
            .map(|&a| Prefix::host(a))
            .chain(self.routes.iter().copied())
            .collect()
    }
}

#[derive(Debug, Clone)]
pub enum Keying {
    Static(StaticKeys),
    Ike(Box<IkeSettings>),
}

impl Keying {
    /// `"static"` or `"ike"`, as `braid show tunnels` says.
    pub fn kind(&self) -> &'static str {
        match self {
            Keying::Static(_) => "static",
            Keying::Ike(_) => "ike",
        }
    }
}

/// Half-open IKE SAs across all tunnels from which responders demand cookies (`[gateway]
/// ike_cookie_threshold`). A gateway has a handful of peers, each with at most one half-open SA at a time:
/// 64 means someone is sending IKE_SA_INITs that never finish.
pub const DEFAULT_IKE_COOKIE_THRESHOLD: usize = 64;

/// IKE defaults, as in the IKEv2 core (`IkeConfig::new`) and strongSwan.
pub const DEFAULT_IKE_PROPOSAL: &str =
    "aes256gcm16-prfsha256-ecp256,chacha20poly1305-prfsha256-x25519";
pub const DEFAULT_ESP_PROPOSAL: &str = "aes256gcm16,chacha20poly1305";
pub const DEFAULT_IKE_LIFETIME: Duration = Duration::from_secs(4 * 3600);
pub const DEFAULT_CHILD_LIFETIME: Duration = Duration::from_secs(3600);
pub const DEFAULT_DPD_INTERVAL: Duration = Duration::from_secs(30);

/// IKEv2 keying of one tunnel: `ike = { psk_file, proposal, esp_proposal, lifetime, child_lifetime,
/// child_bytes, dpd_interval, local_id, remote_id, initiator, force_encap, retransmit = { timeout, factor,
/// tries } }`.
#[derive(Debug, Clone)]
pub struct IkeSettings {
    /// The pre-shared key (the file's contents, or the octets of its `0x...` hex form).
    pub psk: Secret,
    pub psk_file: PathBuf,
    /// IKE SA proposals, preferred first (strongSwan syntax).
    pub proposals: Vec<IkeProposal>,
    /// Child SA (ESP) proposals, preferred first.
    pub esp_proposals: Vec<EspProposal>,
    /// The IKE SA is rekeyed at this age minus a random 0..10%.
    pub lifetime: Duration,
    /// A child SA is rekeyed at this age minus a random 0..10% (strongSwan's `rekey_time`); it expires
    /// (hard) at 125% of it if the rekey never succeeds.
    pub child_lifetime: Duration,
    /// A child SA is rekeyed after protecting about this many octets (both directions), deleted at it.
    pub child_bytes: Option<u64>,
    /// A liveness check after this long without any IKE message or ESP packet from the peer (`None`: off).
    pub dpd_interval: Option<Duration>,
    /// Our identity (default: the uplink's address).
    pub local_id: Identity,
    /// The identity the peer must prove (default: the remote address; `"%any"`: not checked).
    pub remote_id: Option<Identity>,
    /// Whether we start the IKE SA (and restart it after it dies); a responder waits for the peer.
    pub initiator: bool,
    /// Pretend to be behind a NAT (strongSwan's `encap = yes`).
    pub force_encap: bool,
    /// Initiator: start IKE_SA_INIT on this port of the peer (500) and float to the tunnel's remote port
    /// for IKE_AUTH (`None`: start on the remote port).
    pub start_port: Option<u16>,
    /// Request retransmission: first timeout, growth factor, retransmissions.
    pub retransmit: Retransmit,
    /// Traffic selectors proposed for our side and the peer's (default: `0.0.0.0/0` and `::/0` each). A
    /// responder narrows the peer's proposal to these (RFC 7296 section 2.9); an initiator refuses an answer
    /// outside them.
    pub local_ts: Vec<TrafficSelector>,
    pub remote_ts: Vec<TrafficSelector>,
}

/// Manual keying: one SA each way, keys given in the config or in files.
#[derive(Debug, Clone)]
pub struct StaticKeys {
    pub cipher: Cipher,
    pub spi_out: u32,
    pub spi_in: u32,
    /// 32-byte key + 4-byte salt.
    pub key_out: Secret,
    pub key_in: Secret,
}

// ---- the raw TOML shape ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    gateway: RawGateway,
    #[serde(default)]
    uplink: Vec<RawUplink>,
    #[serde(default)]
    tunnel: Vec<RawTunnel>,
    bgp: Option<RawBgp>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBgp {
    #[serde(default)]
    networks: Vec<String>,
    max_paths: Option<usize>,
    listen_port: Option<u16>,
    #[serde(default)]
    neighbor: Vec<RawNeighbor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNeighbor {
    tunnel: Option<String>,
    address: Option<String>,
    port: Option<u16>,
    local_address: Option<String>,
    remote_asn: u32,
    hold_time: Option<u16>,
    passive: Option<bool>,
    prepend: Option<u8>,
    import: Option<Vec<String>>,
    export: Option<Vec<String>>,
    max_prefix: Option<u32>,
    connect_retry: Option<u32>,
    bfd: Option<RawBfd>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGateway {
    name: String,
    asn: Option<u32>,
    router_id: Option<String>,
    tun: Option<String>,
    control_socket: Option<PathBuf>,
    metrics: Option<String>,
    mtu: Option<u32>,
    kernel_routes: Option<bool>,
    spray: Option<bool>,
    ike_cookie_threshold: Option<usize>,
    ike_port_500: Option<bool>,
    workers: Option<usize>,
    tun_queue_len: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUplink {
    name: String,
    local: String,
    port: Option<u16>,
    cap: Option<String>,
    cap_burst: Option<u64>,
    weight: Option<u32>,
    mtu: Option<u32>,
    device: Option<String>,
    fwmark: Option<u32>,
    socket_buffer: Option<usize>,
    ike_port_500: Option<bool>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SpiValue {
    Int(i64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    name: String,
    uplink: String,
    remote: String,
    inside: OneOrMany,
    #[serde(default)]
    routes: Vec<String>,
    #[serde(rename = "static")]
    static_keys: Option<RawStatic>,
    ike: Option<RawIke>,
    bfd: Option<RawBfd>,
    replay_window: Option<u32>,
    esn: Option<bool>,
    weight: Option<u32>,
    silence_ms: Option<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    cipher: String,
    spi_out: SpiValue,
    spi_in: SpiValue,
    key_out: Option<String>,
    key_in: Option<String>,
    key_out_file: Option<PathBuf>,
    key_in_file: Option<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIke {
    psk_file: Option<PathBuf>,
    proposal: Option<String>,
    esp_proposal: Option<String>,
    lifetime: Option<DurationValue>,
    child_lifetime: Option<DurationValue>,
    child_bytes: Option<u64>,
    dpd_interval: Option<DurationValue>,
    local_id: Option<String>,
    remote_id: Option<String>,
    initiator: Option<bool>,
    force_encap: Option<bool>,
    start_port: Option<u16>,
    retransmit: Option<RawRetransmit>,
    local_ts: Option<OneOrMany>,
    remote_ts: Option<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRetransmit {
    timeout: Option<DurationValue>,
    factor: Option<f64>,
    tries: Option<u32>,
}

/// A duration: seconds as an integer, or a number with a unit (`"500ms"`, `"30s"`, `"10m"`, `"4h"`, `"1d"`).
#[derive(Deserialize)]
#[serde(untagged)]
enum DurationValue {
    Secs(i64),
    Text(String),
}

fn parse_duration(v: &DurationValue) -> Result<Duration, String> {
    match v {
        DurationValue::Secs(n) if *n >= 0 => Ok(Duration::from_secs(*n as u64)),
        DurationValue::Secs(n) => Err(format!("{n} is negative")),
        DurationValue::Text(t) => {
            let s = t.trim();
            let split = s
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(s.len());
            let (num, unit) = s.split_at(split);
            let n: f64 = num.parse().map_err(|_| {
                format!("{t:?} is not a duration (e.g. 30, \"30s\", \"500ms\", \"10m\", \"4h\")")
            })?;
            let scale = match unit.trim() {
                "ms" => 1e-3,
                "" | "s" => 1.0,
                "m" => 60.0,
                "h" => 3600.0,
                "d" => 86400.0,
                u => return Err(format!("{t:?}: unknown unit {u:?} (ms, s, m, h, d)")),
            };
            Duration::try_from_secs_f64(n * scale).map_err(|_| format!("{t:?} is out of range"))
        }
    }
}

struct Ctx<'a> {
    file: &'a Path,
    dir: &'a Path,
}

impl Ctx<'_> {
    fn err(&self, key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.file.to_path_buf(),
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl Config {
    /// Reads and validates the configuration file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            key: String::new(),
            problem: format!("cannot read: {e}"),
        })?;
        Config::parse(path, &text)
    }

    /// Validates `text` as if read from `path` (relative key files resolve against its directory).
    pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let cx = Ctx { file: path, dir };
        let raw: RawConfig = toml::from_str(text).map_err(|e| {
            let (line, col) = e.span().map(|s| line_col(text, s.start)).unwrap_or((0, 0));
            cx.err(
                format!("line {line}, column {col}"),
                e.message().to_string(),
            )
        })?;
        validate(&cx, raw)
    }
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn validate(cx: &Ctx, raw: RawConfig) -> Result<Config, ConfigError> {
    let g = raw.gateway;
    if g.name.is_empty()
        || !g
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(cx.err(
            "gateway.name",
            format!("{:?}: use letters, digits, '-', '_' or '.'", g.name),
        ));
    }
    let metrics = g
        .metrics
        .as_deref()
        .map(|m| {
            m.parse::<SocketAddr>().map_err(|_| {
                cx.err(
                    "gateway.metrics",
                    format!("{m:?} is not an address:port (e.g. \"127.0.0.1:9477\")"),
                )
            })
        })
        .transpose()?;
    let router_id = g
        .router_id
        .as_deref()
        .map(|s| {
            s.parse::<Ipv4Addr>()
                .map_err(|_| cx.err("gateway.router_id", format!("{s:?} is not an IPv4 address")))
        })
        .transpose()?;
    if g.asn == Some(0) {
        return Err(cx.err("gateway.asn", "0 is reserved (RFC 7607)"));
    }
    let tun = g.tun.unwrap_or_else(|| "braid0".into());
    braid_dataplane::sys::check_ifname(&tun).map_err(|e| cx.err("gateway.tun", e.to_string()))?;
    if let Some(m) = g.mtu {
        if !(576..=65535).contains(&m) {
            return Err(cx.err("gateway.mtu", format!("{m} is outside 576..=65535")));
        }
    }
    let tun_queue_len = g.tun_queue_len.unwrap_or(DEFAULT_TUN_QUEUE_LEN);
    if !(16..=MAX_TUN_QUEUE_LEN).contains(&tun_queue_len) {
        return Err(cx.err(
            "gateway.tun_queue_len",
            format!("{tun_queue_len} is outside 16..={MAX_TUN_QUEUE_LEN}"),
        ));
    }
    if let Some(n) = g.ike_cookie_threshold {
        if n > 1_000_000 {
            return Err(cx.err(
                "gateway.ike_cookie_threshold",
                format!("{n} is above 1000000 (0 demands a cookie always)"),
            ));
        }
    }
    let workers = match g.workers {
        Some(n) if !(1..=MAX_WORKERS).contains(&n) => {
            return Err(cx.err(
                "gateway.workers",
                format!("{n} is outside 1..={MAX_WORKERS}"),
            ))
        }
        Some(n) => n,
        None => std::thread::available_parallelism()
            .map_or(1, |n| n.get())
            .min(MAX_WORKERS),
    };
    let control_socket = g
        .control_socket
        .map(|p| if p.is_relative() { cx.dir.join(p) } else { p })
        .unwrap_or_else(|| PathBuf::from(format!("/run/braid/{}.sock", g.name)));
    let gateway = Gateway {
        name: g.name,
        asn: g.asn,
        router_id,
        tun,
        control_socket,
        mtu: g.mtu,
        metrics,
        kernel_routes: g.kernel_routes.unwrap_or(false),
        spray: g.spray.unwrap_or(false),
        workers,
        ike_cookie_threshold: g
            .ike_cookie_threshold
            .unwrap_or(DEFAULT_IKE_COOKIE_THRESHOLD),
        ike_port_500: g.ike_port_500.unwrap_or(true),
        tun_queue_len,
    };

    let mut uplinks = Vec::new();
    let mut uplink_index = HashMap::new();
    for (i, u) in raw.uplink.into_iter().enumerate() {
        let key = |k: &str| format!("uplink[{i}] {:?}.{k}", u.name);
        if u.name.is_empty() {
            return Err(cx.err(format!("uplink[{i}].name"), "must not be empty"));
        }
        if uplink_index.insert(u.name.clone(), i).is_some() {
            return Err(cx.err(key("name"), "duplicate uplink name"));
        }
        let cap_bps = u
            .cap
            .as_deref()
            .map(braid_dataplane::shaper::parse_rate)
            .transpose()
            .map_err(|e| cx.err(key("cap"), e))?;
        if let Some(b) = u.cap_burst {
            if cap_bps.is_none() {
                return Err(cx.err(key("cap_burst"), "needs `cap`"));
            }
            if !(1500..=1 << 30).contains(&b) {
                return Err(cx.err(
                    key("cap_burst"),
                    format!("{b} bytes is outside 1500..=1073741824"),
                ));
            }
        }
        if u.weight == Some(0) {
            return Err(cx.err(
                key("weight"),
                "must be at least 1 (to carry nothing, leave the tunnels out)",
            ));
        }
        let local: IpAddr = u
            .local
            .parse()
            .map_err(|_| cx.err(key("local"), format!("{:?} is not an IP address", u.local)))?;
        if local.is_unspecified() || local.is_multicast() {
            return Err(cx.err(
                key("local"),
                format!("{local} cannot be an uplink source address"),
            ));
        }
        let port = u.port.unwrap_or(DEFAULT_PORT);
        if port == 0 {
            return Err(cx.err(key("port"), "must not be 0"));
        }
        if let Some(m) = u.mtu {
            if !(576..=65535).contains(&m) {
                return Err(cx.err(key("mtu"), format!("{m} is outside 576..=65535")));
            }
        }
        if let Some(d) = &u.device {
            braid_dataplane::sys::check_ifname(d)
                .map_err(|e| cx.err(key("device"), e.to_string()))?;
        }
        if uplinks
            .iter()
            .any(|x: &Uplink| x.local == local && x.port == port)
        {
            return Err(cx.err(
                key("local"),
                format!("{local}:{port} is already used by another uplink"),
            ));
        }
        uplinks.push(Uplink {
            name: u.name,
            local,
            port,
            mtu: u.mtu,
            device: u.device,
            fwmark: u.fwmark,
            socket_buffer: u.socket_buffer.unwrap_or(DEFAULT_SOCKET_BUFFER),
            cap_bps,
            cap_burst: u.cap_burst,
            weight: u.weight,
            ike_port_500: u.ike_port_500.unwrap_or(gateway.ike_port_500),
        });
    }

    let mut tunnels: Vec<Tunnel> = Vec::new();
    let mut names = HashSet::new();
    let mut spis_in = HashMap::new();
    let mut route_owner: HashMap<Prefix, String> = HashMap::new();
    for (i, t) in raw.tunnel.into_iter().enumerate() {
        let key = |k: &str| format!("tunnel[{i}] {:?}.{k}", t.name);
        if t.name.is_empty() {
            return Err(cx.err(format!("tunnel[{i}].name"), "must not be empty"));
        }
        if !names.insert(t.name.clone()) {
            return Err(cx.err(key("name"), "duplicate tunnel name"));
        }
        let bfd = t
            .bfd
            .as_ref()
            .map(|b| bfd_config(cx, &key("bfd"), b))
            .transpose()?;
        // Inbound silence: on by default where BFD is not (BFD already finds a dead path, faster); 0 = off.
        let silence = match (t.silence_ms, &bfd) {
            (Some(0), _) => None,
            (Some(ms), _) if !(300..=60_000).contains(&ms) => {
                return Err(cx.err(
                    key("silence_ms"),
                    format!("{ms} is outside 300..=60000 (0 turns inbound-silence liveness off)"),
                ))
            }
            (Some(ms), _) => Some(Duration::from_millis(ms as u64)),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_SILENCE),
        };
        if t.weight == Some(0) {
            return Err(cx.err(
                key("weight"),
                "must be at least 1 (to carry nothing, leave the tunnel out)",
            ));
        }
        let &uplink = uplink_index
            .get(&t.uplink)
            .ok_or_else(|| cx.err(key("uplink"), format!("no uplink named {:?}", t.uplink)))?;
        let remote = parse_remote(&t.remote).map_err(|p| cx.err(key("remote"), p))?;
        if remote.is_ipv4() != uplinks[uplink].local.is_ipv4() {
            return Err(cx.err(
                key("remote"),
                format!(
                    "{remote} and uplink {:?} ({}) are of different address families",
                    t.uplink, uplinks[uplink].local
                ),
            ));
        }
        let inside_list = match t.inside {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        };
        if inside_list.is_empty() {
            return Err(cx.err(key("inside"), "at least one inside address is needed"));
        }
        let mut inside = Vec::new();
        let mut peer_inside = Vec::new();
        for s in &inside_list {
            let (a, p) = parse_inside(s).map_err(|p| cx.err(key("inside"), p))?;
            if inside
                .iter()
                .any(|x: &InsideAddr| x.addr.is_ipv4() == a.addr.is_ipv4())
            {
                return Err(cx.err(
                    key("inside"),
                    "at most one inside address per address family",
                ));
            }
            for other in &tunnels {
                for o in &other.inside {
                    if o.subnet() == a.subnet() {
                        return Err(cx.err(
                            key("inside"),
                            format!(
                                "{} overlaps tunnel {:?}'s inside subnet {}",
                                s,
                                other.name,
                                o.subnet()
                            ),
                        ));
                    }
                }
            }
            inside.push(a);
            peer_inside.push(p);
        }
        let mut routes = Vec::new();
        for r in &t.routes {
            let p: Prefix = r
                .parse()
                .map_err(|e| cx.err(key("routes"), format!("{e}")))?;
            if let Some(owner) = route_owner.get(&p) {
                return Err(cx.err(
                    key("routes"),
                    format!("{p} is already routed through tunnel {owner:?}; static routes over several tunnels arrive with multipath"),
                ));
            }
            route_owner.insert(p, t.name.clone());
            routes.push(p);
        }
        let replay_window = t.replay_window.unwrap_or(DEFAULT_REPLAY_WINDOW);
        if replay_window > MAX_REPLAY_WINDOW {
            return Err(cx.err(
                key("replay_window"),
                format!("{replay_window} is above the maximum {MAX_REPLAY_WINDOW}"),
            ));
        }
        let keying = match (t.static_keys, t.ike) {
            (Some(_), Some(_)) => {
                return Err(cx.err(key("ike"), "give either `static` or `ike` keying, not both"))
            }
            (None, None) => {
                return Err(cx.err(
                    key("static"),
                    "a tunnel needs keys: `ike = { psk_file = \"FILE\" }` (IKEv2) or \
                     `static = { cipher, spi_out, spi_in, key_out, key_in }`",
                ))
            }
            (Some(s), None) => {
                let keys = static_keys(cx, &key, s)?;
                if let Some(other) = spis_in.insert(keys.spi_in, t.name.clone()) {
                    return Err(cx.err(
                        key("static.spi_in"),
                        format!(
                            "{:#010x} is already the inbound SPI of tunnel {other:?}",
                            keys.spi_in
                        ),
                    ));
                }
                Keying::Static(keys)
            }
            (None, Some(ike)) => {
                if t.esn.is_some() {
                    return Err(cx.err(
                        key("esn"),
                        "with `ike`, ESN is negotiated: add `-esn` or `-noesn` to `ike.esp_proposal`",
                    ));
                }
                Keying::Ike(Box::new(ike_settings(
                    cx,
                    &key,
                    ike,
                    &uplinks[uplink],
                    remote,
                )?))
            }
        };
        let esn = t.esn.unwrap_or(false);
        tunnels.push(Tunnel {
            name: t.name,
            uplink,
            remote,
            inside,
            peer_inside,
            routes,
            keying,
            replay_window,
            esn,
            weight: t.weight,
            bfd,
            silence,
        });
    }
    if !tunnels.is_empty() && uplinks.is_empty() {
        return Err(cx.err("uplink", "tunnels need at least one [[uplink]]"));
    }
    let bgp = raw
        .bgp
        .map(|b| validate_bgp(cx, b, &gateway, &tunnels))
        .transpose()?;
    Ok(Config {
        path: cx.file.to_path_buf(),
        gateway,
        uplinks,
        tunnels,
        bgp,
    })
}

/// The default hold time braid proposes (seconds).
pub const DEFAULT_HOLD_TIME: u16 = 90;

fn validate_bgp(
    cx: &Ctx,
    b: RawBgp,
    gateway: &Gateway,
    tunnels: &[Tunnel],
) -> Result<Bgp, ConfigError> {
    if gateway.asn.is_none() {
        return Err(cx.err("gateway.asn", "[bgp] needs the gateway's ASN"));
    }
    if gateway.router_id.is_none() {
        return Err(cx.err(
            "gateway.router_id",
            "[bgp] needs a router_id (an IPv4 address unique in the network)",
        ));
    }
    let mut networks = Vec::new();
    for n in &b.networks {
        networks.push(
            n.parse::<Prefix>()
                .map_err(|e| cx.err("bgp.networks", e.to_string()))?,
        );
    }
    let max_paths = b.max_paths.unwrap_or(8);
    if !(1..=64).contains(&max_paths) {
        return Err(cx.err("bgp.max_paths", format!("{max_paths} is outside 1..=64")));
    }
    let listen_port = b.listen_port.unwrap_or(179);
    if listen_port == 0 {
        return Err(cx.err("bgp.listen_port", "must not be 0"));
    }
    let mut neighbors: Vec<Neighbor> = Vec::new();
    for (i, n) in b.neighbor.into_iter().enumerate() {
        let label = n.tunnel.clone().or(n.address.clone()).unwrap_or_default();
        let key = |k: &str| format!("bgp.neighbor[{i}] {label:?}.{k}");
        if n.bfd.is_some() && n.tunnel.is_some() {
            return Err(cx.err(
                key("bfd"),
                "for a session in a tunnel, BFD is configured on the tunnel (`[[tunnel]] bfd = {...}`)",
            ));
        }
        let bfd = n
            .bfd
            .as_ref()
            .map(|b| bfd_config(cx, &key("bfd"), b))
            .transpose()?;
        let (address, tunnel, default_local) = match (&n.tunnel, &n.address) {
            (Some(_), Some(_)) => {
                return Err(cx.err(key("address"), "give either tunnel or address, not both"))
            }
            (None, None) => {
                return Err(cx.err(
                    key("address"),
                    "a neighbor needs `tunnel = NAME` or `address = IP`",
                ))
            }
            (None, Some(a)) => {
                let ip: IpAddr = a
                    .parse()
                    .map_err(|_| cx.err(key("address"), format!("{a:?} is not an IP address")))?;
                (ip, None, None)
            }
            (Some(t), None) => {
                let idx = tunnels
                    .iter()
                    .position(|x| &x.name == t)
                    .ok_or_else(|| cx.err(key("tunnel"), format!("no tunnel named {t:?}")))?;
                // The session runs between the two inside addresses, IPv4 first.
                let tn = &tunnels[idx];
                let j = tn.inside.iter().position(|a| a.addr.is_ipv4()).unwrap_or(0);
                (tn.peer_inside[j], Some(idx), Some(tn.inside[j].addr))
            }
        };
        if neighbors.iter().any(|x| x.address == address) {
            return Err(cx.err(key("address"), format!("{address} is already a neighbor")));
        }
        let local_address = match &n.local_address {
            Some(l) => Some(l.parse::<IpAddr>().map_err(|_| {
                cx.err(key("local_address"), format!("{l:?} is not an IP address"))
            })?),
            None => default_local,
        };
        if let Some(l) = local_address {
            if l.is_ipv4() != address.is_ipv4() {
                return Err(cx.err(
                    key("local_address"),
                    format!("{l} and {address} are of different families"),
                ));
            }
        }
        if n.remote_asn == 0 || n.remote_asn == 23456 {
            return Err(cx.err(
                key("remote_asn"),
                format!("{} is reserved (RFC 7607 / AS_TRANS)", n.remote_asn),
            ));
        }
        let hold_time = n.hold_time.unwrap_or(DEFAULT_HOLD_TIME);
        if hold_time == 1 || hold_time == 2 {
            return Err(cx.err(
                key("hold_time"),
                "must be 0 (no keepalives) or at least 3 seconds (RFC 4271 4.2)",
            ));
        }
        let prepend = n.prepend.unwrap_or(0);
        if prepend > 10 {
            return Err(cx.err(
                key("prepend"),
                format!("{prepend} is more than 10 extra copies"),
            ));
        }
        for (what, list) in [("import", &n.import), ("export", &n.export)] {
            for e in list.iter().flatten() {
                e.parse::<braid_control::bgp::policy::PrefixListEntry>()
                    .map_err(|p| cx.err(key(what), format!("{e:?}: {p}")))?;
            }
        }
        if n.max_prefix == Some(0) {
            return Err(cx.err(
                key("max_prefix"),
                "0 would refuse every route; omit it for no limit",
            ));
        }
        let connect_retry = n.connect_retry.unwrap_or(5);
        if !(1..=3600).contains(&connect_retry) {
            return Err(cx.err(key("connect_retry"), "must be 1..=3600 seconds"));
        }
        neighbors.push(Neighbor {
            address,
            tunnel,
            port: n.port.unwrap_or(179),
            local_address,
            remote_asn: n.remote_asn,
            hold_time,
            passive: n.passive.unwrap_or(false),
            prepend,
            import: n.import,
            export: n.export,
            max_prefix: n.max_prefix,
            connect_retry,
            bfd,
        });
    }
    Ok(Bgp {
        networks,
        max_paths,
        listen_port,
        neighbors,
    })
}

fn parse_remote(s: &str) -> Result<SocketAddr, String> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        if sa.port() == 0 {
            return Err("port 0 is not valid".into());
        }
        if sa.ip().is_unspecified() || sa.ip().is_multicast() {
            return Err(format!("{} is not a unicast address", sa.ip()));
        }
        return Ok(sa);
    }
    match s.parse::<IpAddr>() {
        Ok(ip) if !ip.is_unspecified() && !ip.is_multicast() => {
            Ok(SocketAddr::new(ip, DEFAULT_PORT))
        }
        Ok(ip) => Err(format!("{ip} is not a unicast address")),
        Err(_) => Err(format!(
            "{s:?} is not ADDRESS or ADDRESS:PORT (IPv6 with a port: [ADDRESS]:PORT)"
        )),
    }
}

/// Parses an inside address like `169.254.21.2/30` and derives the peer's address in the same subnet.
fn parse_inside(s: &str) -> Result<(InsideAddr, IpAddr), String> {
    let (a, l) = s
        .split_once('/')
        .ok_or_else(|| format!("{s:?}: expected ADDRESS/LENGTH, e.g. 169.254.21.2/30"))?;
    let addr: IpAddr = a
        .parse()
        .map_err(|_| format!("{a:?} is not an IP address"))?;
    let len: u8 = l
        .parse()
        .map_err(|_| format!("{l:?} is not a prefix length"))?;
    let peer = match addr {
        IpAddr::V4(v4) => {
            let x = u32::from(v4);
            match len {
                30 => {
                    let host = x & 3;
                    if host == 0 || host == 3 {
                        return Err(format!(
                            "{s}: the network or broadcast address of a /30 is not a host address"
                        ));
                    }
                    IpAddr::V4(Ipv4Addr::from(x & !3 | (3 - host)))
                }
                31 => IpAddr::V4(Ipv4Addr::from(x ^ 1)),
                _ => {
                    return Err(format!(
                        "{s}: an IPv4 inside subnet must be a /30 or /31 (one peer per tunnel)"
                    ))
                }
            }
        }
        IpAddr::V6(v6) => {
            let x = u128::from(v6);
            match len {
                127 => IpAddr::V6((x ^ 1).into()),
                126 => {
                    let host = x & 3;
                    if host == 0 || host == 3 {
                        return Err(format!("{s}: use host 1 or 2 of a /126"));
                    }
                    IpAddr::V6((x & !3 | (3 - host)).into())
                }
                _ => {
                    return Err(format!(
                        "{s}: an IPv6 inside subnet must be a /126 or /127 (one peer per tunnel)"
                    ))
                }
            }
        }
    };
    if addr.is_unspecified() || addr.is_multicast() || addr.is_loopback() {
        return Err(format!("{s}: not a usable unicast address"));
    }
    Ok((
        InsideAddr {
            addr,
            prefix_len: len,
        },
        peer,
    ))
}

fn parse_spi(v: &SpiValue) -> Result<u32, String> {
    let n: u64 = match v {
        SpiValue::Int(i) if *i >= 0 => *i as u64,
        SpiValue::Int(i) => return Err(format!("{i} is negative")),
        SpiValue::Text(s) => {
            let t = s.trim();
            let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
                Some(h) => u64::from_str_radix(h, 16),
                None => t.parse(),
            };
            parsed.map_err(|_| format!("{s:?} is not a number (write hex as \"0x...\")"))?
        }
    };
    if n > u32::MAX as u64 {
        return Err(format!("{n:#x} does not fit in 32 bits"));
    }
    if n < 256 {
        return Err(format!(
            "{n} is reserved (RFC 4303 2.1: SPIs 0-255 are not for SAs)"
        ));
    }
    Ok(n as u32)
}

fn parse_hex_key(text: &str) -> Result<Secret, String> {
    let t: String = text.chars().filter(|c| !c.is_whitespace()).collect();
    let t = Zeroizing::new(t);
    let t = t.strip_prefix("0x").unwrap_or(&t);
    if t.len() != KEYMAT_LEN * 2 {
        return Err(format!(
            "expected {} hex digits (32-byte key + 4-byte salt), got {}",
            KEYMAT_LEN * 2,
            t.len()
        ));
    }
    let mut out = Zeroizing::new(Vec::with_capacity(KEYMAT_LEN));
    for pair in t.as_bytes().chunks(2) {
        let hi = (pair[0] as char).to_digit(16);
        let lo = (pair[1] as char).to_digit(16);
        match (hi, lo) {
            (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
            _ => return Err("not a hex string".into()),
        }
    }
    Ok(Secret(out))
}

/// Resolves `path` against the configuration's directory and refuses a file that group or others may read.
fn private_file(cx: &Ctx, key: &str, path: &Path) -> Result<PathBuf, ConfigError> {
    let path = if path.is_relative() {
        cx.dir.join(path)
    } else {
        path.to_path_buf()
    };
    let meta =
        std::fs::metadata(&path).map_err(|e| cx.err(key, format!("{}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(cx.err(
            key,
            format!(
                "{} is readable by group or others (mode {mode:04o}); a key file must be private: chmod 600 {}",
                path.display(),
                path.display()
            ),
        ));
    }
    Ok(path)
}

fn read_key_file(cx: &Ctx, key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let path = private_file(cx, key, path)?;
    let text = Zeroizing::new(
        std::fs::read_to_string(&path)
            .map_err(|e| cx.err(key, format!("{}: {e}", path.display())))?,
    );
    parse_hex_key(&text).map_err(|p| cx.err(key, format!("{}: {p}", path.display())))
}

/// A PSK file: its text without the trailing line break, or, written `0x...`, the octets of that hex string
/// (as strongSwan's `secret = 0x...`).
fn read_psk_file(cx: &Ctx, key: &str, path: &Path) -> Result<(Secret, PathBuf), ConfigError> {
    let path = private_file(cx, key, path)?;
    let raw = Zeroizing::new(
        std::fs::read(&path).map_err(|e| cx.err(key, format!("{}: {e}", path.display())))?,
    );
    let mut text: &[u8] = &raw;
    while let Some(rest) = text
        .strip_suffix(b"\n")
        .or_else(|| text.strip_suffix(b"\r"))
    {
        text = rest;
    }
    let psk = match text.strip_prefix(b"0x") {
        Some(hex) => {
            if hex.is_empty() || hex.len() % 2 != 0 {
                return Err(cx.err(
                    key,
                    format!(
                        "{}: 0x... needs an even number of hex digits",
                        path.display()
                    ),
                ));
            }
            let mut out = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
            for pair in hex.chunks(2) {
                let d = |c: u8| (c as char).to_digit(16);
                match (d(pair[0]), d(pair[1])) {
                    (Some(h), Some(l)) => out.push((h * 16 + l) as u8),
                    _ => {
                        return Err(cx.err(
                            key,
                            format!("{}: 0x... is not a hex string", path.display()),
                        ))
                    }
                }
            }
            Secret(out)
        }
        None => Secret(Zeroizing::new(text.to_vec())),
    };
    if psk.expose().is_empty() {
        return Err(cx.err(key, format!("{}: the key is empty", path.display())));
    }
    Ok((psk, path))
}

/// The default traffic selectors: everything, both families (route-based: the FIB decides what enters).
pub const DEFAULT_TS: [&str; 2] = ["0.0.0.0/0", "::/0"];

/// `ike.local_ts` / `ike.remote_ts`: one prefix or a list (`"10.1.0.0/16"`, `["0.0.0.0/0", "::/0"]`); a
/// prefix with host bits set is refused.
fn traffic_selectors(
    cx: &Ctx,
    key: &str,
    raw: Option<OneOrMany>,
) -> Result<Vec<TrafficSelector>, ConfigError> {
    let list = match raw {
        None => DEFAULT_TS.iter().map(|s| s.to_string()).collect(),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    if list.is_empty() {
        return Err(cx.err(
            key,
            "an empty list selects no traffic: give prefixes, e.g. [\"0.0.0.0/0\", \"::/0\"]",
        ));
    }
    let mut out: Vec<TrafficSelector> = Vec::new();
    for text in &list {
        let t = text.trim();
        let ts: TrafficSelector = t.parse().map_err(|e| cx.err(key, format!("{e}")))?;
        let addr: IpAddr = t
            .split('/')
            .next()
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| cx.err(key, format!("{t:?} is not an address prefix")))?;
        if ts.start != addr {
            return Err(cx.err(
                key,
                format!(
                    "{t:?} has host bits set (did you mean {}?)",
                    ts_prefix(&ts, t)
                ),
            ));
        }
        if out.contains(&ts) {
            return Err(cx.err(key, format!("{t:?} is listed twice")));
        }
        out.push(ts);
    }
    Ok(out)
}

/// `START/LEN` of a selector parsed from `text` (`ADDR/LEN`).
fn ts_prefix(ts: &TrafficSelector, text: &str) -> String {
    match text.split_once('/') {
        Some((_, len)) => format!("{}/{}", ts.start, len.trim()),
        None => ts.start.to_string(),
    }
}

/// Validates an `ike = {...}` table.
fn ike_settings(
    cx: &Ctx,
    key: &dyn Fn(&str) -> String,
    raw: RawIke,
    uplink: &Uplink,
    remote: SocketAddr,
) -> Result<IkeSettings, ConfigError> {
    let k = |name: &str| key(&format!("ike.{name}"));
    let Some(psk_file) = &raw.psk_file else {
        return Err(cx.err(
            k("psk_file"),
            "missing: IKEv2 authenticates with a pre-shared key; give `psk_file = \"FILE\"` (mode 0600)",
        ));
    };
    let (psk, psk_file) = read_psk_file(cx, &k("psk_file"), psk_file)?;
    let proposals =
        IkeProposal::parse_list(raw.proposal.as_deref().unwrap_or(DEFAULT_IKE_PROPOSAL))
            .map_err(|e| cx.err(k("proposal"), e.to_string()))?;
    let esp_proposals =
        EspProposal::parse_list(raw.esp_proposal.as_deref().unwrap_or(DEFAULT_ESP_PROPOSAL))
            .map_err(|e| cx.err(k("esp_proposal"), e.to_string()))?;
    let duration = |v: &Option<DurationValue>, name: &str, default: Duration, min: Duration| {
        let d = v
            .as_ref()
            .map(parse_duration)
            .transpose()
            .map_err(|p| cx.err(k(name), p))?
            .unwrap_or(default);
        if d < min {
            return Err(cx.err(k(name), format!("{d:?} is below the minimum {min:?}")));
        }
        Ok(d)
    };
    let lifetime = duration(
        &raw.lifetime,
        "lifetime",
        DEFAULT_IKE_LIFETIME,
        Duration::from_secs(10),
    )?;
    let child_lifetime = duration(
        &raw.child_lifetime,
        "child_lifetime",
        DEFAULT_CHILD_LIFETIME,
        Duration::from_secs(5),
    )?;
    for (name, d) in [("lifetime", lifetime), ("child_lifetime", child_lifetime)] {
        if d > Duration::from_secs(30 * 86400) {
            return Err(cx.err(k(name), "at most 30 days"));
        }
    }
    let dpd_interval = duration(
        &raw.dpd_interval,
        "dpd_interval",
        DEFAULT_DPD_INTERVAL,
        Duration::ZERO,
    )?;
    let dpd_interval = (!dpd_interval.is_zero()).then_some(dpd_interval);
    if dpd_interval.is_some_and(|d| d < Duration::from_secs(1)) {
        return Err(cx.err(k("dpd_interval"), "at least 1 s (or 0 to turn DPD off)"));
    }
    if let Some(b) = raw.child_bytes {
        if b < 1 << 20 {
            return Err(cx.err(k("child_bytes"), format!("{b} is below 1 MiB (1048576)")));
        }
    }
    let id = |v: &Option<String>, name: &str| -> Result<Option<Identity>, ConfigError> {
        match v.as_deref().map(str::trim) {
            None => Ok(None),
            Some("") => Err(cx.err(k(name), "must not be empty")),
            Some(s) => Ok(Some(
                s.parse()
                    .unwrap_or_else(|e: std::convert::Infallible| match e {}),
            )),
        }
    };
    let local_id = id(&raw.local_id, "local_id")?.unwrap_or(match uplink.local {
        IpAddr::V4(a) => Identity::Ipv4(a),
        IpAddr::V6(a) => Identity::Ipv6(a),
    });
    if raw.local_id.as_deref().map(str::trim) == Some("%any") {
        return Err(cx.err(k("local_id"), "%any is for remote_id only"));
    }
    let remote_id = match raw.remote_id.as_deref().map(str::trim) {
        Some("%any") => None,
        Some(_) => id(&raw.remote_id, "remote_id")?,
        None => Some(match remote.ip() {
            IpAddr::V4(a) => Identity::Ipv4(a),
            IpAddr::V6(a) => Identity::Ipv6(a),
        }),
    };
    let mut retransmit = Retransmit::default();
    if let Some(r) = &raw.retransmit {
        if let Some(t) = &r.timeout {
            retransmit.base = parse_duration(t).map_err(|p| cx.err(k("retransmit.timeout"), p))?;
            if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&retransmit.base) {
                return Err(cx.err(k("retransmit.timeout"), "must be 100ms..=60s"));
            }
        }
        if let Some(f) = r.factor {
            if !(1.0..=4.0).contains(&f) {
                return Err(cx.err(k("retransmit.factor"), format!("{f} is outside 1.0..=4.0")));
            }
            retransmit.factor = f;
        }
        if let Some(n) = r.tries {
            if !(1..=20).contains(&n) {
                return Err(cx.err(k("retransmit.tries"), format!("{n} is outside 1..=20")));
            }
            retransmit.tries = n;
        }
    }
    let initiator = raw.initiator.unwrap_or(true);
    match raw.start_port {
        Some(p) if p != 500 => {
            return Err(cx.err(
                k("start_port"),
                format!("{p}: only 500 (plain IKE, floating to the remote port; RFC 7296 2.23)"),
            ))
        }
        Some(_) if !uplink.ike_port_500 => {
            return Err(cx.err(
                k("start_port"),
                format!(
                    "needs IKE on port 500 of uplink {:?} (its ike_port_500 is false)",
                    uplink.name
                ),
            ))
        }
        Some(_) if !initiator => {
            return Err(cx.err(
                k("start_port"),
                "only for an initiator (a responder answers on the port the peer chose)",
            ))
        }
        _ => {}
    }
    let local_ts = traffic_selectors(cx, &k("local_ts"), raw.local_ts)?;
    let remote_ts = traffic_selectors(cx, &k("remote_ts"), raw.remote_ts)?;
    Ok(IkeSettings {
        local_ts,
        remote_ts,
        psk,
        psk_file,
        proposals,
        esp_proposals,
        lifetime,
        child_lifetime,
        child_bytes: raw.child_bytes,
        dpd_interval,
        local_id,
        remote_id,
        initiator,
        force_encap: raw.force_encap.unwrap_or(false),
        start_port: raw.start_port,
        retransmit,
    })
}

fn static_keys(
    cx: &Ctx,
    key: &dyn Fn(&str) -> String,
    s: RawStatic,
) -> Result<StaticKeys, ConfigError> {
    let cipher: Cipher = s.cipher.parse().map_err(|_| {
        cx.err(
            key("static.cipher"),
            format!(
                "{:?}: expected \"aes256gcm16\" or \"chacha20poly1305\"",
                s.cipher
            ),
        )
    })?;
    let spi_out = parse_spi(&s.spi_out).map_err(|p| cx.err(key("static.spi_out"), p))?;
    let spi_in = parse_spi(&s.spi_in).map_err(|p| cx.err(key("static.spi_in"), p))?;
    let one = |inline: Option<String>,
               file: Option<PathBuf>,
               name: &str|
     -> Result<Secret, ConfigError> {
        let inline = inline.map(Zeroizing::new);
        match (inline, file) {
            (Some(_), Some(_)) => Err(cx.err(
                key(&format!("static.{name}")),
                format!("give either {name} or {name}_file, not both"),
            )),
            (None, None) => Err(cx.err(
                key(&format!("static.{name}")),
                format!("missing: give {name} (hex) or {name}_file"),
            )),
            (Some(h), None) => {
                parse_hex_key(&h).map_err(|p| cx.err(key(&format!("static.{name}")), p))
            }
            (None, Some(f)) => read_key_file(cx, &key(&format!("static.{name}_file")), &f),
        }
    };
    let key_out = one(s.key_out, s.key_out_file, "key_out")?;
    let key_in = one(s.key_in, s.key_in_file, "key_in")?;
    Ok(StaticKeys {
        cipher,
        spi_out,
        spi_in,
        key_out,
        key_in,
    })
}

/// An audit finding of `braid check`: not an error, but something an operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    pub key: String,
    pub message: String,
}

impl Config {
    /// Audits a valid configuration for risks (seed scenario S3: single points of failure, weak settings).
    pub fn audit(&self) -> Vec<Warning> {
        let mut w = Vec::new();
        match self.tunnels.len() {
            0 => w.push(Warning {
                key: "tunnel".into(),
                message: "no tunnels configured: this gateway forwards nothing".into(),
            }),
            1 => w.push(Warning {
                key: "tunnel".into(),
                message: "only one tunnel: a single negotiation failure or link blip is an outage (no redundancy)".into(),
            }),
            _ => {}
        }
        if self.uplinks.len() == 1 && self.tunnels.len() > 1 {
            w.push(Warning {
                key: "uplink".into(),
                message: "all tunnels share one uplink: that ISP is a single point of failure"
                    .into(),
            });
        }
        if self.uplinks.len() > 1 {
            for (i, u) in self.uplinks.iter().enumerate() {
                if u.cap_bps.is_none() {
                    w.push(Warning {
                        key: format!("uplink[{i}] {:?}.cap", u.name),
                        message: "no egress cap on one of several uplinks: set `cap` to its line rate, or an \
                                  active/active spread can saturate it and the ISP drops instead of braid"
                            .into(),
                    });
                }
            }
        }
        let tunnel_sessions = self
            .bgp
            .as_ref()
            .is_some_and(|b| b.neighbors.iter().any(|n| n.tunnel.is_some()));
        if tunnel_sessions && !self.gateway.kernel_routes {
            w.push(Warning {
                key: "gateway.kernel_routes".into(),
                message: "BGP routes are forwarded by braid, but the host must send them to the TUN device: \
                          set `kernel_routes = true` or add the routes yourself"
                    .into(),
            });
        }
        for (i, t) in self.tunnels.iter().enumerate() {
            let k = |s: &str| format!("tunnel[{i}] {:?}.{s}", t.name);
            let s = match &t.keying {
                Keying::Static(s) => s,
                Keying::Ike(ike) => {
                    if ike.psk.expose().len() < 16 {
                        w.push(Warning {
                            key: k("ike.psk_file"),
                            message: format!(
                                "the pre-shared key is only {} octets: use at least 16 random octets (e.g. \
                                 `head -c 32 /dev/urandom | base64`)",
                                ike.psk.expose().len()
                            ),
                        });
                    }
                    if ike.dpd_interval.is_none() {
                        w.push(Warning {
                            key: k("ike.dpd_interval"),
                            message: "DPD is off: a dead peer without BFD is found only by BGP's hold timer"
                                .into(),
                        });
                    }
                    if ike.remote_id.is_none() {
                        w.push(Warning {
                            key: k("ike.remote_id"),
                            message: "%any: any peer that knows the PSK is accepted as this tunnel's peer"
                                .into(),
                        });
                    }
                    if t.replay_window == 0 {
                        w.push(Warning {
                            key: k("replay_window"),
                            message: "0 disables anti-replay protection".into(),
                        });
                    }
                    continue;
                }
            };
            w.push(Warning {
                key: k("static"),
                message: "manual keys never rotate; fine for labs and benchmarks, use IKEv2 in production".into(),
            });
            if s.key_in == s.key_out {
                w.push(Warning {
                    key: k("static.key_in"),
                    message: "key_in equals key_out: a reflected packet would authenticate".into(),
                });
            }
            if s.spi_in == s.spi_out {
                w.push(Warning {
                    key: k("static.spi_in"),
                    message:
                        "spi_in equals spi_out: our own packets reflected back would be accepted"
                            .into(),
                });
            }
            if t.replay_window == 0 {
                w.push(Warning {
                    key: k("replay_window"),
                    message: "0 disables anti-replay protection".into(),
                });
            }
        }
        if let (Some(b), Some(asn)) = (&self.bgp, self.gateway.asn) {
            for n in &b.neighbors {
                let k = format!("bgp.neighbor {}", n.address);
                let ebgp = n.remote_asn != asn;
                if ebgp && n.import.is_none() {
                    w.push(Warning {
                        key: format!("{k}.import"),
                        message: "no import policy on an eBGP session: every route from this peer is refused (RFC 8212)".into(),
                    });
                }
                if ebgp && n.export.is_none() {
                    w.push(Warning {
                        key: format!("{k}.export"),
                        message: "no export policy on an eBGP session: nothing is advertised to this peer (RFC 8212)".into(),
                    });
                }
                if n.hold_time == 0 {
                    w.push(Warning {
                        key: format!("{k}.hold_time"),
                        message: "0 disables the hold timer: a dead peer is never detected by BGP"
                            .into(),
                    });
                }
            }
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const K1: &str = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f20212223";
    const K2: &str = "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0dfdedddc";

    fn base() -> String {
        format!(
            r#"
[gateway]
name = "onprem-1"
tun = "braid0"

[[uplink]]
name = "isp1"
local = "198.51.100.1"

[[tunnel]]
name = "t1"
uplink = "isp1"
remote = "198.51.100.2:4500"
inside = ["169.254.0.1/30", "2001:db8:ffff::2/127"]
routes = ["192.0.2.128/25"]
static = {{ cipher = "aes256gcm16", spi_out = "0x1000", spi_in = "0x2000", key_out = "{K1}", key_in = "{K2}" }}
"#
        )
    }

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(Path::new("/etc/braid/gw.toml"), s)
    }

    #[test]
    fn valid_config() {
        let c = parse(&base()).unwrap();
        assert_eq!(
            c.gateway.control_socket,
            PathBuf::from("/run/braid/onprem-1.sock")
        );
        let t = &c.tunnels[0];
        assert_eq!(t.remote, "198.51.100.2:4500".parse().unwrap());
        assert_eq!(
            t.peer_inside,
            vec![
                "169.254.0.2".parse::<IpAddr>().unwrap(),
                "2001:db8:ffff::3".parse().unwrap()
            ]
        );
        assert_eq!(t.replay_window, 8192);
        let Keying::Static(s) = &t.keying else {
            panic!("static keying expected")
        };
        assert_eq!(s.spi_out, 0x1000);
        assert_eq!(s.key_out.expose()[0..2], [0, 1]);
        assert_eq!(t.allowed_sources().len(), 3);
        // Secrets never print.
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("0102030405"), "{dbg}");
        assert!(!dbg.contains("[0, 1, 2"), "{dbg}");
    }

    #[test]
    fn inbound_silence_defaults_on_without_bfd() {
        let c = parse(&base()).unwrap();
        assert_eq!(c.tunnels[0].silence, Some(DEFAULT_SILENCE));
        let with_bfd = base().replace(
            "routes = [",
            "bfd = { interval_ms = 100, multiplier = 3 }\nroutes = [",
        );
        assert_eq!(parse(&with_bfd).unwrap().tunnels[0].silence, None);
        let off = base().replace("routes = [", "silence_ms = 0\nroutes = [");
        assert_eq!(parse(&off).unwrap().tunnels[0].silence, None);
        let set = base().replace("routes = [", "silence_ms = 800\nroutes = [");
        assert_eq!(
            parse(&set).unwrap().tunnels[0].silence,
            Some(Duration::from_millis(800))
        );
        expect_err(
            &base().replace("routes = [", "silence_ms = 100\nroutes = ["),
            "silence_ms",
            "300..=60000",
        );
    }

    fn expect_err(text: &str, key: &str, problem: &str) {
        let e = parse(text).unwrap_err();
        assert!(
            e.key.contains(key),
            "key {:?} should contain {key:?} ({e})",
            e.key
        );
        assert!(
            e.problem.contains(problem),
            "problem {:?} should contain {problem:?}",
            e.problem
        );
        assert!(e.to_string().starts_with("/etc/braid/gw.toml: "), "{e}");
    }

    #[test]
    fn errors_name_file_key_and_problem() {
        expect_err(
            &base().replace("tun = ", "bogus = 1\ntun = "),
            "line",
            "unknown field `bogus`",
        );
        expect_err(
            &base().replace("0x2000", "0x10"),
            "static.spi_in",
            "reserved",
        );
        expect_err(
            &base().replace("0x2000", "banana"),
            "static.spi_in",
            "not a number",
        );
        expect_err(
            &base().replace(K1, &K1[..64]),
            "static.key_out",
            "expected 72 hex digits",
        );
        expect_err(
            &base().replace(K2, &K2.replace('f', "g")),
            "static.key_in",
            "not a hex",
        );
        expect_err(
            &base().replace("aes256gcm16", "des"),
            "static.cipher",
            "expected",
        );
        expect_err(
            &base().replace("uplink = \"isp1\"", "uplink = \"isp9\""),
            "tunnel[0] \"t1\".uplink",
            "no uplink named",
        );
        expect_err(
            &base().replace("169.254.0.1/30", "169.254.0.3/30"),
            "inside",
            "broadcast",
        );
        expect_err(
            &base().replace("169.254.0.1/30", "169.254.0.1/24"),
            "inside",
            "/30 or /31",
        );
        expect_err(
            &base().replace("192.0.2.128/25", "192.0.2.129/25"),
            "routes",
            "host bits",
        );
        expect_err(
            &base().replace("198.51.100.2:4500", "2001:db8::1"),
            "remote",
            "different address families",
        );
        expect_err(
            &base().replace("198.51.100.2:4500", "not-an-address"),
            "remote",
            "ADDRESS:PORT",
        );
        expect_err(
            &base().replace("name = \"onprem-1\"", "name = \"a b\""),
            "gateway.name",
            "letters",
        );
        expect_err(
            &format!("{}\n[bgp]\nmax_paths = 8\n", base()),
            "gateway.asn",
            "[bgp] needs",
        );
        expect_err(
            &base().replace("key_in = ", "key_in_file = \"x\", key_in = "),
            "static.key_in",
            "not both",
        );
        expect_err(
            &base().replace(
                "local = \"198.51.100.1\"",
                "local = \"198.51.100.1\"\ncap = \"1Gbyte\"",
            ),
            "cap",
            "bits per second",
        );
        expect_err(
            &base().replace(
                "local = \"198.51.100.1\"",
                "local = \"198.51.100.1\"\nweight = 0",
            ),
            "weight",
            "at least 1",
        );
        expect_err(
            &base().replace("tun = \"braid0\"", "tun = \"braid0\"\nmetrics = \"9477\""),
            "gateway.metrics",
            "address:port",
        );
        for bad in ["0", "15", "100001"] {
            expect_err(
                &base().replace(
                    "tun = \"braid0\"",
                    &format!("tun = \"braid0\"\ntun_queue_len = {bad}"),
                ),
                "gateway.tun_queue_len",
                "outside 16..=100000",
            );
        }
        expect_err(
            &base().replace("name = \"isp1\"", "name = \"isp1\"\nmtu = 100"),
            "mtu",
            "576",
        );
        let two = format!(
            "{}{}",
            base(),
            &base()[base().find("[[tunnel]]").unwrap()..]
        );
        expect_err(&two, "tunnel[1] \"t1\".name", "duplicate");
        let two = two.replacen("name = \"t1\"", "name = \"t2\"", 2).replacen(
            "name = \"t2\"",
            "name = \"t1\"",
            1,
        );
        expect_err(&two, "inside", "overlaps");
    }

    fn with_bgp(neighbor: &str) -> String {
        format!(
            "{}\n[[bgp.neighbor]]\n{neighbor}\n[bgp]\nnetworks = [\"192.0.2.0/25\"]\n",
            base().replace(
                "tun = \"braid0\"",
                "tun = \"braid0\"\nasn = 65001\nrouter_id = \"192.0.2.1\""
            )
        )
    }

    #[test]
    fn bgp_neighbors_validate() {
        let ok = with_bgp("tunnel = \"t1\"\nremote_asn = 65515\nimport = [\"10.20.0.0/16 le 24\"]\nexport = [\"192.0.2.0/25\"]");
        let c = parse(&ok).unwrap();
        let b = c.bgp.as_ref().unwrap();
        let n = &b.neighbors[0];
        // A tunnel neighbor is the peer's inside address, from our own inside address.
        assert_eq!(n.address, "169.254.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(n.local_address, Some("169.254.0.1".parse().unwrap()));
        assert_eq!(n.tunnel, Some(0));
        assert_eq!(n.hold_time, DEFAULT_HOLD_TIME);
        assert_eq!(b.max_paths, 8);
        let lan = with_bgp("address = \"192.0.2.254\"\nremote_asn = 65001");
        let c = parse(&lan).unwrap();
        // iBGP without policy is fine; eBGP without policy is warned about (RFC 8212).
        assert!(!c.audit().iter().any(|w| w.message.contains("RFC 8212")));
        let ebgp = with_bgp("address = \"192.0.2.254\"\nremote_asn = 65002");
        assert!(parse(&ebgp)
            .unwrap()
            .audit()
            .iter()
            .any(|w| w.message.contains("RFC 8212")));

        expect_err(
            &with_bgp("remote_asn = 65002"),
            "neighbor[0]",
            "needs `tunnel = NAME` or `address = IP`",
        );
        expect_err(
            &with_bgp("tunnel = \"nope\"\nremote_asn = 65002"),
            "tunnel",
            "no tunnel named",
        );
        expect_err(
            &with_bgp("address = \"192.0.2.254\"\nremote_asn = 65002\nhold_time = 2"),
            "hold_time",
            "at least 3",
        );
        expect_err(
            &with_bgp("address = \"192.0.2.254\"\nremote_asn = 23456"),
            "remote_asn",
            "reserved",
        );
        expect_err(
            &with_bgp("address = \"192.0.2.254\"\nremote_asn = 65002\nprepend = 11"),
            "prepend",
            "more than 10",
        );
        expect_err(
            &with_bgp(
                "address = \"192.0.2.254\"\nremote_asn = 65002\nimport = [\"10.0.0.0/8 le 4\"]",
            ),
            "import",
            "10.0.0.0/8 le 4",
        );
        expect_err(
            &with_bgp("address = \"192.0.2.254\"\nremote_asn = 65002\nbfd = { multiplier = 1 }"),
            "bfd.multiplier",
            "2..=50",
        );
        let no_asn =
            with_bgp("address = \"192.0.2.254\"\nremote_asn = 65002").replace("asn = 65001\n", "");
        expect_err(&no_asn, "gateway.asn", "[bgp] needs");
    }

    #[test]
    fn key_files_must_be_private() {
        let dir = std::env::temp_dir().join(format!("braid-cfg-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("out.key");
        std::fs::write(&f, format!("{K1}\n")).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        let text = base().replace(&format!("key_out = \"{K1}\""), "key_out_file = \"out.key\"");
        let e = Config::parse(&dir.join("gw.toml"), &text).unwrap_err();
        assert!(e.key.ends_with("static.key_out_file"), "{e}");
        assert!(
            e.problem
                .contains("readable by group or others (mode 0644)"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        let c = Config::parse(&dir.join("gw.toml"), &text).unwrap();
        let Keying::Static(s) = &c.tunnels[0].keying else {
            panic!("static keying expected")
        };
        assert_eq!(s.key_out.expose().len(), 36);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn peers_of_inside_subnets() {
        let p = |s: &str| parse_inside(s).map(|(_, p)| p.to_string());
        assert_eq!(p("169.254.21.2/30").unwrap(), "169.254.21.1");
        assert_eq!(p("169.254.21.1/30").unwrap(), "169.254.21.2");
        assert_eq!(p("169.254.21.4/31").unwrap(), "169.254.21.5");
        assert_eq!(p("2001:db8::1/127").unwrap(), "2001:db8::");
        assert_eq!(p("2001:db8::1/126").unwrap(), "2001:db8::2");
        assert!(p("169.254.21.0/30").is_err());
    }

    #[test]
    fn audit_flags_single_points_of_failure() {
        let c = parse(&base()).unwrap();
        let w = c.audit();
        assert!(w.iter().any(|w| w.message.contains("only one tunnel")));
        let same = base().replace(K2, K1);
        let w = parse(&same).unwrap().audit();
        assert!(w
            .iter()
            .any(|w| w.message.contains("key_in equals key_out")));
    }

    #[test]
    fn audit_asks_for_caps_on_several_uplinks() {
        let two = base().replace(
            "[[tunnel]]",
            "[[uplink]]\nname = \"isp2\"\nlocal = \"203.0.113.1\"\ncap = \"250Mbit\"\n\n[[tunnel]]",
        );
        let w = parse(&two).unwrap().audit();
        let caps: Vec<&Warning> = w.iter().filter(|w| w.key.ends_with(".cap")).collect();
        assert_eq!(caps.len(), 1, "{w:?}");
        assert!(caps[0].key.contains("isp1"));
    }

    /// A directory with a private PSK file and the base config keyed by IKE instead.
    struct IkeDir(PathBuf);

    impl IkeDir {
        fn new(tag: &str, psk: &[u8], mode: u32) -> IkeDir {
            let dir =
                std::env::temp_dir().join(format!("braid-cfg-ike-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let f = dir.join("peer.psk");
            std::fs::write(&f, psk).unwrap();
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
            IkeDir(dir)
        }

        fn parse(&self, ike: &str) -> Result<Config, ConfigError> {
            let text = base().replace(
                &format!(
                    "static = {{ cipher = \"aes256gcm16\", spi_out = \"0x1000\", spi_in = \"0x2000\", key_out = \"{K1}\", key_in = \"{K2}\" }}"
                ),
                &format!("ike = {{ {ike} }}"),
            );
            assert!(text.contains("ike = "), "{text}");
            Config::parse(&self.0.join("gw.toml"), &text)
        }
    }

    impl Drop for IkeDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn ike_of(c: &Config) -> &IkeSettings {
        match &c.tunnels[0].keying {
            Keying::Ike(i) => i,
            Keying::Static(_) => panic!("IKE keying expected"),
        }
    }

    #[test]
    fn ike_defaults_are_production_ones() {
        let d = IkeDir::new("defaults", b"a fine and long pre-shared key\n", 0o600);
        let c = d.parse("psk_file = \"peer.psk\"").unwrap();
        let ike = ike_of(&c);
        assert_eq!(ike.psk.expose(), b"a fine and long pre-shared key");
        assert_eq!(ike.lifetime, Duration::from_secs(4 * 3600));
        assert_eq!(ike.child_lifetime, Duration::from_secs(3600));
        assert_eq!(ike.dpd_interval, Some(Duration::from_secs(30)));
        assert!(ike.initiator);
        assert!(!ike.force_encap);
        assert_eq!(ike.proposals.len(), 2);
        assert_eq!(ike.esp_proposals.len(), 2);
        assert_eq!(
            ike.local_id,
            Identity::Ipv4("198.51.100.1".parse().unwrap())
        );
        assert_eq!(
            ike.remote_id,
            Some(Identity::Ipv4("198.51.100.2".parse().unwrap()))
        );
        assert_eq!(ike.retransmit, Retransmit::default());
        assert_eq!(c.tunnels[0].keying.kind(), "ike");
        // The PSK never prints.
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("fine and long"), "{dbg}");
        assert!(
            !c.audit().iter().any(|w| w.key.contains("ike")),
            "{:?}",
            c.audit()
        );
    }

    #[test]
    fn ike_every_key() {
        let d = IkeDir::new("every", b"0x00112233445566778899aabbccddeeff", 0o400);
        let c = d
            .parse(
                "psk_file = \"peer.psk\", proposal = \"chacha20poly1305-prfsha256-x25519\", \
                 esp_proposal = \"chacha20poly1305-noesn\", lifetime = \"2h\", child_lifetime = 600, \
                 child_bytes = 1000000000, dpd_interval = \"10s\", local_id = \"gw1.example.net\", \
                 remote_id = \"%any\", initiator = false, force_encap = true, \
                 retransmit = { timeout = \"500ms\", factor = 2.0, tries = 3 }",
            )
            .unwrap();
        let ike = ike_of(&c);
        assert_eq!(ike.psk.expose().len(), 16);
        assert_eq!(ike.psk.expose()[..2], [0x00, 0x11]);
        assert_eq!(
            ike.proposals[0].to_string(),
            "chacha20poly1305-prfsha256-x25519"
        );
        assert_eq!(ike.esp_proposals[0].to_string(), "chacha20poly1305-noesn");
        assert_eq!(ike.lifetime, Duration::from_secs(7200));
        assert_eq!(ike.child_lifetime, Duration::from_secs(600));
        assert_eq!(ike.child_bytes, Some(1_000_000_000));
        assert_eq!(ike.dpd_interval, Some(Duration::from_secs(10)));
        assert_eq!(ike.local_id, Identity::Fqdn("gw1.example.net".into()));
        assert_eq!(ike.remote_id, None);
        assert!(!ike.initiator);
        assert!(ike.force_encap);
        assert_eq!(ike.retransmit.base, Duration::from_millis(500));
        assert_eq!(ike.retransmit.tries, 3);
        let w = c.audit();
        assert!(w.iter().any(|w| w.key.ends_with("ike.remote_id")), "{w:?}");
        let off = d
            .parse("psk_file = \"peer.psk\", dpd_interval = 0")
            .unwrap();
        assert_eq!(ike_of(&off).dpd_interval, None);
        assert!(off
            .audit()
            .iter()
            .any(|w| w.key.ends_with("ike.dpd_interval")));
    }

    #[test]
    fn tun_queue_len_default_and_set() {
        assert_eq!(
            parse(&base()).unwrap().gateway.tun_queue_len,
            DEFAULT_TUN_QUEUE_LEN
        );
        let set = base().replace(
            "tun = \"braid0\"\n",
            "tun = \"braid0\"\ntun_queue_len = 500\n",
        );
        assert_eq!(parse(&set).unwrap().gateway.tun_queue_len, 500);
    }

    #[test]
    fn ike_port_500_and_start_port() {
        let d = IkeDir::new("p500", b"a fine and long pre-shared key", 0o600);
        let c = d.parse("psk_file = \"peer.psk\"").unwrap();
        assert!(c.gateway.ike_port_500);
        assert!(c.uplinks.iter().all(|u| u.ike_port_500));
        assert_eq!(ike_of(&c).start_port, None);
        // Off for the gateway, on again for one uplink.
        let off = base().replace(
            "tun = \"braid0\"\n",
            "tun = \"braid0\"\nike_port_500 = false\n",
        );
        let c = parse(&off).unwrap();
        assert!(!c.gateway.ike_port_500 && !c.uplinks[0].ike_port_500);
        let c = parse(&off.replace(
            "name = \"isp1\"\n",
            "name = \"isp1\"\nike_port_500 = true\n",
        ))
        .unwrap();
        assert!(c.uplinks[0].ike_port_500);
        let c = d
            .parse("psk_file = \"peer.psk\", start_port = 500")
            .unwrap();
        assert_eq!(ike_of(&c).start_port, Some(500));
        ike_err(
            &d,
            "psk_file = \"peer.psk\", start_port = 500, initiator = false",
            "ike.start_port",
            "only for an initiator",
        );
        ike_err(
            &d,
            "psk_file = \"peer.psk\", start_port = 4500",
            "ike.start_port",
            "only 500",
        );
    }

    fn ike_err(d: &IkeDir, ike: &str, key: &str, problem: &str) {
        let e = d.parse(ike).unwrap_err();
        assert!(
            e.key.contains(key),
            "key {:?} should contain {key:?} ({e})",
            e.key
        );
        assert!(
            e.problem.contains(problem),
            "problem {:?} should contain {problem:?}",
            e.problem
        );
    }

    #[test]
    fn ike_traffic_selectors() {
        let d = IkeDir::new("ts", b"a fine and long pre-shared key", 0o600);
        // Default: everything, both families, on both sides.
        let c = d.parse("psk_file = \"peer.psk\"").unwrap();
        let any: Vec<TrafficSelector> =
            vec![TrafficSelector::any_ipv4(), TrafficSelector::any_ipv6()];
        assert_eq!(ike_of(&c).local_ts, any);
        assert_eq!(ike_of(&c).remote_ts, any);
        // One prefix or a list; they reach the core's configuration unchanged.
        let c = d
            .parse("psk_file = \"peer.psk\", local_ts = \"192.0.2.0/25\", remote_ts = [\"192.0.2.128/25\", \"2001:db8:b::/64\"]")
            .unwrap();
        let ike = ike_of(&c);
        assert_eq!(ike.local_ts, vec!["192.0.2.0/25".parse().unwrap()]);
        assert_eq!(ike.remote_ts.len(), 2);
        assert_eq!(
            ike.remote_ts[0].start,
            "192.0.2.128".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            ike.remote_ts[0].end,
            "192.0.2.255".parse::<IpAddr>().unwrap()
        );
        assert!(ike.remote_ts[1].is_ipv6());
        // A single address is a /32.
        let c = d
            .parse("psk_file = \"peer.psk\", remote_ts = \"198.51.100.7\"")
            .unwrap();
        assert_eq!(ike_of(&c).remote_ts[0].start, ike_of(&c).remote_ts[0].end);
        // Errors name the key and the entry.
        let psk = "psk_file = \"peer.psk\", ";
        ike_err(
            &d,
            &format!("{psk}local_ts = []"),
            "ike.local_ts",
            "empty list",
        );
        ike_err(
            &d,
            &format!("{psk}remote_ts = [\"10.0.0.0/33\"]"),
            "ike.remote_ts",
            "bad traffic selector '10.0.0.0/33'",
        );
        ike_err(
            &d,
            &format!("{psk}remote_ts = \"10.1.2.3/16\""),
            "ike.remote_ts",
            "host bits set (did you mean 10.1.0.0/16?)",
        );
        ike_err(
            &d,
            &format!("{psk}local_ts = [\"::/0\", \"::/0\"]"),
            "ike.local_ts",
            "listed twice",
        );
        ike_err(
            &d,
            &format!("{psk}local_ts = \"any\""),
            "ike.local_ts",
            "bad traffic selector 'any'",
        );
    }

    #[test]
    fn ike_errors_name_the_key() {
        let d = IkeDir::new("errors", b"a fine and long pre-shared key", 0o600);
        let psk = "psk_file = \"peer.psk\"";
        ike_err(
            &d,
            "proposal = \"aes256gcm16-prfsha256-ecp256\"",
            "tunnel[0] \"t1\".ike.psk_file",
            "missing",
        );
        ike_err(&d, "psk_file = \"nope.psk\"", "ike.psk_file", "nope.psk");
        ike_err(
            &d,
            &format!("{psk}, proposal = \"aes128-sha1-modp2048\""),
            "ike.proposal",
            "aes128",
        );
        ike_err(
            &d,
            &format!("{psk}, proposal = \"aes256gcm16-prfsha256\""),
            "ike.proposal",
            "no Diffie-Hellman group",
        );
        ike_err(
            &d,
            &format!("{psk}, esp_proposal = \"aes256gcm16-prfsha256\""),
            "ike.esp_proposal",
            "PRF",
        );
        ike_err(
            &d,
            &format!("{psk}, lifetime = \"4 fortnights\""),
            "ike.lifetime",
            "unknown unit",
        );
        ike_err(
            &d,
            &format!("{psk}, lifetime = \"5s\""),
            "ike.lifetime",
            "minimum",
        );
        ike_err(
            &d,
            &format!("{psk}, child_lifetime = \"1s\""),
            "ike.child_lifetime",
            "minimum",
        );
        ike_err(
            &d,
            &format!("{psk}, child_lifetime = \"99d\""),
            "ike.child_lifetime",
            "30 days",
        );
        ike_err(
            &d,
            &format!("{psk}, dpd_interval = \"100ms\""),
            "ike.dpd_interval",
            "at least 1 s",
        );
        ike_err(
            &d,
            &format!("{psk}, dpd_interval = -3"),
            "ike.dpd_interval",
            "negative",
        );
        ike_err(
            &d,
            &format!("{psk}, child_bytes = 1000"),
            "ike.child_bytes",
            "1 MiB",
        );
        ike_err(
            &d,
            &format!("{psk}, local_id = \"%any\""),
            "ike.local_id",
            "remote_id only",
        );
        ike_err(
            &d,
            &format!("{psk}, remote_id = \"\""),
            "ike.remote_id",
            "empty",
        );
        ike_err(
            &d,
            &format!("{psk}, retransmit = {{ tries = 0 }}"),
            "ike.retransmit.tries",
            "1..=20",
        );
        ike_err(
            &d,
            &format!("{psk}, retransmit = {{ timeout = \"2m\" }}"),
            "ike.retransmit.timeout",
            "100ms",
        );
        ike_err(
            &d,
            &format!("{psk}, retransmit = {{ factor = 0.5 }}"),
            "ike.retransmit.factor",
            "1.0..=4.0",
        );
        // Unknown keys are refused by the parser, with the line.
        ike_err(
            &d,
            &format!("{psk}, psk = \"inline\""),
            "line",
            "unknown field `psk`",
        );
        // ESN is negotiated with IKE.
        let e = Config::parse(
            &d.0.join("gw.toml"),
            &base()
                .replace("routes = ", "esn = true\nroutes = ")
                .replace(
                    &format!("static = {{ cipher = \"aes256gcm16\", spi_out = \"0x1000\", spi_in = \"0x2000\", key_out = \"{K1}\", key_in = \"{K2}\" }}"),
                    &format!("ike = {{ {psk} }}"),
                ),
        )
        .unwrap_err();
        assert!(
            e.key.ends_with(".esn") && e.problem.contains("negotiated"),
            "{e}"
        );
        // Exactly one of static and ike.
        let both = base().replace("routes = ", &format!("ike = {{ {psk} }}\nroutes = "));
        let e = Config::parse(&d.0.join("gw.toml"), &both).unwrap_err();
        assert!(
            e.key.ends_with(".ike") && e.problem.contains("not both"),
            "{e}"
        );
        let neither = base().replace("static = {", "# static = {");
        let e = Config::parse(&d.0.join("gw.toml"), &neither).unwrap_err();
        assert!(e.problem.contains("`ike = {"), "{e}");
    }

    #[test]
    fn psk_files_must_be_private_and_not_empty() {
        let d = IkeDir::new("perm", b"a fine and long pre-shared key", 0o640);
        ike_err(
            &d,
            "psk_file = \"peer.psk\"",
            "ike.psk_file",
            "readable by group or others (mode 0640)",
        );
        let d = IkeDir::new("world", b"a fine and long pre-shared key", 0o604);
        ike_err(&d, "psk_file = \"peer.psk\"", "ike.psk_file", "mode 0604");
        let d = IkeDir::new("empty", b"\n", 0o600);
        ike_err(&d, "psk_file = \"peer.psk\"", "ike.psk_file", "empty");
        let d = IkeDir::new("badhex", b"0x123", 0o600);
        ike_err(&d, "psk_file = \"peer.psk\"", "ike.psk_file", "even number");
        let d = IkeDir::new("short", b"short", 0o600);
        let c = d.parse("psk_file = \"peer.psk\"").unwrap();
        assert!(c
            .audit()
            .iter()
            .any(|w| w.key.ends_with("ike.psk_file") && w.message.contains("only 5 octets")));
    }

    #[test]
    fn durations() {
        let p = |s: &str| parse_duration(&DurationValue::Text(s.into()));
        assert_eq!(p("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(p("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(p("30").unwrap(), Duration::from_secs(30));
        assert_eq!(p("1.5m").unwrap(), Duration::from_secs(90));
        assert_eq!(p("4h").unwrap(), Duration::from_secs(4 * 3600));
        assert_eq!(p("1d").unwrap(), Duration::from_secs(86400));
        assert!(p("h").is_err());
        assert!(p("3 weeks").is_err());
        assert_eq!(
            parse_duration(&DurationValue::Secs(7)).unwrap(),
            Duration::from_secs(7)
        );
    }
}
