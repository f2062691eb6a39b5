#!/bin/sh
# End-to-end throughput against plain veth, boringtun and strongSwan: see benches/e2e.py (run as root).
exec python3 "$(dirname "$0")/e2e.py" "$@"
