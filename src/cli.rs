//! The command line: `braid run | check | show | lab | path | bgp | bench`.
//!
//! Exit codes: 0 success, 1 failure (a bad configuration, a daemon error, a failed lab check), 2 usage error.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::config::Config;
use crate::control::{self, Request};

#[derive(Parser, Debug)]
#[command(
    name = "braid",
    version,
    about = "Userspace IPsec (ESP-in-UDP) site-to-site VPN gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run the gateway in the foreground (SIGTERM/SIGINT: clean exit).
    Run {
        #[arg(short, long)]
        config: PathBuf,
        /// Log line format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate and audit a configuration; non-zero exit on error. With several (`-c A -c B`), also check
    /// the two ends of every tunnel between them against each other (keys, addresses, removal timers).
    Check {
        #[arg(short, long, required = true)]
        config: Vec<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show live state of a running gateway.
    Show {
        #[arg(value_enum)]
        what: ShowWhat,
        #[arg(long)]
        json: bool,
        /// The gateway's configuration (to find its control socket).
        #[arg(short, long, conflicts_with = "socket")]
        config: Option<PathBuf>,
        /// The gateway's control socket.
        #[arg(short, long)]
        socket: Option<PathBuf>,
    },
    /// Build a scenario in network namespaces, prove traffic, report and clean up (needs root).
    Lab {
        /// Scenario: `dual-isp` (S2: 2 + 2 gateways, two ISPs, 8 tunnels, ISP2 prepended as backup),
        /// `active-active` (S1: 2 + 2 gateways, 4 tunnels, flows spread over all 4) or `pair` (one tunnel).
        #[arg(default_value = "dual-isp")]
        scenario: String,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Bytes in the verified TCP transfer.
        #[arg(long, default_value_t = 64_000_000)]
        transfer_bytes: u64,
        /// Seconds of each iperf3 run (0 = skip iperf3).
        #[arg(long, default_value_t = 3)]
        iperf_secs: u32,
        /// Parallel TCP flows between the sites (multipath scenarios).
        #[arg(long, default_value_t = 512)]
        flows: usize,
        /// Seconds of multipath traffic.
        #[arg(long, default_value_t = 5.0)]
        secs: f64,
        /// Pace each flow at this many Mbit/s (0: as fast as TCP goes; the shares then also reflect which
        /// gateway process got more CPU).
        #[arg(long, default_value_t = 0.25)]
        mbit_per_flow: f64,
        /// Multipath scenarios: skip the failover drill's headline fault (dual-isp: ISP1 fails; active-active:
        /// one tunnel is cut) and its repair.
        #[arg(long)]
        no_drill: bool,
        /// Multipath scenarios: the whole failover drill: cut a tunnel, kill a gateway, fail ISP1 (dual-isp),
        /// stop a gateway gracefully, and repair each; with BFD, then again on hold timers only.
        #[arg(long, conflicts_with = "no_drill")]
        drill: bool,
        /// Drill probe flows in each direction.
        #[arg(long, default_value_t = 32)]
        probe_flows: usize,
        /// Packets per second of each probe flow (the blip's resolution is 1 / rate). The default keeps the
        /// total within what one gateway of the lab forwards on a 2-core box once its partner has failed.
        #[arg(long, default_value_t = 500.0)]
        probe_pps: f64,
        /// Multipath scenarios: no BFD on the tunnels (failures are then found by BGP hold timers only).
        #[arg(long)]
        no_bfd: bool,
        /// How the lab keys its tunnels: `ike` (IKEv2, a fresh PSK per tunnel) or `static` (manual keys).
        #[arg(long, default_value = "ike", value_parser = ["ike", "static"])]
        keying: String,
        /// Only remove leftovers of killed lab runs and exit.
        #[arg(long)]
        cleanup: bool,
    },
    /// Which tunnel a flow takes (like `ip route get`): the route, the group's members and the pick for a new
    /// flow with this tuple.
    Path {
        /// Destination address.
        dst: IpAddr,
        /// Source address (default: 0.0.0.0 or ::).
        #[arg(long)]
        src: Option<IpAddr>,
        /// Protocol: tcp, udp, icmp or a number.
        #[arg(long, default_value = "udp")]
        proto: String,
        #[arg(long, default_value_t = 0)]
        sport: u16,
        #[arg(long, default_value_t = 0)]
        dport: u16,
        #[arg(long)]
        json: bool,
        #[arg(short, long, conflicts_with = "socket")]
        config: Option<PathBuf>,
        #[arg(short, long)]
        socket: Option<PathBuf>,
    },
    /// BGP operations on a running gateway.
    #[command(subcommand)]
    Bgp(BgpCmd),
    /// Measure the data path on synthetic traffic, one core per direction (no root): outbound (inspect, FIB,
    /// flow hash + pick, ESP seal) and inbound (open, inner checks) against ring's raw AEAD seal; or, with
    /// `--loopback`, sealed datagrams sent and opened over UDP sockets on 127.0.0.1.
    Bench {
        /// ESP cipher: aes256gcm16 or chacha20poly1305.
        #[arg(long, default_value = "aes256gcm16")]
        cipher: String,
        /// Inner packet size in octets (IPv4 total length, 40 to 65000).
        #[arg(long, default_value_t = 1400)]
        size: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        secs: f64,
        /// Distinct flows (1 to 16384). Above the 256 packets of a round, each round takes the next 256
        /// flows' packets: the flow table's look is then a cache miss more often than not, as on a gateway
        /// with many flows.
        #[arg(long, default_value_t = crate::bench::FLOWS, value_parser = flows_parser())]
        flows: usize,
        /// Real UDP sockets on loopback: a sender thread seals and sends, a receiver thread opens.
        #[arg(long)]
        loopback: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Traffic tools the lab runs inside namespaces.
    #[command(hide = true, subcommand)]
    LabTool(LabTool),
}

#[derive(Copy, Clone, Debug, ValueEnum)]
enum ShowWhat {
    Tunnels,
    Uplinks,
    Bgp,
    Routes,
    Bfd,
}

#[derive(Subcommand, Debug)]
enum BgpCmd {
    /// Ask a neighbor to send its routes again (ROUTE-REFRESH, RFC 2918).
    Refresh {
        /// The neighbor's address.
        neighbor: String,
        #[arg(short, long, conflicts_with = "socket")]
        config: Option<PathBuf>,
        #[arg(short, long)]
        socket: Option<PathBuf>,
    },
}

#[derive(Subcommand, Debug)]
enum LabTool {
    TcpSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long)]
        seed: u64,
    },
    TcpSource {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        bytes: u64,
        #[arg(long)]
        seed: u64,
    },
    UdpSend {
        #[arg(long)]
        from: SocketAddr,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long)]
        hex: String,
    },
    /// Sequence-numbered UDP probe flows for failover drills.
    ProbeSource {
        #[arg(long)]
        from: std::net::IpAddr,
        #[arg(long)]
        to: SocketAddr,
        #[arg(long, default_value_t = 64)]
        flows: usize,
        #[arg(long, default_value_t = 1000.0)]
        pps: f64,
        #[arg(long)]
        secs: f64,
        /// Flow i is sent from this port + i (0: ephemeral ports).
        #[arg(long, default_value_t = 0)]
        sport_base: u16,
    },
    /// Receives probe flows and prints, per flow, losses and outages as JSON.
    ProbeSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long, default_value_t = 64)]
        flows: usize,
        #[arg(long)]
        secs: f64,
        /// Exit once probes have arrived and then none for this many ms.
        #[arg(long)]
        idle_exit_ms: Option<u64>,
    },
    FlowSink {
        #[arg(long)]
        listen: SocketAddr,
        #[arg(long)]
        flows: usize,
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    FlowSource {
        #[arg(long)]
        connect: SocketAddr,
        #[arg(long)]
        flows: usize,
        #[arg(long)]
        secs: f64,
        /// Pace each flow at this rate (0: as fast as TCP goes).
        #[arg(long, default_value_t = 0.0)]
        mbit_per_flow: f64,
    },
    UdpFlood {
        #[arg(long)]
        from: std::net::IpAddr,
        #[arg(long, required = true)]
        to: Vec<SocketAddr>,
        #[arg(long)]
        mbit: f64,
        #[arg(long)]
        secs: f64,
        #[arg(long, default_value_t = 1200)]
        size: usize,
        #[arg(long, default_value_t = 4)]
        flows: usize,
    },
}

/// Parses arguments, runs the command, returns the exit code.
/// `braid bench --flows`: 1 to [`crate::bench::MAX_FLOWS`].
fn flows_parser() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(1..=crate::bench::MAX_FLOWS as u64)
}

pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    match dispatch(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("braid: {e:#}");
            1
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BRAID_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn dispatch(cmd: Cmd) -> Result<i32> {
    match cmd {
        Cmd::Run { config, log_format } => {
            init_logging(log_format);
            let cfg = Config::load(&config)?;
            for w in cfg.audit() {
                tracing::warn!(key = %w.key, "{}", w.message);
            }
            crate::daemon::run(cfg)?;
            Ok(0)
        }
        Cmd::Check { config, json } => check(&config, json),
        Cmd::Show {
            what,
            json,
            config,
            socket,
        } => show(what, json, config.as_deref(), socket.as_deref()),
        Cmd::Lab {
            scenario,
            json,
            transfer_bytes,
            iperf_secs,
            flows,
            secs,
            mbit_per_flow,
            no_drill,
            drill,
            probe_flows,
            probe_pps,
            no_bfd,
            keying,
            cleanup,
        } => {
            if cleanup {
                let removed = crate::netns::cleanup_all()?;
                println!(
                    "removed {} leftover namespace(s) {:?}",
                    removed.len(),
                    removed
                );
                return Ok(0);
            }
            crate::lab::run(&crate::lab::LabOptions {
                scenario,
                json,
                transfer_bytes,
                iperf_secs,
                flows,
                secs,
                mbit_per_flow,
                drill: !no_drill,
                full_drill: drill,
                probe_flows,
                probe_pps,
                bfd: !no_bfd,
                keying: crate::lab::Keying::parse(&keying).unwrap_or(crate::lab::Keying::Ike),
            })
        }
        Cmd::Path {
            dst,
            src,
            proto,
            sport,
            dport,
            json,
            config,
            socket,
        } => {
            let protocol = match proto.as_str() {
                "tcp" => 6,
                "udp" => 17,
                "icmp" => 1,
                "icmpv6" | "ipv6-icmp" => 58,
                n => n.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "--proto {n:?}: want tcp, udp, icmp, icmpv6 or a protocol number"
                    )
                })?,
            };
            let src = src.unwrap_or(match dst {
                IpAddr::V4(_) => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                IpAddr::V6(_) => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            });
            let path = socket_path(config.as_deref(), socket.as_deref())?;
            let req = Request {
                path: Some(control::PathQuery {
                    src,
                    dst,
                    protocol,
                    sport,
                    dport,
                }),
                ..Request::default()
            };
            let v = control::request(&path, &req).context("querying the gateway")?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                print_path(&v);
            }
            Ok(0)
        }
        Cmd::Bgp(BgpCmd::Refresh {
            neighbor,
            config,
            socket,
        }) => {
            let path = socket_path(config.as_deref(), socket.as_deref())?;
            let v = control::request(
                &path,
                &Request {
                    bgp_refresh: Some(neighbor.clone()),
                    ..Request::default()
                },
            )?;
            println!(
                "route refresh sent to {neighbor} ({} famil(ies))",
                v["route_refresh_sent"]
            );
            Ok(0)
        }
        Cmd::Bench {
            cipher,
            size,
            secs,
            flows,
            loopback,
            json,
        } => {
            let cipher = braid_crypto::Cipher::ALL
                .into_iter()
                .find(|c| c.name() == cipher)
                .ok_or_else(|| {
                    anyhow::anyhow!("--cipher {cipher:?}: want aes256gcm16 or chacha20poly1305")
                })?;
            crate::bench::run(&crate::bench::BenchOptions {
                cipher,
                size,
                secs,
                flows,
                json,
                loopback,
            })
        }
        Cmd::LabTool(t) => {
            let timeout = Duration::from_secs(60);
            match t {
                LabTool::TcpSink {
                    listen,
                    bytes,
                    seed,
                } => crate::labtool::tcp_sink(listen, bytes, seed, timeout)?,
                LabTool::TcpSource {
                    connect,
                    bytes,
                    seed,
                } => crate::labtool::tcp_source(connect, bytes, seed, timeout)?,
                LabTool::UdpSend { from, to, hex } => crate::labtool::udp_send(from, to, &hex)?,
                LabTool::FlowSink {
                    listen,
                    flows,
                    timeout,
                } => crate::labtool::flow_sink(listen, flows, Duration::from_secs_f64(timeout))?,
                LabTool::FlowSource {
                    connect,
                    flows,
                    secs,
                    mbit_per_flow,
                } => crate::labtool::flow_source(connect, flows, secs, mbit_per_flow)?,
                LabTool::ProbeSource {
                    from,
                    to,
                    flows,
                    pps,
                    secs,
                    sport_base,
                } => crate::probe::source(from, to, flows, pps, secs, sport_base)?,
                LabTool::ProbeSink {
                    listen,
                    flows,
                    secs,
                    idle_exit_ms,
                } => crate::probe::sink(
                    listen,
                    flows,
                    secs,
                    idle_exit_ms.map(Duration::from_millis),
                )?,
                LabTool::UdpFlood {
                    from,
                    to,
                    mbit,
                    secs,
                    size,
                    flows,
                } => crate::labtool::udp_flood(from, &to, mbit, secs, size, flows)?,
            }
            Ok(0)
        }
    }
}

fn check(paths: &[PathBuf], json: bool) -> Result<i32> {
    let mut configs = Vec::new();
    let mut files = Vec::new();
    let mut failed = false;
    for path in paths {
        match Config::load(path) {
            Ok(cfg) => {
                let warnings = cfg.audit();
                if json {
                    files.push(serde_json::json!({
                        "ok": true,
                        "file": path.display().to_string(),
                        "gateway": cfg.gateway.name,
                        "uplinks": cfg.uplinks.len(),
                        "tunnels": cfg.tunnels.len(),
                        "warnings": warnings.iter().map(|w| serde_json::json!({"key": w.key, "message": w.message})).collect::<Vec<_>>(),
                    }));
                } else {
                    println!(
                        "{}: ok (gateway {:?}, {} uplink(s), {} tunnel(s))",
                        path.display(),
                        cfg.gateway.name,
                        cfg.uplinks.len(),
                        cfg.tunnels.len()
                    );
                    for w in &warnings {
                        println!("warning: {}: {}: {}", path.display(), w.key, w.message);
                    }
                }
                configs.push(cfg);
            }
            Err(e) => {
                failed = true;
                if json {
                    files.push(serde_json::json!({"ok": false, "file": e.file.display().to_string(), "key": e.key, "problem": e.problem}));
                } else {
                    eprintln!("error: {e}");
                }
            }
        }
    }
    let (pairs, findings) = crate::pairing::check(&configs);
    let pair_errors = findings.iter().filter(|f| f.error).count();
    if json {
        let v = if paths.len() == 1 {
            files.pop().unwrap_or_default()
        } else {
            serde_json::json!({
                "ok": !failed && pair_errors == 0,
                "files": files,
                "tunnel_pairs": pairs,
                "pair_findings": findings.iter().map(|f| serde_json::json!({
                    "a": f.a, "b": f.b, "key": f.key, "message": f.message,
                    "severity": if f.error { "error" } else { "warning" },
                })).collect::<Vec<_>>(),
            })
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        if paths.len() > 1 {
            println!("{pairs} tunnel(s) with both ends in these files");
        }
        for f in &findings {
            let what = if f.error { "error" } else { "warning" };
            let line = format!("{what}: {} <-> {}: {}: {}", f.a, f.b, f.key, f.message);
            if f.error {
                eprintln!("{line}");
            } else {
                println!("{line}");
            }
        }
    }
    Ok(if failed || pair_errors > 0 { 1 } else { 0 })
}

fn socket_path(config: Option<&Path>, socket: Option<&Path>) -> Result<PathBuf> {
    if let Some(s) = socket {
        return Ok(s.to_path_buf());
    }
    if let Some(c) = config {
        return Ok(Config::load(c)?.gateway.control_socket);
    }
    let socks: Vec<PathBuf> = std::fs::read_dir("/run/braid")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sock"))
                .collect()
        })
        .unwrap_or_default();
    match socks.as_slice() {
        [one] => Ok(one.clone()),
        [] => bail!("no running gateway found under /run/braid; give -c CONFIG or -s SOCKET"),
        _ => bail!("several gateways run here ({socks:?}); give -c CONFIG or -s SOCKET"),
    }
}

fn show(what: ShowWhat, json: bool, config: Option<&Path>, socket: Option<&Path>) -> Result<i32> {
    let path = socket_path(config, socket)?;
    let name = match what {
        ShowWhat::Tunnels => "tunnels",
        ShowWhat::Uplinks => "uplinks",
        ShowWhat::Bgp => "bgp",
        ShowWhat::Routes => "routes",
        ShowWhat::Bfd => "bfd",
    };
    let v = control::request(&path, &Request::show(name)).context("querying the gateway")?;
    if json {
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    match what {
        ShowWhat::Tunnels => print_tunnels(&v),
        ShowWhat::Uplinks => print_uplinks(&v),
        ShowWhat::Bgp => print_bgp(&v),
        ShowWhat::Routes => print_routes(&v),
        ShowWhat::Bfd => print_bfd(&v),
    }
    Ok(0)
}

fn print_path(v: &Value) {
    let Some(route) = v["route"].as_str() else {
        println!(
            "{}: no route to {}",
            v["gateway"].as_str().unwrap_or("?"),
            v["dst"].as_str().unwrap_or("?")
        );
        return;
    };
    println!(
        "{} proto {} {}:{} -> {}:{} via {route}: tunnel {}",
        v["gateway"].as_str().unwrap_or("?"),
        v["protocol"],
        v["src"].as_str().unwrap_or("?"),
        v["sport"],
        v["dst"].as_str().unwrap_or("?"),
        v["dport"],
        v["tunnel"].as_str().unwrap_or("-"),
    );
    for m in v["members"].as_array().into_iter().flatten() {
        println!(
            "  {:<20} weight {:<6} {:<7} {:<5} {}",
            m["tunnel"].as_str().unwrap_or("?"),
            m["weight"],
            if m["backup"] == true {
                "backup"
            } else {
                "active"
            },
            if m["live"] == true { "live" } else { "dead" },
            if m["candidate"] == true {
                "carrying"
            } else {
                ""
            },
        );
    }
}

fn print_bfd(v: &Value) {
    println!(
        "{:<20} {:<18} {:<9} {:<9} {:<5} {:>9} {:>11} {:>6}  DIAG",
        "TUNNEL", "PEER", "STATE", "REMOTE", "LIVE", "TX (ms)", "DETECT (ms)", "DOWNS"
    );
    let ms = |x: &Value| x.as_f64().map_or("-".to_string(), |m| format!("{m:.0}"));
    for s in v["sessions"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<18} {:<9} {:<9} {:<5} {:>9} {:>11} {:>6}  {}",
            s["tunnel"].as_str().unwrap_or("?"),
            s["peer"].as_str().unwrap_or("?"),
            s["state"].as_str().unwrap_or("?"),
            s["remote_state"].as_str().unwrap_or("?"),
            s["live"],
            ms(&s["negotiated"]["tx_interval_ms"]),
            ms(&s["negotiated"]["detection_time_ms"]),
            s["downs"],
            s["diag"].as_str().unwrap_or(""),
        );
    }
}

fn nonzero_drops(d: &Value) -> String {
    let parts: Vec<String> = d
        .as_object()
        .map(|m| {
            m.iter()
                .filter(|(_, v)| v.as_u64().unwrap_or(0) > 0)
                .map(|(k, v)| format!("{k}={v}"))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "-".into()
    } else {
        parts.join(" ")
    }
}

fn print_tunnels(v: &Value) {
    println!(
        "gateway {}  tun {} (mtu {}, queue {})",
        v["gateway"].as_str().unwrap_or("?"),
        v["tun"]["name"].as_str().unwrap_or("?"),
        v["tun"]["mtu"],
        v["tun"]["queue_len"]
    );
    println!(
        "{:<20} {:<8} {:<24} {:<10} {:<16} {:>10} {:>14} {:>10} {:>14}  DROPS",
        "TUNNEL",
        "UPLINK",
        "REMOTE",
        "STATE",
        "CIPHER",
        "TX PKTS",
        "TX BYTES",
        "RX PKTS",
        "RX BYTES"
    );
    for t in v["tunnels"].as_array().into_iter().flatten() {
        println!(
            "{:<20} {:<8} {:<24} {:<10} {:<16} {:>10} {:>14} {:>10} {:>14}  {}",
            t["name"].as_str().unwrap_or("?"),
            t["uplink"].as_str().unwrap_or("?"),
            t["remote"].as_str().unwrap_or("?"),
            t["state"].as_str().unwrap_or("?"),
            t["cipher"].as_str().unwrap_or("-"),
            t["tx_packets"],
            t["tx_bytes"],
            t["rx_packets"],
            t["rx_bytes"],
            nonzero_drops(&t["drops"]),
        );
    }
    let tun_drops = nonzero_drops(&v["tun"]["drops"]);
    if tun_drops != "-" {
        println!("tun drops (before a tunnel was chosen): {tun_drops}");
    }
}

fn print_bgp(v: &Value) {
    println!(
        "{:<28} {:>10} {:<12} {:>9} {:>9} {:>9} {:>10}  LAST ERROR",
        "NEIGHBOR", "AS", "STATE", "UPTIME", "RECEIVED", "ACCEPTED", "ADVERTISED"
    );
    for n in v["neighbors"].as_array().into_iter().flatten() {
        let label = n["label"].as_str().unwrap_or("?");
        let addr = n["neighbor"].as_str().unwrap_or("?");
        let name = if label == addr {
            addr.to_string()
        } else {
            format!("{addr} ({label})")
        };
        println!(
            "{:<28} {:>10} {:<12} {:>9} {:>9} {:>9} {:>10}  {}",
            name,
            n["remote_asn"],
            n["state"].as_str().unwrap_or("?"),
            n["uptime_s"]
                .as_u64()
                .map(|s| format!("{s}s"))
                .unwrap_or_else(|| "-".into()),
            n["received"],
            n["accepted"],
            n["advertised"],
            n["last_error"].as_str().unwrap_or("-"),
        );
    }
}

fn print_routes(v: &Value) {
    println!(
        "{:<24} {:<9} {:<3} {:<24} NEXT HOPS (backups)",
        "PREFIX", "SOURCE", "FIB", "AS PATH"
    );
    for r in v["routes"].as_array().into_iter().flatten() {
        let hops = |k: &str| -> String {
            r[k].as_array()
                .into_iter()
                .flatten()
                .map(|h| {
                    let via = h["tunnel"]
                        .as_str()
                        .or(h["neighbor"].as_str())
                        .unwrap_or("local");
                    match h["address"].as_str() {
                        Some(a) => format!("{a} via {via} w{}", h["weight"]),
                        None if h["tunnel"].is_string() => format!("{via} w{}", h["weight"]),
                        None => via.to_string(),
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let backups = hops("backups");
        println!(
            "{:<24} {:<9} {:<3} {:<24} {}{}",
            r["prefix"].as_str().unwrap_or("?"),
            r["source"].as_str().unwrap_or("?"),
            if r["fib"] == true { "*" } else { "" },
            r["as_path"].as_str().unwrap_or(""),
            hops("next_hops"),
            if backups.is_empty() {
                String::new()
            } else {
                format!(" (backup: {backups})")
            }
        );
    }
}

fn print_uplinks(v: &Value) {
    println!(
        "{:<10} {:<28} {:>6} {:>12} {:>12} {:>10} {:>10} {:>14} {:>10} {:>14}  DROPS",
        "UPLINK",
        "LOCAL",
        "MTU",
        "CAP BIT/S",
        "TX BIT/S",
        "CAP DROPS",
        "TX PKTS",
        "TX BYTES",
        "RX PKTS",
        "RX BYTES"
    );
    for u in v["uplinks"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:<28} {:>6} {:>12} {:>12} {:>10} {:>10} {:>14} {:>10} {:>14}  {}",
            u["name"].as_str().unwrap_or("?"),
            u["local"].as_str().unwrap_or("?"),
            u["mtu"],
            u["cap_bps"]
                .as_u64()
                .map_or("-".to_string(), |c| c.to_string()),
            u["tx_bps"],
            u["cap_drops"],
            u["tx_packets"],
            u["tx_bytes"],
            u["rx_packets"],
            u["rx_bytes"],
            nonzero_drops(&u["drops"]),
        );
    }
}
