#!/usr/bin/env bash
# Benchmark Outpost against distribution (Debian's docker-registry) in one sitting with the
# shared harness (../shared/bench), then print both runs side by side. Quote ratios: the
# machines are shared and noisy.
#
# usage: benches/compare.sh [--scale S] [extra bench.sh args...]
#   --scale 1 (default) pushes ~3 GB through skopeo per registry (~2-3 min each on 2 cores);
#   --scale 0.01 is a quick smoke run.
# Needs: cargo, skopeo, docker-registry, curl, python3 (installed with apt if missing, as root).
# Writes runs under benches/runs/ (ignored by git).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
[[ -x $harness/bench.sh ]] || { echo "compare.sh: no harness at $harness" >&2; exit 2; }
scale=1
if [[ ${1:-} == --scale ]]; then scale=$2; shift 2; fi

missing=()
command -v skopeo >/dev/null || missing+=(skopeo)
command -v docker-registry >/dev/null || missing+=(docker-registry)
if ((${#missing[@]})); then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
build_release

work=$(mktemp -d /tmp/outpost-bench.XXXXXX)
runs=$here/runs
mkdir -p "$runs"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

newest_run() { ls -1td "$runs"/*/ | head -n 1; }

# distribution
port=$(free_port)
pid=$("$harness/reference/start-distribution.sh" "$work/distribution" "127.0.0.1:$port" "$work/distribution.log")
pids+=("$pid")
"$harness/bench.sh" --base "http://127.0.0.1:$port" --pid "$pid" --data-dir "$work/distribution" \
  --scale "$scale" --runs "$runs" --images "$work/images" --label distribution --physical "$@" || true
ref_run=$(newest_run)
kill "$pid"; wait "$pid" 2>/dev/null || true
sleep 1

# outpost
port=$(free_port)
start_outpost "$work/outpost" "$port" "$work/outpost.log"
pids+=("$pid")
"$harness/bench.sh" --base "http://127.0.0.1:$port" --pid "$pid" --data-dir "$work/outpost" \
  --scale "$scale" --runs "$runs" --images "$work/images" --label outpost "$@" || true
new_run=$(newest_run)
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true

echo
python3 "$harness/compare.py" "$ref_run" "$new_run"
echo "runs: $ref_run $new_run"
