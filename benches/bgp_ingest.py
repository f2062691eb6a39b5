#!/usr/bin/env python3
"""BGP ingest benchmark (run by hand, as root; not part of CI).

A BIRD 2 feeder announces N IPv4 prefixes (default 1,000,000 /24s, ten groups with different AS paths) to braid
and, in the same run, to a receiving BIRD 2. The receivers take turns (braid, BIRD, braid, BIRD), each with a fresh
feeder of its own, so that neither shares the single-threaded feeder with the other. Each receiver is in its own
network namespace, joined to the feeder's by a veth (TEST-NET addresses). For each turn it measures the time from
the session reaching Established to the full table being accepted, and the receiver's peak RSS (VmHWM); it prints
the best turn of each and braid's ratio to BIRD.

The prefixes are route-only data: no receiver installs them into a kernel table and no traffic is sent to them.

    sudo benches/bgp_ingest.py [N]          # BRAID=target/release/braid by default
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
BRAID = os.path.abspath(os.environ.get("BRAID", "target/release/braid"))
# The client used to poll braid (BRAID may be a wrapper, e.g. a profiler).
BRAID_SHOW = os.path.abspath(os.environ.get("BRAID_SHOW", BRAID))
TAG = f"braid-ingest-{os.getpid()}"
NS = {"feed": f"{TAG}-f", "braid": f"{TAG}-b", "bird": f"{TAG}-r"}
GROUPS = 10


def sh(*args, check=True, **kw):
    return subprocess.run(args, check=check, capture_output=True, text=True, **kw)


def nsexec(ns, *args, **kw):
    return sh("ip", "netns", "exec", ns, *args, **kw)


def rss_peak_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def cpu_seconds(pid):
    """User + system CPU time the process has used (the receiver's own cost of the ingest)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def prefix(i):
    # /24s from 16.0.0.0 upwards: route-only prefixes, never in a kernel table.
    return f"{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24"


def run_one(kind, feeder_conf_text):
    """One turn: a feeder namespace and one receiver (`braid` or `bird`). Returns {up_s, full_s, ingest_s, rss_mib}."""
    tmp = tempfile.mkdtemp(prefix=TAG)
    nss = {"feed": f"{TAG}-f", "rx": f"{TAG}-r"}
    procs = []
    try:
        for ns in nss.values():
            sh("ip", "netns", "add", ns)
            nsexec(ns, "ip", "link", "set", "lo", "up")
        a, b = f"{TAG[-8:]}f", f"{TAG[-8:]}r"
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "netns", nss["feed"])
        sh("ip", "link", "set", b, "netns", nss["rx"])
        nsexec(nss["feed"], "ip", "addr", "add", "198.51.100.1/30", "dev", a)
        nsexec(nss["feed"], "ip", "link", "set", a, "up")
        nsexec(nss["rx"], "ip", "addr", "add", "198.51.100.2/30", "dev", b)
        nsexec(nss["rx"], "ip", "link", "set", b, "up")
        sock = f"{tmp}/rx.sock"
        if kind == "braid":
            with open(f"{tmp}/braid.toml", "w") as f:
                f.write(f"""[gateway]
name = "ingest"
asn = 65001
router_id = "192.0.2.1"
control_socket = "{sock}"

[[bgp.neighbor]]
address = "198.51.100.1"
remote_asn = 65000
import = ["0.0.0.0/0 le 32"]
export = []
connect_retry = 1

[bgp]
""")
            rx = subprocess.Popen(["ip", "netns", "exec", nss["rx"], BRAID, "run", "-c", f"{tmp}/braid.toml"],
                                  stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/braid.log", "w"))
        else:
            with open(f"{tmp}/bird-r.conf", "w") as f:
                f.write("""router id 192.0.2.3;
protocol device {}
protocol bgp feeder { local 198.51.100.2 as 65001; neighbor 198.51.100.1 as 65000;
  ipv4 { import all; export none; }; }
""")
            rx = subprocess.Popen(["ip", "netns", "exec", nss["rx"], "bird", "-f", "-c", f"{tmp}/bird-r.conf",
                                   "-s", sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(rx)
        with open(f"{tmp}/bird-f.conf", "w") as f:
            f.write(feeder_conf_text)
        time.sleep(0.5)  # the receiver listens
        feeder = subprocess.Popen(["ip", "netns", "exec", nss["feed"], "bird", "-f", "-c", f"{tmp}/bird-f.conf",
                                   "-s", f"{tmp}/bird-f.ctl"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(feeder)
        start = time.monotonic()
        r = {}
        while time.monotonic() < start + 600 and "full_s" not in r:
            now = time.monotonic() - start
            if kind == "braid":
                try:
                    out = subprocess.run([BRAID_SHOW, "show", "bgp", "--json", "-s", sock], capture_output=True,
                                         text=True, timeout=5)
                    n = json.loads(out.stdout)["neighbors"][0]
                    up, count = n["state"] == "Established", n["accepted"]
                except (ValueError, KeyError, IndexError, subprocess.TimeoutExpired):
                    up, count = False, 0
            else:
                out = subprocess.run(["birdc", "-s", sock, "show", "protocols", "all", "feeder"],
                                     capture_output=True, text=True).stdout
                m = re.search(r"Routes:\s+(\d+) imported", out)
                up, count = "Established" in out, int(m.group(1)) if m else 0
            if up and "up_s" not in r:
                r["up_s"] = now
            if count >= N:
                r["full_s"] = now
            time.sleep(0.02)
        r["rss_mib"] = rss_peak_kib(rx.pid) / 1024
        r["cpu_s"] = cpu_seconds(rx.pid)
        if "full_s" in r:
            r["ingest_s"] = r["full_s"] - r.get("up_s", 0)
        return r
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in nss.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def feeder_config():
    per = N // GROUPS
    lines = ["router id 192.0.2.2;", "protocol device {}"]
    for g in range(GROUPS):
        lines.append(f"protocol static s{g} {{ ipv4;")
        for i in range(g * per, (g + 1) * per if g < GROUPS - 1 else N):
            lines.append(f"  route {prefix(i)} unreachable;")
        lines.append("}")
    prepend = "".join(
        f"  if proto = \"s{g}\" then {{ " + " ".join(f"bgp_path.prepend({64600 + g + k});" for k in range(g % 4 + 1))
        + " }\n" for g in range(GROUPS))
    lines.append(f"filter varied {{\n{prepend}  accept;\n}}")
    lines.append("protocol bgp to_rx { local 198.51.100.1 as 65000; neighbor 198.51.100.2 as 65001;\n"
                 "  keepalive time 1; ipv4 { import none; export filter varied; }; }")
    return "\n".join(lines) + "\n"


def main():
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    for tool in ("bird", "birdc", "ip"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install bird2 iproute2)")
    if not os.path.exists(BRAID):
        sys.exit(f"{BRAID} missing: cargo build --release")
    conf = feeder_config()
    turns = {"braid": [], "bird": []}
    for _ in range(2):
        for kind in ("braid", "bird"):
            turns[kind].append(run_one(kind, conf))
    cpu = sh("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").stdout.strip()
    print(f"BGP ingest of {N:,} IPv4 prefixes from a BIRD 2 feeder, {os.cpu_count()} CPUs ({cpu})")
    print(f"{'receiver':<9} {'turn':>4} {'established':>12} {'full table':>11} {'ingest':>9} {'CPU used':>9} {'peak RSS':>10}")
    best = {}
    for kind, rs in turns.items():
        for i, r in enumerate(rs):
            print(f"{kind:<9} {i + 1:>4} {r.get('up_s', float('nan')):>11.2f}s {r.get('full_s', float('nan')):>10.2f}s "
                  f"{r.get('ingest_s', float('nan')):>8.2f}s {r['cpu_s']:>8.2f}s {r['rss_mib']:>8.1f} MiB")
        ok = [r for r in rs if "ingest_s" in r]
        if ok:
            best[kind] = {"ingest_s": min(r["ingest_s"] for r in ok), "rss_mib": max(r["rss_mib"] for r in rs),
                          "cpu_s": min(r["cpu_s"] for r in ok)}
    if len(best) == 2:
        b, r = best["braid"], best["bird"]
        print(f"best turns: braid {b['ingest_s']:.2f} s / {b['rss_mib']:.1f} MiB, BIRD {r['ingest_s']:.2f} s / "
              f"{r['rss_mib']:.1f} MiB")
        print(f"braid/BIRD: ingest time x{b['ingest_s'] / r['ingest_s']:.2f}, CPU x{b['cpu_s'] / r['cpu_s']:.2f}, "
              f"memory x{b['rss_mib'] / r['rss_mib']:.2f} (below 1 is better for braid)")
        print("(when both ingest times match, the feeder's send rate is the limit; CPU used is then the receivers' cost)")
    print(json.dumps({"n": N, "turns": turns}))


if __name__ == "__main__":
    main()
