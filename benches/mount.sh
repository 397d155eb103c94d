#!/usr/bin/env bash
# Cross-repository mounts, distribution (Debian's docker-registry) and Outpost in one sitting:
# N mounts of one 32 MiB layer into N new repositories (POST ?mount=&from=), then N cold
# re-uploads of the same layer into N more. Prints each mount's median and p90 latency, the
# answers, and the bytes each registry wrote to disk (/proc/PID/io) per mount and for the
# re-uploads. Quote ratios: the machine is shared.
#
# usage: benches/mount.sh [N]   (default 200; needs docker-registry, curl, python3, cargo)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
n=${1:-200}
build_release
work=$(mktemp -d /tmp/outpost-mount.XXXXXX)
trap 'rm -rf "$work"' EXIT
blob=$work/layer.bin
head -c 32M /dev/urandom >"$blob"; sync
digest=sha256:$(sha256sum "$blob" | cut -d' ' -f1)
written() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }

measure() { # label pid base
  local label=$1 pid=$2 base=$3 w0 w1 w2
  "$harness/blob_upload.sh" "$base" base "$blob" "$digest"
  sync; sleep 1
  w0=$(written "$pid")
  for i in $(seq "$n"); do
    curl -s -o /dev/null -w '%{http_code} %{time_total}\n' -X POST \
      "$base/v2/mount-$i/blobs/uploads/?mount=$digest&from=base"
  done >"$work/$label.times"
  sync; sleep 1
  w1=$(written "$pid")
  for i in $(seq 10); do "$harness/blob_upload.sh" "$base" "cold-$i" "$blob" "$digest"; done
  sync; sleep 1
  w2=$(written "$pid")
  python3 - "$label" "$work/$label.times" "$w0" "$w1" "$w2" "$n" <<'PY'
import statistics, sys
label, path, w0, w1, w2, n = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
rows = [l.split() for l in open(path)]
codes = {}
for c, _ in rows:
    codes[c] = codes.get(c, 0) + 1
t = sorted(float(s) * 1e3 for _, s in rows)
print(f"{label:13} mount median {statistics.median(t):6.2f} ms  p90 {t[int(len(t) * .9)]:6.2f} ms"
      f"  answers {codes}  written/mount {(w1 - w0) / n / 1024:7.1f} KiB"
      f"  10 cold re-uploads of 32 MiB wrote {(w2 - w1) / 2**20:7.1f} MiB")
PY
}

port=$(free_port)
pid=$("$harness/reference/start-distribution.sh" "$work/d" "127.0.0.1:$port" "$work/d.log")
measure distribution "$pid" "http://127.0.0.1:$port"; kill "$pid"; wait "$pid" 2>/dev/null || true
port=$(free_port)
start_outpost "$work/o" "$port" /dev/null
measure outpost "$pid" "http://127.0.0.1:$port"; kill "$pid"; wait "$pid" 2>/dev/null || true
