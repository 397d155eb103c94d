//! Early writeback: upload data starts going to the disk while the upload is still arriving.
//!
//! Uploads commit without fsync between checkpoints, and the kernel leaves their pages dirty
//! until the checkpoint's fsync (its own flusher starts only at a tenth of RAM): the upload
//! then waits while the whole stretch is written. Asking the kernel to start writing every few
//! MiB (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, which does not wait for the disk) overlaps
//! the disk with receiving and hashing, so the fsync finds little left to do. The same bytes
//! are written, only sooner: durability still comes from the commits' fsyncs alone.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Mutex, OnceLock};

/// Bytes written by uploads between two requests to start writing them out.
const KICK: u64 = 16 << 20;

/// Asks the kernel to start writing the store file's dirty pages every `KICK` bytes of upload
/// data, from a thread of its own (the request may block while the disk's queue is full).
pub(super) struct Writeback {
    path: PathBuf,
    /// Upload bytes since the last request.
    pending: AtomicU64,
    /// Wakes the writeback thread; started with the first upload that needs it.
    wake: OnceLock<Option<Mutex<SyncSender<()>>>>,
}

impl Writeback {
    /// Writeback of the file at `path` (opened only when first needed).
    pub(super) fn new(path: &Path) -> Writeback {
        Writeback {
            path: path.to_owned(),
            pending: AtomicU64::new(0),
            wake: OnceLock::new(),
        }
    }

    /// `n` bytes of upload data were committed (without fsync).
    pub(super) fn wrote(&self, n: u64) {
        let before = self.pending.fetch_add(n, Ordering::Relaxed);
        if before + n < KICK {
            return;
        }
        self.pending.store(0, Ordering::Relaxed);
        if let Some(wake) = self.wake.get_or_init(|| self.start()) {
            // Full: a request is already waiting, which covers these bytes too.
            let _ = wake.lock().unwrap_or_else(|p| p.into_inner()).try_send(());
        }
    }

    /// Starts the thread; None (and no early writeback) if the file or a thread cannot be had.
    fn start(&self) -> Option<Mutex<SyncSender<()>>> {
        let file = File::open(&self.path)
            .map_err(|e| log::debug!("no early writeback: {e}"))
            .ok()?;
        let (wake, woken) = sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("writeback".into())
            .stack_size(64 << 10)
            .spawn(move || {
                while woken.recv().is_ok() {
                    start_writing(&file);
                }
            })
            .map_err(|e| log::debug!("no early writeback: {e}"))
            .ok()?;
        Some(Mutex::new(wake))
    }
}

/// Starts writing every dirty page of `file`, without waiting for the disk.
fn start_writing(file: &File) {
    // SAFETY: a plain syscall on a descriptor `file` owns; no memory is passed.
    let r = unsafe { libc::sync_file_range(file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE) };
    if r != 0 {
        log::debug!("sync_file_range: {}", std::io::Error::last_os_error());
    }
}
