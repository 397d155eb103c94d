//! `/healthz` and `/readyz`: 200 when all is well, with auth on too and without credentials;
//! `/readyz` 503 with free space below the reserve, and while the store is reopening after an
//! I/O failure (on a small tmpfs: needs root to mount it, as in CI).

mod common;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

/// A probe's answer says at most a category: no path, number or version.
fn reveals_nothing(r: &Resp) {
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        !body.contains('/') && !body.bytes().any(|b| b.is_ascii_digit()),
        "probe body says too much: {body:?}"
    );
}

fn body(r: &Resp) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Asks `path` until it answers `status` (a reopen or a probe's cached estimate may lag a
/// moment); returns that answer, or panics with the last one and the log.
fn until(reg: &Registry, path: &str, status: u16) -> Resp {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = reg.client().get(path);
        if r.status == status {
            return r;
        }
        assert!(
            Instant::now() < deadline,
            "{path} never answered {status}; last {} {:?}; log:\n{}",
            r.status,
            body(&r),
            reg.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn probes_answer_ok_with_and_without_auth() {
    let dir = TempDir::new("health-ok");
    let reg = Registry::start(&dir.path().join("data"));
    let c = reg.client();
    for path in ["/healthz", "/readyz"] {
        let r = c.get(path);
        assert_eq!((r.status, body(&r).as_str()), (200, "ok\n"), "{path}");
        reveals_nothing(&r);
        assert_eq!(c.head(path).status, 200, "HEAD {path}");
    }
    drop(reg);

    // Auth on: the registry's API asks for credentials, the probes do not.
    let dir = TempDir::new("health-auth");
    let cfg = dir.path().join("outpost.json");
    let config = json!({"auth": {"admins": ["root"]}});
    std::fs::write(&cfg, config.to_string()).unwrap();
    let reg = Registry::start_with(
        &dir.path().join("data"),
        &["--config", cfg.to_str().unwrap()],
    );
    let c = reg.client();
    assert_eq!(c.get("/v2/").status, 401);
    assert_eq!(c.get("/admin/stats").status, 401);
    for path in ["/healthz", "/readyz"] {
        let r = c.get(path);
        assert_eq!((r.status, body(&r).as_str()), (200, "ok\n"), "{path}");
        assert!(r.header("WWW-Authenticate").is_none());
    }
    // Wrong credentials are not looked at either (a probe never counts as a failed login).
    let r = c.with_auth("Basic cm9vdDp3cm9uZw==").get("/readyz");
    assert_eq!(r.status, 200);
}

#[test]
fn readyz_is_503_below_the_free_space_reserve() {
    let dir = TempDir::new("health-reserve");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // A reserve larger than the disk's free space, by far more than the test writes.
    let reserve = (fs_free(&data) + (1 << 30)).to_string();
    let reg = Registry::start_with(&data, &["--min-free-space", &reserve]);
    let c = reg.client();
    let r = c.get("/readyz");
    assert_eq!(
        (r.status, body(&r).as_str()),
        (503, "not ready: free space below the reserve\n")
    );
    assert!(r.header("Retry-After").is_some(), "{r:?}");
    reveals_nothing(&r);
    // The same measure refuses upload data...
    let (_, push) = c.push_blob("full", b"layer");
    assert_eq!(push.status, 507, "{push:?}");
    // ...while the process serves and its store answers.
    assert_eq!(c.get("/healthz").status, 200);
}

/// The store's I/O fails for real (ENOSPC on a full tmpfs) while its path cannot be opened
/// (a directory stands there; the registry still holds the file it opened): the reopen that
/// follows fails and is retried, and `/readyz` says so until the file is back.
#[test]
fn readyz_is_503_while_the_store_reopens_after_an_io_failure() {
    let Some(disk) = SmallDisk::mount(24) else {
        return;
    };
    let data = disk.0.path().join("data");
    // No reserve: the database itself hits ENOSPC, which redb latches until it is reopened.
    let reg = Registry::start_with(&data, &["--min-free-space", "0"]);
    let c = reg.client();
    assert_eq!(c.get("/readyz").status, 200);
    let db = data.join("outpost.redb");
    let held = data.join("outpost.redb.held");
    std::fs::rename(&db, &held).unwrap();
    std::fs::create_dir(&db).unwrap();

    // Fill the disk until redb's own write fails (not only the 507 of the space check).
    let mut seed = 7000;
    let mut size = 4 << 20;
    while !reg.log_text().contains("storage I/O failed") {
        assert!(seed < 7200, "redb never hit ENOSPC: {}", reg.log_text());
        let (_, r) = c.push_blob("fill", &bytes(seed, size));
        if r.status != 201 {
            size = (size / 2).max(4096);
        }
        seed += 1;
    }
    let r = until(&reg, "/readyz", 503);
    assert_eq!(body(&r), "not ready: store reopening\n");
    assert!(r.header("Retry-After").is_some(), "{r:?}");
    reveals_nothing(&r);
    assert_eq!(c.get("/healthz").status, 503);
    // It stays so while the reopen keeps failing (each probe retries it).
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(body(&c.get("/readyz")), "not ready: store reopening\n");
    let log = reg.log_text();
    assert!(
        log.contains("outpost.redb failed") && !log.contains("reopened"),
        "{log}"
    );

    // The file back: the next probe reopens it, and the registry is ready again.
    std::fs::remove_dir(&db).unwrap();
    std::fs::rename(&held, &db).unwrap();
    assert_eq!(body(&until(&reg, "/readyz", 200)), "ok\n");
    assert_eq!(c.get("/healthz").status, 200);
    reg.log_with("reopened");
}

/// Once SIGTERM came, `/readyz` says so to whoever still reaches it (a request already on
/// its way), while running requests finish.
#[test]
fn readyz_is_503_once_the_registry_is_stopping() {
    use std::io::{BufReader, Write};
    use std::net::TcpStream;
    let dir = TempDir::new("health-stop");
    let mut reg = Registry::start(&dir.path().join("data"));
    // A running upload keeps the registry finishing for a while.
    let loc = reg.client().start_upload("stop/app");
    let mut upload = TcpStream::connect(reg.addr).unwrap();
    write!(
        upload,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
    )
    .unwrap();
    // A probe whose head is on its way when the signal comes.
    let mut probe = TcpStream::connect(reg.addr).unwrap();
    probe
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    signal(reg.child.id(), "TERM");
    reg.log_with("finishing in-flight requests");
    probe.write_all(b"\r\n").unwrap();
    let r = read_response(&mut BufReader::new(probe), false);
    assert_eq!(
        (r.status, body(&r).as_str()),
        (503, "not ready: stopping\n")
    );
    assert!(r.header("Retry-After").is_some(), "{r:?}");
    upload.write_all(b"0\r\n\r\n").unwrap();
    let r = read_response(&mut BufReader::new(upload), false);
    assert_eq!(r.status, 202, "the running upload finished: {r:?}");
    let status = wait_timeout(&mut reg.child, Duration::from_secs(30)).expect("stopped");
    assert!(status.success(), "{status:?}");
}
