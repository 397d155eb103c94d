//! The accept loop: hands connections to the pool, answers 503 beyond its limit, survives
//! accept and thread-start failures (logged at most every few seconds, retried with
//! back-off), and reports a listener that is gone for good, so the process can exit and
//! systemd restart it.

use super::pool::{Admission, Incoming, Pool};
use super::{Backoff, Throttled};
use crate::metrics::Busy;
use std::io::{ErrorKind, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// How long the accept loop sleeps in `poll` at most, so it notices a stop and shows it lives.
const TICK: Duration = Duration::from_millis(500);
/// A refused connection is read and dropped for this long before it is closed, so the client
/// reads the 503 instead of a reset.
const LINGER: Duration = Duration::from_secs(2);
/// Refused connections lingering at once (held, and handed over but not yet taken); more are
/// closed at once.
const MAX_LINGERING: usize = 256;
const MAX_HANDED: usize = 64;

/// A listening socket of either kind.
pub enum Listening {
    /// The registry's port.
    Tcp(TcpListener),
    /// The admin socket.
    Unix(UnixListener),
}

impl Listening {
    fn fd(&self) -> RawFd {
        match self {
            Listening::Tcp(l) => l.as_raw_fd(),
            Listening::Unix(l) => l.as_raw_fd(),
        }
    }

    fn accept(&self) -> std::io::Result<Incoming> {
        match self {
            Listening::Tcp(l) => l.accept().map(|(s, _)| Incoming::Tcp(s)),
            Listening::Unix(l) => l.accept().map(|(s, _)| Incoming::Unix(s)),
        }
    }
}

/// Proof of life of an accept loop, for the watchdog.
pub struct Heartbeat {
    epoch: Instant,
    /// Milliseconds from `epoch` to the loop's last round.
    last: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Heartbeat {
        Heartbeat {
            epoch: Instant::now(),
            last: AtomicU64::new(0),
        }
    }
}

impl Heartbeat {
    fn beat(&self) {
        let now = self.epoch.elapsed().as_millis() as u64;
        self.last.store(now, Ordering::Relaxed);
    }

    /// Time since the loop last went round.
    pub fn age(&self) -> Duration {
        let last = Duration::from_millis(self.last.load(Ordering::Relaxed));
        self.epoch.elapsed().saturating_sub(last)
    }
}

/// Accept errors that say nothing about the listener itself: a connection that died before it
/// was taken, a full descriptor table or memory, a signal. Anything else means the listening
/// socket is gone.
fn transient(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::WouldBlock
            | ErrorKind::Interrupted
            | ErrorKind::ConnectionAborted
            | ErrorKind::ConnectionReset
            | ErrorKind::OutOfMemory
    ) || matches!(
        e.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EPROTO
                | libc::EPERM
                | libc::ENETDOWN
                | libc::ENOPROTOOPT
                | libc::EHOSTDOWN
                | libc::ENONET
                | libc::EHOSTUNREACH
                | libc::EOPNOTSUPP
                | libc::ENETUNREACH
                | libc::ETIMEDOUT
        )
    )
}

/// Waits until `fd` has a connection to accept or `TICK` passes; true if one is there.
fn ready(fd: RawFd) -> bool {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call.
    let n = unsafe { libc::poll(&mut p, 1, TICK.as_millis() as libc::c_int) };
    // An error (EINTR) or a condition on the socket: let accept tell what it is.
    n != 0
}

/// Accepts connections into `pool` until `stopping`; `refusal` is the whole HTTP response a
/// connection gets when the pool has no room for it (empty: it is closed). Returns an error
/// if the listener fails for good.
pub fn accept_loop(
    listening: &Listening,
    pool: &Pool,
    refusal: &[u8],
    stopping: &AtomicBool,
    heartbeat: &Heartbeat,
) -> Result<(), String> {
    static ACCEPT: Throttled = Throttled::new(Duration::from_secs(10));
    static THREAD: Throttled = Throttled::new(Duration::from_secs(10));
    static FULL: Throttled = Throttled::new(Duration::from_secs(10));
    match listening {
        Listening::Tcp(l) => l.set_nonblocking(true),
        Listening::Unix(l) => l.set_nonblocking(true),
    }
    .map_err(|e| format!("the listening socket failed: {e}"))?;
    let lingerer = Lingerer::start();
    let mut backoff = Backoff::default();
    while !stopping.load(Ordering::Relaxed) {
        heartbeat.beat();
        if !ready(listening.fd()) {
            continue;
        }
        let conn = match listening.accept() {
            // Blocking, with per-phase timeouts (the listener itself polls without blocking).
            Ok(c) => match c.blocking() {
                Ok(c) => c,
                Err(_) => continue,
            },
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                continue
            }
            Err(e) if transient(&e) => {
                ACCEPT.warn(|| format!("cannot accept a connection: {e}; retrying"));
                std::thread::sleep(backoff.next());
                continue;
            }
            Err(e) => return Err(format!("the listening socket failed: {e}")),
        };
        match pool.admit(conn) {
            Admission::Served => backoff.reset(),
            Admission::Full(conn) => {
                crate::metrics::get().busy(Busy::MaxConnections);
                FULL.warn(|| {
                    format!(
                        "{} connections are open (maxConnections), none idle or behind: new \
                         ones are refused until some end",
                        pool.load().busy
                    )
                });
                refuse(conn, refusal, &lingerer);
            }
            Admission::NoThread(conn, e) => {
                crate::metrics::get().busy(Busy::NoThread);
                THREAD.warn(|| {
                    format!(
                        "cannot start a thread for a connection: {e} (a thread or memory \
                         limit, e.g. the unit's TasksMax); answering 503 until threads free up"
                    )
                });
                refuse(conn, refusal, &lingerer);
            }
        }
    }
    Ok(())
}

/// Answers `refusal` and closes gently (through the lingerer); with no refusal (a TLS port:
/// a plain answer would only garble the handshake), just closes.
fn refuse(conn: Incoming, refusal: &[u8], lingerer: &Lingerer) {
    let Incoming::Tcp(mut s) = conn else {
        return; // the admin socket's few clients just see it close
    };
    if refusal.is_empty() {
        return;
    }
    // A fresh socket's send buffer takes a short answer at once; a peer that cannot take it
    // is not waited for.
    let _ = s.set_write_timeout(Some(Duration::from_millis(100)));
    if s.write_all(refusal).is_ok() {
        let _ = s.shutdown(Shutdown::Write);
        // What already arrived is read now: should the socket close at once (no lingerer),
        // unread input would turn the close into a reset.
        let _ = s.set_nonblocking(true);
        let mut buf = [0u8; 4096];
        while matches!(std::io::Read::read(&mut s, &mut buf), Ok(n) if n > 0) {}
        lingerer.hand(s);
    }
}

/// Holds refused connections for a moment, reading and dropping what their clients send, and
/// then closes them: closing a socket with unread input resets it, and the reset can destroy
/// the 503 before the client reads it.
struct Lingerer(Option<mpsc::SyncSender<TcpStream>>);

impl Lingerer {
    fn start() -> Lingerer {
        let (tx, rx) = mpsc::sync_channel::<TcpStream>(MAX_HANDED);
        let started = std::thread::Builder::new()
            .name("linger".into())
            .stack_size(64 << 10)
            .spawn(move || linger(&rx));
        Lingerer(started.ok().map(|_| tx))
    }

    /// Takes `s` over, or drops (closes) it at once if too many linger already.
    fn hand(&self, s: TcpStream) {
        if let Some(tx) = &self.0 {
            let _ = tx.try_send(s);
        }
    }
}

fn linger(rx: &mpsc::Receiver<TcpStream>) {
    let mut held: Vec<(TcpStream, Instant)> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if held.is_empty() {
            match rx.recv() {
                Ok(s) => held.push((s, Instant::now() + LINGER)),
                Err(_) => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            if held.len() < MAX_LINGERING {
                held.push((s, Instant::now() + LINGER));
            }
        }
        let now = Instant::now();
        held.retain_mut(|(s, until)| {
            if now >= *until || s.set_nonblocking(true).is_err() {
                return false;
            }
            loop {
                match std::io::Read::read(s, &mut buf) {
                    Ok(0) => return false,
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => return true,
                    Err(_) => return false,
                }
            }
        });
        std::thread::sleep(Duration::from_millis(50));
    }
}
