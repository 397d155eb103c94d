//! The scrub: bytes flipped inside outpost.redb (a plaintext chunk, a sealed chunk, a
//! manifest record) while the registry is stopped are found, named with the repositories
//! and tags they break, no longer served, and healed: by a push of the same content, or
//! from a mirror.

mod common;

use common::*;
use serde_json::Value;
use std::path::Path;

/// Flips one bit at every place `needle` occurs in the file `path` (stale copies of a page
/// that redb freed may hold it too; flipping those changes nothing live). Returns how many.
fn flip_every(path: &Path, needle: &[u8]) -> usize {
    let mut file = std::fs::read(path).unwrap();
    let mut at = Vec::new();
    let mut i = 0;
    while let Some(p) = find(&file[i..], needle) {
        at.push(i + p);
        i += p + needle.len();
    }
    for &p in &at {
        file[p + needle.len() / 2] ^= 0x04;
    }
    std::fs::write(path, &file).unwrap();
    at.len()
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Flips one bit in the middle of the longest run of consecutive 4 KiB pages that differ
/// between `before` and the file `path` now (pages past the old end differ): where a push of
/// one large sealed blob put its chunk, whose ciphertext cannot be searched for.
fn flip_in_longest_change(before: &[u8], path: &Path) -> (usize, usize) {
    const PAGE: usize = 4096;
    let mut now = std::fs::read(path).unwrap();
    let pages = now.len() / PAGE;
    let changed = |p: usize| {
        let a = &now[p * PAGE..(p + 1) * PAGE];
        before.get(p * PAGE..(p + 1) * PAGE) != Some(a)
    };
    let (mut best, mut run_start, mut run) = ((0, 0), 0, 0);
    for p in 0..pages {
        if changed(p) {
            if run == 0 {
                run_start = p;
            }
            run += 1;
            if run > best.1 {
                best = (run_start, run);
            }
        } else {
            run = 0;
        }
    }
    let at = (best.0 + best.1 / 2) * PAGE + PAGE / 2;
    now[at] ^= 0x04;
    std::fs::write(path, &now).unwrap();
    (at, best.1)
}

/// Pushes a config and one layer into `repo` and tags the image `tag`; returns the layer's
/// and the manifest's digests.
fn push_one(c: &Client, repo: &str, layer: &[u8], tag: &str, extra: &str) -> (String, String) {
    let config = format!(r#"{{"os":"linux","tag":"{tag}"}}"#).into_bytes();
    let (cd, r) = c.push_blob(repo, &config);
    assert_eq!(r.status, 201, "{r:?}");
    let (ld, r) = c.push_blob(repo, layer);
    assert_eq!(r.status, 201, "{r:?}");
    let m = image_manifest((&cd, config.len()), &[(&ld, layer.len())], extra);
    assert_eq!(c.put_manifest(repo, tag, OCI_MANIFEST, &m).status, 201);
    (ld, sha256(&m))
}

/// Everything a GET of `path` answers until the connection closes (a response cut short is
/// kept as it came).
fn raw_get(addr: std::net::SocketAddr, path: &str) -> Vec<u8> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    got
}

fn scrub(c: &Client, query: &str) -> Value {
    let r = c.req("POST", &format!("/admin/scrub{query}"), &[], Body::None);
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

/// The quarantine entry of `digest` in a report or status.
fn entry<'a>(v: &'a Value, digest: &str) -> &'a Value {
    v["quarantined"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["digest"] == digest)
        .unwrap_or_else(|| panic!("{digest} not quarantined: {v:#}"))
}

/// (repository, tags) that a quarantine entry says it breaks.
fn breaks(e: &Value) -> Vec<(String, Vec<String>)> {
    let mut out: Vec<(String, Vec<String>)> = e["breaks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            let tags = b["tags"].as_array().unwrap().iter();
            let tags = tags.map(|t| t.as_str().unwrap().to_owned()).collect();
            (b["repository"].as_str().unwrap().to_owned(), tags)
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_rotten_plaintext_chunk_and_manifest_are_quarantined_and_a_push_heals_them() {
    let dir = TempDir::new("scrub-plain");
    let mut reg = Registry::start(dir.path());
    let c = reg.client();
    let layer = bytes(181, 300_000);
    let (ld, md) = push_one(&c, "plant/app", &layer, "v1", "");
    // The same image mounted into a second repository, tagged there too.
    for d in [ld.clone(), sha256(br#"{"os":"linux","tag":"v1"}"#)] {
        let r = c.mount("plant/copy", &d, Some("plant/app"));
        assert_eq!(r.status, 201, "{r:?}");
    }
    let m = c.get(&format!("/v2/plant/app/manifests/{md}")).body;
    assert_eq!(
        c.put_manifest("plant/copy", "v2", OCI_MANIFEST, &m).status,
        201
    );
    // Untouched neighbours: another image, and a manifest whose record will rot.
    let other = bytes(182, 50_000);
    let (od, _) = push_one(&c, "other/x", &other, "v1", "");
    let marker = r#","annotations":{"note":"scrub-test-marker-0123456789"}"#;
    let (_, rotten_md) = push_one(&c, "other/y", &bytes(183, 5_000), "v7", marker);
    assert!(reg.terminate().success());

    let db = dir.path().join("outpost.redb");
    assert!(flip_every(&db, &layer[150_000..150_032]) >= 1);
    assert!(flip_every(&db, b"scrub-test-marker-0123456789") >= 1);
    let reg = Registry::start(dir.path());
    let c = reg.client();

    let report = scrub(&c, "");
    assert_eq!(report["completed"], true, "{report:#}");
    let found: Vec<&str> = report["found"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["digest"].as_str().unwrap())
        .collect();
    assert_eq!(found.len(), 2, "{report:#}");
    assert!(found.contains(&ld.as_str()) && found.contains(&rotten_md.as_str()));
    assert_eq!(
        breaks(entry(&report, &ld)),
        [
            ("plant/app".to_owned(), vec!["v1".to_owned()]),
            ("plant/copy".to_owned(), vec!["v2".to_owned()])
        ]
    );
    let bad_manifest = entry(&report, &rotten_md);
    assert_eq!(bad_manifest["kind"], "manifest");
    assert_eq!(
        breaks(bad_manifest),
        [("other/y".to_owned(), vec!["v7".to_owned()])]
    );
    assert!(reg.log_with("quarantined").contains(&ld));

    // Serving stops, before the first byte; nothing else is touched.
    for repo in ["plant/app", "plant/copy"] {
        let r = c.get(&format!("/v2/{repo}/blobs/{ld}"));
        assert_eq!((r.status, r.code()), (404, "BLOB_UNKNOWN".into()), "{r:?}");
        assert!(String::from_utf8_lossy(&r.body).contains("quarantined"));
        assert_eq!(c.head(&format!("/v2/{repo}/blobs/{ld}")).status, 404);
    }
    assert_eq!(c.get(&format!("/v2/other/x/blobs/{od}")).body, other);
    assert_eq!(c.get("/v2/plant/app/manifests/v1").status, 200);
    assert_eq!(c.get("/v2/other/y/manifests/v7").status, 500);
    // Never a mount source: the client is given an upload session instead.
    let r = c.mount("plant/new", &ld, Some("plant/app"));
    assert_eq!(r.status, 202, "{r:?}");
    let status = c.get("/admin/scrub").json();
    assert_eq!(status["lastFullPass"]["bad"], 2, "{status:#}");
    entry(&status, &ld);

    // A push of the same content replaces the damaged copy (not deduplicated against it).
    let (_, r) = c.push_blob("plant/app", &layer);
    assert_eq!(r.status, 201, "{r:?}");
    for repo in ["plant/app", "plant/copy"] {
        let r = c.get(&format!("/v2/{repo}/blobs/{ld}"));
        assert_eq!((r.status, r.body == layer), (200, true), "{repo}");
    }
    let original = image_manifest(
        (
            &sha256(br#"{"os":"linux","tag":"v7"}"#),
            br#"{"os":"linux","tag":"v7"}"#.len(),
        ),
        &[(&sha256(&bytes(183, 5_000)), 5_000)],
        marker,
    );
    assert_eq!(sha256(&original), rotten_md);
    assert_eq!(
        c.put_manifest("other/y", "v7", OCI_MANIFEST, &original)
            .status,
        201
    );
    assert_eq!(c.get("/v2/other/y/manifests/v7").body, original);
    let status = c.get("/admin/scrub").json();
    assert_eq!(status["quarantined"], Value::Array(vec![]), "{status:#}");
    let check = c.get("/admin/check");
    assert_eq!(check.status, 200, "{check:?}");
    let again = scrub(&c, "");
    assert_eq!(again["found"], Value::Array(vec![]), "{again:#}");
}

#[test]
fn a_rotten_sealed_chunk_is_quarantined_and_healed_from_a_pull_through_upstream() {
    let tmp = TempDir::new("scrub-sealed");
    let up = Registry::start(&tmp.path().join("up"));
    let layer = bytes(191, 600_000);
    let (ld, _) = push_one(&up.client(), "plant/app", &layer, "v1", "");

    let cfg = encryption_config(
        tmp.path(),
        serde_json::json!([{"repositories": "cache/*", "key": "site"}]),
    );
    let mut config: Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    config["mirrors"] = serde_json::json!([{"name": "up", "upstream": format!("http://{}", up.addr),
        "pullThrough": "cache"}]);
    std::fs::write(&cfg, config.to_string()).unwrap();
    let data = tmp.path().join("down");
    let mut down = Registry::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    let c = down.client();
    assert_eq!(c.get("/v2/cache/plant/app/manifests/v1").status, 200);
    let config_digest = sha256(br#"{"os":"linux","tag":"v1"}"#);
    let r = c.get(&format!("/v2/cache/plant/app/blobs/{config_digest}"));
    assert_eq!(r.status, 200);
    // The file before and after the layer is cached: the sealed chunk is where it changed.
    assert!(down.terminate().success());
    let db = data.join("outpost.redb");
    let before = std::fs::read(&db).unwrap();
    let mut down = Registry::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    let c = down.client();
    let r = c.get(&format!("/v2/cache/plant/app/blobs/{ld}"));
    assert_eq!((r.status, r.body == layer), (200, true));
    assert!(
        find(&std::fs::read(&db).unwrap(), &layer[1000..1032]).is_none(),
        "sealed"
    );
    assert!(down.terminate().success());
    let (_, pages) = flip_in_longest_change(&before, &db);
    assert!(pages >= 50, "the chunks span {pages} changed pages");
    // Without the upstream the damage is found and the blob refused, not served wrong.
    let mut down_cfg: Value = config.clone();
    down_cfg["mirrors"] = Value::Array(vec![]);
    let lone = tmp.path().join("lone.json");
    std::fs::write(&lone, down_cfg.to_string()).unwrap();
    let reg = Registry::start_with(&data, &["--config", lone.to_str().unwrap()]);
    let c = reg.client();
    // Refused, or cut where the damaged chunk comes: never the whole body as if sound.
    let got = raw_get(reg.addr, &format!("/v2/cache/plant/app/blobs/{ld}"));
    assert!(
        find(&got, &layer[layer.len() - 4096..]).is_none(),
        "damage is never served"
    );
    let report = scrub(&c, "?repository=cache/plant/app");
    assert_eq!(
        breaks(entry(&report, &ld)),
        [("cache/plant/app".to_owned(), vec!["v1".to_owned()])]
    );
    assert!(report["found"][0]["reason"]
        .as_str()
        .unwrap()
        .contains("does not open"));
    assert_eq!(
        c.get(&format!("/v2/cache/plant/app/blobs/{ld}")).status,
        404
    );
    drop(reg);

    // With the pull-through upstream configured, the next pass fetches it again.
    let reg = Registry::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    let c = reg.client();
    let report = scrub(&c, "");
    assert_eq!(report["healed"][0]["digest"], ld.as_str(), "{report:#}");
    assert_eq!(report["quarantined"], Value::Array(vec![]), "{report:#}");
    assert!(reg.log_with("healed blob").contains(&ld));
    let r = c.get(&format!("/v2/cache/plant/app/blobs/{ld}"));
    assert_eq!((r.status, r.body == layer), (200, true));
    assert_eq!(c.get("/admin/check").status, 200);
}

#[test]
fn the_cli_scrubs_a_stopped_store_with_redbs_own_check() {
    let dir = TempDir::new("scrub-cli");
    let mut reg = Registry::start(dir.path());
    let layer = bytes(201, 100_000);
    let (ld, _) = push_one(&reg.client(), "fleet/app", &layer, "stable", "");
    // While the registry runs, the command goes through it (its admin socket).
    let out = outpost()
        .args(["scrub", "--json", "--repo", "fleet/app", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("using the registry"), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["objects"], 3, "{r:#}");
    assert!(r["fileCheck"].as_str().unwrap().starts_with("not run"));
    assert!(reg.terminate().success());
    let out = outpost()
        .args(["scrub", "--json", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (r["objects"].as_u64(), r["completed"].as_bool()),
        (Some(3), Some(true))
    );
    assert!(
        r["fileCheck"].as_str().unwrap().contains("consistent"),
        "{r:#}"
    );

    flip_every(&dir.path().join("outpost.redb"), &layer[50_000..50_032]);
    let out = outpost()
        .args(["scrub", "--repo", "fleet/app", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains(&format!("damaged blob {ld}")), "{said}");
    assert!(said.contains("breaks fleet/app: tags [stable]"), "{said}");
    // redb's own check (page checksums) sees the flip too; the store still opens after it.
    assert!(said.contains("redb's integrity check failed"), "{said}");
    let out = outpost()
        .args(["scrub", "--status", "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    let said = text(&out);
    assert!(said.contains(&format!("quarantined blob {ld}")), "{said}");
    assert!(said.contains("last full pass: started"), "{said}");
    let reg = Registry::start(dir.path());
    let r = reg.client().get(&format!("/v2/fleet/app/blobs/{ld}"));
    assert_eq!(r.status, 404, "{r:?}");
    assert_eq!(
        reg.client().get("/v2/fleet/app/manifests/stable").status,
        200
    );
}
