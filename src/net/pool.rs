//! Connection threads: at most `max` connections are served at once, each by its own thread.
//! A thread whose connection ends takes the next queued one or waits a while for one, then
//! exits, so threads (and what they hold) follow the load instead of staying at the peak.

use std::collections::{HashMap, VecDeque};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tiny_http::ConnectionWatch;

/// Stack of a connection thread. Handlers are shallow (serde's recursion limit bounds JSON
/// depth); only touched pages cost memory, the rest is address space.
const STACK: usize = 512 << 10;
/// How long a thread without a connection waits for one before it exits.
const THREAD_TTL: Duration = Duration::from_secs(20);
/// Connections waiting for a slot that an idle connection is giving up.
const MAX_QUEUED: usize = 64;

/// An accepted connection.
pub enum Incoming {
    /// From the TCP listener (HTTP or HTTPS).
    Tcp(TcpStream),
    /// From the admin socket.
    Unix(UnixStream),
}

impl Incoming {
    /// The connection in blocking mode (the per-phase limits set its timeouts).
    pub fn blocking(self) -> std::io::Result<Incoming> {
        match &self {
            Incoming::Tcp(s) => s.set_nonblocking(false)?,
            Incoming::Unix(s) => s.set_nonblocking(false)?,
        }
        Ok(self)
    }
}

/// What became of a connection offered to the pool.
pub enum Admission {
    /// A thread serves it, now or as soon as the idle connection closed to make room is gone.
    Served,
    /// Every slot serves a connection that is not idle: refuse this one.
    Full(Incoming),
    /// No thread could be started for it (a thread or memory limit).
    NoThread(Incoming, std::io::Error),
}

/// Serves one connection, its requests in turn, on the calling thread.
pub type Serve = dyn Fn(Incoming, &Slot<'_>) + Send + Sync;

/// The connection threads of one listener.
pub struct Pool {
    inner: Arc<Inner>,
}

struct Inner {
    name: &'static str,
    max: usize,
    serve: Box<Serve>,
    state: Mutex<State>,
    /// Threads without a connection wait here.
    work: Condvar,
    /// `drain` waits here for the last connection to end.
    ended: Condvar,
    /// Requests answered and connections ended, for the watchdog: a full pool where neither
    /// happens for long is wedged.
    progress: AtomicU64,
    /// Set by `stop` (read on every request, without the lock).
    stopping: AtomicBool,
}

#[derive(Default)]
struct State {
    /// Connections served or queued for a thread.
    busy: usize,
    /// Threads alive, and those waiting for a connection.
    threads: usize,
    waiting: usize,
    queue: VecDeque<Incoming>,
    /// Connections being served, by slot id, for reclaiming idle ones and at shutdown.
    watches: HashMap<u64, ConnectionWatch>,
    next_id: u64,
    stopping: bool,
}

/// A connection's place in the pool, handed to `Serve`.
pub struct Slot<'a> {
    inner: &'a Inner,
    id: u64,
}

impl Slot<'_> {
    /// Registers the connection, so the pool can close it while it idles (to make room, or
    /// at shutdown).
    pub fn watch(&self, watch: ConnectionWatch) {
        let mut st = self.inner.lock();
        if st.stopping {
            watch.abort();
        }
        st.watches.insert(self.id, watch);
    }

    /// One request was answered.
    pub fn answered(&self) {
        self.inner.progress.fetch_add(1, Ordering::Relaxed);
    }

    /// True once the pool stops: finish the current request, then end the connection.
    pub fn stopping(&self) -> bool {
        self.inner.stopping.load(Ordering::Relaxed)
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.inner.lock().watches.remove(&self.id);
    }
}

/// How busy a pool is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Load {
    /// Connections served or queued.
    pub busy: usize,
    /// Of those, connections idle or behind (they can be closed for others).
    pub idle: usize,
    /// The most served at once.
    pub max: usize,
    /// Threads alive.
    pub threads: usize,
    /// Requests answered and connections ended since start.
    pub progress: u64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Pool {
    /// A pool serving at most `max` connections at once with `serve`; threads are named
    /// after `name`.
    pub fn new(name: &'static str, max: usize, serve: Box<Serve>) -> Pool {
        Pool {
            inner: Arc::new(Inner {
                name,
                max,
                serve,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
                ended: Condvar::new(),
                progress: AtomicU64::new(0),
                stopping: AtomicBool::new(false),
            }),
        }
    }

    /// Offers a new connection: a waiting thread takes it, or a new thread; with every slot
    /// taken, the connection idle the longest is closed to make room, if there is one.
    pub fn admit(&self, conn: Incoming) -> Admission {
        let mut st = self.inner.lock();
        if st.stopping {
            return Admission::Full(conn);
        }
        if st.busy >= self.inner.max {
            if st.queue.len() >= MAX_QUEUED || !reclaim_idle(&mut st) {
                return Admission::Full(conn);
            }
            // The reclaimed connection's thread (or any free one) takes it in a moment.
            st.busy += 1;
            st.queue.push_back(conn);
            self.inner.work.notify_one();
            return Admission::Served;
        }
        st.busy += 1;
        st.queue.push_back(conn);
        if st.queue.len() <= st.waiting {
            self.inner.work.notify_one();
            return Admission::Served;
        }
        let inner = self.inner.clone();
        let started = std::thread::Builder::new()
            .name(self.inner.name.into())
            .stack_size(STACK)
            .spawn(move || run(&inner));
        match started {
            Ok(_) => {
                st.threads += 1;
                Admission::Served
            }
            // No thread to be had (a thread or memory limit): the thread of a connection
            // closed to make room takes this one, if one can be closed.
            Err(_) if reclaim_idle(&mut st) => Admission::Served,
            Err(e) => {
                st.busy -= 1;
                // Still ours: the lock was held since the push.
                let conn = st.queue.pop_back().expect("the connection just queued");
                Admission::NoThread(conn, e)
            }
        }
    }

    /// Connections, threads and answers so far.
    pub fn load(&self) -> Load {
        let st = self.inner.lock();
        Load {
            busy: st.busy,
            idle: st
                .watches
                .values()
                .filter(|w| w.idle_since().is_some())
                .count(),
            max: self.inner.max,
            threads: st.threads,
            progress: self.inner.progress.load(Ordering::Relaxed),
        }
    }

    /// Stops taking connections: idle ones are closed now, the others after their current
    /// request; queued ones are dropped.
    pub fn stop(&self) {
        self.inner.stopping.store(true, Ordering::Relaxed);
        let mut st = self.inner.lock();
        st.stopping = true;
        let queued = st.queue.len();
        st.queue.clear();
        st.busy -= queued;
        close_idle(&st);
        self.inner.work.notify_all();
        self.inner.ended.notify_all();
    }

    /// Shuts every connection down, busy or not (at the end of a shutdown's grace period).
    pub fn abort_all(&self) {
        for w in self.inner.lock().watches.values() {
            w.abort();
        }
    }

    /// Waits until every connection has ended, or `limit` has passed; true if they all did.
    /// Connections that finish their request meanwhile and go idle are closed as they do.
    pub fn drain(&self, limit: Duration) -> bool {
        let until = Instant::now() + limit;
        let mut st = self.inner.lock();
        while st.busy > 0 {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            close_idle(&st);
            st = self
                .inner
                .ended
                .wait_timeout(st, left.min(Duration::from_millis(200)))
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }
}

/// Closes the connections that wait for a request (at shutdown).
fn close_idle(st: &State) {
    for w in st.watches.values() {
        if w.idle_since().is_some() {
            w.abort();
        }
    }
}

/// Closes the connection that has held its place without earning it the longest (idle, a
/// head arriving slowly, a transfer behind the minimum rate: `ConnectionWatch::behind_since`),
/// if there is one; true if one was closed.
fn reclaim_idle(st: &mut State) -> bool {
    let oldest = st
        .watches
        .iter()
        .filter_map(|(id, w)| w.behind_since().map(|t| (t, *id)))
        .min();
    let Some((_, id)) = oldest else {
        return false;
    };
    if let Some(w) = st.watches.remove(&id) {
        log::debug!("closing a connection that is idle or behind to make room");
        w.abort();
    }
    true
}

/// A connection thread: serves queued connections one after the other; exits after waiting
/// `THREAD_TTL` for one, or when the pool stops.
fn run(inner: &Inner) {
    let mut st = inner.lock();
    loop {
        if let Some(conn) = st.queue.pop_front() {
            let id = st.next_id;
            st.next_id += 1;
            drop(st);
            let slot = Slot { inner, id };
            // A panic costs this connection, not the thread's slot count or the registry.
            if catch_unwind(AssertUnwindSafe(|| (inner.serve)(conn, &slot))).is_err() {
                log::error!("a connection handler panicked; the connection was closed");
            }
            drop(slot);
            inner.progress.fetch_add(1, Ordering::Relaxed);
            st = inner.lock();
            st.busy -= 1;
            inner.ended.notify_all();
            continue;
        }
        if st.stopping {
            break;
        }
        st.waiting += 1;
        let (next, timeout) = inner
            .work
            .wait_timeout(st, THREAD_TTL)
            .unwrap_or_else(|p| p.into_inner());
        st = next;
        st.waiting -= 1;
        if timeout.timed_out() && st.queue.is_empty() {
            break;
        }
    }
    st.threads -= 1;
}
