#!/usr/bin/env python3
"""Passive BGP listener used to capture what real peers send (see README.md).

Accepts one TCP connection, answers the peer's OPEN with our own OPEN + KEEPALIVE, keeps the session up with
KEEPALIVEs and writes every message the peer sends, one hex line each, to OUT. Stops after --duration
seconds, or --idle seconds without a message once at least one UPDATE arrived.
"""
import argparse, select, socket, struct, sys, time

def open_msg(asn, hold, bgp_id, four_octet):
    caps = b""
    for afi in (1, 2):
        caps += bytes([1, 4]) + struct.pack("!HBB", afi, 0, 1)  # multiprotocol AFI/SAFI 1
    caps += bytes([2, 0])  # route refresh
    if four_octet:
        caps += bytes([65, 4]) + struct.pack("!I", asn)
    my_as = asn if asn <= 0xFFFF else 23456
    params = bytes([2, len(caps)]) + caps
    body = struct.pack("!BHH4sB", 4, my_as, hold, socket.inet_aton(bgp_id), len(params)) + params
    return frame(1, body)

def frame(kind, body):
    return b"\xff" * 16 + struct.pack("!HB", 19 + len(body), kind) + body

NAMES = {1: "OPEN", 2: "UPDATE", 3: "NOTIFICATION", 4: "KEEPALIVE", 5: "ROUTE-REFRESH"}

def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, default=179)
    ap.add_argument("--asn", type=int, default=65002)
    ap.add_argument("--id", default="192.0.2.2")
    ap.add_argument("--two-octet", action="store_true", help="do not send the 4-octet ASN capability")
    ap.add_argument("--duration", type=float, default=40)
    ap.add_argument("--idle", type=float, default=6)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()

    fam = socket.AF_INET6 if ":" in a.listen else socket.AF_INET
    ls = socket.socket(fam, socket.SOCK_STREAM)
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((a.listen, a.port))
    ls.listen(1)
    ls.settimeout(a.duration)
    conn, peer = ls.accept()
    start = time.time()
    buf = b""
    msgs = []
    last = time.time()
    last_ka = 0.0
    seen_update = False
    while True:
        now = time.time()
        if now - start > a.duration or (seen_update and now - last > a.idle):
            break
        if now - last_ka > 5 and msgs:
            conn.sendall(frame(4, b""))
            last_ka = now
        r, _, _ = select.select([conn], [], [], 0.5)
        if not r:
            continue
        data = conn.recv(65536)
        if not data:
            break
        buf += data
        while len(buf) >= 19:
            length = struct.unpack("!H", buf[16:18])[0]
            if len(buf) < length:
                break
            m, buf = buf[:length], buf[length:]
            kind = m[18]
            msgs.append(m)
            last = time.time()
            if kind == 1:
                conn.sendall(open_msg(a.asn, 90, a.id, not a.two_octet) + frame(4, b""))
                last_ka = time.time()
            elif kind == 2:
                seen_update = True
            elif kind == 3:
                print("peer sent NOTIFICATION", m[19:].hex(), file=sys.stderr)
    conn.close()
    with open(a.out, "w") as f:
        f.write("# peer %s, listener AS %d%s\n" % (peer[0], a.asn, ", no 4-octet ASN capability" if a.two_octet else ""))
        for m in msgs:
            f.write("# %s\n%s\n" % (NAMES.get(m[18], "type %d" % m[18]), m.hex()))
    print("captured %d messages" % len(msgs), file=sys.stderr)

if __name__ == "__main__":
    main()
