#!/bin/bash
# Captures OPEN and UPDATE messages from BIRD 2, FRR and GoBGP into this directory (see README.md).
# Needs root. Two network namespaces joined by a veth pair, TEST-NET addresses only:
#   wcap-peer: 192.0.2.1/24, 2001:db8::1/64 (the BGP daemon under test)
#   wcap-me:   192.0.2.2/24, 2001:db8::2/64 (capture.py, a passive listener, AS 65002)
# Usage: capture.sh [bird|frr|gobgp]...   (default: all three)
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
W=/tmp/wcap.$$
P="ip netns exec wcap-peer"
M="ip netns exec wcap-me"
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for f in "$W"/*.pid "$W"/frr/*.pid; do [ -f "$f" ] && kill "$(cat "$f" 2>/dev/null)" 2>/dev/null; done
    sleep 0.5
    ip netns del wcap-peer 2>/dev/null
    ip netns del wcap-me 2>/dev/null
    rm -rf "$W"
}
trap cleanup EXIT

setup() {
    mkdir -p "$W"
    ip netns add wcap-peer
    ip netns add wcap-me
    ip link add wcap0 netns wcap-peer type veth peer name wcap1 netns wcap-me
    for ns in wcap-peer wcap-me; do
        ip netns exec $ns sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
        ip netns exec $ns ip link set lo up
    done
    $P ip addr add 192.0.2.1/24 dev wcap0
    $P ip addr add 2001:db8::1/64 dev wcap0 nodad
    $M ip addr add 192.0.2.2/24 dev wcap1
    $M ip addr add 2001:db8::2/64 dev wcap1 nodad
    $P ip link set wcap0 up
    $M ip link set wcap1 up
}

# listen ADDR PORT OUT [extra capture.py args]: runs capture.py in the background.
listen() {
    local addr=$1 port=$2 out=$3; shift 3
    $M python3 "$HERE/capture.py" --listen "$addr" --port "$port" --out "$HERE/$out" "$@" &
    PIDS+=($!)
}

run_bird() {
    cat > "$W/bird.conf" <<CONF
router id 192.0.2.1;
protocol device { }
protocol static s4 {
    ipv4;
    route 198.51.100.0/24 blackhole;
    route 203.0.113.0/25 blackhole;
    route 203.0.113.128/26 blackhole;
}
protocol static s6 {
    ipv6;
    route 2001:db8:100::/48 blackhole;
    route 2001:db8:200::/56 blackhole;
}
filter out4 {
    bgp_med = 50;
    bgp_community.add((65001, 100));
    bgp_community.add((65001, 101));
    bgp_ext_community.add((rt, 65001, 7));
    bgp_large_community.add((4200000001, 1, 2));
    accept;
}
template bgp peer {
    local 192.0.2.1 as 4200000001;
    hold time 90;
    ipv4 { import none; export filter out4; };
    ipv6 { import none; export all; next hop address 2001:db8::1; };
}
protocol bgp four from peer { neighbor 192.0.2.2 port 179 as 65002; }
protocol bgp two from peer { neighbor 192.0.2.2 port 1179 as 65002; }
CONF
    listen 192.0.2.2 179 bird.hex
    listen 192.0.2.2 1179 bird_2octet.hex --two-octet
    sleep 0.5
    $P bird -f -c "$W/bird.conf" -s "$W/bird.ctl" -P "$W/bird.pid" &
    PIDS+=($!)
    wait "${PIDS[0]}" "${PIDS[1]}"
}

run_frr() {
    local d=$W/frr
    mkdir -p "$d"
    chown frr:frr "$d"
    cat > "$d/zebra.conf" <<CONF
hostname frr-capture
CONF
    cat > "$d/bgpd.conf" <<CONF
hostname frr-capture
router bgp 65001
 bgp router-id 192.0.2.1
 no bgp ebgp-requires-policy
 no bgp network import-check
 neighbor 192.0.2.2 remote-as 65002
 neighbor 192.0.2.2 timers 30 90
 address-family ipv4 unicast
  network 203.0.113.0/24
  network 198.51.100.64/26
  neighbor 192.0.2.2 route-map SETATTR out
 exit-address-family
 address-family ipv6 unicast
  network 2001:db8:f::/48
  neighbor 192.0.2.2 activate
 exit-address-family
route-map SETATTR permit 10
 set community 65001:200 no-export
 set metric 20
 set as-path prepend 65001
CONF
    chown frr:frr "$d"/*.conf
    listen 192.0.2.2 179 frr.hex
    sleep 0.5
    $P /usr/lib/frr/zebra -d -f "$d/zebra.conf" --vty_socket "$d" -z "$d/zserv.api" -P 0 -i "$d/zebra.pid"
    sleep 1
    $P /usr/lib/frr/bgpd -d -f "$d/bgpd.conf" --vty_socket "$d" -z "$d/zserv.api" -P 0 -i "$d/bgpd.pid"
    wait "${PIDS[0]}"
}

run_gobgp() {
    cat > "$W/gobgp.toml" <<CONF
[global.config]
  as = 65003
  router-id = "192.0.2.1"
  port = -1
[[neighbors]]
  [neighbors.config]
    neighbor-address = "192.0.2.2"
    peer-as = 65002
  [neighbors.timers.config]
    hold-time = 90
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv4-unicast"
  [[neighbors.afi-safis]]
    [neighbors.afi-safis.config]
      afi-safi-name = "ipv6-unicast"
CONF
    listen 192.0.2.2 179 gobgp.hex
    sleep 0.5
    $P gobgpd -f "$W/gobgp.toml" -p --api-hosts "unix://$W/gobgp.sock" --pprof-disable > "$W/gobgpd.log" 2>&1 &
    PIDS+=($!)
    sleep 4
    $P gobgp --target "unix://$W/gobgp.sock" global rib -a ipv4 add 198.51.100.128/25 nexthop 192.0.2.1 community 65003:300 med 10
    $P gobgp --target "unix://$W/gobgp.sock" global rib -a ipv4 add 203.0.113.192/27 nexthop 192.0.2.1 aspath 64999,65010
    $P gobgp --target "unix://$W/gobgp.sock" global rib -a ipv6 add 2001:db8:3::/48 nexthop 2001:db8::1
    wait "${PIDS[0]}"
}

peers=("$@")
[ ${#peers[@]} -eq 0 ] && peers=(bird frr gobgp)
for peer in "${peers[@]}"; do
    setup
    echo "== $peer"
    "run_$peer"
    cleanup
    PIDS=()
done
trap - EXIT
