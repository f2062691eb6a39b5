//! Traffic helpers shared by the namespace tests: sequence-numbered UDP probe flows, paced TCP flows, and the
//! JSON reports of the `braid lab-tool` processes that run them.

use std::io::Read;
use std::process::{Child, Stdio};
use std::time::Duration;

use braid::lab::socket_string;
use braid::netns::Netns;
use serde_json::Value;

use super::binary;

/// Starts a probe sink for `to:port` in `dst` and, once it listens, a probe source in `src` sending from
/// `from`: `flows` flows of `pps` packets/s each for `secs` seconds (source ports 40000 + `port` + i).
/// Returns the running (sink, source); read them with [`json_of`].
#[allow(clippy::too_many_arguments)]
pub fn probe_start(
    src: &Netns,
    dst: &Netns,
    from: &str,
    to: &str,
    port: u16,
    flows: usize,
    pps: u32,
    secs: f64,
) -> (Child, Child) {
    let bin = binary();
    let bin = bin.to_str().unwrap();
    let listen = socket_string(to, port);
    let (f, s) = (flows.to_string(), (secs + 10.0).to_string());
    let sink = dst
        .command(
            bin,
            &[
                "lab-tool",
                "probe-sink",
                "--listen",
                &listen,
                "--flows",
                &f,
                "--secs",
                &s,
                "--idle-exit-ms",
                "2000",
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let (pps, secs) = (pps.to_string(), secs.to_string());
    let sport = (40000 + port).to_string();
    let source = src
        .command(
            bin,
            &[
                "lab-tool",
                "probe-source",
                "--from",
                from,
                "--to",
                &listen,
                "--flows",
                &f,
                "--pps",
                &pps,
                "--secs",
                &secs,
                "--sport-base",
                &sport,
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (sink, source)
}

/// Waits for a lab-tool process and parses the JSON it printed last; panics (naming `what`) if it failed.
pub fn json_of(mut c: Child, what: &str) -> Value {
    let mut out = String::new();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let status = c.wait().unwrap();
    let mut err = String::new();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "{what} failed: {err}");
    let last = out.trim().lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{what}: {e}: {out}"))
}

/// Per flow of a probe run: (sent, received) from the source's and the sink's reports.
pub fn per_flow(sent: &Value, report: &Value) -> Vec<(u64, u64)> {
    let sent = sent["per_flow_sent"].as_array().unwrap();
    let flows = report["flows"].as_array().unwrap();
    sent.iter()
        .enumerate()
        .map(|(i, s)| {
            (
                s.as_u64().unwrap(),
                flows.get(i).map_or(0, |f| f["received"].as_u64().unwrap()),
            )
        })
        .collect()
}

/// (probes sent, probes missing) of a probe run.
pub fn lost(sent: &Value, report: &Value) -> (u64, u64) {
    per_flow(sent, report)
        .iter()
        .fold((0, 0), |(t, l), (s, g)| (t + s, l + s.saturating_sub(*g)))
}

/// Starts a TCP sink for `flows` connections on `to:port` in `dst` (waits until it listens) and a paced source
/// in `src`: `flows` connections at `mbit_per_flow` each for `secs` seconds. Returns the running (sink,
/// source); the sink's report is its last JSON line.
pub fn tcp_flows_start(
    src: &Netns,
    dst: &Netns,
    to: &str,
    port: u16,
    flows: usize,
    mbit_per_flow: f64,
    secs: f64,
) -> (Child, Child) {
    let bin = binary();
    let bin = bin.to_str().unwrap();
    let listen = socket_string(to, port);
    let f = flows.to_string();
    let timeout = (secs + 30.0).to_string();
    let mut sink = dst
        .command(
            bin,
            &[
                "lab-tool",
                "flow-sink",
                "--listen",
                &listen,
                "--flows",
                &f,
                "--timeout",
                &timeout,
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The first line says it listens; the rest is read by `json_of` (the reader keeps no buffered lines,
    // one line is all there is before the connections close).
    let mut first = String::new();
    let mut out = sink.stdout.take().unwrap();
    let mut b = [0u8; 1];
    while out.read(&mut b).unwrap_or(0) == 1 && b[0] != b'\n' {
        first.push(b[0] as char);
    }
    sink.stdout = Some(out);
    assert!(first.contains("listening"), "flow-sink: {first}");
    let (secs, mbit) = (secs.to_string(), mbit_per_flow.to_string());
    let source = src
        .command(
            bin,
            &[
                "lab-tool",
                "flow-source",
                "--connect",
                &listen,
                "--flows",
                &f,
                "--secs",
                &secs,
                "--mbit-per-flow",
                &mbit,
            ],
        )
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (sink, source)
}

/// The last `n` lines of a text file (empty if unreadable).
pub fn tail_file(path: &std::path::Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Writes `text` to `path` with mode 0600 (secrets).
pub fn write_private(path: &std::path::Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).unwrap();
}
