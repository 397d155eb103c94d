//! Sync passes of configured mirrors, and their state (status, resumable transfers).

use super::local::LocalSink;
use super::progress::Progress;
use super::remote::Remote;
use super::{copy_image, MirrorError};
use crate::clock::unix_now;
use crate::config::MirrorConfig;
use crate::storage::Store;
use serde_json::{json, Value};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// Mirrors with a pass under way (one at a time each).
static RUNNING: Mutex<Option<HashSet<String>>> = Mutex::new(None);

/// Most failures kept in a mirror's status.
const MAX_FAILURES: usize = 50;

/// The stored state of mirror `name` (an empty object if it never ran).
pub fn state(store: &Store, name: &str) -> Result<Value, MirrorError> {
    Ok(store
        .mirror_state(name)?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| json!({})))
}

/// Every configured mirror's status, as the admin API and `outpost mirror status` show it.
pub fn status(store: &Store, mirrors: &[MirrorConfig]) -> Result<Value, MirrorError> {
    let mut out = Vec::new();
    for m in mirrors {
        let s = state(store, &m.name)?;
        out.push(json!({
            "name": m.name,
            "upstream": m.upstream,
            "repositories": m.repositories,
            "pullThrough": m.pull_through,
            "intervalSeconds": m.interval.map(|i| i.as_secs()),
            "running": is_running(&m.name),
            "lastRun": s["lastRun"],
            "totals": s["totals"],
            "cache": s["cache"],
        }));
    }
    Ok(json!({ "mirrors": out }))
}

fn is_running(name: &str) -> bool {
    RUNNING
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .is_some_and(|s| s.contains(name))
}

/// Marks `name` running until dropped.
struct Running(String);

impl Running {
    fn take(name: &str) -> Option<Running> {
        let mut r = RUNNING.lock().unwrap_or_else(|p| p.into_inner());
        r.get_or_insert_with(HashSet::new)
            .insert(name.to_owned())
            .then(|| Running(name.to_owned()))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = RUNNING.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            s.remove(&self.0);
        }
    }
}

/// Runs one pass of mirror `m` into `store`: every wanted tag of every repository whose
/// upstream digest changed since the last pass is copied, fetching only blobs the store
/// lacks. Returns the pass's report (also stored as `lastRun`).
pub fn run_pass(
    store: &Store,
    m: &MirrorConfig,
    stopping: &AtomicBool,
    progress: Progress,
) -> Result<Value, MirrorError> {
    let _running = Running::take(&m.name)
        .ok_or_else(|| MirrorError::new(format!("a pass of mirror {} is under way", m.name)))?;
    // What a pass stores is the mirror's in the audit trail, whoever started it.
    let _actor = crate::audit::acting_as("mirror", None);
    let started = unix_now();
    let clock = std::time::Instant::now();
    let mut st = state(store, &m.name)?;
    let mut failures: Vec<Value> = Vec::new();
    let (mut images, mut fetched, mut blobs) = (0u64, 0u64, 0u64);
    let mut progress = progress;
    let mut sink = LocalSink::new(store);
    if let Some(p) = st["partials"].as_object() {
        for (digest, v) in p {
            if let (Some(r), Some(u)) = (v["repo"].as_str(), v["upload"].as_str()) {
                sink.partials
                    .insert(digest.clone(), (r.to_owned(), u.to_owned()));
            }
        }
    }
    let remote = m
        .credentials()
        .and_then(|c| Remote::new(&m.upstream, c, m.ca_file.as_deref()));
    match remote {
        Err(e) => failures.push(json!({ "image": "", "reason": e })),
        Ok(remote) => {
            for repo in &m.repositories {
                if stopping.load(Ordering::Relaxed) {
                    failures.push(json!({"image": repo, "reason": "registry stopping"}));
                    break;
                }
                let tags = if !m.tags.is_empty() && m.tag_regex.is_none() {
                    Ok(m.tags.clone())
                } else {
                    remote.tags(repo)
                };
                let tags = match tags {
                    Ok(t) => t,
                    Err(e) => {
                        failures.push(json!({ "image": repo, "reason": e.message }));
                        continue;
                    }
                };
                // Tags come from the upstream: only valid ones become local tags.
                let wanted = tags
                    .iter()
                    .filter(|t| crate::registry::names::valid_tag(t) && m.wants_tag(t));
                for tag in wanted {
                    if stopping.load(Ordering::Relaxed) {
                        break;
                    }
                    images += 1;
                    let image = format!("{repo}:{tag}");
                    match sync_one(
                        store,
                        &remote,
                        &mut sink,
                        m,
                        repo,
                        tag,
                        &mut st,
                        &mut progress,
                    ) {
                        Ok(None) => {}
                        Ok(Some(n)) => {
                            fetched += 1;
                            blobs += n;
                        }
                        Err(e) => {
                            log::warn!("mirror {}: {image}: {e}", m.name);
                            failures.push(json!({ "image": image, "reason": e.message }));
                        }
                    }
                }
            }
        }
    }
    progress.finish();
    let mut partials = serde_json::Map::new();
    for (digest, (repo, upload)) in &sink.partials {
        partials.insert(digest.clone(), json!({ "repo": repo, "upload": upload }));
    }
    let bytes = progress.bytes_moved();
    failures.truncate(MAX_FAILURES);
    let report = json!({
        "startedAt": started,
        "durationMs": clock.elapsed().as_millis() as u64,
        "result": if failures.is_empty() { "ok" } else { "failed" },
        "images": images,
        "imagesFetched": fetched,
        "blobsFetched": blobs,
        "bytesFetched": bytes,
        "failures": failures,
    });
    let totals = &st["totals"];
    let add = |k: &str, n: u64| totals[k].as_u64().unwrap_or(0) + n;
    st["totals"] = json!({
        "passes": add("passes", 1),
        "failedPasses": add("failedPasses", u64::from(report["result"] != "ok")),
        "imagesFetched": add("imagesFetched", fetched),
        "bytesFetched": add("bytesFetched", bytes),
    });
    crate::metrics::get().mirror_pass(report["result"] != "ok");
    st["lastRun"] = report.clone();
    st["partials"] = Value::Object(partials);
    store.set_mirror_state(&m.name, &serde_json::to_vec(&st).expect("JSON serializes"))?;
    Ok(report)
}

/// Syncs `repo:tag` unless the upstream still has the digest synced last time and the
/// store still has the tag. Returns the blobs fetched, or None if nothing changed.
#[allow(clippy::too_many_arguments)]
fn sync_one(
    store: &Store,
    remote: &Remote,
    sink: &mut LocalSink<'_>,
    m: &MirrorConfig,
    repo: &str,
    tag: &str,
    st: &mut Value,
    progress: &mut Progress,
) -> Result<Option<u64>, MirrorError> {
    let key = format!("{repo}:{tag}");
    let upstream = remote.head_manifest(repo, tag)?;
    let Some(upstream) = upstream else {
        return Err(MirrorError::new(format!("{} has no {key}", remote.base())));
    };
    let known = st["upstream"][&key].as_str() == Some(upstream.as_str());
    if known && store.manifest_by_tag(repo, tag).is_ok() {
        return Ok(None);
    }
    let copied = copy_image(
        remote,
        repo,
        upstream.as_str(),
        sink,
        repo,
        Some(tag),
        m.platforms.as_deref(),
        progress,
    )?;
    if !st["upstream"].is_object() {
        st["upstream"] = json!({});
    }
    st["upstream"][&key] = json!(upstream.as_str());
    log::info!(
        "mirror {}: {key} synced ({} blob(s), {} bytes fetched; {} already here)",
        m.name,
        copied.blobs_copied,
        copied.bytes_copied,
        copied.blobs_present
    );
    Ok(Some(copied.blobs_copied))
}

/// Records pull-through cache activity for mirror `name`.
pub fn note_cache(store: &Store, name: &str, hit: bool, bytes: u64, failure: Option<&str>) {
    if !hit && failure.is_none() {
        crate::metrics::get().cache_fill(bytes);
    }
    let Ok(mut st) = state(store, name) else {
        return;
    };
    let c = &mut st["cache"];
    let n = |c: &Value, k: &str| c[k].as_u64().unwrap_or(0);
    c["fetches"] = json!(n(c, "fetches") + u64::from(!hit));
    c["servedWhileUpstreamDown"] = json!(n(c, "servedWhileUpstreamDown") + u64::from(hit));
    c["bytesFetched"] = json!(n(c, "bytesFetched") + bytes);
    if let Some(f) = failure {
        c["lastFailure"] = json!({ "at": unix_now(), "reason": f });
    }
    let _ = store.set_mirror_state(name, &serde_json::to_vec(&st).expect("JSON serializes"));
}

/// Records what pull-through cache `name` holds after an eviction, its limit, and how many
/// images that eviction removed.
pub fn note_cache_size(store: &Store, name: &str, held: u64, limit: u64, evicted: u64) {
    let Ok(mut st) = state(store, name) else {
        return;
    };
    let c = &mut st["cache"];
    c["held"] = json!(held);
    c["maxSize"] = json!(limit);
    c["evictedImages"] = json!(c["evictedImages"].as_u64().unwrap_or(0) + evicted);
    let _ = store.set_mirror_state(name, &serde_json::to_vec(&st).expect("JSON serializes"));
}
