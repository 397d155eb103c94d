//! Upload sessions: chunks appended under a blob id reserved at the start, committed as a blob
//! (or dropped as a duplicate) when the client finishes with a verified digest.

use super::blobs::{domain_of, drop_chunks, link};
use super::repos::ensure_repo;
use super::schema::{BLOBS, CHUNKS, LINK_PUSHED, UPLOADS};
use super::{next_id, now, Store, StoreError};
use crate::digest::Digest;
use redb::{ReadableTable, WriteTransaction};
use ring::rand::{SecureRandom, SystemRandom};

/// Bytes of an upload between durable commits of its progress.
const CHECKPOINT: u64 = 64 << 20;

/// Where an upload session stands.
#[derive(Clone, Copy, Debug)]
pub struct Upload {
    /// The blob id its chunks are stored under.
    pub blob: u64,
    /// Bytes received and committed so far.
    pub received: u64,
}

/// The upload `id` of `repo` in `uploads` (an id of another repository is unknown here).
fn lookup(
    uploads: &impl ReadableTable<&'static str, (&'static str, u64, u64, u64)>,
    repo: &str,
    id: &str,
) -> Result<Upload, StoreError> {
    let row = uploads.get(id)?;
    match row.as_ref().map(|v| v.value()) {
        Some((r, blob, received, _)) if r == repo => Ok(Upload { blob, received }),
        _ => Err(StoreError::UploadUnknown),
    }
}

/// The upload `id` of `repo` within a write.
fn session(tx: &WriteTransaction, repo: &str, id: &str) -> Result<Upload, StoreError> {
    lookup(&tx.open_table(UPLOADS)?, repo, id)
}

impl Store {
    /// Opens an upload session into `repo`; returns its unguessable id.
    pub fn upload_create(&self, repo: &str) -> Result<String, StoreError> {
        let mut raw = [0u8; 16];
        SystemRandom::new()
            .fill(&mut raw)
            .map_err(|_| StoreError::Corrupt("no system randomness".into()))?;
        let id: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        // Not durable: a session lost in a crash is reported unknown and the client restarts it.
        let tx = self.write(false)?;
        {
            let blob = next_id(&tx, "next_blob_id")?;
            tx.open_table(UPLOADS)?
                .insert(id.as_str(), (repo, blob, 0, now()))?;
        }
        tx.commit()?;
        Ok(id)
    }

    /// The state of upload `id` in `repo`.
    pub fn upload(&self, repo: &str, id: &str) -> Result<Upload, StoreError> {
        lookup(&self.read()?.open_table(UPLOADS)?, repo, id)
    }

    /// Appends `data` at offset `at`, which must be where the upload stands; returns the new
    /// offset. Each call is one short transaction, durable only at checkpoints: the finish
    /// makes everything before it durable.
    pub fn upload_append(
        &self,
        repo: &str,
        id: &str,
        at: u64,
        data: &[u8],
    ) -> Result<u64, StoreError> {
        let end = at + data.len() as u64;
        self.check_space(data.len() as u64)?;
        // A durable checkpoint each time the session crosses a multiple of CHECKPOINT: after a
        // crash a large upload resumes from there instead of from the start.
        let tx = self.write(at / CHECKPOINT != end / CHECKPOINT)?;
        {
            let up = session(&tx, repo, id)?;
            if up.received != at {
                return Err(StoreError::UploadOffset(up.received));
            }
            if !data.is_empty() {
                tx.open_table(CHUNKS)?.insert((up.blob, at), data)?;
                tx.open_table(UPLOADS)?
                    .insert(id, (repo, up.blob, end, now()))?;
            }
        }
        tx.commit()?;
        Ok(end)
    }

    /// Makes a verified upload the blob `digest` of `repo`. `size` is what the caller hashed:
    /// the session must still be exactly that long. Stores content once per domain: if the
    /// digest is already stored, this upload's chunks are dropped and the existing blob is
    /// linked, in the same transaction. True if the content was a duplicate.
    pub fn upload_finish(
        &self,
        repo: &str,
        id: &str,
        digest: &Digest,
        size: u64,
    ) -> Result<bool, StoreError> {
        let domain = domain_of(repo);
        let tx = self.write(true)?;
        let duplicate = {
            let up = session(&tx, repo, id)?;
            if up.received != size {
                return Err(StoreError::UploadOffset(up.received));
            }
            tx.open_table(UPLOADS)?.remove(id)?;
            let mut blobs = tx.open_table(BLOBS)?;
            let duplicate = blobs.get((domain, digest.as_str()))?.is_some();
            if duplicate {
                drop(blobs);
                drop_chunks(&tx, up.blob)?;
            } else {
                blobs.insert((domain, digest.as_str()), (up.blob, size, 0))?;
                drop(blobs);
            }
            let repo = ensure_repo(&tx, repo)?;
            link(&tx, repo, domain, digest, LINK_PUSHED)?;
            duplicate
        };
        tx.commit()?;
        Ok(duplicate)
    }

    /// Cancels every session idle for more than `idle_secs`, one short transaction each;
    /// returns how many. Abandoned uploads would otherwise hold their chunks forever.
    pub fn purge_uploads(&self, idle_secs: u64) -> Result<usize, StoreError> {
        let cutoff = now().saturating_sub(idle_secs);
        let stale: Vec<(String, String)> = {
            let tx = self.read()?;
            let uploads = tx.open_table(UPLOADS)?;
            let mut stale = Vec::new();
            for row in uploads.iter()? {
                let (id, v) = row?;
                let (repo, _, _, last_active) = v.value();
                if last_active < cutoff {
                    stale.push((id.value().to_owned(), repo.to_owned()));
                }
            }
            stale
        };
        let mut purged = 0;
        for (id, repo) in stale {
            match self.upload_cancel(&repo, &id) {
                Ok(()) => purged += 1,
                Err(StoreError::UploadUnknown) => {} // finished or cancelled meanwhile
                Err(e) => return Err(e),
            }
        }
        Ok(purged)
    }

    /// Cancels upload `id` of `repo` and drops what it received.
    pub fn upload_cancel(&self, repo: &str, id: &str) -> Result<(), StoreError> {
        let tx = self.write(false)?;
        {
            let up = session(&tx, repo, id)?;
            tx.open_table(UPLOADS)?.remove(id)?;
            drop_chunks(&tx, up.blob)?;
        }
        tx.commit()?;
        self.space_freed();
        Ok(())
    }
}
