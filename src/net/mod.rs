//! Connections: a listener that never dies of load, a bounded set of connection threads (one
//! per connection, each serving its requests in turn), per-phase time limits, and the health
//! the systemd watchdog reports.
//!
//! Why a thread per connection: a long download occupies its own thread only, so 200 clients
//! pulling at once are all served at once and a short request on a new connection is answered
//! at once, while the number of connections (and so of threads and buffers) stays bounded.

pub mod listener;
pub mod pool;
pub mod watchdog;

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// `maxConnections` and the per-phase limits of each connection, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once; beyond, idle kept-alive connections are closed to make room,
    /// else new ones get 503 with `Retry-After`.
    pub max_connections: usize,
    /// Request heads, idle keep-alive, and the minimum transfer rate (tiny_http enforces them).
    pub phases: tiny_http::Limits,
}

impl Default for Limits {
    /// 256 connections; heads within 10 s, 60 s idle, 1 KiB/s over 2 min, 64 KiB drained.
    fn default() -> Limits {
        Limits {
            max_connections: 256,
            phases: tiny_http::Limits::default(),
        }
    }
}

/// Logs a recurring warning at most once per `every`, with how many were held back, so that a
/// storm of failures (a full descriptor table, a thread limit) cannot flood the journal.
pub struct Throttled {
    every: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Throttled {
    /// At most one line per `every`.
    pub const fn new(every: Duration) -> Throttled {
        Throttled {
            every,
            state: Mutex::new((None, 0)),
        }
    }

    /// Logs `message()` at warn level unless one was logged less than `every` ago.
    pub fn warn(&self, message: impl FnOnce() -> String) {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if st
            .0
            .is_some_and(|last| now.duration_since(last) < self.every)
        {
            st.1 += 1;
            return;
        }
        let held = std::mem::take(&mut st.1);
        st.0 = Some(now);
        drop(st);
        if held > 0 {
            log::warn!("{} ({held} more like it since the last report)", message());
        } else {
            log::warn!("{}", message());
        }
    }
}

/// Exponential back-off after a failure: 10 ms doubling to 1 s; reset by a success.
#[derive(Default)]
pub struct Backoff(u32);

impl Backoff {
    /// The pause before the next attempt.
    pub fn next(&mut self) -> Duration {
        let d = Duration::from_millis(10u64 << self.0.min(7)).min(Duration::from_secs(1));
        self.0 += 1;
        d
    }

    /// Things work again.
    pub fn reset(&mut self) {
        self.0 = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_second() {
        let mut b = Backoff::default();
        let steps: Vec<u64> = (0..9).map(|_| b.next().as_millis() as u64).collect();
        assert_eq!(steps, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        b.reset();
        assert_eq!(b.next(), Duration::from_millis(10));
    }
}
