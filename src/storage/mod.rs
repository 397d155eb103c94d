//! The store: owns the redb database, every table and every transaction.

mod audit;
mod blobs;
mod check;
mod domains;
mod gc;
mod handle;
mod manifests;
mod mirrors;
mod quota;
mod rekey;
mod repos;
mod schema;
mod scrub;
mod settings;
mod uploads;
mod usage;
mod users;
mod writeback;

pub use audit::PullCount;
pub use blobs::{trim_thread_buffers, BlobInfo, ChunkHint, MountFrom, MountRefused};
pub use domains::KeyInfo;
#[cfg(test)]
pub use gc::ManifestState;
pub use gc::{GcSnapshot, Held, RepoState, Step};
pub use handle::private_dir;
pub use manifests::NewManifest;
pub use scrub::ScrubItem;

use crate::clock::unix_now as now;
use handle::{Handle, Tx};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use schema::*;
use std::fmt;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The registry's persistent state: one redb file.
pub struct Store {
    handle: Handle,
    chunk_payload: usize,
    min_free: u64,
    /// Last estimate of space inside the file that deletions freed, and when it was made.
    reusable: Mutex<Option<(Instant, u64)>>,
    /// Progress of uploads that repeat a stored blob (exactly the ids in `shadows`): upload
    /// id -> (bytes matched, unix seconds of last activity). Only checkpoints are written.
    shadows: Mutex<std::collections::HashMap<String, (u64, u64)>>,
    /// Acknowledged changes (mounts) were committed without durability since the last flush.
    unflushed: std::sync::atomic::AtomicBool,
    /// The master key, the encryption rules and the unwrapped data keys.
    keys: domains::Keyring,
    /// The byte budgets the store enforces (its counters are in `quota_usage`).
    quotas: crate::quota::Quotas,
    /// Failed logins and pulls not yet written, and when each kind was last written.
    tally: Mutex<(crate::audit::Tally, Instant, Instant)>,
    /// Starts writing upload data out while uploads still arrive.
    writeback: writeback::Writeback,
}

/// How a store is opened.
pub struct StoreOptions {
    /// redb page cache, bytes.
    pub cache_size: usize,
    /// Bytes per chunk row: a power of two.
    pub chunk_size: usize,
    /// Upload data is refused while less than this would stay free on the filesystem.
    pub min_free_space: u64,
    /// The master key, if one is configured.
    pub master_key: Option<crate::crypto::MasterKey>,
    /// Which key new repositories get.
    pub encryption: Vec<crate::config::EncryptionRule>,
    /// Drop data key wraps by other master keys than this one (ends a rotation). Only the
    /// registry's start does: a management command must not end a rotation under way.
    pub settle_master_key: bool,
    /// Byte budgets: `quotas` and `maxStoreSize`.
    pub quotas: crate::quota::Quotas,
    /// The audit trail's bound.
    pub audit: crate::audit::config::AuditConfig,
}

/// Bytes of a chunk row that are not payload: redb's leaf header, value length and key, and
/// in an encrypted domain the nonce and tag. redb allocates pages in powers of two, so a
/// payload of exactly a power of two would take twice its size on disk; a power of two less
/// this fits one allocation exactly (a plaintext row leaves the seal's 28 bytes unused).
pub const CHUNK_ROW_OVERHEAD: usize = 64 + crate::crypto::SEAL_OVERHEAD;

/// Everything the store can answer besides success.
#[derive(Debug)]
pub enum StoreError {
    /// No such repository.
    RepoUnknown,
    /// The blob is not linked into this repository.
    BlobUnknown,
    /// No such manifest or tag in this repository.
    ManifestUnknown,
    /// No such upload session (never started, finished, cancelled, or lost in a crash).
    UploadUnknown,
    /// The upload is at another offset than the client claimed; holds the bytes received.
    UploadOffset(u64),
    /// A manifest references a blob or manifest the repository lacks.
    ManifestBlobUnknown(String),
    /// A manifest's descriptor disagrees with what is stored (size).
    ManifestRefMismatch(String),
    /// A manifest the store cannot hold as it is (a field beyond its record's bound).
    ManifestInvalid(String),
    /// The push would take a quota past its limit.
    Quota(crate::quota::Exceeded),
    /// The push would move an immutable tag (pointing at `current`) held by `rule`.
    TagImmutable {
        /// The tag.
        tag: String,
        /// The digest it points at, and keeps pointing at.
        current: String,
        /// The rule that makes it immutable, as the config describes it.
        rule: String,
    },
    /// The disk is full, or would fall below the free-space reserve.
    Full,
    /// The database is being reopened after an I/O failure; retry shortly.
    Unavailable,
    /// The store is not one this build can use (schema version, corruption).
    Corrupt(String),
    /// Stored data failed to open with its key: altered, moved, or its key erased.
    Integrity(String),
    /// The blob's stored copy failed a scrub: it is not served until healed or pushed again.
    Quarantined(String),
    /// A key problem an operator must fix: missing or wrong master key, conflicting key.
    Keys(String),
    /// The repository was created with another key while this request ran; retry.
    DomainChanged(String),
    /// The repository exists already (with key name, if encrypted).
    RepoExists(Option<String>),
    /// `user add` of a user who exists.
    UserExists,
    /// No such user.
    UserUnknown,
    /// Any other database failure.
    Db(redb::Error),
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::RepoUnknown => f.write_str("repository unknown"),
            StoreError::BlobUnknown => f.write_str("blob unknown"),
            StoreError::ManifestUnknown => f.write_str("manifest unknown"),
            StoreError::UploadUnknown => f.write_str("upload unknown"),
            StoreError::UploadOffset(n) => write!(f, "upload is at offset {n}"),
            StoreError::ManifestBlobUnknown(d) => write!(f, "referenced content {d} unknown"),
            StoreError::ManifestRefMismatch(m) | StoreError::ManifestInvalid(m) => f.write_str(m),
            StoreError::Quota(e) => e.fmt(f),
            StoreError::TagImmutable { tag, current, rule } => write!(
                f,
                "tag {tag} is immutable ({rule}): it stays on {current}; push under a new tag"
            ),
            StoreError::Full => f.write_str("no space left on the storage device"),
            StoreError::Unavailable => f.write_str("store is reopening after an I/O failure"),
            StoreError::Corrupt(m) => write!(f, "store unusable: {m}"),
            StoreError::Integrity(m) => write!(f, "integrity check failed: {m}"),
            StoreError::Quarantined(d) => write!(
                f,
                "blob {d} is quarantined: its stored copy failed verification (outpost scrub \
                 --status lists it); push it again, or a configured mirror heals it"
            ),
            StoreError::Keys(m) => f.write_str(m),
            StoreError::DomainChanged(r) => write!(
                f,
                "repository {r} was created with another key during this request: retry"
            ),
            StoreError::RepoExists(None) => f.write_str("the repository exists (plaintext)"),
            StoreError::RepoExists(Some(k)) => write!(f, "the repository exists (key {k:?})"),
            StoreError::UserExists => {
                f.write_str("the user exists (outpost user passwd changes a password)")
            }
            StoreError::UserUnknown => f.write_str("no such user"),
            StoreError::Db(e) => write!(f, "database error: {e}"),
        }
    }
}

impl std::error::Error for StoreError {}

macro_rules! from_redb {
    ($($t:ty),*) => {$(
        impl From<$t> for StoreError {
            fn from(e: $t) -> Self {
                let e: redb::Error = e.into();
                handle::note_redb_error(&e);
                match &e {
                    redb::Error::Io(io) if io.raw_os_error() == Some(28) => StoreError::Full,
                    // A transaction begun before another failed: the handle is reopening.
                    redb::Error::PreviousIo => StoreError::Unavailable,
                    _ => StoreError::Db(e),
                }
            }
        }
    )*};
}
from_redb!(
    redb::Error,
    redb::StorageError,
    redb::TableError,
    redb::TransactionError,
    redb::CommitError,
    redb::DatabaseError,
    redb::SetDurabilityError,
    redb::CompactionError
);

impl Store {
    /// Opens (creating if absent) the store at `path` with `cache_size` bytes of page cache,
    /// storing blobs in chunk rows of `chunk_size` bytes (a power of two) each.
    pub fn open(path: &Path, mut options: StoreOptions) -> Result<Store, StoreError> {
        let store = Store {
            handle: Handle::open(path, options.cache_size, options.audit)?,
            chunk_payload: options.chunk_size - CHUNK_ROW_OVERHEAD,
            min_free: options.min_free_space,
            reusable: Mutex::new(None),
            shadows: Mutex::default(),
            unflushed: Default::default(),
            keys: domains::Keyring::new(
                options.master_key.take(),
                std::mem::take(&mut options.encryption),
            ),
            quotas: std::mem::take(&mut options.quotas),
            tally: Mutex::new(audit::new_tally()),
            writeback: writeback::Writeback::new(path),
        };
        let tx = store.write(true)?;
        // Version 2 -> 3 needs the data keys (manifests are parsed): done once they are loaded.
        let mut build_references = false;
        // Version 3 -> 4: quota counters, counted once the tables are there.
        let mut upgrade = false;
        {
            let mut meta = tx.open_table(META)?;
            let version = meta.get("schema_version")?.map(|v| v.value());
            match version {
                None => {
                    meta.insert("schema_version", SCHEMA_VERSION)?;
                }
                Some(SCHEMA_VERSION) => {}
                Some(v @ (1 | 2)) => {
                    drop(meta);
                    if v == 1 {
                        migrate_v1(&tx)?;
                    }
                    build_references = true;
                    upgrade = true;
                }
                Some(3) => upgrade = true,
                Some(v) => {
                    return Err(StoreError::Corrupt(format!(
                        "schema version {v}, this build reads {SCHEMA_VERSION}"
                    )))
                }
            }
            // Create every table so read transactions never meet a missing one.
            tx.open_table(REPOS)?;
            tx.open_table(BLOBS)?;
            tx.open_table(CHUNKS)?;
            tx.open_table(LINKS)?;
            tx.open_table(MANIFESTS)?;
            tx.open_table(TAGS)?;
            tx.open_table(REFERRERS)?;
            tx.open_table(UPLOADS)?;
            tx.open_table(SETTINGS)?;
            tx.open_table(PREFIXES)?;
            tx.open_table(SHADOWS)?;
            tx.open_table(DOMAINS)?;
            tx.open_table(USERS)?;
            tx.open_table(MIRRORS)?;
            tx.open_table(REFS)?;
            tx.open_table(PUSHED)?;
            tx.open_table(DEAD)?;
            tx.open_table(QUARANTINE)?;
            tx.open_table(SCRUB)?;
            tx.open_table(QUOTA_USAGE)?;
            tx.open_table(AUDIT)?;
            tx.open_table(PULLS)?;
            tx.open_table(EVENT_CURSORS)?;
        }
        tx.commit()?;
        store.load_domains(options.settle_master_key)?;
        if build_references {
            let tx = store.write(true)?;
            let n = store.build_references(&tx)?;
            tx.open_table(META)?.insert("schema_version", 3)?;
            tx.commit()?;
            log::info!(
                "migrated the store to schema version 3 (references of {n} \
                 manifest(s) recorded)"
            );
        }
        // The version is set with the counters: a crash before leaves a store migrated again.
        store.quota_settle(upgrade.then_some(SCHEMA_VERSION))?;
        store.check_rules()?;
        store.load_shadows()?;
        store.load_audit_seq()?;
        Ok(store)
    }

    /// Answers if the store can be read now (a read transaction on a small table): the
    /// watchdog's check that requests can be served.
    pub fn ping(&self) -> Result<(), StoreError> {
        self.read()?.open_table(META)?;
        Ok(())
    }

    /// True while the database is being reopened after an I/O failure (requests get 503).
    pub fn reopening(&self) -> bool {
        handle::reopening()
    }

    /// True if the filesystem has more free space than the reserve (`minFreeSpace`), by the
    /// same measure that refuses upload data with 507.
    pub fn above_reserve(&self) -> Result<bool, StoreError> {
        match self.check_space(0) {
            Ok(()) => Ok(true),
            Err(StoreError::Full) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Makes acknowledged non-durable commits (mounts) durable, if there are any: called about
    /// once a second and at shutdown. One durable commit covers any number of them.
    pub fn flush(&self) -> Result<(), StoreError> {
        use std::sync::atomic::Ordering;
        if self.unflushed.swap(false, Ordering::SeqCst) {
            if let Err(e) = self.write(true).and_then(|tx| tx.commit()) {
                self.unflushed.store(true, Ordering::SeqCst);
                return Err(e);
            }
        }
        Ok(())
    }

    /// Free space on the store's filesystem for unprivileged users; None if it cannot be told.
    pub fn free_space(&self) -> Option<u64> {
        handle::filesystem_free(self.handle.path())
    }

    /// Payload bytes per full chunk row: what writers should append at a time, and what a
    /// reader gets from one row.
    pub fn chunk_payload(&self) -> usize {
        self.chunk_payload
    }

    fn write(&self, durable: bool) -> Result<Tx<'_, WriteTransaction>, StoreError> {
        self.handle.write(durable)
    }

    /// A write transaction durable when committed, its fsync shared with concurrent ones.
    fn write_grouped(&self) -> Result<Tx<'_, WriteTransaction>, StoreError> {
        self.handle.write_grouped()
    }

    fn read(&self) -> Result<Tx<'_, ReadTransaction>, StoreError> {
        self.handle.read()
    }

    /// Refuses a write of `n` more bytes (upload data, a manifest) if the filesystem would
    /// fall below the reserve, counting as free the space inside the file that deletions
    /// released (redb reuses it): an operator who deletes images on a full card can push again.
    fn check_space(&self, n: u64) -> Result<(), StoreError> {
        let Some(free) = handle::filesystem_free(self.handle.path()) else {
            return Ok(());
        };
        let need = self.min_free.saturating_add(n);
        if free >= need {
            return Ok(());
        }
        let mut cached = self.reusable.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = cached.is_some_and(|(at, _)| at.elapsed() < Duration::from_secs(2));
        if !fresh {
            *cached = Some((Instant::now(), self.reusable_bytes()?));
        }
        let (at, reusable) = cached.expect("set above");
        if free.saturating_add(reusable) < need {
            return Err(StoreError::Full);
        }
        // What this write takes comes out of the estimate until it is next recomputed.
        *cached = Some((at, reusable - n.min(reusable)));
        Ok(())
    }

    /// Content was just deleted: drops the reusable-space estimate and, when the filesystem is
    /// low, makes the freed pages reusable now. redb hands out the pages a commit frees only
    /// after a later durable commit has processed them (two for a non-durable one, whose
    /// records wait in memory), and uploads commit durably only at checkpoints: a push onto a
    /// full disk would otherwise find no room although the estimate counts it.
    fn space_freed(&self) {
        *self.reusable.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let low = handle::filesystem_free(self.handle.path())
            .is_some_and(|free| free < self.min_free.saturating_add(2 * uploads::CHECKPOINT));
        if low {
            for _ in 0..2 {
                if let Err(e) = self.write(true).and_then(|tx| tx.commit()) {
                    log::warn!("releasing deleted pages: {e}");
                    break;
                }
            }
        }
    }

    /// Space inside the file that redb can reuse, estimated as the file's written blocks less
    /// what live content (blobs, uploads, manifests) takes in pages, less a 1/32 margin for
    /// the rest. Blocks, not length: redb grows its file sparsely, and a hole that was never
    /// written takes new blocks when it is. Only computed when the filesystem is low on space.
    fn reusable_bytes(&self) -> Result<u64, StoreError> {
        use std::os::unix::fs::MetadataExt;
        let written = std::fs::metadata(self.handle.path()).map_or(0, |m| m.blocks() * 512);
        let payload = self.chunk_payload as u64;
        let row = payload + CHUNK_ROW_OVERHEAD as u64;
        let chunks = |n: u64| n / payload * row + stored_size(n % payload);
        let mut live = 0u64;
        {
            let tx = self.read()?;
            for row in tx.open_table(BLOBS)?.iter()? {
                live += chunks(row?.1.value().1);
            }
            for row in tx.open_table(UPLOADS)?.iter()? {
                live += chunks(row?.1.value().3);
            }
            for row in tx.open_table(MANIFESTS)?.iter()? {
                live += stored_size(row?.1.value().len() as u64);
            }
        }
        Ok(written.saturating_sub(live + written / 32))
    }
}

/// Bytes of file that a value of `n` bytes takes: redb allocates pages in powers of two
/// (an upper bound for small values, which share leaf pages).
fn stored_size(n: u64) -> u64 {
    match n {
        0 => 0,
        n => (n + CHUNK_ROW_OVERHEAD as u64).next_power_of_two(),
    }
}

/// What the store holds.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    /// Repositories.
    pub repositories: u64,
    /// Stored blobs (each once per domain, however many repositories link it).
    pub blobs: u64,
    /// Bytes of stored blobs.
    pub blob_bytes: u64,
    /// Repository links to blobs.
    pub links: u64,
    /// Open upload sessions.
    pub uploads: u64,
    /// Size of the database file.
    pub file_bytes: u64,
}

impl Store {
    /// Counts what the store holds (walks the blob table: cheap at edge scale).
    pub fn totals(&self) -> Result<Totals, StoreError> {
        use redb::ReadableTableMetadata;
        let tx = self.read()?;
        let mut t = Totals {
            repositories: tx.open_table(REPOS)?.len()?,
            links: tx.open_table(LINKS)?.len()?,
            uploads: tx.open_table(UPLOADS)?.len()?,
            file_bytes: std::fs::metadata(self.handle.path()).map_or(0, |m| m.len()),
            ..Totals::default()
        };
        for row in tx.open_table(BLOBS)?.iter()? {
            t.blobs += 1;
            t.blob_bytes += row?.1.value().1;
        }
        Ok(t)
    }
}

/// Version 1 -> 2: every repository and upload session was plaintext (domain 0).
fn migrate_v1(tx: &WriteTransaction) -> Result<(), StoreError> {
    {
        let old = tx.open_table(REPOS_V1)?;
        let mut new = tx.open_table(REPOS)?;
        for row in old.iter()? {
            let (name, id) = row?;
            new.insert(name.value(), (id.value(), 0))?;
        }
        let old = tx.open_table(UPLOADS_V1)?;
        let mut new = tx.open_table(UPLOADS)?;
        for row in old.iter()? {
            let (id, v) = row?;
            let (repo, blob, received, last) = v.value();
            new.insert(id.value(), (repo, 0, blob, received, last))?;
        }
    }
    tx.delete_table(REPOS_V1)?;
    tx.delete_table(UPLOADS_V1)?;
    Ok(())
}

/// Takes and advances the counter `key` (ids start at 1).
fn next_id(tx: &WriteTransaction, key: &str) -> Result<u64, StoreError> {
    let mut meta = tx.open_table(META)?;
    let id = meta.get(key)?.map_or(1, |v| v.value());
    meta.insert(key, id + 1)?;
    Ok(id)
}

/// Whether `table` (keyed repository id, digest, digest) has a row starting (`id`, `digest`):
/// a manifest listing `digest` (`references`), a referrer of it (`referrers`).
fn keyed_by<V: redb::Value + 'static>(
    table: &impl ReadableTable<(u64, &'static str, &'static str), V>,
    id: u64,
    digest: &str,
) -> Result<bool, StoreError> {
    let mut range =
        table.range::<(u64, &str, &str)>((id, digest, "")..=(id, digest, "\u{10ffff}"))?;
    Ok(range.next().is_some())
}

/// A plaintext store in `dir` with small caches and chunks, for unit tests.
#[cfg(test)]
pub(crate) fn test_store(dir: &Path) -> Store {
    let options = StoreOptions {
        cache_size: 1 << 20,
        chunk_size: 64 << 10,
        min_free_space: 0,
        master_key: None,
        encryption: Vec::new(),
        settle_master_key: false,
        quotas: crate::quota::Quotas::default(),
        audit: Default::default(),
    };
    Store::open(&dir.join("outpost.redb"), options).unwrap()
}

/// Up to `n` items of `iter`, and whether more followed.
fn page<T>(
    iter: impl Iterator<Item = Result<T, StoreError>>,
    n: usize,
) -> Result<(Vec<T>, bool), StoreError> {
    let mut out = Vec::new();
    for item in iter {
        let item = item?;
        if out.len() == n {
            return Ok((out, true));
        }
        out.push(item);
    }
    Ok((out, false))
}
