use crate::connection::ConnectionAbort;
use crate::pace::PacedStream;
use crate::util::refined_tcp_stream::Stream as RefinedStream;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

/// A wrapper around an owned Rustls connection and corresponding stream.
///
/// Uses an internal Mutex to permit disparate reader & writer handles to access the stream.
/// Outpost patch: rustls 0.23 over the connection's paced socket, and a handle on the socket
/// that can shut the connection down without taking the lock a blocked read may hold.
#[derive(Clone)]
pub(crate) struct RustlsStream {
    inner: Arc<Mutex<rustls::StreamOwned<rustls::ServerConnection, PacedStream>>>,
    abort: ConnectionAbort,
}

impl RustlsStream {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, rustls::StreamOwned<rustls::ServerConnection, PacedStream>>
    {
        // A poisoned lock only means another thread panicked mid-I/O: the stream is still usable
        // or will error out on its own.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn peer_addr(&self) -> std::io::Result<Option<SocketAddr>> {
        self.abort.0.peer_addr()
    }

    pub(crate) fn abort_handle(&self) -> ConnectionAbort {
        self.abort.clone()
    }
}

impl Read for RustlsStream {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.lock().read(buf)
    }
}

impl Write for RustlsStream {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.lock().write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.lock().flush()
    }
}

/// Outpost patch: the server's TLS configuration (rustls 0.23, its crypto provider, versions
/// and certificate chosen by the caller), shared by every connection.
#[derive(Clone)]
pub struct TlsConfig(Arc<rustls::ServerConfig>);

impl TlsConfig {
    /// Serves HTTPS with `config`.
    pub fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(config)
    }

    pub(crate) fn accept(&self, stream: PacedStream) -> std::io::Result<RustlsStream> {
        let abort = ConnectionAbort(stream.connection().clone());
        let connection =
            rustls::ServerConnection::new(self.0.clone()).map_err(std::io::Error::other)?;
        Ok(RustlsStream {
            inner: Arc::new(Mutex::new(rustls::StreamOwned::new(connection, stream))),
            abort,
        })
    }
}

impl From<RustlsStream> for RefinedStream {
    fn from(stream: RustlsStream) -> Self {
        Self::Https(stream)
    }
}
