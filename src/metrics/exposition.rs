//! The Prometheus text exposition format (0.0.4), written by hand: `# HELP` and `# TYPE` per
//! family, then its samples. Label values are fixed words or the version; escaped anyway.

use super::{load, Metrics, BUCKETS, BUSY, KINDS, METHODS, REASONS, REJECTED, STATUSES};
use crate::storage::Store;
use std::fmt::Write as _;

/// The content type of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Every family of `m`, with the store's totals and free space read now (the totals cached,
/// see `store_totals`) and `reserve` (`minFreeSpace`). A store that cannot be read leaves its
/// families out (logged), the rest is still served.
pub fn scrape(m: &'static Metrics, store: &Store, reserve: u64) -> String {
    let mut o = Out(String::with_capacity(8 << 10));
    o.family(
        "outpost_build_info",
        "gauge",
        "Outpost's version; always 1.",
    );
    o.sample(
        "outpost_build_info",
        &[("version", env!("CARGO_PKG_VERSION"))],
        1u64,
    );
    o.one(
        "outpost_process_start_time_seconds",
        "gauge",
        "When the registry started serving, seconds since the Unix epoch.",
        load(&m.started_ms) as f64 / 1e3,
    );

    o.family(
        "outpost_requests_total",
        "counter",
        "Requests answered, by route kind, method and status.",
    );
    for (k, kind) in KINDS.iter().enumerate() {
        for (i, method) in METHODS.iter().enumerate() {
            for (j, status) in STATUSES.iter().enumerate() {
                let n = load(&m.requests[(k * METHODS.len() + i) * STATUSES.len() + j]);
                if n > 0 {
                    let status = match status {
                        0 => "other".to_owned(),
                        s => s.to_string(),
                    };
                    o.sample(
                        "outpost_requests_total",
                        &[("kind", kind), ("method", method), ("status", &status)],
                        n,
                    );
                }
            }
        }
    }
    o.family(
        "outpost_request_duration_seconds",
        "histogram",
        "Time from a request's head to the end of its response, by route kind.",
    );
    for (kind, h) in KINDS.iter().zip(&m.latency) {
        let counts: Vec<u64> = h.buckets.iter().map(load).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            continue;
        }
        let mut below = 0;
        for (bound, n) in BUCKETS.iter().zip(&counts) {
            below += n;
            let le = bound.to_string();
            o.sample(
                "outpost_request_duration_seconds_bucket",
                &[("kind", kind), ("le", &le)],
                below,
            );
        }
        o.sample(
            "outpost_request_duration_seconds_bucket",
            &[("kind", kind), ("le", "+Inf")],
            total,
        );
        let sum = load(&h.sum_micros) as f64 / 1e6;
        o.sample(
            "outpost_request_duration_seconds_sum",
            &[("kind", kind)],
            sum,
        );
        o.sample(
            "outpost_request_duration_seconds_count",
            &[("kind", kind)],
            total,
        );
    }
    o.one(
        "outpost_received_bytes_total",
        "counter",
        "Bytes read from client connections (heads and bodies, as on the wire).",
        tiny_http::bytes_received(),
    );
    o.one(
        "outpost_sent_bytes_total",
        "counter",
        "Bytes written to client connections (heads and bodies, as on the wire).",
        tiny_http::bytes_sent(),
    );
    o.one(
        "outpost_connections_active",
        "gauge",
        "Client connections open on the main listener.",
        load(&m.connections),
    );
    o.family(
        "outpost_connections_refused_total",
        "counter",
        "Connections a listener refused without serving them (503, or closed on a TLS port): \
         maxConnections busy, or no thread could be started.",
    );
    for (reason, a) in BUSY.iter().zip(&m.busy) {
        o.sample(
            "outpost_connections_refused_total",
            &[("reason", reason)],
            load(a),
        );
    }
    o.family(
        "outpost_requests_rejected_total",
        "counter",
        "Requests the HTTP layer answered itself and closed, before any handler (not in the \
         access log nor outpost_requests_total), by status.",
    );
    for (status, a) in REJECTED.iter().zip(&m.rejected) {
        let status = match status {
            0 => "other".to_owned(),
            s => s.to_string(),
        };
        o.sample(
            "outpost_requests_rejected_total",
            &[("status", &status)],
            load(a),
        );
    }
    o.family(
        "outpost_transfers_active",
        "gauge",
        "Blob bodies being sent (download) or received (upload) right now.",
    );
    for (dir, a) in ["download", "upload"].iter().zip(&m.transfers) {
        o.sample("outpost_transfers_active", &[("direction", dir)], load(a));
    }

    o.family(
        "outpost_mount_refusals_total",
        "counter",
        "Mount requests answered with an upload session instead, by reason.",
    );
    for (reason, a) in REASONS.iter().zip(&m.refused) {
        o.sample(
            "outpost_mount_refusals_total",
            &[("reason", reason)],
            load(a),
        );
    }

    match m.store_totals(store) {
        Ok(t) => {
            o.one(
                "outpost_uploads_open",
                "gauge",
                "Upload sessions open.",
                t.uploads,
            );
            o.one(
                "outpost_store_repositories",
                "gauge",
                "Repositories in the store.",
                t.repositories,
            );
            o.one(
                "outpost_store_blobs",
                "gauge",
                "Blobs stored (each once per encryption domain).",
                t.blobs,
            );
            o.one(
                "outpost_store_blob_bytes",
                "gauge",
                "Bytes of the blobs stored.",
                t.blob_bytes,
            );
            o.one(
                "outpost_store_file_bytes",
                "gauge",
                "Size of the database file.",
                t.file_bytes,
            );
        }
        Err(e) => log::warn!("metrics: cannot read the store's totals: {e}"),
    }
    if let Some(free) = store.free_space() {
        o.one(
            "outpost_store_free_bytes",
            "gauge",
            "Free space on the store's filesystem (for unprivileged users).",
            free,
        );
    }
    o.one(
        "outpost_store_reserve_bytes",
        "gauge",
        "minFreeSpace: upload data is refused while less would stay free.",
        reserve,
    );

    let counters: [(&str, &str, &std::sync::atomic::AtomicU64); 19] = [
        (
            "outpost_mounts_total",
            "Cross-repository mounts answered 201.",
            &m.mounts,
        ),
        (
            "outpost_mounted_bytes_total",
            "Bytes of the blobs mounted: not uploaded, not written.",
            &m.mounted_bytes,
        ),
        (
            "outpost_dedupe_uploads_total",
            "Uploads whose blob was stored already (deduplicated).",
            &m.deduplicated,
        ),
        (
            "outpost_dedupe_bytes_total",
            "Bytes of deduplicated uploads: received, not stored twice.",
            &m.deduplicated_bytes,
        ),
        (
            "outpost_gc_passes_total",
            "Collector passes run (dry runs not counted).",
            &m.gc_passes,
        ),
        (
            "outpost_gc_deleted_manifests_total",
            "Manifests the collector deleted.",
            &m.gc_manifests,
        ),
        (
            "outpost_gc_deleted_blobs_total",
            "Blobs the collector deleted.",
            &m.gc_blobs,
        ),
        (
            "outpost_gc_deleted_bytes_total",
            "Bytes the collector freed (blobs and manifests).",
            &m.gc_bytes,
        ),
        (
            "outpost_scrub_passes_total",
            "Scrub passes completed, of the whole store or of one repository.",
            &m.scrub_passes,
        ),
        (
            "outpost_scrub_bytes_total",
            "Bytes the scrub read and verified.",
            &m.scrub_bytes,
        ),
        (
            "outpost_scrub_quarantined_total",
            "Damaged objects the scrub quarantined.",
            &m.scrub_quarantined,
        ),
        (
            "outpost_mirror_passes_total",
            "Mirror sync passes run.",
            &m.mirror_passes,
        ),
        (
            "outpost_mirror_failed_passes_total",
            "Mirror sync passes that ended with failures.",
            &m.mirror_failed,
        ),
        (
            "outpost_cache_hits_total",
            "Pull-through cache requests served from the store without the upstream.",
            &m.cache_hits,
        ),
        (
            "outpost_cache_misses_total",
            "Pull-through cache requests that asked the upstream.",
            &m.cache_misses,
        ),
        (
            "outpost_cache_fills_total",
            "Manifests and blobs a pull-through cache stored from its upstream.",
            &m.cache_fills,
        ),
        (
            "outpost_cache_fill_bytes_total",
            "Bytes a pull-through cache stored from its upstream.",
            &m.cache_fill_bytes,
        ),
        (
            "outpost_failed_logins_total",
            "Credentials that did not verify.",
            &m.failed_logins,
        ),
        (
            "outpost_rate_limited_total",
            "Logins refused (429) because their address failed too often.",
            &m.rate_limited,
        ),
    ];
    for (name, help, a) in counters {
        o.one(name, "counter", help, load(a));
    }
    o.0
}

/// The text being written.
struct Out(String);

impl Out {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", escape(v));
            }
            self.0.push('}');
        }
        self.0.push(' ');
        value.write(&mut self.0);
        self.0.push('\n');
    }

    /// A family of one sample without labels.
    fn one(&mut self, name: &str, kind: &str, help: &str, value: impl Value) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }
}

/// A sample's value as the format writes it.
trait Value {
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_finite() {
            let _ = write!(out, "{self}");
        } else if self.is_nan() {
            out.push_str("NaN");
        } else if *self > 0.0 {
            out.push_str("+Inf");
        } else {
            out.push_str("-Inf");
        }
    }
}

/// A label value escaped: backslash, double quote and line feed.
fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return v.into();
    }
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
        .into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_escaped_and_values_written_as_the_format_wants() {
        let mut o = Out(String::new());
        o.family("x_total", "counter", "a\\b\nc");
        o.sample("x_total", &[("v", "a\"b\\c\nd"), ("w", "plain")], 3u64);
        o.sample("y", &[], f64::INFINITY);
        o.sample("y", &[], 0.25);
        assert_eq!(
            o.0,
            "# HELP x_total a\\\\b\\nc\n# TYPE x_total counter\n\
             x_total{v=\"a\\\"b\\\\c\\nd\",w=\"plain\"} 3\ny +Inf\ny 0.25\n"
        );
    }
}
