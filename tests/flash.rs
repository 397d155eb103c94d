//! Flash wear: storing a blob writes each byte once (plus a little metadata), measured from
//! the registry process's own /proc/PID/io.

mod common;
use common::*;

fn write_bytes(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("write_bytes:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn a_stored_byte_is_written_about_once() {
    // On the target directory's disk: a tmpfs would count no writes at all.
    let tmp = TempDir::on_disk("flash");
    let reg = Registry::start(tmp.path());
    let c = reg.client();
    let pid = reg.child.id();
    let data = bytes(42, 48 << 20);
    let before = write_bytes(pid);
    // Streamed in uneven pieces, as clients do, then finished.
    assert_eq!(c.push_streamed("flash", &data).status, 201);
    let written = write_bytes(pid) - before;
    let ratio = written as f64 / data.len() as f64;
    eprintln!(
        "wrote {written} bytes for {} stored: {ratio:.3}x",
        data.len()
    );
    assert!(
        ratio >= 0.99,
        "the write counter saw only {written} bytes: cannot judge"
    );
    assert!(ratio <= 1.05, "wrote {ratio:.3}x the bytes stored");
}

#[test]
fn re_uploading_stored_content_writes_almost_nothing() {
    let tmp = TempDir::on_disk("flash-again");
    let dir = tmp.path();
    let reg = Registry::start(dir);
    let c = reg.client();
    let pid = reg.child.id();
    let data = bytes(43, 32 << 20);
    let (d, r) = c.push_blob("first", &data);
    assert_eq!(r.status, 201);
    let file = || std::fs::metadata(dir.join("outpost.redb")).unwrap().len();
    let (before, size_before) = (write_bytes(pid), file());
    // A cold client pushing the same layer to another repository: it streams every byte.
    assert_eq!(c.push_streamed("second", &data).status, 201);
    let written = write_bytes(pid) - before;
    let grown = file() - size_before;
    eprintln!(
        "re-upload of {} bytes: wrote {written}, file grew {grown}",
        data.len()
    );
    assert!(
        written < data.len() as u64 / 100,
        "wrote {written} bytes for content already stored"
    );
    assert!(grown < data.len() as u64 / 100, "file grew {grown} bytes");
    assert_eq!(c.get(&format!("/v2/second/blobs/{d}")).body, data);
}
