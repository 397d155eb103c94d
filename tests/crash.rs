//! SIGKILL in the middle of concurrent pushes, restart on the same store, verify: every
//! acknowledged blob and manifest intact (re-hashed), nothing half-written visible, each
//! interrupted upload either resumes to completion or is reported unknown, and the reference
//! counts add up. Workers share some content (so uploads repeat stored blobs and are
//! deduplicated) and mount what they pushed into a second repository. Half the workers push
//! into encrypted repositories (one key), so sealed chunks are crashed on too.

mod common;
use common::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Default)]
struct Ledger {
    /// (repo, digest, content seed, size) acknowledged with 201.
    blobs: Vec<(String, String, u64, usize)>,
    /// (repo, digest, bytes) acknowledged with 201.
    manifests: Vec<(String, String, Vec<u8>)>,
    /// (repo, digest, content seed, size) whose finish was sent but not acknowledged.
    unacked: Vec<(String, String, u64, usize)>,
    /// (repo, upload location, seed, size) sessions open when the server died.
    open: Vec<(String, String, u64, usize)>,
    /// (repo, digest, seed, size) mounted (201) with no durable acknowledgement since: a
    /// mount is made durable by the next durable commit or a flush within a second.
    mounted: Vec<(String, String, u64, usize)>,
}

fn pusher(c: Client, worker: u64, stop: Arc<AtomicBool>, ledger: Arc<Mutex<Ledger>>) {
    let repo = format!("crash/w{worker}");
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        // Every third blob is content other workers (and rounds) push too.
        let shared = n.is_multiple_of(3);
        let seed = if shared {
            999_000 + n % 7
        } else {
            worker * 1_000_000 + n
        };
        // (in u64: on 32-bit ARM, seed × 7919 overflows usize)
        let size = 50_000 + (seed * 7919 % 3_000_000) as usize;
        let data = bytes(seed, size);
        let digest = sha256(&data);
        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            if n.is_multiple_of(2) {
                let (_, r) = c.push_blob(&repo, &data);
                r.status == 201
            } else {
                // Chunked, leaving the session in the ledger while it is open.
                let r = c.req(
                    "POST",
                    &format!("/v2/{repo}/blobs/uploads/"),
                    &[],
                    Body::None,
                );
                let loc = r.header("Location").unwrap().to_owned();
                ledger
                    .lock()
                    .unwrap()
                    .open
                    .push((repo.clone(), loc.clone(), seed, size));
                let half = size / 2;
                let r1 = c.req(
                    "PATCH",
                    &loc,
                    &[("Content-Range", &format!("0-{}", half - 1))],
                    Body::Bytes(&data[..half]),
                );
                assert_eq!(r1.status, 202);
                let r2 = c.req(
                    "PUT",
                    &format!("{loc}?digest={digest}"),
                    &[("Content-Range", &format!("{half}-{}", size - 1))],
                    Body::Bytes(&data[half..]),
                );
                ledger.lock().unwrap().open.retain(|o| o.1 != loc);
                r2.status == 201
            }
        }));
        let mut l = ledger.lock().unwrap();
        match ok {
            Ok(true) => {
                // This worker's earlier mounts committed before this durable finish.
                let mine = format!("crash/m{worker}");
                let (done, pending) = std::mem::take(&mut l.mounted)
                    .into_iter()
                    .partition(|m| m.0 == mine);
                l.mounted = pending;
                l.blobs.extend::<Vec<_>>(done);
                l.blobs.push((repo.clone(), digest.clone(), seed, size))
            }
            _ => {
                l.unacked.push((repo.clone(), digest, seed, size));
                return; // the server is gone
            }
        }
        drop(l);
        if shared {
            let target = format!("crash/m{worker}");
            let mounted = std::panic::catch_unwind(|| {
                let q = format!("/v2/{target}/blobs/uploads/?mount={digest}&from={repo}");
                c.req("POST", &q, &[], Body::None).status
            });
            match mounted {
                Ok(201) => {
                    ledger
                        .lock()
                        .unwrap()
                        .mounted
                        .push((target, digest.clone(), seed, size))
                }
                Ok(202) => panic!("mount of a blob just pushed was refused"),
                _ => return,
            }
        }
        // Every few blobs, a manifest over the last acknowledged one.
        if n.is_multiple_of(3) {
            let cfg = format!(r#"{{"w":{worker},"n":{n}}}"#).into_bytes();
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let (cd, r) = c.push_blob(&repo, &cfg);
                assert_eq!(r.status, 201);
                let (layer, size) = last_blob(&ledger, &repo);
                let m = image_manifest((&cd, cfg.len()), &[(&layer, size)], "");
                let r = c.put_manifest(&repo, &format!("t{n}"), OCI_MANIFEST, &m);
                (r.status == 201).then_some(m)
            }));
            match ok {
                Ok(Some(m)) => ledger
                    .lock()
                    .unwrap()
                    .manifests
                    .push((repo.clone(), sha256(&m), m)),
                _ => return,
            }
        }
    }
}

/// (digest, size) of the last blob acknowledged in `repo`.
fn last_blob(l: &Mutex<Ledger>, repo: &str) -> (String, usize) {
    let l = l.lock().unwrap();
    let b = l.blobs.iter().rev().find(|b| b.0 == repo).unwrap();
    (b.1.clone(), b.3)
}

#[test]
fn sigkill_during_concurrent_pushes_leaves_a_consistent_store() {
    let dir = TempDir::new("crash");
    let keys = TempDir::new("crash-keys");
    // Workers 1 and 3 of each round (repositories crash/w1, crash/m1, crash/w13, ...).
    let rule = |p: &str| serde_json::json!({"repositories": p, "key": "crash", "algorithm": "chacha20-poly1305"});
    let cfg = encryption_config(
        keys.path(),
        serde_json::json!([rule("crash/*1"), rule("crash/*3")]),
    );
    let args = ["--config", cfg.to_str().unwrap()];
    let mut checked = (0, 0, 0, 0);
    // Clients failing against the killed server panic by design; keep the output readable.
    let default_hook = std::panic::take_hook();
    for round in 0..3 {
        std::panic::set_hook(Box::new(|_| {}));
        let mut reg = Registry::start_with(dir.path(), &args);
        let stop = Arc::new(AtomicBool::new(false));
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let workers: Vec<_> = (0..4)
            .map(|w| {
                let (c, stop, ledger) = (reg.client(), stop.clone(), ledger.clone());
                std::thread::spawn(move || pusher(c, round * 10 + w, stop, ledger))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(1200 + 400 * round));
        // Where pushes are slow (qemu in cross/test.sh), wait for the first acknowledgement.
        let waited = std::time::Instant::now();
        while ledger.lock().unwrap().blobs.is_empty() && waited.elapsed() < Duration::from_secs(120)
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        reg.kill();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            w.join().unwrap();
        }
        let quiet = std::panic::take_hook();
        drop(quiet);
        std::panic::set_hook(Box::new(|info| eprintln!("{info}")));

        let reg = Registry::start_with(dir.path(), &args);
        let c = reg.client();
        let l = ledger.lock().unwrap();
        assert!(
            !l.blobs.is_empty(),
            "round {round}: nothing was pushed before the kill"
        );
        for (repo, digest, seed, size) in &l.blobs {
            let g = c.get(&format!("/v2/{repo}/blobs/{digest}"));
            assert_eq!(g.status, 200, "acknowledged blob {digest} lost");
            assert_eq!(g.body.len(), *size);
            assert_eq!(
                sha256(&g.body),
                *digest,
                "acknowledged blob {digest} corrupted"
            );
            assert_eq!(g.body, bytes(*seed, *size));
        }
        let check = c.get("/admin/check");
        assert_eq!(check.status, 200, "round {round}: {:?}", check.json());
        for (repo, digest, body) in &l.manifests {
            let g = c.get(&format!("/v2/{repo}/manifests/{digest}"));
            assert_eq!(g.status, 200, "acknowledged manifest {digest} lost");
            assert_eq!(&g.body, body);
        }
        // An unacknowledged blob (or a mount not yet followed by a durable commit) may or may
        // not have committed; if visible, it is whole.
        for (repo, digest, _, size) in l.unacked.iter().chain(&l.mounted) {
            let g = c.get(&format!("/v2/{repo}/blobs/{digest}"));
            match g.status {
                404 => {}
                200 => {
                    assert_eq!(g.body.len(), *size);
                    assert_eq!(sha256(&g.body), *digest);
                }
                s => panic!("unacknowledged blob answered {s}"),
            }
        }
        // Sessions open at the kill: resume to completion, or unknown.
        for (repo, loc, seed, size) in &l.open {
            let data = bytes(*seed, *size);
            let digest = sha256(&data);
            let s = c.get(loc);
            match s.status {
                404 => assert_eq!(s.code(), "BLOB_UPLOAD_UNKNOWN"),
                204 => {
                    let range = s.header("Range").unwrap();
                    let end: usize = range.split('-').nth(1).unwrap().parse().unwrap();
                    let from = if range == "0-0" { 0 } else { end + 1 };
                    let r = c.req(
                        "PUT",
                        &format!("{loc}?digest={digest}"),
                        &[("Content-Range", &format!("{from}-{}", size - 1))],
                        Body::Bytes(&data[from..]),
                    );
                    assert_eq!(r.status, 201, "resumed upload of {repo} from {from}: {r:?}");
                    assert_eq!(
                        sha256(&c.get(&format!("/v2/{repo}/blobs/{digest}")).body),
                        digest
                    );
                    checked.3 += 1;
                }
                st => panic!("open session answered {st}"),
            }
        }
        let check = c.get("/admin/check");
        assert_eq!(check.status, 200, "after resuming: {:?}", check.json());
        let keys = c.get("/admin/keys").json();
        let sealed = keys["keys"][0]["blobs"].as_u64().unwrap_or(0);
        assert!(sealed > 0, "no encrypted blob was pushed: {keys}");
        checked.0 += l.blobs.len();
        checked.1 += l.manifests.len();
        checked.2 += l.unacked.len();
        drop(l);
        drop(reg);
    }
    std::panic::set_hook(default_hook);
    eprintln!(
        "verified after 3 kills: {} acknowledged blobs, {} manifests, {} unacknowledged, {} sessions resumed",
        checked.0, checked.1, checked.2, checked.3
    );
}
