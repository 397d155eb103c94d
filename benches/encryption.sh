#!/usr/bin/env bash
# What encryption at rest costs: raw PUT then GET of one settled 1 GiB blob into a plaintext,
# an AES-256-GCM and a ChaCha20-Poly1305 repository of Outpost (a fresh store each), with
# distribution (Debian's docker-registry, plaintext) in the same rounds. Prints MB/s and the
# registry's CPU seconds per transfer; quote ratios, the machine is shared.
#
# usage: benches/encryption.sh [ROUNDS]   (default 3; needs docker-registry, curl, python3, cargo)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rounds=${1:-3}
build_release
work=$(mktemp -d /tmp/outpost-enc.XXXXXX)
trap 'rm -rf "$work"' EXIT
settled_blob "$work"
"$top/target/release/outpost" key generate "$work/master.key" >/dev/null
cat >"$work/outpost.json" <<JSON
{"masterKeyFile": "$work/master.key",
 "encryption": [{"repositories": "aes/*", "key": "aes", "algorithm": "aes-256-gcm"},
                {"repositories": "chacha/*", "key": "chacha", "algorithm": "chacha20-poly1305"}]}
JSON

measure() { # label pid base repo
  local c0 t0 t1 c1 c2 get0 get1
  c0=$(cpu "$2"); t0=$(date +%s.%N)
  "$harness/blob_upload.sh" "$3" "$4" "$blob" "$digest"
  t1=$(date +%s.%N); c1=$(cpu "$2")
  get0=$(date +%s.%N); curl -fsS -o /dev/null "$3/v2/$4/blobs/$digest"
  get1=$(date +%s.%N); c2=$(cpu "$2")
  python3 -c "import sys; l,t0,t1,g0,g1,c0,c1,c2=sys.argv[1:]; t0,t1,g0,g1,c0,c1,c2=map(float,(t0,t1,g0,g1,c0,c1,c2)); \
print(f'{l:20} PUT {1073.741824/(t1-t0):6.0f} MB/s (cpu {(c1-c0)/100:.2f} s)  GET {1073.741824/(g1-g0):6.0f} MB/s (cpu {(c2-c1)/100:.2f} s)')" \
    "$1" "$t0" "$t1" "$get0" "$get1" "$c0" "$c1" "$c2"
}

for _ in $(seq "$rounds"); do
  sync; rm -rf "$work/d"; port=$(free_port)
  pid=$("$harness/reference/start-distribution.sh" "$work/d" "127.0.0.1:$port" "$work/d.log")
  measure distribution "$pid" "http://127.0.0.1:$port" raw/blob; kill "$pid"; wait "$pid" 2>/dev/null || true
  for repo in plain/blob aes/blob chacha/blob; do
    sync; rm -rf "$work/o"; port=$(free_port)
    start_outpost "$work/o" "$port" /dev/null --config "$work/outpost.json"
    measure "outpost ${repo%/blob}" "$pid" "http://127.0.0.1:$port" "$repo"
    kill "$pid"; wait "$pid" 2>/dev/null || true
  done
done
