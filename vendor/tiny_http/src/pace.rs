//! Outpost patch: per-phase time limits of a connection, enforced on the socket itself.
//!
//! A request head must arrive within a deadline; a kept-alive connection may idle for a while;
//! a body or a response must keep a minimum average rate over a window of time spent waiting
//! on the peer (time the handler spends elsewhere does not count). Upstream had one per-read
//! no-progress timer at most, so one byte per interval held a connection (and a thread) forever.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::connection::Connection;

/// How long a connection may take in each phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// A request line and its headers must arrive within this, counted from the accept for a
    /// connection's first request (a TLS handshake included), else from the request's first byte.
    pub head: Duration,
    /// How long a kept-alive connection may wait for its next request.
    pub idle: Duration,
    /// Reading a body or writing a response: every `window` spent waiting on the peer must move
    /// at least `min_rate × window` bytes, else the connection is cut.
    pub window: Duration,
    /// Bytes per second, averaged over `window`; 0 only asks for some progress per window.
    pub min_rate: u64,
    /// Bytes of a request body the handler did not read that are read and dropped to keep the
    /// connection; with more left, the connection is closed after the response instead.
    pub drain: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            head: Duration::from_secs(10),
            idle: Duration::from_secs(60),
            window: Duration::from_secs(120),
            min_rate: 1024,
            drain: 64 * 1024,
        }
    }
}

#[derive(Clone, Copy, Debug)]
enum Phase {
    /// Reading a request head, until the deadline.
    Head(Instant),
    /// Waiting for a request since the first instant, until the second (its first byte
    /// starts `Head`).
    Idle(Instant, Instant),
    /// Bodies and responses: the rate windows apply.
    Transfer,
}

/// Time spent waiting on the peer in the current window, and the bytes it moved.
#[derive(Clone, Copy, Debug, Default)]
struct Window {
    waited: Duration,
    bytes: u64,
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

struct State {
    phase: Phase,
    read: Window,
    write: Window,
    /// Since when a read or write waits on the peer without a byte moving, if one does.
    waiting: Option<Instant>,
}

/// The phase and timers of one connection, shared by its read and write halves.
pub(crate) struct Pace {
    limits: Limits,
    state: Mutex<State>,
    /// Set when the connection must close after the current response.
    close: AtomicBool,
}

/// Why a phase ran out, as the error a read or write returns.
fn expired(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, what.to_owned())
}

impl Pace {
    /// A connection accepted now: its first request is due to begin within `limits.head`.
    pub(crate) fn new(limits: Limits) -> Pace {
        let now = Instant::now();
        Pace {
            limits,
            state: Mutex::new(State {
                phase: Phase::Idle(now, now + limits.head),
                read: Window::default(),
                write: Window::default(),
                waiting: None,
            }),
            close: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Between requests: the next one may take `limits.idle` to begin.
    pub(crate) fn idle(&self) {
        let mut st = self.lock();
        let now = Instant::now();
        st.phase = Phase::Idle(now, now + self.limits.idle);
        st.write = Window::default();
    }

    /// The head is in: from now on the body and the response run on rate windows.
    pub(crate) fn transfer(&self) {
        let mut st = self.lock();
        st.phase = Phase::Transfer;
        st.read = Window::default();
    }

    /// Reads must end within `limit` from now (draining a body before an answer).
    pub(crate) fn deadline(&self, limit: Duration) {
        self.lock().phase = Phase::Head(Instant::now() + limit);
    }

    /// Since when the connection waits for a request that has not begun (the accept, for a
    /// first request), if it does.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        match self.lock().phase {
            Phase::Idle(since, _) => Some(since),
            _ => None,
        }
    }

    /// Since when the connection waits on its peer without a byte moving: a request that has
    /// not begun, or a read or write of one that is stuck.
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        let st = self.lock();
        match st.phase {
            Phase::Idle(since, _) => Some(since),
            _ => st.waiting,
        }
    }

    /// The connection is to close after the current response.
    pub(crate) fn set_close(&self) {
        self.close.store(true, Ordering::Relaxed);
    }

    pub(crate) fn closing(&self) -> bool {
        self.close.load(Ordering::Relaxed)
    }

    /// How long the next call in `dir` may block, or the error if its phase ran out.
    fn budget(&self, dir: Dir) -> io::Result<Duration> {
        let now = Instant::now();
        let st = self.lock();
        let left = match (dir, st.phase) {
            (Dir::Read, Phase::Head(deadline)) => deadline
                .checked_duration_since(now)
                .ok_or_else(|| expired("request head not received in time"))?,
            (Dir::Read, Phase::Idle(_, until)) => until
                .checked_duration_since(now)
                .ok_or_else(|| expired("idle connection"))?,
            (dir, _) => {
                let w = if dir == Dir::Read { st.read } else { st.write };
                self.limits.window.checked_sub(w.waited).ok_or_else(|| {
                    expired(&format!(
                        "{} slower than {} bytes/s over {:?}",
                        if dir == Dir::Read { "request body" } else { "response" },
                        self.limits.min_rate,
                        self.limits.window
                    ))
                })?
            }
        };
        if left.is_zero() {
            return Err(expired("time limit reached"));
        }
        Ok(left)
    }

    /// A read or write begins to wait on the peer (`Some`), or moved bytes or ended (`None`).
    fn wait(&self, since: Option<Instant>) {
        self.lock().waiting = since;
    }

    /// Counts a call in `dir` that waited `waited` and moved `n` bytes.
    fn account(&self, dir: Dir, waited: Duration, n: usize) {
        let mut st = self.lock();
        match (dir, st.phase) {
            (Dir::Read, Phase::Idle(..)) if n > 0 => {
                st.phase = Phase::Head(Instant::now() + self.limits.head)
            }
            (Dir::Read, Phase::Head(_) | Phase::Idle(..)) => {}
            _ => {
                let need = self
                    .limits
                    .min_rate
                    .saturating_mul(self.limits.window.as_secs().max(1));
                let w = if dir == Dir::Read {
                    &mut st.read
                } else {
                    &mut st.write
                };
                w.waited += waited;
                w.bytes += n as u64;
                if n > 0 && w.bytes >= need {
                    // The window's due is met: a new one starts.
                    *w = Window::default();
                }
            }
        }
    }
}

/// A connection's socket under its `Pace`: every read and write blocks at most as long as the
/// current phase allows. Cloning shares the socket (no `dup`) and the pace.
#[derive(Clone)]
pub(crate) struct PacedStream {
    conn: Arc<Connection>,
    pace: Arc<Pace>,
    /// Socket timeouts this handle last set (each direction is set by one handle only).
    read_set: Option<Duration>,
    write_set: Option<Duration>,
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// True if a socket timeout of `set` serves a budget of `want`: it neither overshoots by more
/// than a second nor wakes up needlessly early (each wake-up re-checks the budget, so an early
/// one only costs a system call).
fn close_enough(set: Option<Duration>, want: Duration) -> bool {
    set.is_some_and(|s| s <= want + Duration::from_secs(1) && s >= want / 2)
}

impl PacedStream {
    pub(crate) fn new(conn: Arc<Connection>, pace: Arc<Pace>) -> PacedStream {
        PacedStream {
            conn,
            pace,
            read_set: None,
            write_set: None,
        }
    }

    pub(crate) fn connection(&self) -> &Arc<Connection> {
        &self.conn
    }

    pub(crate) fn pace(&self) -> &Arc<Pace> {
        &self.pace
    }

    fn arm(&mut self, dir: Dir, want: Duration) -> io::Result<()> {
        let want = want.max(Duration::from_millis(1));
        let set = if dir == Dir::Read {
            &mut self.read_set
        } else {
            &mut self.write_set
        };
        if close_enough(*set, want) {
            return Ok(());
        }
        match dir {
            Dir::Read => self.conn.set_read_timeout(want)?,
            Dir::Write => self.conn.set_write_timeout(want)?,
        }
        *set = Some(want);
        Ok(())
    }

    fn paced<T>(
        &mut self,
        dir: Dir,
        mut io: impl FnMut(&Connection) -> io::Result<T>,
        moved: impl Fn(&T) -> usize,
    ) -> io::Result<T> {
        self.pace.wait(Some(Instant::now()));
        let result = loop {
            let budget = match self.pace.budget(dir) {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            if let Err(e) = self.arm(dir, budget) {
                break Err(e);
            }
            let t0 = Instant::now();
            match io(&self.conn) {
                Ok(v) => {
                    self.pace.account(dir, t0.elapsed(), moved(&v));
                    break Ok(v);
                }
                Err(e) if is_timeout(&e) => self.pace.account(dir, t0.elapsed(), 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        self.pace.wait(None);
        result
    }
}

/// Outpost patch: the socket of a plain-HTTP response, for a body sent in steps that never
/// hold data while the client is slow: `wait_room` blocks until the socket can take more
/// (that wait counts against the minimum transfer rate like a blocked write), `send_some`
/// writes what it takes now. The response's head must have been written and flushed first.
pub struct RawBody(PacedStream);

impl RawBody {
    pub(crate) fn new(stream: PacedStream) -> RawBody {
        RawBody(stream)
    }

    /// Waits until the client's socket can take more bytes, within the write window, for at
    /// most `limit` if given; false if `limit` passed first.
    pub fn wait_room(&mut self, limit: Option<Duration>) -> io::Result<bool> {
        let s = &mut self.0;
        let until = limit.map(|l| Instant::now() + l);
        s.pace.wait(Some(Instant::now()));
        let result = loop {
            let mut budget = match s.pace.budget(Dir::Write) {
                Ok(b) => b,
                Err(e) => break Err(e),
            };
            if let Some(until) = until {
                match until.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => budget = budget.min(left),
                    _ => break Ok(false),
                }
            }
            let t0 = Instant::now();
            match poll_out(s.conn.raw_fd(), budget) {
                Ok(true) => break Ok(true),
                Ok(false) => s.pace.account(Dir::Write, t0.elapsed(), 0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        s.pace.wait(None);
        result
    }

    /// Writes as much of `buf` as the socket takes without waiting; 0 if it takes nothing now.
    pub fn send_some(&mut self, buf: &[u8]) -> io::Result<usize> {
        let s = &mut self.0;
        loop {
            match send_now(s.conn.raw_fd(), buf) {
                Ok(n) => {
                    s.pace.account(Dir::Write, Duration::ZERO, n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// poll(2) for `POLLOUT` on `fd` for at most `limit`; true if the socket can take bytes (or
/// has an error or hang-up for the next write to report).
#[allow(unsafe_code)]
fn poll_out(fd: std::os::fd::RawFd, limit: Duration) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLOUT,
        revents: 0,
    };
    let ms = limit.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
    // SAFETY: one pollfd, valid for the call.
    match unsafe { libc::poll(&mut p, 1, ms) } {
        -1 => Err(io::Error::last_os_error()),
        n => Ok(n > 0),
    }
}

/// send(2) without waiting (and without SIGPIPE).
#[allow(unsafe_code)]
fn send_now(fd: std::os::fd::RawFd, buf: &[u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for its length for the call.
    let n = unsafe {
        libc::send(
            fd,
            buf.as_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

impl Read for PacedStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.paced(Dir::Read, |c| c.read_shared(buf), |n| *n)
    }
}

impl Write for PacedStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.paced(Dir::Write, |c| c.write_shared(buf), |n| *n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(window: u64, rate: u64) -> Limits {
        Limits {
            head: Duration::from_secs(5),
            idle: Duration::from_secs(7),
            window: Duration::from_secs(window),
            min_rate: rate,
            drain: 0,
        }
    }

    #[test]
    fn a_window_needs_its_bytes() {
        let p = Pace::new(limits(10, 100));
        p.transfer();
        // 999 bytes over 9 s of waiting: not yet due, one second left.
        p.account(Dir::Read, Duration::from_secs(9), 999);
        let left = p.budget(Dir::Read).unwrap();
        assert!(left <= Duration::from_secs(1), "{left:?}");
        // The 1000th byte meets the window's due: a fresh window.
        p.account(Dir::Read, Duration::from_millis(500), 1);
        assert_eq!(p.budget(Dir::Read).unwrap(), Duration::from_secs(10));
        // A full window of waiting with too little: cut.
        p.account(Dir::Read, Duration::from_secs(10), 10);
        let e = p.budget(Dir::Read).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // Writes have their own window.
        assert_eq!(p.budget(Dir::Write).unwrap(), Duration::from_secs(10));
    }

    #[test]
    fn rate_zero_asks_for_progress_only() {
        let p = Pace::new(limits(10, 0));
        p.transfer();
        p.account(Dir::Write, Duration::from_secs(9), 1);
        assert_eq!(p.budget(Dir::Write).unwrap(), Duration::from_secs(10));
        p.account(Dir::Write, Duration::from_secs(10), 0);
        assert!(p.budget(Dir::Write).is_err());
    }

    #[test]
    fn idle_then_head() {
        // A new connection idles until its first byte, for the head's time at most.
        let p = Pace::new(limits(10, 0));
        assert!(p.idle_since().is_some());
        assert!(p.budget(Dir::Read).unwrap() <= Duration::from_secs(5));
        p.idle();
        assert!(p.idle_since().is_some());
        let left = p.budget(Dir::Read).unwrap();
        assert!(left > Duration::from_secs(6) && left <= Duration::from_secs(7));
        // The first byte of the next request: the head deadline applies.
        p.account(Dir::Read, Duration::ZERO, 1);
        assert!(p.idle_since().is_none());
        assert!(p.budget(Dir::Read).unwrap() <= Duration::from_secs(5));
    }
}
