#!/usr/bin/env bash
# What the scrub costs: MiB (default 1024) of random blobs of 64 MiB, half in a plaintext and
# half in an AES-256-GCM repository, then
#   1. the physical limit on this machine: re-hash + decrypt on one core (openssl speed,
#      SHA-256 and AES-256-GCM, 256 KiB blocks; the sealed half needs both), and, as root,
#      reading the store file with the page cache dropped; the limit is the slower;
#   2. an unthrottled pass (POST /admin/scrub; from a cold page cache as root): MB/s;
#   3. pull throughput (4 clients GETting the blobs over and over for SECONDS, default 20)
#      alone, with a pass at the default scrubRate running, and with an unthrottled pass
#      running: MB/s and the ratio to pulls alone.
# Quote ratios, not absolute figures: the machine is shared.
#
# usage: benches/scrub.sh [MIB] [SECONDS]   (needs curl, python3, openssl, cargo;
#        OUTPOST_BIN=FILE benchmarks that binary instead of building one)
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"
mib=${1:-1024}
seconds=${2:-20}
if [[ -n ${OUTPOST_BIN:-} ]]; then bin=$OUTPOST_BIN; else build_release; bin=${CARGO_TARGET_DIR:-$top/target}/release/outpost; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-scrub.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

"$bin" key generate "$work/master.key" >/dev/null
cat >"$work/outpost.json" <<JSON
{"masterKeyFile": "$work/master.key", "scrubInterval": "off",
 "encryption": [{"repositories": "sealed/*", "key": "bench", "algorithm": "aes-256-gcm"}]}
JSON
port=$(free_port)
base=http://127.0.0.1:$port
start() { # the binary under test (lib.sh's start_outpost runs the build's, not $OUTPOST_BIN)
  "$bin" serve --listen "127.0.0.1:$port" --data-dir "$work/data" --config "$work/outpost.json" 2>>"$work/outpost.log" &
  pid=$!; pids+=("$pid")
  for _ in $(seq 200); do curl -fs -o /dev/null "$base/v2/" && return; sleep 0.05; done
  echo "outpost did not start:"; cat "$work/outpost.log"; exit 1
}
start

blobs=$((mib / 64)); ((blobs >= 2)) || blobs=2
: >"$work/digests"
for i in $(seq "$blobs"); do
  repo=plain/b; ((i % 2)) || repo=sealed/b
  head -c 64M /dev/urandom >"$work/blob"
  d=sha256:$(sha256sum "$work/blob" | cut -d' ' -f1)
  curl -fsS -o /dev/null -X POST --data-binary @"$work/blob" "$base/v2/$repo/blobs/uploads/?digest=$d"
  echo "$repo $d" >>"$work/digests"
done
rm -f "$work/blob"
sync

mbps() { python3 -c "import sys; print(f'{float(sys.argv[1])/1e6:.0f}')" "$1"; }
echo "store: $blobs blobs of 64 MiB ($((blobs * 64)) MiB), half sealed with AES-256-GCM"

# 1. The physical limit: reading the file cold (root only: the page cache is dropped), and
#    re-hash + decrypt on one core (a pass runs on one thread).
file=$work/data/outpost.redb
root=false; [[ $(id -u) == 0 ]] && root=true
drop() { if $root; then sync; echo 3 >/proc/sys/vm/drop_caches; fi; }
read_rate=0
if $root; then
  drop; t0=$(date +%s.%N); cat "$file" >/dev/null; t1=$(date +%s.%N)
  read_rate=$(python3 -c "import os,sys; print(os.path.getsize(sys.argv[1])/(float(sys.argv[3])-float(sys.argv[2])))" "$file" "$t0" "$t1")
else
  echo "(not root: the page cache cannot be dropped; the limit is re-hash + decrypt only)"
fi
speed() { openssl speed -evp "$1" -bytes 262144 -seconds 2 2>/dev/null | awk '/^'"$2"'/ {print $NF}' | tr -d k; }
sha=$(speed sha256 sha256)
aes=$(speed aes-256-gcm AES-256-GCM)
python3 - "$read_rate" "$sha" "$aes" >"$work/limit" <<'PY'
import sys
read, sha, aes = float(sys.argv[1]), float(sys.argv[2]) * 1e3, float(sys.argv[3]) * 1e3
cpu = 1 / (0.5 / sha + 0.5 * (1 / sha + 1 / aes))  # half plaintext, half sealed
limit = min(read, cpu) if read > 0 else cpu
print(limit)
cold = f"cold read {read/1e6:.0f} MB/s, " if read > 0 else ""
print(f"physical limit: {cold}sha256 {sha/1e6:.0f} MB/s, aes-256-gcm {aes/1e6:.0f} MB/s"
      f" (re-hash + decrypt {cpu/1e6:.0f} MB/s) -> {limit/1e6:.0f} MB/s")
PY
limit=$(head -1 "$work/limit"); tail -1 "$work/limit"

# 2. An unthrottled pass, from a cold page cache when root.
drop
curl -fsS -X POST "$base/admin/scrub" >"$work/pass.json"
rate=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['bytesPerSecond'])" "$work/pass.json")
python3 -c "import sys; r,l=map(float,sys.argv[1:]); print(f'unthrottled scrub: {r/1e6:.0f} MB/s ({r/l:.2f} of the physical limit)')" "$rate" "$limit"

# 3. Pulls alone, beside a pass at the default rate, beside an unthrottled pass.
pull() { # seconds -> bytes pulled by 4 clients
  python3 - "$base" "$work/digests" "$1" <<'PY'
import sys, time, threading, http.client
from urllib.parse import urlsplit
base, digests, secs = sys.argv[1], open(sys.argv[2]).read().split("\n"), float(sys.argv[3])
items = [l.split() for l in digests if l]
u = urlsplit(base); end = time.time() + secs; total = [0]; lock = threading.Lock()
def client(k):
    c = http.client.HTTPConnection(u.hostname, u.port, timeout=60); i = k; n = 0
    while time.time() < end:
        repo, d = items[i % len(items)]; i += 1
        c.request("GET", f"/v2/{repo}/blobs/{d}"); r = c.getresponse()
        while time.time() < end:
            b = r.read(1 << 20)
            if not b: break
            n += len(b)
        if time.time() >= end: break
    with lock: total[0] += n
ts = [threading.Thread(target=client, args=(k,)) for k in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
print(total[0] / secs)
PY
}
cat "$file" >/dev/null # warm: every run below pulls from the page cache
alone=$(pull "$seconds")
echo "pulls alone: $(mbps "$alone") MB/s"
default_rate=$(python3 -c "print(1 << 20)")
for label in "default scrubRate (1 MiB/s)" "unthrottled scrub"; do
  q=""; [[ $label == default* ]] && q="?rate=$default_rate"
  # A fresh registry each time: the pass asked for runs until it ends, whatever curl does.
  kill "$pid"; wait "$pid" 2>/dev/null || true
  start
  # Pass after pass for the whole window (an unthrottled pass of a small store is over in
  # a moment; one at 1 MiB/s outlasts it).
  (while curl -fsS -o /dev/null -X POST "$base/admin/scrub$q"; do :; done) &
  scrubber=$!
  sleep 1
  with=$(pull "$seconds")
  kill "$scrubber" 2>/dev/null || true; wait "$scrubber" 2>/dev/null || true
  python3 -c "import sys; w,a=map(float,sys.argv[1:3]); print(f'pulls beside a pass at {sys.argv[3]}: {w/1e6:.0f} MB/s ({w/a:.2f} of pulls alone)')" \
    "$with" "$alone" "$label"
done
