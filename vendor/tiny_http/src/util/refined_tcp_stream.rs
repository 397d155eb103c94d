use std::io::Result as IoResult;
use std::io::{Read, Write};
use std::net::SocketAddr;

use crate::connection::ConnectionAbort;
use crate::pace::PacedStream;
#[cfg(feature = "ssl-rustls")]
use crate::ssl::SslStream;

/// Outpost patch: both kinds share their socket through an `Arc` (no `dup`), under a `Pace`.
#[derive(Clone)]
pub(crate) enum Stream {
    Http(PacedStream),
    #[cfg(feature = "ssl-rustls")]
    Https(SslStream),
}

impl From<PacedStream> for Stream {
    fn from(stream: PacedStream) -> Self {
        Stream::Http(stream)
    }
}

impl Stream {
    fn secure(&self) -> bool {
        match self {
            Stream::Http(_) => false,
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(_) => true,
        }
    }

    fn peer_addr(&self) -> IoResult<Option<SocketAddr>> {
        match self {
            Stream::Http(s) => s.connection().peer_addr(),
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(s) => s.peer_addr(),
        }
    }

}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        match self {
            Stream::Http(s) => s.read(buf),
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        match self {
            Stream::Http(s) => s.write(buf),
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> IoResult<()> {
        match self {
            Stream::Http(s) => s.flush(),
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(s) => s.flush(),
        }
    }
}

/// One half (reading or writing) of a connection. Outpost patch: dropping it no longer shuts
/// the socket down; `HttpConnection` closes the connection (after a lingering drain where
/// needed, so a response is not lost to a reset).
pub struct RefinedTcpStream {
    stream: Stream,
}

impl RefinedTcpStream {
    pub(crate) fn new<S>(stream: S) -> (RefinedTcpStream, RefinedTcpStream)
    where
        S: Into<Stream>,
    {
        let stream: Stream = stream.into();
        let read = RefinedTcpStream {
            stream: stream.clone(),
        };
        (read, RefinedTcpStream { stream })
    }

    /// Returns true if this struct wraps around a secure connection.
    #[inline]
    pub(crate) fn secure(&self) -> bool {
        self.stream.secure()
    }

    /// Outpost patch: a handle that can shut this connection down.
    pub(crate) fn abort_handle(&self) -> ConnectionAbort {
        match &self.stream {
            Stream::Http(s) => ConnectionAbort(s.connection().clone()),
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(s) => s.abort_handle(),
        }
    }

    pub(crate) fn peer_addr(&mut self) -> IoResult<Option<SocketAddr>> {
        self.stream.peer_addr()
    }

    /// Outpost patch: the paced socket of a plain (not TLS) connection.
    pub(crate) fn plain(&self) -> Option<PacedStream> {
        match &self.stream {
            Stream::Http(s) => Some(s.clone()),
            #[cfg(feature = "ssl-rustls")]
            Stream::Https(_) => None,
        }
    }
}

impl Read for RefinedTcpStream {
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        self.stream.read(buf)
    }
}

impl Write for RefinedTcpStream {
    fn write(&mut self, buf: &[u8]) -> IoResult<usize> {
        self.stream.write(buf)
    }

    fn flush(&mut self) -> IoResult<()> {
        self.stream.flush()
    }
}
