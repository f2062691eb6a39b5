//! `braid lab-tool`: small traffic tools the lab and the tests run inside namespaces.
//!
//! - `tcp-sink` accepts one connection and verifies that the bytes are exactly the deterministic stream of
//!   `--seed` (reporting the first offset that differs), then prints a JSON line with the throughput;
//! - `tcp-source` connects and sends that stream;
//! - `udp-send` sends one datagram given in hex (used to replay a captured ESP packet);
//! - `flow-sink` / `flow-source`: many parallel TCP flows (the multipath labs spread them over tunnels);
//! - `udp-flood` sends paced UDP at a given rate (overloads a capped uplink).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A fast deterministic byte stream (xorshift64*), so both ends agree without sending a key. Any split of
/// reads gives the same bytes.
pub struct Stream {
    state: u64,
    word: [u8; 8],
    pos: usize,
}

impl Stream {
    pub fn new(seed: u64) -> Stream {
        Stream {
            state: (seed ^ 0x9e37_79b9_7f4a_7c15) | 1,
            word: [0; 8],
            pos: 8,
        }
    }

    fn next_word(&mut self) -> [u8; 8] {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes()
    }

    pub fn fill(&mut self, out: &mut [u8]) {
        let mut i = 0;
        while i < out.len() && self.pos < 8 {
            out[i] = self.word[self.pos];
            self.pos += 1;
            i += 1;
        }
        while out.len() - i >= 8 {
            let w = self.next_word();
            out[i..i + 8].copy_from_slice(&w);
            i += 8;
        }
        if i < out.len() {
            self.word = self.next_word();
            self.pos = 0;
            while i < out.len() {
                out[i] = self.word[self.pos];
                self.pos += 1;
                i += 1;
            }
        }
    }
}

const CHUNK: usize = 64 * 1024;

/// Receives `bytes` bytes on one connection and checks them against the stream of `seed`.
pub fn tcp_sink(listen: SocketAddr, bytes: u64, seed: u64, timeout: Duration) -> Result<()> {
    let l = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    println!("{{\"listening\":\"{listen}\"}}");
    std::io::stdout().flush()?;
    let (mut s, peer) = l.accept()?;
    s.set_read_timeout(Some(timeout))?;
    let start = Instant::now();
    let mut expect = Stream::new(seed);
    let mut want = vec![0u8; CHUNK];
    let mut got = vec![0u8; CHUNK];
    let mut done: u64 = 0;
    while done < bytes {
        let n = s.read(&mut got).context("receiving")?;
        if n == 0 {
            bail!("connection from {peer} closed after {done} of {bytes} bytes");
        }
        let n = n.min((bytes - done) as usize);
        // Compare in stream-sized pieces: generate exactly n expected bytes.
        let mut off = 0;
        while off < n {
            let take = (n - off).min(CHUNK);
            expect.fill(&mut want[..take]);
            if want[..take] != got[off..off + take] {
                let i = want[..take]
                    .iter()
                    .zip(&got[off..off + take])
                    .position(|(a, b)| a != b)
                    .unwrap_or(0);
                bail!("content mismatch at byte {}", done + (off + i) as u64);
            }
            off += take;
        }
        done += n as u64;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"ok\":true,\"bytes\":{done},\"secs\":{secs:.3},\"gbps\":{:.3}}}",
        done as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

/// Connects to `to` and sends `bytes` bytes of the stream of `seed`.
pub fn tcp_source(to: SocketAddr, bytes: u64, seed: u64, timeout: Duration) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut s = loop {
        match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return Err(e).with_context(|| format!("connecting to {to}")),
        }
    };
    s.set_write_timeout(Some(timeout))?;
    let mut stream = Stream::new(seed);
    let mut buf = vec![0u8; CHUNK];
    let mut sent = 0u64;
    while sent < bytes {
        let n = ((bytes - sent) as usize).min(CHUNK);
        stream.fill(&mut buf[..n]);
        s.write_all(&buf[..n]).context("sending")?;
        sent += n as u64;
    }
    s.shutdown(std::net::Shutdown::Write)?;
    // Wait for the sink to close, so the caller knows the bytes arrived.
    let mut sink = [0u8; 16];
    let _ = s.read(&mut sink);
    Ok(())
}

/// Sends one UDP datagram (`hex`) from `from` to `to`.
pub fn udp_send(from: SocketAddr, to: SocketAddr, hex: &str) -> Result<()> {
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("x"), 16))
        .collect::<std::result::Result<Vec<u8>, _>>()
        .context("--hex is not a hex string")?;
    let s = UdpSocket::bind(from).with_context(|| format!("binding {from}"))?;
    s.send_to(&bytes, to)?;
    Ok(())
}

/// Accepts `flows` TCP connections on `listen` and discards what they send (UDP datagrams to the same address
/// are absorbed too), until every accepted connection has closed or `timeout` passed. Prints a JSON line
/// `{"listening":..}` once bound and `{"bytes":..,"udp_bytes":..,"connections":..}` at the end.
pub fn flow_sink(listen: SocketAddr, flows: usize, timeout: Duration) -> Result<()> {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    use std::sync::Arc;
    let deadline = Instant::now() + timeout;
    let l = TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
    let udp = UdpSocket::bind(listen).with_context(|| format!("binding UDP {listen}"))?;
    l.set_nonblocking(true)?;
    println!("{{\"listening\":\"{listen}\"}}");
    std::io::stdout().flush()?;
    let bytes = Arc::new(AtomicU64::new(0));
    let udp_bytes = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let udp_thread = {
        let (udp_bytes, stop) = (udp_bytes.clone(), stop.clone());
        udp.set_read_timeout(Some(Duration::from_millis(100)))?;
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !stop.load(Relaxed) {
                if let Ok(n) = udp.recv(&mut buf) {
                    udp_bytes.fetch_add(n as u64, Relaxed);
                }
            }
        })
    };
    let mut readers = Vec::new();
    while readers.len() < flows && Instant::now() < deadline {
        match l.accept() {
            Ok((mut s, _)) => {
                s.set_nonblocking(false)?;
                let bytes = bytes.clone();
                readers.push(std::thread::spawn(move || {
                    let mut buf = vec![0u8; CHUNK];
                    loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
                            break;
                        }
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                bytes.fetch_add(n as u64, Relaxed);
                            }
                        }
                    }
                }));
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(e) => return Err(e).context("accepting"),
        }
    }
    if flows == 0 {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
    }
    let connections = readers.len();
    for r in readers {
        let _ = r.join();
    }
    stop.store(true, Relaxed);
    let _ = udp_thread.join();
    println!(
        "{{\"bytes\":{},\"udp_bytes\":{},\"connections\":{connections}}}",
        bytes.load(Relaxed),
        udp_bytes.load(Relaxed)
    );
    Ok(())
}

/// Opens `flows` TCP connections to `to` (retrying for up to 10 s, so a full accept queue only delays), then
/// sends on all of them at once for `secs` seconds and closes them. Unpaced (`mbit_per_flow` 0), one thread
/// per flow writes as fast as TCP goes. Paced, one thread serves every flow from nonblocking sockets, each
/// at `mbit_per_flow` with its phase spread over the write interval: below the path's capacity every flow
/// then carries the same bytes, so byte shares measure how flows were spread rather than which process got
/// more CPU, and a few hundred flows cost one thread instead of a few hundred wakeups per tick.
/// Prints `{"flows","connected","bytes","secs","gbps","per_flow":[..],"errors":[..]}`.
pub fn flow_source(to: SocketAddr, flows: usize, secs: f64, mbit_per_flow: f64) -> Result<()> {
    let connect_by = Instant::now() + Duration::from_secs(10);
    let connecting: Vec<_> = (0..flows)
        .map(|_| {
            std::thread::spawn(move || loop {
                match TcpStream::connect_timeout(&to, Duration::from_secs(2)) {
                    Ok(s) => break Ok(s),
                    Err(e) if Instant::now() >= connect_by => {
                        break Err(format!("connecting to {to}: {e}"))
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(100)),
                }
            })
        })
        .collect();
    let mut streams = Vec::new();
    let mut errors = Vec::new();
    for c in connecting {
        match c.join() {
            Ok(Ok(s)) => streams.push(s),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("connect thread panicked".into()),
        }
    }
    let send_for = Duration::from_secs_f64(secs);
    let start = Instant::now();
    let mut per_flow = if mbit_per_flow > 0.0 {
        send_paced(
            &mut streams,
            send_for,
            mbit_per_flow * 1e6 / 8.0,
            &mut errors,
        )
    } else {
        send_unpaced(streams, send_for, &mut errors)
    };
    per_flow.sort_unstable();
    let secs = start.elapsed().as_secs_f64();
    let bytes: u64 = per_flow.iter().sum();
    println!(
        "{}",
        serde_json::json!({
            "flows": flows,
            "connected": flows - errors.len(),
            "bytes": bytes,
            "secs": secs,
            "gbps": bytes as f64 * 8.0 / secs / 1e9,
            "per_flow": per_flow,
            "errors": errors.iter().take(5).collect::<Vec<_>>(),
        })
    );
    if !errors.is_empty() {
        bail!("{} of {flows} flows failed: {}", errors.len(), errors[0]);
    }
    Ok(())
}

/// One thread per flow, blocking writes as fast as TCP goes. Returns each flow's bytes.
fn send_unpaced(streams: Vec<TcpStream>, send_for: Duration, errors: &mut Vec<String>) -> Vec<u64> {
    let end = Instant::now() + send_for;
    let threads: Vec<_> = streams
        .into_iter()
        .map(|mut s| {
            std::thread::spawn(move || -> std::result::Result<u64, String> {
                let buf = vec![0x5au8; CHUNK];
                let mut sent = 0u64;
                while Instant::now() < end {
                    let left = end.saturating_duration_since(Instant::now());
                    let _ = s.set_write_timeout(Some(left.max(Duration::from_millis(10))));
                    match s.write(&buf) {
                        Ok(n) => sent += n as u64,
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(e) => return Err(format!("sending: {e}")),
                    }
                }
                let _ = s.shutdown(std::net::Shutdown::Both);
                Ok(sent)
            })
        })
        .collect();
    let mut per_flow = Vec::new();
    for t in threads {
        match t.join() {
            Ok(Ok(n)) => per_flow.push(n),
            Ok(Err(e)) => errors.push(e),
            Err(_) => errors.push("flow thread panicked".into()),
        }
    }
    per_flow
}

/// One thread, nonblocking writes, every flow at `bytes_per_sec` with phases spread over one write interval.
fn send_paced(
    streams: &mut [TcpStream],
    send_for: Duration,
    bytes_per_sec: f64,
    errors: &mut Vec<String>,
) -> Vec<u64> {
    const WRITE: usize = 4096;
    let buf = [0x5au8; WRITE];
    let n = streams.len().max(1);
    let interval = WRITE as f64 / bytes_per_sec;
    let mut sent = vec![0u64; streams.len()];
    let mut failed = vec![false; streams.len()];
    for s in streams.iter() {
        let _ = s.set_nonblocking(true);
    }
    let begin = Instant::now();
    let end = begin + send_for;
    while Instant::now() < end {
        let t = begin.elapsed().as_secs_f64();
        for (i, s) in streams.iter_mut().enumerate() {
            if failed[i] {
                continue;
            }
            let due = (t - interval * i as f64 / n as f64) * bytes_per_sec;
            while (sent[i] as f64) < due {
                let want = ((due - sent[i] as f64).ceil() as usize).min(WRITE);
                match s.write(&buf[..want]) {
                    Ok(k) => sent[i] += k as u64,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        errors.push(format!("sending: {e}"));
                        failed[i] = true;
                        break;
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    for s in streams.iter() {
        let _ = s.shutdown(std::net::Shutdown::Write);
    }
    sent.into_iter()
        .zip(failed)
        .filter(|(_, f)| !f)
        .map(|(b, _)| b)
        .collect()
}

/// Sends UDP datagrams of `size` bytes from `from` (port 0: one socket per flow) to each of `to`, paced at
/// `mbit` Mbit/s per destination (payload bits), for `secs` seconds, spread over `flows` source ports per
/// destination. Prints `{"sent_packets","sent_bytes","send_errors","secs"}`.
pub fn udp_flood(
    from: std::net::IpAddr,
    to: &[SocketAddr],
    mbit: f64,
    secs: f64,
    size: usize,
    flows: usize,
) -> Result<()> {
    let mut sockets = Vec::new();
    for &dst in to {
        for _ in 0..flows.max(1) {
            let s = UdpSocket::bind(SocketAddr::new(from, 0))
                .with_context(|| format!("binding {from}"))?;
            s.connect(dst)?;
            sockets.push(s);
        }
    }
    let payload = vec![0xa5u8; size];
    let rate_bytes = mbit * 1e6 / 8.0 * to.len() as f64;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let (mut sent_packets, mut sent_bytes, mut send_errors) = (0u64, 0u64, 0u64);
    // Paced bytes, failed sends included, so a refusing socket cannot make the flood catch up in a burst.
    let mut paced = 0u64;
    let mut i = 0usize;
    while Instant::now() < end {
        let due = (start.elapsed().as_secs_f64() * rate_bytes) as u64;
        while paced < due {
            match sockets[i % sockets.len()].send(&payload) {
                Ok(n) => {
                    sent_packets += 1;
                    sent_bytes += n as u64;
                }
                Err(_) => send_errors += 1,
            }
            paced += size as u64;
            i += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    println!(
        "{{\"sent_packets\":{sent_packets},\"sent_bytes\":{sent_bytes},\"send_errors\":{send_errors},\"secs\":{:.3}}}",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_is_split_invariant() {
        let mut a = Stream::new(7);
        let mut whole = vec![0u8; 1000];
        a.fill(&mut whole);
        let mut b = Stream::new(7);
        let mut parts = vec![0u8; 1000];
        let mut off = 0;
        for n in [1, 3, 8, 13, 100, 875] {
            b.fill(&mut parts[off..off + n]);
            off += n;
        }
        assert_eq!(whole, parts);
        assert_ne!(whole[..8], whole[8..16]);
    }
}
