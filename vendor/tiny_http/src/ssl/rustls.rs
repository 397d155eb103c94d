use crate::connection::{Connection, ConnectionAbort};
use crate::util::refined_tcp_stream::Stream as RefinedStream;
use std::error::Error;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};

/// A wrapper around an owned Rustls connection and corresponding stream.
///
/// Uses an internal Mutex to permit disparate reader & writer threads to access the stream
/// independently. Outpost patch: rustls 0.23, and a handle on the socket (a `dup`) that can
/// shut the connection down without taking the lock a blocked read may hold.
#[derive(Clone)]
pub(crate) struct RustlsStream {
    inner: Arc<Mutex<rustls::StreamOwned<rustls::ServerConnection, Connection>>>,
    abort: Option<ConnectionAbort>,
}

impl RustlsStream {
    fn lock(&self) -> std::sync::MutexGuard<'_, rustls::StreamOwned<rustls::ServerConnection, Connection>> {
        // A poisoned lock only means another thread panicked mid-I/O: the stream is still usable
        // or will error out on its own.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn peer_addr(&mut self) -> std::io::Result<Option<SocketAddr>> {
        self.lock().sock.peer_addr()
    }

    pub(crate) fn shutdown(&mut self, how: Shutdown) -> std::io::Result<()> {
        self.lock().sock.shutdown(how)
    }

    pub(crate) fn abort_handle(&self) -> Option<ConnectionAbort> {
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

/// The server's TLS configuration, shared by every connection.
pub(crate) struct RustlsContext(Arc<rustls::ServerConfig>);

impl RustlsContext {
    pub(crate) fn new(config: Arc<rustls::ServerConfig>) -> Self {
        Self(config)
    }

    pub(crate) fn accept(
        &self,
        stream: Connection,
    ) -> Result<RustlsStream, Box<dyn Error + Send + Sync + 'static>> {
        let abort = ConnectionAbort::new(&stream);
        let connection = rustls::ServerConnection::new(self.0.clone())?;
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
