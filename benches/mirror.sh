#!/usr/bin/env bash
# Mirroring, Outpost against distribution in one sitting, on ../shared/bench's fleet scenario
# (5 services on a shared 300 MiB base: 600 MiB of unique blobs) and its big image (one
# 1 GiB layer). Prints MB/s of unique blob bytes, and peak RSS of the Outpost process doing
# the work (the CLI for offline work, the registry for work through HTTP).
#
#   sync    outpost mirror run: Outpost A -> B over HTTP  | skopeo copy A -> distribution
#           (B stopped: the CLI's RSS; B running: the registry's)
#   export  outpost export: B's store -> OCI layout tar    | skopeo copy distribution -> oci:
#   import  outpost import: that tar -> a fresh store      | skopeo copy oci: -> a fresh distribution
#   import via HTTP: the tar -> a running Outpost (the registry's RSS)
#
# distribution has no mirroring of its own: skopeo is how one fills or drains it.
# usage: benches/mirror.sh [SCALE]   (default 1; needs skopeo, docker-registry, curl, python3)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
scale=${1:-1}
build_release
bin=$top/target/release/outpost
imgs=$top/target/bench-images
python3 "$harness/gen_images.py" --scenarios fleet,big --scale "$scale" "$imgs" >/dev/null
work=$(mktemp -d /tmp/outpost-mirror.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# images SCENARIO: "layout tag repo" per image.
images() {
  python3 -c 'import json,sys
for i in json.load(open(sys.argv[1]))["images"]:
    if i["scenario"] == sys.argv[2]: print(i["layout"], i["tag"], i["repo"])' "$imgs/images.json" "$1"
}
mb() { du -sb --apparent-size "$imgs/$1/blobs" | cut -f1; }
hwm_reset() { echo 5 >"/proc/$1/clear_refs"; }
hwm() { awk '/^VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }
sk() { skopeo --insecure-policy copy --src-tls-verify=false --dest-tls-verify=false -q "$@"; }
start_dist() { # DIR PORT: leaves the PID in $pid
  pid=$("$harness/reference/start-distribution.sh" "$1" "127.0.0.1:$2" "$1.log")
}
# run LABEL BYTES CMD...: times CMD; prints seconds, MB/s and CMD's own peak RSS.
run() {
  local label=$1 bytes=$2; shift 2
  local t0 t1 rss
  t0=$(date +%s.%N)
  /usr/bin/time -f %M -o "$work/rss" "$@" >"$work/out" 2>&1 || { cat "$work/out"; exit 1; }
  t1=$(date +%s.%N)
  rss=$(cat "$work/rss")
  python3 -c 'import sys; l,b,t0,t1,r=sys.argv[1:]; s=float(t1)-float(t0)
print(f"{l:<44} {s:7.2f} s {int(b)/s/1e6:8.1f} MB/s  peak RSS {int(r)/1024:6.1f} MiB")' \
    "$label" "$bytes" "$t0" "$t1" "$rss"
}

for scenario in fleet big; do
  bytes=$(mb "$scenario")
  echo "== $scenario: $((bytes / 1048576)) MiB of blobs"
  s=$work/$scenario
  mkdir -p "$s"
  pa=$(free_port); start_outpost "$s/a" "$pa" "$s/a.log"; a=$pid; pids+=("$a")
  repos=()
  while read -r layout tag repo; do
    sk "oci:$layout:$tag" "docker://127.0.0.1:$pa/$repo:latest"
    repos+=("$repo")
  done < <(images "$scenario")
  sync
  list=$(printf '"%s",' "${repos[@]}")
  cat >"$s/b.json" <<EOF
{"dataDir": "$s/b", "mirrors": [{"name": "a", "upstream": "http://127.0.0.1:$pa", "repositories": [${list%,}]}]}
EOF
  mkdir -p "$s/b"
  hwm_reset "$a"
  run "sync   outpost mirror run (B stopped)" "$bytes" "$bin" mirror run a --config "$s/b.json" --listen 127.0.0.1:1
  echo "       upstream A's peak RSS meanwhile: $(hwm "$a") MiB"

  sed "s|\"$s/b\"|\"$s/g\"|" "$s/b.json" >"$s/g.json"
  pg=$(free_port); start_outpost "$s/g" "$pg" "$s/g.log" --config "$s/g.json"; g=$pid; pids+=("$g")
  hwm_reset "$g"
  run "sync   outpost mirror run (B running)" "$bytes" "$bin" mirror run a --config "$s/g.json"
  echo "       the running registry's peak RSS meanwhile: $(hwm "$g") MiB"
  kill "$g"

  pd=$(free_port); start_dist "$s/d" "$pd"; d=$pid; pids+=("$d")
  hwm_reset "$d"
  run "sync   skopeo copy A -> distribution" "$bytes" bash -c "
    for r in ${repos[*]}; do
      skopeo --insecure-policy copy -q --src-tls-verify=false --dest-tls-verify=false \
        docker://127.0.0.1:$pa/\$r:latest docker://127.0.0.1:$pd/\$r:latest
    done"
  echo "       distribution's peak RSS meanwhile: $(hwm "$d") MiB"

  refs=()
  for r in "${repos[@]}"; do refs+=("$r:latest"); done
  run "export outpost export (store -> tar)" "$bytes" \
    "$bin" export "${refs[@]}" -o "$s/export.tar" --data-dir "$s/b" --listen 127.0.0.1:1
  hwm_reset "$d"
  run "export skopeo copy distribution -> oci:" "$bytes" bash -c "
    for r in ${repos[*]}; do
      skopeo --insecure-policy copy -q --src-tls-verify=false \
        docker://127.0.0.1:$pd/\$r:latest oci:$s/dexport:\$r
    done"

  run "import outpost import (tar -> fresh store)" "$bytes" \
    "$bin" import "$s/export.tar" --data-dir "$s/c" --listen 127.0.0.1:1
  pe=$(free_port); start_dist "$s/e" "$pe"; e=$pid; pids+=("$e")
  hwm_reset "$e"
  run "import skopeo copy oci: -> fresh distribution" "$bytes" bash -c "
    while read -r layout tag repo; do
      skopeo --insecure-policy copy -q --dest-tls-verify=false \
        oci:\$layout:\$tag docker://127.0.0.1:$pe/\$repo:latest
    done < <(python3 -c 'import json,sys
for i in json.load(open(sys.argv[1]))[\"images\"]:
    if i[\"scenario\"] == sys.argv[2]: print(i[\"layout\"], i[\"tag\"], i[\"repo\"])' $imgs/images.json $scenario)"
  echo "       distribution's peak RSS meanwhile: $(hwm "$e") MiB"

  pf=$(free_port); start_outpost "$s/f" "$pf" "$s/f.log"; f=$pid; pids+=("$f")
  hwm_reset "$f"
  run "import outpost import via HTTP (running)" "$bytes" \
    "$bin" import "$s/export.tar" --server "http://127.0.0.1:$pf"
  echo "       the running registry's peak RSS meanwhile: $(hwm "$f") MiB"
  for p in "$a" "$d" "$e" "$f"; do kill "$p"; done
  pids=()
  rm -rf "$s"
done
