#!/usr/bin/env python3
"""End-to-end throughput: braid against plain veth, boringtun and strongSwan (run by hand, as root; not in CI).

For each setup, two fresh network namespaces (`braid-e2e-<pid>-a`, `-b`) joined by a veth pair (outer
198.51.100.1 <-> 198.51.100.2), one VPN endpoint in each, site addresses 192.0.2.1 (a) and 203.0.113.1 (b) on
loopback routed into the tunnel with the same inner MTU for every setup (1400 by default; plain veth: a route
with that MTU). iperf3's server runs in b, its client in a:

  - TCP, one stream (`--secs`, 10 s), and TCP, four streams;
  - UDP with MTU-sized datagrams (payload = MTU - 28, so no fragments; `--udp-len` to change): the rate is
    stepped up (doubling) and then bisected for the highest rate with <= 1% loss (`--udp-secs` per step);
  - CPU of each VPN endpoint process during each run: utime + stime from /proc/PID/stat (all threads) over the
    run's wall time, in % of one core.

Setups (`--only a,b,...`; default all):
  plain       veth, no VPN (the ceiling)
  braid       braid, AES-256-GCM-16, manual keys (`static = {...}`)
  braid-ike   braid, IKEv2 with a PSK (aes256gcm16-prfsha256-ecp256, ESP aes256gcm16 without ESN)
  boringtun   boringtun-cli (crates.io) with `--threads 1`, configured with `wg`
  strongswan  strongSwan charon-systemd + kernel-libipsec, AES-256-GCM-16, one charon per namespace with its
              own STRONGSWAN_CONF and a private /run (as tests/ike_interop.rs)
  braid-no-aead   only with `--ceiling BIN`: braid as `braid`, but BIN, a build with benches/null-aead.patch (no
              encryption at all): what the rest of the path allows end to end on this machine, the ceiling of
              any AEAD speed-up. benches/ceiling.sh builds it and runs it beside the others.
A setup whose tools are missing, or that fails, is reported with the reason and the rest still run.

Prints a table, braid's ratio to each other setup, and writes the results as JSON (`--json FILE`, default
target/e2e-<time>.json). Namespaces, devices, processes and files are removed at the end, on failure and on
Ctrl-C; every wait is bounded.

    sudo benches/e2e.py [--only braid,boringtun] [--secs 10] [--udp-secs 3] [--mtu 1400] [--workers N] [--tun-queue-len N] [--no-build]
    scripts/e2e-peers.sh      # installs iperf3, wireguard-tools, strongSwan (apt) and boringtun-cli (cargo)
"""

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time

TAG = f"braid-e2e-{os.getpid()}"
NS_A, NS_B = f"{TAG}-a", f"{TAG}-b"
UL_A, UL_B = "198.51.100.1", "198.51.100.2"
SITE_A, SITE_B = "192.0.2.1", "203.0.113.1"
NET_A, NET_B = "192.0.2.0/24", "203.0.113.0/24"
IN_A, IN_B = "169.254.0.1", "169.254.0.2"
SETUPS = ["plain", "braid", "braid-ike", "boringtun", "strongswan"]
# Run only when asked for with --ceiling (a build that does not encrypt).
CEILING = "braid-no-aead"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(REPO, "target"))


class Skip(Exception):
    """A setup that cannot run here (a missing tool); the reason is printed and the rest go on."""


def sh(*args, check=True, timeout=30, **kw):
    r = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: exit {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
    return r


def nsexec(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


def load1():
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


def cpu_seconds(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return None


def machine():
    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"cpu": cpu, "cpus": os.cpu_count(), "kernel": platform.release()}


def wait_until(what, timeout, pred, interval=0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(interval)
    raise RuntimeError(f"timed out after {timeout} s waiting for {what}")


def write_private(path, text):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


class Lab:
    """One setup's namespaces, processes and files; `close` removes them all."""

    def __init__(self):
        self.procs = []
        self.dir = tempfile.mkdtemp(prefix=f"{TAG}-")
        os.chmod(self.dir, 0o700)
        self.cleanups = []
        try:
            self._build()
        except BaseException:
            self.close()
            raise

    def _build(self):
        for ns in (NS_A, NS_B):
            sh("ip", "netns", "add", ns)
            nsexec(ns, "ip", "link", "set", "lo", "up")
        va, vb = f"e2e{os.getpid() % 100000}a", f"e2e{os.getpid() % 100000}b"
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", NS_A)
        sh("ip", "link", "set", vb, "netns", NS_B)
        for ns, dev, ul, site in ((NS_A, va, UL_A, SITE_A), (NS_B, vb, UL_B, SITE_B)):
            nsexec(ns, "ip", "link", "set", dev, "name", "ul0")
            nsexec(ns, "ip", "addr", "add", f"{ul}/24", "dev", "ul0")
            nsexec(ns, "ip", "link", "set", "ul0", "up")
            nsexec(ns, "ip", "addr", "add", f"{site}/32", "dev", "lo")

    def spawn(self, ns, args, log, env=None):
        out = open(os.path.join(self.dir, log), "w")
        p = subprocess.Popen(
            ["ip", "netns", "exec", ns, *args],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.procs.append(p)
        return p

    def tail(self, log, n=15):
        try:
            with open(os.path.join(self.dir, log)) as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def close(self):
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
        for p in reversed(self.procs):
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        for f in self.cleanups:
            try:
                f()
            except Exception:
                pass
        for ns in (NS_A, NS_B):
            sh("ip", "netns", "del", ns, check=False)
        if os.environ.get("KEEP_E2E_DIR"):
            print(f"  (kept {self.dir})")
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


def ping_through(lab, timeout=20):
    wait_until(
        f"ping {SITE_A} -> {SITE_B} through the tunnel",
        timeout,
        lambda: nsexec(NS_A, "ping", "-c1", "-W1", "-I", SITE_A, SITE_B, check=False).returncode == 0,
        interval=0.2,
    )


# ---------------------------------------------------------------------------------------------------------
# Setups: each builds its endpoints in `lab` and returns the endpoint processes (for CPU), or raises Skip.


def setup_plain(lab, opts):
    nsexec(NS_A, "ip", "route", "add", NET_B, "via", UL_B, "src", SITE_A, "mtu", str(opts.mtu))
    nsexec(NS_B, "ip", "route", "add", NET_A, "via", UL_A, "src", SITE_B, "mtu", str(opts.mtu))
    ping_through(lab)
    return {}


def braid_config(side, opts, ike):
    me, peer = ("a", "b") if side == "a" else ("b", "a")
    local, remote = (UL_A, UL_B) if side == "a" else (UL_B, UL_A)
    inside = IN_A if side == "a" else IN_B
    routes = NET_B if side == "a" else NET_A
    spi_out, spi_in = (0x1001, 0x2001) if side == "a" else (0x2001, 0x1001)
    cfg = f"""# written by benches/e2e.py
[gateway]
name = "e2e-{me}"
tun = "braid0"
control_socket = "{me}.sock"
mtu = {opts.mtu}
{f"workers = {opts.workers}" if opts.workers else "# workers: braid's default (the machine's cores)"}
{f"tun_queue_len = {opts.tun_queue_len}" if opts.tun_queue_len else "# tun_queue_len: braid's default"}

[[uplink]]
name = "isp1"
local = "{local}"

[[tunnel]]
name = "to-{peer}"
uplink = "isp1"
remote = "{remote}:4500"
inside = "{inside}/30"
routes = ["{routes}"]
"""
    if ike:
        cfg += (
            f'ike = {{ psk_file = "e2e.psk", initiator = {"true" if side == "a" else "false"}, '
            'proposal = "aes256gcm16-prfsha256-ecp256", esp_proposal = "aes256gcm16-noesn" }\n'
        )
    else:
        cfg += (
            f'static = {{ cipher = "aes256gcm16", spi_out = "{spi_out:#x}", spi_in = "{spi_in:#x}", '
            f'key_out_file = "{me}.out.key", key_in_file = "{me}.in.key" }}\n'
        )
    return cfg


def setup_braid(lab, opts, ike=False, binary=None):
    binary = binary or opts.braid
    if not os.access(binary, os.X_OK):
        raise Skip(f"no braid binary at {binary} (build with `cargo build --release` or pass --braid)")
    k_ab, k_ba = os.urandom(36).hex(), os.urandom(36).hex()
    write_private(os.path.join(lab.dir, "a.out.key"), k_ab)
    write_private(os.path.join(lab.dir, "b.in.key"), k_ab)
    write_private(os.path.join(lab.dir, "b.out.key"), k_ba)
    write_private(os.path.join(lab.dir, "a.in.key"), k_ba)
    write_private(os.path.join(lab.dir, "e2e.psk"), os.urandom(32).hex())
    procs = {}
    for side, ns in (("b", NS_B), ("a", NS_A)):
        path = os.path.join(lab.dir, f"{side}.toml")
        with open(path, "w") as f:
            f.write(braid_config(side, opts, ike))
        procs[side] = lab.spawn(ns, [binary, "run", "-c", path], f"braid-{side}.log")
    for side, ns, net, src in (("a", NS_A, NET_B, SITE_A), ("b", NS_B, NET_A, SITE_B)):
        try:
            wait_until(
                f"braid {side}'s TUN device",
                10,
                lambda: procs[side].poll() is None
                and nsexec(ns, "ip", "link", "show", "braid0", check=False).returncode == 0,
            )
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{lab.tail(f'braid-{side}.log')}")
        wait_until(
            f"route via braid0 in {side}",
            5,
            lambda: nsexec(ns, "ip", "route", "replace", net, "dev", "braid0", "src", src, check=False).returncode == 0,
        )
    try:
        ping_through(lab, timeout=30 if ike else 15)
    except RuntimeError as e:
        raise RuntimeError(f"{e}\n--- a ---\n{lab.tail('braid-a.log')}--- b ---\n{lab.tail('braid-b.log')}")
    return {"a": procs["a"].pid, "b": procs["b"].pid}


def find_boringtun(opts):
    for c in (opts.boringtun, shutil.which("boringtun-cli"), os.path.join(TARGET, "peers/bin/boringtun-cli")):
        if c and os.access(c, os.X_OK):
            return c
    return None


def setup_boringtun(lab, opts):
    bt = find_boringtun(opts)
    if not bt:
        raise Skip("boringtun-cli not found (cargo install boringtun-cli --root target/peers; or --boringtun PATH)")
    if not shutil.which("wg"):
        raise Skip("`wg` not found (apt-get install wireguard-tools)")
    keys = {}
    for side in ("a", "b"):
        priv = sh("wg", "genkey").stdout.strip()
        pub = sh("wg", "pubkey", input=priv).stdout.strip()
        write_private(os.path.join(lab.dir, f"wg-{side}.key"), priv + "\n")
        keys[side] = pub
    # The control socket directory (/var/run/wireguard) is shared by the namespaces: distinct names.
    dev = {"a": f"e2ewg{os.getpid() % 10000}a", "b": f"e2ewg{os.getpid() % 10000}b"}
    procs = {}
    for side, ns in (("a", NS_A), ("b", NS_B)):
        procs[side] = lab.spawn(
            ns,
            [bt, dev[side], "--foreground", "--disable-drop-privileges", "--threads", "1"],
            f"boringtun-{side}.log",
            env={"WG_SUDO": "1"},
        )
        lab.cleanups.append(lambda d=dev[side]: os.unlink(f"/var/run/wireguard/{d}.sock"))
    for side, ns, peer, ul_peer, inside, net, src in (
        ("a", NS_A, "b", UL_B, IN_A, NET_B, SITE_A),
        ("b", NS_B, "a", UL_A, IN_B, NET_A, SITE_B),
    ):
        try:
            wait_until(
                f"boringtun {side}'s socket",
                10,
                lambda: procs[side].poll() is None and os.path.exists(f"/var/run/wireguard/{dev[side]}.sock"),
            )
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{lab.tail(f'boringtun-{side}.log')}")
        allowed = f"{net},{IN_B if side == 'a' else IN_A}/32"
        nsexec(
            ns, "wg", "set", dev[side], "private-key", os.path.join(lab.dir, f"wg-{side}.key"),
            "listen-port", "51820", "peer", keys[peer], "allowed-ips", allowed, "endpoint", f"{ul_peer}:51820",
        )
        nsexec(ns, "ip", "addr", "add", f"{inside}/30", "dev", dev[side])
        nsexec(ns, "ip", "link", "set", dev[side], "mtu", str(opts.mtu), "up")
        if opts.tun_queue_len:
            nsexec(ns, "ip", "link", "set", dev[side], "txqueuelen", str(opts.tun_queue_len))
        nsexec(ns, "ip", "route", "add", net, "dev", dev[side], "src", src)
    ping_through(lab)
    return {"a": procs["a"].pid, "b": procs["b"].pid}


STRONGSWAN_CONF = """charon-systemd {{
  load = random nonce openssl aes sha1 sha2 hmac gcm kdf pem pkcs1 x509 kernel-libipsec kernel-netlink socket-default vici
  port = 500
  port_nat_t = 4500
  install_routes = no
  filelog {{
    charon {{
      path = {d}/charon.log
      default = 1
    }}
  }}
  journal {{
    default = -1
  }}
  plugins {{
    vici {{
      socket = unix://{d}/charon.vici
    }}
  }}
}}
swanctl {{
  socket = unix://{d}/charon.vici
}}
"""

SWANCTL_CONF = """connections {{
  e2e {{
    version = 2
    local_addrs = {local}
    remote_addrs = {remote}
    local_port = 4500
    remote_port = 4500
    encap = yes
    proposals = aes256gcm16-prfsha256-ecp256
    local {{
      auth = psk
      id = {local}
    }}
    remote {{
      auth = psk
      id = {remote}
    }}
    children {{
      net {{
        local_ts = 0.0.0.0/0
        remote_ts = 0.0.0.0/0
        esp_proposals = aes256gcm16
      }}
    }}
  }}
}}
secrets {{
  ike-e2e {{
    id-1 = {local}
    id-2 = {remote}
    secret = "{psk}"
  }}
}}
"""


def setup_strongswan(lab, opts):
    for tool in ("charon-systemd", "swanctl", "unshare"):
        if not shutil.which(tool):
            raise Skip(f"`{tool}` not found (apt-get install charon-systemd strongswan-swanctl "
                       "libcharon-extra-plugins libstrongswan-extra-plugins)")
    psk = os.urandom(24).hex()
    procs = {}
    dirs = {}
    for side, ns, local, remote in (("a", NS_A, UL_A, UL_B), ("b", NS_B, UL_B, UL_A)):
        d = os.path.join(lab.dir, f"swan-{side}")
        os.makedirs(os.path.join(d, "run"))
        dirs[side] = d
        with open(os.path.join(d, "strongswan.conf"), "w") as f:
            f.write(STRONGSWAN_CONF.format(d=d))
        write_private(os.path.join(d, "swanctl.conf"), SWANCTL_CONF.format(local=local, remote=remote, psk=psk))
        # A private /run: charon's pid file path is fixed. unshare and sh exec, so the pid is charon's.
        procs[side] = lab.spawn(
            ns,
            ["unshare", "-m", "sh", "-c", f"mount --bind {d}/run /run && exec charon-systemd"],
            f"charon-{side}.out",
            env={"STRONGSWAN_CONF": os.path.join(d, "strongswan.conf")},
        )

    def swanctl(side, ns, *args, **kw):
        return nsexec(ns, "env", f"STRONGSWAN_CONF={dirs[side]}/strongswan.conf", "swanctl", *args, **kw)

    for side, ns, net, src in (("a", NS_A, NET_B, SITE_A), ("b", NS_B, NET_A, SITE_B)):
        try:
            wait_until(f"charon {side}'s VICI socket", 10, lambda: os.path.exists(f"{dirs[side]}/charon.vici"))
        except RuntimeError as e:
            raise RuntimeError(f"{e}\n{lab.tail(f'charon-{side}.out')}")
        swanctl(side, ns, "--load-all", "--file", f"{dirs[side]}/swanctl.conf")
        wait_until(f"ipsec0 in {side}", 5,
                   lambda: nsexec(ns, "ip", "link", "show", "ipsec0", check=False).returncode == 0)
        nsexec(ns, "ip", "link", "set", "ipsec0", "mtu", str(opts.mtu), "up")
        if opts.tun_queue_len:
            nsexec(ns, "ip", "link", "set", "ipsec0", "txqueuelen", str(opts.tun_queue_len))
        nsexec(ns, "ip", "route", "add", net, "dev", "ipsec0", "src", src)
    r = swanctl("a", NS_A, "--initiate", "--child", "net", "--timeout", "10", check=False, timeout=20)
    if r.returncode != 0:
        raise RuntimeError(f"swanctl --initiate: {r.stdout[-800:]}{r.stderr[-400:]}\n{lab.tail('swan-a/charon.log')}")
    ping_through(lab)
    return {"a": procs["a"].pid, "b": procs["b"].pid}


SETUP_FNS = {
    "plain": setup_plain,
    "braid": setup_braid,
    "braid-ike": lambda lab, opts: setup_braid(lab, opts, ike=True),
    "boringtun": setup_boringtun,
    "strongswan": setup_strongswan,
    CEILING: lambda lab, opts: setup_braid(lab, opts, binary=opts.ceiling),
}

# ---------------------------------------------------------------------------------------------------------
# Measurements.


def iperf(lab, args, secs):
    """One iperf3 client run from a to b; returns its JSON. Retries while the server is still busy."""
    for _ in range(10):
        r = nsexec(NS_A, "iperf3", "-c", SITE_B, "-B", SITE_A, "-J", "-t", str(secs), *args,
                   check=False, timeout=secs + 30)
        try:
            out = json.loads(r.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"iperf3 {' '.join(args)}: no JSON: {r.stderr[-300:]}")
        err = out.get("error")
        if err and "busy" in err:
            time.sleep(0.5)
            continue
        if err:
            raise RuntimeError(f"iperf3 {' '.join(args)}: {err}")
        return out
    raise RuntimeError("iperf3 server stayed busy")


def with_cpu(pids, secs_fn):
    """Runs `secs_fn()` and returns (its result, {side: % of one core}, load before)."""
    load = load1()
    before = {s: cpu_seconds(p) for s, p in pids.items()}
    t0 = time.monotonic()
    result = secs_fn()
    wall = time.monotonic() - t0
    cpu = {}
    for s, p in pids.items():
        after = cpu_seconds(p)
        cpu[s] = None if after is None or before[s] is None else round(100 * (after - before[s]) / wall, 1)
    return result, cpu, load


def tcp(lab, pids, secs, streams):
    out, cpu, load = with_cpu(pids, lambda: iperf(lab, ["-P", str(streams)], secs))
    bps = out["end"]["sum_received"]["bits_per_second"]
    retr = out["end"].get("sum_sent", {}).get("retransmits")
    return {"gbit_s": round(bps / 1e9, 3), "retransmits": retr, "cpu_pct": cpu, "load1": load}


def udp_step(lab, pids, rate_bps, secs, length, window):
    out, cpu, load = with_cpu(
        pids, lambda: iperf(lab, ["-u", "-l", str(length), "-b", str(int(rate_bps)), "-w", window], secs))
    end = out["end"]
    s = end.get("sum_received") or end["sum"]
    base = end["sum"]
    packets = base.get("packets") or 0
    lost = base.get("lost_packets") or 0
    loss = base.get("lost_percent")
    if loss is None:
        loss = 100.0 * lost / packets if packets else 100.0
    secs_run = base.get("seconds") or secs
    got = max(packets - lost, 0)
    return {
        "offered_gbit_s": round(rate_bps / 1e9, 3),
        "gbit_s": round(got * length * 8 / secs_run / 1e9, 3),
        "kpps": round(got / secs_run / 1e3, 1),
        "loss_pct": round(loss, 2),
        "cpu_pct": cpu,
        "load1": load,
        "sender_gbit_s": round(s.get("bits_per_second", 0) / 1e9, 3),
    }


def udp_sweep(lab, pids, opts):
    """The highest received rate with <= 1% loss: the offered rate doubles from --udp-start until the loss
    passes 1% (then --udp-bisect steps of bisection) or until iperf3's sender cannot offer 90% of it (the
    sender is the limit: no point in offering more)."""
    steps = []
    rate = opts.udp_start * 1e6
    good, bad, sender_bound = None, None, False
    while rate <= opts.udp_max * 1e6:
        s = udp_step(lab, pids, rate, opts.udp_secs, opts.udp_len, opts.udp_window)
        steps.append(s)
        if s["loss_pct"] > 1.0:
            bad = rate
            break
        good = rate
        if s["sender_gbit_s"] < 0.9 * rate / 1e9:
            sender_bound = True
            break
        rate *= 2
    if good is not None and bad is not None:
        lo, hi = good, bad
        for _ in range(opts.udp_bisect):
            mid = (lo + hi) / 2
            s = udp_step(lab, pids, mid, opts.udp_secs, opts.udp_len, opts.udp_window)
            steps.append(s)
            if s["loss_pct"] <= 1.0:
                lo = mid
            else:
                hi = mid
    clean = [s for s in steps if s["loss_pct"] <= 1.0]
    best = max(clean, key=lambda s: s["gbit_s"]) if clean else None
    return {"best": best, "sender_bound": sender_bound, "steps": steps}


def run_setup(name, opts):
    lab = Lab()
    try:
        pids = SETUP_FNS[name](lab, opts)
        server = lab.spawn(NS_B, ["iperf3", "-s", "-B", SITE_B], "iperf3-server.log")
        wait_until("iperf3 server", 5,
                   lambda: SITE_B + ":5201" in nsexec(NS_B, "ss", "-ltnH", check=False).stdout)
        assert server.poll() is None
        res = {"setup": name, "status": "ok", "endpoint_pids": pids}
        print(f"  {name}: TCP 1 stream ...", flush=True)
        res["tcp1"] = tcp(lab, pids, opts.secs, 1)
        print(f"  {name}: TCP 4 streams ...", flush=True)
        res["tcp4"] = tcp(lab, pids, opts.secs, 4)
        if opts.udp_secs > 0:
            print(f"  {name}: UDP sweep ...", flush=True)
            res["udp"] = udp_sweep(lab, pids, opts)
        return res
    finally:
        lab.close()


# ---------------------------------------------------------------------------------------------------------
# Report.


def fmt_cpu(c):
    if not c:
        return "n/a"
    return "/".join("?" if c.get(s) is None else f"{c[s]:.0f}" for s in ("a", "b"))


def table(results):
    head = (f"{'setup':<13} {'TCP 1':>7} {'CPU a/b %':>10} {'TCP 4':>7} {'CPU a/b %':>10} "
            f"{'UDP':>7} {'kpps':>7} {'loss%':>6} {'CPU a/b %':>10} {'load':>5}")
    lines = [head, "-" * len(head)]
    for r in results:
        if r["status"] != "ok":
            lines.append(f"{r['setup']:<13} {r['status']}: {r['reason'].splitlines()[0][:90]}")
            continue
        t1, t4 = r["tcp1"], r["tcp4"]
        best = (r.get("udp") or {}).get("best")
        udp = (f"{best['gbit_s']:>7.3f} {best['kpps']:>7.1f} {best['loss_pct']:>6.2f} {fmt_cpu(best['cpu_pct']):>10}"
               if best else f"{'-':>7} {'-':>7} {'-':>6} {'-':>10}")
        lines.append(f"{r['setup']:<13} {t1['gbit_s']:>7.3f} {fmt_cpu(t1['cpu_pct']):>10} {t4['gbit_s']:>7.3f} "
                     f"{fmt_cpu(t4['cpu_pct']):>10} {udp} {t1['load1']:>5.2f}")
    lines.append("Gbit/s of inner payload (iperf3's receiver); UDP = highest rate with <= 1% loss; CPU = endpoint "
                 "process a / b, % of one core; load = 1-min load average before the TCP 1 run")
    return "\n".join(lines)


def ratios(results):
    ok = {r["setup"]: r for r in results if r["status"] == "ok"}

    def figs(r):
        best = (r.get("udp") or {}).get("best")
        return {"tcp1": r["tcp1"]["gbit_s"], "tcp4": r["tcp4"]["gbit_s"], "udp": best["gbit_s"] if best else None}

    out = {}
    for mine in ("braid", "braid-ike", CEILING):
        if mine not in ok:
            continue
        m = figs(ok[mine])
        for other, r in ok.items():
            if other.startswith("braid"):
                continue
            o = figs(r)
            out[f"{mine}/{other}"] = {k: (round(m[k] / o[k], 2) if m[k] and o[k] else None) for k in m}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default=",".join(SETUPS), help=f"comma-separated, of {','.join(SETUPS)}")
    ap.add_argument("--secs", type=int, default=10, help="seconds per TCP run (default 10)")
    ap.add_argument("--udp-secs", type=int, default=3, help="seconds per UDP step (0 = no UDP; default 3)")
    ap.add_argument("--udp-start", type=float, default=100, help="first UDP rate, Mbit/s (default 100)")
    ap.add_argument("--udp-max", type=float, default=20000, help="highest UDP rate tried, Mbit/s")
    ap.add_argument("--udp-bisect", type=int, default=4, help="bisection steps after the doubling (default 4)")
    ap.add_argument("--udp-len", type=int, default=None, help="UDP payload octets (default: MTU - 28)")
    ap.add_argument("--udp-window", default="2M",
                    help="iperf3 -w for UDP (socket buffers; the kernel doubles it, capped by rmem_max)")
    ap.add_argument("--mtu", type=int, default=1400, help="inner MTU of every setup (default 1400)")
    ap.add_argument("--workers", type=int, default=None,
                    help="braid's [gateway] workers on both ends (default: braid's own, the machine's cores)")
    ap.add_argument("--tun-queue-len", type=int, default=None,
                    help="TUN transmit queue of every TUN-based setup (braid's tun_queue_len; boringtun's and "
                         "strongSwan's device via `ip link`); default: each as shipped (braid 2000, Linux 500)")
    ap.add_argument("--braid", default=os.environ.get("BRAID", os.path.join(TARGET, "release/braid")))
    ap.add_argument("--boringtun", default=os.environ.get("BORINGTUN"), help="boringtun-cli binary")
    ap.add_argument("--ceiling", default=None, metavar="BIN",
                    help=f"a braid built with benches/null-aead.patch (NO encryption): adds setup {CEILING} after "
                         "braid (benches/ceiling.sh builds it)")
    ap.add_argument("--no-build", action="store_true", help="do not run `cargo build --release` first")
    ap.add_argument("--json", default=None, help="results file (default target/e2e-<time>.json)")
    opts = ap.parse_args()
    opts.udp_len = opts.udp_len or opts.mtu - 28
    only = [s.strip() for s in opts.only.split(",") if s.strip()]
    if opts.ceiling and CEILING not in only:
        at = only.index("braid") + 1 if "braid" in only else len(only)
        only.insert(at, CEILING)
    if CEILING in only and not opts.ceiling:
        ap.error(f"{CEILING} needs --ceiling BIN (benches/ceiling.sh)")
    unknown = [s for s in only if s not in SETUPS + [CEILING]]
    if unknown:
        ap.error(f"unknown setup(s) {unknown}; known: {SETUPS + [CEILING]}")
    if os.geteuid() != 0:
        sys.exit("benches/e2e.py needs root (network namespaces); run it with sudo")
    if not shutil.which("iperf3"):
        sys.exit("iperf3 not found (apt-get install iperf3, or scripts/e2e-peers.sh)")

    # Ctrl-C, SIGTERM and SIGHUP raise KeyboardInterrupt, so `finally` cleans up; the flag also stops the run
    # when the signal reached a child first (iperf3 in the same process group) and surfaced as its failure.
    interrupted = []

    def stop(signum, _frame):
        interrupted.append(signum)
        raise KeyboardInterrupt(f"signal {signum}")
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)

    if any(s.startswith("braid") for s in only) and not opts.no_build:
        print("cargo build --release ...", flush=True)
        r = subprocess.run(["cargo", "build", "--release", "--bin", "braid"], cwd=REPO)
        if r.returncode != 0:
            sys.exit("cargo build --release failed")

    m = machine()
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    print(f"e2e on {m['cpu']} ({m['cpus']} CPUs), kernel {m['kernel']}, load {load1():.2f}; "
          f"inner MTU {opts.mtu}, TCP {opts.secs} s, UDP {opts.udp_len}-octet datagrams {opts.udp_secs} s/step")
    results = []
    try:
        for name in only:
            print(f"{name}:", flush=True)
            try:
                results.append(run_setup(name, opts))
            except Skip as e:
                print(f"  skipped: {e}")
                results.append({"setup": name, "status": "skipped", "reason": str(e)})
            except (RuntimeError, subprocess.SubprocessError, OSError, KeyError) as e:
                if interrupted:
                    raise KeyboardInterrupt from e
                print(f"  failed: {e}")
                results.append({"setup": name, "status": "failed", "reason": str(e)})
    except KeyboardInterrupt:
        print("\ninterrupted; cleaned up", file=sys.stderr)
        sys.exit(130)
    print()
    print(table(results))
    rat = ratios(results)
    if rat:
        print("\nbraid's ratio (TCP 1 / TCP 4 / UDP):")
        for k, v in rat.items():
            print(f"  {k:<26} " + " / ".join("-" if v[x] is None else f"x{v[x]:.2f}" for x in ("tcp1", "tcp4", "udp")))
    report = {"started": started, "machine": m, "options": {k: v for k, v in vars(opts).items()},
              "results": results, "ratios": rat}
    path = opts.json or os.path.join(TARGET, f"e2e-{time.strftime('%Y%m%d-%H%M%S')}.json")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    print(f"\nresults: {path}")


if __name__ == "__main__":
    main()
