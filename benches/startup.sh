#!/usr/bin/env bash
# Start-up time and idle memory of Outpost against distribution (Debian docker-registry), in
# one sitting: for each registry, ROUNDS starts on an empty store, timing exec → first 200 on
# GET /v2/ (polled every 0.5 ms), then the RSS 5 s later; Outpost also exec → READY=1 on
# $NOTIFY_SOCKET (what systemd waits for). Medians; quote ratios. Also the binary sizes.
# usage: benches/startup.sh [ROUNDS]   (default 15)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
rounds=${1:-15}
command -v docker-registry >/dev/null || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry; }
build_release
work=$(mktemp -d /tmp/outpost-startup.XXXXXX)
trap 'rm -rf "$work"' EXIT
python3 - "$rounds" "$work" "$top/target/release/outpost" "$harness/reference" <<'PY'
import os, socket, statistics, subprocess, sys, time, http.client, shutil
rounds, work, outpost, ref = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def first_200(port, t0, limit=10):
    while time.perf_counter() - t0 < limit:
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            c.request("GET", "/v2/"); r = c.getresponse(); r.read(); c.close()
            if r.status == 200: return time.perf_counter() - t0
        except OSError:
            time.sleep(0.0005)
    raise SystemExit("no 200 within %ss" % limit)

def rss_kib(pid):
    for line in open("/proc/%d/status" % pid):
        if line.startswith("VmRSS:"): return int(line.split()[1])

def run(name, argv_for, notify=False):
    starts, readies, rss = [], [], []
    for i in range(rounds):
        d = os.path.join(work, "%s-%d" % (name, i)); os.makedirs(d)
        port = free_port()
        sock = None
        if notify:
            path = os.path.join(d, "notify"); sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.bind(path)
        argv = argv_for(d, port); env = dict(os.environ, **({"NOTIFY_SOCKET": path} if sock else {}))
        t0 = time.perf_counter()
        p = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if sock:
            sock.settimeout(10); msg = sock.recv(4096).decode()
            assert "READY=1" in msg, msg; readies.append(time.perf_counter() - t0)
        starts.append(first_200(port, t0))
        time.sleep(5); rss.append(rss_kib(p.pid))
        p.terminate(); p.wait(30); shutil.rmtree(d)
    med = lambda v: statistics.median(v)
    r = {"start_ms": med(starts) * 1000, "rss_mib": med(rss) / 1024,
         "start_min_ms": min(starts) * 1000, "start_max_ms": max(starts) * 1000}
    if readies: r["ready_ms"] = med(readies) * 1000
    return r

def distribution(d, port):
    os.environ["REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY"] = d
    os.environ["REGISTRY_HTTP_ADDR"] = "127.0.0.1:%d" % port
    return ["docker-registry", "serve", os.path.join(ref, "distribution-config.yml")]

o = run("outpost", lambda d, port: [outpost, "serve", "--listen", "127.0.0.1:%d" % port, "--data-dir", d], notify=True)
r = run("distribution", distribution)
size = lambda p: os.path.getsize(p) / 2**20
print("| | Outpost | distribution | Outpost / distribution |")
print("|---|---|---|---|")
print("| start-up to first 200 on /v2/, median ms (min–max) | %.1f (%.1f–%.1f) | %.1f (%.1f–%.1f) | %.2f× |" % (
    o["start_ms"], o["start_min_ms"], o["start_max_ms"], r["start_ms"], r["start_min_ms"], r["start_max_ms"], o["start_ms"] / r["start_ms"]))
print("| start-up to READY=1, median ms | %.1f | – | |" % o["ready_ms"])
print("| idle RSS 5 s after start, MiB | %.1f | %.1f | %.2f× |" % (o["rss_mib"], r["rss_mib"], o["rss_mib"] / r["rss_mib"]))
print("| binary size, MiB (stripped) | %.2f | %.2f | %.2f× |" % (size(outpost), size(shutil.which("docker-registry")), size(outpost) / size(shutil.which("docker-registry"))))
print("(%d rounds each, empty store)" % rounds)
PY
