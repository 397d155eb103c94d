//! Defects found by hostile testing (issue 16), each through the real binary: stored fields
//! that reach headers, fields too long for their record, references that name nothing.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

fn start() -> (TempDir, Registry, Client) {
    let dir = TempDir::new("hostile");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    (dir, reg, c)
}

/// An image manifest (config and one layer pushed to `repo`) declaring `media_type`.
fn manifest_declaring(c: &Client, repo: &str, media_type: &str) -> Vec<u8> {
    let m = push_image(c, repo, 7, 1);
    let mut v: serde_json::Value = serde_json::from_slice(&m).unwrap();
    v["mediaType"] = media_type.into();
    serde_json::to_vec(&v).unwrap()
}

/// The raw head of a response to `GET path` (everything up to the blank line).
fn raw_head(c: &Client, path: &str) -> String {
    let mut s = TcpStream::connect(c.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return head;
        }
        head.push_str(&line);
    }
}

#[test]
fn a_media_type_with_a_line_break_is_refused_and_never_becomes_a_header() {
    let (_d, reg, c) = start();
    let evil = format!("{OCI_MANIFEST}\r\nX-Injected: yes\r\nContent-Length: 0");
    for content_type in ["application/json", ""] {
        let body = manifest_declaring(&c, "split/x", &evil);
        let digest = sha256(&body);
        let headers: &[(&str, &str)] = if content_type.is_empty() {
            &[]
        } else {
            &[("Content-Type", content_type)]
        };
        let r = c.req(
            "PUT",
            "/v2/split/x/manifests/v1",
            headers,
            Body::Bytes(&body),
        );
        assert_eq!(
            (r.status, r.code()),
            (400, "MANIFEST_INVALID".into()),
            "{r:?}"
        );
        let msg = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            msg.contains("mediaType") && msg.contains("RFC 6838"),
            "{msg}"
        );
        let head = raw_head(&c, &format!("/v2/split/x/manifests/{digest}"));
        assert!(head.starts_with("HTTP/1.1 404"), "{head}");
        assert!(!head.contains("X-Injected"), "{head}");
    }
    // Media types that are not RFC 6838 names, from the header or the document, and an
    // artifactType with a control character.
    let body = manifest_declaring(&c, "split/x", OCI_MANIFEST);
    for ct in [
        "application/vnd.oci.image.manifest.v1+json/x",
        "text",
        "a/b c",
    ] {
        let r = c.put_manifest("split/x", "v2", ct, &body);
        assert_eq!(
            (r.status, r.code()),
            (400, "MANIFEST_INVALID".into()),
            "{ct}: {r:?}"
        );
    }
    let mut v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    v["artifactType"] = "application/x\u{7}".into();
    let r = c.put_manifest(
        "split/x",
        "v3",
        OCI_MANIFEST,
        &serde_json::to_vec(&v).unwrap(),
    );
    assert_eq!(
        (r.status, r.code()),
        (400, "MANIFEST_INVALID".into()),
        "{r:?}"
    );
    // The same manifest with a proper media type is served with it.
    let r = c.put_manifest("split/x", "v1", OCI_MANIFEST, &body);
    assert_eq!(r.status, 201, "{r:?}");
    let head = raw_head(&c, "/v2/split/x/manifests/v1");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.contains(&format!("Content-Type: {OCI_MANIFEST}\r\n")),
        "{head}"
    );
    drop(reg);
}

#[test]
fn a_media_type_longer_than_its_record_field_is_refused_and_nothing_is_corrupted() {
    let (_d, reg, c) = start();
    for len in [70_000, 65_536, 300] {
        let long = format!("application/{}", "x".repeat(len));
        let body = manifest_declaring(&c, "long/x", &long);
        let digest = sha256(&body);
        let r = c.put_manifest("long/x", "v1", "application/json", &body);
        assert_eq!(
            (r.status, r.code()),
            (400, "MANIFEST_INVALID".into()),
            "{len}: {r:?}"
        );
        assert_eq!(c.get(&format!("/v2/long/x/manifests/{digest}")).status, 404);
    }
    // A manifest stored right is served byte for byte, and the check decodes and hashes it.
    let body = manifest_declaring(&c, "long/x", OCI_MANIFEST);
    assert_eq!(
        c.put_manifest("long/x", "v1", OCI_MANIFEST, &body).status,
        201
    );
    let r = c.get("/v2/long/x/manifests/v1");
    assert_eq!((r.status, r.body), (200, body));
    let check = c.get("/admin/check");
    assert_eq!(check.status, 200, "{check:?}");
    assert_eq!(check.json()["problems"], serde_json::json!([]), "{check:?}");
    drop(reg);
}

#[test]
fn a_reference_that_is_neither_tag_nor_digest_is_not_found_on_get_and_invalid_on_put() {
    let (_d, reg, c) = start();
    let body = push_image(&c, "refs/x", 3, 1);
    assert_eq!(
        c.put_manifest("refs/x", "v1", OCI_MANIFEST, &body).status,
        201
    );
    for reference in ["bad!tag", "-lead", "sha256:abc", "md5:00", &"t".repeat(129)] {
        let path = format!("/v2/refs/x/manifests/{reference}");
        let r = c.get(&path);
        assert_eq!(
            (r.status, r.code()),
            (404, "MANIFEST_UNKNOWN".into()),
            "{path}"
        );
        assert_eq!(c.head(&path).status, 404, "HEAD {path}");
        let r = c.put_manifest("refs/x", reference, OCI_MANIFEST, &body);
        assert_eq!(r.status, 400, "PUT {path}: {r:?}");
    }
    drop(reg);
}

#[test]
fn the_store_is_private_whatever_the_umask() {
    // SAFETY: umask only sets this process's file creation mask (inherited by the registry).
    unsafe { libc::umask(0o022) };
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new("modes");
    let data = dir.path().join("data");
    let mut reg = Registry::start(&data);
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("outpost.redb")), 0o600);
    assert!(
        !reg.log_text().contains("other users"),
        "{}",
        reg.log_text()
    );
    // A store made readable by others is served, with a warning that says what to do.
    reg.terminate();
    for (p, m) in [(data.clone(), 0o755), (data.join("outpost.redb"), 0o644)] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(m)).unwrap();
    }
    let reg = Registry::start(&data);
    let log = reg.log_text();
    assert!(
        log.contains("mode 755") && log.contains("chmod 700"),
        "{log}"
    );
    assert!(
        log.contains("mode 644") && log.contains("chmod 600"),
        "{log}"
    );
}

#[test]
fn a_session_repeating_a_stored_blob_keeps_its_progress_over_a_graceful_restart() {
    let (_d, mut reg, c) = start();
    let data = bytes(91, 2 << 20);
    let (digest, r) = c.push_blob("again/x", &data);
    assert_eq!(r.status, 201);
    let loc = c.start_upload("again/y");
    let r = c.req(
        "PATCH",
        &loc,
        &[("Content-Range", "0-2097151")],
        Body::Bytes(&data),
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.header("Range"), Some("0-2097151"));
    reg.restart();
    let c = reg.client();
    let r = c.get(&loc);
    assert_eq!(
        (r.status, r.header("Range")),
        (204, Some("0-2097151")),
        "{r:?}"
    );
    // The client finishes from its own offset.
    let r = c.req("PUT", &format!("{loc}?digest={digest}"), &[], Body::None);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(c.get(&format!("/v2/again/y/blobs/{digest}")).body, data);
}

#[test]
fn numbers_from_requests_never_wrap() {
    let (_d, reg, c) = start();
    let loc = c.start_upload("nums/x");
    for range in [
        "0-18446744073709551615",
        "0-18446744073709551616",
        "18446744073709551615-0",
        "5-4",
    ] {
        let r = c.req("PATCH", &loc, &[("Content-Range", range)], Body::Bytes(b""));
        assert_eq!(r.status, 400, "{range}: {r:?}");
        assert_eq!(r.code(), "BLOB_UPLOAD_INVALID", "{range}");
    }
    // The session is where it was.
    assert_eq!(c.get(&loc).header("Range"), Some("0-0"));
    let (digest, r) = c.push_blob("nums/x", b"twelve bytes");
    assert_eq!(r.status, 201);
    let blob = format!("/v2/nums/x/blobs/{digest}");
    for range in [
        "bytes=0-18446744073709551615",
        "bytes=18446744073709551615-",
        "bytes=-18446744073709551615",
        "bytes=99999999999999999999-",
    ] {
        let r = c.req("GET", &blob, &[("Range", range)], Body::None);
        assert!(matches!(r.status, 200 | 206 | 416), "{range}: {r:?}");
        if r.status == 206 {
            assert!(b"twelve bytes".ends_with(&r.body) || b"twelve bytes".starts_with(&r.body));
        }
    }
    for q in ["n=18446744073709551616", "n=-1", "n=1e3"] {
        assert_eq!(
            c.get(&format!("/v2/nums/x/tags/list?{q}")).status,
            400,
            "{q}"
        );
    }
    assert!(!reg.log_text().contains("panicked"), "{}", reg.log_text());
}

#[test]
fn a_command_acts_on_the_registry_it_names_and_says_which() {
    let dir = TempDir::new("cli-names");
    let (data_a, data_b, data_c) = (
        dir.path().join("a"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let a = Registry::start(&data_a);
    let b = Registry::start(&data_b);
    let body = push_image(&a.client(), "site/app", 5, 1);
    assert_eq!(
        a.client()
            .put_manifest("site/app", "v1", OCI_MANIFEST, &body)
            .status,
        201
    );
    // A config whose listen address is registry b: the data directory still decides.
    let cfg = dir.path().join("outpost.json");
    let listen = b.addr.to_string();
    std::fs::write(
        &cfg,
        serde_json::json!({ "listen": listen, "dataDir": data_a }).to_string(),
    )
    .unwrap();
    let run = |args: &[&str], stdin: &str| {
        let mut all = args.to_vec();
        all.extend(["--config", cfg.to_str().unwrap()]);
        outpost_stdin(&all, stdin)
    };
    let c = data_c.to_str().unwrap();
    let out = run(&["user", "add", "zed", "--data-dir", c], "zed-password-1\n");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("using the store {c}/outpost.redb")),
        "{}",
        text(&out)
    );
    for (data, has) in [(&data_a, false), (&data_b, false), (&data_c, true)] {
        let out = run(&["user", "list", "--data-dir", data.to_str().unwrap()], "");
        assert!(out.status.success(), "{}", text(&out));
        assert_eq!(
            text(&out).contains("zed"),
            has,
            "{}: {}",
            data.display(),
            text(&out)
        );
    }
    // An export from the registry serving a's store goes to a's HTTP API (it says where it
    // listens through its admin socket), never to whatever the config's listen names.
    let tar = dir.path().join("app.tar");
    let out = run(&["export", "site/app:v1", "-o", tar.to_str().unwrap()], "");
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("using the registry serving"),
        "{}",
        text(&out)
    );
    assert!(std::fs::metadata(&tar).unwrap().len() > body.len() as u64);
    // Every connection error names the address.
    for args in [
        &["settings", "--server", "127.0.0.1:1"][..],
        &[
            "export",
            "site/app:v1",
            "-o",
            "x.tar",
            "--server",
            "127.0.0.1:1",
        ],
        &["user", "list", "--server", "http://127.0.0.1:1"],
    ] {
        let out = run(args, "");
        assert!(!out.status.success(), "{args:?}");
        assert!(
            text(&out).contains("127.0.0.1:1"),
            "{args:?}: {}",
            text(&out)
        );
    }
    drop((a, b));
}

#[test]
fn a_rotten_manifest_is_never_served_and_the_check_names_it() {
    let (dir, mut reg, c) = start();
    let body = push_image(&c, "rot/x", 8, 1);
    let digest = sha256(&body);
    assert_eq!(
        c.put_manifest("rot/x", "v1", OCI_MANIFEST, &body).status,
        201
    );
    reg.terminate();
    // One bit of the stored body flips on the card (a plaintext record: nothing seals it).
    use redb::ReadableTable;
    let db = redb::Database::create(dir.path().join("outpost.redb")).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let def: redb::TableDefinition<(u64, &str), &[u8]> =
            redb::TableDefinition::new("manifests");
        let mut t = tx.open_table(def).unwrap();
        let key = t
            .iter()
            .unwrap()
            .map(|r| r.unwrap().0.value().0)
            .next()
            .unwrap();
        let mut v = t
            .get((key, digest.as_str()))
            .unwrap()
            .unwrap()
            .value()
            .to_vec();
        let last = v.len() - 2;
        v[last] ^= 0x20;
        t.insert((key, digest.as_str()), v.as_slice()).unwrap();
    }
    tx.commit().unwrap();
    drop(db);
    let reg = Registry::start(dir.path());
    let c = reg.client();
    for path in [
        "/v2/rot/x/manifests/v1".to_owned(),
        format!("/v2/rot/x/manifests/{digest}"),
    ] {
        let r = c.get(&path);
        assert_eq!(r.status, 500, "{path}: {r:?}");
        assert_ne!(r.body, body);
    }
    let check = c.get("/admin/check");
    assert_eq!(check.status, 500);
    assert!(
        check.json()["problems"].to_string().contains(&digest),
        "{check:?}"
    );
    assert!(reg.log_with("integrity").contains(&digest));
}
