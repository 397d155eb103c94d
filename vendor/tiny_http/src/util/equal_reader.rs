use std::io::Read;
use std::io::Result as IoResult;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::pace::Pace;

/// A `Reader` that reads exactly the number of bytes from a sub-reader.
///
/// If the limit is reached, it returns EOF. If the limit is not reached when the destructor is
/// called, the remaining bytes are read and thrown away — Outpost patch: only up to the
/// connection's drain limit; with more left, the connection is marked to close instead.
pub struct EqualReader<R>
where
    R: Read,
{
    reader: R,
    size: u64,
    /// Outpost patch: the bytes still unread, for the request to see.
    unread: Arc<AtomicU64>,
    pace: Option<Arc<Pace>>,
}

impl<R> EqualReader<R>
where
    R: Read,
{
    pub(crate) fn new(
        reader: R,
        size: u64,
        unread: Arc<AtomicU64>,
        pace: Option<Arc<Pace>>,
    ) -> EqualReader<R> {
        unread.store(size, Ordering::Relaxed);
        EqualReader {
            reader,
            size,
            unread,
            pace,
        }
    }
}

impl<R> Read for EqualReader<R>
where
    R: Read,
{
    fn read(&mut self, buf: &mut [u8]) -> IoResult<usize> {
        if self.size == 0 {
            return Ok(0);
        }
        let want = buf.len().min(<usize as std::convert::TryFrom<u64>>::try_from(self.size).unwrap_or(usize::MAX));
        let len = self.reader.read(&mut buf[..want])?;
        self.size -= len as u64;
        self.unread.store(self.size, Ordering::Relaxed);
        Ok(len)
    }
}

impl<R> Drop for EqualReader<R>
where
    R: Read,
{
    fn drop(&mut self) {
        if self.size == 0 {
            return;
        }
        // Outpost patch: drain through a fixed buffer (the declared Content-Length is the
        // client's word; upstream allocated it), and only a little: a client declaring a large
        // body nobody reads is not waited for, its connection closes after the response.
        if let Some(p) = &self.pace {
            if p.closing() || self.size > p.limits().drain {
                p.set_close();
                return;
            }
        }
        let mut buf = [0u8; 8192];
        while self.size > 0 {
            match self.read(&mut buf) {
                Ok(0) | Err(_) => {
                    if let Some(p) = &self.pace {
                        p.set_close();
                    }
                    return;
                }
                Ok(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::EqualReader;
    use std::io::Read;
    use std::sync::Arc;

    #[test]
    fn test_limit() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let mut equal_reader =
                EqualReader::new(org_reader.by_ref(), 5, Arc::default(), None);

            let mut string = String::new();
            equal_reader.read_to_string(&mut string).unwrap();
            assert_eq!(string, "hello");
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }

    #[test]
    fn test_not_enough() {
        use std::io::Cursor;

        let mut org_reader = Cursor::new("hello world".to_string().into_bytes());

        {
            let mut equal_reader =
                EqualReader::new(org_reader.by_ref(), 5, Arc::default(), None);

            let mut vec = [0];
            equal_reader.read_exact(&mut vec).unwrap();
            assert_eq!(vec[0], b'h');
        }

        let mut string = String::new();
        org_reader.read_to_string(&mut string).unwrap();
        assert_eq!(string, " world");
    }
}
