#!/usr/bin/env bash
# Where Outpost's CPU goes on the data path: perf profiles of one raw 1 GiB PUT and one GET
# (curl), printed as CPU seconds per GB by category (hashing, copies, redb, HTTP, sealing,
# kernel network and filesystem work, allocator). Needs perf (Debian linux-perf), curl, cargo.
#
# usage: benches/profile.sh [REPO]   REPO: a repository name; an `enc/*` name with a config
#   that encrypts it measures sealing (OUTPOST_ARGS="--config FILE" passes serve options).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
repo=${1:-raw}
command -v perf >/dev/null || { apt-get update -q && apt-get install -y -q linux-perf; }
# Symbols: a release build with debug info, not stripped, in its own target directory.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$top/target/profile}
(cd "$top" && CARGO_PROFILE_RELEASE_DEBUG=1 CARGO_PROFILE_RELEASE_STRIP=false cargo build --release --locked -q)
work=$(mktemp -d /tmp/outpost-profile.XXXXXX)
trap 'kill "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT
settled_blob "$work"
port=$(free_port)
# shellcheck disable=SC2086 # OUTPOST_ARGS is a list of serve options
start_outpost "$work/data" "$port" "$work/serve.log" ${OUTPOST_ARGS:-}
base="http://127.0.0.1:$port"

profile() { # NAME COMMAND...: perf record of the registry while COMMAND runs
  local name=$1; shift
  perf record -q -F 1999 -g -p "$pid" -o "$work/$name.data" 2>/dev/null & local rec=$!
  sleep 0.5
  local c0 c1; c0=$(cpu "$pid")
  "$@"
  c1=$(cpu "$pid")
  kill -INT "$rec"; wait "$rec" 2>/dev/null || true
  echo "$name: registry CPU $(awk -v c=$((c1 - c0)) 'BEGIN{printf "%.2f", c/100/1.073741824}') s/GB"
  perf report -i "$work/$name.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null |
    python3 "$here/profile_buckets.py" "$(awk -v c=$((c1 - c0)) 'BEGIN{print c/100/1.073741824}')"
}
profile put "$harness/blob_upload.sh" "$base" "$repo" "$blob" "$digest"
profile get curl -fsS -o /dev/null "$base/v2/$repo/blobs/$digest"
