//! Uploads of content the store already holds: kept once, and (past the first 4 KiB) compared
//! with the stored copy instead of written. Every way such an upload can end is checked
//! through HTTP: identical, diverging midway, a proper prefix, cancelled, resumed after a
//! restart, and the stored copy deleted meanwhile.

mod common;
use common::*;

fn store(c: &Client) -> serde_json::Value {
    c.get("/admin/stats").json()["store"].clone()
}

/// Streams `data` into a new session of `repo` in PATCHes of `step` bytes; returns location.
fn upload_in_steps(c: &Client, repo: &str, data: &[u8], step: usize) -> String {
    let loc = c.start_upload(repo);
    let mut at = 0;
    for part in data.chunks(step) {
        let range = format!("{}-{}", at, at + part.len() - 1);
        let r = c.req(
            "PATCH",
            &loc,
            &[("Content-Range", &range)],
            Body::Bytes(part),
        );
        assert_eq!(r.status, 202, "{r:?}");
        at += part.len();
        assert_eq!(r.header("Range"), Some(format!("0-{}", at - 1).as_str()));
    }
    loc
}

fn finish(c: &Client, loc: &str, digest: &str) -> Resp {
    c.req("PUT", &format!("{loc}?digest={digest}"), &[], Body::None)
}

#[test]
fn repeated_diverging_and_prefix_uploads_store_the_right_bytes() {
    let dir = TempDir::new("dedupe");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    let original = bytes(1, 3 << 20);
    let (od, r) = c.push_blob("first", &original);
    assert_eq!(r.status, 201);

    // Identical, in uneven steps: linked, still one copy.
    let loc = upload_in_steps(&c, "second", &original, 700_001);
    assert_eq!(finish(&c, &loc, &od).status, 201);
    assert_eq!(c.get(&format!("/v2/second/blobs/{od}")).body, original);
    assert_eq!(store(&c)["blobs"], 1);

    // Same first 2 MiB, then different: stored as its own blob, byte for byte.
    let mut diverging = original.clone();
    diverging[(2 << 20) + 5] ^= 0xff;
    let dd = sha256(&diverging);
    let loc = upload_in_steps(&c, "third", &diverging, 512 << 10);
    assert_eq!(finish(&c, &loc, &dd).status, 201);
    assert_eq!(sha256(&c.get(&format!("/v2/third/blobs/{dd}")).body), dd);

    // Longer than the stored blob.
    let mut longer = original.clone();
    longer.extend_from_slice(b"tail");
    let ld = sha256(&longer);
    let loc = upload_in_steps(&c, "fourth", &longer, 1 << 20);
    assert_eq!(finish(&c, &loc, &ld).status, 201);
    assert_eq!(c.get(&format!("/v2/fourth/blobs/{ld}")).body, longer);

    // A proper prefix: the finish stores it (another digest, another blob).
    let prefix = &original[..1 << 20];
    let pd = sha256(prefix);
    let loc = upload_in_steps(&c, "fifth", prefix, 300_000);
    assert_eq!(finish(&c, &loc, &pd).status, 201);
    assert_eq!(c.get(&format!("/v2/fifth/blobs/{pd}")).body, prefix);

    // A wrong digest for repeated content: refused, nothing linked.
    let loc = upload_in_steps(&c, "sixth", &original, 1 << 20);
    let r = finish(&c, &loc, &sha256(b"something else"));
    assert_eq!((r.status, r.code()), (400, "DIGEST_INVALID".to_owned()));
    assert_eq!(c.head(&format!("/v2/sixth/blobs/{od}")).status, 404);

    let s = store(&c);
    assert_eq!(s["blobs"], 4);
    assert_eq!(s["uploads"], 0);
    assert_eq!(
        s["blobBytes"].as_u64().unwrap(),
        (original.len() * 3 + 4 + prefix.len()) as u64
    );
    assert_eq!(c.get("/admin/stats").json()["uploads"]["deduplicated"], 1);
    assert_eq!(c.get("/admin/check").status, 200);
}

#[test]
fn a_shadowing_upload_keeps_the_stored_copy_alive_and_lets_go_when_cancelled() {
    let dir = TempDir::new("dedupe-pin");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    let data = bytes(2, 1 << 20);
    let (d, _) = c.push_blob("owner", &data);

    // Half uploaded, then the only repository holding it deletes it.
    let loc = upload_in_steps(&c, "late", &data[..512 << 10], 256 << 10);
    assert_eq!(c.delete(&format!("/v2/owner/blobs/{d}")).status, 202);
    assert_eq!(c.head(&format!("/v2/owner/blobs/{d}")).status, 404);
    // The upload continues and finishes with the right content.
    let r = c.req(
        "PATCH",
        &loc,
        &[("Content-Range", &format!("{}-{}", 512 << 10, (1 << 20) - 1))],
        Body::Bytes(&data[512 << 10..]),
    );
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(finish(&c, &loc, &d).status, 201);
    assert_eq!(c.get(&format!("/v2/late/blobs/{d}")).body, data);
    assert_eq!(store(&c)["blobs"], 1);

    // A cancelled shadowing upload releases the stored copy with the last link.
    let loc = upload_in_steps(&c, "cancelled", &data[..300_000], 300_000);
    assert_eq!(c.delete(&format!("/v2/late/blobs/{d}")).status, 202);
    assert_eq!(store(&c)["blobs"], 1, "kept while the upload repeats it");
    assert_eq!(c.get("/admin/check").status, 200);
    assert_eq!(c.delete(&loc).status, 204);
    assert_eq!(c.stored_blobs(), (0, 0));
}

#[test]
fn a_shadowing_upload_resumes_after_a_restart() {
    let dir = TempDir::new("dedupe-restart");
    let mut reg = Registry::start(dir.path());
    let c = reg.client();
    let data = bytes(3, 2 << 20);
    let (d, _) = c.push_blob("owner", &data);
    let loc = upload_in_steps(&c, "again", &data[..1 << 20], 1 << 20);
    reg.restart();
    let c = reg.client();
    // Progress between checkpoints is not written: the session resumes from the last one.
    let r = c.get(&loc);
    assert_eq!(r.status, 204, "{r:?}");
    let from: usize = match r.header("Range").unwrap() {
        "0-0" => 0,
        range => range.split('-').nth(1).unwrap().parse::<usize>().unwrap() + 1,
    };
    let rest = &data[from..];
    let r = c.req(
        "PUT",
        &format!("{loc}?digest={d}"),
        &[("Content-Range", &format!("{from}-{}", data.len() - 1))],
        Body::Bytes(rest),
    );
    assert_eq!(r.status, 201, "{r:?}");
    assert_eq!(c.get(&format!("/v2/again/blobs/{d}")).body, data);
    assert_eq!(store(&c)["blobs"], 1);
}
