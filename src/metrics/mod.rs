//! Counters and gauges of the running registry, for `/metrics` (Prometheus) and
//! `/admin/stats`: one process-wide registry of lock-free atomics, updated where things
//! happen (requests, mounts, GC, scrub, mirrors, logins) and read at scrape time.

pub mod config;
mod exposition;

pub use exposition::{scrape, CONTENT_TYPE};

use crate::storage::{MountRefused, Store, StoreError, Totals};
use serde_json::{json, Map, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The registry of this process.
static METRICS: Metrics = Metrics::new();

/// The process's metrics.
pub fn get() -> &'static Metrics {
    &METRICS
}

/// What a request addressed, for the request counters: a few fixed kinds, never a name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags,
    /// `/v2/<name>/manifests/<reference>`
    Manifest,
    /// `/v2/<name>/blobs/<digest>`
    Blob,
    /// `/v2/<name>/blobs/uploads/...`
    Upload,
    /// `/v2/<name>/referrers/<digest>`
    Referrers,
    /// `/token`
    Token,
    /// `/admin/...`
    Admin,
    /// `/metrics`
    Metrics,
    /// `/healthz`, `/readyz`
    Health,
    /// Anything else (404s).
    Other,
}

const KINDS: [&str; 12] = [
    "base",
    "catalog",
    "tags",
    "manifest",
    "blob",
    "upload",
    "referrers",
    "token",
    "admin",
    "metrics",
    "health",
    "other",
];

const METHODS: [&str; 8] = [
    "GET", "HEAD", "PUT", "POST", "PATCH", "DELETE", "OPTIONS", "other",
];

/// Statuses counted under their own label; any other is counted as `other`.
const STATUSES: [u16; 22] = [
    200, 201, 202, 204, 206, 304, 307, 400, 401, 403, 404, 405, 409, 413, 415, 416, 429, 500, 502,
    503, 507, 0,
];

/// Statuses the HTTP layer answers by itself, before a request is routed (a head it cannot
/// read, or that timed out); any other is counted as `other`.
const REJECTED: [u16; 6] = [400, 408, 417, 501, 505, 0];

/// Why a listener refused a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Busy {
    /// `maxConnections` are open, none idle or behind.
    MaxConnections,
    /// No thread could be started for it.
    NoThread,
}

const BUSY: [&str; 2] = ["maxConnections", "noThread"];

/// Upper bounds of the latency buckets, seconds: 1 ms to a minute.
const BUCKETS: [f64; 15] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

const REQUEST_CELLS: usize = KINDS.len() * METHODS.len() * STATUSES.len();

/// Why a mount request was answered with an upload session instead of 201.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// `blobMounting` is disabled.
    Disabled,
    /// No `from`, and `automaticMount` is disabled.
    AutomaticDisabled,
    /// `from` is not a valid repository name.
    FromInvalid,
    /// `mount` is not a valid digest.
    DigestInvalid,
    /// The store's reason.
    Store(MountRefused),
}

const REASONS: [&str; 9] = [
    "disabled",
    "automaticDisabled",
    "fromInvalid",
    "digestInvalid",
    "fromUnknown",
    "notInFrom",
    "notStored",
    "otherDomain",
    "notReadable",
];

impl Refusal {
    fn index(self) -> usize {
        match self {
            Refusal::Disabled => 0,
            Refusal::AutomaticDisabled => 1,
            Refusal::FromInvalid => 2,
            Refusal::DigestInvalid => 3,
            Refusal::Store(MountRefused::FromUnknown) => 4,
            Refusal::Store(MountRefused::NotInFrom) => 5,
            Refusal::Store(MountRefused::NotStored) => 6,
            Refusal::Store(MountRefused::OtherDomain) => 7,
            Refusal::Store(MountRefused::NotReadable) => 8,
        }
    }

    /// The reason's name in logs, `/admin/stats` and `/metrics`.
    pub fn name(self) -> &'static str {
        REASONS[self.index()]
    }
}

/// Which way a blob transfer goes.
#[derive(Clone, Copy, Debug)]
pub enum Direction {
    /// A blob sent to a client.
    Download,
    /// Upload data received from a client.
    Upload,
}

/// Latencies of one route kind: per-bucket counts (not cumulative), the sum in microseconds.
struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(d.as_micros() as u64, Ordering::Relaxed);
    }
}

/// How long store totals read at a scrape are reused when nothing was written meanwhile
/// (the blob bytes need a walk of the blob table).
const TOTALS_TTL: Duration = Duration::from_secs(30);

/// Every counter and gauge; see `render` for their names.
pub struct Metrics {
    requests: [AtomicU64; REQUEST_CELLS],
    latency: [Histogram; KINDS.len()],
    connections: AtomicU64,
    transfers: [AtomicU64; 2],
    started_ms: AtomicU64,
    mounts: AtomicU64,
    mounted_bytes: AtomicU64,
    refused: [AtomicU64; REASONS.len()],
    deduplicated: AtomicU64,
    deduplicated_bytes: AtomicU64,
    gc_passes: AtomicU64,
    gc_manifests: AtomicU64,
    gc_blobs: AtomicU64,
    gc_bytes: AtomicU64,
    scrub_passes: AtomicU64,
    scrub_bytes: AtomicU64,
    scrub_quarantined: AtomicU64,
    mirror_passes: AtomicU64,
    mirror_failed: AtomicU64,
    cache_hits: AtomicU64,
    cache_misses: AtomicU64,
    cache_fills: AtomicU64,
    cache_fill_bytes: AtomicU64,
    failed_logins: AtomicU64,
    rate_limited: AtomicU64,
    rejected: [AtomicU64; REJECTED.len()],
    busy: [AtomicU64; BUSY.len()],
    /// Store totals of the last scrape, and when they were read.
    totals: Mutex<Option<(Instant, Totals)>>,
    /// Something was written since: the totals are read again.
    stale: AtomicBool,
}

/// Holds a gauge one higher while it lives.
pub struct Active(&'static AtomicU64);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn add(a: &AtomicU64, n: u64) {
    a.fetch_add(n, Ordering::Release);
}

/// Acquire: a scrape that sees a request counted sees the store marked changed before it.
fn load(a: &AtomicU64) -> u64 {
    a.load(Ordering::Acquire)
}

impl Metrics {
    const fn new() -> Metrics {
        Metrics {
            requests: [const { AtomicU64::new(0) }; REQUEST_CELLS],
            latency: [const { Histogram::new() }; KINDS.len()],
            connections: AtomicU64::new(0),
            transfers: [const { AtomicU64::new(0) }; 2],
            started_ms: AtomicU64::new(0),
            mounts: AtomicU64::new(0),
            mounted_bytes: AtomicU64::new(0),
            refused: [const { AtomicU64::new(0) }; REASONS.len()],
            deduplicated: AtomicU64::new(0),
            deduplicated_bytes: AtomicU64::new(0),
            gc_passes: AtomicU64::new(0),
            gc_manifests: AtomicU64::new(0),
            gc_blobs: AtomicU64::new(0),
            gc_bytes: AtomicU64::new(0),
            scrub_passes: AtomicU64::new(0),
            scrub_bytes: AtomicU64::new(0),
            scrub_quarantined: AtomicU64::new(0),
            mirror_passes: AtomicU64::new(0),
            mirror_failed: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            cache_misses: AtomicU64::new(0),
            cache_fills: AtomicU64::new(0),
            cache_fill_bytes: AtomicU64::new(0),
            failed_logins: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            rejected: [const { AtomicU64::new(0) }; REJECTED.len()],
            busy: [const { AtomicU64::new(0) }; BUSY.len()],
            totals: Mutex::new(None),
            stale: AtomicBool::new(true),
        }
    }

    /// The registry started serving now (`outpost_process_start_time_seconds`).
    pub fn started(&self) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        self.started_ms.store(ms, Ordering::Relaxed);
    }

    /// A request of `kind` was answered `status` after `elapsed`.
    pub fn request(&self, kind: Kind, method: &str, status: u16, elapsed: Duration) {
        let m = METHODS
            .iter()
            .position(|x| *x == method)
            .unwrap_or(METHODS.len() - 1);
        let s = STATUSES
            .iter()
            .position(|x| *x == status)
            .unwrap_or(STATUSES.len() - 1);
        let k = kind as usize;
        // Marked first: a scrape that sees this request counted reads the totals again.
        if !matches!(method, "GET" | "HEAD") && status < 400 {
            self.changed();
        }
        self.latency[k].observe(elapsed);
        self.requests[(k * METHODS.len() + m) * STATUSES.len() + s].fetch_add(1, Ordering::Release);
    }

    /// The store's content changed: the next scrape reads its totals again.
    pub fn changed(&self) {
        self.stale.store(true, Ordering::SeqCst);
    }

    /// A client connection is open while the result lives.
    pub fn connection(&'static self) -> Active {
        add(&self.connections, 1);
        Active(&self.connections)
    }

    /// A blob transfer is under way while the result lives.
    pub fn transfer(&'static self, d: Direction) -> Active {
        let a = &self.transfers[d as usize];
        add(a, 1);
        Active(a)
    }

    /// Blob transfers under way now in direction `d`.
    pub fn active(&self, d: Direction) -> u64 {
        load(&self.transfers[d as usize])
    }

    /// A mount of `size` bytes was answered 201.
    pub fn mounted(&self, size: u64) {
        add(&self.mounts, 1);
        add(&self.mounted_bytes, size);
    }

    /// A mount was refused.
    pub fn refused(&self, why: Refusal) {
        add(&self.refused[why.index()], 1);
    }

    /// An upload of `size` bytes turned out to be stored already.
    pub fn deduplicated(&self, size: u64) {
        add(&self.deduplicated, 1);
        add(&self.deduplicated_bytes, size);
    }

    /// A collector pass (not a dry run) deleted these.
    pub fn gc_pass(&self, manifests: u64, blobs: u64, bytes: u64) {
        self.changed();
        add(&self.gc_manifests, manifests);
        add(&self.gc_blobs, blobs);
        add(&self.gc_bytes, bytes);
        add(&self.gc_passes, 1);
    }

    /// A scrub run (a pass, or part of one: `completed` says which) read `bytes`.
    pub fn scrub_pass(&self, completed: bool, bytes: u64) {
        add(&self.scrub_passes, u64::from(completed));
        add(&self.scrub_bytes, bytes);
    }

    /// The scrub quarantined a damaged object.
    pub fn quarantined(&self) {
        add(&self.scrub_quarantined, 1);
    }

    /// A mirror sync pass ended (`failed`: with failures).
    pub fn mirror_pass(&self, failed: bool) {
        self.changed();
        add(&self.mirror_failed, u64::from(failed));
        add(&self.mirror_passes, 1);
    }

    /// A pull-through cache served from the store without asking its upstream.
    pub fn cache_hit(&self) {
        add(&self.cache_hits, 1);
    }

    /// A pull-through cache asked its upstream.
    pub fn cache_miss(&self) {
        add(&self.cache_misses, 1);
    }

    /// A pull-through cache stored `bytes` from its upstream.
    pub fn cache_fill(&self, bytes: u64) {
        self.changed();
        add(&self.cache_fill_bytes, bytes);
        add(&self.cache_fills, 1);
    }

    /// Credentials did not verify.
    pub fn login_failed(&self) {
        add(&self.failed_logins, 1);
    }

    /// A login was refused because its address failed too often.
    pub fn rate_limited(&self) {
        add(&self.rate_limited, 1);
    }

    /// A connection was answered `status` by the HTTP layer itself and closed: its request
    /// never reached a handler.
    pub fn rejected(&self, status: u16) {
        let s = REJECTED
            .iter()
            .position(|x| *x == status)
            .unwrap_or(REJECTED.len() - 1);
        add(&self.rejected[s], 1);
    }

    /// A listener refused a connection (503, or closed on TLS) without serving it.
    pub fn busy(&self, why: Busy) {
        add(&self.busy[why as usize], 1);
    }

    /// The store's totals: read again if something was written since the last read or it is
    /// older than `TOTALS_TTL`, else the last ones (a scrape walks the blob table at most
    /// once per write burst).
    pub fn store_totals(&self, store: &Store) -> Result<Totals, StoreError> {
        let mut cached = self.totals.lock().unwrap_or_else(|p| p.into_inner());
        let stale = self.stale.swap(false, Ordering::SeqCst);
        match *cached {
            Some((at, t)) if !stale && at.elapsed() < TOTALS_TTL => Ok(t),
            _ => match store.totals() {
                Ok(t) => {
                    *cached = Some((Instant::now(), t));
                    Ok(t)
                }
                Err(e) => {
                    self.changed();
                    Err(e)
                }
            },
        }
    }

    /// Mount and dedupe counters as JSON (part of `/admin/stats`).
    pub fn stats_json(&self) -> Value {
        let refused: Map<String, Value> = REASONS
            .iter()
            .zip(&self.refused)
            .map(|(n, c)| ((*n).to_owned(), json!(load(c))))
            .collect();
        json!({
            "mounts": {
                "done": load(&self.mounts),
                "bytesNotWritten": load(&self.mounted_bytes),
                "refused": refused,
            },
            "uploads": {
                "deduplicated": load(&self.deduplicated),
                "bytesDeduplicated": load(&self.deduplicated_bytes),
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_by_upper_bound() {
        let h = Histogram::new();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(120));
        let counts: Vec<u64> = h.buckets.iter().map(load).collect();
        assert_eq!(counts[0], 2, "≤ 1 ms");
        assert_eq!(counts[2], 1, "≤ 5 ms");
        assert_eq!(counts[BUCKETS.len()], 1, "+Inf");
        assert_eq!(load(&h.sum_micros), 500 + 1000 + 3000 + 120_000_000);
    }
}
