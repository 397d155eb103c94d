//! Transfer buffers under one memory budget: `workers` chunk-sized buffers at most, lent to
//! uploads and downloads one step at a time and taken back for the next. A transfer whose
//! client does not keep up (or that finds none free) moves small steps in a small buffer of
//! its own instead. So buffer memory is `workers × chunkSize`, plus `SMALL` per transfer
//! beyond those, whatever the number of clients, and fast transfers still move whole chunks.
//!
//! Moving a step into or out of the store takes scratch memory of a chunk's size inside the
//! store (a page read, a sealed copy; a sealed chunk opened whole for a small step) for a
//! moment: at most `workers` steps move at once each way (and no more than there are cores: a
//! store call is work for a core), so a fleet starting 200 downloads in the same instant does
//! not hold 200 chunks of it. Reads and writes have separate turns: an upload waiting on the
//! store's single writer (and its fsync) never holds up a download.

use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A client that takes a step at this rate or faster keeps up: its steps are whole chunks in
/// the budget's buffers, waiting a moment for one to come back if need be. A slower client
/// moves small steps in a buffer of its own, so that the budget's buffers are not held by
/// writes (or reads) waiting on it. A transfer's first step is small: its client's pace is
/// not known yet.
const KEEPS_UP: u64 = 4 << 20;
/// How long a client that keeps up waits for a chunk-sized buffer; when none came back in that
/// time, it takes small steps of its own until one is free at once.
const CHUNK_WAIT: Duration = Duration::from_millis(100);
/// How long a request body read whole waits for room under `bodies` before it is refused.
const BODY_WAIT: Duration = Duration::from_secs(2);

/// Bytes of a buffer lent when no chunk-sized one is free: a power of two less the store's
/// row overhead, as chunk payloads are, so what it uploads still fills whole pages.
pub const SMALL: usize = (64 << 10) - crate::storage::CHUNK_ROW_OVERHEAD;

/// The chunk-sized buffers, the store's turns, and the room for bodies read whole.
pub struct Buffers {
    /// Bytes of a chunk-sized buffer (the store's chunk payload).
    size: usize,
    /// Chunk-sized buffers that may be lent at once.
    max: usize,
    /// Steps that may move at once each way: no more than `max`, nor than cores.
    turns: usize,
    /// Bytes of request bodies read whole (manifests) that may be held at once.
    bodies: u64,
    state: Mutex<State>,
    /// Signalled when a chunk-sized buffer comes back, a read or write turn ends, room for a
    /// body is let go.
    chunk_back: Condvar,
    read_done: Condvar,
    write_done: Condvar,
    room_freed: Condvar,
}

struct State {
    /// Chunk-sized buffers lent now.
    lent: usize,
    /// Returned ones, kept for the next transfer.
    spare: Vec<Vec<u8>>,
    /// Steps moving out of and into the store now.
    reading: usize,
    writing: usize,
    /// Scratch buffers of read turns, kept for the next (at most one per turn at once).
    scratch: Vec<Vec<u8>>,
    /// Bytes of request bodies held now.
    held: u64,
}

/// Which way a step moves data through the store.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Way {
    /// Out of the store (a download).
    Read,
    /// Into the store (an upload).
    Write,
}

/// A step's turn at the store; the next may start when it is dropped.
pub struct Turn<'a> {
    buffers: &'a Buffers,
    way: Way,
    scratch: Option<Vec<u8>>,
}

impl Turn<'_> {
    /// A chunk-sized scratch buffer for this turn only (a sealed chunk opened whole, of which
    /// a small step takes a part).
    pub fn scratch(&mut self) -> &mut Vec<u8> {
        let b = self.buffers;
        self.scratch.get_or_insert_with(|| {
            b.lock()
                .scratch
                .pop()
                .unwrap_or_else(|| Vec::with_capacity(b.size + crate::crypto::SEAL_OVERHEAD))
        })
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let b = self.buffers;
        let mut st = b.lock();
        match self.way {
            Way::Read => st.reading -= 1,
            Way::Write => st.writing -= 1,
        }
        if let Some(mut s) = self.scratch.take() {
            // Kept only at its size (an unaligned sealed read may have grown it).
            if s.capacity() <= b.size + crate::crypto::SEAL_OVERHEAD {
                s.clear();
                st.scratch.push(s);
            }
        }
        drop(st);
        match self.way {
            Way::Read => b.read_done.notify_one(),
            Way::Write => b.write_done.notify_one(),
        }
    }
}

/// A lent buffer; goes back to its `Buffers` when dropped.
pub struct Lease<'a> {
    /// The buffer: empty, with room for `step` bytes at least.
    pub buf: Vec<u8>,
    /// Bytes to move per step with it: a chunk payload, or `SMALL`.
    pub step: usize,
    /// Its owner, if it is one of the chunk-sized buffers.
    from: Option<&'a Buffers>,
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.from {
            b.give_back(std::mem::take(&mut self.buf));
        }
    }
}

/// Room for a request body of some bytes, held until dropped.
pub struct BodyRoom<'a> {
    buffers: &'a Buffers,
    bytes: u64,
}

impl BodyRoom<'_> {
    /// Room for `more` bytes besides, waiting a moment for it; false if there is none.
    pub fn grow(&mut self, more: u64) -> bool {
        let b = self.buffers;
        let until = Instant::now() + BODY_WAIT;
        let mut st = b.lock();
        while st.held + more > b.bodies {
            let Some(left) = until.checked_duration_since(Instant::now()) else {
                return false;
            };
            st = b
                .room_freed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.held += more;
        self.bytes += more;
        true
    }
}

impl Drop for BodyRoom<'_> {
    fn drop(&mut self) {
        self.buffers.lock().held -= self.bytes;
        self.buffers.room_freed.notify_all();
    }
}

impl Buffers {
    /// At most `max` buffers of `size` bytes lent at once, and `bodies` bytes of request
    /// bodies read whole.
    pub fn new(size: usize, max: usize, bodies: u64) -> Buffers {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Buffers {
            size,
            max: max.max(1),
            turns: max.clamp(1, cores),
            bodies,
            state: Mutex::new(State {
                lent: 0,
                spare: Vec::new(),
                reading: 0,
                writing: 0,
                scratch: Vec::new(),
                held: 0,
            }),
            chunk_back: Condvar::new(),
            read_done: Condvar::new(),
            write_done: Condvar::new(),
            room_freed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a turn at the store (a store call that reads or writes a step); hold it for
    /// that call only, never while waiting on a client.
    pub fn turn(&self, way: Way) -> Turn<'_> {
        let mut st = self.lock();
        loop {
            let (busy, done) = match way {
                Way::Read => (&mut st.reading, &self.read_done),
                Way::Write => (&mut st.writing, &self.write_done),
            };
            if *busy < self.turns {
                *busy += 1;
                break;
            }
            st = done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        Turn {
            buffers: self,
            way,
            scratch: None,
        }
    }

    /// Room for a request body read whole, none held yet (`BodyRoom::grow` as it arrives): a
    /// crowd of clients trickling 4 MiB manifests would otherwise hold gigabytes.
    pub fn body_room(&self) -> BodyRoom<'_> {
        BodyRoom {
            buffers: self,
            bytes: 0,
        }
    }

    /// Buffers for one transfer's steps.
    pub fn pacer(&self) -> Pacer<'_> {
        Pacer {
            buffers: self,
            fast: None,
            starved: false,
            own: Vec::new(),
        }
    }

    /// A chunk-sized buffer, waiting up to `limit` for one to come back.
    fn wait_chunk(&self, limit: Duration) -> Option<Lease<'_>> {
        let until = Instant::now() + limit;
        let mut st = self.lock();
        while st.lent >= self.max {
            let left = until.checked_duration_since(Instant::now())?;
            st = self
                .chunk_back
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.lent += 1;
        let buf = st
            .spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(self.size + crate::crypto::SEAL_OVERHEAD));
        Some(Lease {
            buf,
            step: self.size,
            from: Some(self),
        })
    }

    /// A chunk-sized buffer, if one is free now.
    pub fn take_chunk(&self) -> Option<Lease<'_>> {
        self.wait_chunk(Duration::ZERO)
    }

    fn give_back(&self, mut buf: Vec<u8>) {
        let mut st = self.lock();
        st.lent -= 1;
        buf.clear();
        // Only a chunk-sized buffer is kept (one whose memory went elsewhere, or that grew,
        // is not): the budget counts chunk-sized buffers.
        let fits = (self.size..=self.size + crate::crypto::SEAL_OVERHEAD).contains(&buf.capacity());
        if fits && st.spare.len() < self.max {
            st.spare.push(buf);
        }
        drop(st);
        self.chunk_back.notify_one();
    }
}

/// How one transfer takes its buffers, step by step: a chunk-sized one from the budget for
/// each step while its client keeps up (it goes back after the step, so a few buffers serve
/// many fast transfers), else a small one of its own.
pub struct Pacer<'a> {
    buffers: &'a Buffers,
    /// Whether the client kept up with the last step; None before the first.
    fast: Option<bool>,
    /// No chunk-sized buffer came back in time lately: take one only if free at once.
    starved: bool,
    /// The transfer's own small buffer, kept between its steps.
    own: Vec<u8>,
}

impl<'a> Pacer<'a> {
    /// The buffer for the next step of a transfer whose steps may wait on its client.
    pub fn lease(&mut self) -> Lease<'a> {
        if self.fast == Some(true) {
            if let Some(l) = self.chunk(CHUNK_WAIT) {
                return l;
            }
        }
        self.small()
    }

    /// The buffer for the next step of a transfer that holds it only while the step moves
    /// (it never waits on its client with it).
    pub fn lease_brief(&mut self) -> Lease<'a> {
        self.chunk(CHUNK_WAIT).unwrap_or_else(|| self.small())
    }

    /// A chunk-sized buffer, waiting up to `limit` unless starved lately.
    fn chunk(&mut self, limit: Duration) -> Option<Lease<'a>> {
        let wait = if self.starved { Duration::ZERO } else { limit };
        let chunk = self.buffers.wait_chunk(wait);
        self.starved = chunk.is_none();
        chunk
    }

    fn small(&mut self) -> Lease<'a> {
        let step = SMALL.min(self.buffers.size);
        let mut buf = std::mem::take(&mut self.own);
        buf.reserve(step);
        Lease {
            buf,
            step,
            from: None,
        }
    }

    /// The step is done: its client side moved `n` bytes in `took`. A buffer of the budget
    /// goes back to it, the transfer's own is kept for its next step.
    pub fn done(&mut self, mut lease: Lease<'a>, n: usize, took: Duration) {
        self.fast = Some((n as f64) >= KEEPS_UP as f64 * took.as_secs_f64());
        if lease.from.is_none() {
            self.own = std::mem::take(&mut lease.buf);
        }
    }

    /// True if the client kept up with the last step.
    pub fn fast(&self) -> bool {
        self.fast == Some(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_buffers_are_bounded_and_reused() {
        let b = Buffers::new(256 << 10, 2, 0);
        let (one, two) = (b.take_chunk().unwrap(), b.take_chunk().unwrap());
        assert!(one.buf.capacity() >= 256 << 10);
        assert!(b.take_chunk().is_none());
        let ptr = one.buf.as_ptr();
        drop(one);
        let again = b.take_chunk().unwrap();
        assert_eq!(again.buf.as_ptr(), ptr, "the same allocation, lent again");
        drop((two, again));
    }

    #[test]
    fn a_transfer_steps_small_until_its_client_keeps_up() {
        let b = Buffers::new(256 << 10, 1, 0);
        let mut p = b.pacer();
        let first = p.lease();
        assert_eq!(
            (first.from.is_none(), first.step),
            (true, SMALL),
            "pace unknown"
        );
        // 64 KiB in a millisecond: keeps up; the next step is a chunk.
        p.done(first, SMALL, Duration::from_millis(1));
        let chunk = p.lease();
        assert!(chunk.from.is_some());
        // 256 KiB in a second: slow. The buffer goes back; the next steps are small.
        p.done(chunk, 256 << 10, Duration::from_secs(1));
        assert!(b.take_chunk().is_some());
        let small = p.lease();
        assert!(small.from.is_none());
        p.done(small, SMALL, Duration::from_millis(1));
        // Keeps up again, but the one buffer is taken: small at once after one wait.
        let held = b.take_chunk().unwrap();
        let t = Instant::now();
        assert!(p.lease().from.is_none());
        assert!(p.lease().from.is_none());
        assert!(t.elapsed() < CHUNK_WAIT * 2, "starved: no second wait");
        drop(held);
        assert!(p.lease_brief().from.is_some(), "free again: taken");
    }

    #[test]
    fn bodies_read_whole_share_a_bound() {
        let b = Buffers::new(4096, 1, 100);
        let mut sixty = b.body_room();
        assert!(sixty.grow(60));
        let mut more = b.body_room();
        let t = Instant::now();
        assert!(!more.grow(50), "over the bound");
        assert!(t.elapsed() >= BODY_WAIT);
        assert!(more.grow(40));
        drop(sixty);
        assert!(more.grow(50));
    }

    #[test]
    fn turns_wait_for_each_other_each_way() {
        let b = std::sync::Arc::new(Buffers::new(4096, 64, 0));
        let under_way: Vec<_> = (0..b.turns).map(|_| b.turn(Way::Read)).collect();
        // Writes have turns of their own.
        drop(b.turn(Way::Write));
        let b2 = b.clone();
        let next = std::thread::spawn(move || {
            let _t = b2.turn(Way::Read);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!next.is_finished(), "a read moved with all turns taken");
        drop(under_way);
        next.join().unwrap();
    }
}
