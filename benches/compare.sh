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
here=$(cd "$(dirname "$0")" && pwd)
top=$(dirname "$here")
harness=${OUTPOST_BENCH_HARNESS:-$top/../shared/bench}
[[ -x $harness/bench.sh ]] || { echo "compare.sh: no harness at $harness" >&2; exit 2; }
scale=1
if [[ ${1:-} == --scale ]]; then scale=$2; shift 2; fi

missing=()
command -v skopeo >/dev/null || missing+=(skopeo)
command -v docker-registry >/dev/null || missing+=(docker-registry)
if ((${#missing[@]})); then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
(cd "$top" && cargo build --release --locked -q)

work=$(mktemp -d /tmp/outpost-bench.XXXXXX)
runs=$here/runs
mkdir -p "$runs"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
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
mkdir -p "$work/outpost"
"$top/target/release/outpost" serve --listen "127.0.0.1:$port" --data-dir "$work/outpost" \
  2>"$work/outpost.log" &
pid=$!
pids+=("$pid")
for _ in $(seq 100); do curl -fs -o /dev/null "http://127.0.0.1:$port/v2/" && break; sleep 0.05; done
"$harness/bench.sh" --base "http://127.0.0.1:$port" --pid "$pid" --data-dir "$work/outpost" \
  --scale "$scale" --runs "$runs" --images "$work/images" --label outpost "$@" || true
new_run=$(newest_run)
kill -TERM "$pid"; wait "$pid" 2>/dev/null || true

echo
python3 "$harness/compare.py" "$ref_run" "$new_run"
echo "runs: $ref_run $new_run"
