//! Blobs: content stored once per encryption domain, linked into repositories, read in chunks.

use super::repos::{repo_id, repo_id_w};
use super::schema::{BLOBS, CHUNKS, LINKS, LINK_PUSHED};
use super::{now, Store, StoreError};
use crate::digest::{Algorithm, Digest, Hasher};
use redb::{ReadableTable, WriteTransaction};

/// The plaintext encryption domain (the only one until per-repository keys land).
pub(super) const DOMAIN: u64 = 0;

/// Bytes hashed per read transaction when a digest is recomputed from storage.
const REHASH_STEP: usize = 1 << 20;

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
    pub fn linked_blob(&self, repo: &str, digest: &Digest) -> Result<BlobInfo, StoreError> {
        let tx = self.read()?;
        let repo = repo_id(&tx, repo)?;
        if tx
            .open_table(LINKS)?
            .get((repo, digest.as_str()))?
            .is_none()
        {
            return Err(StoreError::BlobUnknown);
        }
        let blob = tx
            .open_table(BLOBS)?
            .get((DOMAIN, digest.as_str()))?
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

    /// Removes `digest` from `repo`; the content goes when no repository links it.
    pub fn unlink_blob(&self, repo: &str, digest: &Digest) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        {
            let repo = repo_id_w(&tx, repo)?;
            if tx
                .open_table(LINKS)?
                .remove((repo, digest.as_str()))?
                .is_none()
            {
                return Err(StoreError::BlobUnknown);
            }
            release(&tx, digest)?;
        }
        tx.commit()?;
        self.space_freed();
        Ok(())
    }
}

/// Links `digest` (stored in the domain) into repository `repo`; true if it was not linked.
pub(super) fn link(tx: &WriteTransaction, repo: u64, digest: &Digest) -> Result<bool, StoreError> {
    let mut links = tx.open_table(LINKS)?;
    if links.get((repo, digest.as_str()))?.is_some() {
        return Ok(false);
    }
    links.insert((repo, digest.as_str()), (LINK_PUSHED, now()))?;
    let mut blobs = tx.open_table(BLOBS)?;
    let (id, size, count) = blobs
        .get((DOMAIN, digest.as_str()))?
        .map(|v| v.value())
        .ok_or_else(|| StoreError::Corrupt(format!("linking missing blob {digest}")))?;
    blobs.insert((DOMAIN, digest.as_str()), (id, size, count + 1))?;
    Ok(true)
}

/// Drops one link's count on `digest`; at zero the blob and its chunks are deleted in the same
/// transaction, so a concurrent push either sees the blob or stores its own copy.
fn release(tx: &WriteTransaction, digest: &Digest) -> Result<(), StoreError> {
    let mut blobs = tx.open_table(BLOBS)?;
    let (id, size, count) = blobs
        .get((DOMAIN, digest.as_str()))?
        .map(|v| v.value())
        .ok_or_else(|| StoreError::Corrupt(format!("releasing missing blob {digest}")))?;
    if count > 1 {
        blobs.insert((DOMAIN, digest.as_str()), (id, size, count - 1))?;
    } else {
        blobs.remove((DOMAIN, digest.as_str()))?;
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
