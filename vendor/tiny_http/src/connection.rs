//! Abstractions of Tcp and Unix socket types (Outpost patch: listeners are the caller's;
//! see `HttpConnection`)

#[cfg(unix)]
use std::os::unix::net as unix_net;
use std::net::{Shutdown, SocketAddr, TcpStream};

/// Unified connection. Either a [`TcpStream`] or [`std::os::unix::net::UnixStream`].
#[derive(Debug)]
pub(crate) enum Connection {
    Tcp(TcpStream),
    #[cfg(unix)]
    Unix(unix_net::UnixStream),
}
impl Connection {
    /// Gets the peer's address. Some for TCP, None for Unix sockets.
    pub(crate) fn peer_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        match self {
            Self::Tcp(s) => s.peer_addr().map(Some),
            #[cfg(unix)]
            Self::Unix(_) => Ok(None),
        }
    }

    pub(crate) fn shutdown(&self, how: Shutdown) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.shutdown(how),
            #[cfg(unix)]
            Self::Unix(s) => s.shutdown(how),
        }
    }

    /// Outpost patch: reads through a shared reference (the socket is shared, not `dup`ed,
    /// between a connection's reader, writer and abort handle: one descriptor a connection).
    pub(crate) fn read_shared(&self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::io::Read;
        match self {
            Self::Tcp(s) => (&*s).read(buf),
            #[cfg(unix)]
            Self::Unix(s) => (&*s).read(buf),
        }
    }

    /// Outpost patch: writes through a shared reference.
    pub(crate) fn write_shared(&self, buf: &[u8]) -> std::io::Result<usize> {
        use std::io::Write;
        match self {
            Self::Tcp(s) => (&*s).write(buf),
            #[cfg(unix)]
            Self::Unix(s) => (&*s).write(buf),
        }
    }

    /// Outpost patch: the descriptor (for poll(2) and send(2) in `pace.rs`).
    pub(crate) fn raw_fd(&self) -> std::os::fd::RawFd {
        use std::os::fd::AsRawFd;
        match self {
            Self::Tcp(s) => s.as_raw_fd(),
            #[cfg(unix)]
            Self::Unix(s) => s.as_raw_fd(),
        }
    }

    /// Outpost patch: the socket's read timeout (`pace.rs` sets it per phase).
    pub(crate) fn set_read_timeout(&self, t: std::time::Duration) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(Some(t)),
            #[cfg(unix)]
            Self::Unix(s) => s.set_read_timeout(Some(t)),
        }
    }

    /// Outpost patch: the socket's write timeout.
    pub(crate) fn set_write_timeout(&self, t: std::time::Duration) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_write_timeout(Some(t)),
            #[cfg(unix)]
            Self::Unix(s) => s.set_write_timeout(Some(t)),
        }
    }

    /// Outpost patch: TCP_NODELAY, so a response written in pieces (headers, then a body)
    /// is not held back by Nagle's algorithm waiting for the client's delayed ACK (40 ms a
    /// round trip on Linux: small keep-alive GETs ran at 25 per second per connection).
    pub(crate) fn set_nodelay(&self) {
        if let Self::Tcp(s) = self {
            let _ = s.set_nodelay(true);
        }
    }
}

/// Outpost patch: shuts a request's connection down, e.g. when a response whose headers are
/// already sent cannot be completed, or to reclaim an idle kept-alive connection; the peer
/// then sees the connection end instead of waiting for bytes that will never come.
#[derive(Clone)]
pub struct ConnectionAbort(pub(crate) std::sync::Arc<Connection>);

impl ConnectionAbort {
    /// Closes both directions of the connection.
    pub fn abort(&self) {
        let _ = self.0.shutdown(Shutdown::Both);
    }
}

impl From<TcpStream> for Connection {
    fn from(s: TcpStream) -> Self {
        Self::Tcp(s)
    }
}
#[cfg(unix)]
impl From<unix_net::UnixStream> for Connection {
    fn from(s: unix_net::UnixStream) -> Self {
        Self::Unix(s)
    }
}
