//! Transfer progress: bytes, layers, rate and ETA on a terminal; nothing in scripts.

use std::cell::RefCell;
use std::io::{Read, Write};
use std::rc::Rc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct State {
    blobs_total: u64,
    blobs_done: u64,
    bytes_total: u64,
    /// Bytes read from sources this run.
    bytes_moved: u64,
    /// Bytes of blobs already present (count as done, not as moved).
    bytes_skipped: u64,
    started: Option<Instant>,
    drawn: Option<Instant>,
    visible: bool,
    shown: bool,
}

/// Progress of one command; draws on stderr only if `visible`.
#[derive(Clone)]
pub struct Progress(Rc<RefCell<State>>);

impl Progress {
    /// Drawn when stderr is a terminal.
    pub fn for_terminal() -> Progress {
        // SAFETY: isatty only inspects the descriptor.
        let tty = unsafe { libc::isatty(2) } == 1;
        Progress::new(tty)
    }

    /// Drawn or not.
    pub fn new(visible: bool) -> Progress {
        Progress(Rc::new(RefCell::new(State {
            visible,
            started: Some(Instant::now()),
            ..State::default()
        })))
    }

    /// More work became known.
    pub fn add_total(&mut self, blobs: u64, bytes: u64) {
        let mut s = self.0.borrow_mut();
        s.blobs_total += blobs;
        s.bytes_total += bytes;
    }

    /// A blob was already there.
    pub fn skipped(&mut self, bytes: u64) {
        let mut s = self.0.borrow_mut();
        s.blobs_done += 1;
        s.bytes_skipped += bytes;
        draw(&mut s, false);
    }

    /// A blob finished.
    pub fn blob_done(&mut self) {
        let mut s = self.0.borrow_mut();
        s.blobs_done += 1;
        draw(&mut s, false);
    }

    /// `r`, counting what is read.
    pub fn wrap<'a>(&self, r: Box<dyn Read + 'a>) -> Box<dyn Read + 'a> {
        Box::new(Counting {
            inner: r,
            progress: self.clone(),
        })
    }

    /// Bytes read from sources so far.
    pub fn bytes_moved(&self) -> u64 {
        self.0.borrow().bytes_moved
    }

    /// Ends the progress line (if one was drawn).
    pub fn finish(&self) {
        let mut s = self.0.borrow_mut();
        if s.shown {
            draw(&mut s, true);
            crate::cli::output::note!("");
            s.shown = false;
        }
    }
}

struct Counting<'a> {
    inner: Box<dyn Read + 'a>,
    progress: Progress,
}

impl Read for Counting<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut s = self.progress.0.borrow_mut();
        s.bytes_moved += n as u64;
        draw(&mut s, false);
        Ok(n)
    }
}

pub use crate::units::human;

fn draw(s: &mut State, force: bool) {
    if !s.visible {
        return;
    }
    let now = Instant::now();
    if !force
        && s.drawn
            .is_some_and(|t| now - t < Duration::from_millis(200))
    {
        return;
    }
    s.drawn = Some(now);
    s.shown = true;
    let secs = s
        .started
        .map_or(0.0, |t| (now - t).as_secs_f64())
        .max(0.001);
    let rate = s.bytes_moved as f64 / secs;
    let left = s
        .bytes_total
        .saturating_sub(s.bytes_moved + s.bytes_skipped);
    let eta = if rate > 0.0 && left > 0 {
        format!(", ETA {:.0}s", left as f64 / rate)
    } else {
        String::new()
    };
    let mut err = std::io::stderr().lock();
    let _ = write!(
        err,
        "\r\x1b[Klayers {}/{}, {} of {} ({} present), {}/s{}",
        s.blobs_done,
        s.blobs_total,
        human(s.bytes_moved + s.bytes_skipped),
        human(s.bytes_total),
        human(s.bytes_skipped),
        human(rate as u64),
        eta
    );
    let _ = err.flush();
}
