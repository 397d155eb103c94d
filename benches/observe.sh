#!/usr/bin/env bash
# What watching a registry costs: small GETs per second and peak RSS with metrics, the audit
# trail and pull counts on, against a build without them ("off": they cannot be switched off),
# in one sitting.
#
# usage: benches/observe.sh BASELINE_BIN [ROUNDS] [SECONDS]   (default 5 rounds of 5 s per case)
# BASELINE_BIN: a release build of a commit before issue 19 (e.g. fc59606), the "never had it".
# Cases, each its own registry with one small image pushed, auth off:
#   before   BASELINE_BIN
#   on       this build: audit trail and pull counts on, /metrics scraped every second
# Each round runs every case in turn (interleaved, so a noisy neighbour hits all alike); each
# case is wrk (2 threads, 8 keep-alive connections) GETting the manifest by tag (what pull
# counts count), then a 1 KiB blob. Prints req/s (median of the rounds), the ratio to
# "before", and each registry's peak RSS (VmHWM) at the end.
# Needs: cargo, wrk, curl, python3.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
base_bin=${1:?usage: benches/observe.sh BASELINE_BIN [ROUNDS] [SECONDS]}
rounds=${2:-5}
secs=${3:-5}
command -v wrk >/dev/null ||
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q wrk; }
build_release
bin=${CARGO_TARGET_DIR:-$top/target}/release/outpost
work=$(mktemp -d /tmp/outpost-observe-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

head -c 1024 /dev/urandom >"$work/small.bin"
digest=sha256:$(sha256sum "$work/small.bin" | cut -d' ' -f1)
printf '{}' >"$work/config.json"
cdigest=sha256:$(sha256sum "$work/config.json" | cut -d' ' -f1)
cat >"$work/manifest.json" <<EOF
{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
 "config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"$cdigest","size":2},
 "layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"$digest","size":1024}]}
EOF
mt=application/vnd.oci.image.manifest.v1+json

# blob URL FILE DIGEST: a monolithic upload into bench/app.
blob() {
  local loc sep='?'
  loc=$(curl -fsS -X POST -D - -o /dev/null "$1/v2/bench/app/blobs/uploads/" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case $loc in http*) ;; *) loc=$1$loc ;; esac
  [[ $loc == *\?* ]] && sep='&'
  curl -fsS -X PUT --data-binary @"$2" -H 'Content-Type: application/octet-stream' \
    "$loc${sep}digest=$3" -o /dev/null
}

# start NAME BIN [SERVE_ARGS...]: a registry with the image pushed; sets its URL and PID.
declare -A url pidof
start() {
  local name=$1 b=$2 port
  port=$(free_port)
  mkdir -p "$work/$name"
  "$b" serve --listen "127.0.0.1:$port" --data-dir "$work/$name" "${@:3}" 2>"$work/$name.log" &
  pidof[$name]=$!; pids+=($!)
  for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/v2/" && break; sleep 0.05; done
  url[$name]=http://127.0.0.1:$port
  blob "${url[$name]}" "$work/small.bin" "$digest"
  blob "${url[$name]}" "$work/config.json" "$cdigest"
  curl -fsS -X PUT -H "Content-Type: $mt" --data-binary @"$work/manifest.json" \
    "${url[$name]}/v2/bench/app/manifests/v1" -o /dev/null
}
start before "$base_bin"
start on "$bin"
cases=(before on)

# The "on" registry is scraped every second, as Prometheus would (more often than usual).
(while sleep 1; do curl -fs -o /dev/null "${url[on]}/metrics" || echo "scrape failed" >&2; done) &
pids+=($!)

results=$work/results
for r in $(seq "$rounds"); do
  for c in "${cases[@]}"; do
    for what in manifest blob; do
      if [[ $what == manifest ]]; then
        target=(-H "Accept: $mt" "${url[$c]}/v2/bench/app/manifests/v1")
      else
        target=("${url[$c]}/v2/bench/app/blobs/$digest")
      fi
      rps=$(wrk -t2 -c8 -d"${secs}s" "${target[@]}" | awk '/Requests\/sec/{print $2}')
      echo "round $r $c $what $rps req/s" >&2
      echo "$c $what $rps" >>"$results"
    done
  done
done
for c in "${cases[@]}"; do
  echo "rss $c $(awk '/VmHWM/{print $2}' "/proc/${pidof[$c]}/status")" >>"$results"
done
python3 - "$results" <<'EOF'
import statistics, sys
rows, rss = {}, {}
for line in open(sys.argv[1]):
    f = line.split()
    if f[0] == "rss":
        rss[f[1]] = int(f[2]) / 1024
    else:
        rows.setdefault((f[0], f[1]), []).append(float(f[2]))
med = {k: statistics.median(v) for k, v in rows.items()}
print(f"{'case':<8} {'manifest GET/s':>15} {'vs before':>10} {'blob GET/s':>11} {'vs before':>10} {'peak RSS MiB':>13} {'vs before':>10}")
for c in ("before", "on"):
    m, b = med[(c, "manifest")], med[(c, "blob")]
    print(f"{c:<8} {m:>15.0f} {m / med[('before', 'manifest')]:>9.3f}x {b:>11.0f} "
          f"{b / med[('before', 'blob')]:>9.3f}x {rss[c]:>13.1f} {rss[c] / rss['before']:>9.3f}x")
EOF
