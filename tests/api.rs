//! The OCI distribution API over real HTTP against the real binary.

mod common;
use common::*;

fn start() -> (TempDir, Registry, Client) {
    let dir = TempDir::new("api");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    (dir, reg, c)
}

#[test]
fn base_endpoint_announces_api_version() {
    let (_d, _r, c) = start();
    let r = c.get("/v2/");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("Docker-Distribution-API-Version"),
        Some("registry/2.0")
    );
    assert_eq!(c.head("/v2/").status, 200);
    let r = c.get("/v3/");
    assert_eq!(r.status, 404);
    assert!(!r.code().is_empty());
}

#[test]
fn monolithic_upload_then_head_get_delete() {
    let (_d, _r, c) = start();
    let data = bytes(1, 3 << 20);
    let (digest, r) = c.push_blob("lib/app", &data);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        r.header("Location"),
        Some(format!("/v2/lib/app/blobs/{digest}").as_str())
    );
    assert_eq!(r.header("Docker-Content-Digest"), Some(digest.as_str()));

    let h = c.head(&format!("/v2/lib/app/blobs/{digest}"));
    assert_eq!(h.status, 200);
    assert_eq!(
        h.header("Content-Length"),
        Some(data.len().to_string().as_str())
    );
    assert_eq!(h.header("Docker-Content-Digest"), Some(digest.as_str()));
    assert!(h.body.is_empty());

    let g = c.get(&format!("/v2/lib/app/blobs/{digest}"));
    assert_eq!(g.status, 200);
    assert_eq!(sha256(&g.body), digest);

    // POST ?digest= with no body is the empty blob.
    let (empty, r) = c.push_blob("lib/app", b"");
    assert_eq!(r.status, 201);
    assert_eq!(c.get(&format!("/v2/lib/app/blobs/{empty}")).body.len(), 0);

    let del = c.delete(&format!("/v2/lib/app/blobs/{digest}"));
    assert_eq!(del.status, 202);
    let h = c.head(&format!("/v2/lib/app/blobs/{digest}"));
    assert_eq!(h.status, 404);
    let g = c.get(&format!("/v2/lib/app/blobs/{digest}"));
    assert_eq!(g.code(), "BLOB_UNKNOWN");
    assert_eq!(c.delete(&format!("/v2/lib/app/blobs/{digest}")).status, 404);
}

#[test]
fn blob_is_visible_only_in_repositories_that_hold_it() {
    let (_d, _r, c) = start();
    let data = bytes(2, 5000);
    let (digest, r) = c.push_blob("one", &data);
    assert_eq!(r.status, 201);
    c.push_blob("two", b"something else");
    // Stored, but never pushed to "two": a HEAD there must not claim it (clients would skip
    // the upload and then fail the manifest).
    assert_eq!(c.head(&format!("/v2/two/blobs/{digest}")).status, 404);
    assert_eq!(
        c.get(&format!("/v2/nothere/blobs/{digest}")).code(),
        "NAME_UNKNOWN"
    );
    // Deleting from one repository leaves the other's copy intact (content is shared).
    let (_, r) = c.push_blob("two", &data);
    assert_eq!(r.status, 201);
    assert_eq!(c.delete(&format!("/v2/one/blobs/{digest}")).status, 202);
    let g = c.get(&format!("/v2/two/blobs/{digest}"));
    assert_eq!((g.status, sha256(&g.body)), (200, digest));
}

#[test]
fn chunked_upload_with_status_out_of_order_and_final_chunk() {
    let (_d, _r, c) = start();
    let data = bytes(3, 300_000);
    let digest = sha256(&data);
    let r = c.req("POST", "/v2/chunky/blobs/uploads/", &[], Body::None);
    assert_eq!(r.status, 202);
    assert_eq!(r.header("Range"), Some("0-0"));
    assert!(r.header("OCI-Chunk-Min-Length").is_some());
    let id = r.header("Docker-Upload-UUID").unwrap().to_owned();
    let loc = r.header("Location").unwrap().to_owned();
    assert!(loc.ends_with(&id));

    let patch = |from: usize, to: usize| {
        let cr = format!("{from}-{}", to - 1);
        c.req(
            "PATCH",
            &loc,
            &[
                ("Content-Range", &cr),
                ("Content-Type", "application/octet-stream"),
            ],
            Body::Bytes(&data[from..to]),
        )
    };
    let r = patch(0, 100_000);
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.header("Range"), Some("0-99999"));
    // Out of order (a gap) and repeated chunks are refused with where the upload stands.
    for (a, b) in [(150_000, 200_000), (0, 100_000), (50_000, 150_000)] {
        let r = patch(a, b);
        assert_eq!(r.status, 416, "{a}-{b}");
        assert_eq!(r.header("Range"), Some("0-99999"));
        assert_eq!(r.code(), "RANGE_INVALID");
    }
    // Content-Length disagreeing with Content-Range.
    let r = c.req(
        "PATCH",
        &loc,
        &[("Content-Range", "100000-100009")],
        Body::Bytes(&data[100_000..100_005]),
    );
    assert_eq!(r.status, 400);
    assert_eq!(patch(100_000, 250_000).status, 202);
    let s = c.get(&loc);
    assert_eq!(s.status, 204);
    assert_eq!(s.header("Range"), Some("0-249999"));
    assert_eq!(s.header("Docker-Upload-UUID"), Some(id.as_str()));

    // Final chunk with the PUT.
    let r = c.req(
        "PUT",
        &format!("{loc}?digest={digest}"),
        &[("Content-Range", "250000-299999")],
        Body::Bytes(&data[250_000..]),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        sha256(&c.get(&format!("/v2/chunky/blobs/{digest}")).body),
        digest
    );
    // The session is gone once finished.
    assert_eq!(c.get(&loc).code(), "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn streamed_upload_with_chunked_transfer_encoding() {
    let (_d, _r, c) = start();
    let data = bytes(4, 2_500_000);
    let digest = sha256(&data);
    let loc = c.start_upload("stream");
    let parts: Vec<&[u8]> = data[..2_000_000].chunks(77_777).collect();
    let r = c.req("PATCH", &loc, &[], Body::Chunked(parts));
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.header("Range"), Some("0-1999999"));
    // Another streamed PATCH continues where the first ended.
    let r = c.req("PATCH", &loc, &[], Body::Bytes(&data[2_000_000..]));
    assert_eq!(r.header("Range"), Some("0-2499999"));
    let r = c.req("PUT", &format!("{loc}?digest={digest}"), &[], Body::None);
    assert_eq!(r.status, 201);
    assert_eq!(
        sha256(&c.get(&format!("/v2/stream/blobs/{digest}")).body),
        digest
    );
}

#[test]
fn cancel_and_bad_upload_ids() {
    let (_d, _r, c) = start();
    let loc = c.start_upload("x");
    c.req("PATCH", &loc, &[], Body::Bytes(b"abc"));
    assert_eq!(c.delete(&loc).status, 204);
    assert_eq!(c.get(&loc).code(), "BLOB_UPLOAD_UNKNOWN");
    assert_eq!(c.req("PATCH", &loc, &[], Body::Bytes(b"abc")).status, 404);
    for bad in [
        "/v2/x/blobs/uploads/nope",
        "/v2/x/blobs/uploads/..%2F..%2Fetc",
        "/v2/x/blobs/uploads/00000000000000000000000000000000",
    ] {
        assert_eq!(c.get(bad).code(), "BLOB_UPLOAD_UNKNOWN", "{bad}");
    }
    // A session belongs to its repository.
    let loc = c.start_upload("x");
    let other = loc.replace("/v2/x/", "/v2/y/");
    assert_eq!(c.get(&other).code(), "BLOB_UPLOAD_UNKNOWN");
}

#[test]
fn digest_mismatch_commits_nothing() {
    let (_d, _r, c) = start();
    let data = bytes(5, 10_000);
    let wrong = sha256(b"not this");
    let r = c.req(
        "POST",
        &format!("/v2/m/blobs/uploads/?digest={wrong}"),
        &[],
        Body::Bytes(&data),
    );
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".to_owned()));
    assert_eq!(c.head(&format!("/v2/m/blobs/{wrong}")).status, 404);
    assert_eq!(
        c.head(&format!("/v2/m/blobs/{}", sha256(&data))).status,
        404
    );

    let loc = c.start_upload("m");
    c.req("PATCH", &loc, &[], Body::Bytes(&data));
    let r = c.req("PUT", &format!("{loc}?digest={wrong}"), &[], Body::None);
    assert_eq!(r.code(), "DIGEST_INVALID");
    assert_eq!(
        c.get(&loc).status,
        404,
        "a failed finish discards the upload"
    );
    assert_eq!(
        c.head(&format!("/v2/m/blobs/{}", sha256(&data))).status,
        404
    );
    // A PUT without ?digest= is refused, and the session stays usable.
    let loc = c.start_upload("m");
    assert_eq!(c.req("PUT", &loc, &[], Body::None).code(), "DIGEST_INVALID");
    assert_eq!(c.get(&loc).status, 204);
}

#[test]
fn sha512_digests_are_supported() {
    let (_d, _r, c) = start();
    use sha2::Digest as _;
    let data = bytes(6, 4096);
    let d = format!(
        "sha512:{}",
        sha2::Sha512::digest(&data)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let r = c.req(
        "POST",
        &format!("/v2/s/blobs/uploads/?digest={d}"),
        &[],
        Body::Bytes(&data),
    );
    assert_eq!(r.status, 201, "{r:?}");
    let g = c.get(&format!("/v2/s/blobs/{d}"));
    assert_eq!(g.body, data);
}

#[test]
fn malformed_digests_and_names_get_oci_errors_never_500() {
    let (_d, reg, c) = start();
    let bad_digests = [
        "sha256:abc",
        "sha256:ZZ",
        "md5:d41d8cd98f00b204e9800998ecf8427e",
        "sha256",
        ":",
        "sha256:%2e%2e%2f",
    ];
    for d in bad_digests {
        for (m, p) in [
            ("GET", format!("/v2/r/blobs/{d}")),
            ("HEAD", format!("/v2/r/blobs/{d}")),
            ("DELETE", format!("/v2/r/blobs/{d}")),
            ("GET", format!("/v2/r/manifests/{d}")),
            ("GET", format!("/v2/r/referrers/{d}")),
            ("POST", format!("/v2/r/blobs/uploads/?digest={d}")),
        ] {
            if !d.contains(':') && p.contains("/manifests/") {
                continue; // without a colon it is a (valid) tag
            }
            let r = c.req(m, &p, &[], Body::None);
            if p.contains("/manifests/") {
                // Names no manifest: 404, as the spec requires of a GET.
                assert_eq!(r.status, 404, "{m} {p}");
                assert_eq!(r.code(), "MANIFEST_UNKNOWN", "{m} {p}");
                continue;
            }
            assert_eq!(r.status, 400, "{m} {p}");
            if m != "HEAD" {
                assert_eq!(r.code(), "DIGEST_INVALID", "{m} {p}");
            }
        }
    }
    let long = format!("/v2/{}/tags/list", "a".repeat(256));
    for p in [
        "/v2/UPPER/tags/list",
        "/v2/a..b/tags/list",
        "/v2/-a/tags/list",
        "/v2/a//b/tags/list",
        "/v2/a/../b/tags/list",
        long.as_str(),
    ] {
        let r = c.get(p);
        assert_eq!(
            (r.status, r.code()),
            (400, "NAME_INVALID".to_owned()),
            "{p}"
        );
    }
    assert_eq!(c.get("/v2/unknown/repo/tags/list").code(), "NAME_UNKNOWN");
    assert_eq!(c.get("/v2/unknown/manifests/latest").code(), "NAME_UNKNOWN");
    assert_eq!(c.get("/v2/r/manifests/bad!tag").code(), "MANIFEST_UNKNOWN");
    assert_eq!(c.req("PATCH", "/v2/", &[], Body::None).status, 405);
    assert!(!reg.log_text().contains(" 500 "), "{}", reg.log_text());
}

#[test]
fn range_reads() {
    let (_d, _r, c) = start();
    let data = bytes(7, 2_500_000);
    // Small chunks so ranges cross chunk boundaries.
    let (digest, _) = c.push_blob("rg", &data);
    let path = format!("/v2/rg/blobs/{digest}");
    let get = |range: &str| c.req("GET", &path, &[("Range", range)], Body::None);
    let cases: [(&str, usize, usize); 5] = [
        ("bytes=0-99", 0, 100),
        ("bytes=1048570-1048600", 1_048_570, 31),
        ("bytes=2400000-", 2_400_000, 100_000),
        ("bytes=-1000", 2_499_000, 1000),
        ("bytes=2499990-9999999", 2_499_990, 10),
    ];
    for (range, start, len) in cases {
        let r = get(range);
        assert_eq!(r.status, 206, "{range}");
        assert_eq!(r.body, &data[start..start + len], "{range}");
        assert_eq!(
            r.header("Content-Range"),
            Some(format!("bytes {start}-{}/{}", start + len - 1, data.len()).as_str())
        );
    }
    let r = get("bytes=2500000-");
    assert_eq!(r.status, 416);
    assert_eq!(r.header("Content-Range"), Some("bytes */2500000"));
    assert_eq!(r.code(), "RANGE_INVALID");
    // Unparseable ranges are ignored (RFC 9110): the whole blob.
    let r = get("bytes=9-2");
    assert_eq!((r.status, r.body.len()), (200, data.len()));
}

#[test]
fn concurrent_uploads_of_the_same_blob_to_two_repositories() {
    let (_d, _r, c) = start();
    let data = std::sync::Arc::new(bytes(8, 6_000_000));
    let threads: Vec<_> = (0..4)
        .map(|i| {
            let data = data.clone();
            std::thread::spawn(move || {
                let repo = if i % 2 == 0 { "left" } else { "right" };
                let (d, r) = c.push_blob(repo, &data);
                assert_eq!(r.status, 201, "{r:?}");
                d
            })
        })
        .collect();
    let digests: Vec<String> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    for repo in ["left", "right"] {
        let g = c.get(&format!("/v2/{repo}/blobs/{}", digests[0]));
        assert_eq!(sha256(&g.body), digests[0]);
    }
    // Unlink from both: the content is gone only after the last link.
    c.delete(&format!("/v2/left/blobs/{}", digests[0]));
    assert_eq!(
        c.head(&format!("/v2/right/blobs/{}", digests[0])).status,
        200
    );
}

#[test]
fn manifests_by_tag_and_digest_with_validation() {
    let (_d, _r, c) = start();
    let m = push_image(&c, "app", 1, 3);
    let digest = sha256(&m);
    let r = c.put_manifest("app", "v1", OCI_MANIFEST, &m);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(r.header("Docker-Content-Digest"), Some(digest.as_str()));
    assert_eq!(
        r.header("Location"),
        Some(format!("/v2/app/manifests/{digest}").as_str())
    );
    for reference in ["v1", digest.as_str()] {
        let g = c.get(&format!("/v2/app/manifests/{reference}"));
        assert_eq!(g.status, 200);
        assert_eq!(g.body, m);
        assert_eq!(g.header("Content-Type"), Some(OCI_MANIFEST));
        assert_eq!(g.header("Docker-Content-Digest"), Some(digest.as_str()));
        let h = c.head(&format!("/v2/app/manifests/{reference}"));
        assert_eq!(h.status, 200);
        assert_eq!(
            h.header("Content-Length"),
            Some(m.len().to_string().as_str())
        );
    }
    // By digest must match the content.
    let r = c.put_manifest("app", &sha256(b"other"), OCI_MANIFEST, &m);
    assert_eq!(r.code(), "DIGEST_INVALID");
    // References blobs the repository lacks.
    let missing = image_manifest((&sha256(b"nope"), 4), &[], "");
    let r = c.put_manifest("app", "v2", OCI_MANIFEST, &missing);
    assert_eq!(
        (r.status, r.code()),
        (400, "MANIFEST_BLOB_UNKNOWN".to_owned())
    );
    let r = c.put_manifest("elsewhere", "v1", OCI_MANIFEST, &m);
    assert_eq!(
        r.code(),
        "MANIFEST_BLOB_UNKNOWN",
        "blobs of another repository do not count"
    );
    // Bad documents.
    assert_eq!(
        c.put_manifest("app", "bad", OCI_MANIFEST, b"{not json")
            .code(),
        "MANIFEST_INVALID"
    );
    assert_eq!(
        c.put_manifest("app", "bad", OCI_MANIFEST, br#"{"schemaVersion":2}"#)
            .code(),
        "MANIFEST_INVALID"
    );
    assert_eq!(
        c.put_manifest("app", "bad!", OCI_MANIFEST, &m).code(),
        "MANIFEST_INVALID"
    );
    let r = c.put_manifest(
        "app",
        "v1",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
        b"{}",
    );
    assert_eq!(r.code(), "UNSUPPORTED");
    assert_eq!(
        c.get("/v2/app/manifests/nosuchtag").code(),
        "MANIFEST_UNKNOWN"
    );
    assert_eq!(
        c.get("/v2/app/manifests/v2").status,
        404,
        "a refused manifest is not stored"
    );
}

#[test]
fn oversize_manifest_is_refused_with_413() {
    let dir = TempDir::new("big");
    let reg = Registry::start_with(dir.path(), &["--max-manifest-size", "4KiB"]);
    let c = reg.client();
    let mut m = push_image(&c, "big", 2, 1);
    assert_eq!(c.put_manifest("big", "ok", OCI_MANIFEST, &m).status, 201);
    let pad = format!(r#","annotations":{{"pad":"{}"}}}}"#, "x".repeat(5000));
    m.truncate(m.len() - 1);
    m.extend_from_slice(pad.as_bytes());
    let r = c.put_manifest("big", "huge", OCI_MANIFEST, &m);
    assert_eq!((r.status, r.code()), (413, "SIZE_INVALID".to_owned()));
    // Streamed (no Content-Length) is capped the same way.
    let r = c.req(
        "PUT",
        "/v2/big/manifests/huge",
        &[("Content-Type", OCI_MANIFEST)],
        Body::Chunked(vec![&m[..]]),
    );
    assert_eq!(r.status, 413);
}

#[test]
fn docker_media_types_and_indexes() {
    let (_d, _r, c) = start();
    let docker_mt = "application/vnd.docker.distribution.manifest.v2+json";
    let m = push_image(&c, "multi", 3, 2);
    let m = String::from_utf8(m)
        .unwrap()
        .replace(OCI_MANIFEST, docker_mt)
        .into_bytes();
    let r = c.put_manifest("multi", "amd64", docker_mt, &m);
    assert_eq!(r.status, 201, "{r:?}");
    let list_mt = "application/vnd.docker.distribution.manifest.list.v2+json";
    let child = sha256(&m);
    let list = format!(
        r#"{{"schemaVersion":2,"mediaType":"{list_mt}","manifests":[{{"mediaType":"{docker_mt}","digest":"{child}","size":{},"platform":{{"architecture":"amd64","os":"linux"}}}}]}}"#,
        m.len()
    );
    let r = c.put_manifest("multi", "latest", list_mt, list.as_bytes());
    assert_eq!(r.status, 201, "{r:?}");
    let g = c.get("/v2/multi/manifests/latest");
    assert_eq!(g.header("Content-Type"), Some(list_mt));
    // An index naming a manifest the repository lacks.
    let bad = format!(
        r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":10}}]}}"#,
        sha256(b"x")
    );
    assert_eq!(
        c.put_manifest("multi", "bad", OCI_INDEX, bad.as_bytes())
            .code(),
        "MANIFEST_BLOB_UNKNOWN"
    );
}

#[test]
fn deletes_and_tag_parameters() {
    let (_d, _r, c) = start();
    let a = push_image(&c, "del", 4, 1);
    let b = push_image(&c, "del", 5, 1);
    let (da, db) = (sha256(&a), sha256(&b));
    assert_eq!(
        c.put_manifest("del", &format!("{da}?tag=a1&tag=a2"), OCI_MANIFEST, &a)
            .status,
        201
    );
    assert_eq!(c.put_manifest("del", "b1", OCI_MANIFEST, &b).status, 201);
    let tags = c.get("/v2/del/tags/list").json();
    assert_eq!(tags["tags"], serde_json::json!(["a1", "a2", "b1"]));
    // Untag only.
    assert_eq!(c.delete("/v2/del/manifests/a1").status, 202);
    assert_eq!(c.get(&format!("/v2/del/manifests/{da}")).status, 200);
    assert_eq!(c.get("/v2/del/manifests/a2").status, 200);
    // By digest: the manifest and its tags go; other tags stay.
    assert_eq!(c.delete(&format!("/v2/del/manifests/{da}")).status, 202);
    assert_eq!(c.get("/v2/del/manifests/a2").code(), "MANIFEST_UNKNOWN");
    assert_eq!(c.get(&format!("/v2/del/manifests/{da}")).status, 404);
    assert_eq!(
        c.get("/v2/del/tags/list").json()["tags"],
        serde_json::json!(["b1"])
    );
    assert_eq!(c.get(&format!("/v2/del/manifests/{db}")).status, 200);
    assert_eq!(c.delete(&format!("/v2/del/manifests/{da}")).status, 404);
}

#[test]
fn referrers_api() {
    let (_d, _r, c) = start();
    let subject = push_image(&c, "ref", 6, 1);
    let sd = sha256(&subject);
    assert_eq!(
        c.put_manifest("ref", "v1", OCI_MANIFEST, &subject).status,
        201
    );
    // Empty, not 404, when nothing refers to it.
    let r = c.get(&format!("/v2/ref/referrers/{sd}"));
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some(OCI_INDEX));
    assert_eq!(r.json()["manifests"], serde_json::json!([]));

    let (empty, _) = c.push_blob("ref", b"{}");
    let sig = |t: &str, n: u32| {
        let extra = format!(
            r#","artifactType":"{t}","subject":{{"mediaType":"{OCI_MANIFEST}","digest":"{sd}","size":{}}},"annotations":{{"n":"{n}"}}"#,
            subject.len()
        );
        image_manifest((&empty, 2), &[], &extra)
    };
    let s1 = sig("application/vnd.example.sig", 1);
    let s2 = sig("application/vnd.example.sbom", 2);
    for s in [&s1, &s2] {
        let r = c.put_manifest("ref", &sha256(s), OCI_MANIFEST, s);
        assert_eq!(r.status, 201, "{r:?}");
        assert_eq!(r.header("OCI-Subject"), Some(sd.as_str()));
    }
    let all = c.get(&format!("/v2/ref/referrers/{sd}")).json();
    assert_eq!(all["manifests"].as_array().unwrap().len(), 2);
    let d1 = all["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["digest"] == sha256(&s1))
        .unwrap()
        .clone();
    assert_eq!(d1["artifactType"], "application/vnd.example.sig");
    assert_eq!(d1["size"], s1.len());
    assert_eq!(d1["annotations"]["n"], "1");
    let r = c.get(&format!(
        "/v2/ref/referrers/{sd}?artifactType=application/vnd.example.sbom"
    ));
    assert_eq!(r.header("OCI-Filters-Applied"), Some("artifactType"));
    let f = r.json();
    assert_eq!(f["manifests"].as_array().unwrap().len(), 1);
    assert_eq!(f["manifests"][0]["digest"], sha256(&s2));
    // Deleting a referrer removes it from the list.
    c.delete(&format!("/v2/ref/manifests/{}", sha256(&s1)));
    let all = c.get(&format!("/v2/ref/referrers/{sd}")).json();
    assert_eq!(all["manifests"].as_array().unwrap().len(), 1);
}

#[test]
fn tags_and_catalog_paginate_in_lexical_order() {
    let (_d, _r, c) = start();
    let m = push_image(&c, "pg/a", 7, 1);
    let d = sha256(&m);
    let tags = ["b", "a", "c10", "c9", "Z", "_x"];
    let q: Vec<String> = tags.iter().map(|t| format!("tag={t}")).collect();
    assert_eq!(
        c.put_manifest("pg/a", &format!("{d}?{}", q.join("&")), OCI_MANIFEST, &m)
            .status,
        201
    );
    let all = c.get("/v2/pg/a/tags/list").json();
    assert_eq!(all["name"], "pg/a");
    assert_eq!(
        all["tags"],
        serde_json::json!(["Z", "_x", "a", "b", "c10", "c9"])
    );
    let mut seen = Vec::new();
    let mut url = "/v2/pg/a/tags/list?n=4".to_owned();
    loop {
        let r = c.get(&url);
        seen.extend(
            r.json()["tags"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_owned()),
        );
        match r.header("Link") {
            Some(l) => {
                url = l
                    .trim_start_matches('<')
                    .split('>')
                    .next()
                    .unwrap()
                    .to_owned()
            }
            None => break,
        }
    }
    assert_eq!(seen, ["Z", "_x", "a", "b", "c10", "c9"]);
    assert_eq!(
        c.get("/v2/pg/a/tags/list?n=2&last=b").json()["tags"],
        serde_json::json!(["c10", "c9"])
    );
    assert_eq!(
        c.get("/v2/pg/a/tags/list?n=0").json()["tags"],
        serde_json::json!([])
    );
    assert_eq!(c.get("/v2/pg/a/tags/list?n=-1").status, 400);

    for r in ["pg/c", "pg/b", "aa"] {
        c.push_blob(r, b"x");
    }
    let cat = c.get("/v2/_catalog").json();
    assert_eq!(
        cat["repositories"],
        serde_json::json!(["aa", "pg/a", "pg/b", "pg/c"])
    );
    let r = c.get("/v2/_catalog?n=2");
    assert_eq!(r.json()["repositories"], serde_json::json!(["aa", "pg/a"]));
    assert_eq!(
        r.header("Link"),
        Some("</v2/_catalog?n=2&last=pg/a>; rel=\"next\"")
    );
    assert_eq!(
        c.get("/v2/_catalog?n=2&last=pg/a").json()["repositories"],
        serde_json::json!(["pg/b", "pg/c"])
    );
}

#[test]
fn upload_resumes_after_a_restart() {
    let dir = TempDir::new("resume");
    let mut reg = Registry::start(dir.path());
    let data = bytes(9, 1_500_000);
    let digest = sha256(&data);
    let c = reg.client();
    let loc = c.start_upload("res");
    assert_eq!(
        c.req(
            "PATCH",
            &loc,
            &[("Content-Range", "0-599999")],
            Body::Bytes(&data[..600_000])
        )
        .status,
        202
    );
    reg.restart();
    let c = reg.client();
    let s = c.get(&loc);
    assert_eq!(s.status, 204, "{s:?}");
    assert_eq!(s.header("Range"), Some("0-599999"));
    let r = c.req(
        "PATCH",
        &loc,
        &[("Content-Range", "600000-1499999")],
        Body::Bytes(&data[600_000..]),
    );
    assert_eq!(r.status, 202);
    let r = c.req("PUT", &format!("{loc}?digest={digest}"), &[], Body::None);
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(
        sha256(&c.get(&format!("/v2/res/blobs/{digest}")).body),
        digest
    );
}

#[test]
fn graceful_shutdown_exits_zero_and_keeps_everything() {
    let dir = TempDir::new("term");
    let mut reg = Registry::start(dir.path());
    let c = reg.client();
    let m = push_image(&c, "keep", 8, 2);
    assert_eq!(c.put_manifest("keep", "v1", OCI_MANIFEST, &m).status, 201);
    reg.restart();
    let g = reg.client().get("/v2/keep/manifests/v1");
    assert_eq!(g.body, m);
    assert!(reg.terminate().success());
}

#[test]
fn hostile_requests_do_not_hurt_the_server() {
    use std::io::Write;
    let (_d, reg, c) = start();
    // A body declared far larger than memory, then a hang-up (upstream tiny_http allocated the
    // declared remainder and aborted).
    for path in [
        "/v2/h/blobs/uploads/",
        "/v2/BAD/blobs/uploads/",
        "/v2/h/manifests/x",
    ] {
        let mut s = std::net::TcpStream::connect(reg.addr).unwrap();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: 900000000000\r\n\r\nabc"
        )
        .unwrap();
        drop(s);
    }
    // A header line without end.
    let mut s = std::net::TcpStream::connect(reg.addr).unwrap();
    let _ = write!(s, "GET /v2/ HTTP/1.1\r\nX-Long: {}", "a".repeat(200_000));
    drop(s);
    // A TLS ClientHello on the plain port gets an HTTP 400 (as Go's server answers the
    // reverse) and is closed at once, so HTTPS-first clients fall back to HTTP without
    // waiting for a timeout.
    let mut s = std::net::TcpStream::connect(reg.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    s.write_all(&[
        0x16, 0x03, 0x01, 0x00, 0xa5, 0x01, 0x00, 0x00, 0xa1, 0x03, 0x03,
    ])
    .unwrap();
    let t = std::time::Instant::now();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.0 400 "), "{answer}");
    assert!(t.elapsed() < std::time::Duration::from_secs(2));
    // A body shorter than its Content-Length, then a hang-up, during a chunked upload.
    let loc = c.start_upload("h");
    let mut s = std::net::TcpStream::connect(reg.addr).unwrap();
    write!(
        s,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[7u8; 300_000]).unwrap();
    drop(s);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert_eq!(c.get("/v2/").status, 200, "server still serves");
    // What arrived before the hang-up is kept, so the client can resume from there.
    let s = c.get(&loc);
    assert_eq!(s.header("Range"), Some("0-299999"));
}

#[test]
fn cli_reports_bad_flags_and_config() {
    let dir = TempDir::new("cfg");
    // A free port and this test's directory, were it to start after all.
    let serve = || {
        let mut c = common::outpost();
        c.args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("refused"));
        c
    };
    let out = serve().args(["--wrokers", "3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--wrokers"));
    let out = serve()
        .args(["--chunk-size", "12 parsecs"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--chunk-size"));
    let cfg = dir.path().join("c.json");
    std::fs::write(&cfg, r#"{"listen": "127.0.0.1:0", "wrokers": 2}"#).unwrap();
    let out = serve().arg("--config").arg(&cfg).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("wrokers"),
        "{out:?}"
    );
    // A valid config file is used (its dataDir receives the store).
    let data = dir.path().join("store");
    std::fs::write(
        &cfg,
        format!(
            r#"{{"dataDir": {:?}, "workers": 2, "chunkSize": "64KiB"}}"#,
            data
        ),
    )
    .unwrap();
    let reg = Registry::start_with(&data, &["--config", cfg.to_str().unwrap()]);
    let (_, r) = reg.client().push_blob("cfg", &bytes(1, 200_000));
    assert_eq!(r.status, 201);
    assert!(data.join("outpost.redb").exists());
    // serve's page lists its options (the overview names the commands only).
    let out = common::outpost()
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("--data-dir"));
}

#[test]
fn idle_upload_sessions_are_dropped_after_the_ttl() {
    let dir = TempDir::new("ttl");
    let reg = Registry::start_with(dir.path(), &["--upload-ttl", "2s"]);
    let c = reg.client();
    let open = |body: &[u8]| {
        let loc = c.start_upload("ttl");
        assert_eq!(c.req("PATCH", &loc, &[], Body::Bytes(body)).status, 202);
        loc
    };
    let idle = open(&bytes(1, 100_000));
    let busy = open(b"x");
    for at in 1..13 {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let r = c.req(
            "PATCH",
            &busy,
            &[("Content-Range", &format!("{at}-{at}"))],
            Body::Bytes(b"y"),
        );
        assert_eq!(r.status, 202, "a session in use is kept");
    }
    assert_eq!(
        c.get(&idle).code(),
        "BLOB_UPLOAD_UNKNOWN",
        "an idle session is dropped"
    );
    assert_eq!(c.get(&busy).status, 204);
    assert!(
        reg.log_text().contains("dropped 1 upload session"),
        "{}",
        reg.log_text()
    );
}

#[test]
fn a_download_that_cannot_finish_ends_the_connection() {
    use std::io::{BufRead, Read, Write};
    let (_d, reg, c) = start();
    let data = bytes(11, 32 << 20);
    let (digest, _) = c.push_blob("cut", &data);
    let mut s = std::net::TcpStream::connect(reg.addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(s, "GET /v2/cut/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = std::io::BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.contains("200"), "{line}");
    while line.trim() != "" {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    let mut buf = vec![0; 1 << 20];
    r.read_exact(&mut buf).unwrap();
    // The last link goes while the client is still reading: the rest cannot be sent.
    assert_eq!(c.delete(&format!("/v2/cut/blobs/{digest}")).status, 202);
    let mut got = buf.len();
    loop {
        match r.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) => panic!("the connection stayed open after the stream failed: {e}"),
        }
    }
    assert!(got < data.len(), "received {got} of {}", data.len());
    assert_eq!(c.get("/v2/").status, 200);
}

#[test]
fn a_stalled_client_cannot_hold_a_worker_forever() {
    use std::io::Write;
    let dir = TempDir::new("stall");
    let reg = Registry::start_with(dir.path(), &["--workers", "1", "--io-timeout", "1s"]);
    let c = reg.client();
    let loc = c.start_upload("stall");
    // Headers and 10 bytes of a 100000-byte chunk, then silence with the connection open: the
    // only worker is stuck reading it.
    let mut s = std::net::TcpStream::connect(reg.addr).unwrap();
    write!(
        s,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123456789"
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let t = std::time::Instant::now();
    assert_eq!(c.get("/v2/").status, 200);
    assert!(
        t.elapsed() < std::time::Duration::from_secs(10),
        "served only after {:?}",
        t.elapsed()
    );
    // The stalled body is cut after the io timeout; what arrived before is kept for a resume.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.get(&loc).header("Range") != Some("0-9") {
        assert!(
            std::time::Instant::now() < deadline,
            "the stall was not cut"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    drop(s);
}

#[test]
fn a_bodiless_chunked_post_leaves_the_connection_usable() {
    // ureq sends a POST without a body as an empty chunked body; the next request on the
    // keep-alive connection must not be parsed from its leftovers.
    let tmp = TempDir::new("chunked-post");
    let r = Registry::start(tmp.path());
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(r.addr).unwrap();
    s.write_all(
        b"POST /v2/a/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
          GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 202"), "{all}");
    assert!(all.contains("HTTP/1.1 200"), "second request: {all}");
}
