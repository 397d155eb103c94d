//! What the scrub reads and records: stored objects in key order, a manifest record's
//! verification, the quarantine, and the scrub's own state.

use super::blobs::BlobInfo;
use super::repos::find_repo;
use super::schema::{
    BLOBS, LINKS, MANIFESTS, QUARANTINE, QUARANTINE_BLOB, QUARANTINE_MANIFEST, REFS, REF_BLOB,
    REPOS, SCRUB, TAGS,
};
use super::{now, Store, StoreError};
use redb::ReadableTable;
use std::collections::BTreeSet;

/// A stored object the scrub verifies, in the order a pass visits them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScrubItem {
    /// A blob: its domain, digest and where its chunks are.
    Blob(u64, String, BlobInfo),
    /// A manifest: its repository id and digest.
    Manifest(u64, String),
}

/// A quarantined object and what it breaks.
#[derive(Debug, Clone)]
pub struct BadObject {
    /// True for a manifest, false for a blob.
    pub manifest: bool,
    /// Its digest.
    pub digest: String,
    /// Unix seconds when the scrub found it.
    pub found: u64,
    /// What was wrong.
    pub reason: String,
    /// Repositories it breaks: (name, manifests that list it or are it, their tags).
    pub repositories: Vec<(String, Vec<String>, Vec<String>)>,
}

/// True if `(kind, scope, digest)` is quarantined in `table`.
pub(super) fn is_quarantined(
    table: &impl ReadableTable<(u8, u64, &'static str), (u64, &'static str)>,
    kind: u8,
    scope: u64,
    digest: &str,
) -> Result<bool, StoreError> {
    Ok(table.get((kind, scope, digest))?.is_some())
}

impl Store {
    /// Up to `n` objects after `after` (None: from the first; else whether a manifest, its
    /// scope and digest): every blob by (domain, digest), then every manifest by (repository
    /// id, digest); with `repo`, only the blobs it links and its manifests. One short read
    /// transaction.
    pub fn scrub_items(
        &self,
        repo: Option<&str>,
        after: Option<(bool, u64, &str)>,
        n: usize,
    ) -> Result<Vec<ScrubItem>, StoreError> {
        let tx = self.read()?;
        let only = repo.map(|r| find_repo(&tx, r)).transpose()?;
        let blobs = tx.open_table(BLOBS)?;
        let mut out = Vec::new();
        if !matches!(after, Some((true, ..))) {
            let from = match after {
                Some((false, d, g)) => (d, g.to_owned()),
                _ => (0, String::new()),
            };
            let item = |domain: u64, digest: &str, v: (u64, u64, u64)| {
                let blob = BlobInfo {
                    id: v.0,
                    size: v.1,
                    domain,
                };
                ScrubItem::Blob(domain, digest.to_owned(), blob)
            };
            match only {
                Some(r) => {
                    let links = tx.open_table(LINKS)?;
                    let range = links.range((r.id, from.1.as_str())..(r.id + 1, ""))?;
                    for row in range {
                        let (k, _) = row?;
                        let digest = k.value().1;
                        if digest == from.1 && after.is_some() {
                            continue;
                        }
                        if let Some(v) = blobs.get((r.domain, digest))? {
                            out.push(item(r.domain, digest, v.value()));
                        }
                        if out.len() == n {
                            return Ok(out);
                        }
                    }
                }
                None => {
                    for row in blobs.range((from.0, from.1.as_str())..)? {
                        let (k, v) = row?;
                        let (domain, digest) = k.value();
                        if (domain, digest) == (from.0, from.1.as_str()) && after.is_some() {
                            continue;
                        }
                        out.push(item(domain, digest, v.value()));
                        if out.len() == n {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        let (low, high) = match only {
            Some(r) => (r.id, r.id + 1),
            None => (0, u64::MAX),
        };
        let from = match after {
            Some((true, r, d)) => (r, d.to_owned()),
            _ => (low, String::new()),
        };
        let manifests = tx.open_table(MANIFESTS)?;
        for row in manifests.range((from.0, from.1.as_str())..(high, ""))? {
            let (k, _) = row?;
            let (r, digest) = k.value();
            if (r, digest) == (from.0, from.1.as_str()) && !from.1.is_empty() {
                continue;
            }
            out.push(ScrubItem::Manifest(r, digest.to_owned()));
            if out.len() == n {
                break;
            }
        }
        Ok(out)
    }

    /// Verifies manifest `digest` of repository id `repo` as stored now: None if it is gone
    /// (or its key is not loaded), else its record's size and the problem found, if any.
    pub fn scrub_manifest(
        &self,
        repo: u64,
        digest: &str,
    ) -> Result<Option<(u64, Option<String>)>, StoreError> {
        let tx = self.read()?;
        let Some(domain) = repo_domain(&tx, repo)? else {
            return Ok(None);
        };
        let Some(v) = tx.open_table(MANIFESTS)?.get((repo, digest))? else {
            return Ok(None);
        };
        let stored = v.value();
        let problem = match self.verify_manifest_record(domain, repo, digest, stored) {
            Ok(()) => None,
            Err(e @ (StoreError::Integrity(_) | StoreError::Corrupt(_))) => Some(e.to_string()),
            // Its key is not loaded (no master key): not checked, not damage.
            Err(StoreError::Keys(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        Ok(Some((stored.len() as u64, problem)))
    }

    /// Records a damaged blob (`manifest` false, `scope` its domain) or manifest (`scope`
    /// its repository id), durably; false if it was already recorded.
    pub fn quarantine(
        &self,
        manifest: bool,
        scope: u64,
        digest: &str,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let kind = if manifest {
            QUARANTINE_MANIFEST
        } else {
            QUARANTINE_BLOB
        };
        let tx = self.write(true)?;
        let new = {
            let mut table = tx.open_table(QUARANTINE)?;
            let new = !is_quarantined(&table, kind, scope, digest)?;
            if new {
                table.insert((kind, scope, digest), (now(), reason))?;
            }
            new
        };
        if new {
            tx.commit()?;
        }
        Ok(new)
    }

    /// Every quarantined object with the repositories, manifests and tags it breaks: a blob
    /// breaks the manifests listing it and the indexes listing those; a manifest itself and
    /// the indexes listing it.
    pub fn quarantined(&self) -> Result<Vec<BadObject>, StoreError> {
        let tx = self.read()?;
        let repos: Vec<(String, u64, u64)> = tx
            .open_table(REPOS)?
            .iter()?
            .map(|r| r.map(|(k, v)| (k.value().to_owned(), v.value().0, v.value().1)))
            .collect::<Result<_, _>>()?;
        let links = tx.open_table(LINKS)?;
        let refs = tx.open_table(REFS)?;
        let tags = tx.open_table(TAGS)?;
        // Manifests of repository `id` that list `digest` (`kind` REF_BLOB or REF_CHILD).
        let listing = |id: u64, digest: &str, blob: bool| -> Result<Vec<String>, StoreError> {
            let mut out = Vec::new();
            for row in refs.range((id, digest, "")..=(id, digest, "\u{10ffff}"))? {
                let (k, v) = row?;
                if (v.value() & !super::schema::REF_LAZY == REF_BLOB) == blob {
                    out.push(k.value().2.to_owned());
                }
            }
            Ok(out)
        };
        let mut out = Vec::new();
        for row in tx.open_table(QUARANTINE)?.iter()? {
            let (k, v) = row?;
            let (kind, scope, digest) = k.value();
            let (found, reason) = v.value();
            let manifest = kind == QUARANTINE_MANIFEST;
            let mut broken = Vec::new();
            for (name, id, domain) in &repos {
                let hit = if manifest {
                    *id == scope
                } else {
                    *domain == scope && links.get((*id, digest))?.is_some()
                };
                if !hit {
                    continue;
                }
                let mut manifests: BTreeSet<String> = if manifest {
                    BTreeSet::from([digest.to_owned()])
                } else {
                    listing(*id, digest, true)?.into_iter().collect()
                };
                for m in manifests.clone() {
                    manifests.extend(listing(*id, &m, false)?);
                }
                let mut tagged = Vec::new();
                for t in tags.range((*id, "")..(*id + 1, ""))? {
                    let (tk, tv) = t?;
                    if manifests.contains(tv.value()) {
                        tagged.push(tk.value().1.to_owned());
                    }
                }
                broken.push((name.clone(), manifests.into_iter().collect(), tagged));
            }
            out.push(BadObject {
                manifest,
                digest: digest.to_owned(),
                found,
                reason: reason.to_owned(),
                repositories: broken,
            });
        }
        Ok(out)
    }

    /// The scrub's saved state, if any.
    pub fn scrub_state(&self) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.read()?;
        let state = tx
            .open_table(SCRUB)?
            .get("state")?
            .map(|v| v.value().to_vec());
        Ok(state)
    }

    /// Saves the scrub's state; `durable` for the checkpoints a restart resumes from (the
    /// others ride on the next durable commit of anything).
    pub fn save_scrub_state(&self, state: &[u8], durable: bool) -> Result<(), StoreError> {
        let tx = self.write(durable)?;
        tx.open_table(SCRUB)?.insert("state", state)?;
        tx.commit()
    }

    /// redb's own integrity check of the file (page checksums, the allocator state; it
    /// repairs what it can): needs the database to itself, so only on a stopped store. True
    /// if the file was consistent.
    pub fn check_file(&self) -> Result<bool, StoreError> {
        self.handle.check_integrity()
    }
}

/// The domain of repository id `id`, if it exists (a walk of the repositories: few).
fn repo_domain(tx: &redb::ReadTransaction, id: u64) -> Result<Option<u64>, StoreError> {
    for row in tx.open_table(REPOS)?.iter()? {
        let (_, v) = row?;
        if v.value().0 == id {
            return Ok(Some(v.value().1));
        }
    }
    Ok(None)
}
