//! Network namespaces for the lab and the integration tests, via iproute2.
//!
//! A [`Netns`] deletes its namespace when dropped (also during a panic unwind), which takes the veth ends and
//! TUN devices inside it along. Names carry a `braid-` prefix so `braid lab --cleanup` can find leftovers of a
//! run that was killed with SIGKILL. Only TEST-NET and link-local addresses are ever configured by callers.

use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

/// Prefix of every namespace braid creates.
pub const PREFIX: &str = "braid-";

/// Runs a command, failing with its stderr if it exits non-zero.
pub fn sh(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {program}"))?;
    if !out.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// A network namespace that is deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

impl Netns {
    /// Creates `braid-<pid>-<n>-<tag>` with loopback up.
    pub fn new(tag: &str) -> Result<Netns> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        sh("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n NS ARGS...`
    pub fn ip(&self, args: &[&str]) -> Result<Output> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        sh("ip", &full)
    }

    /// A command that runs `program args...` inside the namespace.
    pub fn command(&self, program: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]).args(args);
        c
    }

    /// Runs `program args...` inside the namespace and waits for it.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output> {
        let out = self
            .command(program, args)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {program} in {}", self.name))?;
        Ok(out)
    }

    /// Sets a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let out = self.exec("sysctl", &["-qw", &format!("{key}={value}")])?;
        if !out.status.success() {
            bail!(
                "sysctl {key}={value}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill anything still running inside, then delete.
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|o| {
                for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// Joins two namespaces with a veth pair named `<a_if>`/`<b_if>` and brings both ends up.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) -> Result<()> {
    let tmp_a = format!(
        "bv{}a{}",
        std::process::id() % 100000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let tmp_b = format!(
        "bv{}b{}",
        std::process::id() % 100000,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    sh(
        "ip",
        &[
            "link", "add", &tmp_a, "type", "veth", "peer", "name", &tmp_b,
        ],
    )?;
    sh(
        "ip",
        &["link", "set", &tmp_a, "netns", a.name(), "name", a_if],
    )?;
    sh(
        "ip",
        &["link", "set", &tmp_b, "netns", b.name(), "name", b_if],
    )?;
    a.ip(&["link", "set", a_if, "up"])?;
    b.ip(&["link", "set", b_if, "up"])?;
    Ok(())
}

/// Deletes every namespace whose name starts with [`PREFIX`] (leftovers of killed runs). Returns their names.
pub fn cleanup_all() -> Result<Vec<String>> {
    let out = sh("ip", &["netns", "list"])?;
    let mut removed = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let name = line.split_whitespace().next().unwrap_or("");
        if name.starts_with(PREFIX) {
            drop(Netns {
                name: name.to_string(),
            });
            removed.push(name.to_string());
        }
    }
    Ok(removed)
}

/// Sends SIGTERM to `child` (best effort; it may have exited).
pub fn sigterm(child: &std::process::Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
}

/// Sends SIGTERM to `child` and waits up to `timeout` for it to exit; kills it after that.
/// Returns its exit status if it exited by itself.
pub fn terminate(
    child: &mut std::process::Child,
    timeout: std::time::Duration,
) -> Option<std::process::ExitStatus> {
    sigterm(child);
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY-free: read the effective uid from /proc to keep this crate free of unsafe.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

/// Whether `program` is on the PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}
