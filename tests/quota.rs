//! Quotas through the real binary: per-pattern and store-wide budgets refuse pushes with a
//! 403 DENIED naming the quota before data is written (measured from /proc/PID/io), mounts
//! and re-uploads of content a budget already holds are free, deletes and the collector give
//! budget back, the counters survive a restart and match a recount (`/admin/check`), and
//! skopeo shows the message.

mod common;
use common::oci::*;
use common::*;
use std::path::Path;

const MIB: usize = 1 << 20;

/// Bytes the registry has written to disk, after a durable commit (a tiny push elsewhere)
/// made it write back whatever non-durable transactions left in the page cache.
fn settled_writes(c: &Client, pid: u32) -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let (_, r) = c.push_blob("scratch", format!("settle {n}").as_bytes());
    assert_eq!(r.status, 201, "{r:?}");
    write_bytes(pid)
}

/// Writes `config` (with `listen` on port 0) into `dir`; returns its path as text.
fn config(dir: &Path, mut config: serde_json::Value) -> String {
    config["listen"] = "127.0.0.1:0".into();
    let path = dir.join("outpost.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path.to_str().unwrap().to_owned()
}

/// A registry on `tmp/data` with `config`.
fn start(tmp: &TempDir, config_json: serde_json::Value) -> Registry {
    let cfg = config(tmp.path(), config_json);
    Registry::start_with(&tmp.path().join("data"), &["--config", &cfg])
}

/// Bytes quota `name` holds, and its limit, as `/admin/stats` reports them.
fn quota(c: &Client, name: &str) -> (u64, Option<u64>) {
    let stats = c.get("/admin/stats").json();
    let q = stats["quotas"]
        .as_array()
        .unwrap()
        .iter()
        .find(|q| q["quota"] == name)
        .unwrap_or_else(|| panic!("no quota {name} in {stats}"))
        .clone();
    (q["used"].as_u64().unwrap(), q["limit"].as_u64())
}

/// The response is a 403 DENIED naming `quota` (as the message writes it).
fn assert_denied(r: &Resp, quota: &str) {
    assert_eq!(r.status, 403, "{r:?}");
    assert_eq!(r.code(), "DENIED", "{r:?}");
    let message = r.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.starts_with(&format!("quota {quota} ("))
            && message.contains(" used, this push needs "),
        "{message}"
    );
}

fn assert_consistent(c: &Client) {
    let r = c.get("/admin/check");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn a_repository_quota_refuses_pushes_before_writing() {
    let tmp = TempDir::on_disk("quota-repo");
    let reg = start(
        &tmp,
        serde_json::json!({"quotas": [{"repositories": "plant-a/*", "maxSize": "4MiB"}]}),
    );
    let c = reg.client();
    let pid = reg.child.id();
    let (d, r) = c.push_blob("plant-a/app", &bytes(1, 3 * MIB));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(quota(&c, "plant-a/*"), ((3 * MIB) as u64, Some(4 << 20)));
    let big = bytes(2, 2 * MIB);

    // Monolithic, with its digest and length: refused before a byte is written.
    let before = settled_writes(&c, pid);
    let (_, r) = c.push_blob("plant-a/web", &big);
    assert_denied(&r, "\"plant-a/*\"");
    let detail = &r.json()["errors"][0]["detail"];
    assert_eq!(detail["limit"], 4 << 20);
    assert_eq!(detail["used"], 3 * MIB);
    assert_eq!(detail["needs"], 2 * MIB);
    // A chunk with Content-Length: refused before its body is read.
    let loc = c.start_upload("plant-a/web");
    let r = c.req("PATCH", &loc, &[], Body::Bytes(&big));
    assert_denied(&r, "\"plant-a/*\"");
    let written = settled_writes(&c, pid) - before;
    eprintln!("refused monolithic and chunked pushes wrote {written} bytes");
    assert!(
        written < 256 << 10,
        "{written} bytes written for refused pushes"
    );
    // The refused session was discarded.
    assert_eq!(c.get(&loc).status, 404);

    // Streamed (no length): refused at the first chunk past the limit, so at most the
    // budget's remaining MiB and a chunk were written.
    let before = settled_writes(&c, pid);
    let loc = c.start_upload("plant-a/web");
    let r = c.req(
        "PATCH",
        &loc,
        &[],
        Body::Chunked(big.chunks(100_003).collect()),
    );
    assert_denied(&r, "\"plant-a/*\"");
    let written = settled_writes(&c, pid) - before;
    eprintln!("a stream refused past 1 MiB of room wrote {written} bytes");
    assert!(
        written < (MIB + (512 << 10)) as u64,
        "{written} bytes written for a stream refused past 1 MiB of room"
    );
    assert_eq!(c.get(&loc).status, 404);

    // Other repositories are not covered (and the same measure sees an accepted push).
    let before = settled_writes(&c, pid);
    assert_eq!(c.push_blob("plant-b/app", &big).1.status, 201);
    let written = settled_writes(&c, pid) - before;
    eprintln!("an accepted push of 2 MiB wrote {written} bytes");
    assert!(written >= (2 * MIB) as u64, "the measure missed {written}");
    assert_eq!(c.get(&format!("/v2/plant-a/app/blobs/{d}")).status, 200);
    assert_eq!(quota(&c, "plant-a/*").0, (3 * MIB) as u64);
    // Content a covered repository holds already is free, even over the room left.
    assert_eq!(c.push_blob("plant-a/web", &bytes(1, 3 * MIB)).1.status, 201);
    // Also streamed by a cold client (no length, no digest until the end): it repeats the
    // stored blob, writes nothing, and is not refused on the way.
    assert_eq!(
        c.push_streamed("plant-a/cold", &bytes(1, 3 * MIB)).status,
        201
    );
    assert_eq!(quota(&c, "plant-a/*").0, (3 * MIB) as u64);
    assert_consistent(&c);
}

#[test]
fn the_finish_decides_between_racing_uploads() {
    let tmp = TempDir::new("quota-race");
    let reg = start(
        &tmp,
        serde_json::json!({"quotas": [{"repositories": "ci/*", "maxSize": "3MiB"}]}),
    );
    let c = reg.client();
    // Two uploads each fit alone; both get all their data in before either finishes.
    let data = [bytes(3, 2 * MIB), bytes(4, 2 * MIB)];
    let locs: Vec<String> = data
        .iter()
        .map(|d| {
            let loc = c.start_upload("ci/app");
            assert_eq!(c.req("PATCH", &loc, &[], Body::Bytes(d)).status, 202);
            loc
        })
        .collect();
    let finish = |i: usize| {
        let path = format!("{}?digest={}", locs[i], sha256(&data[i]));
        c.req("PUT", &path, &[], Body::None)
    };
    assert_eq!(finish(0).status, 201);
    assert_denied(&finish(1), "\"ci/*\"");
    assert_eq!(c.get(&locs[1]).status, 404, "the refused upload stays");
    assert_eq!(quota(&c, "ci/*").0, (2 * MIB) as u64);
    assert_consistent(&c);
}

#[test]
fn store_limit_mounts_deletes_collection_restart_and_a_lowered_quota() {
    let tmp = TempDir::new("quota-store");
    let rules = |team: &str| {
        serde_json::json!({
            "maxStoreSize": "6MiB",
            "gcGracePeriod": "0s",
            "gcInterval": "off",
            "quotas": [{"repositories": "team/*", "maxSize": team}],
        })
    };
    let mut reg = start(&tmp, rules("3MiB"));
    let c = reg.client();
    let a = bytes(5, 2 * MIB);
    let (da, r) = c.push_blob("base", &a);
    assert_eq!(r.status, 201);
    let store = |c: &Client| quota(c, "maxStoreSize");
    assert_eq!(store(&c), ((2 * MIB) as u64, Some(6 << 20)));

    // A mount is free for the store (one copy per domain); the team's budget is charged
    // once, however many of its repositories mount the blob.
    let mount = |c: &Client, repo: &str| {
        let path = format!("/v2/{repo}/blobs/uploads/?mount={da}&from=base");
        c.req("POST", &path, &[], Body::None)
    };
    assert_eq!(mount(&c, "team/app").status, 201);
    assert_eq!(mount(&c, "team/web").status, 201);
    assert_eq!(store(&c).0, (2 * MIB) as u64);
    assert_eq!(quota(&c, "team/*").0, (2 * MIB) as u64);
    assert_denied(&c.push_blob("team/web", &bytes(6, 2 * MIB)).1, "\"team/*\"");

    // The store's own limit.
    let b = bytes(7, 3 * MIB);
    let (db, r) = c.push_blob("other", &b);
    assert_eq!(r.status, 201);
    let d = bytes(8, 2 * MIB);
    assert_denied(&c.push_blob("other", &d).1, "maxStoreSize");
    // Stored content re-pushed elsewhere in its domain adds nothing: accepted at 5 of 6 MiB.
    assert_eq!(c.push_blob("other", &a).1.status, 201);
    // A delete gives its bytes back.
    assert_eq!(c.delete(&format!("/v2/other/blobs/{db}")).status, 202);
    assert_eq!(store(&c).0, (2 * MIB) as u64);
    assert_eq!(c.push_blob("other", &d).1.status, 201);

    // Manifests count; a deleted image's layers come back to the budget once collected.
    let config_blob = br#"{"architecture":"amd64","os":"linux"}"#;
    let (dc, r) = c.push_blob("team/app", config_blob);
    assert_eq!(r.status, 201);
    let m = image_manifest((&dc, config_blob.len()), &[(&da, a.len())], "");
    let before = quota(&c, "team/*").0;
    let r = c.put_manifest("team/app", "v1", OCI_MANIFEST, &m);
    assert_eq!(r.status, 201, "{r:?}");
    let with_manifest = quota(&c, "team/*").0;
    assert!(
        with_manifest > before + m.len() as u64 - 1,
        "{with_manifest}"
    );
    let md = r.header("Docker-Content-Digest").unwrap().to_owned();
    assert_eq!(
        c.delete(&format!("/v2/team/app/manifests/{md}")).status,
        202
    );
    assert_eq!(quota(&c, "team/*").0, before);
    assert_eq!(c.delete(&format!("/v2/team/web/blobs/{da}")).status, 202);
    // team/app still links the layer and the config (unlisted now): the collector takes them.
    assert_eq!(quota(&c, "team/*").0, before);
    let r = c.req("POST", "/admin/gc", &[], Body::None);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(quota(&c, "team/*").0, 0);
    assert_consistent(&c);

    // The counters are stored: a restart finds them as they were.
    let used = (store(&c).0, quota(&c, "team/*").0);
    reg.restart();
    let c = reg.client();
    assert_eq!((store(&c).0, quota(&c, "team/*").0), used);
    assert_consistent(&c);
    // outpost du shows them (through the registry's admin socket).
    let out = outpost()
        .args(["du", "--config"])
        .arg(tmp.path().join("outpost.json"))
        .arg("--data-dir")
        .arg(tmp.path().join("data"))
        .output()
        .unwrap();
    let du = text(&out);
    assert!(out.status.success(), "{du}");
    assert!(
        du.contains(&format!(
            "quota team/*: {} bytes used of 3145728 bytes",
            used.1
        )),
        "{du}"
    );
    assert!(
        du.contains(&format!(
            "quota maxStoreSize: {} bytes used of 6291456 bytes",
            used.0
        )),
        "{du}"
    );

    // Lowered below what it holds: what is there stays, only growth is refused. (The pass
    // took every unlisted link, `base`'s too.)
    assert_eq!(c.push_blob("base", &a).1.status, 201);
    assert_eq!(mount(&c, "team/app").status, 201);
    config(tmp.path(), rules("1MiB"));
    reg.restart();
    let c = reg.client();
    assert_eq!(quota(&c, "team/*"), ((2 * MIB) as u64, Some(1 << 20)));
    assert_eq!(c.get(&format!("/v2/team/app/blobs/{da}")).status, 200);
    assert_eq!(mount(&c, "team/web").status, 201, "already held: free");
    assert_denied(&c.push_blob("team/app", b"x").1, "\"team/*\"");
    assert_consistent(&c);
}

#[test]
fn each_domain_pays_for_its_own_copy() {
    let tmp = TempDir::new("quota-domains");
    let cfg = encryption_config(
        tmp.path(),
        serde_json::json!([{"repositories": "sealed/*", "key": "sealed"}]),
    );
    let mut c: serde_json::Value = serde_json::from_slice(&std::fs::read(&cfg).unwrap()).unwrap();
    c["maxStoreSize"] = "3MiB".into();
    std::fs::write(&cfg, c.to_string()).unwrap();
    let reg = Registry::start_with(
        &tmp.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = reg.client();
    let a = bytes(9, 2 * MIB);
    assert_eq!(c.push_blob("plain", &a).1.status, 201);
    // The same content under another key is another copy: over the store's 3 MiB.
    assert_denied(&c.push_blob("sealed/app", &a).1, "maxStoreSize");
    // A mount across domains cannot share the copy; refused the same way, before an upload.
    let r = c.req(
        "POST",
        &format!(
            "/v2/sealed/app/blobs/uploads/?mount={}&from=plain",
            sha256(&a)
        ),
        &[],
        Body::None,
    );
    assert_denied(&r, "maxStoreSize");
    assert_eq!(quota(&c, "maxStoreSize").0, (2 * MIB) as u64);
    assert_consistent(&c);
}

#[test]
fn skopeo_shows_the_quota_message() {
    let tmp = TempDir::new("quota-skopeo");
    let reg = start(
        &tmp,
        serde_json::json!({"quotas": [{"repositories": "plant-a/*", "maxSize": "1MiB"}]}),
    );
    let src = new_layout(tmp.path(), "src");
    let m = image(&src, "amd64", &[bytes(10, 2 * MIB)]);
    layout(&src, OCI_MANIFEST, &m, "v1");
    let out = std::process::Command::new("skopeo")
        .args(["--insecure-policy", "copy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:v1", src.display()))
        .arg(format!("docker://{}/plant-a/app:v1", reg.addr))
        .output()
        .expect("skopeo is required for this test: run ./test.sh, which installs it");
    let err = String::from_utf8_lossy(&out.stderr);
    eprintln!("skopeo said: {err}");
    assert!(!out.status.success(), "{err}");
    // (skopeo quotes the message, escaping its quotes.)
    assert!(
        err.contains(
            r#"denied: quota \"plant-a/*\" (1.0 MiB) exceeded: 0 B used, this push needs "#
        ),
        "skopeo did not show the quota: {err}"
    );
    assert_consistent(&reg.client());
}
