//! `/metrics` through the real binary, read by a real Prometheus parser (Debian's
//! python3-prometheus-client, see tests/deps.sh): every family is there, the counters move as
//! a push, a pull, a mount, a failed login and a GC and scrub pass say they should, access
//! is for admins and `metrics.users` (anyone on `metrics.listen`, which serves nothing else),
//! and no secret shows.

mod common;

use common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

const PASSWORDS: [(&str, &str); 4] = [
    ("root", "root-secret-metrics-1"),
    ("alice", "alice-secret-metrics-2"),
    ("prom", "prom-secret-metrics-3"),
    ("bob", "bob-secret-metrics-4"),
];

fn password(user: &str) -> &'static str {
    PASSWORDS.iter().find(|(u, _)| *u == user).unwrap().1
}

/// Every family `/metrics` has (counters by their name without `_total`, as the parser
/// names them).
const FAMILIES: [&str; 37] = [
    "outpost_build_info",
    "outpost_process_start_time_seconds",
    "outpost_requests",
    "outpost_request_duration_seconds",
    "outpost_received_bytes",
    "outpost_sent_bytes",
    "outpost_connections_active",
    "outpost_transfers_active",
    "outpost_uploads_open",
    "outpost_mounts",
    "outpost_mounted_bytes",
    "outpost_mount_refusals",
    "outpost_dedupe_uploads",
    "outpost_dedupe_bytes",
    "outpost_store_repositories",
    "outpost_store_blobs",
    "outpost_store_blob_bytes",
    "outpost_store_file_bytes",
    "outpost_store_free_bytes",
    "outpost_store_reserve_bytes",
    "outpost_gc_passes",
    "outpost_gc_deleted_manifests",
    "outpost_gc_deleted_blobs",
    "outpost_gc_deleted_bytes",
    "outpost_scrub_passes",
    "outpost_scrub_bytes",
    "outpost_scrub_quarantined",
    "outpost_mirror_passes",
    "outpost_mirror_failed_passes",
    "outpost_cache_hits",
    "outpost_cache_misses",
    "outpost_cache_fills",
    "outpost_cache_fill_bytes",
    "outpost_failed_logins",
    "outpost_rate_limited",
    "outpost_connections_refused",
    "outpost_requests_rejected",
];

/// A scrape as the parser read it: family name -> (type, samples (name, labels, value)).
struct Scrape(HashMap<String, (String, Vec<Sample>)>);

/// A sample: its name, labels and value.
type Sample = (String, HashMap<String, String>, f64);

impl Scrape {
    /// Parses `text` with prometheus_client's text parser (it raises on anything malformed).
    fn parse(text: &str) -> Scrape {
        const PY: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for f in text_string_to_metric_families(sys.stdin.read()):
    assert f.name not in out, "family twice: " + f.name
    out[f.name] = [f.type, [[s.name, s.labels, s.value if math.isfinite(s.value) else None]
                            for s in f.samples]]
print(json.dumps(out))
"#;
        // Debian's python3, where apt installs the module (another may come first on PATH).
        let python = match Path::new("/usr/bin/python3").exists() {
            true => "/usr/bin/python3",
            false => "python3",
        };
        let mut child = Command::new(python)
            .args(["-c", PY])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("python3 (tests/deps.sh installs python3-prometheus-client)");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "the Prometheus parser refused the scrape: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: HashMap<String, Value> = serde_json::from_slice(&out.stdout).unwrap();
        Scrape(
            v.into_iter()
                .map(|(name, f)| {
                    let samples = f[1]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|s| {
                            (
                                s[0].as_str().unwrap().to_owned(),
                                serde_json::from_value(s[1].clone()).unwrap(),
                                s[2].as_f64().unwrap_or(f64::INFINITY),
                            )
                        })
                        .collect();
                    (name, (f[0].as_str().unwrap().to_owned(), samples))
                })
                .collect(),
        )
    }

    fn kind(&self, family: &str) -> &str {
        &self
            .0
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"))
            .0
    }

    /// Sum of the samples named `sample` of `family` whose labels include `labels`.
    fn value(&self, family: &str, sample: &str, labels: &[(&str, &str)]) -> f64 {
        let (_, samples) = self
            .0
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"));
        samples
            .iter()
            .filter(|(n, l, _)| {
                n == sample
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| v)
            .sum()
    }

    /// The value of the one sample of an unlabelled family (a counter's `_total`).
    fn get(&self, family: &str) -> f64 {
        let (kind, samples) = self
            .0
            .get(family)
            .unwrap_or_else(|| panic!("no family {family}"));
        let name = match kind.as_str() {
            "counter" => format!("{family}_total"),
            _ => family.to_owned(),
        };
        let found: Vec<f64> = samples
            .iter()
            .filter(|(n, _, _)| *n == name)
            .map(|(_, _, v)| *v)
            .collect();
        assert_eq!(found.len(), 1, "{family}: {samples:?}");
        found[0]
    }

    /// How much unlabelled `family` moved since scrape `earlier`.
    fn since(&self, earlier: &Scrape, family: &str) -> f64 {
        self.get(family) - earlier.get(family)
    }

    fn requests(&self, kind: &str, method: &str, status: &str) -> f64 {
        self.value(
            "outpost_requests",
            "outpost_requests_total",
            &[("kind", kind), ("method", method), ("status", status)],
        )
    }
}

/// A registry with auth on (root admin, alice pushes `team/*`, prom in `metrics.users`, bob
/// signed in but neither) and `metrics.listen` on an ephemeral loopback port.
struct Site {
    _dir: TempDir,
    reg: Registry,
    metrics_addr: SocketAddr,
}

impl Site {
    fn new() -> Site {
        let dir = TempDir::new("metrics");
        let config = json!({
            "listen": "127.0.0.1:0",
            "dataDir": dir.path().join("data"),
            "auth": {"admins": ["root"]},
            "access": [{"repositories": "team/*", "pull": ["alice"], "push": ["alice"]}],
            "metrics": {"users": ["prom"], "listen": "127.0.0.1:0"},
            "scrubInterval": "off",
            "gcInterval": "off",
        });
        let cfg = dir.path().join("outpost.json");
        std::fs::write(&cfg, config.to_string()).unwrap();
        for (user, pw) in PASSWORDS {
            let out = outpost_stdin(
                &["user", "add", user, "--config", cfg.to_str().unwrap()],
                &format!("{pw}\n"),
            );
            assert!(out.status.success(), "{}", text(&out));
        }
        let reg = Registry::start_with(
            &dir.path().join("data"),
            &["--config", cfg.to_str().unwrap()],
        );
        let log = reg.log_with("served to anyone on http://");
        let metrics_addr = log
            .split("served to anyone on http://")
            .nth(1)
            .unwrap()
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        Site {
            _dir: dir,
            reg,
            metrics_addr,
        }
    }

    fn user(&self, name: &str) -> Client {
        self.reg.client().as_user(name, password(name))
    }

    /// `scrape` once `ready` holds of it: a request is counted once its response is sent,
    /// a moment after the client has read it.
    fn scrape_when(&self, ready: impl Fn(&Scrape) -> bool) -> (String, Scrape) {
        let deadline = std::time::Instant::now() + bound(std::time::Duration::from_secs(10));
        loop {
            let (text, s) = self.scrape();
            if ready(&s) || std::time::Instant::now() > deadline {
                return (text, s);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// `/metrics` as prom sees it: its text, checked for secrets, and parsed.
    fn scrape(&self) -> (String, Scrape) {
        let r = self.user("prom").get("/metrics");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(
            r.header("content-type"),
            Some("text/plain; version=0.0.4; charset=utf-8")
        );
        let text = String::from_utf8(r.body).unwrap();
        for (_, pw) in PASSWORDS {
            assert!(!text.contains(pw), "a password in the scrape");
        }
        let parsed = Scrape::parse(&text);
        (text, parsed)
    }
}

#[test]
fn families_present_and_moving_with_push_pull_mount_and_logins() {
    let site = Site::new();
    let (_, s0) = site.scrape();
    for f in FAMILIES {
        assert!(s0.0.contains_key(f), "no family {f}");
    }
    assert_eq!(s0.kind("outpost_requests"), "counter");
    assert_eq!(s0.kind("outpost_request_duration_seconds"), "histogram");
    assert_eq!(s0.kind("outpost_connections_active"), "gauge");
    assert_eq!(
        s0.value(
            "outpost_build_info",
            "outpost_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let started = s0.get("outpost_process_start_time_seconds");
    assert!(started > now - 120.0 && started <= now + 1.0, "{started}");
    // This scrape's own connection is open while it is answered.
    assert!(s0.get("outpost_connections_active") >= 1.0);
    assert_eq!(s0.get("outpost_store_reserve_bytes"), (64 << 20) as f64);
    assert!(s0.get("outpost_store_free_bytes") > 0.0);
    assert!(s0.get("outpost_store_file_bytes") > 0.0);

    // Requests of a kind, method and status counted from scrape `a` to scrape `b`.
    let moved = |a: &Scrape, b: &Scrape, kind, method, status| {
        b.requests(kind, method, status) - a.requests(kind, method, status)
    };

    // A push.
    let alice = site.user("alice");
    let manifest = push_image(&alice, "team/app", 7, 2);
    let r = alice.put_manifest("team/app", "v1", OCI_MANIFEST, &manifest);
    assert_eq!(r.status, 201, "{r:?}");
    let put = |s: &Scrape| s.requests("manifest", "PUT", "201");
    let (_, s1) = site.scrape_when(|s| put(s) > put(&s0));
    assert_eq!(moved(&s0, &s1, "manifest", "PUT", "201"), 1.0);
    assert_eq!(moved(&s0, &s1, "upload", "POST", "201"), 3.0);
    assert_eq!(s1.since(&s0, "outpost_store_blobs"), 3.0);
    let layer_bytes = (1000 + 1010) as f64;
    assert!(s1.since(&s0, "outpost_store_blob_bytes") > layer_bytes);
    assert!(s1.since(&s0, "outpost_received_bytes") > layer_bytes);
    assert_eq!(s1.get("outpost_store_repositories"), 1.0);
    assert_eq!(s1.get("outpost_uploads_open"), 0.0);
    // The histogram counts each request once, in cumulative buckets.
    let count = |s: &Scrape, kind: &str| {
        s.value(
            "outpost_request_duration_seconds",
            "outpost_request_duration_seconds_count",
            &[("kind", kind)],
        )
    };
    assert_eq!(count(&s1, "manifest") - count(&s0, "manifest"), 1.0);
    let inf = s1.value(
        "outpost_request_duration_seconds",
        "outpost_request_duration_seconds_bucket",
        &[("kind", "upload"), ("le", "+Inf")],
    );
    let ms = s1.value(
        "outpost_request_duration_seconds",
        "outpost_request_duration_seconds_bucket",
        &[("kind", "upload"), ("le", "0.001")],
    );
    assert!(inf >= 3.0 && ms <= inf, "{inf} {ms}");

    // A pull.
    let v: Value = serde_json::from_slice(&manifest).unwrap();
    let layer = v["layers"][0]["digest"].as_str().unwrap().to_owned();
    assert_eq!(alice.get("/v2/team/app/manifests/v1").status, 200);
    let r = alice.get(&format!("/v2/team/app/blobs/{layer}"));
    assert_eq!(r.status, 200);
    let got = |s: &Scrape| s.requests("blob", "GET", "200");
    let (_, s2) = site.scrape_when(|s| got(s) > got(&s1));
    assert_eq!(moved(&s1, &s2, "manifest", "GET", "200"), 1.0);
    assert_eq!(moved(&s1, &s2, "blob", "GET", "200"), 1.0);
    assert!(s2.since(&s1, "outpost_sent_bytes") >= r.body.len() as f64);
    // A pull does not walk the store again: the totals are the same.
    assert_eq!(s2.get("outpost_store_blobs"), s1.get("outpost_store_blobs"));
    assert_eq!(
        s2.value("outpost_transfers_active", "outpost_transfers_active", &[]),
        0.0
    );

    // A mount, a refused one, and an upload of a blob already stored.
    let r = alice.mount("team/other", &layer, Some("team/app"));
    assert_eq!(r.status, 201, "{r:?}");
    let r = alice.mount("team/third", &layer, Some("team/nothing"));
    assert_eq!(r.status, 202, "{r:?}");
    let again = bytes(700, 1000);
    let (_, r) = alice.push_blob("team/fourth", &again);
    assert_eq!(r.status, 201, "{r:?}");
    let posted = |s: &Scrape| s.requests("upload", "POST", "201");
    let (_, s3) = site.scrape_when(|s| posted(s) > posted(&s2));
    assert_eq!(s3.since(&s2, "outpost_mounts"), 1.0);
    assert_eq!(s3.since(&s2, "outpost_mounted_bytes"), 1000.0);
    let refused = |s: &Scrape, reason: &str| {
        s.value(
            "outpost_mount_refusals",
            "outpost_mount_refusals_total",
            &[("reason", reason)],
        )
    };
    assert_eq!(
        refused(&s3, "fromUnknown") - refused(&s2, "fromUnknown"),
        1.0
    );
    assert_eq!(refused(&s3, "notInFrom"), 0.0);
    assert_eq!(s3.since(&s2, "outpost_dedupe_uploads"), 1.0);
    assert_eq!(s3.since(&s2, "outpost_dedupe_bytes"), 1000.0);
    // The refused mount left its upload session open.
    assert_eq!(s3.get("outpost_uploads_open"), 1.0);
    // /admin/stats reads the same counters.
    let stats = site.user("root").get("/admin/stats").json();
    assert_eq!(
        stats["mounts"]["done"],
        json!(s3.get("outpost_mounts") as u64)
    );
    assert_eq!(stats["mounts"]["refused"]["fromUnknown"], json!(1));
    assert_eq!(stats["uploads"]["deduplicated"], json!(1));

    // Failed logins, then the limiter refusing the address.
    let mallory = site.reg.client().as_user("mallory", "not-a-password-xyzzy");
    let (mut refused, mut limited) = (0.0, 0.0);
    // Ten failures, then one forgiven per 6 s: a slow machine needs more than eleven tries.
    for _ in 0..40 {
        match mallory.get("/v2/").status {
            401 => refused += 1.0,
            429 => {
                limited += 1.0;
                break;
            }
            s => panic!("status {s}"),
        }
    }
    assert!(limited >= 1.0, "the limiter never refused");
    // A request is counted once its answer is sent: the client may see it a moment before.
    let (text, s4) = site.scrape_when(|s| {
        s.requests("base", "GET", "429") >= limited
            && s.since(&s3, "outpost_failed_logins") >= refused
    });
    assert!(
        refused >= 10.0,
        "only {refused} logins failed before the limiter refused"
    );
    assert!(s4.since(&s3, "outpost_failed_logins") >= refused);
    assert!(s4.get("outpost_rate_limited") >= limited);
    assert!(s4.requests("base", "GET", "401") >= refused, "{text}");
    assert!(s4.requests("base", "GET", "429") >= limited);
    assert!(!text.contains("not-a-password-xyzzy") && !text.contains("mallory"));

    // A GC pass and a scrub pass.
    let root = site.user("root");
    let r = root.req("POST", "/admin/gc", &[], Body::None);
    assert_eq!(r.status, 200, "{r:?}");
    let r = root.req("POST", "/admin/scrub?rate=1GiB", &[], Body::None);
    assert_eq!(r.status, 200, "{r:?}");
    let admin = |s: &Scrape| s.requests("admin", "POST", "200");
    let (_, s5) = site.scrape_when(|s| admin(s) >= admin(&s4) + 2.0);
    assert_eq!(s5.since(&s4, "outpost_gc_passes"), 1.0);
    assert_eq!(s5.since(&s4, "outpost_scrub_passes"), 1.0);
    assert!(s5.since(&s4, "outpost_scrub_bytes") >= layer_bytes);
    assert_eq!(s5.get("outpost_scrub_quarantined"), 0.0);
    assert_eq!(moved(&s4, &s5, "admin", "POST", "200"), 2.0);
}

#[test]
fn access_admins_metrics_users_and_the_separate_listener() {
    let site = Site::new();
    let main = site.reg.client();
    // Anonymous: challenged; signed in but not named: denied; a wrong password: challenged.
    let r = main.get("/metrics");
    assert_eq!(r.status, 401, "{r:?}");
    assert!(r.header("www-authenticate").is_some());
    assert_eq!(site.user("bob").get("/metrics").status, 403);
    assert_eq!(site.user("alice").get("/metrics").status, 403);
    assert_eq!(main.as_user("prom", "wrong").get("/metrics").status, 401);
    // metrics.users and admins; an admin token too, and HEAD.
    assert_eq!(site.user("prom").get("/metrics").status, 200);
    assert_eq!(site.user("root").get("/metrics").status, 200);
    assert_eq!(site.user("prom").head("/metrics").status, 200);
    let r = site
        .user("root")
        .get("/token?service=outpost&scope=registry:admin:*");
    assert_eq!(r.status, 200, "{r:?}");
    let token = r.json()["token"].as_str().unwrap().to_owned();
    let r = main.with_auth(&format!("Bearer {token}")).get("/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    let text = String::from_utf8(r.body).unwrap();
    assert!(!text.contains(&token), "the token in the scrape");
    // A metrics user is not an admin.
    assert_eq!(site.user("prom").get("/admin/stats").status, 403);

    // The separate listener: /metrics for anyone, nothing of the registry.
    let side = Client::new(site.metrics_addr);
    let r = side.get("/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    let s = Scrape::parse(&String::from_utf8(r.body).unwrap());
    // Requests on it are counted like any other.
    assert!(s.requests("metrics", "GET", "200") >= 1.0);
    // The probes answer there too, without credentials.
    for path in ["/healthz", "/readyz"] {
        let r = side.get(path);
        assert_eq!((r.status, r.body.as_slice()), (200, &b"ok\n"[..]), "{path}");
    }
    for path in [
        "/v2/",
        "/v2/_catalog",
        "/admin/stats",
        "/token",
        "/",
        "/metrics/x",
    ] {
        assert_eq!(side.get(path).status, 404, "{path}");
    }
    // Even with an admin's credentials it is no door to the API.
    let admin_side = Client::new(site.metrics_addr).as_user("root", password("root"));
    assert_eq!(admin_side.get("/admin/stats").status, 404);
    assert_eq!(side.req("POST", "/metrics", &[], Body::None).status, 405);
    assert_eq!(side.delete("/v2/team/app/manifests/v1").status, 405);
}

#[test]
fn open_without_auth_and_no_listener_by_default() {
    let dir = TempDir::new("metrics-open");
    let reg = Registry::start(&dir.path().join("data"));
    let r = reg.client().get("/metrics");
    assert_eq!(r.status, 200, "{r:?}");
    let s = Scrape::parse(&String::from_utf8(r.body).unwrap());
    assert_eq!(s.get("outpost_failed_logins"), 0.0);
    assert!(!reg.log_text().contains("served to anyone"));
    // A bad metrics config is refused with its key named.
    let cfg = dir.path().join("bad.json");
    for (bad, says) in [
        (
            json!({"metrics": {"listen": "localhost"}}),
            "metrics.listen",
        ),
        (
            json!({"metrics": {"users": ["no spaces"]}}),
            "metrics.users",
        ),
        (json!({"metrics": {"user": ["prom"]}}), "unknown field"),
    ] {
        std::fs::write(&cfg, bad.to_string()).unwrap();
        let out = serve(&dir.path().join("bad-data"), "127.0.0.1:0")
            .args(["--config", cfg.to_str().unwrap()])
            .stderr(Stdio::piped())
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{bad}: {err}");
    }
}

#[test]
fn mirror_and_pull_through_cache_counters() {
    let dir = TempDir::new("metrics-mirror");
    let up = Registry::start(&dir.path().join("up"));
    let u = up.client();
    let manifest = push_image(&u, "app", 9, 1);
    assert_eq!(
        u.put_manifest("app", "v1", OCI_MANIFEST, &manifest).status,
        201
    );
    let v: Value = serde_json::from_slice(&manifest).unwrap();
    let layer = v["layers"][0]["digest"].as_str().unwrap().to_owned();
    let upstream = format!("http://{}", up.addr);
    let cfg = dir.path().join("outpost.json");
    let config = json!({
        "listen": "127.0.0.1:0",
        "mirrors": [
            {"name": "pt", "upstream": upstream, "pullThrough": "cache"},
            {"name": "sync", "upstream": upstream, "repositories": ["app"]},
            {"name": "gone", "upstream": "http://127.0.0.1:1", "repositories": ["app"]},
        ],
    });
    std::fs::write(&cfg, config.to_string()).unwrap();
    let reg = Registry::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = reg.client();
    let scrape = || {
        let r = c.get("/metrics");
        assert_eq!(r.status, 200, "{r:?}");
        Scrape::parse(&String::from_utf8(r.body).unwrap())
    };
    let s0 = scrape();

    // Misses that fill the cache, then hits.
    assert_eq!(c.get("/v2/cache/app/manifests/v1").status, 200);
    let blob = format!("/v2/cache/app/blobs/{layer}");
    assert_eq!(c.get(&blob).status, 200);
    let fills = |s: &Scrape| s.get("outpost_cache_fills");
    let deadline = std::time::Instant::now() + bound(std::time::Duration::from_secs(10));
    let mut s1 = scrape();
    while fills(&s1) < 2.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(20));
        s1 = scrape();
    }
    assert_eq!(s1.since(&s0, "outpost_cache_misses"), 2.0);
    assert_eq!(s1.since(&s0, "outpost_cache_fills"), 2.0);
    assert!(s1.since(&s0, "outpost_cache_fill_bytes") > 1000.0);
    assert_eq!(s1.get("outpost_cache_hits"), 0.0);
    let digest = sha256(&manifest);
    assert_eq!(
        c.get(&format!("/v2/cache/app/manifests/{digest}")).status,
        200
    );
    assert_eq!(c.get(&blob).status, 200);
    let s2 = scrape();
    assert_eq!(s2.since(&s1, "outpost_cache_hits"), 2.0);
    assert_eq!(s2.since(&s1, "outpost_cache_misses"), 0.0);

    // A sync pass that works, one whose upstream is not there.
    assert_eq!(
        c.req("POST", "/admin/mirrors/sync/run", &[], Body::None)
            .status,
        200
    );
    let r = c.req("POST", "/admin/mirrors/gone/run", &[], Body::None);
    assert_eq!(r.json()["result"], "failed", "{r:?}");
    let s3 = scrape();
    assert_eq!(s3.since(&s2, "outpost_mirror_passes"), 2.0);
    assert_eq!(s3.since(&s2, "outpost_mirror_failed_passes"), 1.0);
    assert!(
        s3.since(&s2, "outpost_store_repositories") >= 1.0,
        "app synced"
    );
}

/// Everything the server sends after `sent` on a new connection, until it closes it.
fn answer_to(addr: SocketAddr, sent: &[u8]) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    s.write_all(sent).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn refusals_before_any_handler_are_counted_and_logged() {
    use std::cell::Cell;
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let dir = TempDir::new("metrics-refused");
    let reg = Registry::start_with(
        &dir.path().join("data"),
        &["--max-connections", "1", "--header-timeout", "1s"],
    );
    // One connection at a time: a closing one (a refused request lingers for up to half a
    // second) may hold the place, so a client retries on 503; those are counted too.
    let busy_seen = Cell::new(0.0);
    let answer = |sent: &[u8]| loop {
        let got = answer_to(reg.addr, sent);
        if !got.starts_with("HTTP/1.1 503 ") {
            return got;
        }
        busy_seen.set(busy_seen.get() + 1.0);
        std::thread::sleep(Duration::from_millis(50));
    };
    let scrape = || {
        let got = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        let body = got.split_once("\r\n\r\n").unwrap().1;
        Scrape::parse(body)
    };
    let rejected = |s: &Scrape, status: &str| {
        s.value(
            "outpost_requests_rejected",
            "outpost_requests_rejected_total",
            &[("status", status)],
        )
    };
    let busy = |s: &Scrape| {
        s.value(
            "outpost_connections_refused",
            "outpost_connections_refused_total",
            &[("reason", "maxConnections")],
        )
    };
    let before = scrape();
    // A malformed request line, one over the 16 KiB limit, and a head that never ends: the
    // HTTP layer answers them itself.
    let malformed = answer(b"NONSENSE\r\n\r\n");
    assert!(malformed.starts_with("HTTP/1.1 400 "), "{malformed}");
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(20_000));
    let long = answer(long.as_bytes());
    assert!(long.starts_with("HTTP/1.1 400 "), "{long}");
    let slow = answer(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n");
    assert!(slow.starts_with("HTTP/1.1 408 "), "{slow}");

    // The one connection busy with an upload (its handler waits for the body): a newcomer
    // gets 503 from the listener.
    let loc = answer(
        b"POST /v2/edge/app/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .lines()
    .find_map(|l| l.strip_prefix("Location: ").map(str::to_owned))
    .expect("an upload session");
    let mut held = loop {
        let mut held = std::net::TcpStream::connect(reg.addr).unwrap();
        write!(
            held,
            "PATCH {loc} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
             Content-Length: 1000000\r\n\r\n"
        )
        .unwrap();
        let mut line = String::new();
        BufReader::new(&mut held).read_line(&mut line).unwrap();
        if line.starts_with("HTTP/1.1 100") {
            break held;
        }
        assert!(line.starts_with("HTTP/1.1 503"), "{line}");
        busy_seen.set(busy_seen.get() + 1.0);
        std::thread::sleep(Duration::from_millis(50));
    };
    held.write_all(&[0u8; 1000]).unwrap();
    let refused = answer_to(reg.addr, b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 503 "), "{refused}");
    drop(held);

    // Counted once each connection is closed, a moment after the client read its answer.
    let deadline = Instant::now() + bound(Duration::from_secs(10));
    let after = loop {
        let s = scrape();
        if rejected(&s, "408") > rejected(&before, "408") || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(rejected(&after, "400") - rejected(&before, "400"), 2.0);
    assert_eq!(rejected(&after, "408") - rejected(&before, "408"), 1.0);
    assert_eq!(rejected(&after, "505"), 0.0);
    assert_eq!(busy(&after) - busy(&before), 1.0 + busy_seen.get());
    // Neither reaches the request counters; one log line tells (the rest are rate-limited).
    assert_eq!(after.requests("other", "other", "400"), 0.0);
    let log = reg.log_with("before any handler");
    assert!(
        log.contains("answered 400 (malformed request line) to 127.0.0.1"),
        "{log}"
    );
    assert_eq!(log.matches("before any handler").count(), 1, "{log}");
}
