//! `braid lab-tool`: small traffic tools the lab and the tests run inside namespaces.
//!
//! - `tcp-sink` accepts one connection and verifies that the bytes are exactly the deterministic stream of
//!   `--seed` (reporting the first offset that differs), then prints a JSON line with the throughput;
//! - `tcp-source` connects and sends that stream;
//! - `udp-send` sends one datagram given in hex (used to replay a captured ESP packet).

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
