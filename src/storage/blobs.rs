//! Blobs: content stored once per encryption domain, linked into repositories, read in chunks.

use super::repos::{ensure_repo, repo_id, repo_id_w};
use super::schema::{BLOBS, CHUNKS, LINKS, LINK_MOUNTED, PREFIXES, REPOS};
use super::{now, Store, StoreError};
use crate::digest::{Algorithm, Digest, Hasher};
use redb::{ReadableTable, WriteTransaction};
use sha2::Digest as _;
use std::cell::RefCell;

/// The plaintext encryption domain (the only one until per-repository keys land).
pub(super) const DOMAIN: u64 = 0;

/// The storage/encryption domain of repository `_name`: content is stored, deduplicated and
/// mounted only within one domain. Every repository is plaintext until per-repository keys
/// exist; mounts and dedupe already ask this, so they stay within a domain when those land.
pub(super) fn domain_of(_name: &str) -> u64 {
    DOMAIN
}

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

/// The fingerprint of a blob whose first `FP_LEN` bytes are `head`.
pub(super) fn fingerprint(head: &[u8]) -> u64 {
    let d = sha2::Sha256::digest(head);
    u64::from_be_bytes(d[..8].try_into().expect("8 bytes"))
}

/// The fingerprint of stored blob `id`, which is at least `FP_LEN` bytes long.
pub(super) fn stored_fingerprint(
    chunks: &impl ReadableTable<(u64, u64), &'static [u8]>,
    id: u64,
) -> Result<u64, StoreError> {
    let mut head = Vec::with_capacity(FP_LEN);
    for row in chunks.range((id, 0)..=(id, u64::MAX))? {
        let (_, v) = row?;
        let v = v.value();
        head.extend_from_slice(&v[..v.len().min(FP_LEN - head.len())]);
        if head.len() == FP_LEN {
            return Ok(fingerprint(&head));
        }
    }
    Err(StoreError::Corrupt(format!(
        "blob {id} is shorter than its size"
    )))
}

thread_local! {
    // Stored bytes read back to compare with an upload's; one per worker, reused.
    static COMPARE_BUF: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Where a stored blob's bytes live and how many there are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// Blob id: the first half of its chunk keys.
    pub id: u64,
    /// Size in bytes.
    pub size: u64,
}

impl Store {
    /// The blob `digest` as linked into `repo` (not merely present in the store).
    pub fn linked_blob(&self, repo_name: &str, digest: &Digest) -> Result<BlobInfo, StoreError> {
        let tx = self.read()?;
        let repo = repo_id(&tx, repo_name)?;
        if tx
            .open_table(LINKS)?
            .get((repo, digest.as_str()))?
            .is_none()
        {
            return Err(StoreError::BlobUnknown);
        }
        let blob = tx
            .open_table(BLOBS)?
            .get((domain_of(repo_name), digest.as_str()))?
            .map(|v| v.value());
        let (id, size, _) =
            blob.ok_or_else(|| StoreError::Corrupt(format!("link to missing blob {digest}")))?;
        Ok(BlobInfo { id, size })
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
        buf.clear();
        let end = blob.size.min(offset.saturating_add(max as u64));
        if offset >= end {
            return Ok(());
        }
        let tx = self.read()?;
        let chunks = tx.open_table(CHUNKS)?;
        // The chunk holding `offset` is the last one starting at or before it.
        let first = chunks
            .range((blob.id, 0)..=(blob.id, offset))?
            .next_back()
            .transpose()?;
        let mut pos = match first {
            Some((k, _)) => k.value().1,
            None => return Err(StoreError::BlobUnknown),
        };
        for entry in chunks.range((blob.id, pos)..=(blob.id, u64::MAX))? {
            let (k, v) = entry?;
            if k.value().1 != pos {
                return Err(StoreError::Corrupt(format!(
                    "blob {} has a gap at {pos}",
                    blob.id
                )));
            }
            let data = v.value();
            let want = offset + buf.len() as u64;
            let chunk_end = pos + data.len() as u64;
            if chunk_end > want {
                let from = (want - pos) as usize;
                let to = (end.min(chunk_end) - pos) as usize;
                buf.extend_from_slice(&data[from..to]);
            }
            pos = chunk_end;
            if pos >= end {
                return Ok(());
            }
        }
        Err(StoreError::BlobUnknown)
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

    /// Recomputes the digest of the first `size` bytes under blob id `id`.
    pub fn hash_blob(
        &self,
        id: u64,
        size: u64,
        algorithm: Algorithm,
    ) -> Result<Digest, StoreError> {
        let mut hasher = Hasher::new(algorithm);
        let mut buf = Vec::with_capacity(REHASH_STEP);
        let blob = BlobInfo { id, size };
        let mut at = 0;
        while at < size {
            self.read_blob(blob, at, REHASH_STEP, &mut buf)?;
            hasher.update(&buf);
            at += buf.len() as u64;
        }
        Ok(hasher.finish())
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
        let domain = domain_of(target);
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
            match from {
                MountFrom::Repo(name) => {
                    // Permission first: a refusal must not tell whether the blob is there.
                    if !may_pull(name) {
                        return Ok(Err(MountRefused::NotReadable));
                    }
                    let Some(id) = repos.get(name)?.map(|v| v.value()) else {
                        return Ok(Err(MountRefused::FromUnknown));
                    };
                    if domain_of(name) != domain {
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
                        let (name, id) = row?;
                        let name = name.value();
                        if domain_of(name) == domain && may_pull(name) && holds(id.value())? {
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
        let size = tx
            .open_table(BLOBS)?
            .get((domain, digest.as_str()))?
            .map(|v| v.value().1)
            .ok_or_else(|| StoreError::Corrupt(format!("{source} links missing blob {digest}")))?;
        let target_id = ensure_repo(&tx, target)?;
        let linked = link(&tx, target_id, domain, digest, LINK_MOUNTED)?;
        if linked {
            tx.commit()?;
            self.unflushed
                .store(true, std::sync::atomic::Ordering::SeqCst);
        } // else: nothing changed, and dropping the transaction writes nothing
        Ok(Ok(Mounted {
            from: source,
            size,
            linked,
        }))
    }

    /// Removes `digest` from `repo`; the content goes when no repository links it.
    pub fn unlink_blob(&self, repo_name: &str, digest: &Digest) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        {
            let repo = repo_id_w(&tx, repo_name)?;
            if tx
                .open_table(LINKS)?
                .remove((repo, digest.as_str()))?
                .is_none()
            {
                return Err(StoreError::BlobUnknown);
            }
            release(&tx, domain_of(repo_name), digest.as_str())?;
        }
        tx.commit()?;
        self.space_freed();
        Ok(())
    }
}

/// Links `digest` (stored in `domain`, the repository's) into repository id `repo`, counting the
/// link on the blob in the same transaction; `kind` says how. True if it was not linked.
pub(super) fn link(
    tx: &WriteTransaction,
    repo: u64,
    domain: u64,
    digest: &Digest,
    kind: u8,
) -> Result<bool, StoreError> {
    let mut links = tx.open_table(LINKS)?;
    if links.get((repo, digest.as_str()))?.is_some() {
        return Ok(false);
    }
    links.insert((repo, digest.as_str()), (kind, now()))?;
    let mut blobs = tx.open_table(BLOBS)?;
    let (id, size, count) = blobs
        .get((domain, digest.as_str()))?
        .map(|v| v.value())
        .ok_or_else(|| StoreError::Corrupt(format!("linking missing blob {digest}")))?;
    blobs.insert((domain, digest.as_str()), (id, size, count + 1))?;
    Ok(true)
}

/// Drops one count on `digest` in `domain`; at zero the blob and its chunks are deleted in the
/// same transaction, so a concurrent push or mount either sees the blob or stores its own copy.
pub(super) fn release(tx: &WriteTransaction, domain: u64, digest: &str) -> Result<(), StoreError> {
    let mut blobs = tx.open_table(BLOBS)?;
    let (id, size, count) = blobs
        .get((domain, digest))?
        .map(|v| v.value())
        .ok_or_else(|| StoreError::Corrupt(format!("releasing missing blob {digest}")))?;
    if count > 1 {
        blobs.insert((domain, digest), (id, size, count - 1))?;
    } else {
        blobs.remove((domain, digest))?;
        if size >= FP_LEN as u64 {
            let fp = stored_fingerprint(&tx.open_table(CHUNKS)?, id)?;
            tx.open_table(PREFIXES)?.remove((domain, fp, digest))?;
        }
        drop_chunks(tx, id)?;
    }
    Ok(())
}

/// Deletes every chunk of blob id `id`.
pub(super) fn drop_chunks(tx: &WriteTransaction, id: u64) -> Result<(), StoreError> {
    tx.open_table(CHUNKS)?
        .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)?;
    Ok(())
}
