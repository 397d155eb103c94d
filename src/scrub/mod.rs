//! The scrub: re-reads every blob and manifest at a bounded rate, re-hashes each against its
//! digest (opening every sealed chunk), quarantines what is damaged and has it healed from a
//! mirror where one can provide it. A full pass saves where it stands, so a week-long pass
//! goes on after a restart instead of starting again.

pub mod config;
pub mod heal;

use crate::clock::unix_now;
use crate::digest::{Digest, Hasher};
use crate::storage::{ScrubItem, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One pass at a time per process (the schedule and an operator's `outpost scrub`).
static PASS: Mutex<()> = Mutex::new(());

/// Passes asked for that wait for `PASS`: a background pass (which may run for days) stops
/// at its next step for them, its place saved, and goes on afterwards.
static WAITING: AtomicUsize = AtomicUsize::new(0);

/// The pass running now, for status: (repository or None, bytes, objects, started).
static RUNNING: Mutex<Option<Progress>> = Mutex::new(None);

/// Objects listed per read transaction.
const BATCH: usize = 64;

/// A full pass saves its place durably at most this often: a restart repeats at most this
/// much reading, and the saves cost the card about 50 KiB of writes each.
const SAVE_EVERY: Duration = Duration::from_secs(300);

/// Where a pass stands, and what it found.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Progress {
    /// The repository checked, or None for the whole store.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    /// Unix seconds when it started.
    pub started: u64,
    /// Unix seconds when it finished (a full pass that completed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished: Option<u64>,
    /// Bytes re-read and re-hashed.
    pub bytes: u64,
    /// Objects checked.
    pub objects: u64,
    /// Damaged objects found.
    pub bad: u64,
    /// The last object checked: (manifest?, scope, digest).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cursor: Option<(bool, u64, String)>,
}

/// What the store keeps of the scrub.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct State {
    /// The full pass under way.
    current: Option<Progress>,
    /// The last full pass that completed.
    last_full_pass: Option<Progress>,
}

fn load(store: &Store) -> Result<State, StoreError> {
    Ok(store
        .scrub_state()?
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default())
}

fn save(store: &Store, state: &State) -> Result<(), StoreError> {
    store.save_scrub_state(&serde_json::to_vec(state).expect("serializable"), true)
}

/// How a pass runs.
pub struct Options<'a> {
    /// Only this repository's blobs and manifests (the full pass's place is left alone).
    pub repo: Option<&'a str>,
    /// Bytes per second at most; None: as fast as the store reads.
    pub rate: Option<u64>,
    /// Start a full pass from the beginning rather than going on with the one under way.
    pub fresh: bool,
    /// Fetches quarantined blobs again from mirrors.
    pub healer: &'a heal::Healer,
    /// A background pass: it gives way to a pass asked for.
    pub background: bool,
}

/// Keeps reading to a rate: after each step, sleeps until the bytes read so far are due.
struct Pace {
    rate: Option<u64>,
    began: Instant,
    bytes: u64,
}

impl Pace {
    fn step(&mut self, n: u64, halted: &dyn Fn() -> bool) -> bool {
        self.bytes += n;
        if let Some(rate) = self.rate {
            let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            let elapsed = self.began.elapsed();
            if due > elapsed {
                // In slices: a shutdown or a pass asked for does not wait out a long sleep.
                let wake = Instant::now() + (due - elapsed);
                while !halted() && Instant::now() < wake {
                    let left = wake.saturating_duration_since(Instant::now());
                    std::thread::sleep(left.min(Duration::from_millis(100)));
                }
            } else if elapsed - due > Duration::from_secs(1) {
                // Behind (a slow card, a busy writer): no burst to catch up.
                self.began = Instant::now();
                self.bytes = 0;
            }
        }
        !halted()
    }
}

/// Runs a pass (the whole store, or one repository) and reports what it checked and found.
/// `stop` ends it early (shutdown); a full pass then goes on from there next time.
pub fn run(store: &Store, opts: &Options<'_>, stop: &AtomicBool) -> Result<Value, StoreError> {
    if !opts.background {
        WAITING.fetch_add(1, Ordering::SeqCst);
    }
    let one = PASS.lock();
    if !opts.background {
        WAITING.fetch_sub(1, Ordering::SeqCst);
    }
    let _one = one.unwrap_or_else(|p| p.into_inner());
    let halted =
        || stop.load(Ordering::Relaxed) || (opts.background && WAITING.load(Ordering::SeqCst) > 0);
    let clock = Instant::now();
    let mut state = load(store)?;
    let mut p = match (opts.repo, state.current.take()) {
        (None, Some(current)) if !opts.fresh => current,
        (repo, _) => Progress {
            repository: repo.map(str::to_owned),
            started: unix_now(),
            ..Progress::default()
        },
    };
    let resumed_at = p.bytes;
    let mut pace = Pace {
        rate: opts.rate,
        began: Instant::now(),
        bytes: 0,
    };
    let mut found = Vec::new();
    let mut saved = Instant::now();
    let mut completed = false;
    'pass: loop {
        let after = p.cursor.as_ref().map(|(m, s, d)| (*m, *s, d.as_str()));
        let items = store.scrub_items(opts.repo, after, BATCH)?;
        if items.is_empty() {
            completed = true;
            break;
        }
        for item in items {
            if halted() {
                break 'pass;
            }
            let (manifest, scope, digest, checked) = match &item {
                ScrubItem::Blob(domain, digest, blob) => {
                    let mut go_on = true;
                    let verdict = verify_blob(store, digest, *blob, &mut |n| {
                        go_on = pace.step(n, &halted);
                        go_on
                    })?;
                    if !go_on {
                        break 'pass; // stopped mid-blob: it is checked again next time
                    }
                    (false, *domain, digest, verdict.map(|bad| (blob.size, bad)))
                }
                ScrubItem::Manifest(repo, digest) => {
                    let verdict = store.scrub_manifest(*repo, digest)?;
                    if let Some((n, _)) = verdict {
                        pace.step(n, &halted);
                    }
                    (true, *repo, digest, verdict)
                }
            };
            if let Some((bytes, bad)) = checked {
                p.bytes += bytes;
                p.objects += 1;
                if let Some(reason) = bad {
                    p.bad += 1;
                    if store.quarantine(manifest, scope, digest, &reason)? {
                        crate::metrics::get().quarantined();
                        log::error!(
                            "scrub: {} {digest} is damaged ({reason}): quarantined, no longer \
                             served",
                            if manifest { "manifest" } else { "blob" }
                        );
                    }
                    found.push(json!({"kind": if manifest { "manifest" } else { "blob" },
                        "digest": digest, "reason": reason}));
                }
            }
            p.cursor = Some((manifest, scope, digest.clone()));
            set_running(Some(&p));
            if opts.repo.is_none() && saved.elapsed() >= SAVE_EVERY {
                state.current = Some(p.clone());
                save(store, &state)?;
                saved = Instant::now();
            }
        }
    }
    set_running(None);
    if opts.repo.is_none() {
        if completed {
            p.finished = Some(unix_now());
            p.cursor = None;
            state.last_full_pass = Some(p.clone());
            state.current = None;
        } else {
            state.current = Some(p.clone());
        }
        save(store, &state)?;
    }
    let healed = opts.healer.heal_all(store, stop);
    let seconds = clock.elapsed().as_secs_f64();
    let bytes = p.bytes - resumed_at;
    crate::metrics::get().scrub_pass(completed, bytes);
    Ok(json!({
        "repository": opts.repo,
        "completed": completed,
        "started": p.started,
        "bytes": p.bytes,
        "objects": p.objects,
        "found": found,
        "healed": healed,
        "seconds": seconds,
        "bytesPerSecond": if seconds > 0.0 { bytes as f64 / seconds } else { 0.0 },
        "quarantined": quarantined(store)?,
    }))
}

/// Re-hashes blob `digest`, calling `pace` after each step: Some(what is wrong) if it is
/// damaged, None if it went meanwhile, its key is not loaded or `pace` stopped it, Some(None)
/// if it is sound.
fn verify_blob(
    store: &Store,
    digest: &str,
    blob: crate::storage::BlobInfo,
    pace: &mut dyn FnMut(u64) -> bool,
) -> Result<Option<Option<String>>, StoreError> {
    let expected = Digest::parse(digest)
        .map_err(|e| StoreError::Corrupt(format!("blob stored under {digest:?}: {e}")))?;
    let mut hasher = Hasher::new(expected.algorithm());
    let mut stopped = false;
    let read = store.hash_paced(blob, &mut hasher, &mut |n| {
        stopped = !pace(n);
        !stopped
    });
    match read {
        _ if stopped => Ok(None),
        Ok(()) => {
            let actual = hasher.finish();
            Ok(Some(
                (actual != expected).then(|| format!("its stored bytes hash to {actual}")),
            ))
        }
        // Gone meanwhile, or its key is not loaded (no master key): not checked, not damage.
        Err(StoreError::BlobUnknown | StoreError::Keys(_)) => Ok(None),
        Err(e @ (StoreError::Integrity(_) | StoreError::Corrupt(_))) => {
            Ok(Some(Some(e.to_string())))
        }
        Err(e) => Err(e),
    }
}

/// The pass running in this process now, if any.
pub fn running() -> Option<Progress> {
    RUNNING.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

fn set_running(p: Option<&Progress>) {
    *RUNNING.lock().unwrap_or_else(|e| e.into_inner()) = p.cloned();
}

/// Every quarantined object with the repositories, manifests and tags it breaks, as JSON.
pub fn quarantined(store: &Store) -> Result<Value, StoreError> {
    let list: Vec<Value> = store
        .quarantined()?
        .into_iter()
        .map(|b| {
            let repos: Vec<Value> = b
                .repositories
                .iter()
                .map(|(name, manifests, tags)| {
                    json!({"repository": name, "manifests": manifests, "tags": tags})
                })
                .collect();
            json!({"kind": if b.manifest { "manifest" } else { "blob" }, "digest": b.digest,
                "found": b.found, "reason": b.reason, "breaks": repos})
        })
        .collect();
    Ok(Value::Array(list))
}

/// The scrub's status: the pass running now, the full pass under way, the last full pass,
/// and every quarantined object.
pub fn status(store: &Store, cfg: &config::ScrubConfig) -> Result<Value, StoreError> {
    let state = load(store)?;
    Ok(json!({
        "rate": cfg.rate,
        "interval": cfg.interval.map(crate::gc::config::words),
        "running": running(),
        "current": state.current,
        "lastFullPass": state.last_full_pass,
        "quarantined": quarantined(store)?,
    }))
}

/// The background scrub: goes on with the full pass under way, or starts one when the last
/// began `interval` ago, else tries again to heal what is quarantined; returns how long to
/// wait before looking again (until the next pass is due, at most an hour).
pub fn scheduled(
    store: &Store,
    cfg: &config::ScrubConfig,
    healer: &heal::Healer,
    stop: &AtomicBool,
) -> Duration {
    let Some(every) = cfg.interval else {
        return Duration::MAX;
    };
    let due = |s: &State| -> u64 {
        match (&s.current, &s.last_full_pass) {
            (Some(_), _) | (None, None) => 0,
            (None, Some(last)) => (last.started + every.as_secs()).saturating_sub(unix_now()),
        }
    };
    match load(store).map(|s| due(&s)) {
        Ok(0) => {
            let opts = Options {
                repo: None,
                rate: Some(cfg.rate),
                fresh: false,
                healer,
                background: true,
            };
            match run(store, &opts, stop) {
                Ok(r) => log::info!("scrub: {}", summary(&r)),
                Err(e) => log::warn!("scrub pass: {e}"),
            }
        }
        Ok(_) => {
            // Between passes: what an upstream could not give earlier is asked for again
            // (each heal logs itself).
            healer.heal_all(store, stop);
        }
        Err(e) => log::warn!("scrub: reading its state: {e}"),
    }
    let wait = load(store).map(|s| due(&s)).unwrap_or(HEAL_EVERY);
    Duration::from_secs(wait.clamp(60, HEAL_EVERY))
}

/// Seconds between the background scrub's looks at its schedule, and so between attempts to
/// heal what stays quarantined (an upstream that was down may be back).
const HEAL_EVERY: u64 = 3600;

/// One line on a report, for logs and the CLI.
pub fn summary(r: &Value) -> String {
    let n = |k: &str| r[k].as_array().map_or(0, Vec::len);
    format!(
        "{} {} object(s), {} bytes at {:.1} MB/s; {} damaged found and quarantined, {} healed \
         from a mirror, {} quarantined in all",
        if r["completed"] == true {
            "checked"
        } else {
            "stopped after"
        },
        r["objects"],
        r["bytes"],
        r["bytesPerSecond"].as_f64().unwrap_or(0.0) / 1e6,
        n("found"),
        n("healed"),
        n("quarantined"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes share this process's statics (one at a time, background ones give way): the
    /// tests run theirs one test at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// A store in a fresh directory named `tag`, holding three small blobs.
    fn three_blobs(tag: &str) -> Store {
        let dir = std::env::temp_dir().join(format!("outpost-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::storage::test_store(&dir);
        for body in [&b"one"[..], b"two", b"three"] {
            let d = Digest::sha256_of(body);
            let id = store.upload_start("r").unwrap();
            store.upload_append("r", &id, 0, body).unwrap();
            store
                .upload_finish("r", &id, &d, body.len() as u64)
                .unwrap();
        }
        store
    }

    #[test]
    fn the_schedule_runs_a_pass_when_one_is_due_and_not_before() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let store = three_blobs("scrub-schedule");
        let cfg = config::ScrubConfig {
            rate: 1 << 20,
            interval: Some(Duration::from_secs(3600)),
        };
        let healer = heal::Healer::new(&[]);
        let stop = AtomicBool::new(false);
        let wait = scheduled(&store, &cfg, &healer, &stop);
        let last = load(&store).unwrap().last_full_pass.expect("a pass ran");
        assert_eq!(last.objects, 3);
        assert!(wait > Duration::from_secs(3500) && wait <= Duration::from_secs(3600));
        let daily = config::ScrubConfig {
            interval: Some(Duration::from_secs(86400)),
            ..cfg.clone()
        };
        let wait = scheduled(&store, &daily, &healer, &stop);
        assert_eq!(
            wait,
            Duration::from_secs(HEAL_EVERY),
            "heals are retried hourly"
        );
        // A pass that began 100 s ago: the next is not due; one that began 4,000 s ago: due.
        for (ago, objects) in [(100, 99), (4000, 3)] {
            let state = State {
                current: None,
                last_full_pass: Some(Progress {
                    started: unix_now() - ago,
                    objects: 99,
                    ..Progress::default()
                }),
            };
            save(&store, &state).unwrap();
            scheduled(&store, &cfg, &healer, &stop);
            let last = load(&store).unwrap().last_full_pass.unwrap();
            assert_eq!(last.objects, objects, "{ago} s ago");
        }
        let off = config::ScrubConfig {
            interval: None,
            ..cfg
        };
        assert_eq!(scheduled(&store, &off, &healer, &stop), Duration::MAX);
    }

    #[test]
    fn a_background_pass_gives_way_to_one_asked_for() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let store = three_blobs("scrub-yield");
        let big: Vec<u8> = (0..(2u32 << 20)).map(|i| (i % 251) as u8).collect();
        let id = store.upload_start("r").unwrap();
        for (n, piece) in big.chunks(store.chunk_payload()).enumerate() {
            let at = (n * store.chunk_payload()) as u64;
            store.upload_append("r", &id, at, piece).unwrap();
        }
        let d = Digest::sha256_of(&big);
        store.upload_finish("r", &id, &d, big.len() as u64).unwrap();
        let healer = heal::Healer::new(&[]);
        let stop = AtomicBool::new(false);
        std::thread::scope(|s| {
            // 64 KiB/s: this pass would take over 30 s.
            let background = s.spawn(|| {
                let opts = Options {
                    repo: None,
                    rate: Some(64 << 10),
                    fresh: false,
                    healer: &healer,
                    background: true,
                };
                run(&store, &opts, &stop).unwrap()
            });
            std::thread::sleep(Duration::from_millis(500));
            let began = Instant::now();
            let opts = Options {
                repo: None,
                rate: None,
                fresh: true,
                healer: &healer,
                background: false,
            };
            let r = run(&store, &opts, &stop).unwrap();
            assert_eq!(r["completed"], true);
            assert!(
                began.elapsed() < Duration::from_secs(10),
                "{:?}",
                began.elapsed()
            );
            assert_eq!(background.join().unwrap()["completed"], false);
        });
    }

    #[test]
    fn a_full_pass_goes_on_from_its_saved_place() {
        let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
        let store = three_blobs("scrub-resume");
        let healer = heal::Healer::new(&[]);
        let opts = Options {
            repo: None,
            rate: None,
            fresh: false,
            healer: &healer,
            background: false,
        };
        let r = run(&store, &opts, &AtomicBool::new(false)).unwrap();
        assert_eq!(
            (r["objects"].as_u64(), r["completed"].as_bool()),
            (Some(3), Some(true))
        );
        // A pass stopped after its first blob (as by a restart), then resumed.
        let first = store.scrub_items(None, None, 1).unwrap();
        let ScrubItem::Blob(domain, digest, _) = &first[0] else {
            panic!("blobs come first")
        };
        let state = State {
            current: Some(Progress {
                started: 1,
                objects: 1,
                bytes: 3,
                cursor: Some((false, *domain, digest.clone())),
                ..Progress::default()
            }),
            last_full_pass: None,
        };
        save(&store, &state).unwrap();
        let r = run(&store, &opts, &AtomicBool::new(false)).unwrap();
        assert_eq!(r["objects"].as_u64(), Some(3), "1 saved + the 2 after it");
        assert_eq!(r["started"].as_u64(), Some(1));
        let s = load(&store).unwrap();
        assert!(s.current.is_none());
        assert_eq!(s.last_full_pass.unwrap().started, 1);
    }
}
