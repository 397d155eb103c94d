//! The database handle: opens redb, hands out transactions, reopens the file after an I/O
//! failure, and keeps a free-space reserve.
//!
//! redb refuses all further work once a write has failed ("previous I/O error: close and
//! re-open"), e.g. when the disk filled up. Rather than serve errors until an operator
//! restarts it, the handle reopens the file (redb's quick repair rolls back to the last
//! durable commit) as soon as the transactions of the failed one have ended.

use super::StoreError;
use crate::audit::config::AuditConfig;
use crate::audit::Change;
use redb::{Database, Durability, ReadTransaction, ReadableDatabase, WriteTransaction};
use std::cell::RefCell;
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard};

/// Set when redb reports an I/O failure; the handle then reopens the database. Process-wide
/// because the conversion of redb errors cannot reach the handle (one store per process).
static IO_FAILED: AtomicBool = AtomicBool::new(false);
/// Set with `IO_FAILED`, cleared only once a reopen has succeeded: what `/readyz` reports
/// (`IO_FAILED` itself is cleared while the reopen is attempted).
static REOPENING: AtomicBool = AtomicBool::new(false);

/// Records that `e` was an I/O failure, after which redb needs reopening.
pub(super) fn note_redb_error(e: &redb::Error) {
    if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
        REOPENING.store(true, Ordering::SeqCst);
        IO_FAILED.store(true, Ordering::SeqCst);
    }
}

/// True from an I/O failure until the database has been reopened.
pub(super) fn reopening() -> bool {
    REOPENING.load(Ordering::SeqCst)
}

/// The open database and how to open it again.
pub(super) struct Handle {
    path: PathBuf,
    cache_size: usize,
    db: RwLock<Option<Database>>,
    /// The audit trail's bound: each write transaction appends its changes' records.
    audit: AuditConfig,
    /// Opens of the file so far: a commit made before a reopen may be gone after it.
    generation: AtomicU64,
    /// Grouped commits made so far (each numbered by this count after it).
    grouped: AtomicU64,
    /// The newest grouped commit known durable, and the generation it belongs to.
    synced: Mutex<(u64, u64)>,
}

/// A transaction that keeps the database it belongs to from being reopened under it.
pub(super) struct Tx<'a, T> {
    // Declared first: dropped before the guard.
    tx: T,
    _guard: RwLockReadGuard<'a, Option<Database>>,
    /// Changes to record in the audit trail when (and only if) this transaction commits.
    changes: RefCell<Vec<Change>>,
    audit: AuditConfig,
    /// A write transaction committed durably (notifications wait for one).
    durable: bool,
    /// For a grouped write transaction: the handle whose group commit makes it durable, and
    /// the generation of the file it was made on.
    group: Option<(&'a Handle, u64)>,
}

impl<T> Deref for Tx<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.tx
    }
}

impl Tx<'_, WriteTransaction> {
    /// Records `change` in the audit trail, in this transaction, if it commits.
    pub fn audit(&self, change: Change) {
        self.changes.borrow_mut().push(change);
    }

    /// Commits the transaction, with the audit records of its changes; a grouped one is
    /// durable when this returns.
    pub fn commit(self) -> Result<(), StoreError> {
        let Tx {
            tx,
            _guard,
            changes,
            audit,
            durable,
            group,
        } = self;
        let changes = changes.take();
        let records = if changes.is_empty() {
            Vec::new()
        } else {
            let actor = crate::audit::actor();
            let changes = changes.into_iter().map(|c| (c, actor.clone()));
            super::audit::append(&tx, changes, audit.max_records)?
        };
        let durable_upto = match durable {
            true => Some(super::audit::last_in(&tx)?),
            false => None,
        };
        tx.commit()?;
        // The durable commit takes the database again: this one's hold goes first.
        drop(_guard);
        if let Some((handle, generation)) = group {
            // Logged (and counted committed) once on disk, as a durable commit's are.
            handle.sync_group(generation)?;
        }
        super::audit::committed(&records, audit, durable_upto);
        Ok(())
    }
}

fn open_db(path: &Path, cache_size: usize) -> Result<Database, StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    // Created 0600 whatever the umask: the store holds password hashes and plaintext images.
    // (redb initialises an empty file as a new database.)
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(StoreError::Db(redb::Error::Io(e))),
    }
    let pass = repair_pass_budget(path);
    let shown = path.to_owned();
    Ok(Database::builder()
        .set_cache_size(cache_size)
        .set_repair_callback(move |s| repairing(&shown, s.progress(), pass))
        .create(path)?)
}

/// The slowest rate, bytes a second, at which a full repair is assumed to read the file (a
/// worn SD card's random reads, with a wide margin): it sizes the time asked of systemd.
const REPAIR_READ_RATE: u64 = 2_000_000;

/// How long one pass of a full repair of the file at `path` may take: each pass reads up to
/// the whole file.
fn repair_pass_budget(path: &Path) -> std::time::Duration {
    let len = std::fs::metadata(path).map_or(0, |m| m.len());
    std::time::Duration::from_secs(60 + len / REPAIR_READ_RATE)
}

/// Called by redb before each pass of a full repair (needed only when the last durable commit
/// saved no allocator state: a crash during a compaction or a repair). Every commit of ours
/// saves it (quick repair), so a restart after a crash or power cut normally skips this; when
/// it does not, the passes read the whole file, which can outlast the unit's
/// `TimeoutStartSec` on a large card, and systemd would kill the repair and start it over, for
/// ever. Hence the extension, one pass at a time.
fn repairing(path: &Path, progress: f64, pass: std::time::Duration) {
    log::warn!(
        "{} was not closed cleanly and must be walked whole to be repaired: {:.0}% done",
        path.display(),
        progress * 100.0
    );
    crate::systemd::notify(&format!(
        "EXTEND_TIMEOUT_USEC={}\nSTATUS=repairing the store ({:.0}%)",
        pass.as_micros(),
        progress * 100.0
    ));
}

/// Creates data directory `dir` (mode 0700 whatever the umask) if it is not there, and warns
/// when it, or the store in it, can be read by other users.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    for path in [dir.to_owned(), dir.join("outpost.redb")] {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            log::warn!(
                "{} has mode {mode:03o}: other users of this host may read it (password \
                 hashes, images); chmod {} it",
                path.display(),
                if meta.is_dir() { "700" } else { "600" }
            );
        }
    }
    Ok(())
}

impl Handle {
    /// Opens (creating if absent) the database at `path`.
    pub fn open(path: &Path, cache_size: usize, audit: AuditConfig) -> Result<Handle, StoreError> {
        let db = open_db(path, cache_size)?;
        Ok(Handle {
            path: path.to_owned(),
            cache_size,
            db: RwLock::new(Some(db)),
            audit,
            generation: AtomicU64::new(0),
            grouped: AtomicU64::new(0),
            synced: Mutex::new((0, 0)),
        })
    }

    /// The audit trail's bound and log switch.
    pub fn audit_config(&self) -> AuditConfig {
        self.audit
    }

    /// The database file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn guard(&self) -> Result<RwLockReadGuard<'_, Option<Database>>, StoreError> {
        if IO_FAILED.load(Ordering::SeqCst) {
            self.reopen();
        }
        let guard = self.db.read().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::Unavailable);
        }
        Ok(guard)
    }

    /// Closes and reopens the database; waits for running transactions first.
    fn reopen(&self) {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        if !IO_FAILED.swap(false, Ordering::SeqCst) {
            return; // another thread did it while we waited
        }
        log::warn!("storage I/O failed: reopening {}", self.path.display());
        *db = None; // closes the file (releasing its lock) before it is opened again
        self.generation.fetch_add(1, Ordering::SeqCst);
        match open_db(&self.path, self.cache_size) {
            Ok(fresh) => {
                if let Err(e) = super::audit::reload_seqs(&fresh) {
                    log::warn!("reading the audit trail's last number after the reopen: {e}");
                }
                *db = Some(fresh);
                // Logged first: a probe that sees the flag clear finds the line before it.
                log::warn!("reopened {} at its last durable state", self.path.display());
                REOPENING.store(false, Ordering::SeqCst);
            }
            Err(e) => {
                log::error!("reopening {} failed: {e}; will retry", self.path.display());
                IO_FAILED.store(true, Ordering::SeqCst);
            }
        }
    }

    /// Compacts the file (redb moves pages down and truncates it); needs no transaction
    /// open. True if it compacted anything.
    pub fn compact(&self) -> Result<bool, StoreError> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        let db = db.as_mut().ok_or(StoreError::Unavailable)?;
        Ok(db.compact()?)
    }

    /// redb's integrity check (it repairs what it can); needs no transaction open. True if
    /// the file was consistent.
    pub fn check_integrity(&self) -> Result<bool, StoreError> {
        let mut db = self.db.write().unwrap_or_else(|p| p.into_inner());
        let db = db.as_mut().ok_or(StoreError::Unavailable)?;
        Ok(db.check_integrity()?)
    }

    /// A write transaction; `durable` ones are on disk when `commit` returns.
    pub fn write(&self, durable: bool) -> Result<Tx<'_, WriteTransaction>, StoreError> {
        let guard = self.guard()?;
        let db = guard.as_ref().expect("checked by guard()");
        let mut tx = db.begin_write()?;
        if durable {
            // Saves allocator state with each durable commit, so that a restart after a crash
            // does not walk the whole file first.
            tx.set_quick_repair(true);
        } else {
            tx.set_durability(Durability::None)?;
        }
        Ok(self.tx(tx, guard, durable))
    }

    /// A write transaction that is durable when its `commit` returns, by a durable commit it
    /// shares with the others committing at that moment (group commit): concurrent pushes of
    /// small layers pay one round of fsyncs between them, not a round each. Until then other
    /// requests may see it, as they may see any commit before its fsync; a client is answered
    /// only once it is on disk.
    pub fn write_grouped(&self) -> Result<Tx<'_, WriteTransaction>, StoreError> {
        let mut tx = self.write(false)?;
        // Read under the transaction's hold on the database: no reopen can come between.
        tx.group = Some((self, self.generation.load(Ordering::SeqCst)));
        Ok(tx)
    }

    /// Makes the grouped commit just made on file generation `generation` durable: by a
    /// durable commit of its own, or by one another thread began after it committed.
    fn sync_group(&self, generation: u64) -> Result<(), StoreError> {
        let mine = self.grouped.fetch_add(1, Ordering::SeqCst) + 1;
        let mut synced = self.synced.lock().unwrap_or_else(|p| p.into_inner());
        if synced.0 == generation && synced.1 >= mine {
            return Ok(());
        }
        let tx = self.write(true)?;
        // Each grouped commit is numbered after it committed, so every one numbered by now
        // committed before this transaction began (it holds the single writer's lock).
        let upto = self.grouped.load(Ordering::SeqCst);
        // A reopen since the commit rolled the file back to before it: it is lost, and the
        // client must not be told otherwise.
        if self.generation.load(Ordering::SeqCst) != generation {
            return Err(StoreError::Unavailable);
        }
        // Not an empty commit: after an empty durable one, the pages that deletes freed were
        // not reused after a reopen (redb 4.6; tests/full_disk.rs saw ENOSPC).
        tx.open_table(super::schema::META)?
            .insert("group_commits", upto)?;
        tx.commit()?;
        *synced = (generation, upto);
        Ok(())
    }

    fn tx<'a, T>(
        &self,
        tx: T,
        guard: RwLockReadGuard<'a, Option<Database>>,
        durable: bool,
    ) -> Tx<'a, T> {
        Tx {
            tx,
            _guard: guard,
            changes: RefCell::default(),
            audit: self.audit,
            durable,
            group: None,
        }
    }

    /// A read transaction (a snapshot).
    pub fn read(&self) -> Result<Tx<'_, ReadTransaction>, StoreError> {
        let guard = self.guard()?;
        let tx = guard.as_ref().expect("checked by guard()").begin_read()?;
        Ok(self.tx(tx, guard, false))
    }
}

/// Bytes available to unprivileged writers on the filesystem holding `path`.
pub(super) fn filesystem_free(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs only writes into the zeroed struct we pass; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some((st.f_bavail as u64).saturating_mul(st.f_frsize as u64))
}
