//! Moving a repository to another key: the explicit, re-encrypting change of its domain.
//!
//! Blobs the target domain lacks are first copied into upload sessions sealed for it (short
//! transactions, each copy re-hashed against its digest); then one durable transaction
//! links them, releases the old copies, re-seals the manifests and switches the repository.
//! A crash before that transaction leaves the repository as it was, and the staged sessions
//! are purged like any abandoned upload.

use super::blobs::{stored_fingerprint, BlobInfo, FP_LEN};
use super::domains::PLAINTEXT;
use super::manifests::reseal_records;
use super::repos::find_repo_w;
use super::schema::{BLOBS, CHUNKS, LINKS, PREFIXES, REPOS, UPLOADS};
use super::{Store, StoreError};
use crate::audit::Change;
use crate::crypto::Algorithm;
use crate::digest::{Digest, Hasher};
use redb::ReadableTable;

/// What `repo_move` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The key it had (None: plaintext).
    pub from: Option<String>,
    /// Blobs copied (re-encrypted) and their bytes.
    pub blobs_copied: u64,
    /// Bytes copied.
    pub bytes_copied: u64,
    /// Blobs the target key already stored (linked, not copied).
    pub blobs_shared: u64,
    /// Manifests and referrer entries re-sealed.
    pub records: u64,
}

impl Store {
    /// Moves repository `name` to data key `key` (created if new), or to plaintext (`None`),
    /// re-encrypting its content. Meant for a stopped registry: pushes to the repository
    /// while it runs would be refused at the switch (`DomainChanged`).
    pub fn repo_move(
        &self,
        name: &str,
        key: Option<(&str, Option<Algorithm>)>,
    ) -> Result<Moved, StoreError> {
        let target = match key {
            None => PLAINTEXT,
            Some((k, alg)) => self.ensure_key(k, alg)?,
        };
        let (repo, digests) = {
            let tx = self.read()?;
            let repo = super::repos::find_repo(&tx, name)?;
            let mut digests = Vec::new();
            let links = tx.open_table(LINKS)?;
            for row in links.range::<(u64, &str)>((repo.id, "")..(repo.id + 1, ""))? {
                digests.push(row?.0.value().1.to_owned());
            }
            (repo, digests)
        };
        if repo.domain == target {
            return Err(StoreError::Keys(format!(
                "{name} is already stored with {}",
                self.key_name(target)
                    .map_or("no key (plaintext)".to_owned(), |k| format!("key {k:?}"))
            )));
        }
        // Copy what the target domain lacks, verifying each digest on the way.
        let mut staged = Vec::new();
        let mut report = Moved {
            from: self.key_name(repo.domain),
            blobs_copied: 0,
            bytes_copied: 0,
            blobs_shared: 0,
            records: 0,
        };
        for digest in &digests {
            let (src, present) = {
                let tx = self.read()?;
                let blobs = tx.open_table(BLOBS)?;
                let src = blobs
                    .get((repo.domain, digest.as_str()))?
                    .map(|v| v.value());
                let present = blobs.get((target, digest.as_str()))?.is_some();
                (src, present)
            };
            let (id, size, _) =
                src.ok_or_else(|| StoreError::Corrupt(format!("link to missing blob {digest}")))?;
            if present {
                report.blobs_shared += 1;
                continue;
            }
            let src = BlobInfo {
                id,
                size,
                domain: repo.domain,
            };
            let (session, blob) = self.stage_copy(name, src, target, digest)?;
            staged.push((digest.clone(), session, blob, size));
            report.blobs_copied += 1;
            report.bytes_copied += size;
        }
        // Switch in one durable transaction.
        let key = self.domain_key(target)?;
        let tx = self.write(true)?;
        {
            if find_repo_w(&tx, name)? != repo {
                return Err(StoreError::DomainChanged(name.to_owned()));
            }
            let mut uploads = tx.open_table(UPLOADS)?;
            let mut blobs = tx.open_table(BLOBS)?;
            for (digest, session, blob, size) in &staged {
                let size = *size;
                uploads.remove(session.as_str())?;
                let row = blobs.get((target, digest.as_str()))?.map(|v| v.value());
                if let Some((id, size, count)) = row {
                    // Stored meanwhile (e.g. a crash left an earlier attempt half done).
                    blobs.insert((target, digest.as_str()), (id, size, count + 1))?;
                    super::blobs::drop_chunks(&tx, *blob)?;
                    continue;
                }
                blobs.insert((target, digest.as_str()), (*blob, size, 1))?;
                if size >= FP_LEN as u64 {
                    let content = BlobInfo {
                        id: *blob,
                        size,
                        domain: target,
                    };
                    let fp = stored_fingerprint(&tx.open_table(CHUNKS)?, key.as_deref(), content)?;
                    tx.open_table(PREFIXES)?
                        .insert((target, fp, digest.as_str()), ())?;
                }
            }
            for digest in &digests {
                if staged.iter().any(|s| &s.0 == digest) {
                    continue;
                }
                let row = blobs.get((target, digest.as_str()))?.map(|v| v.value());
                let (id, size, count) = row.ok_or_else(|| {
                    StoreError::Corrupt(format!("{digest} left key {target} during the move"))
                })?;
                blobs.insert((target, digest.as_str()), (id, size, count + 1))?;
            }
            drop(blobs);
            drop(uploads);
            for digest in &digests {
                self.release(&tx, repo.domain, digest)?;
            }
            let old = self.domain_key(repo.domain)?;
            report.records = reseal_records(&tx, repo.id, old.as_deref(), key.as_deref())?;
            tx.open_table(REPOS)?.insert(name, (repo.id, target))?;
            // Its links now count in another domain: recount (a stopped registry's rare step).
            self.quota_rebuild(&tx)?;
        }
        let key_of = |d| self.key_name(d).unwrap_or_else(|| "plaintext".to_owned());
        tx.audit(
            Change::in_repo("repository.move", name)
                .with("from", key_of(repo.domain))
                .with("to", key_of(target))
                .with("blobsCopied", report.blobs_copied),
        );
        tx.commit()?;
        self.space_freed();
        Ok(report)
    }

    /// Copies `src` into a new upload session of `repo` sealed for `domain`, checking that
    /// the bytes still hash to `digest`; returns the session id and its blob id.
    fn stage_copy(
        &self,
        repo: &str,
        src: BlobInfo,
        domain: u64,
        digest: &str,
    ) -> Result<(String, u64), StoreError> {
        let parsed = Digest::parse(digest)
            .map_err(|_| StoreError::Corrupt(format!("bad digest {digest}")))?;
        let mut hasher = Hasher::new(parsed.algorithm());
        let (session, blob) = self.session_create(repo, domain, false)?;
        self.copy_into_session(repo, &session, src, src.size, (blob, domain), |piece| {
            hasher.update(piece)
        })?;
        if hasher.finish().as_str() != digest {
            return Err(StoreError::Integrity(format!(
                "blob {digest} of {repo} no longer hashes to its digest"
            )));
        }
        Ok((session, blob))
    }
}
