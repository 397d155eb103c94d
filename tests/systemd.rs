//! systemd integration through the real binary: `Type=notify` readiness and stop messages on
//! `$NOTIFY_SOCKET`, socket activation (`LISTEN_FDS`), journal priorities.

mod common;

use common::{wait_timeout, Client, TempDir};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A notification socket like systemd's: a datagram socket the service writes to.
struct Manager {
    sock: UnixDatagram,
    path: String,
}

impl Manager {
    fn bind(dir: &TempDir) -> Manager {
        let path = dir.path().join("notify.sock");
        let sock = UnixDatagram::bind(&path).unwrap();
        Manager {
            sock,
            path: path.to_str().unwrap().to_owned(),
        }
    }

    fn abstract_namespace() -> Manager {
        use std::os::linux::net::SocketAddrExt;
        let name = format!("outpost-test-notify-{}", std::process::id());
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        Manager {
            sock: UnixDatagram::bind_addr(&addr).unwrap(),
            path: format!("@{name}"),
        }
    }

    /// The next message, or None after `limit`.
    fn recv(&self, limit: Duration) -> Option<String> {
        self.sock.set_read_timeout(Some(limit)).unwrap();
        let mut buf = [0u8; 4096];
        match self.sock.recv(&mut buf) {
            Ok(n) => Some(String::from_utf8(buf[..n].to_vec()).unwrap()),
            Err(_) => None,
        }
    }
}

/// A started process, killed if a failing test leaves it running.
struct Proc(Option<Child>);

impl Proc {
    fn spawn(c: &mut Command) -> Proc {
        Proc(Some(c.spawn().unwrap()))
    }
    fn child(&mut self) -> &mut Child {
        self.0.as_mut().unwrap()
    }
    fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
    /// Waits for the exit; its status and stderr.
    fn exit(mut self) -> (std::process::ExitStatus, String) {
        let status = wait_timeout(self.child(), Duration::from_secs(60)).expect("did not exit");
        let out = self.0.take().unwrap().wait_with_output().unwrap();
        (status, String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn serve(data: &TempDir, listen: &str) -> Command {
    common::serve(data.path(), listen)
}

fn field<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix('='))
}

/// Reads READY=1 and checks that the port it names accepts at that very moment; returns the
/// address.
fn expect_ready(manager: &Manager, child: &Proc) -> SocketAddr {
    let ready = manager
        .recv(Duration::from_secs(60))
        .expect("no READY=1 within 60 s");
    // Connect before anything else: READY=1 must mean the port accepts now.
    let status = field(&ready, "STATUS").unwrap_or_else(|| panic!("no STATUS in {ready:?}"));
    let addr: SocketAddr = status.rsplit(' ').next().unwrap().parse().unwrap();
    let accepted = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5));
    assert!(accepted.is_ok(), "READY=1 came before {addr} accepted");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready:?}");
    assert_eq!(
        field(&ready, "MAINPID"),
        Some(child.id().to_string().as_str()),
        "{ready:?}"
    );
    assert!(status.starts_with("serving http on "), "{ready:?}");
    addr
}

fn expect_stopping(manager: &Manager, child: Proc) -> String {
    common::signal(child.id(), "TERM");
    let stopping = manager
        .recv(Duration::from_secs(30))
        .expect("no message after SIGTERM");
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping:?}");
    let (status, log) = child.exit();
    assert!(status.success(), "{status:?}");
    log
}

#[test]
fn ready_only_once_the_port_accepts_and_stopping_on_sigterm() {
    let data = TempDir::new("notify");
    let manager = Manager::bind(&data);
    // A fixed port chosen now, so that a prober can knock before the registry is up.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child =
        Proc::spawn(serve(&data, &format!("127.0.0.1:{port}")).env("NOTIFY_SOCKET", &manager.path));
    let addr = expect_ready(&manager, &child);
    assert_eq!(addr.port(), port);
    let c = Client::new(addr);
    assert_eq!(c.get("/v2/").status, 200);
    // Nothing else is sent while serving.
    assert_eq!(manager.recv(Duration::from_millis(300)), None);
    let log = expect_stopping(&manager, child);
    assert!(log.contains("stopped"), "{log}");

    // The abstract namespace ("@name"), as systemd also hands out.
    let manager = Manager::abstract_namespace();
    let child = Proc::spawn(serve(&data, "127.0.0.1:0").env("NOTIFY_SOCKET", &manager.path));
    let addr = expect_ready(&manager, &child);
    assert_eq!(Client::new(addr).get("/v2/").status, 200);
    expect_stopping(&manager, child);
}

#[test]
fn no_ready_when_the_registry_cannot_start() {
    let data = TempDir::new("notify-fail");
    let manager = Manager::bind(&data);
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let child = Proc::spawn(serve(&data, &addr).env("NOTIFY_SOCKET", &manager.path));
    let (status, log) = child.exit();
    assert_eq!(status.code(), Some(1));
    assert!(log.contains(&format!("cannot listen on {addr}")), "{log}");
    assert_eq!(manager.recv(Duration::from_millis(200)), None);
}

/// `outpost serve` on `listen`, started by a shell that first runs `setup` (variables that
/// need the final process's pid or descriptors, as systemd sets them), then execs it.
fn through_shell(data: &TempDir, listen: &str, setup: &str) -> Command {
    let inner = serve(data, listen);
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("{setup} exec \"$@\""))
        .arg("sh")
        .arg(inner.get_program())
        .args(inner.get_args())
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    c
}

/// Starts `outpost serve` with `listener` as fd 3 and LISTEN_FDS=`fds`, LISTEN_PID its own pid
/// (or `pid`).
fn activated(data: &TempDir, listener: &TcpListener, fds: &str, pid: Option<&str>) -> Command {
    let fd = listener.as_raw_fd();
    let setup = format!("LISTEN_PID={}", pid.unwrap_or("$$"));
    let mut c = through_shell(data, "127.0.0.1:0", &setup);
    c.env("LISTEN_FDS", fds);
    // SAFETY: dup2 and fcntl are async-signal-safe; nothing else runs in the forked child.
    unsafe {
        c.pre_exec(move || {
            if fd == 3 {
                libc::fcntl(3, libc::F_SETFD, 0);
            } else if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    c
}

#[test]
fn socket_activation_serves_on_the_passed_socket() {
    let data = TempDir::new("activation");
    let manager = Manager::bind(&data);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let child =
        Proc::spawn(activated(&data, &listener, "1", None).env("NOTIFY_SOCKET", &manager.path));
    // Connections made before the registry runs wait in the socket's backlog.
    let early = std::thread::spawn(move || Client::new(addr).get("/v2/").status);
    assert_eq!(expect_ready(&manager, &child), addr);
    assert_eq!(early.join().unwrap(), 200);
    let (digest, put) = Client::new(addr).push_blob("fleet/app", b"passed socket");
    assert_eq!(put.status, 201);
    let got = Client::new(addr).get(&format!("/v2/fleet/app/blobs/{digest}"));
    assert_eq!(got.body, b"passed socket");
    let log = expect_stopping(&manager, child);
    assert!(log.contains("socket passed by systemd"), "{log}");
    assert!(log.contains(&format!("listening on {addr}")), "{log}");

    // Meant for another process (LISTEN_PID differs): ignored, --listen applies.
    let child = Proc::spawn(
        activated(&data, &listener, "1", Some("1")).env("NOTIFY_SOCKET", &manager.path),
    );
    let own = expect_ready(&manager, &child);
    assert_ne!(own, addr);
    let log = expect_stopping(&manager, child);
    assert!(!log.contains("socket passed by systemd"), "{log}");

    // Two sockets, or one that is not a listening TCP socket: refused with what to fix.
    let child = Proc::spawn(&mut activated(&data, &listener, "2", None));
    let (status, log) = child.exit();
    assert!(
        !status.success() && log.contains("exactly one socket"),
        "{log}"
    );
    let connected = std::net::TcpStream::connect(addr).unwrap();
    // A connected stream is a TCP socket that does not listen.
    let as_listener = unsafe {
        use std::os::fd::FromRawFd;
        std::mem::ManuallyDrop::new(TcpListener::from_raw_fd(connected.as_raw_fd()))
    };
    let child = Proc::spawn(&mut activated(&data, &as_listener, "1", None));
    let (status, log) = child.exit();
    assert!(
        !status.success() && log.contains("not a listening TCP socket"),
        "{log}"
    );
}

#[test]
fn log_lines_carry_journal_priorities_when_stderr_is_the_journal() {
    let data = TempDir::new("journal");
    let manager = Manager::bind(&data);
    // JOURNAL_STREAM names stderr's device and inode, as systemd sets it.
    let journal = |listen: &str| {
        let mut c = through_shell(
            &data,
            listen,
            "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2)",
        );
        c.env("NOTIFY_SOCKET", &manager.path);
        c
    };
    let child = Proc::spawn(&mut journal("127.0.0.1:0"));
    expect_ready(&manager, &child);
    let log = expect_stopping(&manager, child);
    assert!(log.lines().any(|l| l.starts_with("<6>")), "{log}");
    assert!(!log.contains(" INFO "), "{log}");
    // A fatal error at start too.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let out = journal(&taken.local_addr().unwrap().to_string())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("<3>outpost: cannot listen"), "{log}");

    // Elsewhere (JOURNAL_STREAM for another file): level names as usual.
    let out = serve(&data, &taken.local_addr().unwrap().to_string())
        .env("JOURNAL_STREAM", "1:1")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("outpost: cannot listen"), "{log}");
    assert!(!log.contains("<3>"), "{log}");
}

#[test]
fn the_install_steps_config_serves_as_documented() {
    // The config that systemd/README.md tells operators to write, started the way the unit
    // starts it (serve --config FILE --data-dir DIR), on a test port.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/systemd/README.md")).unwrap();
    let json = readme
        .split("<<'JSON'\n")
        .nth(1)
        .and_then(|rest| rest.split("\nJSON\n").next())
        .expect("README has the config heredoc");
    let dir = TempDir::new("install-config");
    let config = dir.path().join("outpost.json");
    std::fs::write(&config, json).unwrap();
    let data = dir.path().join("data");
    let reg = common::Registry::start_with(&data, &["--config", config.to_str().unwrap()]);
    // Its own address rather than the config's port 5000, which may be someone else's.
    let listen = reg.addr.to_string();
    let out = common::outpost_stdin(
        &[
            "user",
            "add",
            "admin",
            "--config",
            config.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            &listen,
        ],
        "admin-password-1\n",
    );
    assert!(out.status.success(), "{}", common::text(&out));
    let anonymous = reg.client();
    let admin = reg.client().as_user("admin", "admin-password-1");
    assert_eq!(admin.get("/v2/").status, 200);
    assert_eq!(anonymous.get("/v2/site/app/tags/list").status, 404); // may pull
    assert_eq!(
        anonymous
            .req(
                "POST",
                "/v2/site/app/blobs/uploads/",
                &[],
                common::Body::None
            )
            .status,
        401
    );
    let (digest, put) = admin.push_blob("site/app", b"documented");
    assert_eq!(put.status, 201);
    assert_eq!(
        anonymous.get(&format!("/v2/site/app/blobs/{digest}")).body,
        b"documented"
    );
    assert_eq!(admin.get("/admin/settings").status, 200);
}

/// The next message that is not `WATCHDOG=1`, within `limit`; how many pings came before it.
fn next_besides_pings(manager: &Manager, limit: Duration) -> (Option<String>, usize) {
    let until = std::time::Instant::now() + limit;
    let mut pings = 0;
    while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
        match manager.recv(left) {
            Some(m) if m == "WATCHDOG=1" => pings += 1,
            other => return (other, pings),
        }
    }
    (None, pings)
}

#[test]
fn the_watchdog_is_fed_only_while_connections_make_progress() {
    let data = TempDir::new("watchdog");
    let manager = Manager::bind(&data);
    // An upstream that takes connections (the kernel does, in its backlog) and never answers:
    // pulls through the cache wait on it, not on their clients.
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let config = data.path().join("config.json");
    let mirrors = serde_json::json!({"mirrors": [{"name": "hub", "pullThrough": "hub",
        "upstream": format!("http://{}", upstream.local_addr().unwrap())}]});
    std::fs::write(&config, mirrors.to_string()).unwrap();
    let child = Proc::spawn(
        serve(&data, "127.0.0.1:0")
            .args(["--config", config.to_str().unwrap()])
            .args(["--max-connections", "2", "--io-timeout", "1s"])
            .env("NOTIFY_SOCKET", &manager.path)
            .env("WATCHDOG_USEC", "400000"),
    );
    let addr = expect_ready(&manager, &child);
    // Fed every 200 ms while all is well.
    let (none, pings) = next_besides_pings(&manager, Duration::from_secs(2));
    assert_eq!(none, None);
    assert!(pings >= 5, "{pings} pings in 2 s");
    // Both connections taken by pulls that never progress: once that lasts 2 × ioTimeout,
    // no more pings, and the log says why.
    let stuck: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut s = std::net::TcpStream::connect(addr).unwrap();
                let pull = b"GET /v2/hub/library/x/manifests/1 HTTP/1.1\r\nHost: x\r\n\r\n";
                std::io::Write::write_all(&mut s, pull).unwrap();
                let r = common::read_response(&mut std::io::BufReader::new(&s), false);
                (s, r.status)
            })
        })
        .collect();
    let until = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let (none, pings) = next_besides_pings(&manager, Duration::from_millis(1500));
        assert_eq!(none, None);
        if pings == 0 {
            break;
        }
        assert!(std::time::Instant::now() < until, "still fed while wedged");
    }
    // The upstream goes away: the pulls fail and are answered (503: the upstream failed, the
    // image may well exist), pings resume, though both connections stay open (idle ones can
    // be closed for a new client: not wedged).
    drop(upstream);
    let idle: Vec<_> = stuck.into_iter().map(|t| t.join().unwrap()).collect();
    assert!(
        idle.iter().all(|(_, status)| *status == 503),
        "{:?}",
        idle.iter().map(|i| i.1).collect::<Vec<_>>()
    );
    let (none, pings) = next_besides_pings(&manager, Duration::from_secs(3));
    assert!(none.is_none() && pings >= 3, "{none:?} {pings}");
    drop(idle);
    common::signal(child.id(), "TERM");
    let (stopping, _) = next_besides_pings(&manager, Duration::from_secs(30));
    assert!(stopping.is_some_and(|m| m.contains("STOPPING=1")));
    let (status, log) = child.exit();
    assert!(status.success(), "{status:?}");
    assert!(
        log.contains("none has answered, ended or moved a byte"),
        "{log}"
    );
}

#[test]
fn a_lost_listener_ends_the_process_with_an_error() {
    // A listener that fails for good (here: shut down under it) must not leave a process that
    // lives on without a port: it exits non-zero, so that systemd's Restart= restarts it.
    let data = TempDir::new("lost-listener");
    let manager = Manager::bind(&data);
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let child =
        Proc::spawn(activated(&data, &listener, "1", None).env("NOTIFY_SOCKET", &manager.path));
    let addr = expect_ready(&manager, &child);
    assert_eq!(Client::new(addr).get("/v2/").status, 200);
    // SAFETY: shutdown on a descriptor this test owns.
    assert_eq!(
        unsafe { libc::shutdown(listener.as_raw_fd(), libc::SHUT_RDWR) },
        0
    );
    let (status, log) = child.exit();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("the listening socket failed"), "{log}");
}

/// A store file as a crash during a compaction or a repair leaves it: the last durable commit
/// saved no allocator state (redb's default; every commit of Outpost's saves it), and the
/// file was never closed (copied while open).
fn store_needing_full_repair(data: &TempDir) {
    let scratch = data.path().join("made.redb");
    let db = redb::Database::create(&scratch).unwrap();
    let tx = db.begin_write().unwrap();
    let table = redb::TableDefinition::<u64, &[u8]>::new("filler");
    tx.open_table(table)
        .unwrap()
        .insert(1, &[7u8; 4096][..])
        .unwrap();
    tx.commit().unwrap();
    std::fs::copy(&scratch, data.path().join("outpost.redb")).unwrap();
    drop(db);
    std::fs::remove_file(scratch).unwrap();
}

#[test]
fn a_full_repair_at_start_asks_systemd_for_time_and_a_crash_needs_none() {
    let data = TempDir::new("notify-repair");
    store_needing_full_repair(&data);
    let manager = Manager::bind(&data);
    let child = Proc::spawn(serve(&data, "127.0.0.1:0").env("NOTIFY_SOCKET", &manager.path));
    let first = manager
        .recv(Duration::from_secs(60))
        .expect("no message within 60 s");
    let extend: u64 = field(&first, "EXTEND_TIMEOUT_USEC")
        .unwrap_or_else(|| panic!("a full repair did not extend the start timeout: {first:?}"))
        .parse()
        .unwrap();
    // A pass's budget: a minute plus the file at 2 MB/s.
    assert!(extend >= 60_000_000, "{first:?}");
    assert!(
        field(&first, "STATUS").is_some_and(|s| s.starts_with("repairing the store")),
        "{first:?}"
    );
    // Then one message a pass until READY=1.
    let ready = loop {
        let m = manager
            .recv(Duration::from_secs(60))
            .expect("no READY=1 within 60 s");
        if field(&m, "READY").is_some() {
            break m;
        }
        assert!(field(&m, "EXTEND_TIMEOUT_USEC").is_some(), "{m:?}");
    };
    let addr: SocketAddr = field(&ready, "STATUS")
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let c = Client::new(addr);
    let (digest, r) = c.push_blob("after/repair", b"pushed after the repair");
    assert_eq!(r.status, 201);
    let log = child_log_after_kill(child);
    assert!(log.contains("must be walked whole to be repaired"), "{log}");

    // Killed after Outpost's own commits: the restart loads the saved allocator state and
    // asks for no time; what was acknowledged is there.
    let child = Proc::spawn(serve(&data, "127.0.0.1:0").env("NOTIFY_SOCKET", &manager.path));
    let addr = expect_ready(&manager, &child);
    let path = format!("/v2/after/repair/blobs/{digest}");
    assert_eq!(Client::new(addr).get(&path).status, 200);
    let log = child_log_after_kill(child);
    assert!(!log.contains("repaired"), "{log}");
}

/// SIGKILLs the child (a crash) and returns its stderr.
fn child_log_after_kill(child: Proc) -> String {
    common::signal(child.id(), "KILL");
    child.exit().1
}
