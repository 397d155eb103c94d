//! Cross-repository blob mounting over HTTP: every branch of `POST ...?mount=&from=`, the
//! runtime switch (admin API and CLI), reference counting across repositories, and races.

mod common;
use common::*;

fn stats(c: &Client) -> serde_json::Value {
    let r = c.get("/admin/stats");
    assert_eq!(r.status, 200, "{r:?}");
    r.json()
}

fn set(c: &Client, patch: &str) -> Resp {
    c.req(
        "PATCH",
        "/admin/settings",
        &[("Content-Type", "application/json")],
        Body::Bytes(patch.as_bytes()),
    )
}

/// Waits (briefly) for the registry's log to contain `needle`: stderr is read by a thread.
fn wait_log(reg: &Registry, needle: &str) {
    for _ in 0..100 {
        if reg.log_text().contains(needle) {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    panic!("log lacks {needle:?}:\n{}", reg.log_text());
}

fn blob_path(repo: &str, digest: &str) -> String {
    format!("/v2/{repo}/blobs/{digest}")
}

/// Asserts a 202 that opened a working session: the client can upload `data` through it.
fn assert_fallback_upload(c: &Client, r: &Resp, target: &str, data: &[u8]) {
    assert_eq!(r.status, 202, "{r:?}");
    let loc = r.header("Location").expect("session location").to_owned();
    assert!(
        loc.starts_with(&format!("/v2/{target}/blobs/uploads/")),
        "{loc}"
    );
    let put = c.req(
        "PUT",
        &format!("{loc}?digest={}", sha256(data)),
        &[],
        Body::Bytes(data),
    );
    assert_eq!(put.status, 201, "{put:?}");
}

#[test]
fn mount_with_from_links_without_copying() {
    let dir = TempDir::new("mount-from");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    let data = bytes(1, 300_000);
    let (d, r) = c.push_blob("base", &data);
    assert_eq!(r.status, 201);

    // Stored, but not in `svc`: HEAD and GET there say 404, and change nothing.
    assert_eq!(c.head(&blob_path("svc", &d)).status, 404);
    assert_eq!(c.get(&blob_path("svc", &d)).status, 404);
    assert_eq!(c.head(&blob_path("svc", &d)).status, 404);

    let before = stats(&c)["store"].clone();
    let r = c.mount("svc", &d, Some("base"));
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("Location"), Some(blob_path("svc", &d).as_str()));
    assert_eq!(r.header("Docker-Content-Digest"), Some(d.as_str()));
    let got = c.get(&blob_path("svc", &d));
    assert_eq!((got.status, got.body == data), (200, true));

    // One stored copy, one more link; counted as a mount with the bytes not sent.
    let s = stats(&c);
    assert_eq!(s["store"]["blobs"], before["blobs"]);
    assert_eq!(s["store"]["blobBytes"], before["blobBytes"]);
    assert_eq!(s["store"]["links"], before["links"].as_u64().unwrap() + 1);
    assert_eq!(s["mounts"]["done"], 1);
    assert_eq!(s["mounts"]["bytesNotWritten"], 300_000);

    // Mounting again is a no-op 201; a manifest in the target can reference the blob.
    assert_eq!(c.mount("svc", &d, Some("base")).status, 201);
    let config = br#"{"architecture":"arm64","os":"linux"}"#;
    let (cd, _) = c.push_blob("svc", config);
    let m = image_manifest((&cd, config.len()), &[(&d, data.len())], "");
    assert_eq!(c.put_manifest("svc", "v1", OCI_MANIFEST, &m).status, 201);

    // The log says from where.
    wait_log(
        &reg,
        &format!("mounted {d} (300000 bytes) into svc from base"),
    );
}

#[test]
fn refused_mounts_fall_back_to_an_upload() {
    let dir = TempDir::new("mount-fallback");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    let data = bytes(2, 70_000);
    let (d, _) = c.push_blob("holder", &data);
    let other = bytes(3, 1000);
    let (od, _) = c.push_blob("empty-of-it", &other);

    // Unknown `from`: 202 (never 401/404), and the session works.
    let r = c.mount("t1", &d, Some("no-such-repo"));
    assert_fallback_upload(&c, &r, "t1", &data);
    // `from` exists but lacks the blob, although another repository holds it.
    let r = c.mount("t2", &d, Some("empty-of-it"));
    assert_fallback_upload(&c, &r, "t2", &data);
    // Malformed `from`, empty `from`, malformed digest.
    for bad in ["UPPER", "a//b", "", "..%2F..%2Fetc"] {
        let r = c.mount("t3", &d, Some(bad));
        assert_eq!(r.status, 202, "from={bad:?}: {r:?}");
    }
    let r = c.mount("t4", "sha256:nothex", Some("holder"));
    assert_eq!(r.status, 202, "{r:?}");
    // A blob nobody holds, with and without `from`.
    let absent = sha256(b"never pushed");
    assert_eq!(c.mount("t5", &absent, Some("holder")).status, 202);
    assert_eq!(c.mount("t5", &absent, None).status, 202);
    // A refused mount still honours `digest=` as a plain monolithic POST would.
    let r = c.req(
        "POST",
        &format!("/v2/t6/blobs/uploads/?mount={od}&from=holder&digest={od}"),
        &[],
        Body::Bytes(&other),
    );
    assert_eq!(r.status, 201, "{r:?}");

    let s = stats(&c);
    let refused = &s["mounts"]["refused"];
    assert_eq!(refused["fromUnknown"], 1);
    assert_eq!(refused["notInFrom"], 3); // t2, t5, t6
    assert_eq!(refused["fromInvalid"], 4);
    assert_eq!(refused["digestInvalid"], 1);
    assert_eq!(refused["notStored"], 1);
    assert_eq!(s["mounts"]["done"], 0);
    // t1 and t2 uploaded content the store had: kept once.
    assert_eq!(s["uploads"]["deduplicated"], 3);
    assert_eq!(s["store"]["blobs"], 2);
}

#[test]
fn automatic_mount_without_from() {
    let dir = TempDir::new("mount-auto");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    let data = bytes(4, 5000);
    let (d, _) = c.push_blob("somewhere/deep", &data);

    // Absent from `from`, present elsewhere: 202 with `from`, 201 without.
    c.push_blob("unrelated", b"x");
    assert_eq!(c.mount("auto", &d, Some("unrelated")).status, 202);
    let r = c.mount("auto", &d, None);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(c.get(&blob_path("auto", &d)).body, data);
    wait_log(&reg, "into auto from somewhere/deep");

    // automaticMount off: 202 without `from`, `from` still works.
    let r = set(&c, r#"{"automaticMount": "disabled"}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["automaticMount"]["value"], "disabled");
    assert_eq!(c.mount("auto2", &d, None).status, 202);
    assert_eq!(c.mount("auto2", &d, Some("auto")).status, 201);
    assert_eq!(stats(&c)["mounts"]["refused"]["automaticDisabled"], 1);

    // Also off from the start by flag.
    let dir2 = TempDir::new("mount-auto-off");
    let reg2 = Registry::start_with(dir2.path(), &["--automatic-mount", "disabled"]);
    let c2 = reg2.client();
    let (d2, _) = c2.push_blob("a", &data);
    assert_eq!(c2.mount("b", &d2, None).status, 202);
    assert_eq!(c2.mount("b", &d2, Some("a")).status, 201);
}

#[test]
fn deleting_the_source_keeps_the_target() {
    let dir = TempDir::new("mount-delete");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    let manifest = push_image(&c, "src", 7, 2);
    assert_eq!(
        c.put_manifest("src", "v1", OCI_MANIFEST, &manifest).status,
        201
    );
    let m: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
    let mut digests: Vec<(String, u64)> = vec![(
        m["config"]["digest"].as_str().unwrap().into(),
        m["config"]["size"].as_u64().unwrap(),
    )];
    for l in m["layers"].as_array().unwrap() {
        digests.push((
            l["digest"].as_str().unwrap().into(),
            l["size"].as_u64().unwrap(),
        ));
    }
    for (d, _) in &digests {
        assert_eq!(c.mount("dst", d, Some("src")).status, 201);
    }
    assert_eq!(
        c.put_manifest("dst", "v1", OCI_MANIFEST, &manifest).status,
        201
    );
    let stored = stats(&c)["store"]["blobBytes"].as_u64().unwrap();

    // Empty the source completely: manifest and every blob.
    let md = sha256(&manifest);
    assert_eq!(c.delete(&format!("/v2/src/manifests/{md}")).status, 202);
    for (d, _) in &digests {
        assert_eq!(c.delete(&blob_path("src", d)).status, 202);
        assert_eq!(c.head(&blob_path("src", d)).status, 404);
    }
    // The target serves all of it; nothing was freed.
    assert_eq!(c.get("/v2/dst/manifests/v1").status, 200);
    for (d, size) in &digests {
        let r = c.get(&blob_path("dst", d));
        assert_eq!((r.status, r.body.len() as u64), (200, *size));
        assert_eq!(sha256(&r.body), *d);
    }
    assert_eq!(stats(&c)["store"]["blobBytes"], stored);

    // The last link goes: so does the data.
    assert_eq!(c.delete(&format!("/v2/dst/manifests/{md}")).status, 202);
    for (d, _) in &digests {
        assert_eq!(c.delete(&blob_path("dst", d)).status, 202);
    }
    assert_eq!(c.stored_blobs(), (0, 0));
}

#[test]
fn the_switch_turns_mounting_off_without_breaking_earlier_mounts() {
    let dir = TempDir::new("mount-switch");
    let mut reg = Registry::start(dir.path());
    let c = reg.client();
    let data = bytes(8, 40_000);
    let (d, _) = c.push_blob("a", &data);
    assert_eq!(c.mount("early", &d, Some("a")).status, 201);

    let r = set(&c, r#"{"blobMounting": "disabled"}"#);
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.json()["blobMounting"]["source"], "runtime");
    // The next mount is refused (with or without from); the earlier one keeps serving.
    let r = c.mount("late", &d, Some("a"));
    assert_fallback_upload(&c, &r, "late", &data);
    assert_eq!(c.mount("late2", &d, None).status, 202);
    assert_eq!(c.get(&blob_path("early", &d)).body, data);
    assert_eq!(stats(&c)["mounts"]["refused"]["disabled"], 2);

    // Bad changes are refused and change nothing.
    for bad in [
        r#"{"blobMounting": "maybe"}"#,
        r#"{"blobMounting": true}"#,
        r#"{"blobMountin": "enabled"}"#,
        r#"{"automaticMount": "enabled", "blobMounting": 1}"#,
        "[]",
        "not json",
    ] {
        let r = set(&c, bad);
        assert_eq!(r.status, 400, "{bad}: {r:?}");
        assert!(!r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .is_empty());
    }
    let now = c.get("/admin/settings").json();
    assert_eq!(now["blobMounting"]["value"], "disabled");
    assert_eq!(now["automaticMount"]["source"], "config");

    // A runtime change outlives a restart, and the log says it overrides the file.
    reg.restart();
    let c = reg.client();
    assert_eq!(c.mount("after-restart", &d, Some("a")).status, 202);
    wait_log(&reg, "overriding the config file");
    assert_eq!(c.get(&blob_path("early", &d)).body, data);

    // Re-enable by returning to the config file's value.
    let r = set(&c, r#"{"blobMounting": null}"#);
    assert_eq!(r.json()["blobMounting"]["source"], "config");
    assert_eq!(c.mount("again", &d, Some("a")).status, 201);
}

/// A port nothing listens on (bound, then released).
fn outpost(args: &[&str]) -> (bool, String, String) {
    let out = common::outpost().args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn settings_cli_online_and_offline() {
    let dir = TempDir::new("mount-cli");
    let mut reg = Registry::start(dir.path());
    let c = reg.client();
    let server = format!("http://{}", reg.addr);
    let data = bytes(9, 9000);
    let (d, _) = c.push_blob("a", &data);
    // Another registry, named as the listen address below: it must never be taken for the
    // one serving (or having served) `dir`.
    let other_dir = TempDir::new("mount-cli-other");
    let other = Registry::start(other_dir.path());
    let other_listen = other.addr.to_string();
    let data_dir = dir.path().to_str().unwrap();

    let (ok, out, err) = outpost(&["settings", "--server", &server]);
    assert!(ok, "{err}");
    assert!(
        out.contains("blobMounting") && out.contains("enabled"),
        "{out}"
    );

    let (ok, out, err) = outpost(&["settings", "--server", &server, "blobMounting=disabled"]);
    assert!(ok, "{err}");
    assert!(out.contains("disabled  (set at runtime"), "{out}");
    assert_eq!(c.mount("b", &d, Some("a")).status, 202);

    // Operator mistakes get a message that says what to fix; nothing changes.
    let (ok, _, err) = outpost(&["settings", "--server", &server, "blobMounting=off"]);
    assert!(!ok && err.contains("neither enabled nor disabled"), "{err}");
    let (ok, _, err) = outpost(&["settings", "--server", &server, "blobMounting"]);
    assert!(!ok && err.contains("NAME=VALUE"), "{err}");
    let (ok, _, err) = outpost(&["settings", "--workers", "3", "--data-dir", data_dir]);
    assert!(!ok && err.contains("not an option of settings"), "{err}");
    assert_eq!(
        c.get("/admin/settings").json()["blobMounting"]["value"],
        "disabled"
    );

    // Without --server: the registry serving the data directory, through its admin socket.
    let beside_other = |change| {
        outpost(&[
            "settings",
            "--listen",
            &other_listen,
            "--data-dir",
            data_dir,
            change,
        ])
    };
    let (ok, out, err) = beside_other("automaticMount=disabled");
    assert!(ok, "{err}");
    assert!(out.contains("automaticMount   disabled"), "{out}");
    assert_eq!(
        c.get("/admin/settings").json()["automaticMount"]["value"],
        "disabled"
    );

    // Stopped registry: the CLI changes its store directly (the next start uses it), not
    // the registry answering at the listen address.
    assert!(reg.terminate().success());
    let (ok, out, err) = beside_other("blobMounting=enabled");
    assert!(ok, "{err}");
    assert!(err.contains("changed it directly"), "{err}");
    assert!(out.contains("enabled   (set at runtime"), "{out}");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    assert_eq!(c.mount("b", &d, Some("a")).status, 201);

    // No store there: said plainly, nothing created, whatever answers at the listen address.
    let empty = TempDir::new("mount-cli-none");
    let (ok, _, err) = outpost(&[
        "settings",
        "--listen",
        &other_listen,
        "--data-dir",
        empty.path().to_str().unwrap(),
    ]);
    assert!(!ok && err.contains("no store at"), "{err}");
    assert!(!empty.path().join("outpost.redb").exists());

    assert_eq!(
        other.requests(),
        Vec::<String>::new(),
        "the other registry was reached"
    );
    let s = other.client().get("/admin/settings").json();
    assert_eq!(s["blobMounting"]["source"], "config", "{s}");
    assert_eq!(s["automaticMount"]["source"], "config", "{s}");
}

#[test]
fn settings_cli_without_an_admin_socket_acts_only_on_the_server_named() {
    // A data directory path too long for a Unix socket: the registry serves without one.
    let dir = TempDir::new("mount-no-socket");
    let data = dir.path().join("d".repeat(100));
    let reg = Registry::start(&data);
    assert!(
        reg.log_text().contains("no admin socket"),
        "{}",
        reg.log_text()
    );
    let data_s = data.to_str().unwrap();
    // Whatever answers at the listen address cannot be told to serve this store: nothing is
    // done there, and the message says what to give.
    let listen = reg.addr.to_string();
    for l in ["127.0.0.1:0", listen.as_str()] {
        let (ok, _, err) = outpost(&[
            "settings",
            "--data-dir",
            data_s,
            "--listen",
            l,
            "blobMounting=disabled",
        ]);
        assert!(
            !ok && err.contains("in use") && err.contains("--server"),
            "{err}"
        );
    }
    assert_eq!(
        reg.requests(),
        Vec::<String>::new(),
        "the registry was reached"
    );
    // Named with --server: that registry, over HTTP.
    let (ok, out, err) = outpost(&["settings", "--server", &listen, "blobMounting=disabled"]);
    assert!(ok, "{err}");
    assert!(
        err.contains(&format!("using the registry at http://{listen}")),
        "{err}"
    );
    assert!(out.contains("disabled  (set at runtime"), "{out}");
    assert_eq!(
        reg.client().get("/admin/settings").json()["blobMounting"]["value"],
        "disabled"
    );
}

#[test]
fn config_file_switch_and_refusal_of_bad_values() {
    let dir = TempDir::new("mount-config");
    let cfg = dir.path().join("config.json");
    std::fs::write(&cfg, r#"{"blobMounting": "disabled"}"#).unwrap();
    let reg = Registry::start_with(dir.path(), &["--config", cfg.to_str().unwrap()]);
    let c = reg.client();
    let (d, _) = c.push_blob("a", b"content");
    assert_eq!(c.mount("b", &d, Some("a")).status, 202);
    assert_eq!(
        c.get("/admin/settings").json()["blobMounting"]["configFile"],
        "disabled"
    );
    drop(reg);

    // A free port and this test's directory, were they to start after all.
    let own = [
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ];
    std::fs::write(&cfg, r#"{"blobMounting": "on"}"#).unwrap();
    let (ok, _, err) = outpost(&[&["serve", "--config", cfg.to_str().unwrap()][..], &own].concat());
    assert!(!ok && err.contains("blobMounting"), "{err}");
    let (ok, _, err) = outpost(&[&["serve", "--blob-mounting", "yes"][..], &own].concat());
    assert!(!ok && err.contains("--blob-mounting"), "{err}");
}

#[test]
fn concurrent_mounts_and_deletes_never_lose_or_leak_a_blob() {
    let dir = TempDir::new("mount-race");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    let data = bytes(10, 200_000);
    let (d, _) = c.push_blob("origin", &data);
    let rounds = 40;
    std::thread::scope(|s| {
        // Mounters: each mounts into its own repository, checks it serves, deletes it.
        for t in 0..4 {
            let (d, data) = (d.clone(), data.clone());
            s.spawn(move || {
                let repo = format!("mirror-{t}");
                for _ in 0..rounds {
                    let r = c.mount(&repo, &d, None);
                    if r.status == 202 {
                        // The only holder was mid-delete: upload, as a client would.
                        assert_fallback_upload(&c, &r, &repo, &data);
                    } else {
                        assert_eq!(r.status, 201, "{r:?}");
                    }
                    let got = c.get(&blob_path(&repo, &d));
                    assert_eq!(got.status, 200, "lost a linked blob: {got:?}");
                    assert_eq!(sha256(&got.body), d);
                    assert_eq!(c.delete(&blob_path(&repo, &d)).status, 202);
                }
            });
        }
        // The origin deletes and re-pushes the same content meanwhile.
        let (d, data) = (d.clone(), data.clone());
        s.spawn(move || {
            for _ in 0..rounds {
                assert_eq!(c.delete(&blob_path("origin", &d)).status, 202);
                let (_, r) = c.push_blob("origin", &data);
                assert_eq!(r.status, 201, "{r:?}");
            }
        });
    });
    assert_eq!(c.get("/admin/check").status, 200);
    // Only the origin holds it now: exactly one copy.
    assert_eq!(c.stored_blobs(), (1, 200_000));
    assert_eq!(stats(&c)["store"]["links"], 1);
    assert_eq!(c.get(&blob_path("origin", &d)).body, data);
    // The last link goes: nothing is left that nothing links.
    assert_eq!(c.delete(&blob_path("origin", &d)).status, 202);
    assert_eq!(c.stored_blobs(), (0, 0));
}

#[test]
fn a_mount_is_durable_within_a_second_even_if_the_registry_is_killed() {
    let dir = TempDir::new("mount-kill");
    let mut reg = Registry::start(dir.path());
    let c = reg.client();
    let data = bytes(11, 50_000);
    let (d, _) = c.push_blob("a", &data);
    assert_eq!(c.mount("b", &d, Some("a")).status, 201);
    // Nothing durable follows the mount; the store's flush makes it durable.
    std::thread::sleep(std::time::Duration::from_secs(3));
    reg.kill();
    let reg = Registry::start(dir.path());
    let c = reg.client();
    assert_eq!(c.get(&blob_path("b", &d)).body, data);
    assert_eq!(c.get("/admin/check").status, 200);
}
