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

/// The vendored tiny_http's request-head parser and chunked decoder, through a whole
/// connection as Outpost serves it (their functions are private to tiny_http).
#[cfg(test)]
mod props {
    use crate::registry::prop_config;
    use proptest::prelude::*;
    use std::io::{Read, Write};

    /// Lines of a head: good ones, near misses, hostile framing, anything.
    fn line() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            Just(b"GET / HTTP/1.1".to_vec()),
            Just(b"POST /v2/a/blobs/uploads/ HTTP/1.1".to_vec()),
            Just(b"PRI * HTTP/2.0".to_vec()),
            Just(b"GET / HTTP/1.0".to_vec()),
            Just(b"Host: x".to_vec()),
            Just(b"Transfer-Encoding: chunked".to_vec()),
            Just(b"Expect: 100-continue".to_vec()),
            Just(b"Connection: close".to_vec()),
            Just(Vec::new()),
            Just(Vec::new()),
            prop_oneof![any::<u64>().prop_map(|n| n.to_string()), "[0-9+ ,-]{0,25}"]
                .prop_map(|n| format!("Content-Length: {n}").into_bytes()),
            "[A-Z]{1,7} [!-~]{0,20} HTTP/[0-9]\\.[0-9]".prop_map(String::into_bytes),
            "[!-~]{1,10}:[ -~\t]{0,20}".prop_map(String::into_bytes),
            proptest::collection::vec(any::<u8>(), 0..30),
        ]
    }

    /// Chunk-size lines: hex of any width, signs, blanks, extensions, huge values.
    fn size_line() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<u64>().prop_map(|n| format!("{n:x}")),
            (0u64..64).prop_map(|n| format!("{n:X}")),
            "[0-9a-fA-F]{15,20}",
            "[ \t+-]?[0-9a-fA-F]{0,3}[ \t]?(;[a-z=\" ]{0,8})?",
            "\\PC{0,6}",
        ]
    }

    /// Serves `input` as one connection's bytes: each request's body is read and answered.
    /// Returns the bodies read (or how their reads failed).
    fn serve(input: &[u8]) -> Vec<Result<Vec<u8>, std::io::ErrorKind>> {
        let (mut client, server) = std::os::unix::net::UnixStream::pair().unwrap();
        let input = input.to_vec();
        // The client writes and reads on its own thread, so that neither side waits on the other.
        let peer = std::thread::spawn(move || {
            let _ = client.write_all(&input);
            let _ = client.shutdown(std::net::Shutdown::Write);
            let _ = client.read_to_end(&mut Vec::new());
        });
        let mut bodies = Vec::new();
        for mut rq in tiny_http::HttpConnection::unix(server, tiny_http::Limits::default()) {
            let mut got = Vec::new();
            bodies.push(
                rq.as_reader()
                    .read_to_end(&mut got)
                    .map(|_| got)
                    .map_err(|e| e.kind()),
            );
            let _ = rq.respond(tiny_http::Response::empty(200));
        }
        peer.join().unwrap();
        bodies
    }

    proptest! {
        #![proptest_config(prop_config(256))]

        /// Any bytes on a connection: requests or refusals, never a panic or a hang, never a
        /// body longer than what was sent.
        #[test]
        fn hostile_heads(
            lines in proptest::collection::vec((line(), "(\r\n|\n|\r)"), 0..12),
            body in proptest::collection::vec(any::<u8>(), 0..100),
        ) {
            let mut input = Vec::new();
            for (l, end) in &lines {
                input.extend(l);
                input.extend(end.bytes());
            }
            input.extend(&body);
            let bodies = serve(&input);
            prop_assert!(bodies.len() <= lines.len());
            for b in bodies.iter().flatten() {
                prop_assert!(b.len() <= input.len());
            }
        }

        /// Chunks framed as a client frames them decode to their concatenation.
        #[test]
        fn chunked_round_trip(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..300), 0..8),
            ext in any::<bool>(),
        ) {
            let mut input = b"POST /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for c in &chunks {
                input.extend(format!("{:x}{}\r\n", c.len(), if ext { ";a=b" } else { "" }).bytes());
                input.extend(c);
                input.extend(b"\r\n");
            }
            input.extend(b"0\r\nX-T: v\r\n\r\n");
            prop_assert_eq!(serve(&input), vec![Ok(chunks.concat())]);
        }

        /// Chunked bodies whose sizes and framing lie: the body fails or is short, no panic.
        #[test]
        fn hostile_chunks(
            parts in proptest::collection::vec(
                (size_line(), proptest::collection::vec(any::<u8>(), 0..40), "(\r\n|\n|\r|)"),
                0..6,
            ),
        ) {
            let mut input = b"POST /v2/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
            for (size, data, end) in &parts {
                input.extend(size.bytes());
                input.extend(b"\r\n");
                input.extend(data);
                input.extend(end.bytes());
            }
            let bodies = serve(&input);
            prop_assert!(bodies.len() <= 1);
            for b in bodies.iter().flatten() {
                prop_assert!(b.len() <= input.len());
            }
        }
    }
}
