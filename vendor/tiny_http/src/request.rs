use std::io::Error as IoError;
use std::io::{self, Cursor, ErrorKind, Read, Write};

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;

use crate::pace::Pace;
use crate::util::{EqualReader, FusedReader};
use crate::{HTTPVersion, Header, Method, Response, StatusCode};

/// Represents an HTTP request made by a client.
///
/// A `Request` object is what is produced by the server, and is your what
/// your code must analyse and answer.
///
/// This object implements the `Send` trait, therefore you can dispatch your requests to
/// worker threads.
///
/// # Pipelining
///
/// If a client sends multiple requests in a row (without waiting for the response), then you will
/// get multiple `Request` objects simultaneously. This is called *requests pipelining*.
/// Tiny-http automatically reorders the responses so that you don't need to worry about the order
/// in which you call `respond` or `into_writer`.
///
/// This mechanic is disabled if:
///
///  - The body of a request is large enough (handling requires pipelining requires storing the
///    body of the request in a buffer ; if the body is too big, tiny-http will avoid doing that)
///  - A request sends a `Expect: 100-continue` header (which means that the client waits to
///    know whether its body will be processed before sending it)
///  - A request sends a `Connection: close` header or `Connection: upgrade` header (used for
///    websockets), which indicates that this is the last request that will be received on this
///    connection
///
/// # Automatic cleanup
///
/// If a `Request` object is destroyed without `into_writer` or `respond` being called,
/// an empty response with a 500 status code (internal server error) will automatically be
/// sent back to the client.
/// This means that if your code fails during the handling of a request, this "internal server
/// error" response will automatically be sent during the stack unwinding.
///
/// # Testing
///
/// If you want to build fake requests to test your server, use [`TestRequest`](crate::test::TestRequest).
pub struct Request {
    // where to read the body from
    data_reader: Option<Box<dyn Read + Send + 'static>>,

    // Outpost patch: body bytes read from `data_reader` so far
    body_read: Arc<AtomicU64>,

    // if this writer is empty, then the request has been answered
    response_writer: Option<Box<dyn Write + Send + 'static>>,

    remote_addr: Option<SocketAddr>,

    // true if HTTPS, false if HTTP
    secure: bool,

    method: Method,

    path: String,

    http_version: HTTPVersion,

    headers: Vec<Header>,

    body_length: Option<u64>,

    // Outpost patch: body bytes not read yet (`u64::MAX` while a chunked body has not ended)
    unread: Arc<AtomicU64>,

    // Outpost patch: the connection's phase and timers (None for tests)
    pace: Option<Arc<Pace>>,

    // Outpost patch: the socket of a plain connection (`raw_body`)
    plain: Option<crate::pace::PacedStream>,

    // true if a `100 Continue` response must be sent when `as_reader()` is called
    must_send_continue: bool,

    // If Some, a message must be sent after responding
    notify_when_responded: Option<Sender<()>>,

    // Outpost patch: shuts the connection down (None for tests)
    abort: Option<crate::connection::ConnectionAbort>,
}

struct NotifyOnDrop<R> {
    sender: Sender<()>,
    inner: R,
}

impl<R: Read> Read for NotifyOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}
impl<R: Write> Write for NotifyOnDrop<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
impl<R> Drop for NotifyOnDrop<R> {
    fn drop(&mut self) {
        self.sender.send(()).unwrap();
    }
}

/// Outpost patch: how long the rest of a small unread body may take to arrive to be drained.
const DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// Error that can happen when building a `Request` object.
#[derive(Debug)]
pub enum RequestCreationError {
    /// The client sent an `Expect` header that was not recognized by tiny-http.
    ExpectationFailed,

    /// Error while reading data from the socket during the creation of the `Request`.
    CreationIoError(IoError),

    /// Outpost patch: the body's framing is malformed or ambiguous (400, then close).
    BadFraming(&'static str),

    /// Outpost patch: a transfer coding other than `chunked` (501, then close).
    UnsupportedCoding,
}

impl From<IoError> for RequestCreationError {
    fn from(err: IoError) -> RequestCreationError {
        RequestCreationError::CreationIoError(err)
    }
}

/// Builds a new request.
///
/// After the request line and headers have been read from the socket, a new `Request` object
/// is built.
///
/// You must pass a `Read` that will allow the `Request` object to read from the incoming data.
/// It is the responsibility of the `Request` to read only the data of the request and not further.
///
/// The `Write` object will be used by the `Request` to write the response.
#[allow(clippy::too_many_arguments)]
pub fn new_request<R, W>(
    secure: bool,
    method: Method,
    path: String,
    version: HTTPVersion,
    headers: Vec<Header>,
    remote_addr: Option<SocketAddr>,
    mut source_data: R,
    writer: W,
    abort: Option<crate::connection::ConnectionAbort>,
    pace: Option<Arc<Pace>>,
) -> Result<Request, RequestCreationError>
where
    R: Read + Send + 'static,
    W: Write + Send + 'static,
{
    // Outpost patch: strict framing. A message whose body length two parties could read
    // differently (a proxy in front and this server) is refused, not guessed at: that is how
    // requests are smuggled.
    let (content_length, chunked) = framing(&headers, &version)?;
    let unread = Arc::new(AtomicU64::new(0));

    // true if the client sent a `Expect: 100-continue` header
    let expects_continue = {
        match headers
            .iter()
            .find(|h: &&Header| h.field.equiv("Expect"))
            .map(|h| h.value.as_str())
        {
            None => false,
            Some(v) if v.eq_ignore_ascii_case("100-continue") => true,
            _ => return Err(RequestCreationError::ExpectationFailed),
        }
    };

    // we wrap `source_data` around a reading whose nature depends on the transfer-encoding and
    // content-length headers
    // Outpost patch: `Connection: upgrade` (e.g. curl's h2c offer) is ignored: the body is
    // framed as usual and the connection stays HTTP/1.1 (upstream handed the handler the raw
    // stream as the body, which a handler reading a body would read to the end of the
    // connection).
    let reader = if let Some(content_length) = content_length {
        if content_length == 0 {
            Box::new(io::empty()) as Box<dyn Read + Send + 'static>
        } else if content_length <= 1024 && !expects_continue {
            // if the content-length is small enough, we just read everything into a buffer
            let content_length = content_length as usize;
            let mut buffer = vec![0; content_length];
            let mut offset = 0;

            while offset != content_length {
                let read = source_data.read(&mut buffer[offset..])?;
                if read == 0 {
                    // the socket returned EOF, but we were before the expected content-length
                    // aborting
                    let info = "Connection has been closed before we received enough data";
                    let err = IoError::new(ErrorKind::ConnectionAborted, info);
                    return Err(RequestCreationError::CreationIoError(err));
                }

                offset += read;
            }

            Box::new(Cursor::new(buffer)) as Box<dyn Read + Send + 'static>
        } else {
            let data_reader =
                EqualReader::new(source_data, content_length, unread.clone(), pace.clone());
            Box::new(FusedReader::new(data_reader)) as Box<dyn Read + Send + 'static>
        }
    } else if chunked {
        // if a transfer-encoding was specified, then "chunked" is ALWAYS applied
        // over the message (RFC2616 #3.6)
        unread.store(u64::MAX, Ordering::Relaxed);
        Box::new(FusedReader::new(DrainOnDrop {
            inner: crate::util::ChunkedDecoder::new(source_data),
            ended: false,
            unread: unread.clone(),
            pace: pace.clone(),
        }))
            as Box<dyn Read + Send + 'static>
    } else {
        // if we have neither a Content-Length nor a Transfer-Encoding,
        // assuming that we have no data
        // TODO: could also be multipart/byteranges
        Box::new(io::empty()) as Box<dyn Read + Send + 'static>
    };

    // Outpost patch: the body bytes the handler reads are counted (for its access log).
    let body_read = Arc::new(AtomicU64::new(0));
    let reader = Box::new(CountingReader {
        inner: reader,
        count: body_read.clone(),
    }) as Box<dyn Read + Send + 'static>;

    Ok(Request {
        data_reader: Some(reader),
        body_read,
        response_writer: Some(Box::new(writer) as Box<dyn Write + Send + 'static>),
        remote_addr,
        secure,
        method,
        path,
        http_version: version,
        headers,
        body_length: content_length,
        unread,
        pace,
        plain: None,
        must_send_continue: expects_continue,
        notify_when_responded: None,
        abort,
    })
}

/// Outpost patch: counts the bytes read through it into `count`.
struct CountingReader {
    inner: Box<dyn Read + Send + 'static>,
    count: Arc<AtomicU64>,
}

impl Read for CountingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

impl Request {
    /// Outpost patch: the body bytes the handler has read so far (what was drained unread
    /// after the answer does not count).
    pub fn body_bytes_read(&self) -> u64 {
        self.body_read.load(Ordering::Relaxed)
    }

    /// Returns true if the request was made through HTTPS.
    #[inline]
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Returns the method requested by the client (eg. `GET`, `POST`, etc.).
    #[inline]
    pub fn method(&self) -> &Method {
        &self.method
    }

    /// Returns the resource requested by the client.
    #[inline]
    pub fn url(&self) -> &str {
        &self.path
    }

    /// Returns a list of all headers sent by the client.
    #[inline]
    pub fn headers(&self) -> &[Header] {
        &self.headers
    }

    /// Returns the HTTP version of the request.
    #[inline]
    pub fn http_version(&self) -> &HTTPVersion {
        &self.http_version
    }

    /// Returns the length of the body in bytes.
    ///
    /// Returns `None` if the length is unknown. Outpost patch: a `u64`, so that a 32-bit
    /// device takes bodies over 4 GiB.
    #[inline]
    pub fn body_length(&self) -> Option<u64> {
        self.body_length
    }

    /// Outpost patch: settles the body before the answer, and says whether the connection
    /// closes after it (the answer then says `Connection: close`). A body left unread is read
    /// and dropped now if it is small (up to the drain limit, so that the connection can carry
    /// the next request, as Go's server does); a larger one, one the client has not sent yet
    /// (`Expect: 100-continue` never answered), or one that fails to arrive closes the
    /// connection instead.
    pub fn closes_connection(&mut self) -> bool {
        let Some(p) = self.pace.clone() else {
            return false;
        };
        let unread = self.unread.load(Ordering::Relaxed);
        let drain = p.limits().drain;
        if unread == 0 || p.closing() {
        } else if self.must_send_continue || (unread != u64::MAX && unread > drain) {
            p.set_close();
        } else if let Some(body) = self.data_reader.as_mut() {
            // What is owed must come at once: a client that holds it back holds the
            // connection for nothing, so it gets the answer and the connection closes.
            p.deadline(DRAIN_WAIT);
            let left = io::copy(&mut body.take(drain + 1), &mut io::sink());
            if !matches!(left, Ok(n) if n <= drain) || self.unread.load(Ordering::Relaxed) != 0 {
                p.set_close();
            }
        }
        p.closing()
    }

    pub(crate) fn with_plain(mut self, plain: Option<crate::pace::PacedStream>) -> Self {
        self.plain = plain;
        self
    }

    /// Outpost patch: the socket for sending the body by hand, on a plain connection (None
    /// over TLS): write and flush the head through `into_writer` first, then the body's bytes
    /// through the `RawBody` only.
    pub fn raw_body(&self) -> Option<crate::raw::RawBody> {
        self.plain.clone().map(crate::raw::RawBody::new)
    }

    /// Outpost patch: a handle that shuts this request's connection down, for a response that
    /// fails after its headers were sent.
    pub fn abort_handle(&self) -> Option<crate::connection::ConnectionAbort> {
        self.abort.clone()
    }

    /// Returns the address of the client that sent this request.
    ///
    /// The address is always `Some` for TCP listeners, but always `None` for UNIX listeners
    /// (as the remote address of a UNIX client is almost always unnamed).
    ///
    /// Note that this is gathered from the socket. If you receive the request from a proxy,
    /// this function will return the address of the proxy and not the address of the actual
    /// user.
    #[inline]
    pub fn remote_addr(&self) -> Option<&SocketAddr> {
        self.remote_addr.as_ref()
    }

    /// Sends a response with a `Connection: upgrade` header, then turns the `Request` into a `Stream`.
    ///
    /// The main purpose of this function is to support websockets.
    /// If you detect that the request wants to use some kind of protocol upgrade, you can
    ///  call this function to obtain full control of the socket stream.
    ///
    /// If you call this on a non-websocket request, tiny-http will wait until this `Stream` object
    ///  is destroyed before continuing to read or write on the socket. Therefore you should always
    ///  destroy it as soon as possible.
    pub fn upgrade<R: Read>(
        mut self,
        protocol: &str,
        response: Response<R>,
    ) -> Box<dyn ReadWrite + Send> {
        use crate::util::CustomStream;

        response
            .raw_print(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                &self.headers,
                false,
                Some(protocol),
            )
            .ok(); // TODO: unused result

        self.response_writer.as_mut().unwrap().flush().ok(); // TODO: unused result

        let stream = CustomStream::new(self.extract_reader_impl(), self.extract_writer_impl());
        if let Some(sender) = self.notify_when_responded.take() {
            let stream = NotifyOnDrop {
                sender,
                inner: stream,
            };
            Box::new(stream) as Box<dyn ReadWrite + Send>
        } else {
            Box::new(stream) as Box<dyn ReadWrite + Send>
        }
    }

    /// Allows to read the body of the request.
    ///
    /// # Example
    ///
    /// ```ignore
    /// # extern crate rustc_serialize;
    /// # extern crate tiny_http;
    /// # use rustc_serialize::json::Json;
    /// # use std::io::Read;
    /// # fn get_content_type(_: &tiny_http::Request) -> &'static str { "" }
    /// # fn main() {
    /// # let server = tiny_http::Server::http("0.0.0.0:0").unwrap();
    /// let mut request = server.recv().unwrap();
    ///
    /// if get_content_type(&request) == "application/json" {
    ///     let mut content = String::new();
    ///     request.as_reader().read_to_string(&mut content).unwrap();
    ///     let json: Json = content.parse().unwrap();
    /// }
    /// # }
    /// ```
    ///
    /// If the client sent a `Expect: 100-continue` header with the request, calling this
    ///  function will send back a `100 Continue` response.
    #[inline]
    pub fn as_reader(&mut self) -> &mut dyn Read {
        if self.must_send_continue {
            let msg = Response::new_empty(StatusCode(100));
            msg.raw_print(
                self.response_writer.as_mut().unwrap().by_ref(),
                self.http_version.clone(),
                &self.headers,
                true,
                None,
            )
            .ok();
            self.response_writer.as_mut().unwrap().flush().ok();
            self.must_send_continue = false;
        }

        self.data_reader.as_mut().unwrap()
    }

    /// Turns the `Request` into a writer.
    ///
    /// The writer has a raw access to the stream to the user.
    /// This function is useful for things like CGI.
    ///
    /// Note that the destruction of the `Writer` object may trigger
    /// some events. For exemple if a client has sent multiple requests and the requests
    /// have been processed in parallel, the destruction of a writer will trigger
    /// the writing of the next response.
    /// Therefore you should always destroy the `Writer` as soon as possible.
    #[inline]
    pub fn into_writer(mut self) -> Box<dyn Write + Send + 'static> {
        let writer = self.extract_writer_impl();
        if let Some(sender) = self.notify_when_responded.take() {
            let writer = NotifyOnDrop {
                sender,
                inner: writer,
            };
            Box::new(writer) as Box<dyn Write + Send + 'static>
        } else {
            writer
        }
    }

    /// Extract the response `Writer` object from the Request, dropping this `Writer` has the same side effects
    /// as the object returned by `into_writer` above.
    ///
    /// This may only be called once on a single request.
    fn extract_writer_impl(&mut self) -> Box<dyn Write + Send + 'static> {
        use std::mem;

        assert!(self.response_writer.is_some());

        let mut writer = None;
        mem::swap(&mut self.response_writer, &mut writer);
        writer.unwrap()
    }

    /// Extract the body `Reader` object from the Request.
    ///
    /// This may only be called once on a single request.
    fn extract_reader_impl(&mut self) -> Box<dyn Read + Send + 'static> {
        use std::mem;

        assert!(self.data_reader.is_some());

        let mut reader = None;
        mem::swap(&mut self.data_reader, &mut reader);
        reader.unwrap()
    }

    /// Sends a response to this request.
    #[inline]
    pub fn respond<R>(mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let res = self.respond_impl(response);
        if let Some(sender) = self.notify_when_responded.take() {
            sender.send(()).unwrap();
        }
        res
    }

    fn respond_impl<R>(&mut self, response: Response<R>) -> Result<(), IoError>
    where
        R: Read,
    {
        let mut writer = self.extract_writer_impl();

        let do_not_send_body = self.method == Method::Head;
        let mut response = response;
        if self.closes_connection() {
            response.push_connection_close();
        }

        Self::ignore_client_closing_errors(response.raw_print(
            writer.by_ref(),
            self.http_version.clone(),
            &self.headers,
            do_not_send_body,
            None,
        ))?;

        Self::ignore_client_closing_errors(writer.flush())
    }

    fn ignore_client_closing_errors(result: io::Result<()>) -> io::Result<()> {
        result.or_else(|err| match err.kind() {
            ErrorKind::BrokenPipe => Ok(()),
            ErrorKind::ConnectionAborted => Ok(()),
            ErrorKind::ConnectionRefused => Ok(()),
            ErrorKind::ConnectionReset => Ok(()),
            _ => Err(err),
        })
    }
}

impl fmt::Debug for Request {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> Result<(), fmt::Error> {
        write!(
            formatter,
            "Request({} {} from {:?})",
            self.method, self.path, self.remote_addr
        )
    }
}

/// Outpost patch: a chunked body the handler did not read is drained when the request goes,
/// as `EqualReader` does for a `Content-Length` body, up to the connection's drain limit (then
/// the connection closes). Left in the stream, its bytes were parsed as the next request on
/// the connection, which got a 400. Reading on past the end would take bytes of the next
/// request.
struct DrainOnDrop<R: Read> {
    inner: R,
    ended: bool,
    unread: Arc<AtomicU64>,
    pace: Option<Arc<Pace>>,
}

impl<R: Read> Read for DrainOnDrop<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.ended {
            return Ok(0);
        }
        let n = self.inner.read(buf).inspect_err(|_| {
            // Malformed or cut short: where the next request would start is unknown.
            if let Some(p) = &self.pace {
                p.set_close();
            }
        })?;
        self.ended = n == 0 && !buf.is_empty();
        if self.ended {
            self.unread.store(0, Ordering::Relaxed);
        }
        Ok(n)
    }
}

impl<R: Read> Drop for DrainOnDrop<R> {
    fn drop(&mut self) {
        if self.pace.as_ref().is_some_and(|p| p.closing()) {
            return; // the connection closes: nothing to keep in step
        }
        let mut budget = self.pace.as_ref().map_or(u64::MAX, |p| p.limits().drain);
        let mut buf = [0u8; 8192];
        while !self.ended {
            match self.read(&mut buf) {
                Ok(n) if (n as u64) <= budget => budget -= n as u64,
                _ => break,
            }
        }
        if !self.ended {
            if let Some(p) = &self.pace {
                p.set_close();
            }
        }
    }
}

/// Outpost patch: the body's framing: its `Content-Length`, or chunked. Refuses (RFC 9112
/// section 6.3) more than one `Content-Length`, one that is not a plain decimal number within
/// 64 bits (`-1`, `abc`, `1, 1`, an overflow), both `Content-Length` and `Transfer-Encoding`,
/// and a transfer coding other than `chunked` alone.
fn framing(
    headers: &[Header],
    version: &HTTPVersion,
) -> Result<(Option<u64>, bool), RequestCreationError> {
    if headers.iter().filter(|h| h.field.equiv("Host")).count() > 1 {
        return Err(RequestCreationError::BadFraming("more than one Host header"));
    }
    let mut lengths = headers.iter().filter(|h| h.field.equiv("Content-Length"));
    let mut codings = headers.iter().filter(|h| h.field.equiv("Transfer-Encoding"));
    let (length, second_length) = (lengths.next(), lengths.next());
    let (coding, second_coding) = (codings.next(), codings.next());
    if second_length.is_some() {
        return Err(RequestCreationError::BadFraming(
            "more than one Content-Length header",
        ));
    }
    if let Some(coding) = coding {
        if length.is_some() {
            return Err(RequestCreationError::BadFraming(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if *version < HTTPVersion(1, 1) {
            return Err(RequestCreationError::BadFraming(
                "Transfer-Encoding in an HTTP/1.0 request",
            ));
        }
        if second_coding.is_some() || !coding.value.as_str().trim().eq_ignore_ascii_case("chunked")
        {
            return Err(RequestCreationError::UnsupportedCoding);
        }
        return Ok((None, true));
    }
    let Some(length) = length else {
        return Ok((None, false));
    };
    let text = length.value.as_str().trim();
    let digits = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit());
    match text.parse::<u64>() {
        Ok(n) if digits => Ok((Some(n), false)),
        _ => Err(RequestCreationError::BadFraming("invalid Content-Length")),
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if self.response_writer.is_some() {
            let response = Response::empty(500);
            let _ = self.respond_impl(response); // ignoring any potential error
            if let Some(sender) = self.notify_when_responded.take() {
                sender.send(()).unwrap();
            }
        }
    }
}

/// Dummy trait that regroups the `Read` and `Write` traits.
///
/// Automatically implemented on all types that implement both `Read` and `Write`.
pub trait ReadWrite: Read + Write {}
impl<T> ReadWrite for T where T: Read + Write {}

#[cfg(test)]
mod tests {
    use super::Request;

    #[test]
    fn must_be_send() {
        #![allow(dead_code)]
        fn f<T: Send>(_: &T) {}
        fn bar(rq: &Request) {
            f(rq);
        }
    }
}
