//! Transfer buffers under one memory budget: `workers` chunk-sized buffers at most, lent to
//! uploads and downloads and taken back for the next; a transfer that finds none free gets a
//! small buffer instead and moves its data in smaller steps. So buffer memory is bounded by
//! `workers × chunkSize` plus `SMALL` per transfer beyond those, whatever the number of
//! clients, and a few fast transfers still get whole chunks.
//!
//! Moving a step into or out of the store takes scratch memory of a chunk's size inside the
//! store (a page read, a sealed copy; a sealed chunk opened whole for a small step) for a
//! moment: at most `workers` steps move at once (and no more than there are cores: a store
//! call is work for a core), so a fleet starting 200 downloads in the same instant does not
//! hold 200 chunks of it.

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// A client that takes a step at this rate or faster keeps up: its steps are whole chunks, in
/// the budget's buffers, waiting for one to come back if need be (as all ran through
/// `workers` before: each chunk is read once). A slower client moves small steps in a buffer
/// of its own, so that the budget's buffers are not held by writes (or reads) waiting on it.
const KEEPS_UP: u64 = 4 << 20;
/// How long a client that keeps up waits for a chunk-sized buffer; when none came back in
/// that time (slow clients hold them: a step is taken before its client's pace is known), it
/// takes small steps of its own until one is free at once.
const CHUNK_WAIT: Duration = Duration::from_millis(500);

/// Bytes of a buffer lent when no chunk-sized one is free: a power of two less the store's
/// row overhead, as chunk payloads are, so what it uploads still fills whole pages.
pub const SMALL: usize = (64 << 10) - crate::storage::CHUNK_ROW_OVERHEAD;

/// The chunk-sized buffers and how many of them may exist.
pub struct Buffers {
    /// Bytes of a chunk-sized buffer (the store's chunk payload).
    size: usize,
    /// Chunk-sized buffers that may be lent at once.
    max: usize,
    /// Steps that may move at once: store calls are work for a core, so no more than cores.
    steps: usize,
    state: Mutex<State>,
    /// Signalled when a chunk-sized buffer comes back, a step ends, a body's room is let go.
    chunk_back: Condvar,
    step_done: Condvar,
    room_freed: Condvar,
    /// Bytes of request bodies read whole (manifests) that may be held at once.
    bodies: u64,
}

/// How long a request body read whole waits for room under `bodies` before it is refused.
const BODY_WAIT: Duration = Duration::from_secs(2);

struct State {
    /// Chunk-sized buffers lent now.
    lent: usize,
    /// Returned ones, kept for the next transfer.
    spare: Vec<Vec<u8>>,
    /// Steps moving into or out of the store now.
    moving: usize,
    /// Scratch buffers of steps, kept for the next (at most one per step at once).
    scratch: Vec<Vec<u8>>,
    /// Bytes of request bodies held now.
    held: u64,
}

/// Room for a request body of some bytes, held until dropped.
pub struct BodyRoom<'a> {
    buffers: &'a Buffers,
    bytes: u64,
}

impl Drop for BodyRoom<'_> {
    fn drop(&mut self) {
        self.buffers.lock().held -= self.bytes;
        self.buffers.room_freed.notify_all();
    }
}

/// A step moving into or out of the store; the next may start when it is dropped.
pub struct Step<'a> {
    buffers: &'a Buffers,
    scratch: Option<Vec<u8>>,
}

impl Step<'_> {
    /// A chunk-sized scratch buffer for this step only (a sealed chunk opened whole, of which
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

impl Drop for Step<'_> {
    fn drop(&mut self) {
        let mut st = self.buffers.lock();
        st.moving -= 1;
        if let Some(mut s) = self.scratch.take() {
            s.clear();
            st.scratch.push(s);
        }
        self.buffers.step_done.notify_one();
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

impl Buffers {
    /// At most `max` buffers of `size` bytes lent at once, and `bodies` bytes of request
    /// bodies read whole.
    pub fn new(size: usize, max: usize, bodies: u64) -> Buffers {
        Buffers {
            size,
            bodies,
            max: max.max(1),
            steps: max.clamp(
                1,
                std::thread::available_parallelism().map_or(2, |n| n.get()),
            ),
            state: Mutex::new(State {
                lent: 0,
                spare: Vec::new(),
                moving: 0,
                scratch: Vec::new(),
                held: 0,
            }),
            chunk_back: Condvar::new(),
            step_done: Condvar::new(),
            room_freed: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a step may move into or out of the store (a store call that reads or
    /// writes a chunk); hold it for that call only, never while waiting on a client.
    pub fn step(&self) -> Step<'_> {
        let mut st = self.lock();
        while st.moving >= self.steps {
            st = self.step_done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.moving += 1;
        Step {
            buffers: self,
            scratch: None,
        }
    }

    /// Room for a request body of `bytes` read whole, waiting a moment for it if the bodies
    /// held now leave too little; None if there is none then (the caller refuses the
    /// request: 256 connections each sending a 4 MiB manifest would hold a gigabyte).
    pub fn body_room(&self, bytes: u64) -> Option<BodyRoom<'_>> {
        let until = std::time::Instant::now() + BODY_WAIT;
        let mut st = self.lock();
        while st.held + bytes > self.bodies {
            let left = until.checked_duration_since(std::time::Instant::now())?;
            st = self
                .room_freed
                .wait_timeout(st, left)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        st.held += bytes;
        Some(BodyRoom {
            buffers: self,
            bytes,
        })
    }

    /// Buffers for one transfer's steps.
    pub fn pacer(&self) -> Pacer<'_> {
        Pacer {
            buffers: self,
            fast: true,
            starved: false,
            own: Vec::new(),
        }
    }

    /// A chunk-sized buffer for a step that holds it only while it moves (it never waits on a
    /// client), so waiting for one is short; a `SMALL` one if none comes back in time.
    pub fn take_brief(&self) -> Lease<'_> {
        self.wait_chunk(CHUNK_WAIT).unwrap_or_else(|| self.small())
    }

    fn small(&self) -> Lease<'_> {
        let step = SMALL.min(self.size);
        Lease {
            buf: Vec::with_capacity(step),
            step,
            from: None,
        }
    }

    /// A chunk-sized buffer if one is free, else a `SMALL` one.
    pub fn take(&self) -> Lease<'_> {
        self.take_chunk().unwrap_or_else(|| {
            let step = SMALL.min(self.size);
            Lease {
                buf: Vec::with_capacity(step),
                step,
                from: None,
            }
        })
    }

    /// A chunk-sized buffer, if one is free.
    pub fn take_chunk(&self) -> Option<Lease<'_>> {
        self.wait_chunk(Duration::ZERO)
    }

    /// A chunk-sized buffer, waiting up to `limit` for one to come back.
    fn wait_chunk(&self, limit: Duration) -> Option<Lease<'_>> {
        let until = std::time::Instant::now() + limit;
        let mut st = self.lock();
        while st.lent >= self.max {
            let left = until.checked_duration_since(std::time::Instant::now())?;
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
    /// The client kept up with the last step.
    fast: bool,
    /// No chunk-sized buffer came back within `CHUNK_WAIT` lately.
    starved: bool,
    /// The transfer's own buffer, kept between its steps.
    own: Vec<u8>,
}

impl<'a> Pacer<'a> {
    /// The buffer for the next step (`step` bytes).
    pub fn lease(&mut self) -> Lease<'a> {
        if self.fast {
            let wait = if self.starved {
                Duration::ZERO
            } else {
                CHUNK_WAIT
            };
            let chunk = self.buffers.wait_chunk(wait);
            self.starved = chunk.is_none();
            if let Some(l) = chunk {
                return l;
            }
        }
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
        self.fast = (n as f64) >= KEEPS_UP as f64 * took.as_secs_f64();
        if lease.from.is_none() {
            self.own = std::mem::take(&mut lease.buf);
        }
    }

    /// True if the client kept up with the last step.
    pub fn fast(&self) -> bool {
        self.fast
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.from {
            b.give_back(std::mem::take(&mut self.buf));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_buffers_are_bounded_then_small_ones_are_lent() {
        let b = Buffers::new(256 << 10, 2, 0);
        let one = b.take();
        let two = b.take();
        assert!(one.from.is_some() && two.from.is_some());
        assert!(one.buf.capacity() >= 256 << 10);
        let three = b.take();
        assert!(three.from.is_none());
        assert_eq!((three.buf.capacity(), three.step), (SMALL, SMALL));
        assert!(b.take_chunk().is_none());
        drop(one);
        // Given back, lent again (the same allocation).
        let again = b.take();
        assert!(again.from.is_some());
        drop((two, three, again));
        let both = (b.take_chunk(), b.take_chunk());
        assert!(both.0.is_some() && both.1.is_some());
    }

    #[test]
    fn a_slow_client_steps_small_in_its_own_buffer() {
        let b = Buffers::new(256 << 10, 1, 0);
        let mut p = b.pacer();
        let first = p.lease();
        assert!(
            first.from.is_some(),
            "a new transfer tries a chunk-sized buffer"
        );
        // 256 KiB in a second: slow. The buffer goes back; the next steps are small.
        p.done(first, 256 << 10, Duration::from_secs(1));
        assert!(b.take_chunk().is_some());
        let small = p.lease();
        assert_eq!((small.from.is_none(), small.step), (true, SMALL));
        p.done(small, SMALL, Duration::from_millis(1));
        // Fast again: a chunk-sized buffer when one is free.
        let fast = p.lease();
        assert!(fast.from.is_some());
        // None free: a small one of its own.
        assert_eq!(b.pacer().lease().step, SMALL);
        drop(fast);
    }

    #[test]
    fn bodies_read_whole_share_a_bound() {
        let b = Buffers::new(4096, 1, 100);
        let sixty = b.body_room(60).unwrap();
        let t = std::time::Instant::now();
        assert!(b.body_room(50).is_none(), "over the bound");
        assert!(t.elapsed() >= BODY_WAIT);
        let forty = b.body_room(40).unwrap();
        drop(sixty);
        assert!(b.body_room(50).is_some());
        drop(forty);
    }

    #[test]
    fn steps_wait_for_each_other() {
        let b = std::sync::Arc::new(Buffers::new(4096, 64, 0));
        let under_way: Vec<_> = (0..b.steps).map(|_| b.step()).collect();
        let b2 = b.clone();
        let next = std::thread::spawn(move || {
            let _s = b2.step();
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(!next.is_finished(), "a step moved with all under way");
        drop(under_way);
        next.join().unwrap();
    }
}
