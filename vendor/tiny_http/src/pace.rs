//! Outpost patch: per-phase time limits of a connection, enforced on the socket itself.
//!
//! A request head must arrive within a deadline; a kept-alive connection may idle for a while;
//! a body or a response must keep a minimum average rate over a window of time spent waiting
//! on the peer (time the handler spends elsewhere does not count). Upstream had one per-read
//! no-progress timer at most, so one byte per interval held a connection (and a thread) forever.

use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::connection::Connection;

/// Bytes all connections moved (a sign of life for a watchdog).
static MOVED: AtomicU64 = AtomicU64::new(0);

/// Bytes all connections of this process have moved so far.
pub fn bytes_moved() -> u64 {
    MOVED.load(Ordering::Relaxed)
}

/// Bytes all connections read from their sockets, and wrote to them (not counting what a
/// blocked write saw drain from the send queue: those bytes were counted when written).
static RECEIVED: AtomicU64 = AtomicU64::new(0);
static SENT: AtomicU64 = AtomicU64::new(0);

/// Bytes all connections of this process have read from their peers so far.
pub fn bytes_received() -> u64 {
    RECEIVED.load(Ordering::Relaxed)
}

/// Bytes all connections of this process have written to their peers so far.
pub fn bytes_sent() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// Counts `n` bytes read or written by a socket call.
pub(crate) fn transferred(dir: Dir, n: usize) {
    let total = if dir == Dir::Read { &RECEIVED } else { &SENT };
    total.fetch_add(n as u64, Ordering::Relaxed);
}

/// Longest a single socket call blocks: a long wait is made of such slices, so that progress
/// within it (the client taking bytes from the send queue) is seen while it lasts.
pub(crate) const SLICE: Duration = Duration::from_millis(500);
/// A connection behind its minimum rate for this long (or in a head this long: a client sends
/// its head at once) may be closed to make room for another.
const BEHIND: Duration = Duration::from_secs(1);

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
    /// Reading a request head since the first instant, until the second.
    Head(Instant, Instant),
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

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Dir {
    Read,
    Write,
}

struct State {
    phase: Phase,
    read: Window,
    write: Window,
    /// The socket call waiting on the peer now, and since when, if one is.
    call: Option<(Dir, Instant)>,
    /// No request has begun yet: the first one's head is due by the accept's deadline.
    first: bool,
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
    /// A connection accepted now: its first request is due within `limits.head`.
    pub(crate) fn new(limits: Limits) -> Pace {
        let now = Instant::now();
        Pace {
            limits,
            state: Mutex::new(State {
                phase: Phase::Idle(now, now + limits.head),
                read: Window::default(),
                write: Window::default(),
                call: None,
                first: true,
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
        st.first = false;
    }

    /// The head is in: from now on the body and the response run on rate windows.
    pub(crate) fn transfer(&self) {
        let mut st = self.lock();
        st.phase = Phase::Transfer;
        st.read = Window::default();
    }

    /// Reads must end within `limit` from now (draining a body before an answer).
    pub(crate) fn deadline(&self, limit: Duration) {
        let now = Instant::now();
        self.lock().phase = Phase::Head(now, now + limit);
    }

    /// Since when the connection waits for a request that has not begun (the accept, for a
    /// first request), if it does.
    pub(crate) fn idle_since(&self) -> Option<Instant> {
        match self.lock().phase {
            Phase::Idle(since, _) => Some(since),
            _ => None,
        }
    }

    /// Since when the connection holds its place without earning it, if it does: it waits for
    /// a request that has not begun, or a head has been arriving for `BEHIND`, or its body or
    /// response has moved less than the minimum rate over at least `BEHIND` of waiting.
    pub(crate) fn behind_since(&self) -> Option<Instant> {
        let now = Instant::now();
        let st = self.lock();
        match st.phase {
            Phase::Idle(since, _) => Some(since),
            Phase::Head(since, _) => (now.duration_since(since) >= BEHIND).then_some(since),
            Phase::Transfer => [(Dir::Read, st.read), (Dir::Write, st.write)]
                .iter()
                .find_map(|&(dir, w)| {
                    let in_call = match st.call {
                        Some((d, t)) if d == dir => now.duration_since(t),
                        _ => Duration::ZERO,
                    };
                    let waited = w.waited + in_call;
                    let owed = (self.limits.min_rate as f64 * waited.as_secs_f64()).max(1.0);
                    (waited >= BEHIND && (w.bytes as f64) < owed)
                        .then(|| now.checked_sub(waited).unwrap_or(now))
                }),
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
    pub(crate) fn budget(&self, dir: Dir) -> io::Result<Duration> {
        let now = Instant::now();
        let st = self.lock();
        let left = match (dir, st.phase) {
            (Dir::Read, Phase::Head(_, until)) => until
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

    /// A socket call in `dir` begins to wait on the peer (`Some`), or ended (`None`).
    pub(crate) fn call(&self, call: Option<(Dir, Instant)>) {
        self.lock().call = call;
    }

    /// Counts a call in `dir` that waited `waited` and moved `n` bytes.
    pub(crate) fn account(&self, dir: Dir, waited: Duration, n: usize) {
        MOVED.fetch_add(n as u64, Ordering::Relaxed);
        let mut st = self.lock();
        match (dir, st.phase) {
            (Dir::Read, Phase::Idle(_, until)) if n > 0 => {
                let now = Instant::now();
                // A first request's head is due by the accept's deadline; a later one's
                // from its first byte.
                let due = if st.first {
                    until
                } else {
                    now + self.limits.head
                };
                st.phase = Phase::Head(now, due);
                st.first = false;
            }
            (Dir::Read, Phase::Head(..) | Phase::Idle(..)) => {}
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
    pub(crate) conn: Arc<Connection>,
    pub(crate) pace: Arc<Pace>,
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
        let mut queue = crate::raw::QueueWatch::default();
        loop {
            let budget = self.pace.budget(dir)?;
            self.arm(dir, budget.min(SLICE))?;
            let t0 = Instant::now();
            self.pace.call(Some((dir, t0)));
            let result = io(&self.conn);
            self.pace.call(None);
            match result {
                Ok(v) => {
                    transferred(dir, moved(&v));
                    self.pace.account(dir, t0.elapsed(), moved(&v));
                    return Ok(v);
                }
                Err(e) if is_timeout(&e) => {
                    // A blocked write still moves on while the client takes what is queued.
                    let drained = match dir {
                        Dir::Write => queue.drained(&self.conn),
                        Dir::Read => 0,
                    };
                    self.pace.account(dir, t0.elapsed(), drained);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
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

    #[test]
    fn a_first_head_is_due_by_the_accept_deadline() {
        let p = Pace::new(limits(10, 0));
        std::thread::sleep(Duration::from_millis(100));
        p.account(Dir::Read, Duration::ZERO, 1);
        // Not a fresh five seconds from the first byte: what is left of the accept's.
        assert!(p.budget(Dir::Read).unwrap() <= Duration::from_millis(4900));
    }

    #[test]
    fn behind_means_idle_a_slow_head_or_under_the_rate() {
        let p = Pace::new(limits(10, 100));
        assert!(p.behind_since().is_some(), "waiting for a first request");
        p.account(Dir::Read, Duration::ZERO, 1);
        assert!(p.behind_since().is_none(), "a head that just began");
        p.transfer();
        // 2 s of waiting for 150 bytes at 100 bytes/s owed: behind.
        p.account(Dir::Read, Duration::from_secs(2), 150);
        assert!(p.behind_since().is_some());
        // 300 more: on pace again.
        p.account(Dir::Read, Duration::ZERO, 300);
        assert!(p.behind_since().is_none());
        // A write blocked for a while without a byte counts while it lasts.
        let now = Instant::now();
        p.call(Some((Dir::Write, now - Duration::from_secs(3))));
        assert!(p.behind_since().is_some());
        p.call(None);
        assert!(p.behind_since().is_none());
    }
}
