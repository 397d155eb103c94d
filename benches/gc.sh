#!/usr/bin/env bash
# Garbage collection, Outpost's online pass against distribution's (Debian's docker-registry)
# offline `registry garbage-collect`, on the same content: IMAGES images (default 2000) in 20
# repositories, each a manifest, a config and 4 layers of 4-16 KiB random bytes, pushed over
# HTTP; then half the manifests deleted by digest, so half the blobs are garbage. Outpost
# (gcGracePeriod 0s) runs a dry run and a pass (POST /admin/gc) while 4 threads GET manifests
# and HEAD blobs of kept images; distribution is stopped and collected. Prints each pass's
# wall time, Outpost's longest writer hold, GET latency before and during the pass, bytes the
# pass wrote (/proc/PID/io), blobs and store size left, and checks that kept images still pull
# and deleted ones do not. Quote ratios: the machine is shared.
#
# usage: benches/gc.sh [IMAGES]   (default 2000; needs docker-registry, curl, python3, cargo;
#        OUTPOST_BIN=FILE benchmarks that binary instead of building one)
set -euo pipefail
# shellcheck source=lib.sh source-path=SCRIPTDIR
source "$(dirname "$0")/lib.sh"
n=${1:-2000}
command -v docker-registry >/dev/null ||
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry; }
if [[ -n ${OUTPOST_BIN:-} ]]; then bin=$OUTPOST_BIN; else build_release; bin=${CARGO_TARGET_DIR:-$top/target}/release/outpost; fi
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-gc.XXXXXX")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
py=$work/gcb.py
cat >"$py" <<'PY'
import concurrent.futures, hashlib, http.client, json, os, random, subprocess, sys, threading, time
from urllib.parse import urlsplit
MT, CT, LT = ("application/vnd.oci.image.manifest.v1+json", "application/vnd.oci.image.config.v1+json",
              "application/vnd.oci.image.layer.v1.tar+gzip")
dig = lambda b: "sha256:" + hashlib.sha256(b).hexdigest()

def image(i, n):  # the same bytes on every call: image i of n
    repos, rng = min(20, n), random.Random(i)
    layers = [rng.randbytes(rng.randint(4096, 16384)) for _ in range(4)]
    cfg = json.dumps({"architecture": "amd64", "os": "linux", "config": {"Labels": {"i": str(i)}},
                      "rootfs": {"type": "layers", "diff_ids": [dig(l) for l in layers]}}).encode()
    desc = lambda t, b: {"mediaType": t, "digest": dig(b), "size": len(b)}
    man = json.dumps({"schemaVersion": 2, "mediaType": MT, "config": desc(CT, cfg),
                      "layers": [desc(LT, l) for l in layers]}).encode()
    return {"repo": f"gcbench/r{i % repos}", "tag": f"t{i}", "blobs": [cfg] + layers, "man": man,
            "digest": dig(man), "garbage": (i // repos) % 2 == 1}

class Conn:  # one keep-alive connection
    def __init__(s, base):
        u = urlsplit(base); s.c = http.client.HTTPConnection(u.hostname, u.port, timeout=120)
    def req(s, method, path, body=None, headers={}, want=None):
        s.c.request(method, path, body, headers)
        r = s.c.getresponse(); data = r.read()
        if want and r.status != want:
            raise SystemExit(f"{method} {path}: {r.status} (want {want}) {data[:200]!r}")
        return r.status, r.headers, data

def each(n, f, threads=4):  # f(conn, image) for every image, over a few connections
    def part(k, base=sys.argv[2]):
        c = Conn(base)
        for i in range(k, n, threads): f(c, image(i, n))
    with concurrent.futures.ThreadPoolExecutor(threads) as ex:
        for fut in [ex.submit(part, k) for k in range(threads)]: fut.result()

def push(c, im):
    for b in im["blobs"]:
        loc = urlsplit(c.req("POST", f"/v2/{im['repo']}/blobs/uploads/", want=202)[1]["Location"])
        c.req("PUT", f"{loc.path}?{loc.query + '&' if loc.query else ''}digest={dig(b)}", b,
              {"Content-Type": "application/octet-stream"}, want=201)
    c.req("PUT", f"/v2/{im['repo']}/manifests/{im['tag']}", im["man"], {"Content-Type": MT}, want=201)

def delete(c, im):
    if im["garbage"]: c.req("DELETE", f"/v2/{im['repo']}/manifests/{im['digest']}", want=202)

def load(base, n, out, stop):  # GET manifests and HEAD blobs of kept images until `stop` exists
    kept = [image(i, n) for i in range(min(n, 400)) if not image(i, n)["garbage"]][:40]
    recs = []
    def loop(k):
        c, rng = Conn(base), random.Random(k)
        while not os.path.exists(stop):
            im = rng.choice(kept)
            for m, p, h in (("GET", f"/v2/{im['repo']}/manifests/{im['tag']}", {"Accept": MT}),
                            ("HEAD", f"/v2/{im['repo']}/blobs/{dig(im['blobs'][1])}", {})):
                t = time.time()
                try: st = c.req(m, p, headers=h)[0]
                except (OSError, http.client.HTTPException): st, c = 0, Conn(base)
                recs.append((t, time.time() - t, st))
    ts = [threading.Thread(target=loop, args=(k,)) for k in range(4)]
    for t in ts: t.start()
    for t in ts: t.join()
    with open(out, "w") as f:
        for r in recs: f.write("%.6f %.6f %d\n" % r)

def lat(out, t0, t1, t2):  # p50 p99 before [t0,t1), p50 p99 max and requests during [t1,t2], errors
    recs = [l.split() for l in open(out)]
    pick = lambda a, b: sorted(float(d) * 1e3 for t, d, _ in recs if a <= float(t) < b)
    q = lambda v, p: v[min(len(v) - 1, int(len(v) * p))] if v else float("nan")
    b, d = pick(float(t0), float(t1)), pick(float(t1), float(t2))
    print(f"{q(b, .5):.2f} {q(b, .99):.2f} {q(d, .5):.2f} {q(d, .99):.2f} {max(d, default=0):.2f} {len(d)}",
          sum(1 for r in recs if r[2] not in ("200",)))

def check(c, n):  # ~40 images: kept ones pull intact, deleted ones' manifest and blobs are gone
    seen = {True: [0, 0], False: [0, 0]}
    for i in range(0, n, max(1, n // 40)):
        im = image(i, n); r = im["repo"]; s = seen[im["garbage"]]; s[1] += 1
        if im["garbage"]:
            s[0] += c.req("GET", f"/v2/{r}/manifests/{im['digest']}", headers={"Accept": MT})[0] == 404 and \
                all(c.req("HEAD", f"/v2/{r}/blobs/{dig(b)}")[0] == 404 for b in im["blobs"])
        else:
            s[0] += c.req("GET", f"/v2/{r}/manifests/{im['tag']}", headers={"Accept": MT})[2] == im["man"] and \
                all(c.req("GET", f"/v2/{r}/blobs/{dig(b)}")[2] == b for b in im["blobs"])
    print("%d/%d kept pull, %d/%d deleted gone" % (*seen[False], *seen[True]))

def run(log, *cmd):  # wall s, bytes written (ru_oublock), max RSS KiB, CPU s of a command
    t = time.time(); p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read(); _, st, ru = os.wait4(p.pid, 0)  # its log through a pipe: not its writes
    open(log, "wb").write(out)
    if st: raise SystemExit(f"{cmd[0]} failed ({st}); see {log}")
    print(f"{time.time() - t:.2f} {ru.ru_oublock * 512} {ru.ru_maxrss} {ru.ru_utime + ru.ru_stime:.2f}")

def garbage(n): print(sum(i // min(20, int(n)) % 2 for i in range(int(n))))

def report(path):  # seconds, writer transactions, longest and total hold ms, what went
    r = json.load(open(path)); w = r["writer"]; k = lambda x: len(r[x])
    print(f"{r['seconds']:.3f} {w['transactions']} {w['longestMs']:.2f} {w['totalMs']:.1f} {k('manifests')}",
          k("blobLinks"), k("blobs"), k("repositories"), r["bytesFreed"], r["skipped"], r["completed"])

mode, a = sys.argv[1], sys.argv[2:]
if mode in ("push", "delete"): each(int(a[1]), globals()[mode])
elif mode == "check": check(Conn(a[0]), int(a[1]))
elif mode == "load": load(a[0], int(a[1]), a[2], a[3])
else: globals()[mode](*a)
PY
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
written() { awk '/^write_bytes/ {print $2}' "/proc/$1/io"; }
up() { for _ in $(seq 100); do curl -fs -o /dev/null "$1/v2/" && return; sleep 0.05; done; return 1; }
mib() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }
stat_blobs() { curl -fs "$1/admin/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["store"]["blobs"])'; }

# Outpost: push, delete half, dry run, then the pass under a load of small GETs
o=$work/o; mkdir -p "$o"; port=$(free_port); base=http://127.0.0.1:$port
echo '{"gcGracePeriod":"0s","gcInterval":"off"}' >"$work/o.json"
RUST_LOG=info "$bin" serve --listen "127.0.0.1:$port" --data-dir "$o" --config "$work/o.json" 2>"$work/o.log" &
pid=$!; pids+=("$pid"); up "$base"
t=$(now); python3 "$py" push "$base" "$n"; o_push=$(since "$t")
python3 "$py" delete "$base" "$n"
o_blobs0=$(stat_blobs "$base"); o_size0=$(stat -c %s "$o/outpost.redb"); sync; sleep 1
t=$(now); curl -fsS -X POST "$base/admin/gc?dryRun=true" >"$work/dry.json"; o_dry=$(since "$t")
python3 "$py" load "$base" "$n" "$work/lat" "$work/stop" & lpid=$!; pids+=("$lpid")
sleep 5; sync; w0=$(written "$pid"); t1=$(now)
curl -fsS -X POST "$base/admin/gc" >"$work/gc.json"; t2=$(now); o_wall=$(since "$t1")
sync; w1=$(written "$pid"); sleep 1; touch "$work/stop"; wait "$lpid"
read -r p50b p99b p50d p99d maxd nd errs < <(python3 "$py" lat "$work/lat" "$(awk -v t="$t1" 'BEGIN { printf "%.6f", t - 4 }')" "$t1" "$t2")
read -r secs txs longest total gm gl gb gr freed skipped completed < <(python3 "$py" report "$work/gc.json")
read -r dm dl db _ < <(python3 "$py" report "$work/dry.json" | cut -d' ' -f5-)
o_check=$(curl -fsS "$base/admin/check" | python3 -c 'import json, sys; r = json.load(sys.stdin); print("ok" if r["ok"] else r["problems"])')
o_pull=$(python3 "$py" check "$base" "$n")
o_blobs1=$(stat_blobs "$base"); o_size1=$(stat -c %s "$o/outpost.redb")
o_du=$("$bin" du --data-dir "$o" 2>/dev/null | tail -n 1)
kill "$pid"; wait "$pid" 2>/dev/null || true
"$bin" compact --data-dir "$o" >/dev/null 2>&1; o_size2=$(stat -c %s "$o/outpost.redb")

# distribution: the same content and deletions, then stopped for its garbage-collect
d=$work/d; dport=$(free_port); dbase=http://127.0.0.1:$dport; cfg=$harness/reference/distribution-config.yml
dpid=$("$harness/reference/start-distribution.sh" "$d" "127.0.0.1:$dport" "$work/d.log"); pids+=("$dpid")
t=$(now); python3 "$py" push "$dbase" "$n"; d_push=$(since "$t")
python3 "$py" delete "$dbase" "$n"
kill "$dpid"; while kill -0 "$dpid" 2>/dev/null; do sleep 0.05; done
dblobs() { find "$d/docker/registry/v2/blobs" -name data | wc -l; }
export REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=$d
d_blobs0=$(dblobs); d_size0=$(du -sb "$d" | cut -f1); sync; sleep 1
read -r d_dry _ < <(python3 "$py" run "$work/d-dry.log" docker-registry garbage-collect --dry-run "$cfg")
read -r d_wall d_w d_rss d_cpu < <(python3 "$py" run "$work/d-gc.log" docker-registry garbage-collect "$cfg")
d_blobs1=$(dblobs); d_size1=$(du -sb "$d" | cut -f1)
t=$(now); dpid=$("$harness/reference/start-distribution.sh" "$d" "127.0.0.1:$dport" "$work/d.log"); pids+=("$dpid")
d_restart=$(since "$t"); d_pull=$(python3 "$py" check "$dbase" "$n")

garbage=$(python3 "$py" garbage "$n")
printf 'gc bench: %d repos, %d manifests (%d deleted), %d blobs (%d garbage); push took %ss outpost, %ss distribution\n' \
  $((n < 20 ? n : 20)) "$n" "$garbage" $((5 * n)) $((5 * garbage)) "$o_push" "$d_push"
row() { printf '%-26s %-40s %s\n' "$@"; }
row "" "outpost (online)" "distribution (offline)"
row "pass wall s" "$o_wall (report $secs)" "$d_wall (cpu $d_cpu, max RSS $((d_rss / 1024)) MiB)"
row "dry run s" "$o_dry" "$d_dry"
row "longest writer hold ms" "$longest" "whole pass (registry stopped)"
row "writer txs / total ms" "$txs / $total" "-"
row "GET p50/p99 ms before" "$p50b / $p99b" "-"
row "GET p50/p99/max ms during" "$p50d / $p99d / $maxd ($nd reqs, $errs errors)" "unavailable: $d_wall s + restart $d_restart s"
row "p99 during/before" "$(awk -v a="$p99d" -v b="$p99b" 'BEGIN { printf "%.1fx", a / b }')" "-"
row "bytes written by pass" "$(mib $((w1 - w0)))" "$(mib "$d_w")"
row "deleted: manifests / repos" "$gm / $gr (dry run $dm)" "already gone (DELETE by digest)"
row "deleted: links / blobs" "$gl / $gb (dry run $dl / $db)" "- / $((d_blobs0 - d_blobs1))"
row "bytes freed (reported)" "$(mib "$freed") (skipped $skipped, completed $completed)" "-"
row "blobs before/after" "$o_blobs0 / $o_blobs1" "$d_blobs0 / $d_blobs1 (incl. manifests)"
row "store size before/after" "$(mib "$o_size0") / $(mib "$o_size1") (compact $(mib "$o_size2"))" "$(mib "$d_size0") / $(mib "$d_size1")"
row "after: check / pulls" "$o_check / $o_pull" "- / $d_pull"
echo "outpost du: $o_du"
