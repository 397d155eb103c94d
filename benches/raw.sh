#!/usr/bin/env bash
# Raw HTTP capacity without skopeo: PUT then GET of one settled 1 GiB blob (written and synced
# before the first run, so page-cache writeback of the source does not skew the PUT), against
# distribution (Debian's docker-registry) and Outpost, alternating, a fresh store each run.
# Prints MB/s and the registry's CPU seconds per run; quote ratios, the machine is shared.
#
# usage: benches/raw.sh [ROUNDS]   (default 3; needs docker-registry, curl, python3, cargo)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rounds=${1:-3}
build_release
work=$(mktemp -d /tmp/outpost-raw.XXXXXX)
trap 'rm -rf "$work"' EXIT
settled_blob "$work"

measure() { # label pid base
  local c0 t0 t1 c1 get0 get1
  c0=$(cpu "$2"); t0=$(date +%s.%N)
  "$harness/blob_upload.sh" "$3" raw "$blob" "$digest"
  t1=$(date +%s.%N); c1=$(cpu "$2")
  get0=$(date +%s.%N); curl -fsS -o /dev/null "$3/v2/raw/blobs/$digest"; get1=$(date +%s.%N)
  python3 -c "import sys; l,t0,t1,c0,c1,g0,g1=sys.argv[1:]; t0,t1,c0,c1,g0,g1=map(float,(t0,t1,c0,c1,g0,g1)); \
print(f'{l:13} PUT {1073.741824/(t1-t0):6.0f} MB/s (cpu {(c1-c0)/100:.2f} s)  GET {1073.741824/(g1-g0):6.0f} MB/s')" \
    "$1" "$t0" "$t1" "$c0" "$c1" "$get0" "$get1"
}

for _ in $(seq "$rounds"); do
  sync; rm -rf "$work/d"; port=$(free_port)
  pid=$("$harness/reference/start-distribution.sh" "$work/d" "127.0.0.1:$port" "$work/d.log")
  measure distribution "$pid" "http://127.0.0.1:$port"; kill "$pid"; wait "$pid" 2>/dev/null || true
  sync; rm -rf "$work/o"; port=$(free_port)
  start_outpost "$work/o" "$port" /dev/null
  measure outpost "$pid" "http://127.0.0.1:$port"; kill "$pid"; wait "$pid" 2>/dev/null || true
done
