//! Garbage collection, lifecycle rules, immutable tags and space reports, through the real
//! binary: what goes, what stays, that space is reused, and that collection never races a
//! push into a manifest that points at nothing.

mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const DAY: i64 = 86400;

fn config(dir: &Path, v: Value) -> PathBuf {
    let p = dir.join("outpost.json");
    std::fs::write(&p, v.to_string()).unwrap();
    p
}

/// A registry on `data` with config `cfg` and its clock moved by `offset` seconds.
fn start(data: &Path, cfg: &Path, offset: i64) -> Registry {
    let offset = offset.to_string();
    Registry::start_env(
        data,
        &["--config", cfg.to_str().unwrap()],
        &[("OUTPOST_CLOCK_OFFSET", &offset)],
    )
}

fn gc(c: &Client, dry_run: bool) -> Value {
    let r = c.req(
        "POST",
        &format!("/admin/gc?dryRun={dry_run}"),
        &[],
        Body::None,
    );
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// (repository, digest) of each entry of report list `k`, sorted.
fn listed(report: &Value, k: &str) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = report[k]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["repository"].as_str().unwrap_or("").to_owned(),
                e["digest"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// The store is consistent, and no manifest lists anything its repository lacks (these
/// tests' clients never delete a blob or manifest that another lists: only the collector
/// could have).
fn check_ok(c: &Client) {
    let r = c.get("/admin/check");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["problems"], json!([]), "{r:?}");
    assert_eq!(r.json()["dangling"], json!([]), "{r:?}");
}

fn catalog(c: &Client) -> Vec<String> {
    let v = c.get("/v2/_catalog").json();
    v["repositories"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect()
}

/// Pushes an image with one layer of `size` bytes (seeded) under `reference`; returns the
/// manifest's digest and its layer's.
fn push(c: &Client, repo: &str, reference: &str, seed: u64, size: usize) -> (String, String) {
    let config = format!(r#"{{"seed":{seed}}}"#).into_bytes();
    let (cd, r) = c.push_blob(repo, &config);
    assert_eq!(r.status, 201, "{r:?}");
    let layer = bytes(seed, size);
    let (ld, r) = c.push_blob(repo, &layer);
    assert_eq!(r.status, 201, "{r:?}");
    let m = image_manifest((&cd, config.len()), &[(&ld, layer.len())], "");
    let r = c.put_manifest(repo, reference, OCI_MANIFEST, &m);
    assert_eq!(r.status, 201, "{r:?}");
    (sha256(&m), ld)
}

#[test]
fn deleted_images_leave_nothing_and_the_file_stops_growing() {
    let dir = TempDir::on_disk("gc-cycles");
    let cfg = config(
        dir.path(),
        json!({"gcGracePeriod": "0s", "gcInterval": "off"}),
    );
    let data = dir.path().join("data");
    let reg = start(&data, &cfg, 0);
    let c = reg.client();
    let file = || std::fs::metadata(data.join("outpost.redb")).unwrap().len();
    let mut sizes = Vec::new();
    for cycle in 0..12u64 {
        let (m, layer) = push(&c, "gc/x", "v1", 1000 + cycle, 3 << 20);
        assert_eq!(c.stored_blobs().0, 2);
        let r = c.delete(&format!("/v2/gc/x/manifests/{m}"));
        assert_eq!(r.status, 202, "{r:?}");
        // The manifest went; its layer stays until a pass (what the issue found).
        assert_eq!(c.stored_blobs().0, 2);
        let report = gc(&c, false);
        let links = listed(&report, "blobLinks");
        assert!(
            links.contains(&("gc/x".to_owned(), layer.clone())),
            "{report:#}"
        );
        assert_eq!(report["blobs"].as_array().unwrap().len(), 2, "{report:#}");
        assert_eq!(report["repositories"], json!(["gc/x"]), "{report:#}");
        assert_eq!(c.stored_blobs(), (0, 0));
        assert!(catalog(&c).is_empty());
        let r = c.head(&format!("/v2/gc/x/blobs/{layer}"));
        assert_eq!(r.status, 404);
        sizes.push(file());
    }
    check_ok(&c);
    // Freed pages are reused: 36 MiB went through in all, and the file never held more
    // than about two of the 3 MiB images (it moves up and down as redb frees and truncates).
    let most = *sizes.iter().max().unwrap();
    assert!(most <= 8 << 20, "the file kept growing: {sizes:?}");
}

#[test]
fn a_link_inside_the_grace_period_survives_and_goes_after_it() {
    let dir = TempDir::new("gc-grace");
    let cfg = config(dir.path(), json!({"gcInterval": "off"}));
    let data = dir.path().join("data");
    // Two days ago: an abandoned push (layers, no manifest).
    let mut reg = start(&data, &cfg, -2 * DAY);
    let old = bytes(1, 5000);
    let (old_d, r) = reg.client().push_blob("gc/grace", &old);
    assert_eq!(r.status, 201);
    reg.terminate();
    // Now: a push under way (its layer is up, its manifest not yet).
    let reg = start(&data, &cfg, 0);
    let c = reg.client();
    let new = bytes(2, 5000);
    let (new_d, r) = c.push_blob("gc/grace", &new);
    assert_eq!(r.status, 201);
    let plan = gc(&c, true);
    assert_eq!(
        listed(&plan, "blobLinks"),
        vec![("gc/grace".to_owned(), old_d.clone())],
        "{plan:#}"
    );
    assert_eq!(plan["bytesFreed"], json!(5000), "{plan:#}");
    // A dry run deletes nothing.
    assert_eq!(c.stored_blobs(), (2, 10_000));
    let done = gc(&c, false);
    assert_eq!(listed(&done, "blobLinks"), listed(&plan, "blobLinks"));
    assert_eq!(c.head(&format!("/v2/gc/grace/blobs/{old_d}")).status, 404);
    assert_eq!(c.head(&format!("/v2/gc/grace/blobs/{new_d}")).status, 200);
    // The push completes: its layer is there.
    let m = image_manifest((&new_d, new.len()), &[], "");
    assert_eq!(
        c.put_manifest("gc/grace", "v1", OCI_MANIFEST, &m).status,
        201
    );
    assert_eq!(catalog(&c), vec!["gc/grace"]);
    check_ok(&c);
}

/// A push finds its layers stored already (HEAD answers 200, or its upload or mount is
/// deduplicated) in a repository where no manifest lists them since long ago: they are kept
/// for it as if just pushed, so its manifest does not fail on a pass in between.
#[test]
fn layers_a_push_finds_stored_are_kept_for_its_manifest() {
    let dir = TempDir::new("gc-renew");
    let cfg = config(dir.path(), json!({"gcInterval": "off"}));
    let data = dir.path().join("data");
    let mut reg = start(&data, &cfg, -3 * DAY);
    let c = reg.client();
    let config_blob = br#"{"architecture":"arm64","os":"linux"}"#;
    let (cd, _) = c.push_blob("gc/renew", config_blob);
    let layer = bytes(40, 30_000);
    let (ld, _) = c.push_blob("gc/renew", &layer);
    let again = bytes(41, 20_000);
    let (ad, _) = c.push_blob("gc/renew", &again);
    let (md, _) = c.push_blob("gc/source", &bytes(42, 10_000));
    let (old, _) = c.push_blob("gc/renew", &bytes(43, 1_000));
    reg.terminate();
    let reg = start(&data, &cfg, 0);
    let c = reg.client();
    // Three days later a push checks its config and layer (found), uploads another layer
    // again (deduplicated) and mounts one from another repository that linked it long ago.
    for d in [&cd, &ld] {
        assert_eq!(c.head(&format!("/v2/gc/renew/blobs/{d}")).status, 200);
    }
    assert_eq!(c.push_blob("gc/renew", &again).1.status, 201);
    let mount = c.req(
        "POST",
        &format!("/v2/gc/renew/blobs/uploads/?mount={md}&from=gc/source"),
        &[],
        Body::None,
    );
    assert_eq!(mount.status, 201, "{mount:?}");
    let report = gc(&c, false);
    let mut gone = listed(&report, "blobLinks");
    gone.sort();
    // Only what nobody touched goes: the abandoned blob, and the mount's source link.
    let mut expect = vec![
        ("gc/renew".to_owned(), old.clone()),
        ("gc/source".to_owned(), md.clone()),
    ];
    expect.sort();
    assert_eq!(gone, expect, "{report:#}");
    let m = image_manifest(
        (&cd, config_blob.len()),
        &[(&ld, layer.len()), (&ad, again.len()), (&md, 10_000)],
        "",
    );
    let r = c.put_manifest("gc/renew", "v2", OCI_MANIFEST, &m);
    assert_eq!(r.status, 201, "{r:?}");
    verify_complete(&c, "gc/renew");
    check_ok(&c);
}

/// An index with two children, an image with a referrer, an untagged image with a referrer,
/// and a tagged artifact whose subject is untagged: expiring untagged images takes only the
/// untagged image and its referrer.
#[test]
fn indexes_keep_children_and_referrers_go_with_their_subjects() {
    let dir = TempDir::new("gc-graph");
    let cfg = config(
        dir.path(),
        json!({"gcInterval": "off", "lifecycle": [{"repositories": "gc/*", "rules": [
            {"priority": 1, "tagStatus": "untagged", "olderThan": "1d"}]}]}),
    );
    let data = dir.path().join("data");
    let mut reg = start(&data, &cfg, -3 * DAY);
    let c = reg.client();
    let repo = "gc/graph";
    let (child_a, _) = push(&c, repo, "tmp-a", 10, 1000);
    let (child_b, _) = push(&c, repo, "tmp-b", 11, 1000);
    let index = |a: &str, b: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{a}","size":{}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{b}","size":{}}}]}}"#,
            c.get(&format!("/v2/{repo}/manifests/{a}")).body.len(),
            c.get(&format!("/v2/{repo}/manifests/{b}")).body.len()
        )
        .into_bytes()
    };
    let idx = index(&child_a, &child_b);
    assert_eq!(c.put_manifest(repo, "multi", OCI_INDEX, &idx).status, 201);
    for t in ["tmp-a", "tmp-b"] {
        assert_eq!(c.delete(&format!("/v2/{repo}/manifests/{t}")).status, 202);
    }
    let (tagged, _) = push(&c, repo, "app", 12, 1000);
    let (untagged, untagged_layer) = push(&c, repo, "gone", 13, 1000);
    assert_eq!(c.delete(&format!("/v2/{repo}/manifests/gone")).status, 202);
    let (subject_only, _) = push(&c, repo, "x", 14, 1000);
    assert_eq!(c.delete(&format!("/v2/{repo}/manifests/x")).status, 202);
    let size_of = |d: &str| c.get(&format!("/v2/{repo}/manifests/{d}")).body.len();
    let empty = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
    assert_eq!(c.push_blob(repo, b"{}").1.status, 201);
    let referrer = |subject: &str, kind: &str| {
        format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","artifactType":"application/vnd.example.{kind}","config":{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}},"layers":[{{"mediaType":"application/vnd.oci.empty.v1+json","digest":"{empty}","size":2}}],"subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{subject}","size":{}}}}}"#,
            size_of(subject)
        )
        .into_bytes()
    };
    let sig_tagged = referrer(&tagged, "sig");
    let sig_untagged = referrer(&untagged, "sig");
    let sbom = referrer(&subject_only, "sbom");
    for (body, reference) in [
        (&sig_tagged, sha256(&sig_tagged)),
        (&sig_untagged, sha256(&sig_untagged)),
        (&sbom, "sbom".to_owned()),
    ] {
        assert_eq!(
            c.put_manifest(repo, &reference, OCI_MANIFEST, body).status,
            201
        );
    }
    reg.terminate();
    let reg = start(&data, &cfg, 0);
    let c = reg.client();
    let plan = gc(&c, true);
    let mut expect = vec![
        (repo.to_owned(), untagged.clone()),
        (repo.to_owned(), sha256(&sig_untagged)),
    ];
    expect.sort();
    assert_eq!(listed(&plan, "manifests"), expect, "{plan:#}");
    assert!(
        listed(&plan, "blobLinks").contains(&(repo.to_owned(), untagged_layer.clone())),
        "{plan:#}"
    );
    let done = gc(&c, false);
    assert_eq!(listed(&done, "manifests"), listed(&plan, "manifests"));
    assert_eq!(listed(&done, "blobLinks"), listed(&plan, "blobLinks"));
    assert_eq!(done["skipped"], json!(0));
    for d in [&untagged, &sha256(&sig_untagged)] {
        assert_eq!(c.head(&format!("/v2/{repo}/manifests/{d}")).status, 404);
    }
    // Everything kept pulls whole.
    for d in [
        &child_a,
        &child_b,
        &sha256(&idx),
        &tagged,
        &sha256(&sig_tagged),
        &subject_only,
        &sha256(&sbom),
    ] {
        let r = c.get(&format!("/v2/{repo}/manifests/{d}"));
        assert_eq!(r.status, 200, "{d} went");
        let m: Value = serde_json::from_slice(&r.body).unwrap();
        for l in m["layers"].as_array().into_iter().flatten() {
            let l = l["digest"].as_str().unwrap();
            assert_eq!(c.head(&format!("/v2/{repo}/blobs/{l}")).status, 200);
        }
    }
    let refs = c.get(&format!("/v2/{repo}/referrers/{tagged}")).json();
    assert_eq!(refs["manifests"].as_array().unwrap().len(), 1);
    check_ok(&c);
}

/// Pushes image `n` of a synthetic history `days_ago` days ago under `tags`.
fn history(data: &Path, cfg: &Path, entries: &[(u64, i64, &[&str])]) -> Vec<String> {
    let mut digests = Vec::new();
    for &(seed, days_ago, tags) in entries {
        let mut reg = start(data, cfg, -days_ago * DAY);
        let c = reg.client();
        let reference = tags.first().copied().unwrap_or("scratch");
        let (d, _) = push(&c, "fleet/app", reference, seed, 2000);
        for t in tags.iter().skip(1) {
            let m = c.get(&format!("/v2/fleet/app/manifests/{d}")).body;
            assert_eq!(c.put_manifest("fleet/app", t, OCI_MANIFEST, &m).status, 201);
        }
        if tags.is_empty() {
            assert_eq!(c.delete("/v2/fleet/app/manifests/scratch").status, 202);
        }
        reg.terminate();
        digests.push(d);
    }
    digests
}

#[test]
fn lifecycle_rules_keep_the_last_n_expire_old_and_untagged_and_spare_protected_tags() {
    let dir = TempDir::new("gc-lifecycle");
    let cfg = config(
        dir.path(),
        json!({"gcInterval": "off", "gcGracePeriod": "1h", "lifecycle": [
            {"repositories": "other/*", "rules": [{"priority": 1, "keepLast": 1}]},
            {"repositories": "fleet/*", "protectTags": ["stable"], "rules": [
                {"priority": 1, "description": "three releases", "tagStatus": "tagged",
                 "tagPatterns": ["v*"], "keepLast": 3},
                {"priority": 2, "tagStatus": "tagged", "tagPatterns": ["dev-*"], "olderThan": "30d"},
                {"priority": 3, "tagStatus": "untagged", "olderThan": "7d"}]}]}),
    );
    let data = dir.path().join("data");
    let d = history(
        &data,
        &cfg,
        &[
            (1, 60, &["v1", "stable"]),
            (2, 50, &["v2"]),
            (3, 40, &["v3"]),
            (4, 30, &["v4"]),
            (5, 20, &["v5"]),
            (6, 10, &["v6"]),
            (7, 40, &["dev-1"]),
            (8, 5, &["dev-2"]),
            (9, 9, &[]),
            (10, 1, &[]),
        ],
    );
    let reg = start(&data, &cfg, 0);
    let c = reg.client();
    let plan = gc(&c, true);
    let mut expect: Vec<(String, String)> = [&d[1], &d[2], &d[6], &d[8]]
        .iter()
        .map(|x| ("fleet/app".to_owned(), x.to_string()))
        .collect();
    expect.sort();
    assert_eq!(listed(&plan, "manifests"), expect, "{plan:#}");
    let reasons: Vec<&str> = plan["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.iter().any(|r| r.contains("three releases")),
        "{reasons:?}"
    );
    assert!(plan["bytesFreed"].as_u64().unwrap() > 4 * 2000, "{plan:#}");
    // What a dry run lists is exactly what the pass then deletes.
    let done = gc(&c, false);
    for k in ["manifests", "blobLinks"] {
        assert_eq!(listed(&done, k), listed(&plan, k), "{k}: {done:#}");
    }
    assert_eq!(done["blobs"], plan["blobs"]);
    let tags = c.get("/v2/fleet/app/tags/list").json();
    assert_eq!(
        tags["tags"],
        json!(["dev-2", "stable", "v1", "v4", "v5", "v6"]),
        "{tags}"
    );
    assert_eq!(
        c.head(&format!("/v2/fleet/app/manifests/{}", d[9])).status,
        200
    );
    // Nothing left to do.
    let again = gc(&c, true);
    assert_eq!(listed(&again, "manifests"), vec![]);
    check_ok(&c);
}

#[test]
fn the_cli_previews_runs_and_reports_space_online_and_on_a_stopped_store() {
    let dir = TempDir::new("gc-cli");
    let cfg = config(
        dir.path(),
        json!({"gcInterval": "off", "gcGracePeriod": "0s"}),
    );
    let data = dir.path().join("data");
    let mut reg = start(&data, &cfg, 0);
    let c = reg.client();
    let shared = bytes(7, 4000);
    let (shared_d, _) = c.push_blob("cli/a", &shared);
    let mount = c.req(
        "POST",
        &format!("/v2/cli/b/blobs/uploads/?mount={shared_d}&from=cli/a"),
        &[],
        Body::None,
    );
    assert_eq!(mount.status, 201, "{mount:?}");
    let (m, _) = push(&c, "cli/a", "v1", 20, 3000);
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend([
            "--config",
            cfg.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
        ]);
        let out = outpost().args(&all).output().unwrap();
        assert!(out.status.success(), "{all:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let du = run(&["du", "--json"]);
    let du: Value = serde_json::from_str(&du).unwrap();
    let repo = |n: &str| {
        du["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["name"] == n)
            .unwrap()
            .clone()
    };
    assert_eq!(repo("cli/b")["sharedBytes"], json!(4000), "{du:#}");
    assert_eq!(repo("cli/b")["exclusiveBytes"], json!(0), "{du:#}");
    assert!(
        repo("cli/a")["exclusiveBytes"].as_u64().unwrap() > 3000,
        "{du:#}"
    );
    assert!(run(&["du"]).contains("cli/a"));
    // Online, through the admin socket: the dry run lists, the pass deletes the same.
    let preview = run(&["gc", "--dry-run"]);
    assert!(
        preview.contains("would delete blob link cli/a@"),
        "{preview}"
    );
    assert!(
        preview.contains("would delete blob link cli/b@"),
        "{preview}"
    );
    assert_eq!(c.head(&format!("/v2/cli/a/blobs/{shared_d}")).status, 200);
    // On a stopped store.
    assert!(reg.terminate().success());
    let preview_offline = run(&["gc", "--dry-run"]);
    assert_eq!(preview, preview_offline);
    let done = run(&["gc"]);
    assert!(
        done.contains(&format!("deleted blob {shared_d} (4000 bytes)")),
        "{done}"
    );
    assert!(done.contains("deleted repository cli/b"), "{done}");
    let compacted = run(&["compact"]);
    assert!(
        compacted.contains("compacted: the file went from"),
        "{compacted}"
    );
    let reg = start(&data, &cfg, 0);
    let c = reg.client();
    assert_eq!(c.get(&format!("/v2/cli/a/manifests/{m}")).status, 200);
    assert_eq!(catalog(&c), vec!["cli/a"]);
    check_ok(&c);
    // compact needs the registry stopped.
    let out = outpost()
        .args(["compact", "--data-dir", data.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(text(&out).contains("stop it first"), "{}", text(&out));
}

#[test]
fn a_bad_lifecycle_rule_stops_the_start_with_what_to_fix() {
    let dir = TempDir::new("gc-badcfg");
    let cfg = config(
        dir.path(),
        json!({"lifecycle": [{"repositories": "fleet/*", "rules": [
            {"priority": 1, "keepLast": 3, "olderThan": "7d"}]}]}),
    );
    let out = outpost()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--config",
            cfg.to_str().unwrap(),
        ])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let t = text(&out);
    assert!(t.contains("exactly one of keepLast and olderThan"), "{t}");
}

/// Silences panics of threads whose name starts with `prefix` (clients of a killed server);
/// every other thread's panic prints as before.
fn quiet_threads_named(prefix: &'static str) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let quiet = std::thread::current()
                .name()
                .is_some_and(|n| n.starts_with(prefix));
            if !quiet {
                default(info);
            }
        }));
    });
}

/// Every tag of `repo` pulls completely: its manifest (and an index's children) by digest,
/// every blob they list, each matching its digest.
fn verify_complete(c: &Client, repo: &str) -> usize {
    fn manifest(c: &Client, repo: &str, reference: &str) {
        let r = c.get(&format!("/v2/{repo}/manifests/{reference}"));
        assert_eq!(r.status, 200, "{repo}:{reference} does not pull: {r:?}");
        let digest = r.header("Docker-Content-Digest").unwrap().to_owned();
        assert_eq!(sha256(&r.body), digest);
        let m: Value = serde_json::from_slice(&r.body).unwrap();
        for child in m["manifests"].as_array().into_iter().flatten() {
            manifest(c, repo, child["digest"].as_str().unwrap());
        }
        let blobs = m["layers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(std::iter::once(&m["config"]));
        for b in blobs.filter(|b| b.is_object()) {
            let d = b["digest"].as_str().unwrap();
            let g = c.get(&format!("/v2/{repo}/blobs/{d}"));
            assert_eq!(g.status, 200, "{repo}@{digest} lists {d}, which is gone");
            assert_eq!(sha256(&g.body), d);
        }
    }
    let tags = c.get(&format!("/v2/{repo}/tags/list"));
    if tags.status == 404 {
        return 0;
    }
    let tags = tags.json()["tags"].as_array().cloned().unwrap_or_default();
    for t in &tags {
        manifest(c, repo, t.as_str().unwrap());
    }
    tags.len()
}

/// Pushes of images sharing layers, tag moves, indexes over whatever the tags point at,
/// manifest deletes and collector passes (grace 0, untagged images expire at once), with
/// SIGKILLs in the middle: no tag ever points at an image that does not pull completely.
#[test]
fn collection_races_pushes_tag_moves_and_deletes_across_kills() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};
    let dir = TempDir::new("gc-race");
    let cfg = config(
        dir.path(),
        // Quotas too large to refuse anything: their counters are kept through every
        // operation and kill, and the final check recounts them (race/a and race/b share
        // layers: race/* holds each once).
        json!({"gcGracePeriod": "0s", "gcInterval": "off", "lifecycle": [
            {"repositories": "race/*", "rules": [
                {"priority": 1, "tagStatus": "untagged", "olderThan": "0s"}]}],
            "maxStoreSize": "1GiB",
            "quotas": [{"repositories": "race/*", "maxSize": "1GiB"},
                       {"repositories": "race/a", "maxSize": "1GiB"}]}),
    );
    let data = dir.path().join("data");
    let layers: Vec<Vec<u8>> = (0..6)
        .map(|i| bytes(500 + i, 20_000 + i as usize))
        .collect();
    let layers = Arc::new(layers);
    let (pushed, refused, passes) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let mut seed = 0u64;
    for round in 0..3u64 {
        // Clients of the killed server panic; each operation is caught and the loop goes on.
        // Only this test's threads are quiet: other tests' failures still print.
        quiet_threads_named("race-");
        let reg = start(&data, &cfg, 0);
        let stop = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::new();
        for w in 0..4u64 {
            let (c, stop, layers) = (reg.client(), stop.clone(), layers.clone());
            let (pushed, refused) = (pushed.clone(), refused.clone());
            seed += 1000;
            let base = seed;
            let named = std::thread::Builder::new().name(format!("race-{w}"));
            workers.push(named.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let n = base + i;
                    let repo = ["race/a", "race/b"][(n % 2) as usize];
                    let op = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        match (w, n % 5) {
                            // Deleter: a tag (its image is then the collector's), or in
                            // race/b, which has no index, the manifest a tag points at.
                            (3, _) => {
                                let tag = format!("/v2/{repo}/manifests/t{}", n % 3);
                                let r = c.head(&tag);
                                match r.header("Docker-Content-Digest") {
                                    Some(d) if repo == "race/b" => {
                                        c.delete(&format!("/v2/{repo}/manifests/{d}"));
                                    }
                                    _ => {
                                        c.delete(&tag);
                                    }
                                }
                            }
                            // An index over what two tags point at now.
                            (2, 0) if repo == "race/a" => {
                                let mut descs = Vec::new();
                                for t in ["t0", "t1"] {
                                    let r = c.get(&format!("/v2/{repo}/manifests/{t}"));
                                    if r.status != 200 {
                                        return;
                                    }
                                    descs.push(format!(
                                        r#"{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{}}}"#,
                                        sha256(&r.body),
                                        r.body.len()
                                    ));
                                }
                                let idx = format!(
                                    r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{}]}}"#,
                                    descs.join(",")
                                );
                                let r = c.put_manifest(repo, "multi", OCI_INDEX, idx.as_bytes());
                                match r.status {
                                    201 => pushed.fetch_add(1, Ordering::Relaxed),
                                    400 => refused.fetch_add(1, Ordering::Relaxed),
                                    s => panic!("index PUT: {s} {r:?}"),
                                };
                            }
                            // An image of two shared layers and its own config, under a tag.
                            _ => {
                                let config = format!(r#"{{"n":{n}}}"#).into_bytes();
                                let (cd, _) = c.push_blob(repo, &config);
                                let mut refs = Vec::new();
                                for k in [n % 6, (n / 6) % 6] {
                                    let (d, _) = c.push_blob(repo, &layers[k as usize]);
                                    refs.push((d, layers[k as usize].len()));
                                }
                                let refs: Vec<(&str, usize)> =
                                    refs.iter().map(|(d, s)| (d.as_str(), *s)).collect();
                                let m = image_manifest((&cd, config.len()), &refs, "");
                                let r = c.put_manifest(repo, &format!("t{}", n % 3), OCI_MANIFEST, &m);
                                match r.status {
                                    201 => pushed.fetch_add(1, Ordering::Relaxed),
                                    // A layer collected between its upload and the manifest.
                                    400 if r.code() == "MANIFEST_BLOB_UNKNOWN" => {
                                        refused.fetch_add(1, Ordering::Relaxed)
                                    }
                                    s => panic!("manifest PUT: {s} {r:?}"),
                                };
                            }
                        }
                    }));
                    if op.is_err() && stop.load(Ordering::Relaxed) {
                        break;
                    }
                }
            }).unwrap());
        }
        // Abandoned pushes into a repository the collector visits first (names sort):
        // passes take longer, so pushes land between a pass's plan and its deletions.
        let filler = {
            let (c, stop) = (reg.client(), stop.clone());
            let named = std::thread::Builder::new().name("race-filler".into());
            named
                .spawn(move || {
                    let mut k = round << 32;
                    while !stop.load(Ordering::Relaxed) {
                        k += 1;
                        let junk = bytes(k, 512);
                        if std::panic::catch_unwind(|| c.push_blob("race/0", &junk)).is_err() {
                            break;
                        }
                    }
                })
                .unwrap()
        };
        let collector = {
            let (c, stop, passes) = (reg.client(), stop.clone(), passes.clone());
            let named = std::thread::Builder::new().name("race-gc".into());
            named
                .spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                            c.req("POST", "/admin/gc", &[], Body::None).status == 200
                        }));
                        if matches!(ok, Ok(true)) {
                            passes.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
                .unwrap()
        };
        let began = Instant::now();
        std::thread::sleep(bound(Duration::from_millis(1500 + 500 * round)));
        while pushed.load(Ordering::Relaxed) == 0
            && began.elapsed() < bound(Duration::from_secs(60))
        {
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut reg = reg;
        reg.kill();
        stop.store(true, Ordering::SeqCst);
        for w in workers {
            let _ = w.join();
        }
        let _ = collector.join();
        let _ = filler.join();
        let reg = start(&data, &cfg, 0);
        let c = reg.client();
        check_ok(&c);
        for repo in ["race/a", "race/b"] {
            verify_complete(&c, repo);
        }
        // A pass after the restart leaves every tag whole too.
        gc(&c, false);
        check_ok(&c);
        for repo in ["race/a", "race/b"] {
            verify_complete(&c, repo);
        }
    }
    let (p, r, g) = (
        pushed.load(Ordering::Relaxed),
        refused.load(Ordering::Relaxed),
        passes.load(Ordering::Relaxed),
    );
    eprintln!("{p} manifests pushed, {r} refused for a collected reference, {g} passes");
    assert!(
        p > 10 && g > 3,
        "too little happened: {p} pushes, {g} passes"
    );
}

#[test]
fn the_collector_runs_on_its_schedule() {
    let dir = TempDir::new("gc-schedule");
    let cfg = config(
        dir.path(),
        json!({"gcGracePeriod": "0s", "gcInterval": "1s"}),
    );
    let reg = start(&dir.path().join("data"), &cfg, 0);
    let c = reg.client();
    let (d, r) = c.push_blob("gc/abandoned", &bytes(3, 10_000));
    assert_eq!(r.status, 201);
    let deadline = std::time::Instant::now() + bound(std::time::Duration::from_secs(20));
    while c.head(&format!("/v2/gc/abandoned/blobs/{d}")).status == 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "no scheduled pass collected the abandoned blob: {}",
            reg.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    reg.log_with("gc: deleted 0 manifest(s), 1 blob link(s), 1 blob(s) and 1 empty");
    assert!(catalog(&c).is_empty());
}
