//! A fleet at once, and clients that crawl, stall, flood or speak another protocol, against the
//! real binary: the listener survives thread and descriptor limits, slow clients cannot starve
//! others, a burst is answered at once, malformed framing is refused, and confused clients get
//! answers they understand. Limits are scaled down (short timeouts, a pids cgroup, prlimit).

mod common;

use common::{bound, bytes, Registry, TempDir};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// A raw connection with a read timeout, for bytes no client library would send.
fn raw(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// Everything the server sends until it closes the connection (or 20 s pass).
fn until_closed(s: &mut TcpStream) -> String {
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    String::from_utf8_lossy(&all).into_owned()
}

/// A line of `/proc/PID/status`, e.g. `Threads`.
fn proc_status(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// `GET /v2/` on a new connection answered 200 within `limit`.
fn answers_within(addr: SocketAddr, limit: Duration) -> Duration {
    let limit = bound(limit);
    let t = Instant::now();
    let mut s = raw(addr);
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(&mut s).read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
    let took = t.elapsed();
    assert!(took < limit, "answered after {took:?}");
    took
}

/// A pids cgroup (v1) holding at most `max` tasks, or None where there is none to make (not
/// root, no such controller): then the test says so and checks nothing more.
struct PidsCgroup(std::path::PathBuf);

impl PidsCgroup {
    fn new(tag: &str, max: u64) -> Option<PidsCgroup> {
        let dir = std::path::Path::new("/sys/fs/cgroup/pids")
            .join(format!("outpost-test-{tag}-{}", std::process::id()));
        std::fs::create_dir(&dir).ok()?;
        let cg = PidsCgroup(dir);
        std::fs::write(cg.0.join("pids.max"), max.to_string()).ok()?;
        Some(cg)
    }

    fn enter(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for PidsCgroup {
    fn drop(&mut self) {
        if let Ok(procs) = std::fs::read_to_string(self.0.join("cgroup.procs")) {
            for p in procs.split_whitespace() {
                let _ = std::fs::write("/sys/fs/cgroup/pids/cgroup.procs", p);
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The status and `Retry-After` of the next response on a kept-alive connection (its body
/// read by `Content-Length`), or None if the connection failed or closed.
fn status_of(r: &mut impl BufRead) -> Option<(u16, Option<String>)> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let status = line.split_whitespace().nth(1)?.parse().ok()?;
    let (mut length, mut retry) = (0, None);
    loop {
        let mut h = String::new();
        r.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        if k.eq_ignore_ascii_case("content-length") {
            length = v.trim().parse().ok()?;
        } else if k.eq_ignore_ascii_case("retry-after") {
            retry = Some(v.trim().to_owned());
        }
    }
    let mut body = vec![0; length];
    r.read_exact(&mut body).ok()?;
    Some((status, retry))
}

/// Keep-alive clients polling `GET /v2/` for `run`, as a fleet would: counts of 200s, 503s and
/// connection failures.
fn fleet(addr: SocketAddr, clients: usize, run: Duration) -> (usize, usize, usize) {
    let (ok, busy, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let until = Instant::now() + run;
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (ok, busy, failed) = (ok.clone(), busy.clone(), failed.clone());
            thread::spawn(move || {
                while Instant::now() < until {
                    let Ok(s) = TcpStream::connect(addr) else {
                        failed.fetch_add(1, Ordering::Relaxed);
                        thread::sleep(Duration::from_millis(20));
                        continue;
                    };
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut r = BufReader::new(s.try_clone().unwrap());
                    let mut w = s;
                    while Instant::now() < until {
                        if w.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                            .is_err()
                        {
                            failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        match status_of(&mut r) {
                            Some((200, _)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Some((503, retry)) => {
                                assert_eq!(retry.as_deref(), Some("1"));
                                busy.fetch_add(1, Ordering::Relaxed);
                                thread::sleep(Duration::from_millis(50));
                                break;
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                        }
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let get = |a: &AtomicUsize| a.load(Ordering::Relaxed);
    (get(&ok), get(&busy), get(&failed))
}

#[test]
fn a_thread_limit_costs_503s_not_the_listener() {
    let dir = TempDir::new("tasks");
    let mut reg = Registry::start(dir.path());
    let pid = reg.child.id();
    // Room for a few connection threads only, as a unit's TasksMax would leave (counted once
    // the start-up threads all run and the first connection thread has come and gone).
    answers_within(reg.addr, Duration::from_secs(2));
    thread::sleep(Duration::from_millis(500));
    let threads = proc_status(pid, "Threads");
    let Some(cg) = PidsCgroup::new("tasks", threads + 4) else {
        eprintln!("no pids cgroup can be made here (needs root and cgroup v1 pids): skipped");
        return;
    };
    cg.enter(pid);
    let (ok, busy, failed) = fleet(reg.addr, 40, Duration::from_secs(3));
    eprintln!("under a thread limit: {ok} answered, {busy} refused with 503, {failed} failed");
    assert!(ok > 0 && busy > 0, "{ok} {busy} {failed}");
    assert!(reg.child.try_wait().unwrap().is_none(), "the registry died");
    // The fleet gone, the registry serves at once, still under the limit.
    answers_within(reg.addr, Duration::from_secs(2));
    let (ok, _, failed) = fleet(reg.addr, 2, Duration::from_millis(500));
    assert!(ok > 0 && failed == 0, "{ok} {failed}");
    let log = reg.log_with("cannot start a thread for a connection");
    drop(cg);
    // Thread starts failed many times; the warning was not repeated for each.
    let warnings = log.matches("cannot start a thread").count();
    assert!(warnings <= 2, "{warnings} warnings");
    assert!(reg.terminate().success());
}

#[test]
fn a_descriptor_limit_leaves_connections_waiting_then_serves_them() {
    let dir = TempDir::new("nofile");
    let reg = Registry::start_with(dir.path(), &["--header-timeout", "2s"]);
    let pid = reg.child.id();
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = format!("--nofile={}", open + 6);
    let st = std::process::Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .status()
        .expect("prlimit (util-linux)");
    assert!(st.success());
    // Silent connections: a few are accepted (and cut at the header timeout), the others wait
    // in the backlog while accept fails for want of descriptors.
    let silent: Vec<_> = (0..12).map(|_| raw(reg.addr)).collect();
    thread::sleep(Duration::from_millis(300));
    let took = answers_within(reg.addr, Duration::from_secs(15));
    eprintln!("served after {took:?} with the descriptor table full");
    reg.log_with("cannot accept a connection");
    drop(silent);
    thread::sleep(Duration::from_millis(500));
    answers_within(reg.addr, Duration::from_secs(3));
}

/// A client that sends `head`, then one byte of `trickle` every `every`, until the server
/// closes the connection; returns how long that took (None: not within `limit`).
fn drip(
    addr: SocketAddr,
    head: String,
    trickle: u8,
    every: Duration,
) -> thread::JoinHandle<Option<Duration>> {
    thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let t = Instant::now();
        s.write_all(head.as_bytes()).unwrap();
        while t.elapsed() < Duration::from_secs(30) {
            thread::sleep(every);
            if s.write_all(&[trickle]).is_err() {
                return Some(t.elapsed());
            }
            // The server may have answered and closed: a read that ends shows it.
            s.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 4096];
            let ended = loop {
                match s.read(&mut buf) {
                    Ok(0) => break true,
                    Ok(_) => continue,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                    Err(_) => break true,
                }
            };
            s.set_nonblocking(false).unwrap();
            if ended {
                return Some(t.elapsed());
            }
        }
        None
    })
}

/// A client that sends `requests` (one blob GET, maybe more pipelined) and then reads the
/// answer a byte every `every` until `done`; then it reads what the socket buffers still hold
/// and returns the total: less than the blob if the server cut it.
fn slow_reader(
    addr: SocketAddr,
    requests: String,
    every: Duration,
    done: Arc<AtomicBool>,
) -> thread::JoinHandle<usize> {
    thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        s.write_all(requests.as_bytes()).unwrap();
        let mut got = 0;
        let mut b = [0u8; 1];
        while !done.load(Ordering::Relaxed) {
            match s.read(&mut b) {
                Ok(1) => got += 1,
                _ => return got,
            }
            thread::sleep(every);
        }
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        got + rest.len()
    })
}

#[test]
fn slow_clients_cannot_starve_others() {
    let dir = TempDir::new("slow");
    let reg = Registry::start_with(
        dir.path(),
        &[
            "--io-timeout",
            "2s",
            "--header-timeout",
            "2s",
            "--min-transfer-rate",
            "4KiB",
        ],
    );
    let c = reg.client();
    let addr = reg.addr;
    // Large enough that a reader who does not read fills every socket buffer on the way.
    let big = bytes(1, 24 << 20);
    let (big_digest, put) = c.push_blob("fleet/app", &big);
    assert_eq!(put.status, 201);
    let (small_digest, _) = c.push_blob("fleet/app", b"small layer");
    let every = Duration::from_millis(400);
    let mut drips = Vec::new();
    let (mut readers, done) = (Vec::new(), Arc::new(AtomicBool::new(false)));
    for i in 0..8 {
        // Refused requests whose huge bodies are never read (not drained: closed).
        drips.push((
            "unread body",
            drip(
                addr,
                "GET /v2/ HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n".into(),
                b'x',
                every,
            ),
        ));
        // Headers that never end.
        drips.push((
            "slow head",
            drip(addr, "GET /v2/ HTTP/1.1\r\nX-Slow: ".into(), b'a', every),
        ));
        // A manifest a byte at a time.
        drips.push(("slow manifest", drip(addr, format!("PUT /v2/fleet/app/manifests/t{i} HTTP/1.1\r\nHost: x\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 2000\r\n\r\n"), b' ', every)));
        // A chunked upload a byte at a time (one-byte chunks).
        let loc = c.start_upload("fleet/app");
        drips.push(("slow upload", drip(addr, format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n1\r\n"), b'z', every)));
        // Blob readers that take a byte now and then.
        readers.push(slow_reader(
            addr,
            format!("GET /v2/fleet/app/blobs/{big_digest} HTTP/1.1\r\nHost: x\r\n\r\n"),
            every,
            done.clone(),
        ));
    }
    // One connection that pipelines a blob and ten more requests, then reads slowly.
    let mut pipelined = format!("GET /v2/fleet/app/blobs/{big_digest} HTTP/1.1\r\nHost: x\r\n\r\n");
    for _ in 0..10 {
        pipelined.push_str("GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n");
    }
    readers.push(slow_reader(addr, pipelined, every, done.clone()));
    thread::sleep(Duration::from_millis(500));

    // Meanwhile everyone else is served at once.
    for _ in 0..5 {
        let t = Instant::now();
        assert_eq!(c.get("/v2/").status, 200);
        assert_eq!(
            c.head(&format!("/v2/fleet/app/blobs/{small_digest}"))
                .status,
            200
        );
        assert_eq!(
            c.get(&format!("/v2/fleet/app/blobs/{small_digest}")).body,
            b"small layer"
        );
        let (_, put) = c.push_blob("other/app", &bytes(9, 1 << 20));
        assert_eq!(put.status, 201);
        assert!(
            t.elapsed() < bound(Duration::from_secs(2)),
            "took {:?}",
            t.elapsed()
        );
        thread::sleep(Duration::from_millis(300));
    }
    // Every slow client is cut, within a few windows of the 2 s limits.
    for (what, d) in drips {
        let took = d.join().unwrap();
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(20)),
            "{what}: {took:?}"
        );
    }
    // The slow readers too, though what the socket buffers hold still reaches them before
    // the end: the server says so, and none of them got the whole blob (nor, the pipelined
    // one, any of the answers after it).
    let deadline = Instant::now() + Duration::from_secs(20);
    while reg.log_text().matches("response slower than").count() < readers.len() {
        assert!(Instant::now() < deadline, "{}", reg.log_text());
        thread::sleep(Duration::from_millis(100));
    }
    done.store(true, Ordering::Relaxed);
    for r in readers {
        let got = r.join().unwrap();
        assert!(got > 0 && got < big.len(), "{got}");
    }
    // An upload cut for being slow keeps what arrived, for a resume.
    let loc = c.start_upload("fleet/app");
    let mut s = raw(addr);
    write!(
        s,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"
    )
    .unwrap();
    s.write_all(&[1u8; 3000]).unwrap();
    let cut = until_closed(&mut s);
    assert!(cut.is_empty() || cut.contains("400"), "{cut}");
    assert_eq!(c.get(&loc).header("Range"), Some("0-2999"));
    answers_within(addr, Duration::from_secs(1));
}

#[test]
fn a_burst_of_connections_is_answered_at_once() {
    let dir = TempDir::new("burst");
    let reg = Registry::start(dir.path());
    for round in 0..4 {
        let mut conns: Vec<TcpStream> = (0..6).map(|_| raw(reg.addr)).collect();
        let t = Instant::now();
        for s in &mut conns {
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
        }
        for s in &mut conns {
            let r = common::read_response(&mut BufReader::new(s), false);
            assert_eq!(r.status, 200);
        }
        let took = t.elapsed();
        assert!(
            took < bound(Duration::from_secs(1)),
            "round {round}: {took:?}"
        );
    }
}

#[test]
fn idle_connections_make_room_and_busy_ones_get_503() {
    let dir = TempDir::new("room");
    let reg = Registry::start_with(dir.path(), &["--max-connections", "4"]);
    let c = reg.client();
    // Four kept-alive connections, each idle after one request.
    let mut idle: Vec<_> = (0..4)
        .map(|_| {
            let mut s = raw(reg.addr);
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            assert_eq!(common::read_response(&mut r, false).status, 200);
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    // A fifth client is served: the longest idle connection is closed to make room.
    answers_within(reg.addr, Duration::from_secs(1));
    let mut closed = 0;
    for s in &mut idle {
        s.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        if matches!(s.read(&mut [0u8; 1]), Ok(0) | Err(_)) {
            closed += 1;
        }
    }
    assert!(closed >= 1);
    drop(idle);
    thread::sleep(Duration::from_millis(200));
    // Four uploads in progress (each handler has asked for its body with 100 Continue):
    // nothing idle to close, so a fifth connection gets 503 with Retry-After.
    let sessions: Vec<_> = (0..4).map(|_| c.start_upload("room/app")).collect();
    let busy: Vec<_> = sessions
        .iter()
        .map(|loc| {
            let mut s = raw(reg.addr);
            write!(
                s,
                "PATCH {loc} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\
                 Content-Length: 1000000\r\n\r\n"
            )
            .unwrap();
            let mut line = String::new();
            BufReader::new(&mut s).read_line(&mut line).unwrap();
            assert!(line.starts_with("HTTP/1.1 100"), "{line}");
            s.write_all(&[0u8; 1000]).unwrap();
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    let r = c.get("/v2/");
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert_eq!(r.code(), "UNAVAILABLE");
    assert!(t.elapsed() < bound(Duration::from_secs(1)));
    drop(busy);
    let deadline = Instant::now() + Duration::from_secs(5);
    while c.get("/v2/").status != 200 {
        assert!(Instant::now() < deadline, "no room after the uploads ended");
        thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn malformed_framing_is_refused_and_the_connection_closed() {
    let dir = TempDir::new("framing");
    let reg = Registry::start(dir.path());
    // Each would smuggle its "body" as a second request if it were read as no body.
    let smuggled = "GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n";
    for (headers, status) in [
        ("Content-Length: -1\r\n", 400),
        ("Content-Length: abc\r\n", 400),
        ("Content-Length: 1, 1\r\n", 400),
        ("Content-Length: +5\r\n", 400),
        ("Content-Length: 99999999999999999999999\r\n", 400),
        ("Content-Length: 5\r\nContent-Length: 6\r\n", 400),
        ("Content-Length: 5\r\nContent-Length: 5\r\n", 400),
        ("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 400),
        ("Transfer-Encoding: chunked\r\nContent-Length: 5\r\n", 400),
        ("Transfer-Encoding: gzip, chunked\r\n", 501),
        (
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
            501,
        ),
    ] {
        let mut s = raw(reg.addr);
        write!(
            s,
            "POST /v2/f/blobs/uploads/ HTTP/1.1\r\nHost: x\r\n{headers}\r\n{smuggled}"
        )
        .unwrap();
        let t = Instant::now();
        let all = until_closed(&mut s);
        assert!(
            all.starts_with(&format!("HTTP/1.1 {status} ")),
            "{headers:?}: {all}"
        );
        assert_eq!(all.matches("HTTP/1.1 ").count(), 1, "{headers:?}: {all}");
        assert!(all.contains("Connection: close"), "{all}");
        assert!(
            t.elapsed() < bound(Duration::from_secs(2)),
            "{headers:?} not closed at once"
        );
    }
    // A chunk size another parser might read differently (`+3`, `3 `) fails the body and
    // closes the connection: the bytes after it are never taken for a request.
    let c = reg.client();
    for size in ["+3", "3 ", " 3", "0x3"] {
        let loc = c.start_upload("f");
        let mut s = raw(reg.addr);
        write!(
            s,
            "PATCH {loc} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
             {size}\r\nabc\r\n0\r\n\r\n{smuggled}"
        )
        .unwrap();
        let all = until_closed(&mut s);
        assert!(all.starts_with("HTTP/1.1 400 "), "{size:?}: {all}");
        assert_eq!(all.matches("HTTP/1.1 ").count(), 1, "{size:?}: {all}");
        assert_eq!(c.get(&loc).header("Range"), Some("0-0"));
    }
    // Nothing was created by any of them; a well-framed request still works.
    assert_eq!(
        c.get("/v2/_catalog").json()["repositories"],
        serde_json::json!([])
    );
}

#[test]
fn confused_clients_get_answers_they_understand() {
    let dir = TempDir::new("confused");
    let reg = Registry::start(dir.path());
    // A TLS ClientHello: an HTTP 400 as Go's server sends, then the connection closes.
    let mut s = raw(reg.addr);
    s.write_all(&[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03,
    ])
    .unwrap();
    let t = Instant::now();
    let all = until_closed(&mut s);
    assert!(all.starts_with("HTTP/1.0 400 Bad Request\r\n"), "{all}");
    assert!(t.elapsed() < bound(Duration::from_secs(1)));
    // The HTTP/2 preface: SETTINGS and GOAWAY (HTTP_1_1_REQUIRED) at once, then close.
    let mut s = raw(reg.addr);
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .unwrap();
    let t = Instant::now();
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    assert!(t.elapsed() < bound(Duration::from_secs(1)));
    assert_eq!(&all[9..12], [0, 0, 8], "{all:?}");
    assert_eq!(all[12], 7, "a GOAWAY frame: {all:?}");
    assert_eq!(&all[all.len() - 4..], [0, 0, 0, 0x0d], "{all:?}");
    // curl speaking HTTP/2 with prior knowledge fails at once instead of hanging.
    let t = Instant::now();
    let out = std::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "--http2-prior-knowledge"])
        .arg(format!("http://{}/v2/", reg.addr))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        t.elapsed() < bound(Duration::from_secs(3)),
        "curl took {:?}",
        t.elapsed()
    );
    // Go's client (the docker CLI) probes with TLS first and falls back to HTTP on the 400.
    let c = reg.client();
    let m = common::push_image(&c, "fleet/app", 3, 1);
    assert_eq!(
        c.put_manifest("fleet/app", "v1", common::OCI_MANIFEST, &m)
            .status,
        201
    );
    match std::process::Command::new("docker")
        .args(["manifest", "inspect", "--insecure"])
        .arg(format!("{}/fleet/app:v1", reg.addr))
        .env("DOCKER_CONFIG", dir.path())
        .output()
    {
        Ok(out) => {
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{stdout} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("schemaVersion"), "{stdout}");
        }
        Err(e) => eprintln!("no docker CLI here ({e}): the Go client check is skipped"),
    }
}

#[test]
fn an_upgrade_offer_is_ignored_and_the_body_framed_as_usual() {
    // curl --http2 on http:// offers h2c with `Connection: Upgrade`; the request is served as
    // HTTP/1.1 and its body read by its length, not to the end of the connection.
    let dir = TempDir::new("upgrade");
    let reg = Registry::start(dir.path());
    let out = std::process::Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "--http2",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
        ])
        .args(["-X", "POST", "--data-binary", "hello"])
        .arg(format!(
            "http://{}/v2/up/blobs/uploads/?digest={}",
            reg.addr,
            common::sha256(b"hello")
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "201", "{out:?}");
}

#[test]
fn connections_stuck_on_their_clients_make_room() {
    // A slowloris that keeps every connection inside a request (a head a byte now and then,
    // a body that does not come) holds no slot another client needs.
    let dir = TempDir::new("stuck");
    let reg = Registry::start_with(dir.path(), &["--max-connections", "4"]);
    let c = reg.client();
    let sessions: Vec<_> = (0..2).map(|_| c.start_upload("stuck/app")).collect();
    // The server counts those two connections until their threads have closed them, a moment
    // after the answers: a connection opened before then could be refused (503), and its
    // upload would never start (seen under qemu).
    thread::sleep(bound(Duration::from_millis(300)));
    let mut held: Vec<TcpStream> = (0..2)
        .map(|_| {
            let mut s = raw(reg.addr);
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHo").unwrap();
            s
        })
        .collect();
    for loc in &sessions {
        let mut s = raw(reg.addr);
        write!(
            s,
            "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n0123"
        )
        .unwrap();
        held.push(s);
    }
    thread::sleep(Duration::from_millis(1500));
    // Four newcomers, each kept open after its answer (the stuck ones, waiting longer, go
    // before them).
    let newcomers: Vec<TcpStream> = (0..4)
        .map(|_| {
            let t = Instant::now();
            let mut s = raw(reg.addr);
            s.write_all(b"GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            let r = common::read_response(&mut BufReader::new(&s), false);
            assert_eq!(r.status, 200);
            assert!(
                t.elapsed() < bound(Duration::from_secs(2)),
                "{:?}",
                t.elapsed()
            );
            s
        })
        .collect();
    // Each newcomer closed one of them.
    let mut cut = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let mut b = [0u8; 256];
        let open =
            matches!(s.read(&mut b), Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock);
        cut += usize::from(!open);
    }
    assert_eq!(cut, 4);
    drop(newcomers);
    // A cut upload kept what arrived (its thread appends it as it notices the cut).
    let until = Instant::now() + bound(Duration::from_secs(2));
    let mut range = c.get(&sessions[0]).header("Range").map(str::to_owned);
    while range.as_deref() != Some("0-3") && Instant::now() < until {
        thread::sleep(Duration::from_millis(50));
        range = c.get(&sessions[0]).header("Range").map(str::to_owned);
    }
    assert_eq!(range.as_deref(), Some("0-3"), "{}", reg.log_text());
}

#[test]
fn hostile_heads_are_bounded_and_strict() {
    let dir = TempDir::new("heads");
    let reg = Registry::start(dir.path());
    let pad = "a".repeat(15_000);
    let huge: String = (0..5).map(|i| format!("X-Pad-{i}: {pad}\r\n")).collect();
    let smuggled = "GET /v2/_catalog HTTP/1.1\r\nHost: x\r\n\r\n";
    for (what, head) in [
        // 75 KB of headers: over the 64 KiB a head may take.
        ("huge head", format!("GET /v2/ HTTP/1.1\r\nHost: x\r\n{huge}\r\n")),
        // A folded line is not a header of its own.
        ("obs-fold", format!("POST /v2/f/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nX-A: b\r\n Content-Length: 5\r\n\r\nAAAAA{smuggled}")),
        // A bare LF (another parser's line end) inside a line.
        ("bare LF", format!("POST /v2/f/blobs/uploads/ HTTP/1.1\r\nHost: x\r\nX: a\nContent-Length: 5\r\n\r\nAAAAA{smuggled}")),
        ("NUL", "GET /v2/ HTTP/1.1\r\nHost: x\r\nX: a\0b\r\n\r\n".to_owned()),
        ("extra word", "GET /v2/ HTTP/1.1 x\r\nHost: x\r\n\r\n".to_owned()),
        ("two hosts", "GET /v2/ HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n".to_owned()),
    ] {
        let mut s = raw(reg.addr);
        let _ = s.write_all(head.as_bytes());
        let all = until_closed(&mut s);
        assert!(all.starts_with("HTTP/1.1 400 "), "{what}: {all}");
        assert_eq!(all.matches("HTTP/1.1 ").count(), 1, "{what}: {all}");
    }
    let c = reg.client();
    assert_eq!(
        c.get("/v2/_catalog").json()["repositories"],
        serde_json::json!([])
    );
}

#[test]
fn manifests_arriving_at_once_share_a_bound() {
    // Each manifest being read is held whole: a crowd of stalled 4 MiB manifests would hold
    // gigabytes. Beyond 4 x maxManifestSize in flight, one waits a moment, then gets 503.
    let dir = TempDir::new("manifests");
    let reg = Registry::start_with(dir.path(), &["--max-manifest-size", "64KiB"]);
    let put = |n: usize| {
        format!(
            "PUT /v2/m/app/manifests/t{n} HTTP/1.1\r\nHost: x\r\n\
             Content-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 65536\r\n\r\n{{"
        )
    };
    let stalled: Vec<TcpStream> = (0..4)
        .map(|n| {
            let mut s = raw(reg.addr);
            s.write_all(put(n).as_bytes()).unwrap();
            s
        })
        .collect();
    thread::sleep(Duration::from_millis(300));
    let mut s = raw(reg.addr);
    let t = Instant::now();
    s.write_all(put(9).as_bytes()).unwrap();
    let r = common::read_response(&mut BufReader::new(&s), false);
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(t.elapsed() < bound(Duration::from_secs(5)));
    drop(stalled);
    // Room again once they are gone.
    let m = common::push_image(&reg.client(), "m/app", 5, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while reg
        .client()
        .put_manifest("m/app", "ok", common::OCI_MANIFEST, &m)
        .status
        != 201
    {
        assert!(
            Instant::now() < deadline,
            "no room after the stalled manifests went"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_stopping_registry_refuses_new_connections_at_once() {
    let dir = TempDir::new("stopping");
    let mut reg = Registry::start(dir.path());
    let c = reg.client();
    // An upload in progress keeps the registry in its grace period.
    let loc = c.start_upload("stop/app");
    let mut busy = raw(reg.addr);
    write!(
        busy,
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n"
    )
    .unwrap();
    let feeding = Arc::new(AtomicBool::new(true));
    let feeder = {
        let (feeding, mut busy) = (feeding.clone(), busy.try_clone().unwrap());
        thread::spawn(move || {
            while feeding.load(Ordering::Relaxed) && busy.write_all(&[1u8; 65536]).is_ok() {
                thread::sleep(Duration::from_millis(20));
            }
        })
    };
    thread::sleep(Duration::from_millis(300));
    common::signal(reg.child.id(), "TERM");
    reg.log_with("finishing in-flight requests");
    let deadline = Instant::now() + bound(Duration::from_secs(3));
    loop {
        match TcpStream::connect(reg.addr) {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
            _ => {
                assert!(Instant::now() < deadline, "new connections still accepted");
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
    feeding.store(false, Ordering::Relaxed);
    feeder.join().unwrap();
    drop(busy);
    let st = common::wait_timeout(&mut reg.child, Duration::from_secs(30)).expect("stopped");
    assert!(st.success());
}

#[test]
fn a_full_tls_port_closes_new_connections_without_plain_bytes() {
    let tmp = TempDir::new("tls-full");
    let t = tmp.path();
    let (cert, key) = common::self_signed(&t.join("tls"));
    let cfg = t.join("outpost.json");
    let config = serde_json::json!({"tls": {"certFile": cert, "keyFile": key}});
    std::fs::write(&cfg, config.to_string()).unwrap();
    let reg = Registry::start_with(
        &t.join("data"),
        &["--config", cfg.to_str().unwrap(), "--max-connections", "1"],
    );
    // The one connection busy with an upload that keeps moving (at 200 KB/s).
    let body = t.join("body");
    std::fs::write(&body, bytes(4, 4 << 20)).unwrap();
    let digest = common::sha256(&bytes(4, 4 << 20));
    let mut upload = std::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(&cert)
        .args(["--limit-rate", "200K", "-X", "POST", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!(
            "https://{}/v2/t/app/blobs/uploads/?digest={digest}",
            reg.addr
        ))
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    thread::sleep(Duration::from_millis(1500));
    // A newcomer is closed: no plain-text 503 garbling its handshake.
    let mut s = raw(reg.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    let _ = upload.kill();
    let _ = upload.wait();
}

#[test]
fn a_download_read_ahead_survives_its_client_pausing() {
    let dir = TempDir::new("ahead");
    let reg = Registry::start(dir.path());
    let c = reg.client();
    let big = bytes(7, 24 << 20);
    let (digest, put) = c.push_blob("ahead/app", &big);
    assert_eq!(put.status, 201);
    // Two clients read fast (read ahead), pause past the hold (it stops), then read on; a
    // third reads at the same time. Each gets the blob byte for byte.
    let readers: Vec<_> = (0..3)
        .map(|i| {
            let addr = reg.addr;
            let digest = digest.clone();
            thread::spawn(move || {
                let mut s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                write!(
                    s,
                    "GET /v2/ahead/app/blobs/{digest} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
                )
                .unwrap();
                let mut got = Vec::new();
                let mut buf = vec![0u8; 64 << 10];
                while got.len() < (6 << 20) {
                    let n = s.read(&mut buf).unwrap();
                    assert!(n > 0, "ended early");
                    got.extend_from_slice(&buf[..n]);
                }
                if i < 2 {
                    thread::sleep(Duration::from_millis(300 + 200 * i as u64));
                }
                s.read_to_end(&mut got).unwrap();
                got
            })
        })
        .collect();
    for r in readers {
        let got = r.join().unwrap();
        let at = got.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
        assert_eq!(got[at..].len(), big.len());
        assert!(got[at..] == big[..], "the body differs");
    }
    assert_eq!(c.get(&format!("/v2/ahead/app/blobs/{digest}")).body, big);
}
