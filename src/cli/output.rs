//! The commands' standard output: written through `out!` rather than `println!`, which
//! panics ("failed printing to stdout") when the reader went away, e.g. `outpost --help |
//! head -1`. A closed pipe is not the command's failure: the work goes on to its end (a
//! store is closed properly, never left mid-transaction by a signal), further output is
//! dropped, and the exit status is the command's own. Any other write error (a full disk
//! under `> file`) is reported once at the end, exit status 1. Messages to stderr go
//! through `note!`, which drops what cannot be written: a closed or full stderr never
//! stops a command half-way.

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

/// What became of stdout: written fine, its reader gone, or failed otherwise.
static STATE: AtomicU8 = AtomicU8::new(FINE);
const FINE: u8 = 0;
const GONE: u8 = 1;
const FAILED: u8 = 2;
static FAILURE: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

/// Prints a line to stdout, like `println!`, without panicking when stdout is closed.
macro_rules! out {
    () => {
        $crate::cli::output::line(format_args!(""))
    };
    ($($arg:tt)*) => {
        $crate::cli::output::line(format_args!($($arg)*))
    };
}
pub(crate) use out;

/// Prints a line to stderr, like `eprintln!`, dropping it if stderr cannot take it.
macro_rules! note {
    ($($arg:tt)*) => {
        $crate::cli::output::note_line(format_args!($($arg)*))
    };
}
pub(crate) use note;

/// Writes `args` and a newline to stderr; a failed write is dropped (where would it go?).
pub fn note_line(args: std::fmt::Arguments<'_>) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr
        .write_fmt(args)
        .and_then(|()| stderr.write_all(b"\n"));
}

/// Writes `args` and a newline to stdout, unless its reader is gone.
pub fn line(args: std::fmt::Arguments<'_>) {
    if STATE.load(Ordering::Relaxed) != FINE {
        return;
    }
    let mut stdout = std::io::stdout().lock();
    let result = stdout
        .write_fmt(args)
        .and_then(|()| stdout.write_all(b"\n"))
        .and_then(|()| stdout.flush());
    if let Err(e) = result {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            STATE.store(GONE, Ordering::Relaxed);
        } else {
            *FAILURE.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
            STATE.store(FAILED, Ordering::Relaxed);
        }
    }
}

/// A write to stdout that failed other than by its reader going away, if any.
pub fn failure() -> Option<String> {
    (STATE.load(Ordering::Relaxed) == FAILED)
        .then(|| FAILURE.lock().unwrap_or_else(|p| p.into_inner()).clone())
        .flatten()
}
