//! Blobs: content stored once per encryption domain, linked into repositories, read in chunks.

use super::domains::Domain;
use super::repos::{ensure_repo, find_repo, find_repo_w, Repo};
use super::schema::{
    BLOBS, CHUNKS, DEAD, LINKS, LINK_MOUNTED, PREFIXES, QUARANTINE, QUARANTINE_BLOB, REFS, REPOS,
};
use super::scrub::is_quarantined;
use super::{now, Store, StoreError};
use crate::audit::Change;
use crate::crypto::Binding;
use crate::digest::{Algorithm, Digest, Hasher};
use redb::{ReadableTable, WriteTransaction};
use sha2::Digest as _;
use std::cell::RefCell;

/// Where a mount may take its blob from.
#[derive(Clone, Copy, Debug)]
pub enum MountFrom<'a> {
    /// The repository the client named (`from=`).
    Repo(&'a str),
    /// Any repository of the target's domain the caller may pull (`mount=` without `from=`).
    Any,
}

/// Why a mount was not done; the client is given an upload session instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MountRefused {
    /// `from` names no repository.
    FromUnknown,
    /// `from` exists but does not hold the blob.
    NotInFrom,
    /// No repository the caller may pull holds the blob (automatic mount).
    NotStored,
    /// `from` is in another storage/encryption domain than the target.
    OtherDomain,
    /// The caller may not pull from `from`.
    NotReadable,
}

/// A mount that succeeded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mounted {
    /// The repository the blob was linked from.
    pub from: String,
    /// The blob's size: bytes the client did not have to send.
    pub size: u64,
    /// False if the target already held the blob (nothing was written).
    pub linked: bool,
}

/// Bytes hashed per read transaction when a digest is recomputed from storage.
const REHASH_STEP: usize = 1 << 20;

/// Bytes at the start of a blob that are fingerprinted to find uploads repeating it.
pub(super) const FP_LEN: usize = 4096;

/// The fingerprint of a blob of a domain with key `key` (None: plaintext) whose first
/// `FP_LEN` bytes are `head`. Keyed in an encrypted domain, so the table reveals nothing.
pub(super) fn fingerprint(key: Option<&Domain>, head: &[u8]) -> u64 {
    match key {
        Some(d) => d.key.fingerprint(head),
        None => {
            let d = sha2::Sha256::digest(head);
            u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
        }
    }
}

/// The fingerprint of stored blob `blob`, at least `FP_LEN` bytes long, read through `chunks`
/// (a write transaction's view, so that it sees what that transaction sees).
pub(super) fn stored_fingerprint(
    chunks: &impl ReadableTable<(u64, u64), &'static [u8]>,
    key: Option<&Domain>,
    blob: BlobInfo,
) -> Result<u64, StoreError> {
    let mut head = Vec::with_capacity(FP_LEN + crate::crypto::SEAL_OVERHEAD);
    read_chunks(
        chunks,
        key,
        blob,
        (0, FP_LEN, 0),
        &mut head,
        &mut ChunkHint::default(),
    )?;
    if head.len() < FP_LEN {
        return Err(StoreError::Corrupt(format!(
            "blob {} is shorter than its size",
            blob.id
        )));
    }
    Ok(fingerprint(key, &head))
}

/// Calls `f` with `data` as stored for the chunk at `offset` of blob id `blob`: sealed (in a
/// per-thread buffer) if `key` is given, else as it is.
pub(super) fn with_sealed<T>(
    key: Option<&Domain>,
    blob: u64,
    offset: u64,
    data: &[u8],
    f: impl FnOnce(&[u8]) -> T,
) -> T {
    match key {
        None => f(data),
        Some(d) => SEAL_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            buf.clear();
            d.key.seal(&Binding::chunk(blob, offset), data, &mut buf);
            f(&buf)
        }),
    }
}

/// Stores `data` as the chunk at `offset` of blob id `blob`, sealed if `key` is given.
pub(super) fn put_chunk(
    tx: &WriteTransaction,
    key: Option<&Domain>,
    blob: u64,
    offset: u64,
    data: &[u8],
) -> Result<(), StoreError> {
    with_sealed(key, blob, offset, data, |bytes| {
        tx.open_table(CHUNKS)?.insert((blob, offset), bytes)?;
        Ok(())
    })
}

/// Where a sequential reader stands in a blob: the chunk it read last (its start, and its
/// plaintext length), so that reading on costs one exact lookup of a chunk. A range search
/// reads the leaves at both of its bounds: each a chunk-sized page read for nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct ChunkHint {
    blob: u64,
    start: u64,
    len: u64,
}

impl ChunkHint {
    /// Bytes of the chunk holding `offset` of `blob` from `offset` on, if this hint knows it.
    pub fn left_in_chunk(&self, blob: BlobInfo, offset: u64) -> Option<u64> {
        let end = self.start + self.len;
        (self.blob == blob.id && self.len > 0 && (self.start..end).contains(&offset))
            .then(|| end - offset)
    }
}

/// The start of the chunk of `blob` holding `offset`: from `hint` when it tells, else the last
/// chunk starting at or before `offset`, looked for within `span` bytes (the largest chunk)
/// first, then from the blob's start.
fn chunk_holding(
    chunks: &impl ReadableTable<(u64, u64), &'static [u8]>,
    blob: BlobInfo,
    offset: u64,
    span: u64,
    hint: &ChunkHint,
) -> Result<u64, StoreError> {
    let next = hint.start + hint.len;
    if hint.blob == blob.id && hint.len > 0 && (hint.start..=next).contains(&offset) {
        return Ok(if offset == next { next } else { hint.start });
    }
    if offset == 0 {
        return Ok(0);
    }
    let near = offset.saturating_sub(span);
    for low in [near, 0] {
        let found = chunks
            .range((blob.id, low)..=(blob.id, offset))?
            .next_back()
            .transpose()?;
        if let Some((k, _)) = found {
            return Ok(k.value().1);
        }
        if low == 0 {
            break;
        }
    }
    Err(StoreError::BlobUnknown)
}

/// Replaces `buf` with up to `max` bytes of `blob` from `offset`, opening sealed chunks
/// with `key`; `span` is the largest chunk, `hint` where the reader stood (updated). A chunk
/// that does not open is an integrity error; nothing of it is returned.
fn read_chunks(
    chunks: &impl ReadableTable<(u64, u64), &'static [u8]>,
    key: Option<&Domain>,
    blob: BlobInfo,
    (offset, max, span): (u64, usize, u64),
    buf: &mut Vec<u8>,
    hint: &mut ChunkHint,
) -> Result<(), StoreError> {
    buf.clear();
    let end = blob.size.min(offset.saturating_add(max as u64));
    if offset >= end {
        return Ok(());
    }
    let mut pos = chunk_holding(chunks, blob, offset, span, hint)?;
    loop {
        // A chunk missing where the last one ended: the blob went (deleted meanwhile).
        let Some(v) = chunks.get((blob.id, pos))? else {
            return Err(StoreError::BlobUnknown);
        };
        let want = offset + buf.len() as u64;
        let data = v.value();
        let chunk_end = match key {
            None => {
                let chunk_end = pos + data.len() as u64;
                if chunk_end > want {
                    let from = (want - pos) as usize;
                    let to = (end.min(chunk_end) - pos) as usize;
                    buf.extend_from_slice(&data[from..to]);
                }
                chunk_end
            }
            Some(d) => {
                // Opened in place at the end of `buf`, then trimmed to the wanted part.
                let at = buf.len();
                buf.extend_from_slice(data);
                let n = match d.key.open(&Binding::chunk(blob.id, pos), &mut buf[at..]) {
                    Ok(plain) => plain.len(),
                    Err(_) => {
                        buf.truncate(at);
                        return Err(StoreError::Integrity(format!(
                            "the chunk at byte {pos} of blob {} does not open with key {:?}: \
                             it was altered or moved",
                            blob.id, d.name
                        )));
                    }
                };
                let chunk_end = pos + n as u64;
                let from = want.saturating_sub(pos) as usize;
                let to = (end.min(chunk_end) - pos) as usize;
                buf.truncate(at + to.max(from));
                buf.drain(at..at + from);
                chunk_end
            }
        };
        if chunk_end <= pos {
            return Err(StoreError::Corrupt(format!(
                "blob {} has an empty chunk at {pos}",
                blob.id
            )));
        }
        *hint = ChunkHint {
            blob: blob.id,
            start: pos,
            len: chunk_end - pos,
        };
        pos = chunk_end;
        if pos >= end {
            return Ok(());
        }
    }
}

thread_local! {
    // Stored bytes read back to compare with an upload's; one per thread, reused.
    static COMPARE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    // A chunk being sealed; one per thread, reused.
    static SEAL_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Frees this thread's scratch buffers (a request's worth of sealing and comparing), so that
/// memory follows the transfers running, not every thread that ever ran one.
pub fn trim_thread_buffers() {
    for b in [&COMPARE_BUF, &SEAL_BUF] {
        b.with(|b| {
            if let Ok(mut b) = b.try_borrow_mut() {
                *b = Vec::new();
            }
        });
    }
}

/// Where a stored blob's bytes live, how many there are, and which key opens them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// Blob id: the first half of its chunk keys.
    pub id: u64,
    /// Size in bytes.
    pub size: u64,
    /// Encryption domain (0: plaintext).
    pub domain: u64,
}

impl Store {
    /// The blob `digest` as linked into `repo` (not merely present in the store).
    pub fn linked_blob(&self, repo_name: &str, digest: &Digest) -> Result<BlobInfo, StoreError> {
        let tx = self.read()?;
        Ok(self.find_link(&tx, repo_name, digest)?.0)
    }

    /// `linked_blob`, asked by a client that may reference it next (a push HEADs a layer and
    /// skips uploading it): a link that no manifest lists and that is older than half of
    /// `grace` is renewed (as if linked now, without durability), so the collector does not
    /// take it between the client's check and its manifest.
    pub fn linked_blob_renewed(
        &self,
        repo_name: &str,
        digest: &Digest,
        grace: u64,
    ) -> Result<BlobInfo, StoreError> {
        let tx = self.read()?;
        let (blob, repo, at) = self.find_link(&tx, repo_name, digest)?;
        if now().saturating_sub(at) < grace / 2
            || super::keyed_by(&tx.open_table(REFS)?, repo.id, digest.as_str())?
        {
            return Ok(blob);
        }
        drop(tx);
        let renew = || -> Result<(), StoreError> {
            let tx = self.write(false)?;
            {
                let mut links = tx.open_table(LINKS)?;
                let row = links.get((repo.id, digest.as_str()))?.map(|v| v.value());
                if let Some((kind, _)) = row {
                    links.insert((repo.id, digest.as_str()), (kind, now()))?;
                }
            }
            tx.commit()?;
            self.unflushed
                .store(true, std::sync::atomic::Ordering::SeqCst);
            Ok(())
        };
        // Best effort: the answer is the blob either way.
        if let Err(e) = renew() {
            log::warn!("renewing the link of {digest} in {repo_name}: {e}");
        }
        Ok(blob)
    }

    /// The blob `digest` linked into `repo_name`, the repository, and the link's time.
    fn find_link(
        &self,
        tx: &redb::ReadTransaction,
        repo_name: &str,
        digest: &Digest,
    ) -> Result<(BlobInfo, Repo, u64), StoreError> {
        let repo = find_repo(tx, repo_name)?;
        let at = tx
            .open_table(LINKS)?
            .get((repo.id, digest.as_str()))?
            .map(|v| v.value().1)
            .ok_or(StoreError::BlobUnknown)?;
        let blob = tx
            .open_table(BLOBS)?
            .get((repo.domain, digest.as_str()))?
            .map(|v| v.value());
        let (id, size, _) =
            blob.ok_or_else(|| StoreError::Corrupt(format!("link to missing blob {digest}")))?;
        // Refused before the first byte (and answered as unknown, so a push uploads it again).
        let quarantine = tx.open_table(QUARANTINE)?;
        if is_quarantined(&quarantine, QUARANTINE_BLOB, repo.domain, digest.as_str())? {
            return Err(StoreError::Quarantined(digest.to_string()));
        }
        let info = BlobInfo {
            id,
            size,
            domain: repo.domain,
        };
        Ok((info, repo, at))
    }

    /// Replaces `buf` with the blob's bytes from `offset`, at most `max` of them, read in one
    /// short read transaction (a slow client never pins a snapshot for long).
    pub fn read_blob(
        &self,
        blob: BlobInfo,
        offset: u64,
        max: usize,
        buf: &mut Vec<u8>,
    ) -> Result<(), StoreError> {
        self.read_blob_on(blob, offset, max, buf, &mut ChunkHint::default())
    }

    /// `read_blob` for a reader going through the blob in order: `hint` says where it stood,
    /// and is moved on.
    pub fn read_blob_on(
        &self,
        blob: BlobInfo,
        offset: u64,
        max: usize,
        buf: &mut Vec<u8>,
        hint: &mut ChunkHint,
    ) -> Result<(), StoreError> {
        let key = self.domain_key(blob.domain)?;
        let tx = self.read()?;
        read_chunks(
            &tx.open_table(CHUNKS)?,
            key.as_deref(),
            blob,
            (offset, max, self.chunk_payload as u64),
            buf,
            hint,
        )
    }

    /// True if `blob` holds exactly `data` at `offset`.
    pub(super) fn holds_at(
        &self,
        blob: BlobInfo,
        offset: u64,
        data: &[u8],
    ) -> Result<bool, StoreError> {
        if offset + data.len() as u64 > blob.size {
            return Ok(false);
        }
        COMPARE_BUF.with(|b| {
            let mut buf = b.borrow_mut();
            self.read_blob(blob, offset, data.len(), &mut buf)?;
            Ok(buf.as_slice() == data)
        })
    }

    /// Recomputes the digest of the first `blob.size` bytes of `blob`.
    pub fn hash_blob(&self, blob: BlobInfo, algorithm: Algorithm) -> Result<Digest, StoreError> {
        let mut hasher = Hasher::new(algorithm);
        self.hash_into(blob, &mut hasher)?;
        Ok(hasher.finish())
    }

    /// Feeds the first `blob.size` bytes of `blob` (a stored blob, or what an upload session
    /// received) to `hasher`, one short read transaction per step.
    pub fn hash_into(&self, blob: BlobInfo, hasher: &mut Hasher) -> Result<(), StoreError> {
        self.hash_paced(blob, hasher, &mut |_| true)
    }

    /// `hash_into`, calling `pace` with the bytes of each step after it (the scrub sleeps
    /// there to keep to its rate); stops early, leaving the hash partial, when `pace` says
    /// false.
    pub fn hash_paced(
        &self,
        blob: BlobInfo,
        hasher: &mut Hasher,
        pace: &mut dyn FnMut(u64) -> bool,
    ) -> Result<(), StoreError> {
        let mut buf = Vec::with_capacity(REHASH_STEP);
        let (mut at, mut hint) = (0, ChunkHint::default());
        while at < blob.size {
            self.read_blob_on(blob, at, REHASH_STEP, &mut buf, &mut hint)?;
            if buf.is_empty() {
                return Err(StoreError::Corrupt(format!("blob {} ends early", blob.id)));
            }
            hasher.update(&buf);
            at += buf.len() as u64;
            if !pace(buf.len() as u64) {
                break;
            }
        }
        Ok(())
    }

    /// Links blob `digest` into `target` from another repository without copying it: the
    /// source must hold it, the caller must be allowed to pull the source (`may_pull`), and
    /// both must share a domain. One transaction that writes the link row only.
    pub fn mount(
        &self,
        target: &str,
        from: MountFrom<'_>,
        digest: &Digest,
        may_pull: &dyn Fn(&str) -> bool,
    ) -> Result<Result<Mounted, MountRefused>, StoreError> {
        let domain = self.domain_for(target)?;
        // Not durable by itself: a durable commit writes ~40-55 KiB of pages and allocator
        // state, 100x the link. The link becomes durable with the next durable commit (the
        // client's manifest PUT, which needs it) or the store's flush within a second.
        let tx = self.write(false)?;
        let source = {
            let repos = tx.open_table(REPOS)?;
            let links = tx.open_table(LINKS)?;
            let holds = |id: u64| -> Result<bool, StoreError> {
                Ok(links.get((id, digest.as_str()))?.is_some())
            };
            let repo_of = |name: &str| -> Result<Option<(u64, u64)>, StoreError> {
                Ok(repos.get(name)?.map(|v| v.value()))
            };
            match from {
                MountFrom::Repo(name) => {
                    // Permission first: a refusal must not tell whether the blob is there.
                    if !may_pull(name) {
                        return Ok(Err(MountRefused::NotReadable));
                    }
                    let Some((id, from_domain)) = repo_of(name)? else {
                        return Ok(Err(MountRefused::FromUnknown));
                    };
                    if from_domain != domain {
                        // The client will upload a copy for this domain: refused now if
                        // that copy would take a quota past its limit.
                        if holds(id)? {
                            let size = tx
                                .open_table(BLOBS)?
                                .get((from_domain, digest.as_str()))?
                                .map(|v| v.value().1);
                            if let Some(size) = size {
                                self.quota_room(target, Some(digest), size)?;
                            }
                        }
                        return Ok(Err(MountRefused::OtherDomain));
                    }
                    if !holds(id)? {
                        return Ok(Err(MountRefused::NotInFrom));
                    }
                    name.to_owned()
                }
                MountFrom::Any => {
                    let mut found = None;
                    for row in repos.iter()? {
                        let (name, v) = row?;
                        let (name, (id, from_domain)) = (name.value(), v.value());
                        if from_domain == domain && may_pull(name) && holds(id)? {
                            found = Some(name.to_owned());
                            break;
                        }
                    }
                    match found {
                        Some(name) => name,
                        None => return Ok(Err(MountRefused::NotStored)),
                    }
                }
            }
        };
        // A damaged copy is no source: the client uploads the blob, which replaces it.
        if is_quarantined(
            &tx.open_table(QUARANTINE)?,
            QUARANTINE_BLOB,
            domain,
            digest.as_str(),
        )? {
            return Ok(Err(match from {
                MountFrom::Repo(_) => MountRefused::NotInFrom,
                MountFrom::Any => MountRefused::NotStored,
            }));
        }
        let size = tx
            .open_table(BLOBS)?
            .get((domain, digest.as_str()))?
            .map(|v| v.value().1)
            .ok_or_else(|| StoreError::Corrupt(format!("{source} links missing blob {digest}")))?;
        let before = self.quota_before(&tx, target)?;
        let repo = ensure_repo(&tx, target, domain)?;
        let linked = self.link(&tx, (target, repo), digest, LINK_MOUNTED)?;
        self.quota_enforce(&tx, &before)?;
        if linked != Linked::Unchanged {
            tx.audit(
                Change::in_repo("blob.mount", target)
                    .with("digest", digest.as_str())
                    .with("from", source.as_str())
                    .with("size", size),
            );
            tx.commit()?;
            self.unflushed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        } // else: nothing changed, and dropping the transaction writes nothing
        Ok(Ok(Mounted {
            from: source,
            size,
            linked: linked == Linked::New,
        }))
    }

    /// Removes `digest` from `repo`; the content goes when no repository links it.
    pub fn unlink_blob(&self, repo_name: &str, digest: &Digest) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        {
            let repo = find_repo_w(&tx, repo_name)?;
            if tx
                .open_table(LINKS)?
                .remove((repo.id, digest.as_str()))?
                .is_none()
            {
                return Err(StoreError::BlobUnknown);
            }
            self.unlinked(&tx, (repo_name, repo), digest.as_str(), false)?;
            tx.audit(Change::in_repo("blob.delete", repo_name).with("digest", digest.as_str()));
        }
        tx.commit()?;
        self.space_freed();
        Ok(())
    }
}

/// What `link` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Linked {
    /// The repository did not link the blob: it does now, and the blob counts one more.
    New,
    /// It did, since long enough for the collector to take it: the link is renewed (linked
    /// again by an upload or a mount, it gets the grace period from now).
    Renewed,
    /// It did, recently: nothing written.
    Unchanged,
}

impl Store {
    /// Links `digest` (stored in the repository's domain) into repository `name` (`repo`),
    /// counting the link on the blob, and charging the quotas covering it, in the same
    /// transaction; `kind` says how.
    pub(super) fn link(
        &self,
        tx: &WriteTransaction,
        (name, repo): (&str, Repo),
        digest: &Digest,
        kind: u8,
    ) -> Result<Linked, StoreError> {
        let domain = repo.domain;
        let mut links = tx.open_table(LINKS)?;
        let existing = links.get((repo.id, digest.as_str()))?.map(|v| v.value());
        if let Some((old_kind, at)) = existing {
            // A minute's resolution: repeated pushes of one layer do not rewrite its link.
            if now().saturating_sub(at) < 60 {
                return Ok(Linked::Unchanged);
            }
            links.insert((repo.id, digest.as_str()), (old_kind, now()))?;
            return Ok(Linked::Renewed);
        }
        links.insert((repo.id, digest.as_str()), (kind, now()))?;
        drop(links);
        let mut blobs = tx.open_table(BLOBS)?;
        let (id, size, count) = blobs
            .get((domain, digest.as_str()))?
            .map(|v| v.value())
            .ok_or_else(|| StoreError::Corrupt(format!("linking missing blob {digest}")))?;
        blobs.insert((domain, digest.as_str()), (id, size, count + 1))?;
        drop(blobs);
        self.quota_link(tx, (name, repo), digest.as_str(), size, true)?;
        Ok(Linked::New)
    }

    /// Repository `name` (`repo`) lost its link to `digest` (already removed within `tx`):
    /// credits its quotas and drops the blob's count (see `release_then`).
    pub(super) fn unlinked(
        &self,
        tx: &WriteTransaction,
        (name, repo): (&str, Repo),
        digest: &str,
        later: bool,
    ) -> Result<(), StoreError> {
        let size = tx
            .open_table(BLOBS)?
            .get((repo.domain, digest))?
            .map_or(0, |v| v.value().1);
        self.quota_link(tx, (name, repo), digest, size, false)?;
        self.release_then(tx, repo.domain, digest, later)
    }
}

impl Store {
    /// Drops one count on `digest` in `domain`; at zero the blob and its chunks are deleted
    /// in the same transaction, so a concurrent push or mount either sees the blob or stores
    /// its own copy.
    pub(super) fn release(
        &self,
        tx: &WriteTransaction,
        domain: u64,
        digest: &str,
    ) -> Result<(), StoreError> {
        self.release_then(tx, domain, digest, false)
    }

    /// `release`; with `later`, a blob deleted at zero leaves its chunk rows to `reap`
    /// (listed in `dead_blobs` in the same transaction): the collector's way, whose
    /// transactions must stay short whatever the size of a blob.
    pub(super) fn release_then(
        &self,
        tx: &WriteTransaction,
        domain: u64,
        digest: &str,
        later: bool,
    ) -> Result<(), StoreError> {
        let mut blobs = tx.open_table(BLOBS)?;
        let (id, size, count) = blobs
            .get((domain, digest))?
            .map(|v| v.value())
            .ok_or_else(|| StoreError::Corrupt(format!("releasing missing blob {digest}")))?;
        if count > 1 {
            blobs.insert((domain, digest), (id, size, count - 1))?;
        } else {
            blobs.remove((domain, digest))?;
            tx.open_table(QUARANTINE)?
                .remove((QUARANTINE_BLOB, domain, digest))?;
            drop(blobs);
            self.quota_blob(tx, size, false)?;
            if size >= FP_LEN as u64 {
                let key = self.domain_key(domain)?;
                let blob = BlobInfo { id, size, domain };
                let fp = stored_fingerprint(&tx.open_table(CHUNKS)?, key.as_deref(), blob);
                let mut prefixes = tx.open_table(PREFIXES)?;
                match fp {
                    Ok(fp) => {
                        prefixes.remove((domain, fp, digest))?;
                    }
                    // A damaged blob must still be deletable: find its row the slow way.
                    Err(StoreError::Integrity(_)) => {
                        let range = (domain, 0, "")..(domain + 1, 0, "");
                        prefixes.retain_in(range, |k, _| k.2 != digest)?;
                    }
                    Err(e) => return Err(e),
                }
            }
            if later {
                tx.open_table(DEAD)?.insert(id, ())?;
            } else {
                drop_chunks(tx, id)?;
            }
        }
        Ok(())
    }

    /// Deletes chunk rows of blobs in `dead_blobs`, in one transaction that stops taking rows
    /// once `budget` has passed (its time goes into `held`); returns the rows deleted and
    /// whether some remain.
    pub fn reap(
        &self,
        budget: std::time::Duration,
        held: &mut super::Held,
    ) -> Result<(u64, bool), StoreError> {
        const BATCH: usize = 64;
        // Usually there is nothing: find that out without taking the writer.
        if self.read()?.open_table(DEAD)?.first()?.is_none() {
            return Ok((0, false));
        }
        let tx = self.write(false)?;
        let began = std::time::Instant::now();
        let mut rows = 0u64;
        let mut changed = false;
        let more = {
            let mut dead = tx.open_table(DEAD)?;
            let mut chunks = tx.open_table(CHUNKS)?;
            loop {
                let Some(id) = dead.first()?.map(|(k, _)| k.value()) else {
                    break false;
                };
                if began.elapsed() >= budget && rows > 0 {
                    break true;
                }
                let keys: Vec<(u64, u64)> = chunks
                    .range((id, 0)..=(id, u64::MAX))?
                    .take(BATCH)
                    .map(|r| r.map(|(k, _)| k.value()))
                    .collect::<Result<_, _>>()?;
                for k in &keys {
                    chunks.remove(k)?;
                }
                rows += keys.len() as u64;
                changed = true;
                if keys.len() < BATCH {
                    dead.remove(id)?;
                }
            }
        };
        if !changed {
            return Ok((0, false)); // nothing to do: dropping the transaction writes nothing
        }
        tx.commit()?;
        held.add(began.elapsed());
        Ok((rows, more))
    }
}

/// Deletes every chunk of blob id `id`.
pub(super) fn drop_chunks(tx: &WriteTransaction, id: u64) -> Result<(), StoreError> {
    tx.open_table(CHUNKS)?
        .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
    Ok(())
}
