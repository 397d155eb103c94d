//! A full disk: uploads are refused with 507 while what is stored stays readable, manifests
//! and deletes still work, and space freed by deletes takes new pushes. Runs on a small tmpfs
//! (needs root to mount it, as in CI).

mod common;
use common::*;
use std::process::Command;

/// A tmpfs of `mib` MiB mounted on a fresh directory, unmounted on drop.
struct SmallDisk(TempDir);

impl SmallDisk {
    fn mount(mib: u32) -> Option<SmallDisk> {
        let dir = TempDir::new("disk");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(SmallDisk(dir));
        }
        assert!(
            std::env::var("CI").is_err(),
            "CI must be able to mount a tmpfs (run as root)"
        );
        eprintln!("SKIPPED: mounting a tmpfs needs root");
        None
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// Pushes 4 MiB blobs until one is refused; returns the acknowledged ones and the refusal.
fn fill(c: &Client, repo: &str, seed: u64) -> (Vec<(String, u64)>, Resp) {
    let mut stored = Vec::new();
    for i in 0..100 {
        let s = seed + i;
        let data = bytes(s, 4 << 20);
        let (d, r) = c.push_blob(repo, &data);
        if r.status != 201 {
            return (stored, r);
        }
        stored.push((d, s));
    }
    panic!("the disk never filled");
}

fn intact(c: &Client, repo: &str, stored: &[(String, u64)]) {
    for (d, s) in stored {
        let g = c.get(&format!("/v2/{repo}/blobs/{d}"));
        assert_eq!(g.status, 200, "stored blob {d} unreadable on a full disk");
        assert_eq!(g.body, bytes(*s, 4 << 20));
    }
}

#[test]
fn a_full_disk_refuses_uploads_but_keeps_serving() {
    let Some(disk) = SmallDisk::mount(40) else {
        return;
    };
    let reg = Registry::start_with(disk.0.path(), &["--min-free-space", "6MiB"]);
    let c = reg.client();
    let (stored, refused) = fill(&c, "full", 1000);
    assert!(stored.len() >= 4, "only {} blobs fit", stored.len());
    assert_eq!(
        (refused.status, refused.code()),
        (507, "UNAVAILABLE".to_owned())
    );
    intact(&c, "full", &stored);
    // Refused again: a refused upload gives back only what it had written...
    let (_, r) = c.push_blob("full", &bytes(999, 4 << 20));
    assert_eq!(r.status, 507);
    // ...but manifests over stored blobs still fit: the reserve is kept for them.
    let m = image_manifest((&stored[0].0, 4 << 20), &[(&stored[3].0, 4 << 20)], "");
    assert_eq!(c.put_manifest("full", "v1", OCI_MANIFEST, &m).status, 201);
    // Deleting frees room inside the database, and pushes go through again.
    for (d, _) in &stored[1..3] {
        assert_eq!(c.delete(&format!("/v2/full/blobs/{d}")).status, 202);
    }
    let (_, r) = c.push_blob("full", &bytes(5000, 4 << 20));
    assert_eq!(r.status, 201, "space freed by deletes is reused: {r:?}");
    intact(&c, "full", &stored[3..]);
}

#[test]
fn an_io_failure_reopens_the_store_instead_of_failing_forever() {
    let Some(disk) = SmallDisk::mount(40) else {
        return;
    };
    // No reserve: the database itself hits ENOSPC, which redb latches until it is reopened.
    let reg = Registry::start_with(disk.0.path(), &["--min-free-space", "0"]);
    let c = reg.client();
    let (stored, refused) = fill(&c, "enospc", 2000);
    assert!(matches!(refused.status, 503 | 507), "{refused:?}");
    // The store reopens at its last durable state: everything acknowledged is there.
    let mut ok = false;
    for _ in 0..50 {
        if c.get("/v2/enospc/tags/list").status != 503 {
            ok = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(ok, "store did not come back: {}", reg.log_text());
    intact(&c, "enospc", &stored);
    for (d, _) in &stored[..3] {
        assert_eq!(c.delete(&format!("/v2/enospc/blobs/{d}")).status, 202);
    }
    let (_, r) = c.push_blob("enospc", &bytes(6000, 1 << 20));
    assert_eq!(
        r.status,
        201,
        "pushes work again after deletes: {r:?}\n{}",
        reg.log_text()
    );
    assert!(reg.log_text().contains("reopened"), "{}", reg.log_text());
}
