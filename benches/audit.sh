#!/usr/bin/env bash
# What the audit trail's pull counting costs small GETs: this build against another binary
# (e.g. one built before the audit trail), in alternating rounds of one sitting.
#
# usage: benches/audit.sh BASE_BINARY [SECONDS] [ROUNDS]   (default 8 s, 3 rounds)
# Each round and binary: a fresh store with one small image; wrk (2 threads, 8 keep-alive
# connections) GETs its manifest by tag (counted as a pull), then its 1 KiB layer; peak RSS
# from /proc. Prints each round; compare the medians.
# Needs: cargo, wrk, curl.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
base=${1:?usage: benches/audit.sh BASE_BINARY [SECONDS] [ROUNDS]}
secs=${2:-8}
rounds=${3:-3}
command -v wrk >/dev/null || { echo "needs wrk (apt install wrk)" >&2; exit 1; }
build_release
declare -A bins=([base]=$base [this]="${CARGO_TARGET_DIR:-$top/target}/release/outpost")
work=$(mktemp -d /tmp/outpost-audit-bench.XXXXXX)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
head -c 1024 /dev/urandom >"$work/layer.bin"
layer=sha256:$(sha256sum "$work/layer.bin" | cut -d' ' -f1)
printf '%s' '{"architecture":"amd64","os":"linux"}' >"$work/config.json"
config=sha256:$(sha256sum "$work/config.json" | cut -d' ' -f1)
manifest=$(printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"%s","size":1024}]}' \
  "$config" "$(stat -c %s "$work/config.json")" "$layer")
for r in $(seq 1 "$rounds"); do
  for name in base this; do
    port=$(free_port)
    url=http://127.0.0.1:$port
    "${bins[$name]}" serve --listen "127.0.0.1:$port" --data-dir "$work/$name-$r" 2>"$work/$name-$r.log" &
    pid=$!
    for _ in $(seq 100); do curl -fs -o /dev/null "$url/v2/" && break; sleep 0.05; done
    for f in layer.bin:"$layer" config.json:"$config"; do
      curl -fsS -X POST --data-binary @"$work/${f%%:*}" "$url/v2/bench/app/blobs/uploads/?digest=${f#*:}" -o /dev/null
    done
    curl -fsS -X PUT -H "Content-Type: application/vnd.oci.image.manifest.v1+json" --data-binary "$manifest" "$url/v2/bench/app/manifests/v1" -o /dev/null
    m=$(wrk -t2 -c8 -d"${secs}s" "$url/v2/bench/app/manifests/v1" | awk '/Requests\/sec/ {print $2}')
    b=$(wrk -t2 -c8 -d"${secs}s" "$url/v2/bench/app/blobs/$layer" | awk '/Requests\/sec/ {print $2}')
    rss=$(awk '/VmHWM/ {print $2}' "/proc/$pid/status")
    kill "$pid"; wait "$pid" || true; pid=
    echo "$name round $r: manifest GET $m req/s, blob GET $b req/s, peak RSS $rss kB"
  done
done
