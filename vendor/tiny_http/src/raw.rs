//! Outpost patch: the socket calls std does not have — poll(2), send(2) with `MSG_DONTWAIT`,
//! the send queue's length — for a plain-HTTP body sent in steps that never hold data while
//! the client is slow (`RawBody`), and for seeing a blocked write's progress (`QueueWatch`).

use std::io;
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use crate::connection::Connection;
use crate::pace::{Dir, PacedStream, SLICE};

/// The socket of a plain-HTTP response, for a body sent in steps: `wait_room` blocks until the
/// socket can take more (the wait counts against the minimum transfer rate like a blocked
/// write), `send_some` writes what it takes now. The response's head must have been written
/// and flushed first.
pub struct RawBody(PacedStream);

impl RawBody {
    pub(crate) fn new(stream: PacedStream) -> RawBody {
        RawBody(stream)
    }

    /// Waits until the client's socket can take more bytes, within the write window, and for
    /// at most `limit` if given; false if `limit` passed first.
    pub fn wait_room(&mut self, limit: Option<Duration>) -> io::Result<bool> {
        let s = &mut self.0;
        let until = limit.map(|l| Instant::now() + l);
        let mut queue = QueueWatch::default();
        loop {
            let mut budget = s.pace.budget(Dir::Write)?.min(SLICE);
            if let Some(until) = until {
                match until.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => budget = budget.min(left),
                    _ => return Ok(false),
                }
            }
            let t0 = Instant::now();
            s.pace.call(Some((Dir::Write, t0)));
            let ready = poll_out(s.conn.raw_fd(), budget);
            s.pace.call(None);
            match ready {
                Ok(true) => {
                    s.pace.account(Dir::Write, t0.elapsed(), 0);
                    return Ok(true);
                }
                // No room yet; the client may still be taking what is queued.
                Ok(false) => s
                    .pace
                    .account(Dir::Write, t0.elapsed(), queue.drained(&s.conn)),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes as much of `buf` as the socket takes without waiting; 0 if it takes nothing now.
    pub fn send_some(&mut self, buf: &[u8]) -> io::Result<usize> {
        let s = &mut self.0;
        loop {
            match send_now(s.conn.raw_fd(), buf) {
                Ok(n) => {
                    crate::pace::transferred(Dir::Write, n);
                    s.pace.account(Dir::Write, Duration::ZERO, n);
                    return Ok(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(0),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Counts `waited` against the write window (a pause taken instead of spinning).
    pub fn waited(&mut self, waited: Duration) {
        self.0.pace.account(Dir::Write, waited, 0);
    }
}

/// Watches a socket's send queue across the slices of one blocked write, to see the bytes the
/// client took meanwhile.
#[derive(Default)]
pub(crate) struct QueueWatch(Option<u64>);

impl QueueWatch {
    /// Bytes that left the send queue since the last look (0 at the first).
    pub(crate) fn drained(&mut self, conn: &Connection) -> usize {
        let Some(now) = unsent(conn.raw_fd()) else {
            return 0;
        };
        let before = self.0.replace(now);
        before.map_or(0, |b| b.saturating_sub(now) as usize)
    }
}

/// poll(2) for `POLLOUT` on `fd` for at most `limit`; true if the socket can take bytes (or
/// has an error or hang-up for the next write to report).
#[allow(unsafe_code)]
fn poll_out(fd: RawFd, limit: Duration) -> io::Result<bool> {
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
fn send_now(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
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

/// Bytes in the socket's send queue not yet taken by the peer (`SIOCOUTQ`); None where the
/// socket does not say (a Unix socket reports another measure: fine for a difference).
#[allow(unsafe_code)]
fn unsent(fd: RawFd) -> Option<u64> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (SIOCOUTQ) writes one int.
    let r = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    (r == 0 && n >= 0).then_some(n as u64)
}
