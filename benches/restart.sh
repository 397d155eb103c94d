#!/usr/bin/env bash
# Restart after a power cut, Outpost against distribution (Debian docker-registry) on the same
# content, in one sitting. For each SIZE_GB (GiB of blobs; default 1 and 10):
#   1. populate each registry through the HTTP API with identical content (~5,000 blobs and
#      ~500 OCI image manifests per GiB / 10 blobs per manifest, sizes a mix of 512 B .. 16 MiB,
#      bytes generated from a seed, never stored on disk), 6 keep-alive clients;
#   2. each round, for each registry (alternating which goes first): a burst of concurrent
#      pushes (large chunked uploads mid-way, small monolithic ones finishing, manifests),
#      SIGKILL in the middle of it, every 201 received noted; page cache dropped ("cold"; when
#      /proc/sys/vm/drop_caches is writable) and the registry exec'd again, timing exec → first
#      200 on GET /v2/ and exec → first 200 of a blob GET (polled every ~1 ms by the process that
#      exec'd it); then every acknowledged blob and manifest of the burst, and a sample of the
#      populated store, fetched and hashed; then the same again without dropping the cache
#      ("warm"). Also what the restarted process had done by its first blob: CPU time, bytes
#      read from and written to storage (/proc/PID/io).
# Prints medians per size and registry, and Outpost / distribution. A SIGKILL loses no page
# cache: the acknowledged-data check proves what the process promised, not the disk's flushes
# (tests/crash.rs covers those).
# usage: benches/restart.sh [SIZE_GB...]            (default: 1 10)
# env:   ROUNDS (default 3), OUTPOST_BENCH_PORTS=LO-HI (ports to use; default any free one),
#        TMPDIR (where the stores go: needs 2 × the largest SIZE_GB + a little, free)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
sizes=("$@")
((${#sizes[@]})) || sizes=(1 10)
command -v docker-registry >/dev/null || {
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-registry; }
build_release
work=$(mktemp -d "${TMPDIR:-/tmp}/outpost-restart.XXXXXX")
cleanup() {
  [[ -f $work/pids ]] && while read -r p; do kill -9 "$p" 2>/dev/null || true; done <"$work/pids"
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
python3 - "$work" "${CARGO_TARGET_DIR:-$top/target}/release/outpost" \
  "$harness/reference/distribution-config.yml" "${ROUNDS:-3}" "${OUTPOST_BENCH_PORTS:-}" \
  "${sizes[@]}" <<'PY'
import hashlib, http.client, json, os, queue, random, shutil, signal, socket, statistics
import subprocess, sys, threading, time
from urllib.parse import urlsplit

work, outpost_bin, dist_config, rounds, port_range = sys.argv[1:6]
rounds, sizes = int(rounds), [float(s) for s in sys.argv[6:]]
SEED = 20
POOL = random.Random(SEED).randbytes(64 << 20)  # blob bytes are slices of this, after a header
MIB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

def free_port(taken=set()):
    lo, hi = (int(x) for x in port_range.split("-")) if port_range else (0, 0)
    for p in (range(lo, hi + 1) if lo else [0] * 20):
        if p in taken or p == 5000:
            continue
        s = socket.socket()
        try:
            s.bind(("127.0.0.1", p)); p = s.getsockname()[1]
        except OSError:
            continue
        finally:
            s.close()
        if p != 5000 and p not in taken:
            taken.add(p); return p
    raise SystemExit("no free port")

# ---- deterministic content ----
def blob_chunks(ident, size, chunk=8 * MIB):
    """The bytes of blob `ident` (unique header, then pool slices), in pieces of <= chunk."""
    head = b"outpost-restart blob %d\n" % ident
    yield head[:size]
    left, off = size - len(head), (ident * 7919 * 4096) % (len(POOL) - 16 * MIB)
    while left > 0:
        n = min(left, chunk, len(POOL) - off)
        yield POOL[off:off + n]
        left -= n; off = (off + n) % (len(POOL) - 16 * MIB)

def blob_bytes(ident, size):
    return b"".join(blob_chunks(ident, size))

def draw_size(rng):
    """A size from a mix like image layers and configs: mostly small, a few large (mean ~190 KiB)."""
    u = rng.random()
    lo, hi = (512, 64 << 10) if u < 0.80 else (64 << 10, MIB) if u < 0.98 else (MIB, 16 * MIB)
    return int(lo * (hi / lo) ** rng.random())

def plan(size_gb):
    rng, sizes, total = random.Random(SEED), [], 0
    while total < size_gb * (1 << 30):
        sizes.append(draw_size(rng)); total += sizes[-1]
    return sizes, total

def manifest_bytes(layers):
    """An OCI image manifest: first descriptor the config, the rest layers."""
    d = lambda mt, dg, n: {"mediaType": mt, "digest": dg, "size": n}
    m = {"schemaVersion": 2, "mediaType": OCI_MANIFEST,
         "config": d("application/vnd.oci.image.config.v1+json", *layers[0]),
         "layers": [d("application/vnd.oci.image.layer.v1.tar", *l) for l in layers[1:]]}
    return json.dumps(m, sort_keys=True, separators=(",", ":")).encode()

# ---- a small HTTP client ----
class Client:
    def __init__(self, port, timeout=120):
        self.port, self.timeout, self.c = port, timeout, None
    def req(self, method, path, body=None, headers={}):
        for attempt in (0, 1):
            if self.c is None:
                self.c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            try:
                self.c.request(method, path, body=body, headers=headers)
                r = self.c.getresponse(); data = r.read()
                if r.getheader("Connection", "").lower() == "close":
                    self.c.close(); self.c = None
                return r, data
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                self.c.close(); self.c = None
                if attempt or body is not None and not isinstance(body, bytes):
                    raise
    def close(self):
        if self.c: self.c.close(); self.c = None

def loc_path(r):
    loc = r.getheader("Location"); u = urlsplit(loc)
    return u.path + ("?" + u.query if u.query else "")

def with_digest(path, digest):
    return path + ("&" if "?" in path else "?") + "digest=" + digest

def push_blob(cl, repo, ident, size):
    """Monolithic POST + PUT ?digest=; returns the digest (raises unless 201)."""
    data = blob_bytes(ident, size); dg = "sha256:" + hashlib.sha256(data).hexdigest()
    r, _ = cl.req("POST", "/v2/%s/blobs/uploads/" % repo, b"")
    if r.status != 202: raise RuntimeError("POST %d" % r.status)
    r, _ = cl.req("PUT", with_digest(loc_path(r), dg), data,
                  {"Content-Type": "application/octet-stream"})
    if r.status != 201: raise RuntimeError("PUT %d" % r.status)
    return dg

def push_manifest(cl, repo, tag, body):
    r, _ = cl.req("PUT", "/v2/%s/manifests/%s" % (repo, tag), body, {"Content-Type": OCI_MANIFEST})
    if r.status != 201: raise RuntimeError("manifest PUT %d" % r.status)
    return "sha256:" + hashlib.sha256(body).hexdigest()

# ---- registries ----
class Registry:
    def __init__(self, name, root):
        self.name, self.root, self.port, self.p = name, root, free_port(), None
        self.log = open(os.path.join(work, name + ".log"), "ab")
    def argv(self):
        if self.name == "Outpost":
            return [outpost_bin, "serve", "--listen", "127.0.0.1:%d" % self.port, "--data-dir", self.root]
        return ["docker-registry", "serve", dist_config]
    def env(self):
        return dict(os.environ, REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY=self.root,
                    REGISTRY_HTTP_ADDR="127.0.0.1:%d" % self.port)
    def exec(self):
        """Starts the registry; returns the perf_counter instant just before the exec."""
        argv, env = self.argv(), self.env()
        t0 = time.perf_counter()
        self.p = subprocess.Popen(argv, env=env, stdout=self.log, stderr=self.log)
        with open(os.path.join(work, "pids"), "a") as f: f.write("%d\n" % self.p.pid)
        return t0
    def poll(self, path, t0, limit=600):
        """Seconds from t0 to the first 200 on GET path (polled every ~1 ms), and its body."""
        while True:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=limit)
                c.request("GET", path); r = c.getresponse(); body = r.read(); c.close()
                if r.status == 200: return time.perf_counter() - t0, body
            except (OSError, http.client.HTTPException):
                pass  # not listening yet (or, polling a port in the ephemeral range, connected to itself)
            if self.p.poll() is not None: raise SystemExit("%s exited; see %s.log" % (self.name, self.name))
            if time.perf_counter() - t0 > limit: raise SystemExit("%s: no 200 on %s" % (self.name, path))
            time.sleep(0.001)
    def start(self):
        t0 = self.exec(); self.poll("/v2/", t0)
    def kill(self):
        self.p.send_signal(signal.SIGKILL); self.p.wait()
    def stop(self):
        self.p.terminate(); self.p.wait(60)

# ---- populate ----
def populate(reg, sizes, digests):
    n_man = (len(sizes) + 9) // 10
    q = queue.Queue()
    for m in range(n_man): q.put(m)
    errors = []
    def worker():
        cl = Client(reg.port)
        try:
            while True:
                try: m = q.get_nowait()
                except queue.Empty: return
                repo, layers = "bench/r%02d" % (m % 50), []
                for i in range(10 * m, min(10 * m + 10, len(sizes))):
                    dg = push_blob(cl, repo, i, sizes[i])
                    if digests[i] is None: digests[i] = dg
                    elif digests[i] != dg: raise RuntimeError("digest differs")
                    layers.append((dg, sizes[i]))
                push_manifest(cl, repo, "t%d" % m, manifest_bytes(layers))
        except Exception as e:
            errors.append(e)
        finally:
            cl.close()
    t = time.perf_counter()
    ths = [threading.Thread(target=worker) for _ in range(6)]
    for th in ths: th.start()
    for th in ths: th.join()
    if errors: raise SystemExit("%s: populate failed: %r" % (reg.name, errors[0]))
    return time.perf_counter() - t

# ---- burst, kill, restart, verify ----
def burst_and_kill(reg, base, kill_after):
    """Concurrent pushes; SIGKILL after kill_after s. Returns the acknowledged (kind, repo, ref, digest, ident, size)."""
    acked, lock, stop = [], threading.Lock(), threading.Event()
    def ack(*a):
        with lock: acked.append(a)
    def large(k, sizes_mib):
        cl, n = Client(reg.port), 0
        try:
            while not stop.is_set():
                ident, size = base + 1000 * k + n, sizes_mib[n % len(sizes_mib)] * MIB; n += 1
                r, _ = cl.req("POST", "/v2/bench/burst/blobs/uploads/", b"")
                path, h, off = loc_path(r), hashlib.sha256(), 0
                for piece in blob_chunks(ident, size):
                    r, _ = cl.req("PATCH", path, piece, {"Content-Type": "application/octet-stream",
                                  "Content-Range": "%d-%d" % (off, off + len(piece) - 1)})
                    if r.status != 202: raise RuntimeError("PATCH %d" % r.status)
                    h.update(piece); off += len(piece); path = loc_path(r)
                dg = "sha256:" + h.hexdigest()
                r, _ = cl.req("PUT", with_digest(path, dg), b"")
                if r.status == 201: ack("blob", "bench/burst", dg, dg, ident, size)
        except Exception:
            pass
        finally:
            cl.close()
    def small(k):
        cl, rng, n = Client(reg.port), random.Random(base + k), 0
        try:
            while not stop.is_set():
                ident, size = base + 1000 * k + n, draw_size(rng); n += 1
                dg = push_blob(cl, "bench/burst", ident, size)
                ack("blob", "bench/burst", dg, dg, ident, size)
        except Exception:
            pass
        finally:
            cl.close()
    def manifests(k):
        cl, rng, n = Client(reg.port), random.Random(base + k), 0
        try:
            while not stop.is_set():
                layers = []
                for j in range(3):
                    ident, size = base + 1000 * k + 10 * n + j, draw_size(rng)
                    layers.append((push_blob(cl, "bench/burst", ident, size), size))
                    ack("blob", "bench/burst", layers[-1][0], layers[-1][0], ident, size)
                tag = "b%d-%d" % (base, n); n += 1
                dg = push_manifest(cl, "bench/burst", tag, manifest_bytes(layers))
                ack("manifest", "bench/burst", tag, dg, None, None)
        except Exception:
            pass
        finally:
            cl.close()
    ths = [threading.Thread(target=large, args=(0, [32, 512])), threading.Thread(target=large, args=(1, [512])),
           threading.Thread(target=manifests, args=(2,))] + \
          [threading.Thread(target=small, args=(k,)) for k in range(3, 7)]
    for th in ths: th.start()
    time.sleep(kill_after)
    reg.kill(); stop.set()
    for th in ths: th.join()
    return acked

def drop_caches():
    try:
        os.sync()
        with open("/proc/sys/vm/drop_caches", "w") as f: f.write("3\n")
        return True
    except OSError:
        return False

def get_check(cl, repo, kind, ref, want):
    r, body = cl.req("GET", "/v2/%s/%s/%s" % (repo, "blobs" if kind == "blob" else "manifests", ref),
                     headers={"Accept": OCI_MANIFEST})
    return r.status == 200 and "sha256:" + hashlib.sha256(body).hexdigest() == want

def verify(reg, acked, sizes, digests, rng):
    cl, lost = Client(reg.port), []
    sample = [("blob", "bench/r%02d" % ((i // 10) % 50), digests[i], digests[i])
              for i in rng.sample(range(len(sizes)), min(200, len(sizes)))]
    n_man = (len(sizes) + 9) // 10
    for m in rng.sample(range(n_man), min(50, n_man)):
        layers = [(digests[i], sizes[i]) for i in range(10 * m, min(10 * m + 10, len(sizes)))]
        body = manifest_bytes(layers)
        sample.append(("manifest", "bench/r%02d" % (m % 50), "t%d" % m, "sha256:" + hashlib.sha256(body).hexdigest()))
    for kind, repo, ref, want, *_ in list(acked) + sample:
        if not get_check(cl, repo, kind, ref, want): lost.append((kind, repo, ref))
    cl.close()
    return lost, len(sample)

def measure(reg, cold, sizes, digests, rng):
    """Burst, SIGKILL, (drop caches), exec, time /v2/ and a blob, verify. Returns a result dict."""
    acked = burst_and_kill(reg, base=rng.randrange(1 << 40) * 10000, kill_after=rng.uniform(1.5, 3.5))
    dropped = drop_caches() if cold else False
    i = rng.randrange(len(sizes)); path = "/v2/bench/r%02d/blobs/%s" % ((i // 10) % 50, digests[i])
    t0 = reg.exec()
    t_v2, _ = reg.poll("/v2/", t0)
    t_blob, body = reg.poll(path, t0)
    work_done = proc_work(reg.p.pid)
    assert "sha256:" + hashlib.sha256(body).hexdigest() == digests[i], "first blob served has the wrong digest"
    lost, n_sample = verify(reg, acked, sizes, digests, rng)
    n_large = sum(1 for a in acked if a[0] == "blob" and a[5] >= 32 * MIB)  # chunked ones
    n_man = sum(1 for a in acked if a[0] == "manifest")
    return dict(v2=t_v2 * 1000, blob=t_blob * 1000, acked=len(acked), large=n_large, manifests=n_man,
                lost=lost, sample=n_sample, dropped=dropped, **work_done)

def proc_work(pid):
    """What the process did so far: CPU ms, MiB read from and written to storage, read calls."""
    io = dict(l.split(": ") for l in open("/proc/%d/io" % pid).read().splitlines())
    st = open("/proc/%d/stat" % pid).read().rsplit(")", 1)[1].split()
    return dict(cpu=(int(st[11]) + int(st[12])) * 1000 / os.sysconf("SC_CLK_TCK"),
                read=int(io["read_bytes"]) / MIB, written=int(io["write_bytes"]) / MIB, syscr=int(io["syscr"]))

def du(path):
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)

results = []
for size_gb in sizes:
    sizes_, total = plan(size_gb)
    digests = [None] * len(sizes_)
    regs = [Registry("Outpost", os.path.join(work, "outpost-%g" % size_gb)),
            Registry("distribution", os.path.join(work, "distribution-%g" % size_gb))]
    print("== %g GiB: %d blobs (%.2f GiB), %d manifests" % (size_gb, len(sizes_), total / (1 << 30),
          (len(sizes_) + 9) // 10), flush=True)
    for reg in regs:
        reg.start()
        secs = populate(reg, sizes_, digests)
        print("  %s populated in %.0f s (%.0f MB/s); store %.2f GiB" % (reg.name, secs, total / secs / 1e6,
              du(reg.root) / (1 << 30)), flush=True)
        reg.stop()
    runs = {r.name: {"cold": [], "warm": []} for r in regs}
    for rnd in range(rounds):
        for reg in (regs if rnd % 2 == 0 else regs[::-1]):
            rng = random.Random("%s-%g-%d" % (reg.name, size_gb, rnd))
            reg.start()
            for mode in ("cold", "warm"):
                r = measure(reg, mode == "cold", sizes_, digests, rng)
                runs[reg.name][mode].append(r)
                print("  round %d %-12s %s: /v2/ %8.1f ms, first blob %8.1f ms; %d acknowledged before the "
                      "kill (%d large, %d manifests) + %d sampled: %s%s; by then CPU %.0f ms, read %.1f MiB, wrote %.1f MiB, %d read calls" % (
                      rnd + 1, reg.name, mode, r["v2"], r["blob"], r["acked"], r["large"], r["manifests"],
                      r["sample"], "LOST %r" % r["lost"] if r["lost"] else "none lost",
                      "" if r["dropped"] or mode == "warm" else " (page cache NOT dropped)",
                      r["cpu"], r["read"], r["written"], r["syscr"]), flush=True)
            reg.stop()
    for reg in regs:
        shutil.rmtree(reg.root)
    results.append((size_gb, len(sizes_), runs))

med = lambda rs, k: statistics.median(r[k] for r in rs)
print()
print("| store | registry | cache | exec → 200 on /v2/, ms | exec → first blob, ms | by then: CPU ms, MiB read, MiB written | acknowledged lost |")
print("|---|---|---|---|---|---|---|")
for size_gb, n, runs in results:
    for mode in ("cold", "warm"):
        o, d = runs["Outpost"][mode], runs["distribution"][mode]
        for name, rs in (("distribution", d), ("Outpost", o)):
            print("| %g GiB, %d blobs | %s | %s | %.1f | %.1f | %.0f, %.1f, %.1f | %d of %d |" % (size_gb, n, name, mode,
                  med(rs, "v2"), med(rs, "blob"), med(rs, "cpu"), med(rs, "read"), med(rs, "written"),
                  sum(len(r["lost"]) for r in rs), sum(r["acked"] + r["sample"] for r in rs)))
        print("| | Outpost / distribution | %s | %.2f× | %.2f× | | |" % (mode, med(o, "v2") / med(d, "v2"),
              med(o, "blob") / med(d, "blob")))
print("(medians of %d rounds; cold = page cache dropped before the exec)" % rounds)
if any(r["lost"] for _, _, runs in results for m in runs.values() for rs in m.values() for r in rs):
    sys.exit(1)
PY
