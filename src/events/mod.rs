//! Webhook notifications of pushes and deletes, in distribution's notification envelope.
//!
//! There is no queue of its own: the audit trail is the queue. Each endpoint has a delivery
//! thread and a cursor in the store (the last sequence number it received); the thread reads
//! the records after it, POSTs those its filters take, and moves the cursor once the
//! endpoint answered 2xx. So an event goes out only once its change is durable (a change
//! committed without durability is made durable first), survives restarts, and is retried with exponential backoff
//! until `maxBackoff`. Delivery is at least once: a crash between a POST and the cursor's
//! next durable write sends that batch again (with the same event ids, for receivers to
//! drop). The queue is bounded by `audit.maxRecords`: records dropped before an endpoint got
//! them are counted and logged as lost.

pub mod config;

use crate::audit::Record;
use crate::storage::Store;
use config::Endpoint;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The envelope's media type.
pub const MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
/// Records read per batch (one POST carries the events among them).
const BATCH: usize = 100;
/// How often a sender looks for new records when idle.
const POLL: Duration = Duration::from_millis(200);
/// The first wait after a failed delivery; doubled up to `maxBackoff`.
const FIRST_BACKOFF: Duration = Duration::from_secs(1);

/// What every event of this registry says about where it comes from.
pub struct Source {
    /// `scheme://host:port` of the registry's listener (for `target.url`).
    pub base: String,
    /// The listen address (`source.addr`, `request.host`).
    pub addr: String,
    /// The store's id (`source.instanceID`, and the event ids' prefix).
    pub instance: String,
}

/// Gives each endpoint without a cursor one at the trail's end: it gets the changes from now
/// on, not the history. Called before the registry takes requests, so that none of the first
/// changes is passed over.
pub fn init(store: &Store, endpoints: &[Endpoint]) -> Result<(), String> {
    for e in endpoints {
        let found = store.event_cursor(&e.name);
        if found
            .map_err(|err| format!("notifications to {}: {err}", e.name))?
            .is_none()
        {
            store
                .set_event_cursor(&e.name, store.last_audit_seq())
                .map_err(|err| format!("notifications to {}: {err}", e.name))?;
        }
    }
    Ok(())
}

/// Delivers to every endpoint, one thread each, until `stop` is set.
pub fn run(store: &Store, endpoints: &[Endpoint], source: &Source, stop: &AtomicBool) {
    std::thread::scope(|s| {
        for e in endpoints {
            let spawned = std::thread::Builder::new()
                .name(format!("events-{}", e.name))
                .spawn_scoped(s, move || deliver(store, e, source, stop));
            if let Err(err) = spawned {
                log::error!("notifications to {}: cannot start a thread: {err}", e.name);
            }
        }
    });
}

/// Sleeps `d` in slices; false if `stop` was set meanwhile.
fn pause(d: Duration, stop: &AtomicBool) -> bool {
    let mut left = d;
    while !left.is_zero() {
        if stop.load(Ordering::SeqCst) {
            return false;
        }
        let step = left.min(Duration::from_millis(100));
        std::thread::sleep(step);
        left -= step;
    }
    !stop.load(Ordering::SeqCst)
}

/// The delivery loop of endpoint `e`.
fn deliver(store: &Store, e: &Endpoint, source: &Source, stop: &AtomicBool) {
    let agent = match crate::mirror::remote::agent(None, e.timeout) {
        Ok(a) => a,
        Err(err) => {
            log::error!("notifications to {}: {err}", e.name);
            return;
        }
    };
    // Every endpoint has a cursor (`init`).
    let mut cursor = loop {
        match store.event_cursor(&e.name) {
            Ok(c) => break c.unwrap_or_else(|| store.last_audit_seq()),
            Err(err) => log::warn!("notifications to {}: {err}", e.name),
        }
        if !pause(FIRST_BACKOFF, stop) {
            return;
        }
    };
    let mut backoff = FIRST_BACKOFF;
    let mut lost_total = 0u64;
    while !stop.load(Ordering::SeqCst) {
        // An event goes out once its change is durable: a push's commit is; a change committed
        // without durability waits for the next durable commit (the flush within a second,
        // the end of a collector pass), which raises this mark. No commit of its own here.
        let durable = store.durable_audit_seq();
        if durable <= cursor {
            if !pause(POLL, stop) {
                return;
            }
            continue;
        }
        let (mut records, lost) = match store.audit_after(cursor, BATCH) {
            Ok(r) => r,
            Err(err) => {
                log::warn!(
                    "notifications to {}: reading the audit trail: {err}",
                    e.name
                );
                if !pause(backoff, stop) {
                    return;
                }
                continue;
            }
        };
        if lost > 0 {
            // Counted once: the cursor moves past them (a retry reads from there).
            cursor += lost;
            lost_total += lost;
            log::warn!(
                "notifications to {}: {lost} audit record(s) were dropped (audit.maxRecords) \
                 before they were delivered; {lost_total} since start",
                e.name
            );
        }
        // Not durable yet: a later round sends them.
        records.retain(|r| r.seq <= durable);
        let Some(last) = records.last().map(|r| r.seq) else {
            if !pause(POLL, stop) {
                return;
            }
            continue;
        };
        let events: Vec<Value> = records
            .iter()
            .flat_map(|r| events_of(r, source))
            .filter(|(action, repo, _)| {
                (if *action == "push" { e.push } else { e.delete }) && e.wants_repo(repo)
            })
            .map(|(_, _, v)| v)
            .collect();
        if !events.is_empty() {
            if let Err(why) = post(&agent, e, &events) {
                log::warn!(
                    "notifications to {}: {why}; retrying {} event(s) in {backoff:?}",
                    e.name,
                    events.len()
                );
                if !pause(backoff, stop) {
                    return;
                }
                backoff = (backoff * 2).min(e.max_backoff);
                continue;
            }
            backoff = FIRST_BACKOFF;
        }
        cursor = last;
        if let Err(err) = store.set_event_cursor(&e.name, cursor) {
            // Delivered again after a restart if it never gets written: at least once.
            log::warn!("notifications to {}: saving its cursor: {err}", e.name);
        }
    }
}

/// POSTs `events` in one envelope; Ok on a 2xx answer.
fn post(agent: &ureq::Agent, e: &Endpoint, events: &[Value]) -> Result<(), String> {
    let body = serde_json::to_vec(&json!({ "events": events })).expect("JSON serialises");
    let mut req = agent.post(&e.url).header("Content-Type", MEDIA_TYPE);
    for (k, v) in &e.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    // A redirect is not followed: ureq would turn the POST into a bodyless GET, and the
    // 2xx of that would move the cursor past events never received.
    let req = req
        .config()
        .max_redirects(0)
        .max_redirects_will_error(false)
        .build();
    match req.send(&body[..]) {
        Ok(r) if r.status().is_success() => Ok(()),
        Ok(r) => Err(format!("it answered {}", r.status())),
        // The URL is not repeated: it may hold credentials (the endpoint's name says which).
        Err(err) => Err(err.to_string()),
    }
}

/// The events a record is: its `event`, once per tag for a push that set several (ids after
/// the first get `.N`, stable across redeliveries like the first).
fn events_of(r: &Record, source: &Source) -> Vec<(&'static str, String, Value)> {
    let Some(first) = event(r, source) else {
        return Vec::new();
    };
    let tags: Vec<&str> = r
        .details
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if r.action != "manifest.push" || tags.len() < 2 {
        return vec![first];
    }
    tags.iter()
        .enumerate()
        .map(|(i, tag)| {
            let (action, repo, mut v) = first.clone();
            v["target"]["tag"] = (*tag).into();
            if i > 0 {
                v["id"] = format!("{}-{}.{i}", source.instance, r.seq).into();
            }
            (action, repo, v)
        })
        .collect()
}

/// The event a record is, if it is one: (`push` or `delete`, repository, the event).
fn event(r: &Record, source: &Source) -> Option<(&'static str, String, Value)> {
    let (action, method) = match r.action.as_str() {
        "manifest.push" => ("push", "PUT"),
        "manifest.delete" | "tag.delete" | "blob.delete" | "repository.delete"
        | "repository.erase" => ("delete", "DELETE"),
        _ => return None,
    };
    let repo = r.repo.clone()?;
    let d = &r.details;
    let mut target = json!({ "repository": repo });
    if let Some(digest) = d.get("digest").and_then(Value::as_str) {
        target["digest"] = digest.into();
        let kind = if r.action == "blob.delete" {
            "blobs"
        } else {
            "manifests"
        };
        target["url"] = format!("{}/v2/{repo}/{kind}/{digest}", source.base).into();
    }
    if let Some(t) = d.get("mediaType") {
        target["mediaType"] = t.clone();
    }
    if let Some(n) = d.get("size") {
        target["size"] = n.clone();
        target["length"] = n.clone();
    }
    if let Some(t) = d.get("tag") {
        target["tag"] = t.clone();
    }
    let v = json!({
        // Stable across redeliveries: receivers drop an id they have seen.
        "id": format!("{}-{}", source.instance, r.seq),
        "timestamp": crate::clock::rfc3339(r.time),
        "action": action,
        "target": target,
        "request": {
            "id": format!("{}-{}", source.instance, r.seq),
            "addr": r.addr.clone().unwrap_or_default(),
            "host": source.addr,
            "method": method,
            "useragent": "",
        },
        "actor": { "name": r.user },
        "source": { "addr": source.addr, "instanceID": source.instance },
    });
    Some((action, repo, v))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{Actor, Change};

    #[test]
    fn records_become_distribution_events() {
        let source = Source {
            base: "http://127.0.0.1:5000".into(),
            addr: "127.0.0.1:5000".into(),
            instance: "00ff".into(),
        };
        let actor = Actor {
            user: "alice".into(),
            addr: Some([10, 0, 0, 7].into()),
        };
        let push = Change::in_repo("manifest.push", "fleet/app")
            .with("digest", "sha256:ab")
            .with("mediaType", "application/vnd.oci.image.manifest.v1+json")
            .with("size", 512)
            .with("tag", "v1");
        let (a, repo, v) = event(&Record::new(push, &actor, 7, 0), &source).unwrap();
        assert_eq!((a, repo.as_str()), ("push", "fleet/app"));
        assert_eq!(v["id"], "00ff-7");
        assert_eq!(v["target"]["length"], 512);
        assert_eq!(
            v["target"]["url"],
            "http://127.0.0.1:5000/v2/fleet/app/manifests/sha256:ab"
        );
        assert_eq!(v["request"]["addr"], "10.0.0.7");
        assert_eq!(v["actor"]["name"], "alice");
        let moved = Change::in_repo("tag.move", "fleet/app");
        assert!(event(&Record::new(moved, &actor, 8, 0), &source).is_none());
        let del = Change::in_repo("tag.delete", "fleet/app").with("tag", "v1");
        let (a, _, v) = event(&Record::new(del, &actor, 9, 0), &source).unwrap();
        assert_eq!((a, v["target"]["tag"].as_str()), ("delete", Some("v1")));
    }
}
