//! Transfer buffers under one memory budget: `workers` chunk-sized buffers at most, lent to
//! uploads and downloads and taken back for the next; a transfer that finds none free gets a
//! small buffer instead and moves its data in smaller steps. So buffer memory is bounded by
//! `workers × chunkSize` plus `SMALL` per transfer beyond those, whatever the number of
//! clients, and a few fast transfers still get whole chunks.
//!
//! Moving a step into or out of the store takes scratch memory of a chunk's size inside the
//! store (a page read, a sealed copy) for a moment: at most `workers` steps move at once, so a
//! fleet starting 200 downloads in the same instant does not hold 200 chunks of it.

use std::sync::{Condvar, Mutex};

/// Bytes of a buffer lent when no chunk-sized one is free: a power of two less the store's
/// row overhead, as chunk payloads are, so what it uploads still fills whole pages.
pub const SMALL: usize = (64 << 10) - crate::storage::CHUNK_ROW_OVERHEAD;

/// The chunk-sized buffers and how many of them may exist.
pub struct Buffers {
    /// Bytes of a chunk-sized buffer (the store's chunk payload).
    size: usize,
    /// Chunk-sized buffers that may be lent at once; steps that may move at once.
    max: usize,
    state: Mutex<State>,
    /// Signalled when a step ends.
    step_done: Condvar,
}

struct State {
    /// Chunk-sized buffers lent now.
    lent: usize,
    /// Returned ones, kept for the next transfer.
    spare: Vec<Vec<u8>>,
    /// Steps moving into or out of the store now.
    moving: usize,
}

/// A step moving into or out of the store; the next may start when it is dropped.
pub struct Step<'a>(&'a Buffers);

impl Drop for Step<'_> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.moving -= 1;
        self.0.step_done.notify_one();
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
    /// At most `max` buffers of `size` bytes lent at once.
    pub fn new(size: usize, max: usize) -> Buffers {
        Buffers {
            size,
            max: max.max(1),
            state: Mutex::new(State {
                lent: 0,
                spare: Vec::new(),
                moving: 0,
            }),
            step_done: Condvar::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until a step may move into or out of the store (a store call that reads or
    /// writes a chunk); hold it for that call only, never while waiting on a client.
    pub fn step(&self) -> Step<'_> {
        let mut st = self.lock();
        while st.moving >= self.max {
            st = self.step_done.wait(st).unwrap_or_else(|p| p.into_inner());
        }
        st.moving += 1;
        Step(self)
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
        let mut st = self.lock();
        if st.lent >= self.max {
            return None;
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
        let b = Buffers::new(256 << 10, 2);
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
    fn steps_wait_for_each_other() {
        let b = std::sync::Arc::new(Buffers::new(4096, 2));
        let (one, two) = (b.step(), b.step());
        let b2 = b.clone();
        let third = std::thread::spawn(move || {
            let _s = b2.step();
        });
        std::thread::sleep(std::time::Duration::from_millis(50));
        assert!(
            !third.is_finished(),
            "a third step moved with two under way"
        );
        drop(one);
        third.join().unwrap();
        drop(two);
    }
}
