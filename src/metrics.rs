//! The Prometheus endpoint (`[gateway] metrics = "ADDRESS:PORT"`): `GET /metrics` answers the same counters
//! `braid show` prints, in the Prometheus text exposition format (version 0.0.4).
//!
//! Families (every one labelled with `gateway`):
//! - per tunnel (`tunnel`, `uplink`): `braid_tunnel_{tx,rx}_{packets,bytes}_total`, `braid_tunnel_up` (an
//!   authenticated packet within the last 30 s), `braid_tunnel_weight`, `braid_tunnel_drops_total{reason}`;
//! - per uplink (`uplink`): `braid_uplink_{tx,rx}_{packets,bytes}_total`, `braid_uplink_tx_bps` (last second),
//!   `braid_uplink_cap_bps` (absent without a cap), `braid_uplink_cap_drops_total`,
//!   `braid_uplink_cap_delayed_total`, `braid_uplink_drops_total{reason}`;
//! - the TUN side: `braid_tun_rx_packets_total`, `braid_tun_drops_total{reason}`;
//! - the FIB: `braid_fib_routes{source}`;
//! - BGP (`neighbor`): `braid_bgp_session_established`, `braid_bgp_prefixes_{received,accepted,advertised}`.
//!
//! A deliberately small HTTP/1.0 server: one request per connection, a 5 s budget, 8 KiB of request read, no
//! keep-alive. Bind it to a management address; it has no authentication (as usual for exporters).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use braid_control::bgp::speaker::{NeighborStatus, SpeakerHandle};
use braid_control::install::RouteSource;
use braid_dataplane::stats::DropCounters;
use braid_dataplane::DropReason;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::control::{GatewayState, UP_WINDOW};

/// Binds the endpoint.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the metrics endpoint {addr}"))
}

/// Serves scrapes until the task is aborted.
pub async fn serve(listener: TcpListener, state: Arc<GatewayState>, bgp: Option<SpeakerHandle>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (state, bgp) = (state.clone(), bgp.clone());
        tokio::spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(5), answer(stream, state, bgp)).await;
        });
    }
}

async fn answer(
    mut stream: TcpStream,
    state: Arc<GatewayState>,
    bgp: Option<SpeakerHandle>,
) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the request head (up to the blank line), at most 8 KiB.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let line = request.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let (status, body) = if method != "GET" {
        ("405 Method Not Allowed", "only GET\n".to_string())
    } else if path == "/metrics" || path.starts_with("/metrics?") {
        let neighbors = match &bgp {
            Some(b) => b.neighbors().await,
            None => Vec::new(),
        };
        ("200 OK", render(&state, &neighbors))
    } else {
        ("404 Not Found", "try /metrics\n".to_string())
    };
    let head = format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain; version=0.0.4; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

/// Escapes a label value (backslash, double quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out {
    text: String,
    gateway: String,
}

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: u64) {
        let _ = write!(self.text, "{name}{{gateway=\"{}\"", self.gateway);
        for (k, v) in labels {
            let _ = write!(self.text, ",{k}=\"{}\"", esc(v));
        }
        let _ = writeln!(self.text, "}} {value}");
    }

    fn drops(&mut self, name: &str, labels: &[(&str, &str)], counters: &DropCounters) {
        for &r in DropReason::ALL {
            let mut l = labels.to_vec();
            l.push(("reason", r.as_str()));
            self.sample(name, &l, counters.get(r));
        }
    }
}

/// The exposition text for `state` and the BGP neighbours.
pub fn render(state: &GatewayState, neighbors: &[NeighborStatus]) -> String {
    let mut o = Out {
        text: String::with_capacity(16 * 1024),
        gateway: esc(&state.name),
    };
    let now_ms = state.epoch().elapsed().as_millis() as u64;
    let tunnels = state.tunnels();
    type TunnelCounter = fn(&braid_dataplane::TunnelStats) -> u64;
    let per_tunnel: [(&str, &str, TunnelCounter); 4] = [
        (
            "braid_tunnel_tx_packets_total",
            "Inner packets sent into the tunnel.",
            |s| s.tx_packets.load(Relaxed),
        ),
        (
            "braid_tunnel_tx_bytes_total",
            "Inner bytes sent into the tunnel.",
            |s| s.tx_bytes.load(Relaxed),
        ),
        (
            "braid_tunnel_rx_packets_total",
            "Inner packets received from the tunnel.",
            |s| s.rx_packets.load(Relaxed),
        ),
        (
            "braid_tunnel_rx_bytes_total",
            "Inner bytes received from the tunnel.",
            |s| s.rx_bytes.load(Relaxed),
        ),
    ];
    for (name, help, get) in per_tunnel {
        o.family(name, "counter", help);
        for t in tunnels {
            o.sample(
                name,
                &[("tunnel", &t.name), ("uplink", &t.uplink)],
                get(&t.stats),
            );
        }
    }
    o.family(
        "braid_tunnel_up",
        "gauge",
        "1 if the tunnel authenticated a packet within the last 30 s.",
    );
    for t in tunnels {
        let last = t.stats.last_rx_ms.load(Relaxed);
        let up = last > 0 && now_ms.saturating_sub(last) <= UP_WINDOW.as_millis() as u64;
        o.sample(
            "braid_tunnel_up",
            &[("tunnel", &t.name), ("uplink", &t.uplink)],
            up as u64,
        );
    }
    o.family(
        "braid_tunnel_weight",
        "gauge",
        "The tunnel's weight in next-hop groups.",
    );
    for t in tunnels {
        o.sample(
            "braid_tunnel_weight",
            &[("tunnel", &t.name), ("uplink", &t.uplink)],
            t.weight as u64,
        );
    }
    o.family(
        "braid_tunnel_drops_total",
        "counter",
        "Packets dropped on the tunnel, by reason.",
    );
    for t in tunnels {
        o.drops(
            "braid_tunnel_drops_total",
            &[("tunnel", &t.name), ("uplink", &t.uplink)],
            &t.stats.drops,
        );
    }

    let uplinks = state.uplinks();
    type UplinkCounter = fn(&braid_dataplane::UplinkStats) -> u64;
    let per_uplink: [(&str, &str, UplinkCounter); 6] = [
        (
            "braid_uplink_tx_packets_total",
            "Datagrams sent on the uplink.",
            |s| s.tx_packets.load(Relaxed),
        ),
        (
            "braid_uplink_tx_bytes_total",
            "UDP payload bytes sent on the uplink.",
            |s| s.tx_bytes.load(Relaxed),
        ),
        (
            "braid_uplink_rx_packets_total",
            "Datagrams received on the uplink.",
            |s| s.rx_packets.load(Relaxed),
        ),
        (
            "braid_uplink_rx_bytes_total",
            "UDP payload bytes received on the uplink.",
            |s| s.rx_bytes.load(Relaxed),
        ),
        (
            "braid_uplink_cap_drops_total",
            "Datagrams dropped over the uplink's egress cap.",
            |s| s.drops.get(DropReason::CapExceeded),
        ),
        (
            "braid_uplink_cap_delayed_total",
            "Datagrams the egress cap held back briefly.",
            |s| s.cap_delayed.load(Relaxed),
        ),
    ];
    for (name, help, get) in per_uplink {
        o.family(name, "counter", help);
        for u in uplinks {
            o.sample(name, &[("uplink", &u.name)], get(&u.stats));
        }
    }
    o.family(
        "braid_uplink_tx_bps",
        "gauge",
        "Egress rate over the last second, bits per second.",
    );
    for (i, u) in uplinks.iter().enumerate() {
        o.sample(
            "braid_uplink_tx_bps",
            &[("uplink", &u.name)],
            state.tx_bps(i),
        );
    }
    o.family(
        "braid_uplink_cap_bps",
        "gauge",
        "The uplink's egress cap, bits per second.",
    );
    for u in uplinks {
        if let Some(cap) = u.cap_bps {
            o.sample("braid_uplink_cap_bps", &[("uplink", &u.name)], cap);
        }
    }
    o.family(
        "braid_uplink_drops_total",
        "counter",
        "Datagrams dropped on the uplink before a tunnel was known, and cap drops, by reason.",
    );
    for u in uplinks {
        o.drops(
            "braid_uplink_drops_total",
            &[("uplink", &u.name)],
            &u.stats.drops,
        );
    }

    o.family(
        "braid_tun_rx_packets_total",
        "counter",
        "Packets read from the TUN device.",
    );
    o.sample(
        "braid_tun_rx_packets_total",
        &[],
        state.tun_stats().rx_packets.load(Relaxed),
    );
    o.family(
        "braid_tun_drops_total",
        "counter",
        "Packets from the TUN device dropped before a tunnel was chosen, by reason.",
    );
    o.drops("braid_tun_drops_total", &[], &state.tun_stats().drops);

    if let Some(installer) = &state.installer {
        let installer = installer.lock().unwrap_or_else(|p| p.into_inner());
        o.family(
            "braid_fib_routes",
            "gauge",
            "Routes in the forwarding table, by source.",
        );
        for source in [
            RouteSource::Connected,
            RouteSource::Static,
            RouteSource::Bgp,
        ] {
            let n = installer.count(source) as u64;
            o.sample("braid_fib_routes", &[("source", source.as_str())], n);
        }
    }

    if !neighbors.is_empty() {
        type NeighborValue = fn(&NeighborStatus) -> u64;
        let per_neighbor: [(&str, &str, &str, NeighborValue); 4] = [
            (
                "braid_bgp_session_established",
                "gauge",
                "1 if the session is Established.",
                |n| (n.state == "Established") as u64,
            ),
            (
                "braid_bgp_prefixes_received",
                "gauge",
                "Prefixes received from the neighbour since the session came up.",
                |n| n.received,
            ),
            (
                "braid_bgp_prefixes_accepted",
                "gauge",
                "Prefixes accepted from the neighbour by import policy.",
                |n| n.accepted,
            ),
            (
                "braid_bgp_prefixes_advertised",
                "gauge",
                "Prefixes advertised to the neighbour.",
                |n| n.advertised,
            ),
        ];
        for (name, kind, help, get) in per_neighbor {
            o.family(name, kind, help);
            for n in neighbors {
                let addr = n.address.to_string();
                o.sample(name, &[("neighbor", &addr), ("label", &n.label)], get(n));
            }
        }
    }
    o.text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc(r#"a"b\c"#), r#"a\"b\\c"#);
        assert_eq!(esc("x\ny"), "x\\ny");
    }

    #[test]
    fn exposition_is_well_formed() {
        let state = GatewayState::new(
            "gw\"1".into(),
            "braid0".into(),
            1400,
            std::time::Instant::now(),
            Vec::new(),
            Vec::new(),
            Arc::new(braid_dataplane::TunStats::default()),
        );
        state.tun_stats().drops.count(DropReason::NoRoute);
        let text = render(&state, &[]);
        assert!(text.contains("# TYPE braid_tun_drops_total counter\n"));
        assert!(
            text.contains("braid_tun_drops_total{gateway=\"gw\\\"1\",reason=\"no_route\"} 1\n"),
            "{text}"
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<u64>().is_ok(), "{line}");
            assert!(
                series.ends_with('}') && series.starts_with("braid_"),
                "{line}"
            );
        }
    }
}
