#!/usr/bin/env bash
# Small authenticated GETs vs anonymous ones, Outpost and distribution in one sitting.
#
# usage: benches/auth.sh [ROUNDS] [SECONDS]   (default 3 rounds of 10 s per case)
# Each case: wrk (2 threads, 8 keep-alive connections) GETs one 1 KiB blob.
#   outpost open      auth off
#   outpost anonymous auth on, the repository pullable by anonymous, no credentials
#   outpost token     auth on, a bearer token from /token
#   outpost basic     auth on, Basic credentials on every request (verified once, cached)
#   distribution anon / distribution basic (htpasswd: bcrypt on every request)
# Prints requests/s per case (median of the rounds) and ratios to the anonymous case.
# Needs: cargo, wrk, docker-registry, apache2-utils (htpasswd), curl, python3.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rounds=${1:-3}
secs=${2:-10}
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v docker-registry >/dev/null || missing+=(docker-registry)
command -v htpasswd >/dev/null || missing+=(apache2-utils)
if ((${#missing[@]})); then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}"
fi
build_release
bin=$top/target/release/outpost
work=$(mktemp -d /tmp/outpost-auth-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

head -c 1024 /dev/urandom >"$work/small.bin"
digest=sha256:$(sha256sum "$work/small.bin" | cut -d' ' -f1)
pass=bench-password-1
b64=$(printf 'bench:%s' "$pass" | base64 -w0)

# push URL AUTH_HEADER...: uploads small.bin into bench/app at URL.
push() {
  local url=$1; shift
  local loc
  loc=$(curl -fsS -X POST "$@" -D - -o /dev/null "$url/v2/bench/app/blobs/uploads/" |
    tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case $loc in http*) ;; *) loc=$url$loc ;; esac
  local sep='?'; [[ $loc == *\?* ]] && sep='&'
  curl -fsS -X PUT "$@" --data-binary @"$work/small.bin" -H 'Content-Type: application/octet-stream' \
    "$loc${sep}digest=$digest" -o /dev/null
}

# Outpost, auth off.
p_open=$(free_port)
start_outpost "$work/open" "$p_open" "$work/open.log"; pids+=("$pid")
push "http://127.0.0.1:$p_open"

# Outpost, auth on: bench/* pullable by anyone, pushable by bench.
cat >"$work/auth.json" <<EOF
{"dataDir": "$work/auth", "auth": {"admins": []},
 "access": [{"repositories": "bench/*", "pull": ["anonymous"], "push": ["bench"]}]}
EOF
echo "$pass" | "$bin" user add bench --config "$work/auth.json" >/dev/null 2>&1
p_auth=$(free_port)
start_outpost "$work/auth" "$p_auth" "$work/auth.log" --config "$work/auth.json"; pids+=("$pid")
push "http://127.0.0.1:$p_auth" -H "Authorization: Basic $b64"
token=$(curl -fsS -H "Authorization: Basic $b64" \
  "http://127.0.0.1:$p_auth/token?service=outpost&scope=repository:bench/app:pull" |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')

# distribution, anonymous and with htpasswd.
p_dist=$(free_port)
dpid=$("$harness/reference/start-distribution.sh" "$work/dist" "127.0.0.1:$p_dist" "$work/dist.log"); pids+=("$dpid")
push "http://127.0.0.1:$p_dist"
htpasswd -Bbc "$work/htpasswd" bench "$pass" 2>/dev/null
sed 's/^http:/auth:\n  htpasswd:\n    realm: bench\n    path: HTPASSWD\nhttp:/' \
  "$harness/reference/distribution-config.yml" | sed "s#HTPASSWD#$work/htpasswd#" >"$work/dist-auth.yml"
p_dauth=$(free_port)
REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=$work/dauth REGISTRY_HTTP_ADDR=127.0.0.1:$p_dauth \
  docker-registry serve "$work/dist-auth.yml" >"$work/dauth.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$p_dauth/v2/" && break; sleep 0.1; done
push "http://127.0.0.1:$p_dauth" -H "Authorization: Basic $b64"

cases=(
  "outpost-open|http://127.0.0.1:$p_open|"
  "outpost-anonymous|http://127.0.0.1:$p_auth|"
  "outpost-token|http://127.0.0.1:$p_auth|Bearer $token"
  "outpost-basic|http://127.0.0.1:$p_auth|Basic $b64"
  "distribution-anonymous|http://127.0.0.1:$p_dist|"
  "distribution-basic|http://127.0.0.1:$p_dauth|Basic $b64"
)
# Every case must answer 200 before it is timed.
for c in "${cases[@]}"; do
  IFS='|' read -r name url auth <<<"$c"
  args=(); [[ -n $auth ]] && args=(-H "Authorization: $auth")
  code=$(curl -s -o /dev/null -w '%{http_code}' "${args[@]}" "$url/v2/bench/app/blobs/$digest")
  [[ $code == 200 ]] || { echo "$name answers $code" >&2; exit 1; }
done

results=$work/results
for r in $(seq "$rounds"); do
  for c in "${cases[@]}"; do
    IFS='|' read -r name url auth <<<"$c"
    args=(); [[ -n $auth ]] && args=(-H "Authorization: $auth")
    rps=$(wrk -t2 -c8 -d"${secs}s" "${args[@]}" "$url/v2/bench/app/blobs/$digest" |
      awk '/Requests\/sec/{print $2}')
    echo "round $r $name $rps req/s" >&2
    echo "$name $rps" >>"$results"
  done
done
python3 - "$results" <<'EOF'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    name, rps = line.split()
    rows.setdefault(name, []).append(float(rps))
med = {k: statistics.median(v) for k, v in rows.items()}
print(f"{'case':<24} {'req/s (median)':>15} {'vs own anonymous':>17} {'vs distribution anon':>21}")
for name, v in med.items():
    own = med["outpost-anonymous"] if name.startswith("outpost") else med["distribution-anonymous"]
    print(f"{name:<24} {v:>15.0f} {v / own:>16.2f}x {v / med['distribution-anonymous']:>20.2f}x")
EOF
