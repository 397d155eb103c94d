//! Outpost patch: a strict decoder of chunked request bodies (RFC 9112 section 7.1), in place
//! of `chunked_transfer::Decoder`, which took sizes such as `+3`, ` 3`, `3 ` or `3\t`: a proxy
//! in front that reads them differently would disagree about where the body ends.

use std::io::{self, Read};

/// Longest chunk-size line (with extensions) and trailer line.
const MAX_LINE: usize = 4096;
/// Most trailer bytes.
const MAX_TRAILERS: usize = 16 * 1024;

enum State {
    /// Reading a chunk-size line.
    Size,
    /// Inside a chunk: bytes left.
    Data(u64),
    /// After a chunk's data: its CRLF.
    DataEnd,
    /// The last chunk was read: trailer lines up to an empty one.
    Trailers,
    Done,
    /// The body was malformed or cut short: every read says so again.
    Failed(io::ErrorKind),
}

/// Reads the data of a chunked body from `inner`, checking its framing strictly.
pub struct ChunkedDecoder<R> {
    inner: R,
    state: State,
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("chunked body: {what}"))
}

impl<R: Read> ChunkedDecoder<R> {
    pub fn new(inner: R) -> ChunkedDecoder<R> {
        ChunkedDecoder {
            inner,
            state: State::Size,
        }
    }

    fn byte(&mut self) -> io::Result<u8> {
        let mut b = [0u8; 1];
        match self.inner.read(&mut b)? {
            0 => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "chunked body: the connection ended inside it",
            )),
            _ => Ok(b[0]),
        }
    }

    /// A line up to its CRLF (not included), at most `MAX_LINE` bytes; a bare CR or LF, or
    /// another control character but tab, is an error.
    fn line(&mut self) -> io::Result<Vec<u8>> {
        let mut line = Vec::new();
        loop {
            match self.byte()? {
                b'\r' => {
                    return match self.byte()? {
                        b'\n' => Ok(line),
                        _ => Err(invalid("a CR without LF")),
                    }
                }
                b if (b < 0x20 && b != b'\t') || b == 0x7f => {
                    return Err(invalid("a control character in a line"))
                }
                b => line.push(b),
            }
            if line.len() > MAX_LINE {
                return Err(invalid("a line too long"));
            }
        }
    }

    /// Parses `1*HEXDIG [ BWS ";" ext ]`.
    fn size(line: &[u8]) -> io::Result<u64> {
        let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        if digits == 0 || digits > 16 {
            return Err(invalid("a chunk size that is not 1 to 16 hex digits"));
        }
        let rest = &line[digits..];
        let ext = rest.iter().position(|b| *b != b' ' && *b != b'\t');
        if let Some(i) = ext {
            if rest[i] != b';' {
                return Err(invalid("garbage after a chunk size"));
            }
        } else if !rest.is_empty() {
            return Err(invalid("blanks after a chunk size"));
        }
        let text = std::str::from_utf8(&line[..digits]).expect("hex digits are ASCII");
        u64::from_str_radix(text, 16).map_err(|_| invalid("a chunk size out of range"))
    }

    fn step(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.state {
                State::Size => {
                    let line = self.line()?;
                    self.state = match Self::size(&line)? {
                        0 => State::Trailers,
                        n => State::Data(n),
                    };
                }
                State::Data(left) => {
                    let want = buf.len().min(<usize as std::convert::TryFrom<u64>>::try_from(left).unwrap_or(usize::MAX));
                    let n = self.inner.read(&mut buf[..want])?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "chunked body: the connection ended inside a chunk",
                        ));
                    }
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(n);
                }
                State::DataEnd => {
                    if !self.line()?.is_empty() {
                        return Err(invalid("a chunk longer than its size"));
                    }
                    self.state = State::Size;
                }
                State::Trailers => {
                    let mut total = 0;
                    loop {
                        let line = self.line()?;
                        if line.is_empty() {
                            break;
                        }
                        total += line.len();
                        if total > MAX_TRAILERS || line.first().is_some_and(|b| *b == b' ') {
                            return Err(invalid("trailers too long or folded"));
                        }
                    }
                    self.state = State::Done;
                }
                State::Done => return Ok(0),
                State::Failed(kind) => {
                    return Err(io::Error::new(kind, "chunked body: unreadable"))
                }
            }
        }
    }
}

impl<R: Read> Read for ChunkedDecoder<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let result = self.step(buf);
        if let Err(e) = &result {
            // Where the next request would start is unknown: nothing more is read, and the
            // body never looks complete.
            self.state = State::Failed(e.kind());
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::ChunkedDecoder;
    use std::io::Read;

    fn decode(body: &str) -> std::io::Result<String> {
        let mut out = String::new();
        ChunkedDecoder::new(body.as_bytes()).read_to_string(&mut out)?;
        Ok(out)
    }

    #[test]
    fn well_formed_bodies() {
        assert_eq!(decode("5\r\nhello\r\n0\r\n\r\n").unwrap(), "hello");
        assert_eq!(
            decode("3;x=y\r\nabc\r\nA \t; e\r\n0123456789\r\n0\r\nT: v\r\n\r\n").unwrap(),
            "abc0123456789"
        );
    }

    #[test]
    fn malformed_sizes_and_lines() {
        for bad in [
            "+3\r\nabc\r\n0\r\n\r\n",
            " 3\r\nabc\r\n0\r\n\r\n",
            "3 \r\nabc\r\n0\r\n\r\n",
            "3\t\r\nabc\r\n0\r\n\r\n",
            "-3\r\nabc\r\n0\r\n\r\n",
            "0x3\r\nabc\r\n0\r\n\r\n",
            "ffffffffffffffffff\r\n",
            "3\nabc\r\n0\r\n\r\n",
            "3\r\nabcd\r\n0\r\n\r\n",
            "3\r\nab",
            "0\r\n X: folded\r\n\r\n",
        ] {
            assert!(decode(bad).is_err(), "{bad:?}");
        }
    }
}
