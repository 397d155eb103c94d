//! Upload sessions: chunks appended under a blob id reserved at the start, committed as a blob
//! (or dropped as a duplicate) when the client finishes with a verified digest.
//!
//! An upload whose first bytes are those of a blob the domain already stores (a cold client
//! re-pushing known content) is compared with that blob instead of written: it "shadows" it.
//! Only if the bytes diverge is the matched prefix copied into the session's own chunks; if
//! they never do, the finish links the stored blob and nothing but metadata was written.

use super::blobs::{
    drop_chunks, fingerprint, put_chunk, stored_fingerprint, with_sealed, BlobInfo, FP_LEN,
};
use super::repos::ensure_repo;
use super::schema::{
    BLOBS, CHUNKS, DEAD, LINK_PUSHED, PREFIXES, QUARANTINE, QUARANTINE_BLOB, SHADOWS, UPLOADS,
};
use super::scrub::is_quarantined;
use super::{next_id, now, Store, StoreError};
use crate::digest::Digest;
use redb::{ReadableTable, WriteTransaction};

/// Bytes of an upload between durable commits of its progress.
pub(super) const CHECKPOINT: u64 = 64 << 20;

/// Where an upload session stands.
#[derive(Clone, Copy, Debug)]
pub struct Upload {
    /// The blob id its content is read from: its own chunks, or the stored blob it shadows.
    pub blob: u64,
    /// Bytes received and committed so far.
    pub received: u64,
    /// The encryption domain its chunks are sealed for.
    pub domain: u64,
}

impl Upload {
    /// What it received, as a blob to read.
    pub fn content(&self) -> BlobInfo {
        BlobInfo {
            id: self.blob,
            size: self.received,
            domain: self.domain,
        }
    }
}

/// The stored blob an upload repeats, and how far.
#[derive(Clone, Debug)]
struct Shadow {
    domain: u64,
    digest: String,
    blob: BlobInfo,
    /// The session's own blob id, where a diverging upload continues.
    own: u64,
    at: u64,
}

/// Largest number of stored blobs sharing a fingerprint that an upload is compared with.
const MAX_CANDIDATES: usize = 4;

/// The upload `id` of `repo` in `uploads` (an id of another repository is unknown here).
fn lookup(
    uploads: &impl ReadableTable<&'static str, (&'static str, u64, u64, u64, u64)>,
    repo: &str,
    id: &str,
) -> Result<Upload, StoreError> {
    let row = uploads.get(id)?;
    match row.as_ref().map(|v| v.value()) {
        Some((r, domain, blob, received, _)) if r == repo => Ok(Upload {
            blob,
            received,
            domain,
        }),
        _ => Err(StoreError::UploadUnknown),
    }
}

/// The upload `id` of `repo` within a write.
fn session(tx: &WriteTransaction, repo: &str, id: &str) -> Result<Upload, StoreError> {
    lookup(&tx.open_table(UPLOADS)?, repo, id)
}

impl Store {
    /// Opens an upload session into `repo` for the caller's own use; returns its unguessable
    /// id. Not durable: see `upload_start` for a session whose id a client is told.
    pub fn upload_create(&self, repo: &str) -> Result<String, StoreError> {
        // Sealed for the repository's key from the first byte: plaintext never reaches disk.
        let domain = self.domain_for(repo)?;
        self.session_create(repo, domain, false).map(|(id, _)| id)
    }

    /// Opens an upload session into `repo` whose id a client is told (and may resume);
    /// created durably, so that no reopen of the store loses it.
    pub fn upload_start(&self, repo: &str) -> Result<String, StoreError> {
        let domain = self.domain_for(repo)?;
        self.session_create(repo, domain, true).map(|(id, _)| id)
    }

    /// Opens a session into `repo` whose chunks are sealed for `domain`; returns its id and
    /// blob id. Durable if `durable`: an I/O error (a full disk) makes the store reopen at its
    /// last durable commit, and a client told of a session must find it afterwards (its
    /// non-durable chunks may be gone: it then learns the true offset and resumes). Otherwise
    /// a session lost in a crash is reported unknown and its user restarts it.
    pub(super) fn session_create(
        &self,
        repo: &str,
        domain: u64,
        durable: bool,
    ) -> Result<(String, u64), StoreError> {
        let id = crate::crypto::hex(&crate::crypto::random::<16>());
        let tx = match durable {
            true => self.write_grouped()?,
            false => self.write(false)?,
        };
        let blob = next_id(&tx, "next_blob_id")?;
        tx.open_table(UPLOADS)?
            .insert(id.as_str(), (repo, domain, blob, 0, now()))?;
        tx.commit()?;
        Ok((id, blob))
    }

    /// The state of upload `id` in `repo`.
    pub fn upload(&self, repo: &str, id: &str) -> Result<Upload, StoreError> {
        if let Some(sh) = self.shadow(repo, id)? {
            return Ok(Upload {
                blob: sh.blob.id,
                received: sh.at,
                domain: sh.domain,
            });
        }
        lookup(&self.read()?.open_table(UPLOADS)?, repo, id)
    }

    /// True if upload `id` is repeating a stored blob byte for byte so far (it writes
    /// nothing; the quotas' early check leaves it to the finish).
    pub fn upload_repeats(&self, id: &str) -> bool {
        self.progress().contains_key(id)
    }

    /// The blob upload `id` shadows, if any, with its progress. The in-memory progress map
    /// (loaded from `shadows` at open) says which sessions shadow: an ordinary upload's
    /// chunks pay one map lookup here, not a read transaction.
    fn shadow(&self, repo: &str, id: &str) -> Result<Option<Shadow>, StoreError> {
        let Some(at) = self.progress().get(id).map(|p| p.0) else {
            return Ok(None);
        };
        let tx = self.read()?;
        let Some((domain, digest)) = tx
            .open_table(SHADOWS)?
            .get(id)?
            .map(|v| (v.value().0, v.value().1.to_owned()))
        else {
            return Ok(None); // ended meanwhile
        };
        let up = lookup(&tx.open_table(UPLOADS)?, repo, id)?;
        let (blob, size, _) = tx
            .open_table(BLOBS)?
            .get((domain, digest.as_str()))?
            .map(|v| v.value())
            .ok_or_else(|| StoreError::Corrupt(format!("upload {id} shadows missing {digest}")))?;
        Ok(Some(Shadow {
            domain,
            digest,
            blob: BlobInfo {
                id: blob,
                size,
                domain,
            },
            own: up.blob,
            at,
        }))
    }

    /// Fills the progress map from the `shadows` table: after a restart, each shadowing
    /// session resumes from its last durable checkpoint.
    pub(super) fn load_shadows(&self) -> Result<(), StoreError> {
        let tx = self.read()?;
        let uploads = tx.open_table(UPLOADS)?;
        let mut progress = self.progress();
        for row in tx.open_table(SHADOWS)?.iter()? {
            let (id, _) = row?;
            let id = id.value();
            let received = uploads.get(id)?.map_or(0, |v| v.value().3);
            progress.insert(id.to_owned(), (received, now()));
        }
        Ok(())
    }

    /// Writes where every shadowing upload stands into its session, durably (their progress
    /// is otherwise kept in memory between checkpoints): after a graceful stop each resumes
    /// where it was. One durable commit, which also covers every earlier non-durable one.
    pub fn save_progress(&self) -> Result<(), StoreError> {
        let progress: Vec<(String, u64)> = self
            .progress()
            .iter()
            .map(|(id, (at, _))| (id.clone(), *at))
            .collect();
        let tx = self.write(true)?;
        {
            let shadows = tx.open_table(SHADOWS)?;
            let mut uploads = tx.open_table(UPLOADS)?;
            for (id, at) in progress {
                // A session no longer shadowing (its row lost in a reopen's rollback, or
                // ended) has chunks of its own: its offset is theirs, not this one.
                if shadows.get(id.as_str())?.is_none() {
                    continue;
                }
                let row = uploads.get(id.as_str())?.map(|v| {
                    let (repo, domain, blob, _, active) = v.value();
                    (repo.to_owned(), domain, blob, active)
                });
                if let Some((repo, domain, blob, active)) = row {
                    uploads.insert(id.as_str(), (repo.as_str(), domain, blob, at, active))?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub(super) fn progress(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, (u64, u64)>> {
        self.shadows.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends to a shadowing upload: compares instead of writing. `Ok(None)` if the upload
    /// does not shadow a blob (any more): the caller writes the data.
    fn shadow_append(
        &self,
        repo: &str,
        id: &str,
        at: u64,
        data: &[u8],
    ) -> Result<Option<u64>, StoreError> {
        let Some(sh) = self.shadow(repo, id)? else {
            return Ok(None);
        };
        if sh.at != at {
            return Err(StoreError::UploadOffset(sh.at));
        }
        if !self.holds_at(sh.blob, at, data)? {
            self.materialize(repo, id, &sh)?;
            return Ok(None);
        }
        let end = at + data.len() as u64;
        {
            let mut progress = self.progress();
            match progress.get(id) {
                Some((p, _)) if *p != at => return Err(StoreError::UploadOffset(*p)),
                _ => progress.insert(id.to_owned(), (end, now())),
            };
        }
        if at / CHECKPOINT != end / CHECKPOINT {
            // As for written uploads: after a crash, resume from here rather than the start.
            let tx = self.write(true)?;
            tx.open_table(UPLOADS)?
                .insert(id, (repo, sh.domain, sh.own, end, now()))?;
            tx.commit()?;
        }
        Ok(Some(end))
    }

    /// Makes a shadowing upload an ordinary one: copies the matched prefix of the stored blob
    /// into the session's own chunks and releases the stored blob.
    fn materialize(&self, repo: &str, id: &str, sh: &Shadow) -> Result<(), StoreError> {
        self.copy_into_session(repo, id, sh.blob, sh.at, (sh.own, sh.domain), |_| {})?;
        let tx = self.write(false)?;
        {
            session(&tx, repo, id)?;
            tx.open_table(SHADOWS)?.remove(id)?;
            self.release(&tx, sh.domain, &sh.digest)?;
            tx.open_table(UPLOADS)?
                .insert(id, (repo, sh.domain, sh.own, sh.at, now()))?;
        }
        tx.commit()?;
        self.progress().remove(id);
        log::debug!("upload {id} diverged from {} at byte {}", sh.digest, sh.at);
        Ok(())
    }

    /// Copies the first `len` bytes of `src` into the chunks of session `id` of `repo`
    /// (blob id and domain `dst`), sealed anew for that blob (a chunk is bound to its blob),
    /// one short transaction per chunk; `seen` gets each piece. The session's progress
    /// follows, so a crash resumes after what was copied.
    pub(super) fn copy_into_session(
        &self,
        repo: &str,
        id: &str,
        src: BlobInfo,
        len: u64,
        (blob, domain): (u64, u64),
        mut seen: impl FnMut(&[u8]),
    ) -> Result<(), StoreError> {
        let step = self.chunk_payload;
        let key = self.domain_key(domain)?;
        let mut buf = Vec::with_capacity(step + crate::crypto::SEAL_OVERHEAD);
        let (mut at, mut hint) = (0, super::ChunkHint::default());
        while at < len {
            // (not `as usize`: on 32-bit ARM the rest of a >4 GiB blob would wrap)
            let want = usize::try_from(len - at).map_or(step, |rest| step.min(rest));
            self.read_blob_on(src, at, want, &mut buf, &mut hint)?;
            if buf.is_empty() {
                return Err(StoreError::BlobUnknown);
            }
            seen(&buf);
            self.check_space(buf.len() as u64)?;
            let tx = self.write(false)?;
            session(&tx, repo, id)?;
            put_chunk(&tx, key.as_deref(), blob, at, &buf)?;
            at += buf.len() as u64;
            tx.open_table(UPLOADS)?
                .insert(id, (repo, domain, blob, at, now()))?;
            tx.commit()?;
        }
        Ok(())
    }

    /// Starts shadowing if `first` (an upload's first bytes) begins a stored blob of `repo`'s
    /// domain. True if it does: `first` then needs no writing.
    fn start_shadow(
        &self,
        repo: &str,
        id: &str,
        domain: u64,
        first: &[u8],
    ) -> Result<bool, StoreError> {
        let fp = fingerprint(self.domain_key(domain)?.as_deref(), &first[..FP_LEN]);
        let mut found = None;
        {
            let tx = self.read()?;
            let prefixes = tx.open_table(PREFIXES)?;
            let blobs = tx.open_table(BLOBS)?;
            let quarantine = tx.open_table(QUARANTINE)?;
            for row in prefixes
                .range((domain, fp, "")..=(domain, fp, "\u{10ffff}"))?
                .take(MAX_CANDIDATES)
            {
                let (k, _) = row?;
                let digest = k.value().2.to_owned();
                // A damaged copy is never what an upload is compared with.
                if is_quarantined(&quarantine, QUARANTINE_BLOB, domain, &digest)? {
                    continue;
                }
                let Some((blob, size, _)) =
                    blobs.get((domain, digest.as_str()))?.map(|v| v.value())
                else {
                    continue;
                };
                let blob = BlobInfo {
                    id: blob,
                    size,
                    domain,
                };
                // Compared in a read transaction of its own: the candidate may have been
                // deleted since this one began (then it is no candidate), or be damaged
                // (then the upload is written, never compared with bad data).
                match self.holds_at(blob, 0, first) {
                    Ok(true) => {
                        found = Some((digest, blob));
                        break;
                    }
                    Ok(false) | Err(StoreError::BlobUnknown) => {}
                    Err(StoreError::Integrity(m)) => log::error!("integrity error: {m}"),
                    Err(e) => return Err(e),
                }
            }
        }
        let Some((digest, blob)) = found else {
            return Ok(false);
        };
        let tx = self.write(false)?;
        {
            let up = session(&tx, repo, id)?;
            if up.received != 0 {
                return Err(StoreError::UploadOffset(up.received));
            }
            let mut blobs = tx.open_table(BLOBS)?;
            // Deleted (or replaced) since it was compared: write the upload instead.
            let row = blobs.get((domain, digest.as_str()))?.map(|v| v.value());
            let Some((bid, size, count)) = row.filter(|r| r.0 == blob.id) else {
                return Ok(false);
            };
            blobs.insert((domain, digest.as_str()), (bid, size, count + 1))?;
            tx.open_table(SHADOWS)?
                .insert(id, (domain, digest.as_str()))?;
        }
        tx.commit()?;
        self.progress()
            .insert(id.to_owned(), (first.len() as u64, now()));
        Ok(true)
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
        if let Some(end) = self.shadow_append(repo, id, at, data)? {
            return Ok(end);
        }
        let end = at + data.len() as u64;
        let up = lookup(&self.read()?.open_table(UPLOADS)?, repo, id)?;
        if up.received != at {
            return Err(StoreError::UploadOffset(up.received));
        }
        if at == 0 && data.len() >= FP_LEN && self.start_shadow(repo, id, up.domain, data)? {
            return Ok(end);
        }
        if data.is_empty() {
            return Ok(end);
        }
        self.check_space(data.len() as u64)?;
        // Sealed before the write transaction: other writers do not wait for the cipher.
        let key = self.domain_key(up.domain)?;
        with_sealed(key.as_deref(), up.blob, at, data, |bytes| {
            // A durable checkpoint each time the session crosses a multiple of CHECKPOINT:
            // after a crash a large upload resumes from there instead of from the start.
            let tx = self.write(at / CHECKPOINT != end / CHECKPOINT)?;
            {
                let now_at = session(&tx, repo, id)?;
                if now_at.received != at || now_at.blob != up.blob {
                    return Err(StoreError::UploadOffset(now_at.received));
                }
                tx.open_table(CHUNKS)?.insert((up.blob, at), bytes)?;
                tx.open_table(UPLOADS)?
                    .insert(id, (repo, up.domain, up.blob, end, now()))?;
            }
            tx.commit()
        })?;
        self.writeback.wrote(data.len() as u64);
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
        if let Some(sh) = self.shadow(repo, id)? {
            if sh.at != size {
                return Err(StoreError::UploadOffset(sh.at));
            }
            let domain = sh.domain;
            if sh.digest != digest.as_str() || sh.blob.size != size {
                // A proper prefix of the stored blob (or another algorithm): store it.
                self.materialize(repo, id, &sh)?;
                return self.upload_finish(repo, id, digest, size);
            }
            let tx = self.write_grouped()?;
            {
                session(&tx, repo, id)?;
                let before = self.quota_before(&tx, repo)?;
                tx.open_table(UPLOADS)?.remove(id)?;
                tx.open_table(SHADOWS)?.remove(id)?;
                let named = ensure_repo(&tx, repo, domain)?;
                // Link first, then drop the shadow's own count: the blob never reaches zero.
                self.link(&tx, (repo, named), digest, LINK_PUSHED)?;
                self.release(&tx, domain, digest.as_str())?;
                self.quota_enforce(&tx, &before)?;
            }
            tx.commit()?;
            self.progress().remove(id);
            return Ok(true);
        }
        let tx = self.write_grouped()?;
        let duplicate = {
            let up = session(&tx, repo, id)?;
            if up.received != size {
                return Err(StoreError::UploadOffset(up.received));
            }
            let domain = up.domain;
            let before = self.quota_before(&tx, repo)?;
            tx.open_table(UPLOADS)?.remove(id)?;
            let mut blobs = tx.open_table(BLOBS)?;
            let existing = blobs.get((domain, digest.as_str()))?.map(|v| v.value());
            let mut quarantine = tx.open_table(QUARANTINE)?;
            // A quarantined copy is replaced by this verified one, never deduplicated against.
            let replaced = match existing {
                Some((old, _, count))
                    if is_quarantined(&quarantine, QUARANTINE_BLOB, domain, digest.as_str())? =>
                {
                    quarantine.remove((QUARANTINE_BLOB, domain, digest.as_str()))?;
                    tx.open_table(DEAD)?.insert(old, ())?;
                    log::warn!("blob {digest}: its quarantined copy is replaced by a verified one");
                    Some(count)
                }
                _ => None,
            };
            drop(quarantine);
            let duplicate = existing.is_some() && replaced.is_none();
            if duplicate {
                drop(blobs);
                drop_chunks(&tx, up.blob)?;
            } else {
                blobs.insert(
                    (domain, digest.as_str()),
                    (up.blob, size, replaced.unwrap_or(0)),
                )?;
                drop(blobs);
                // A replaced copy was charged when it was stored: the same bytes, once.
                if replaced.is_none() {
                    self.quota_blob(&tx, size, true)?;
                }
                if size >= FP_LEN as u64 {
                    let key = self.domain_key(domain)?;
                    let fp =
                        stored_fingerprint(&tx.open_table(CHUNKS)?, key.as_deref(), up.content())?;
                    tx.open_table(PREFIXES)?
                        .insert((domain, fp, digest.as_str()), ())?;
                }
            }
            let named = ensure_repo(&tx, repo, domain)?;
            self.link(&tx, (repo, named), digest, LINK_PUSHED)?;
            self.quota_enforce(&tx, &before)?;
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
                let (repo, _, _, _, last_active) = v.value();
                let id = id.value();
                let shadow_active = self.progress().get(id).map_or(0, |p| p.1);
                if last_active.max(shadow_active) < cutoff {
                    stale.push((id.to_owned(), repo.to_owned()));
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

    /// Cancels, within `tx`, every upload session of repository `repo`; returns their ids
    /// (for the caller to forget in the progress map once `tx` commits).
    pub(super) fn cancel_sessions_of(
        &self,
        tx: &WriteTransaction,
        repo: &str,
    ) -> Result<Vec<String>, StoreError> {
        let ids: Vec<String> = {
            let mut v = Vec::new();
            for row in tx.open_table(UPLOADS)?.iter()? {
                let (id, up) = row?;
                if up.value().0 == repo {
                    v.push(id.value().to_owned());
                }
            }
            v
        };
        for id in &ids {
            self.drop_session(tx, repo, id)?;
        }
        Ok(ids)
    }

    /// Cancels upload `id` of `repo` and drops what it received.
    pub fn upload_cancel(&self, repo: &str, id: &str) -> Result<(), StoreError> {
        let tx = self.write(false)?;
        self.drop_session(&tx, repo, id)?;
        tx.commit()?;
        self.progress().remove(id);
        self.space_freed();
        Ok(())
    }

    /// Removes session `id` of `repo` within `tx`: its row, its chunks, and its pin on a
    /// blob it was repeating.
    pub(super) fn drop_session(
        &self,
        tx: &WriteTransaction,
        repo: &str,
        id: &str,
    ) -> Result<(), StoreError> {
        let up = session(tx, repo, id)?;
        tx.open_table(UPLOADS)?.remove(id)?;
        drop_chunks(tx, up.blob)?;
        let shadowed = tx
            .open_table(SHADOWS)?
            .remove(id)?
            .map(|v| (v.value().0, v.value().1.to_owned()));
        if let Some((domain, digest)) = shadowed {
            self.release(tx, domain, &digest)?;
        }
        Ok(())
    }
}
