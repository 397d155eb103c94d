//! `outpost gc`, `outpost du`, `outpost compact`: space on a running registry or a stopped store.

use super::output::out;
use super::{call, call_for, reach, stopped_store, Login, Reach};
use crate::config::Config;
use serde_json::Value;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

/// `outpost gc [--dry-run] [--json]`.
pub fn gc(config: &Config, login: &Login, dry_run: bool, json: bool) -> Result<(), String> {
    let report = match reach(config, login)? {
        // A pass may wait for one under way and delete for a while: wait long.
        Reach::Online(at) => call_for(
            &at,
            "POST",
            &format!("/admin/gc?dryRun={dry_run}"),
            None,
            200,
            Duration::from_secs(3600),
        )?,
        Reach::Offline(store, _) => {
            crate::gc::run(&store, &config.gc, dry_run, &AtomicBool::new(false))
                .map_err(|e| format!("gc: {e}"))?
        }
    };
    if json {
        out!("{report:#}");
        return Ok(());
    }
    let verb = if dry_run { "would delete" } else { "deleted" };
    let list = |k: &str| report[k].as_array().cloned().unwrap_or_default();
    for m in list("manifests") {
        let tags: Vec<&str> = m["tags"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out!(
            "{verb} manifest {}@{}{} ({} bytes): {}",
            text(&m["repository"]),
            text(&m["digest"]),
            if tags.is_empty() {
                String::new()
            } else {
                format!(" [{}]", tags.join(", "))
            },
            m["bytes"],
            text(&m["reason"])
        );
    }
    for l in list("blobLinks") {
        out!(
            "{verb} blob link {}@{} ({} bytes): {}",
            text(&l["repository"]),
            text(&l["digest"]),
            l["bytes"],
            text(&l["reason"])
        );
    }
    for b in list("blobs") {
        out!(
            "{verb} blob {} ({} bytes): no repository links it",
            text(&b["digest"]),
            b["bytes"]
        );
    }
    for r in list("repositories") {
        out!("{verb} repository {}: nothing left in it", text(&r));
    }
    out!("{}", crate::gc::summary(&report));
    if !dry_run {
        let w = &report["writer"];
        out!(
            "{:.2} s; {} write transaction(s), the longest held the writer {:.1} ms",
            report["seconds"].as_f64().unwrap_or(0.0),
            w["transactions"],
            w["longestMs"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}

/// `outpost du [--json]`.
pub fn du(config: &Config, login: &Login, json: bool) -> Result<(), String> {
    let usage = match reach(config, login)? {
        Reach::Online(at) => call(&at, "GET", "/admin/du", None, 200)?,
        Reach::Offline(store, _) => store.usage().map_err(|e| format!("du: {e}"))?,
    };
    if json {
        out!("{usage:#}");
        return Ok(());
    }
    out!(
        "{:<40} {:>14} {:>14} {:>14} {:>9}",
        "REPOSITORY",
        "LINKED",
        "ONLY HERE",
        "SHARED",
        "MANIFESTS"
    );
    for r in usage["repositories"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        out!(
            "{:<40} {:>14} {:>14} {:>14} {:>9}",
            text(&r["name"]),
            r["linkedBytes"],
            r["exclusiveBytes"],
            r["sharedBytes"],
            r["manifests"]
        );
    }
    let s = &usage["store"];
    out!(
        "store: {} blob(s) of {} bytes stored once ({} bytes saved by sharing), {} bytes of \
         manifests, {} bytes in open uploads; file {} bytes, {} live, {} free pages and \
         overhead (outpost compact gives free pages back while the registry is stopped)",
        s["blobs"],
        s["blobBytes"],
        s["dedupedBytes"],
        s["manifestBytes"],
        s["uploadBytes"],
        s["fileBytes"],
        s["liveBytes"],
        s["overheadBytes"]
    );
    for q in usage["quotas"].as_array().cloned().unwrap_or_default() {
        let limit = match q["limit"].as_u64() {
            Some(n) => format!("{n} bytes"),
            None => "no limit".into(),
        };
        out!(
            "quota {}: {} bytes used of {limit}",
            text(&q["quota"]),
            q["used"]
        );
    }
    Ok(())
}

/// `outpost compact`: the registry must be stopped.
pub fn compact(config: &Config) -> Result<(), String> {
    let store = stopped_store(config, "compact")?;
    let written = || {
        std::fs::read_to_string("/proc/self/io").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("write_bytes: "))
                .and_then(|n| n.trim().parse::<u64>().ok())
        })
    };
    let w0 = written();
    let (before, after) = store.compact().map_err(|e| format!("compact: {e}"))?;
    drop(store);
    let wrote = match (w0, written()) {
        (Some(a), Some(b)) => format!("{} bytes written", b.saturating_sub(a)),
        _ => "bytes written unknown".into(),
    };
    out!(
        "compacted: the file went from {before} to {after} bytes ({} bytes given back; {wrote})",
        before.saturating_sub(after)
    );
    Ok(())
}
