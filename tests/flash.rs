//! Flash wear: storing a blob writes each byte once (plus a little metadata), measured from
//! the registry process's own /proc/PID/io.

mod common;
use common::*;

/// A registry on a real disk (a tmpfs would count no writes at all) whose `sealed/*`
/// repositories are encrypted.
fn start(tmp: &TempDir) -> Registry {
    let cfg = encryption_config(
        tmp.path(),
        serde_json::json!([{"repositories": "sealed/*", "key": "sealed"}]),
    );
    Registry::start_with(
        &tmp.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    )
}

#[test]
fn a_stored_byte_is_written_about_once() {
    let tmp = TempDir::on_disk("flash");
    let reg = start(&tmp);
    let c = reg.client();
    let pid = reg.child.id();
    // Plaintext, then sealed: a sealed chunk row fits the same allocation.
    for (i, repo) in ["flash", "sealed/flash"].into_iter().enumerate() {
        let data = bytes(42 + i as u64, 48 << 20);
        let before = write_bytes(pid);
        // Streamed in uneven pieces, as clients do, then finished.
        assert_eq!(c.push_streamed(repo, &data).status, 201);
        let written = write_bytes(pid) - before;
        let ratio = written as f64 / data.len() as f64;
        eprintln!(
            "{repo}: wrote {written} bytes for {} stored: {ratio:.3}x",
            data.len()
        );
        assert!(
            ratio >= 0.99,
            "the write counter saw only {written} bytes: cannot judge"
        );
        assert!(ratio <= 1.05, "{repo}: wrote {ratio:.3}x the bytes stored");
    }
}

#[test]
fn re_uploading_stored_content_writes_almost_nothing() {
    let tmp = TempDir::on_disk("flash-again");
    let reg = start(&tmp);
    let c = reg.client();
    let pid = reg.child.id();
    let file = || {
        std::fs::metadata(tmp.path().join("data/outpost.redb"))
            .unwrap()
            .len()
    };
    // Within the plaintext domain, and within one key (the comparison opens sealed chunks).
    for (seed, first, second) in [(43, "first", "second"), (44, "sealed/a", "sealed/b")] {
        let data = bytes(seed, 32 << 20);
        let (d, r) = c.push_blob(first, &data);
        assert_eq!(r.status, 201);
        let (before, size_before) = (write_bytes(pid), file());
        // A cold client pushing the same layer to another repository: it streams every byte.
        assert_eq!(c.push_streamed(second, &data).status, 201);
        let written = write_bytes(pid) - before;
        let grown = file() - size_before;
        eprintln!(
            "{second}: re-upload of {} bytes: wrote {written}, file grew {grown}",
            data.len()
        );
        assert!(
            written < data.len() as u64 / 100,
            "wrote {written} bytes for content already stored"
        );
        assert!(grown < data.len() as u64 / 100, "file grew {grown} bytes");
        assert_eq!(c.get(&format!("/v2/{second}/blobs/{d}")).body, data);
    }
}
