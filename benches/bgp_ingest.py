#!/usr/bin/env python3
"""BGP ingest benchmark (run by hand, as root; not part of CI).

A BIRD 2 feeder announces N IPv4 prefixes (default 1,000,000 /24s, ten groups with different AS paths) to braid
and, in the same run, to a receiving BIRD 2. Each receiver is in its own network namespace, joined to the feeder
by its own veth (TEST-NET addresses). For each receiver it measures the time from its session reaching Established
to the full table being accepted, and its peak RSS (VmHWM), then prints braid's ratio to BIRD.

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


def prefix(i):
    # /24s from 16.0.0.0 upwards: route-only prefixes, never in a kernel table.
    return f"{16 + (i >> 16)}.{(i >> 8) & 255}.{i & 255}.0/24"


def main():
    if os.geteuid() != 0:
        sys.exit("run as root (network namespaces)")
    for tool in ("bird", "birdc", "ip"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is not installed (apt-get install bird2 iproute2)")
    if not os.path.exists(BRAID):
        sys.exit(f"{BRAID} missing: cargo build --release")
    tmp = tempfile.mkdtemp(prefix=TAG)
    procs = []
    try:
        for ns in NS.values():
            sh("ip", "netns", "add", ns)
            nsexec(ns, "ip", "link", "set", "lo", "up")
        links = [("braid", "198.51.100.1", "198.51.100.2"), ("bird", "198.51.100.5", "198.51.100.6")]
        for i, (peer, f_addr, p_addr) in enumerate(links):
            a, b = f"{TAG[-8:]}f{i}", f"{TAG[-8:]}p{i}"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            sh("ip", "link", "set", a, "netns", NS["feed"])
            sh("ip", "link", "set", b, "netns", NS[peer])
            nsexec(NS["feed"], "ip", "addr", "add", f"{f_addr}/30", "dev", a)
            nsexec(NS["feed"], "ip", "link", "set", a, "up")
            nsexec(NS[peer], "ip", "addr", "add", f"{p_addr}/30", "dev", b)
            nsexec(NS[peer], "ip", "link", "set", b, "up")

        # braid: BGP only, accepts everything from the feeder.
        braid_sock = f"{tmp}/braid.sock"
        with open(f"{tmp}/braid.toml", "w") as f:
            f.write(f"""[gateway]
name = "ingest"
asn = 65001
router_id = "192.0.2.1"
control_socket = "{braid_sock}"

[[bgp.neighbor]]
address = "198.51.100.1"
remote_asn = 65000
import = ["0.0.0.0/0 le 32"]
export = []
connect_retry = 1

[bgp]
""")
        braid = subprocess.Popen(["ip", "netns", "exec", NS["braid"], BRAID, "run", "-c", f"{tmp}/braid.toml"],
                                 stdout=subprocess.DEVNULL, stderr=open(f"{tmp}/braid.log", "w"))
        procs.append(braid)

        # Receiving BIRD.
        bird_sock = f"{tmp}/bird-r.ctl"
        with open(f"{tmp}/bird-r.conf", "w") as f:
            f.write("""router id 192.0.2.3;
protocol device {}
protocol bgp feeder { local 198.51.100.6 as 65002; neighbor 198.51.100.5 as 65000;
  ipv4 { import all; export none; }; }
""")
        bird = subprocess.Popen(["ip", "netns", "exec", NS["bird"], "bird", "-f", "-c", f"{tmp}/bird-r.conf",
                                 "-s", bird_sock], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(bird)

        # Feeder BIRD: N static routes in GROUPS protocols, each group with its own AS path.
        per = N // GROUPS
        with open(f"{tmp}/bird-f.conf", "w") as f:
            f.write("router id 192.0.2.2;\nprotocol device {}\n")
            for g in range(GROUPS):
                f.write(f"protocol static s{g} {{ ipv4;\n")
                for i in range(g * per, (g + 1) * per if g < GROUPS - 1 else N):
                    f.write(f"  route {prefix(i)} unreachable;\n")
                f.write("}\n")
            prepend = "".join(
                f"  if proto = \"s{g}\" then {{ " + " ".join(f"bgp_path.prepend({64600 + g + k});" for k in range(g % 4 + 1)) + " }\n"
                for g in range(GROUPS))
            f.write(f"filter varied {{\n{prepend}  accept;\n}}\n")
            for name, local, peer, asn in (("to_braid", "198.51.100.1", "198.51.100.2", 65001),
                                           ("to_bird", "198.51.100.5", "198.51.100.6", 65002)):
                f.write(f"protocol bgp {name} {{ local {local} as 65000; neighbor {peer} as {asn};\n"
                        f"  keepalive time 1; ipv4 {{ import none; export filter varied; }}; }}\n")
        time.sleep(0.5)  # let both receivers listen
        feeder = subprocess.Popen(["ip", "netns", "exec", NS["feed"], "bird", "-f", "-c", f"{tmp}/bird-f.conf",
                                   "-s", f"{tmp}/bird-f.ctl"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(feeder)
        start = time.monotonic()

        result = {"braid": {}, "bird": {}}
        deadline = start + 600
        while time.monotonic() < deadline and not all("full_s" in r for r in result.values()):
            now = time.monotonic() - start
            r = result["braid"]
            if "full_s" not in r:
                try:
                    out = subprocess.run([BRAID, "show", "bgp", "--json", "-s", braid_sock], capture_output=True,
                                         text=True, timeout=5)
                    n = json.loads(out.stdout)["neighbors"][0]
                    if n["state"] == "Established" and "up_s" not in r:
                        r["up_s"] = now
                    if n["accepted"] >= N:
                        r["full_s"] = now
                except (ValueError, KeyError, IndexError, subprocess.TimeoutExpired):
                    pass
            r = result["bird"]
            if "full_s" not in r:
                out = subprocess.run(["birdc", "-s", bird_sock, "show", "protocols", "all", "feeder"],
                                     capture_output=True, text=True).stdout
                if "Established" in out and "up_s" not in r:
                    r["up_s"] = now
                m = re.search(r"Routes:\s+(\d+) imported", out)
                if m and int(m.group(1)) >= N:
                    r["full_s"] = now
            time.sleep(0.05)
        result["braid"]["rss_mib"] = rss_peak_kib(braid.pid) / 1024
        result["bird"]["rss_mib"] = rss_peak_kib(bird.pid) / 1024
        for name, r in result.items():
            if "full_s" in r:
                r["ingest_s"] = r["full_s"] - r.get("up_s", 0)

        cpu = sh("sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").stdout.strip()
        print(f"BGP ingest of {N:,} IPv4 prefixes from a BIRD feeder, one run, {os.cpu_count()} CPUs ({cpu})")
        print(f"{'receiver':<10} {'established':>12} {'full table':>11} {'ingest':>9} {'peak RSS':>10}")
        for name, r in result.items():
            print(f"{name:<10} {r.get('up_s', float('nan')):>11.2f}s {r.get('full_s', float('nan')):>10.2f}s "
                  f"{r.get('ingest_s', float('nan')):>8.2f}s {r['rss_mib']:>8.1f} MiB")
        b, r = result["braid"], result["bird"]
        if "ingest_s" in b and "ingest_s" in r:
            print(f"braid/BIRD: ingest time x{b['ingest_s'] / r['ingest_s']:.2f}, "
                  f"memory x{b['rss_mib'] / r['rss_mib']:.2f} (below 1 is better for braid)")
        print(json.dumps({"n": N, **result}))
    finally:
        for p in procs:
            p.kill()
            p.wait()
        for ns in NS.values():
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
