use ascii::AsciiString;

use std::io::Error as IoError;
use std::io::Result as IoResult;
use std::io::{BufReader, BufWriter, ErrorKind, Read, Write};

use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::Arc;

use crate::common::{HTTPVersion, Method};
use crate::connection::ConnectionAbort;
use crate::pace::Pace;
use crate::util::RefinedTcpStream;
use crate::util::{SequentialReader, SequentialReaderBuilder, SequentialWriterBuilder};
use crate::Request;

/// Longest request or header line accepted (Outpost patch).
const MAX_LINE_LEN: usize = 16 * 1024;
/// Most header lines accepted in one request (Outpost patch).
const MAX_HEADERS: usize = 128;
/// Most bytes of a whole request head (Outpost patch): what a connection may make the server
/// hold before its request is even known (a bearer token is a few KiB).
const MAX_HEAD: usize = 64 * 1024;

/// What Go's HTTPS server answers a plain-HTTP request with, turned around (Outpost patch):
/// a client probing with a TLS ClientHello reads this as "server gave HTTP response to HTTPS
/// client" and falls back to HTTP, where a closed connection looks like a network fault.
const TLS_ON_PLAIN: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain\r\n\
Connection: close\r\n\r\nClient sent an HTTPS request to an HTTP server.\n";

/// The HTTP/2 answer to a prior-knowledge preface (Outpost patch): an empty SETTINGS frame,
/// then GOAWAY with HTTP_1_1_REQUIRED, so an HTTP/2 client fails at once (curl falls back to
/// HTTP/1.1) instead of waiting for frames that never come.
const H2_GOAWAY: &[u8] = &[
    0, 0, 0, 4, 0, 0, 0, 0, 0, // SETTINGS, no parameters
    0, 0, 8, 7, 0, 0, 0, 0, 0, // GOAWAY on stream 0, 8 bytes:
    0, 0, 0, 0, // last stream id 0
    0, 0, 0, 0x0d, // HTTP_1_1_REQUIRED
];

/// A ClientConnection is an object that will store a socket to a client
/// and return Request objects.
pub struct ClientConnection {
    // address of the client
    remote_addr: Option<SocketAddr>,

    // sequence of Readers to the stream, so that the data is not read in
    //  the wrong order
    source: SequentialReaderBuilder<BufReader<RefinedTcpStream>>,

    // sequence of Writers to the stream, to avoid writing response #2 before
    //  response #1
    sink: SequentialWriterBuilder<BufWriter<RefinedTcpStream>>,

    // Reader to read the next header from
    next_header_source: SequentialReader<BufReader<RefinedTcpStream>>,

    // set to true if we know that the previous request is the last one
    no_more_requests: bool,

    // true if the connection goes through SSL
    secure: bool,

    // Outpost patch: handed to each request so a handler can abort the connection
    abort: ConnectionAbort,

    // Outpost patch: the connection's phase and timers
    pace: Arc<Pace>,

    // Outpost patch: the socket, for plain connections (`Request::raw_body`)
    plain: Option<crate::pace::PacedStream>,

    // Outpost patch: no request has been read yet
    first: bool,

    // Outpost patch: the connection ends with input the server did not read (an error answer,
    // an undrained body): close it gently, so the answer is not lost to a reset
    linger: bool,

    // Outpost patch: the status this connection was refused with before a request reached the
    // caller, and why (the caller counts and logs what it never saw)
    refused: Option<(u16, &'static str)>,
}

/// Error that can happen when reading a request.
#[derive(Debug)]
enum ReadError {
    WrongRequestLine,
    WrongHeader(HTTPVersion),
    /// the client sent an unrecognized `Expect` header
    ExpectationFailed(HTTPVersion),
    ReadIoError(IoError),
    /// Outpost patch: a TLS handshake on the plain-HTTP port
    TlsOnPlain,
    /// Outpost patch: an HTTP/2 prior-knowledge preface
    Http2Preface,
    /// Outpost patch: HTTP/0.9, or a version above 1.1 that is not the HTTP/2 preface
    Version,
    /// Outpost patch: ambiguous or malformed body framing (400)
    BadFraming(&'static str, HTTPVersion),
    /// Outpost patch: a transfer coding other than chunked (501)
    UnsupportedCoding(HTTPVersion),
}

impl ClientConnection {
    /// Creates a new `ClientConnection` that takes ownership of the `TcpStream`.
    pub(crate) fn new(
        write_socket: RefinedTcpStream,
        mut read_socket: RefinedTcpStream,
        pace: Arc<Pace>,
    ) -> ClientConnection {
        let remote_addr = read_socket.peer_addr().ok().flatten();
        let abort = read_socket.abort_handle();
        let secure = read_socket.secure();
        let plain = read_socket.plain();

        let mut source = SequentialReaderBuilder::new(BufReader::with_capacity(1024, read_socket));
        let first_header = source.next().unwrap();

        ClientConnection {
            source,
            sink: SequentialWriterBuilder::new(BufWriter::with_capacity(1024, write_socket)),
            remote_addr,
            next_header_source: first_header,
            no_more_requests: false,
            secure,
            abort,
            pace,
            plain,
            first: true,
            linger: false,
            refused: None,
        }
    }

    /// true if the connection is HTTPS
    pub fn secure(&self) -> bool {
        self.secure
    }

    /// Outpost patch: the connection ends with input the server did not read.
    pub(crate) fn lingers(&self) -> bool {
        self.linger
    }

    /// Outpost patch: the status the connection answered by itself before it closed, and why.
    pub(crate) fn refused(&self) -> Option<(u16, &'static str)> {
        self.refused
    }

    /// Reads the next line from self.next_header_source.
    ///
    /// Reads until `CRLF` is reached. The next read will start
    ///  at the first byte of the new line.
    fn read_next_line(
        &mut self,
        request_line: bool,
        budget: &mut usize,
    ) -> Result<AsciiString, ReadError> {
        let mut buf = Vec::new();
        let mut prev_byte_was_cr = false;

        loop {
            let byte = self.next_header_source.by_ref().bytes().next();

            let byte = match byte {
                Some(b) => b.map_err(ReadError::ReadIoError)?,
                None => {
                    return Err(ReadError::ReadIoError(IoError::new(
                        ErrorKind::ConnectionAborted,
                        "Unexpected EOF",
                    )))
                }
            };

            if byte == b'\n' && prev_byte_was_cr {
                buf.pop(); // removing the '\r'
                // Outpost patch: a bare CR or LF, NUL or another control character (tab
                // aside) inside a line is refused: a proxy in front may split lines or end
                // strings differently, and then disagree about the headers.
                if buf.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
                    return Err(ReadError::WrongRequestLine);
                }
                return AsciiString::from_ascii(buf).map_err(|_| ReadError::WrongRequestLine);
            }

            // Outpost patch: a TLS handshake record (0x16) where a request line should start is a
            // client trying HTTPS on this plain port: it gets an HTTP answer it understands
            // (upstream waited for a line end that never comes, until the client timed out).
            if request_line && buf.is_empty() && byte == 0x16 && !self.secure {
                return Err(ReadError::TlsOnPlain);
            }

            prev_byte_was_cr = byte == b'\r';

            // Outpost patch: a header line is bounded (upstream grew it without limit), and so
            // is the whole head.
            if buf.len() >= MAX_LINE_LEN || *budget == 0 {
                return Err(ReadError::WrongRequestLine);
            }
            *budget -= 1;
            buf.push(byte);
        }
    }

    /// Reads a request from the stream.
    /// Blocks until the header has been read.
    fn read(&mut self) -> Result<Request, ReadError> {
        let (method, path, version, headers) = {
            // reading the request line
            let mut budget = MAX_HEAD;
            let (method, path, version) = {
                let line = self.read_next_line(true, &mut budget)?;

                parse_request_line(
                    line.as_str().trim(), // TODO: remove this conversion
                )?
            };

            // Outpost patch: versions this server cannot frame end the connection.
            if version == HTTPVersion(2, 0) && method.as_str() == "PRI" {
                return Err(ReadError::Http2Preface);
            }
            if version > HTTPVersion(1, 1) || version < HTTPVersion(1, 0) {
                return Err(ReadError::Version);
            }

            // getting all headers
            let headers = {
                let mut headers = Vec::new();
                loop {
                    let line = self
                        .read_next_line(false, &mut budget)
                        .map_err(|e| match e {
                            ReadError::WrongRequestLine => ReadError::WrongHeader(version.clone()),
                            e => e,
                        })?;

                    if line.is_empty() {
                        break;
                    };
                    // Outpost patch: so is the number of header lines; a line folded onto the
                    // one before (obsolete, RFC 9112 section 5.2) is refused, not read as a
                    // header of its own.
                    if headers.len() >= MAX_HEADERS
                        || line.as_bytes().first().is_some_and(|b| *b == b' ' || *b == b'\t')
                    {
                        return Err(ReadError::WrongHeader(version));
                    }
                    headers.push(match FromStr::from_str(line.as_str().trim()) {
                        // TODO: remove this conversion
                        Ok(h) => h,
                        _ => return Err(ReadError::WrongHeader(version)),
                    });
                }

                headers
            };

            (method, path, version, headers)
        };

        // Outpost patch: the head is in; the body and the response run on rate windows.
        self.pace.transfer();

        // building the writer for the request
        let writer = self.sink.next().unwrap();

        // follow-up for next potential request
        let mut data_source = self.source.next().unwrap();
        std::mem::swap(&mut self.next_header_source, &mut data_source);

        // building the next reader
        let request = crate::request::new_request(
            self.secure,
            method,
            path,
            version.clone(),
            headers,
            self.remote_addr,
            data_source,
            writer,
            Some(self.abort.clone()),
            Some(self.pace.clone()),
        )
        .map(|rq| rq.with_plain(self.plain.clone()))
        .map_err(|e| {
            use crate::request;
            match e {
                request::RequestCreationError::CreationIoError(e) => ReadError::ReadIoError(e),
                request::RequestCreationError::ExpectationFailed => {
                    ReadError::ExpectationFailed(version.clone())
                }
                request::RequestCreationError::BadFraming(why) => {
                    ReadError::BadFraming(why, version.clone())
                }
                request::RequestCreationError::UnsupportedCoding => {
                    ReadError::UnsupportedCoding(version.clone())
                }
            }
        })?;

        // return the request
        Ok(request)
    }

    /// Outpost patch: answers a request that cannot be served with `status` (and `text`), says
    /// the connection closes, and marks it to close gently.
    fn refuse(&mut self, status: u16, version: HTTPVersion, text: &'static str) {
        use crate::{Response, StatusCode};
        let why = if text.is_empty() {
            StatusCode(status).default_reason_phrase()
        } else {
            text
        };
        self.refused = Some((status, why));
        let writer = self.sink.next().unwrap();
        let mut response = Response::from_string(text).with_status_code(StatusCode(status));
        response.push_connection_close();
        response.raw_print(writer, version, &[], false, None).ok();
        self.linger = true;
    }

    /// Outpost patch: writes `bytes` as they are (answers in another protocol's terms); `status`
    /// and `why` are what the caller is told it was.
    fn refuse_raw(&mut self, status: u16, why: &'static str, bytes: &[u8]) {
        self.refused = Some((status, why));
        let mut writer = self.sink.next().unwrap();
        let _ = writer.write_all(bytes).and_then(|()| writer.flush());
        self.linger = true;
    }
}

impl Iterator for ClientConnection {
    type Item = Request;

    /// Blocks until the next Request is available.
    /// Returns None when no new Requests will come from the client.
    fn next(&mut self) -> Option<Request> {
        // Outpost patch: the previous request left its body unread, or broke off (checked
        // first: the close must then be gentle, whatever the client said).
        if self.pace.closing() {
            self.linger = true;
            return None;
        }
        // the client sent a "connection: close" header in this previous request
        //  or is using HTTP 1.0, meaning that no new request will come
        if self.no_more_requests {
            return None;
        }
        if !self.first {
            self.pace.idle();
        }
        self.first = false;

        let v11 = HTTPVersion(1, 1);
        let rq = match self.read() {
            Ok(rq) => rq,
            Err(ReadError::WrongRequestLine) => {
                self.refuse(400, v11, "malformed request line");
                return None; // we don't know where the next request would start,
                             // se we have to close
            }
            Err(ReadError::WrongHeader(ver)) => {
                self.refuse(400, ver, "malformed header");
                return None;
            }
            Err(ReadError::BadFraming(why, ver)) => {
                self.refuse(400, ver, why);
                return None;
            }
            Err(ReadError::UnsupportedCoding(ver)) => {
                self.refuse(501, ver, "only the chunked transfer coding is supported");
                return None;
            }
            Err(ReadError::Version) => {
                self.refuse(505, v11, "This server only supports HTTP versions 1.0 and 1.1");
                return None;
            }
            Err(ReadError::TlsOnPlain) => {
                self.refuse_raw(400, "a TLS handshake on the plain-HTTP port", TLS_ON_PLAIN);
                return None;
            }
            Err(ReadError::Http2Preface) => {
                self.refuse_raw(505, "an HTTP/2 prior-knowledge preface", H2_GOAWAY);
                return None;
            }
            Err(ReadError::ExpectationFailed(ver)) => {
                self.refuse(417, ver, "");
                return None;
            }
            // Outpost patch: a head that did not arrive in time gets 408; a connection that
            // stays silent (kept alive, or new) is closed without a word (an unasked-for
            // response on an idle connection confuses clients).
            Err(ReadError::ReadIoError(ref err))
                if err.kind() == ErrorKind::TimedOut && self.pace.idle_since().is_none() =>
            {
                self.refuse(408, v11, "");
                return None;
            }
            Err(ReadError::ReadIoError(_)) => return None,
        };

        // updating the status of the connection
        let connection_header = rq
            .headers()
            .iter()
            .find(|h| h.field.equiv("Connection"))
            .map(|h| h.value.as_str());

        let lowercase = connection_header.map(|h| h.to_ascii_lowercase());

        match lowercase {
            Some(ref val) if val.contains("close") => self.no_more_requests = true,
            Some(ref val)
                if !val.contains("keep-alive") && *rq.http_version() == HTTPVersion(1, 0) =>
            {
                self.no_more_requests = true
            }
            None if *rq.http_version() == HTTPVersion(1, 0) => self.no_more_requests = true,
            _ => (),
        };

        // returning the request
        Some(rq)
    }
}

/// Parses a "HTTP/1.1" string.
fn parse_http_version(version: &str) -> Result<HTTPVersion, ReadError> {
    let (major, minor) = match version {
        "HTTP/0.9" => (0, 9),
        "HTTP/1.0" => (1, 0),
        "HTTP/1.1" => (1, 1),
        "HTTP/2.0" => (2, 0),
        "HTTP/3.0" => (3, 0),
        _ => return Err(ReadError::WrongRequestLine),
    };

    Ok(HTTPVersion(major, minor))
}

/// Parses the request line of the request.
/// eg. GET / HTTP/1.1
fn parse_request_line(line: &str) -> Result<(Method, String, HTTPVersion), ReadError> {
    let mut parts = line.split(' ');

    let method = parts.next().and_then(|w| w.parse().ok());
    let path = parts.next().map(ToOwned::to_owned);
    let version = parts.next().and_then(|w| parse_http_version(w).ok());
    // Outpost patch: exactly three words (upstream ignored whatever followed the version).
    if parts.next().is_some() {
        return Err(ReadError::WrongRequestLine);
    }

    method
        .and_then(|method| Some((method, path?, version?)))
        .ok_or(ReadError::WrongRequestLine)
}

#[cfg(test)]
mod test {
    #[test]
    fn test_parse_request_line() {
        let (method, path, ver) = super::parse_request_line("GET /hello HTTP/1.1").unwrap();

        assert!(method == crate::Method::Get);
        assert!(path == "/hello");
        assert!(ver == crate::common::HTTPVersion(1, 1));

        assert!(super::parse_request_line("GET /hello").is_err());
        assert!(super::parse_request_line("qsd qsd qsd").is_err());
        assert!(super::parse_request_line("GET /hello HTTP/1.1 x").is_err());
    }
}
