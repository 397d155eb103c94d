//! `outpost scrub`: a scrub pass now, or the scrub's status, on a running registry or a
//! stopped store.

use super::output::note;
use super::output::out;
use super::{call, call_for, reach, Login, Reach};
use crate::config::Config;
use serde_json::Value;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often progress is shown while a pass runs.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// `outpost scrub [--repo R] [--status] [--json]`.
pub fn scrub(
    config: &Config,
    login: &Login,
    repo: Option<&str>,
    status: bool,
    json: bool,
) -> Result<(), String> {
    let reached = reach(config, login)?;
    if status {
        let s = match &reached {
            Reach::Online(at) => call(at, "GET", "/admin/scrub", None, 200)?,
            Reach::Offline(store, _) => {
                crate::scrub::status(store, &config.scrub).map_err(|e| format!("scrub: {e}"))?
            }
        };
        if json {
            out!("{s:#}");
        } else {
            print_status(&s);
        }
        return Ok(());
    }
    let done = AtomicBool::new(false);
    let report = std::thread::scope(|scope| {
        // Progress on stderr while the pass runs, from the registry's status or this process's.
        scope.spawn(|| {
            let mut last = String::new();
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(PROGRESS_EVERY);
                let running = match &reached {
                    Reach::Online(at) => call(at, "GET", "/admin/scrub", None, 200)
                        .map(|s| s["running"].clone())
                        .unwrap_or(Value::Null),
                    Reach::Offline(..) => {
                        serde_json::to_value(crate::scrub::running()).unwrap_or(Value::Null)
                    }
                };
                let line = format!(
                    "scrub: {} object(s), {} bytes checked, {} damaged",
                    running["objects"], running["bytes"], running["bad"]
                );
                if !running.is_null() && !done.load(Ordering::Relaxed) && line != last {
                    note!("{line}");
                    last = line;
                }
            }
        });
        let report = run(config, &reached, repo);
        done.store(true, Ordering::Relaxed);
        report
    })?;
    if json {
        out!("{report:#}");
        return Ok(());
    }
    for f in report["found"].as_array().into_iter().flatten() {
        print_object("damaged", f);
    }
    for h in report["healed"].as_array().into_iter().flatten() {
        out!(
            "healed blob {} of {} from mirror {}",
            text(&h["digest"]),
            text(&h["repository"]),
            text(&h["mirror"])
        );
    }
    print_quarantine(&report["quarantined"]);
    out!("{}", crate::scrub::summary(&report));
    out!("file check: {}", text(&report["fileCheck"]));
    Ok(())
}

/// Runs the pass where the store is: through the registry serving it, else on the stopped
/// store, after redb's own integrity check (which needs the database to itself).
fn run(config: &Config, reached: &Reach, repo: Option<&str>) -> Result<Value, String> {
    match reached {
        Reach::Online(at) => {
            let query = repo.map_or(String::new(), |r| {
                format!("?repository={}", crate::http::percent_encode(r))
            });
            // A pass reads the whole store: wait as long as it takes.
            call_for(
                at,
                "POST",
                &format!("/admin/scrub{query}"),
                None,
                200,
                Duration::from_secs(7 * 86400),
            )
        }
        Reach::Offline(store, _) => {
            let healer = crate::scrub::heal::Healer::new(&config.mirrors);
            let opts = crate::scrub::Options {
                repo,
                rate: None,
                fresh: true,
                healer: &healer,
                background: false,
            };
            let mut r = crate::scrub::run(store, &opts, &AtomicBool::new(false))
                .map_err(|e| format!("scrub: {e}"))?;
            // Last: what the pass found is recorded whatever redb's check makes of the file.
            let file = match store.check_file() {
                Ok(true) => "redb's integrity check: consistent".to_owned(),
                Ok(false) => "redb's integrity check found damage and repaired it".to_owned(),
                Err(e) => format!("redb's integrity check failed: {e}"),
            };
            r["fileCheck"] = Value::String(file);
            Ok(r)
        }
    }
}

fn print_status(s: &Value) {
    let pass = |p: &Value| {
        format!(
            "started {}, {} object(s), {} bytes, {} damaged",
            p["started"], p["objects"], p["bytes"], p["bad"]
        )
    };
    out!(
        "rate {} bytes/s, a full pass every {}",
        s["rate"],
        s["interval"].as_str().unwrap_or("(off: on demand only)")
    );
    match &s["lastFullPass"] {
        Value::Null => out!("last full pass: none yet"),
        p => out!("last full pass: {}, finished {}", pass(p), p["finished"]),
    }
    if !s["current"].is_null() {
        out!("full pass under way: {}", pass(&s["current"]));
    }
    if !s["running"].is_null() {
        out!("running now: {}", pass(&s["running"]));
    }
    print_quarantine(&s["quarantined"]);
}

fn print_quarantine(q: &Value) {
    for b in q.as_array().into_iter().flatten() {
        print_object("quarantined", b);
        for r in b["breaks"].as_array().into_iter().flatten() {
            let list = |k: &str| {
                r[k].as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(Value::as_str)
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            };
            out!(
                "  breaks {}: tags [{}], manifests [{}]",
                text(&r["repository"]),
                list("tags"),
                list("manifests")
            );
        }
    }
}

/// `VERB KIND DIGEST: REASON` of a damaged object.
fn print_object(verb: &str, o: &Value) {
    out!(
        "{verb} {} {}: {}",
        text(&o["kind"]),
        text(&o["digest"]),
        text(&o["reason"])
    );
}

fn text(v: &Value) -> &str {
    v.as_str().unwrap_or("?")
}
