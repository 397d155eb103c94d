#!/usr/bin/env bash
# Fleet rollout: N clients, each behind a rate-limited link, pull the same image at once while
# hostile slow-drip connections are held open and a health probe polls the registry; Outpost and
# distribution (Debian's docker-registry 2.8) in the same sitting, one after the other.
#
# usage: benches/rollout.sh [options] [-- OUTPOST_SERVE_ARGS...]
#   --clients N        pulling clients (default 200)
#   --size MiB         image size (default 100): a small config blob + --layers layers of
#                      random bytes (default 4, so 4 x 25 MiB), the same bytes for every --seed
#   --min-rate R --max-rate R   per-client link rate, curl --limit-rate syntax (K/M/G = 1024^n;
#                      defaults 1M and 4M). Client i of N gets min + (max-min)*i/(N-1), handed
#                      out in a seeded random order, so one client always has exactly min-rate
#   --drips N          hostile connections (default 8): half upload drips, half read drips
#   --drip-interval S  seconds between drip bytes (default 3)
#   --timeout S        cut the clients off S seconds after the go (default 600); they are
#                      reported, and the completion time is then a lower bound ("> S")
#   --probe-timeout S  socket timeout of one probe request (default 5)
#   --only outpost|distribution   one registry only
#   --seed N           image bytes and rate order (default 1)
#   --keep             keep the work dir (/tmp/outpost-rollout.*: image, registry logs, raw
#                      per-client/probe/drip records); results.json is always copied to
#                      benches/runs/rollout-<time>.json
#   -- ARGS            passed to `outpost serve` only (e.g. -- --workers 256)
# Smoke run: benches/rollout.sh --clients 20 --size 10   (~35 s for both registries)
# Full run:  benches/rollout.sh    (~2 min per registry that keeps up; up to --timeout if not)
# Needs: cargo, docker-registry, curl >= 7.84 (push only), python3 (stdlib). 127.0.0.1 only.
#
# One registry's run (the python below is written to the work dir as rollout.py):
#  1. push the image once with curl (monolithic POST+PUT per blob, then the manifest by tag);
#  2. open the drips, held to the end. Upload drips open an upload session (POST), then send
#     the head of a PATCH (or PUT ?digest=) with Content-Length: 1000000000 and one body byte
#     every --drip-interval s. Read drips (4 KiB receive buffer) GET the largest layer and
#     read one byte every --drip-interval s. A drip counts as closed when the registry answers
#     or closes it, or its end of the TCP connection leaves ESTABLISHED (/proc/net/tcp: a
#     slow reader never sees the FIN behind the unread data);
#  3. start the probe: every 100 ms, each on a NEW connection, GET /v2/ and HEAD the manifest
#     by tag; a fresh thread per tick, so a stalled registry piles probes up as a real monitor
#     would. A request that errs, answers non-200 or exceeds --probe-timeout fails;
#  4. one second later, the clients go at once. A client is a process (forked from the driver,
#     at nice 19: they stand in for other machines and must not starve the registry of CPU)
#     that, like a real pull, GETs the manifest by tag, then the config and each layer in
#     manifest order over one keep-alive HTTP/1.1 connection (python http.client), sha256-
#     hashing everything on the fly and checking it against the digests. Its link: reads of at
#     most 256 KiB paced to its rate, with no catch-up for time spent waiting beyond 50 ms, and
#     a 256 KiB socket receive buffer, so a slow client holds the registry's write back as a
#     slow network would. If the registry closes the idle keep-alive connection, the next
#     request is retried once on a new one (as Go's http.Transport does), and counted.
#     Not curl: curl 7.88's --limit-rate overshoots on loopback (1M gave 1.67 MiB/s, 4M
#     gave 4.99 MiB/s for a 20 MiB blob), which would make the ideal meaningless;
#  5. the registry process is sampled every 100 ms (VmRSS, threads, fds; VmHWM reset before,
#     read after, as ../shared/bench/measure.py does).
#
# Figures (per registry; the table at the end, the summaries in results.json):
#  clients ok/failed/cut off  ok = every response 200, every digest and size right
#  completion s       first client start -> last client end. "> x": clients were cut off at
#                     --timeout; "! x": some clients failed
#  ideal s            image bytes / min-rate: the time the slowest-rated client needs at its
#                     full rate, the lower bound of the completion time. (Total bytes / sum of
#                     all rates, i.e. the mean client's time, is ideal_aggregate_s in the JSON.)
#  actual / ideal     completion / ideal
#  fastest, slowest   one ok client's wall time, with its rate
#  slowdown           per ok client: its time / (image bytes / its rate); 1.0 = served at its
#                     full link rate all along. Max and median
#  max wait for first byte   the longest a client waited for the first byte of the manifest
#  reconnects         requests retried after the registry closed a keep-alive connection
#  probe p50/p99/max  latency of each probe request (connect to end of answer), over probes
#                     started while the clients ran; failed ones are included at their latency.
#                     Then p99 of both kinds in the first 10 s after the go (200 connections
#                     arriving at once) and after it
#  peak RSS           max of the 100 ms VmRSS samples and of VmHWM
#  peak threads / fds of the registry process, max of the samples
#  drips closed       how many the registry closed or answered, and when (s after opening)
#  CPU s              registry; clients; driver+probe+drips; other = everything else on the
#                     machine during the run (/proc/stat), i.e. other work skewing the figures
#
# Client-side cost (2 cores): a full run's clients pull 20 GiB and take ~31 CPU-s for it
# (~1.5 CPU-s/GiB, sha256 ~0.7 of it); driver, probe and drips ~6 CPU-s (more when a stalled
# registry piles up probe threads); the registry 12-25 CPU-s. 200 clients at 1-4 MiB/s ask for
# ~500 MiB/s at first, so for the first ~40 s the machine is CPU-bound (vmstat: 0% idle, run
# queue up to ~170 right after the go) and latencies there include CPU contention: hence the
# separate probe p99 for the first 10 s. After ~40 s demand falls with the fast clients gone,
# and the completion time is set by the 1 MiB/s clients. The clients run at nice 19 so that
# contention costs client rate (slowdown), not the registry's CPU; other work on the machine
# runs at nice 0 and does compete with the registry: read "other" before comparing.
# Quote ratios: the machine is small and shared.
set -euo pipefail
source "$(dirname "$0")/lib.sh"

clients=200 size=100 layers=4 min_rate=1M max_rate=4M drips=8 drip_interval=3
timeout=600 probe_timeout=5 only= seed=1 keep=0 serve_args=()
while (($#)); do
  case $1 in
    --clients) clients=$2; shift 2 ;;
    --size) size=$2; shift 2 ;;
    --layers) layers=$2; shift 2 ;;
    --min-rate) min_rate=$2; shift 2 ;;
    --max-rate) max_rate=$2; shift 2 ;;
    --drips) drips=$2; shift 2 ;;
    --drip-interval) drip_interval=$2; shift 2 ;;
    --timeout) timeout=$2; shift 2 ;;
    --probe-timeout) probe_timeout=$2; shift 2 ;;
    --only) only=$2; shift 2 ;;
    --seed) seed=$2; shift 2 ;;
    --keep) keep=1; shift ;;
    --) shift; serve_args=("$@"); break ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "rollout.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $only in ''|outpost|distribution) ;; *) echo "rollout.sh: --only outpost|distribution" >&2; exit 2 ;; esac
registries=(distribution outpost)
[[ -n $only ]] && registries=("$only")
command -v curl >/dev/null || { echo "rollout.sh: needs curl" >&2; exit 2; }
if [[ " ${registries[*]} " == *" distribution "* ]] && ! command -v docker-registry >/dev/null; then
  echo "rollout.sh: needs docker-registry (apt-get install docker-registry), or --only outpost" >&2
  exit 2
fi

# The registry holds a socket per client and per probe in flight (a stalled registry piles up
# probes), and some registries a second descriptor per connection.
want_fds=$((clients * 4 + 16384))
if [[ $(ulimit -n) != unlimited ]] && (($(ulimit -n) < want_fds)); then
  hard=$(ulimit -Hn)
  if [[ $hard == unlimited ]] || ((hard >= want_fds)); then ulimit -n "$want_fds"; else ulimit -n "$hard"; fi
fi

[[ " ${registries[*]} " == *" outpost "* ]] && build_release

work=$(mktemp -d /tmp/outpost-rollout.XXXXXX)
registry_pid=
cleanup() {
  [[ -n $registry_pid ]] && { kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true; }
  if [[ -s $work/results.json ]]; then
    mkdir -p "$here/runs"
    cp "$work/results.json" "$here/runs/rollout-$(date +%Y%m%d-%H%M%S).json"
  fi
  if ((keep)); then echo "work dir kept: $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
cat >"$work/rollout.py" <<'PYTHON'
"""Parts of benches/rollout.sh: image | drips | probe | run | report (stdlib only)."""
import argparse, hashlib, http.client, json, math, os, random, re, resource
import signal, socket, subprocess, sys, threading, time
from urllib.parse import urlsplit

MiB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def parse_rate(s):
    """curl --limit-rate syntax: bytes/s, or with K, M, G (powers of 1024)."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgG]?)", s)
    if not m:
        sys.exit("bad rate %r" % s)
    return int(float(m.group(1)) * {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[m.group(2).lower()])


def hostport(base):
    u = urlsplit(base)
    return u.hostname, u.port


def stop_on_term():
    ev = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: ev.set())
    return ev


def pct(xs, q):
    """Nearest-rank percentile of a sorted list."""
    if not xs:
        return None
    return xs[min(len(xs) - 1, max(0, math.ceil(q * len(xs)) - 1))]


# ---- image: config + layers of random bytes, an OCI manifest, and plan.json ------------------
def cmd_image(a):
    rnd = random.Random(a.seed)
    os.makedirs(os.path.join(a.dir, "blobs"), exist_ok=True)
    total = a.size * MiB
    sizes = [total // a.layers] * a.layers
    sizes[-1] += total - sum(sizes)
    layers = []
    for size in sizes:
        data = rnd.randbytes(size)
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        with open(os.path.join(a.dir, "blobs", digest[7:]), "wb") as f:
            f.write(data)
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": digest, "size": size})
    config = json.dumps({"architecture": "amd64", "os": "linux", "config": {},
                         "rootfs": {"type": "layers", "diff_ids": [l["digest"] for l in layers]}},
                        separators=(",", ":")).encode()
    cdigest = "sha256:" + hashlib.sha256(config).hexdigest()
    with open(os.path.join(a.dir, "blobs", cdigest[7:]), "wb") as f:
        f.write(config)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST,
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": cdigest, "size": len(config)},
                           "layers": layers}, indent=2).encode()
    with open(os.path.join(a.dir, "manifest.json"), "wb") as f:
        f.write(manifest)
    blobs = [{"digest": cdigest, "size": len(config)}] + [{"digest": l["digest"], "size": l["size"]} for l in layers]
    for b in blobs:
        b["path"] = os.path.join(a.dir, "blobs", b["digest"][7:])
    plan = {"repo": a.repo, "tag": a.tag, "manifest_digest": "sha256:" + hashlib.sha256(manifest).hexdigest(),
            "manifest_size": len(manifest), "blobs": blobs,
            "image_bytes": len(manifest) + sum(b["size"] for b in blobs)}
    with open(os.path.join(a.dir, "plan.json"), "w") as f:
        json.dump(plan, f, indent=1)


# ---- drips: hostile connections held open; which ones the registry closes, and when ----------
def server_side_states(port):
    """{client port: TCP state} of the registry's ends of loopback connections (/proc/net/tcp)."""
    states = {}
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(path).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            lport, rport = int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16)
            if lport == port:
                states[rport] = int(f[3], 16)
    return states


TCP_STATES = {1: "ESTABLISHED", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT", 7: "CLOSE",
              8: "CLOSE_WAIT", 9: "LAST_ACK", 11: "CLOSING"}


def cmd_drips(a):
    host, port = hostport(a.base)
    stop = stop_on_term()
    plan = json.load(open(a.plan))
    layer = max(plan["blobs"], key=lambda b: b["size"])["digest"]
    drips = []
    n_up = (a.n + 1) // 2
    for i in range(a.n):
        d = {"kind": None, "opened_at": None, "closed_at": None, "how": None, "bytes": 0}
        drips.append(d)
        try:
            if i < n_up:
                c = http.client.HTTPConnection(host, port, timeout=30)
                c.request("POST", "/v2/%s/blobs/uploads/" % plan["repo"])
                r = c.getresponse(); r.read(); c.close()
                loc = r.getheader("Location") or ""
                u = urlsplit(loc)
                path = u.path + ("?" + u.query if u.query else "")
                method = "PATCH" if i % 2 == 0 else "PUT"
                if method == "PUT":
                    path += ("&" if "?" in path else "?") + "digest=sha256:" + "0" * 64
                d["kind"] = "upload-" + method.lower()
                s = socket.create_connection((host, port), timeout=30)
                s.sendall(("%s %s HTTP/1.1\r\nHost: %s:%d\r\nContent-Type: application/octet-stream\r\n"
                           "Content-Length: 1000000000\r\n\r\n" % (method, path, host, port)).encode())
            else:
                d["kind"] = "read"
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.settimeout(30)
                s.connect((host, port))
                s.sendall(("GET /v2/%s/blobs/%s HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
                           % (plan["repo"], layer, host, port)).encode())
            s.setblocking(False)
            d["sock"], d["port"], d["opened_at"] = s, s.getsockname()[1], time.time()
        except OSError as e:
            d["how"], d["closed_at"] = "setup failed: %s" % e, time.time()
    print("ready", flush=True)

    def closed(d, how):
        d["closed_at"], d["how"] = time.time(), how
        d.pop("sock").close()

    next_drip = time.time() + a.interval
    while not stop.is_set():
        stop.wait(0.5)
        now = time.time()
        states = server_side_states(port)
        for d in drips:
            if "sock" not in d:
                continue
            s = d["sock"]
            try:
                if d["kind"] != "read":  # anything the registry sends back ends the upload
                    try:
                        got = s.recv(4096)
                        if not got:
                            closed(d, "closed (FIN)"); continue
                        closed(d, "answered: " + got.split(b"\r\n", 1)[0].decode("latin-1")); continue
                    except BlockingIOError:
                        pass
                st = states.get(d["port"])
                if st != 1:  # the registry's end is gone or shut down
                    closed(d, "server socket " + (TCP_STATES.get(st, str(st)) if st else "gone")); continue
                if now >= next_drip:
                    if d["kind"] == "read":
                        try:
                            got = s.recv(1)
                            if not got:
                                closed(d, "closed (FIN)"); continue
                            d["bytes"] += 1
                        except BlockingIOError:
                            pass
                    else:
                        try:
                            d["bytes"] += s.send(b"x")
                        except BlockingIOError:
                            pass
            except OSError as e:
                closed(d, type(e).__name__)
        if now >= next_drip:
            next_drip += a.interval
    for d in drips:
        d.pop("sock", None)
    json.dump(drips, open(a.out, "w"), indent=1)


# ---- probe: GET /v2/ and HEAD manifest every interval, new connection each -------------------
def cmd_probe(a):
    host, port = hostport(a.base)
    stop = stop_on_term()
    plan = json.load(open(a.plan))
    reqs = [("v2", "GET", "/v2/", {}),
            ("head", "HEAD", "/v2/%s/manifests/%s" % (plan["repo"], plan["tag"]), {"Accept": OCI_MANIFEST})]
    results, threads = [], []

    def one():
        for kind, method, path, headers in reqs:
            t0 = time.time()
            rec = [kind, t0, None, False, None, None]  # kind start latency ok status error
            results.append(rec)
            c = http.client.HTTPConnection(host, port, timeout=a.timeout)
            try:
                c.request(method, path, headers=headers)
                r = c.getresponse(); r.read()
                rec[4] = r.status
                rec[3] = r.status == 200
            except Exception as e:
                rec[5] = type(e).__name__
            finally:
                c.close()
            rec[2] = time.time() - t0

    tick = time.time()
    while not stop.is_set():
        t = threading.Thread(target=one, daemon=True)
        t.start()
        threads.append(t)
        threads = [t for t in threads if t.is_alive()]
        tick += a.interval
        stop.wait(max(0.0, tick - time.time()))
    end = time.time() + 2 * a.timeout + 1
    for t in threads:
        t.join(max(0.0, end - time.time()))
    now = time.time()
    for rec in results:
        if rec[2] is None:
            rec[2], rec[5] = now - rec[1], "unfinished"
    json.dump({"interval_s": a.interval, "timeout_s": a.timeout, "connection": "new per request",
               "samples": results}, open(a.out, "w"))


# ---- run: drips, probe, then the clients; writes everything to --out -------------------------
CHUNK = 256 << 10    # a client reads at most this much at a time, then sleeps to keep its rate;
RCVBUF = 256 << 10   # its socket buffers little, so the link's backpressure reaches the registry;
BURST_S = 0.05       # a stalled link earns at most 50 ms of catch-up.
CLIENT_NICE = 19     # the clients stand in for other machines: they must not starve the registry


class Cut(Exception):
    pass


class Conn(http.client.HTTPConnection):
    """HTTP/1.1 keep-alive connection with a small receive buffer; counts its connects."""
    connects = 0

    def connect(self):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.connect((self.host, self.port))
        self.sock = s
        Conn.connects += 1


def pull(i, rate, base, plan, out):
    """One client: manifest by tag, then config and layers in manifest order, one connection,
    reads paced to `rate`, every part sha256-verified. Writes its record to `out`."""
    def cut(*_):
        raise Cut()
    signal.signal(signal.SIGTERM, cut)
    host, port = hostport(base)
    rec = {"i": i, "rate": rate, "start": time.time(), "first_byte": None, "end": None,
           "finished": False, "ok": False, "error": None, "bytes": 0, "parts": [], "retries": 0}
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    t_next = time.monotonic()

    def fetch(path, headers, keep):
        nonlocal t_next
        try:
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
        except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
            if not rec["parts"]:
                raise
            # the registry closed the idle keep-alive connection: like Go's http.Transport, retry
            # the (idempotent) request once on a new connection
            conn.close()
            rec["retries"] += 1
            conn.request("GET", path, headers=headers)
            r = conn.getresponse()
        h, n, body = hashlib.sha256(), 0, bytearray()
        part = {"path": path, "status": r.status, "bytes": 0, "digest": None}
        rec["parts"].append(part)
        while True:
            k = r.readinto(mv)
            if not k:
                break
            if rec["first_byte"] is None:
                rec["first_byte"] = time.time()
            h.update(mv[:k])
            if keep or r.status != 200:
                body += mv[:k]
            n += k
            part["bytes"] = n
            rec["bytes"] += k
            now = time.monotonic()  # the link: k bytes take k/rate, idle time is not saved up
            t_next = max(t_next, now - BURST_S) + k / rate
            if t_next > now:
                time.sleep(t_next - now)
        part["digest"] = "sha256:" + h.hexdigest()
        if r.status != 200:
            raise RuntimeError("%s answered %d: %s" % (path, r.status, bytes(body[:200]).decode("latin-1")))
        return part, bytes(body)

    try:
        conn = Conn(host, port)
        part, body = fetch("/v2/%s/manifests/%s" % (plan["repo"], plan["tag"]), {"Accept": OCI_MANIFEST}, True)
        if part["digest"] != plan["manifest_digest"]:
            raise RuntimeError("manifest digest %s" % part["digest"])
        m = json.loads(body)
        for b in [m["config"]] + m["layers"]:
            part, _ = fetch("/v2/%s/blobs/%s" % (plan["repo"], b["digest"]), {}, False)
            if part["digest"] != b["digest"] or part["bytes"] != b["size"]:
                raise RuntimeError("blob %s: got %d bytes, %s" % (b["digest"], part["bytes"], part["digest"]))
        rec["finished"] = rec["ok"] = True
    except Cut:
        rec["error"] = "cut off at --timeout"
    except Exception as e:
        rec["finished"] = True
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    rec["end"] = time.time()
    rec["connections"] = Conn.connects
    with open(out, "w") as f:
        json.dump(rec, f)


def proc_status(pid):
    out = {}
    try:
        for line in open("/proc/%d/status" % pid):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def proc_cpu(pid):
    try:
        f = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except OSError:
        return None


def host_busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")


class Sampler(threading.Thread):
    """The registry every 100 ms: VmRSS, threads, fds (as ../shared/bench/measure.py does)."""
    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid, self.stop, self.samples = pid, threading.Event(), []
        try:  # reset VmHWM, so that it holds this run's peak
            with open("/proc/%d/clear_refs" % pid, "w") as f:
                f.write("5")
            self.hwm_reset = True
        except OSError:
            self.hwm_reset = False

    def run(self):
        while True:
            st = proc_status(self.pid)
            try:
                fds = len(os.listdir("/proc/%d/fd" % self.pid))
            except OSError:
                fds = None
            self.samples.append((time.time(), st.get("VmRSS"), st.get("Threads"), fds))
            if self.stop.wait(0.1):
                break


def cmd_run(a):
    plan = json.load(open(a.plan))
    me = os.path.abspath(__file__)
    base = a.base.rstrip("/")
    helpers, kids = [], {}
    resdir = a.out + ".clients"
    os.makedirs(resdir, exist_ok=True)

    def log(msg):
        print("  [%s] %s" % (a.label, msg), file=sys.stderr, flush=True)

    def helper(*args):
        p = subprocess.Popen([sys.executable, me] + list(args), stdout=subprocess.PIPE, text=True)
        helpers.append(p)
        return p

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    sampler = Sampler(a.pid)
    cpu0, host0 = proc_cpu(a.pid), host_busy()
    lo, hi = parse_rate(a.min_rate), parse_rate(a.max_rate)
    n = a.clients
    rates = [lo + (hi - lo) * i // max(1, n - 1) for i in range(n)]
    random.Random(a.seed).shuffle(rates)
    try:
        t_drips = time.time()
        d = helper("drips", "--base", base, "--plan", a.plan, "--n", str(a.drips),
                   "--interval", str(a.drip_interval), "--out", a.out + ".drips")
        d.stdout.readline()  # "ready": every drip is open
        helper("probe", "--base", base, "--plan", a.plan, "--interval", "0.1",
               "--timeout", str(a.probe_timeout), "--out", a.out + ".probe")
        time.sleep(1.0)  # a few probes before the clients: the idle baseline

        # the clients are forked (no interpreter start-up each) and wait for the go: the read end
        # of a pipe whose write end the driver closes
        go_r, go_w = os.pipe()
        for i, rate in enumerate(rates):
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    os.close(go_w)
                    os.nice(CLIENT_NICE)
                    os.read(go_r, 1)
                    pull(i, rate, base, plan, os.path.join(resdir, "%d.json" % i))
                    code = 0
                finally:
                    os._exit(code)
            kids[pid] = i
        os.close(go_r)
        time.sleep(0.3)
        sampler.start()
        t_go = time.time()
        os.close(go_w)
        log("%d clients forked, go" % n)
        deadline, next_log = t_go + a.timeout, t_go + 10
        cut = False
        while kids:
            pid, _ = os.waitpid(-1, os.WNOHANG)
            if pid:
                kids.pop(pid, None)
                continue
            now = time.time()
            if now >= deadline and not cut:
                log("timeout: cutting off %d clients" % len(kids))
                for pid in kids:
                    os.kill(pid, signal.SIGTERM)
                cut, deadline = True, now + 10
            elif now >= deadline:
                for pid in kids:
                    os.kill(pid, signal.SIGKILL)
            if now >= next_log:
                next_log += 10
                log("%3.0f s: %d/%d clients done" % (now - t_go, n - len(kids), n))
            time.sleep(0.1)
        clients_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
        t_done = time.time()
    finally:
        for pid in kids:
            try:
                os.kill(pid, signal.SIGKILL); os.waitpid(pid, 0)
            except OSError:
                pass
        for h in helpers:
            if h.poll() is None:
                h.send_signal(signal.SIGTERM)
        for h in helpers:
            try:
                h.wait(timeout=3 * a.probe_timeout + 5)
            except subprocess.TimeoutExpired:
                h.kill(); h.wait()
        sampler.stop.set()
    sampler.join()
    st = proc_status(a.pid)
    cpu1, host1 = proc_cpu(a.pid), host_busy()
    all_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    own = resource.getrusage(resource.RUSAGE_SELF)
    clients = []
    for i, rate in enumerate(rates):
        try:
            clients.append(json.load(open(os.path.join(resdir, "%d.json" % i))))
        except (OSError, ValueError):
            clients.append({"i": i, "rate": rate, "start": None, "first_byte": None, "end": None,
                            "finished": False, "ok": False, "error": "no record (killed)", "bytes": 0,
                            "parts": [], "connections": None, "retries": 0})
    cl_s = clients_cpu.ru_utime + clients_cpu.ru_stime
    all_s = all_children.ru_utime + all_children.ru_stime
    own_s = own.ru_utime + own.ru_stime
    samples = sampler.samples
    res = {"label": a.label, "base": base, "pid": a.pid, "t_drips": t_drips, "t_go": t_go,
           "t_done": t_done, "timeout_s": a.timeout, "image_bytes": plan["image_bytes"],
           "clients": clients,
           "server": {"alive": bool(st), "hwm_reset": sampler.hwm_reset,
                      "rss_peak_kb": max([s[1] or 0 for s in samples] + [st.get("VmHWM", 0) if sampler.hwm_reset else 0]),
                      "vmhwm_kb": st.get("VmHWM"), "rss_end_kb": st.get("VmRSS"),
                      "threads_peak": max([s[2] or 0 for s in samples], default=None),
                      "fds_peak": max([s[3] or 0 for s in samples], default=None),
                      "cpu_s": None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
                      "samples": samples},
           "cpu": {"clients_s": cl_s, "helpers_s": all_s - cl_s, "driver_s": own_s,
                   "host_busy_s": host1 - host0},
           "probe": json.load(open(a.out + ".probe")), "drips": json.load(open(a.out + ".drips"))}
    c = res["cpu"]
    c["host_other_s"] = max(0.0, c["host_busy_s"] - (res["server"]["cpu_s"] or 0) - all_s - own_s)
    json.dump(res, open(a.out, "w"))


# ---- report: one summary per registry, the table, results.json -------------------------------
def summarize(run, min_rate):
    cl = run["clients"]
    img = run["image_bytes"]
    started = [c["start"] for c in cl if c["start"]]
    t0 = min(started, default=run["t_go"])
    fin = [c for c in cl if c["finished"]]
    dur = lambda c: c["end"] - c["start"]
    complete = len(fin) == len(cl)
    end = max(c["end"] for c in fin) if complete else run["t_go"] + run["timeout_s"]
    s = {"clients": len(cl), "ok": sum(c["ok"] for c in cl),
         "failed": sum(c["finished"] and not c["ok"] for c in cl),
         "unfinished": len(cl) - len(fin), "complete": complete,
         "completion_s": end - t0, "ideal_s": img / min_rate,
         "ideal_aggregate_s": img * len(cl) / sum(c["rate"] for c in cl),
         "start_spread_s": max(started, default=t0) - t0,
         "bytes_received": sum(c["bytes"] for c in cl),
         "errors": sorted({c["error"] for c in cl if c["error"]})[:10]}
    s["ratio_to_ideal"] = s["completion_s"] / s["ideal_s"]
    s["throughput_MiBps"] = s["bytes_received"] / MiB / s["completion_s"]
    ok = [c for c in cl if c["ok"]]
    s["all_ok"] = len(ok) == len(cl)
    s["retries"] = sum(c["retries"] for c in cl)
    s["clients_retried"] = sum(c["retries"] > 0 for c in cl)
    if ok:
        fast, slow = min(ok, key=dur), max(ok, key=dur)
        s["fastest"] = {"s": dur(fast), "rate": fast["rate"]}
        s["slowest"] = {"s": dur(slow), "rate": slow["rate"]}
        slow_down = sorted(dur(c) / (img / c["rate"]) for c in ok)
        s["slowdown_median"], s["slowdown_max"] = pct(slow_down, 0.5), slow_down[-1]
    fb = [c["first_byte"] - c["start"] for c in cl if c["first_byte"]]
    s["max_wait_first_byte_s"] = max(fb, default=None)
    s["clients_without_byte"] = len(cl) - len(fb)
    probe = run["probe"]
    ms = lambda x: None if x is None else x * 1e3
    for kind in ("v2", "head"):
        rows = [r for r in probe["samples"] if r[0] == kind and t0 <= r[1] <= end]
        idle = sorted(r[2] for r in probe["samples"] if r[0] == kind and r[1] < t0)
        lat = sorted(r[2] for r in rows)
        s["probe_" + kind] = {"n": len(rows), "failed": sum(not r[3] for r in rows),
                              "p50_ms": ms(pct(lat, .5)), "p99_ms": ms(pct(lat, .99)),
                              "max_ms": ms(pct(lat, 1)), "idle_p50_ms": ms(pct(idle, .5)),
                              "errors": sorted({str(r[5] or r[4]) for r in rows if not r[3]})}
    both = [r for r in probe["samples"] if t0 <= r[1] <= end]
    s["probe_p99_first10_ms"] = ms(pct(sorted(r[2] for r in both if r[1] < t0 + 10), .99))
    s["probe_p99_after10_ms"] = ms(pct(sorted(r[2] for r in both if r[1] >= t0 + 10), .99))
    s["probe_connection"] = probe["connection"]
    dr = run["drips"]
    s["drips"] = len(dr)
    s["drips_closed"] = [{"kind": d["kind"], "after_s": d["closed_at"] - d["opened_at"] if d["opened_at"] else None,
                          "how": d["how"]} for d in dr if d["closed_at"]]
    srv = run["server"]
    s["peak_rss_MiB"] = srv["rss_peak_kb"] / 1024
    s["vmhwm_MiB"] = (srv["vmhwm_kb"] or 0) / 1024
    s["hwm_reset"] = srv["hwm_reset"]
    s["peak_threads"], s["peak_fds"] = srv["threads_peak"], srv["fds_peak"]
    s["registry_alive"] = srv["alive"]
    s["registry_cpu_s"] = srv["cpu_s"]
    s["cpu"] = run["cpu"]
    s["run_wall_s"] = run["t_done"] - run["t_drips"]
    s["per_client"] = [{"i": c["i"], "rate": c["rate"], "ok": c["ok"], "error": c["error"],
                        "start_s": c["start"] and c["start"] - t0, "time_s": c["end"] and c["end"] - c["start"],
                        "first_byte_s": c["first_byte"] and c["first_byte"] - c["start"],
                        "bytes": c["bytes"], "retries": c["retries"]} for c in cl]
    return s


def cmd_report(a):
    params = {}
    for kv in a.param:
        k, _, v = kv.partition("=")
        for t in (int, float, str):
            try:
                params[k] = t(v)
                break
            except ValueError:
                pass
    params["image_MiB"] = json.load(open(a.plan))["image_bytes"] / MiB
    min_rate = parse_rate(params["min_rate"])
    regs = {}
    for spec in a.reg:
        label, run = spec.split(":", 1)
        regs[label] = summarize(json.load(open(run)), min_rate)
    res = {"params": params, "registries": regs}
    if "outpost" in regs and "distribution" in regs:
        o, d = regs["outpost"], regs["distribution"]
        res["completion_outpost_over_distribution"] = o["completion_s"] / d["completion_s"]
        res["completion_ratio_is_lower_bound"] = not o["complete"]
        res["completion_ratio_valid"] = o["all_ok"] and d["all_ok"]
    json.dump(res, open(a.out, "w"), indent=1)

    def f(x, fmt="%.1f"):
        return "-" if x is None else fmt % x

    def client(c):
        return "%.1f s (%.2f MiB/s)" % (c["s"], c["rate"] / MiB) if c else "-"

    def probe(p):
        return "%s / %s / %s ms, %d/%d failed" % (f(p["p50_ms"]), f(p["p99_ms"]), f(p["max_ms"], "%.0f"),
                                                 p["failed"], p["n"])

    def drips(s):
        c = s["drips_closed"]
        return "%d/%d" % (len(c), s["drips"]) + (" at " + ", ".join(
            "%.0f s" % d["after_s"] for d in c if d["after_s"] is not None) if c else "")

    # a completion time with clients cut off is a lower bound; with failures it is not a rollout
    mark = lambda s: "" if s["all_ok"] else ("> " if not s["complete"] else "! ")
    table = [
        ("clients ok / failed / cut off", lambda s: "%d / %d / %d" % (s["ok"], s["failed"], s["unfinished"])),
        ("completion s (first start -> last end)", lambda s: mark(s) + "%.1f" % s["completion_s"]),
        ("ideal s (image / min-rate)", lambda s: "%.1f" % s["ideal_s"]),
        ("actual / ideal", lambda s: mark(s) + "%.2f" % s["ratio_to_ideal"]),
        ("fastest ok client", lambda s: client(s.get("fastest"))),
        ("slowest ok client", lambda s: client(s.get("slowest"))),
        ("slowdown max / median (ok client / its ideal)",
         lambda s: "%.2f / %.2f" % (s["slowdown_max"], s["slowdown_median"]) if "slowdown_max" in s else "-"),
        ("max wait for first byte s", lambda s: f(s["max_wait_first_byte_s"]) + (
            " (%d got none)" % s["clients_without_byte"] if s["clients_without_byte"] else "")),
        ("reconnects after a closed keep-alive", lambda s: "%d (%d clients)" % (s["retries"], s["clients_retried"])),
        ("throughput MiB/s (received / completion)", lambda s: "%.0f" % s["throughput_MiBps"]),
        ("probe GET /v2/ p50 / p99 / max", lambda s: probe(s["probe_v2"])),
        ("probe HEAD manifest p50 / p99 / max", lambda s: probe(s["probe_head"])),
        ("probe p99, both: first 10 s / after", lambda s: "%s / %s ms" % (
            f(s["probe_p99_first10_ms"]), f(s["probe_p99_after10_ms"]))),
        ("peak RSS MiB (samples and VmHWM)", lambda s: "%.1f" % s["peak_rss_MiB"]),
        ("peak threads / fds", lambda s: "%d / %d" % (s["peak_threads"], s["peak_fds"])),
        ("drips closed by registry (s after open)", drips),
        ("registry CPU s", lambda s: f(s["registry_cpu_s"])),
        ("CPU s: clients / driver+probe+drips / other",
         lambda s: "%.1f / %.1f / %.1f" % (s["cpu"]["clients_s"], s["cpu"]["driver_s"] + s["cpu"]["helpers_s"],
                                           s["cpu"]["host_other_s"])),
    ]
    cells = [[fn(s) for s in regs.values()] for _, fn in table]
    w0 = max(len(name) for name, _ in table)
    ws = [max([len(label)] + [len(row[k]) for row in cells]) for k, label in enumerate(regs)]
    print("\nrollout: %(clients)d clients x %(image_MiB).1f MiB at %(min_rate)s-%(max_rate)s, "
          "%(drips)d drips, probe every 100 ms (new connection per request)" % params)
    print("  ".join([" " * w0] + [l.rjust(w) for l, w in zip(regs, ws)]))
    for (name, _), row in zip(table, cells):
        print("  ".join([name.ljust(w0)] + [c.rjust(w) for c, w in zip(row, ws)]))
    for label, s in regs.items():
        if s["errors"]:
            print("%s client errors: %s" % (label, "; ".join(s["errors"][:3])))
    if "completion_outpost_over_distribution" in res:
        print("completion time outpost / distribution: %s%.2f" % (
            ">= " if res["completion_ratio_is_lower_bound"] else "", res["completion_outpost_over_distribution"]))
    print("targets (issue): every client ok with the right digests; probe p99 < 100 ms; "
          "outpost completion <= 1.1x distribution; outpost peak RSS <= 64 MiB at 200 clients")
    for label, s in regs.items():
        p99 = max(s["probe_v2"]["p99_ms"] or 0, s["probe_head"]["p99_ms"] or 0)
        failed = s["probe_v2"]["failed"] + s["probe_head"]["failed"]
        checks = ["clients %s" % ("ok" if s["all_ok"] else "FAIL"),
                  "probe p99 %.0f ms, %d failed %s" % (p99, failed, "ok" if p99 < 100 and not failed else "FAIL")]
        if label == "outpost":
            checks.append("RSS %.1f MiB %s" % (s["peak_rss_MiB"], "ok" if s["peak_rss_MiB"] <= 64 else "FAIL"))
            if "completion_outpost_over_distribution" in res:
                r = res["completion_outpost_over_distribution"]
                checks.append("completion %.2fx %s" % (r, "ok" if r <= 1.1 and res["completion_ratio_valid"] else "FAIL"))
        print("  %-13s %s" % (label, "; ".join(checks)))


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    q = sub.add_parser("image")
    for k, t in (("--dir", str), ("--size", int), ("--layers", int), ("--seed", int), ("--repo", str), ("--tag", str)):
        q.add_argument(k, type=t, required=True)
    q = sub.add_parser("drips")
    for k, t in (("--base", str), ("--plan", str), ("--n", int), ("--interval", float), ("--out", str)):
        q.add_argument(k, type=t, required=True)
    q = sub.add_parser("probe")
    for k, t in (("--base", str), ("--plan", str), ("--interval", float), ("--timeout", float), ("--out", str)):
        q.add_argument(k, type=t, required=True)
    q = sub.add_parser("run")
    for k, t in (("--label", str), ("--base", str), ("--pid", int), ("--plan", str), ("--clients", int), ("--min-rate", str),
                 ("--max-rate", str), ("--seed", int), ("--drips", int), ("--drip-interval", float),
                 ("--timeout", float), ("--probe-timeout", float), ("--out", str)):
        q.add_argument(k, type=t, required=True)
    q = sub.add_parser("report")
    q.add_argument("--plan", required=True)
    q.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    q.add_argument("--reg", action="append", required=True, help="LABEL:RUN_JSON")
    q.add_argument("--out", required=True)
    a = p.parse_args()
    {"image": cmd_image, "drips": cmd_drips, "probe": cmd_probe, "run": cmd_run, "report": cmd_report}[a.cmd](a)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
PYTHON
# ---------------------------------------------------------------------------------------------
py() { python3 "$work/rollout.py" "$@"; }
repo=rollout/app tag=v1
t_start=$(date +%s)
echo "rollout: generating a ${size} MiB image ($layers layers) in $work" >&2
py image --dir "$work/image" --size "$size" --layers "$layers" --seed "$seed" --repo "$repo" --tag "$tag"

push() { # BASE: every blob, then the manifest by tag; checks the tag resolves to its digest
  local base=$1 digest path got
  while read -r digest path; do
    "$harness/blob_upload.sh" "$base" "$repo" "$path" "$digest"
  done < <(python3 -c 'import json,sys; [print(b["digest"], b["path"]) for b in json.load(open(sys.argv[1]))["blobs"]]' "$work/image/plan.json")
  curl -fsS -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' \
    --data-binary "@$work/image/manifest.json" -o /dev/null "$base/v2/$repo/manifests/$tag"
  got=$(curl -fsS -I -H 'Accept: application/vnd.oci.image.manifest.v1+json' \
    -w '%header{docker-content-digest}' -o /dev/null "$base/v2/$repo/manifests/$tag")
  [[ $got == $(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["manifest_digest"])' "$work/image/plan.json") ]] \
    || { echo "rollout.sh: manifest by tag answers digest '$got'" >&2; return 1; }
}

reports=()
for label in "${registries[@]}"; do
  port=$(free_port)
  base=http://127.0.0.1:$port
  if [[ $label == distribution ]]; then
    registry_pid=$("$harness/reference/start-distribution.sh" "$work/$label" "127.0.0.1:$port" "$work/$label.log")
  else
    start_outpost "$work/$label" "$port" "$work/$label.log" "${serve_args[@]}"
    registry_pid=$pid
    curl -fs -o /dev/null "$base/v2/" || { echo "rollout.sh: outpost did not start, see:" >&2; cat "$work/$label.log" >&2; exit 1; }
  fi
  echo "rollout: $label on $base (pid $registry_pid): pushing" >&2
  push "$base"
  sync; sleep 2
  echo "rollout: $label: $clients clients, $drips drips, probe; timeout ${timeout} s" >&2
  py run --label "$label" --base "$base" --pid "$registry_pid" --plan "$work/image/plan.json" \
    --clients "$clients" --min-rate "$min_rate" --max-rate "$max_rate" --seed "$seed" \
    --drips "$drips" --drip-interval "$drip_interval" --timeout "$timeout" \
    --probe-timeout "$probe_timeout" --out "$work/$label.run.json" || true
  [[ -s $work/$label.run.json ]] || { echo "rollout.sh: the $label run wrote no results" >&2; exit 1; }
  reports+=(--reg "$label:$work/$label.run.json")
  kill "$registry_pid" 2>/dev/null || true; wait "$registry_pid" 2>/dev/null || true
  registry_pid=
  sleep 1
done

commit=$(git -C "$top" describe --always --dirty 2>/dev/null || echo unknown)
py report --plan "$work/image/plan.json" --out "$work/results.json" "${reports[@]}" \
  --param clients="$clients" --param size_MiB="$size" --param layers="$layers" \
  --param min_rate="$min_rate" --param max_rate="$max_rate" --param drips="$drips" \
  --param drip_interval_s="$drip_interval" --param timeout_s="$timeout" \
  --param probe_timeout_s="$probe_timeout" --param seed="$seed" --param commit="$commit" \
  --param outpost_serve_args="${serve_args[*]}"
echo "results: $work/results.json (copied to benches/runs/); took $(($(date +%s) - t_start)) s" >&2
