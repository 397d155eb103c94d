//! Online garbage collection: lifecycle rules expire images, then every blob link that no
//! manifest lists and that is older than the grace period goes, with the data of blobs whose
//! last link went, and repositories left with nothing leave the catalog. A pass plans from
//! one snapshot (what `--dry-run` shows) and then deletes in short, paced write
//! transactions that each check again that what they delete is still garbage.

pub mod config;
pub mod lifecycle;

use crate::clock::unix_now;
use crate::storage::{GcSnapshot, Held, RepoState, Step, Store, StoreError};
use config::{words, GcConfig};
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a collector transaction keeps adding deletions (it holds redb's one writer; its
/// commit comes on top: about 10 ms in all measured by benches/gc.sh).
const TX_BUDGET: Duration = Duration::from_millis(5);

/// One pass at a time per process (the schedule and an operator's `outpost gc`).
static PASS: Mutex<()> = Mutex::new(());

/// A manifest the plan deletes.
#[derive(Debug, Clone)]
struct DoomedManifest {
    digest: String,
    tags: Vec<String>,
    bytes: u64,
    reason: String,
    /// Deleted by the pass (or, in a dry run, would be).
    done: bool,
}

/// A blob link the plan deletes.
#[derive(Debug, Clone)]
struct DoomedLink {
    digest: String,
    linked_at: u64,
    bytes: u64,
    /// Deleted by the pass (or, in a dry run, would be).
    done: bool,
}

/// What a pass deletes in one repository.
#[derive(Debug, Default)]
struct RepoPlan {
    name: String,
    id: u64,
    domain: u64,
    manifests: Vec<DoomedManifest>,
    links: Vec<DoomedLink>,
    remove: bool,
    /// Removed by the pass (or, in a dry run, would be).
    removed: bool,
}

/// Runs a pass (with `dry_run`, only plans) and reports what it deleted, or would. `stop`
/// ends a real pass early (shutdown); what is done stays done.
pub fn run(
    store: &Store,
    cfg: &GcConfig,
    dry_run: bool,
    stop: &AtomicBool,
) -> Result<Value, StoreError> {
    let _one = PASS.lock().unwrap_or_else(|p| p.into_inner());
    // The collector's deletions are its own in the audit trail, whoever started the pass.
    let _actor = crate::audit::acting_as("gc", None);
    let started = Instant::now();
    let now = unix_now();
    let snap = store.gc_snapshot()?;
    let mut plans: Vec<RepoPlan> = snap.repos.iter().map(|r| plan(r, cfg, now)).collect();
    let freed = freed_blobs(&snap, &plans);
    let mut held = Held::default();
    let mut stopped = false;
    for p in &mut plans {
        if dry_run {
            p.manifests.iter_mut().for_each(|m| m.done = true);
            p.links.iter_mut().for_each(|l| l.done = true);
            p.removed = p.remove;
            continue;
        }
        if stopped {
            continue;
        }
        let mut steps: Vec<Step> = p
            .manifests
            .iter()
            .map(|m| Step::Manifest {
                digest: m.digest.clone(),
                tags: m.tags.clone(),
            })
            .collect();
        steps.extend(p.links.iter().map(|l| Step::Link {
            digest: l.digest.clone(),
            linked_by: l.linked_at,
        }));
        if p.remove {
            steps.push(Step::Repo);
        }
        let mut done = Vec::with_capacity(steps.len());
        while done.len() < steps.len() {
            if stop.load(Ordering::Relaxed) {
                stopped = true;
                break;
            }
            let before = held.total;
            let d = store.gc_apply(&p.name, p.id, &steps[done.len()..], TX_BUDGET, &mut held)?;
            done.extend(d);
            // Pace: at least as long idle as the writer was held, so serving keeps its turns.
            std::thread::sleep((held.total - before).max(Duration::from_millis(1)));
        }
        done.resize(steps.len(), false);
        let mut done = done.into_iter();
        for m in &mut p.manifests {
            m.done = done.next() == Some(true);
            if m.done {
                log::info!(
                    "gc: deleted {}@{} {:?}: {}",
                    p.name,
                    m.digest,
                    m.tags,
                    m.reason
                );
            }
        }
        for l in &mut p.links {
            l.done = done.next() == Some(true);
        }
        p.removed = p.remove && done.next() == Some(true);
    }
    if !dry_run {
        // The chunk rows of the blobs that went, a bounded batch per transaction.
        reap(store, &mut held, stop, Duration::MAX)?;
    }
    if !dry_run && held.transactions > 0 {
        store.gc_settle()?;
    }
    let r = report(&plans, &freed, store, cfg, dry_run, stopped, started, held);
    if !dry_run {
        let n = |k: &str| r[k].as_array().map_or(0, |a| a.len() as u64);
        let bytes = r["bytesFreed"].as_u64().unwrap_or(0);
        crate::metrics::get().gc_pass(n("manifests"), n("blobs"), bytes);
    }
    Ok(r)
}

/// Deletes the chunk rows of deleted blobs, paced like the pass, until none remain, `stop`,
/// or `limit` has passed; true if it deleted any.
pub fn reap(
    store: &Store,
    held: &mut Held,
    stop: &AtomicBool,
    limit: Duration,
) -> Result<bool, StoreError> {
    let began = Instant::now();
    let mut any = false;
    while !stop.load(Ordering::Relaxed) && began.elapsed() < limit {
        let before = held.total;
        let (rows, more) = store.reap(TX_BUDGET, held)?;
        any |= rows > 0;
        if !more {
            break;
        }
        std::thread::sleep((held.total - before).max(Duration::from_millis(1)));
    }
    Ok(any)
}

/// What one repository loses in a pass planned at `now`.
fn plan(r: &RepoState, cfg: &GcConfig, now: u64) -> RepoPlan {
    let mut p = RepoPlan {
        name: r.name.clone(),
        id: r.id,
        domain: r.domain,
        ..RepoPlan::default()
    };
    let mut reasons: HashMap<&str, String> = HashMap::new();
    if let Some(policy) = cfg.policy(&r.name) {
        // Images: tagged, or listed by no index and no referrer of a stored manifest.
        let listed: HashSet<&str> = r
            .manifests
            .values()
            .flat_map(|m| m.children.iter().map(String::as_str))
            .collect();
        let images: Vec<lifecycle::Image> = r
            .manifests
            .iter()
            .filter(|(d, m)| {
                !m.tags.is_empty()
                    || (!listed.contains(d.as_str())
                        && !m
                            .subject
                            .as_ref()
                            .is_some_and(|s| r.manifests.contains_key(s)))
            })
            .map(|(d, m)| lifecycle::Image {
                digest: d,
                pushed: m.pushed,
                seq: m.seq,
                tags: &m.tags,
            })
            .collect();
        let expired: HashMap<&str, &config::Rule> = lifecycle::expired(policy, &images, now)
            .into_iter()
            .map(|(i, rule)| (images[i].digest, rule))
            .collect();
        // Kept: the images not expired, what kept indexes list, the subjects of kept
        // referrers and the referrers of kept manifests.
        let mut referrers: HashMap<&str, Vec<&str>> = HashMap::new();
        for (d, m) in &r.manifests {
            if let Some(s) = &m.subject {
                referrers.entry(s).or_default().push(d);
            }
        }
        let mut kept: HashSet<&str> = HashSet::new();
        let mut todo: Vec<&str> = images
            .iter()
            .map(|i| i.digest)
            .filter(|d| !expired.contains_key(d))
            .collect();
        while let Some(d) = todo.pop() {
            if !kept.insert(d) {
                continue;
            }
            let Some(m) = r.manifests.get(d) else {
                continue;
            };
            todo.extend(m.children.iter().map(String::as_str));
            todo.extend(m.subject.as_deref());
            todo.extend(referrers.get(d).into_iter().flatten().copied());
        }
        for (d, m) in &r.manifests {
            if kept.contains(d.as_str()) {
                continue;
            }
            let reason = match expired.get(d.as_str()) {
                Some(rule) => format!("lifecycle rule {}: {}", rule.priority, rule.description),
                None => "belongs to an expired image (listed by its index, or its referrer)".into(),
            };
            reasons.insert(d, reason.clone());
            p.manifests.push(DoomedManifest {
                digest: d.clone(),
                tags: m.tags.clone(),
                bytes: m.bytes,
                reason,
                done: false,
            });
        }
        p.manifests = blockers_first(r, std::mem::take(&mut p.manifests));
    }
    let cutoff = now.saturating_sub(cfg.grace.as_secs());
    for (d, &(at, size)) in &r.links {
        let listed = r
            .blob_refs
            .get(d)
            .is_some_and(|by| by.iter().any(|m| !reasons.contains_key(m.as_str())));
        if !listed && at <= cutoff {
            p.links.push(DoomedLink {
                digest: d.clone(),
                linked_at: at,
                bytes: size,
                done: false,
            });
        }
    }
    p.remove = !r.keyed
        && r.sessions == 0
        && p.manifests.len() == r.manifests.len()
        && p.links.len() == r.links.len();
    p
}

/// `doomed` ordered so that an index comes before what it lists and a referrer before its
/// subject: each deletion re-checks that nothing lists or refers to it any more, so when an
/// index's deletion is skipped (it gained a tag), its children stay with it.
fn blockers_first(r: &RepoState, doomed: Vec<DoomedManifest>) -> Vec<DoomedManifest> {
    // Manifest -> the doomed manifests that list it or refer to it.
    let mut blockers: HashMap<&str, Vec<usize>> = HashMap::new();
    for (i, m) in doomed.iter().enumerate() {
        let Some(state) = r.manifests.get(&m.digest) else {
            continue;
        };
        for child in &state.children {
            blockers.entry(child).or_default().push(i);
        }
        if let Some(s) = &state.subject {
            blockers.entry(s).or_default().push(i);
        }
    }
    fn visit(
        i: usize,
        doomed: &[DoomedManifest],
        blockers: &HashMap<&str, Vec<usize>>,
        seen: &mut [bool],
        out: &mut Vec<usize>,
    ) {
        if std::mem::replace(&mut seen[i], true) {
            return;
        }
        for &b in blockers
            .get(doomed[i].digest.as_str())
            .into_iter()
            .flatten()
        {
            visit(b, doomed, blockers, seen, out);
        }
        out.push(i);
    }
    let mut seen = vec![false; doomed.len()];
    let mut order = Vec::with_capacity(doomed.len());
    for i in 0..doomed.len() {
        visit(i, &doomed, &blockers, &mut seen, &mut order);
    }
    let mut slots: Vec<Option<DoomedManifest>> = doomed.into_iter().map(Some).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

/// Blobs whose data the plan frees: every holder of theirs is a link the plan deletes.
fn freed_blobs(snap: &GcSnapshot, plans: &[RepoPlan]) -> Vec<(u64, String, u64)> {
    let mut unlinks: HashMap<(u64, &str), (u64, u64)> = HashMap::new();
    for p in plans {
        for l in &p.links {
            let e = unlinks.entry((p.domain, &l.digest)).or_insert((0, l.bytes));
            e.0 += 1;
        }
    }
    let mut out: Vec<(u64, String, u64)> = unlinks
        .into_iter()
        .filter(|((domain, d), (n, _))| snap.holders.get(&(*domain, d.to_string())) == Some(n))
        .map(|((domain, d), (_, size))| (domain, d.to_owned(), size))
        .collect();
    out.sort();
    out
}

#[allow(clippy::too_many_arguments)]
fn report(
    plans: &[RepoPlan],
    freed: &[(u64, String, u64)],
    store: &Store,
    cfg: &GcConfig,
    dry_run: bool,
    stopped: bool,
    started: Instant,
    held: Held,
) -> Value {
    let mut manifests = Vec::new();
    let mut links = Vec::new();
    let mut repos = Vec::new();
    let mut skipped = 0u64;
    let mut bytes = 0u64;
    let grace = words(cfg.grace);
    for p in plans {
        for m in &p.manifests {
            if m.done {
                bytes += m.bytes;
                manifests.push(json!({"repository": p.name, "digest": m.digest,
                    "tags": m.tags, "bytes": m.bytes, "reason": m.reason}));
            } else {
                skipped += 1;
            }
        }
        for l in &p.links {
            if l.done {
                links.push(
                    json!({"repository": p.name, "digest": l.digest, "bytes": l.bytes,
                    "reason": format!("listed by no manifest of the repository; linked \
                        before the grace period ({grace})")}),
                );
            } else {
                skipped += 1;
            }
        }
        if p.removed {
            repos.push(p.name.clone());
        }
    }
    let mut blobs = Vec::new();
    for (domain, d, size) in freed {
        // A real pass reports what went: a new holder (push, mount) meanwhile kept it.
        if dry_run || !store.blob_stored(*domain, d).unwrap_or(true) {
            bytes += size;
            blobs.push(json!({"digest": d, "bytes": size}));
        }
    }
    json!({
        "dryRun": dry_run,
        "completed": !stopped,
        "gracePeriod": grace,
        "manifests": manifests,
        "blobLinks": links,
        "blobs": blobs,
        "repositories": repos,
        "skipped": skipped,
        "bytesFreed": bytes,
        "seconds": started.elapsed().as_secs_f64(),
        "writer": {
            "transactions": held.transactions,
            "longestMs": held.longest.as_secs_f64() * 1e3,
            "totalMs": held.total.as_secs_f64() * 1e3,
        },
    })
}

/// One line per kind of what a report says was deleted (or would be), for logs and the CLI.
pub fn summary(r: &Value) -> String {
    let n = |k: &str| r[k].as_array().map_or(0, Vec::len);
    format!(
        "{} {} manifest(s), {} blob link(s), {} blob(s) and {} empty repositor(ies); {} bytes {}{}",
        if r["dryRun"] == true {
            "would delete"
        } else {
            "deleted"
        },
        n("manifests"),
        n("blobLinks"),
        n("blobs"),
        n("repositories"),
        r["bytesFreed"],
        if r["dryRun"] == true {
            "would be freed"
        } else {
            "freed"
        },
        match r["skipped"].as_u64() {
            Some(0) | None => String::new(),
            Some(s) => format!("; {s} planned deletion(s) skipped: no longer garbage"),
        }
    )
}
