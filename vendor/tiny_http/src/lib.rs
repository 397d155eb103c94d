//! # Outpost's copy of tiny_http 0.12
//!
//! Outpost patch: the listener and its threads are the caller's. Each accepted connection
//! becomes an [`HttpConnection`], an iterator of [`Request`]s served on the caller's thread
//! under per-phase time limits ([`Limits`]); see PATCHES.md. Upstream's `Server` (an accept
//! thread, a thread per connection without bound, and a queue of requests for worker threads)
//! is gone.
// Outpost patch: `deny`, not `forbid`, so that raw.rs may call poll(2), send(2) and ioctl(2)
// (three narrow `allow`s); nothing else is unsafe.
#![deny(unsafe_code)]
#![deny(rust_2018_idioms)]
#![allow(clippy::match_like_matches_macro)]

use std::io::Result as IoResult;
use std::net::{Shutdown, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

use client::ClientConnection;
use connection::Connection;
use pace::{Pace, PacedStream};
use util::RefinedTcpStream;

pub use common::{HTTPVersion, Header, HeaderField, Method, StatusCode};
pub use connection::ConnectionAbort;
pub use pace::{bytes_moved, bytes_received, bytes_sent, Limits};
pub use raw::RawBody;
pub use request::{ReadWrite, Request};
pub use response::{Response, ResponseBox};
#[cfg(feature = "ssl-rustls")]
pub use ssl::TlsConfig;
pub use test::TestRequest;

mod client;
mod common;
mod connection;
mod pace;
mod raw;
mod request;
mod response;
mod ssl;
mod test;
mod util;

/// Outpost patch: one accepted connection, read request by request on the caller's thread.
/// Each request must be answered (or dropped) before the next is read. When the iteration
/// ends, or the value is dropped, the connection is closed: gently (the write side first,
/// then what the client still sends is read and dropped for a moment) where the server
/// stops with input unread, so the client reads the last answer instead of a reset.
pub struct HttpConnection {
    client: Option<ClientConnection>,
    conn: Arc<Connection>,
    pace: Arc<Pace>,
    refused: Option<(u16, &'static str)>,
}

/// Outpost patch: what another thread may know and do about a connection.
#[derive(Clone)]
pub struct ConnectionWatch {
    pace: Arc<Pace>,
    abort: ConnectionAbort,
}

impl ConnectionWatch {
    /// Since when the connection waits for a request that has not begun (since its accept,
    /// for a first request), if it does.
    pub fn idle_since(&self) -> Option<Instant> {
        self.pace.idle_since()
    }

    /// Since when the connection holds its place without earning it (waiting for a request
    /// that has not begun, a head arriving slowly, a transfer behind the minimum rate), if it
    /// does: it may be closed for another.
    pub fn behind_since(&self) -> Option<Instant> {
        self.pace.behind_since()
    }

    /// Shuts the connection down: a blocked read or write on it returns at once.
    pub fn abort(&self) {
        self.abort.abort();
    }
}

impl HttpConnection {
    /// Serves an accepted TCP connection, over TLS if `tls` is given. The first request's head
    /// (and the TLS handshake) are due within `limits.head` from now.
    pub fn tcp(
        stream: TcpStream,
        limits: Limits,
        #[cfg(feature = "ssl-rustls")] tls: Option<&TlsConfig>,
    ) -> IoResult<HttpConnection> {
        let conn = Connection::from(stream);
        conn.set_nodelay();
        let pace = Arc::new(Pace::new(limits));
        let conn = Arc::new(conn);
        let paced = PacedStream::new(conn.clone(), pace.clone());
        #[cfg(feature = "ssl-rustls")]
        if let Some(tls) = tls {
            let (read, write) = RefinedTcpStream::new(tls.accept(paced)?);
            return Ok(Self::start(read, write, conn, pace));
        }
        let (read, write) = RefinedTcpStream::new(paced);
        Ok(Self::start(read, write, conn, pace))
    }

    /// Serves an accepted Unix-socket connection (plain HTTP).
    #[cfg(unix)]
    pub fn unix(stream: std::os::unix::net::UnixStream, limits: Limits) -> HttpConnection {
        let pace = Arc::new(Pace::new(limits));
        let conn = Arc::new(Connection::from(stream));
        let (read, write) = RefinedTcpStream::new(PacedStream::new(conn.clone(), pace.clone()));
        Self::start(read, write, conn, pace)
    }

    fn start(
        read: RefinedTcpStream,
        write: RefinedTcpStream,
        conn: Arc<Connection>,
        pace: Arc<Pace>,
    ) -> HttpConnection {
        HttpConnection {
            client: Some(ClientConnection::new(write, read, pace.clone())),
            conn,
            pace,
            refused: None,
        }
    }

    /// Once the iteration has ended, the status the connection answered by itself as it closed
    /// (a request the caller never saw: a malformed or oversized head, a head that timed out,
    /// an unsupported version, coding or `Expect`), and why.
    pub fn refused(&self) -> Option<(u16, &'static str)> {
        self.refused
    }

    /// A handle for other threads: is the connection idle, and closing it.
    pub fn watch(&self) -> ConnectionWatch {
        ConnectionWatch {
            pace: self.pace.clone(),
            abort: ConnectionAbort(self.conn.clone()),
        }
    }

    /// Closes the connection (once): the write side first; if the server leaves input unread,
    /// what arrives is read and dropped for up to half a second (256 KiB at most) before the
    /// socket closes, as Go's server does, so that the client is not reset before it reads
    /// the answer.
    fn finish(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        self.refused = client.refused();
        let linger = client.lingers() || self.pace.closing();
        drop(client); // flushes the last response
        let _ = self.conn.shutdown(Shutdown::Write);
        if !linger {
            return;
        }
        let until = Instant::now() + Duration::from_millis(500);
        let mut left: usize = 256 * 1024;
        let mut buf = [0u8; 4096];
        while left > 0 {
            let Some(wait) = until.checked_duration_since(Instant::now()) else {
                break;
            };
            if wait.is_zero() || self.conn.set_read_timeout(wait).is_err() {
                break;
            }
            match self.conn.read_shared(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    }
}

impl Iterator for HttpConnection {
    type Item = Request;

    /// The next request, or `None` once the connection is done (and closed).
    fn next(&mut self) -> Option<Request> {
        let next = self.client.as_mut()?.next();
        if next.is_none() {
            self.finish();
        }
        next
    }
}

impl Drop for HttpConnection {
    fn drop(&mut self) {
        self.finish();
    }
}
