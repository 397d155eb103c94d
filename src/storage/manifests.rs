//! Manifests, tags and referrers of each repository.

use super::blobs::domain_of;
use super::repos::{ensure_repo, repo_id, repo_id_w};
use super::schema::{BLOBS, LINKS, MANIFESTS, REFERRERS, TAGS};
use super::{page, Store, StoreError};
use crate::digest::Digest;
use redb::{ReadableTable, WriteTransaction};
use std::ops::Bound;

/// A manifest as stored.
#[derive(Debug)]
pub struct StoredManifest {
    /// Its digest.
    pub digest: String,
    /// The media type it was pushed with.
    pub media_type: String,
    /// The exact bytes pushed.
    pub body: Vec<u8>,
}

/// A validated manifest to store, with what it requires to exist.
pub struct NewManifest<'a> {
    /// Its digest (verified by the caller).
    pub digest: &'a Digest,
    /// Media type to serve it with.
    pub media_type: &'a str,
    /// The exact bytes.
    pub body: &'a [u8],
    /// Blobs (digest, size) that must be linked into the repository.
    pub blobs: Vec<(&'a Digest, u64)>,
    /// Manifests (digest, size) that must exist in the repository.
    pub children: Vec<(&'a Digest, u64)>,
    /// Tags to point at it.
    pub tags: &'a [String],
    /// Its subject and its descriptor for the referrers API, if it has a subject.
    pub referrer: Option<(&'a Digest, Vec<u8>)>,
}

// Value layout: version 1, u16 media type length, media type, u8 subject length, subject, body.
fn encode(media_type: &str, subject: Option<&Digest>, body: &[u8]) -> Vec<u8> {
    let subject = subject.map_or("", |d| d.as_str());
    let mut v = Vec::with_capacity(4 + media_type.len() + subject.len() + body.len());
    v.push(1);
    v.extend_from_slice(&(media_type.len() as u16).to_le_bytes());
    v.extend_from_slice(media_type.as_bytes());
    v.push(subject.len() as u8);
    v.extend_from_slice(subject.as_bytes());
    v.extend_from_slice(body);
    v
}

/// (media type, subject, body) of a stored value.
fn decode(v: &[u8]) -> Result<(&str, &str, &[u8]), StoreError> {
    let bad = || StoreError::Corrupt("undecodable manifest record".into());
    if v.first() != Some(&1) || v.len() < 4 {
        return Err(bad());
    }
    let mt_len = usize::from(u16::from_le_bytes([v[1], v[2]]));
    let mt_end = 3 + mt_len;
    let subj_len = usize::from(*v.get(mt_end).ok_or_else(bad)?);
    let subj_end = mt_end + 1 + subj_len;
    if v.len() < subj_end {
        return Err(bad());
    }
    let mt = std::str::from_utf8(&v[3..mt_end]).map_err(|_| bad())?;
    let subj = std::str::from_utf8(&v[mt_end + 1..subj_end]).map_err(|_| bad())?;
    Ok((mt, subj, &v[subj_end..]))
}

impl Store {
    /// Stores a manifest in `repo` (created if new) after checking, in the same transaction,
    /// that everything it references is there.
    pub fn manifest_put(&self, repo: &str, m: &NewManifest) -> Result<(), StoreError> {
        let domain = domain_of(repo);
        let tx = self.write(true)?;
        {
            let repo = ensure_repo(&tx, repo)?;
            check_references(&tx, repo, domain, m)?;
            let subject = m.referrer.as_ref().map(|(s, _)| *s);
            let value = encode(m.media_type, subject, m.body);
            tx.open_table(MANIFESTS)?
                .insert((repo, m.digest.as_str()), value.as_slice())?;
            let mut tags = tx.open_table(TAGS)?;
            for tag in m.tags {
                tags.insert((repo, tag.as_str()), m.digest.as_str())?;
            }
            if let Some((subject, descriptor)) = &m.referrer {
                tx.open_table(REFERRERS)?.insert(
                    (repo, subject.as_str(), m.digest.as_str()),
                    descriptor.as_slice(),
                )?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The manifest `digest` of `repo`.
    pub fn manifest_by_digest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<StoredManifest, StoreError> {
        let tx = self.read()?;
        let repo = repo_id(&tx, repo)?;
        let table = tx.open_table(MANIFESTS)?;
        let row = table
            .get((repo, digest.as_str()))?
            .ok_or(StoreError::ManifestUnknown)?;
        let (media_type, _, body) = decode(row.value())?;
        Ok(StoredManifest {
            digest: digest.to_string(),
            media_type: media_type.to_owned(),
            body: body.to_vec(),
        })
    }

    /// The manifest tagged `tag` in `repo`.
    pub fn manifest_by_tag(&self, repo: &str, tag: &str) -> Result<StoredManifest, StoreError> {
        let tx = self.read()?;
        let repo = repo_id(&tx, repo)?;
        let tags = tx.open_table(TAGS)?;
        let digest = tags.get((repo, tag))?.ok_or(StoreError::ManifestUnknown)?;
        let digest = digest.value().to_owned();
        let table = tx.open_table(MANIFESTS)?;
        let row = table.get((repo, digest.as_str()))?;
        let row = row
            .ok_or_else(|| StoreError::Corrupt(format!("tag {tag} points at missing {digest}")))?;
        let (media_type, _, body) = decode(row.value())?;
        Ok(StoredManifest {
            media_type: media_type.to_owned(),
            body: body.to_vec(),
            digest,
        })
    }

    /// Deletes manifest `digest` from `repo`, with every tag pointing at it and its referrer entry.
    pub fn manifest_delete(&self, repo: &str, digest: &Digest) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        {
            let repo = repo_id_w(&tx, repo)?;
            let mut manifests = tx.open_table(MANIFESTS)?;
            let removed = manifests.remove((repo, digest.as_str()))?;
            let value = removed.ok_or(StoreError::ManifestUnknown)?;
            let subject = decode(value.value())?.1.to_owned();
            drop(value);
            drop(manifests);
            if !subject.is_empty() {
                tx.open_table(REFERRERS)?
                    .remove((repo, subject.as_str(), digest.as_str()))?;
            }
            let lower = Bound::Included((repo, ""));
            let upper = Bound::Excluded((repo + 1, ""));
            tx.open_table(TAGS)?
                .retain_in::<(u64, &str), _>((lower, upper), |_, target| {
                    target != digest.as_str()
                })?;
        }
        tx.commit()?;
        Ok(())
    }

    /// Removes tag `tag` from `repo`; the manifest stays.
    pub fn tag_delete(&self, repo: &str, tag: &str) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        {
            let repo = repo_id_w(&tx, repo)?;
            if tx.open_table(TAGS)?.remove((repo, tag))?.is_none() {
                return Err(StoreError::ManifestUnknown);
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// Tags of `repo` after `last`, sorted, at most `n`; and whether more follow.
    pub fn tags(
        &self,
        repo: &str,
        last: Option<&str>,
        n: usize,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let tx = self.read()?;
        let repo = repo_id(&tx, repo)?;
        let tags = tx.open_table(TAGS)?;
        let lower = last.map_or(Bound::Included((repo, "")), |l| Bound::Excluded((repo, l)));
        let range = tags.range::<(u64, &str)>((lower, Bound::Excluded((repo + 1, ""))))?;
        page(range.map(|r| Ok(r?.0.value().1.to_owned())), n)
    }

    /// Descriptors (JSON) of the manifests in `repo` whose subject is `subject`.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.read()?;
        let repo = repo_id(&tx, repo)?;
        let table = tx.open_table(REFERRERS)?;
        let s = subject.as_str();
        let mut out = Vec::new();
        for row in table.range::<(u64, &str, &str)>((repo, s, "")..)? {
            let (k, v) = row?;
            if k.value().0 != repo || k.value().1 != s {
                break;
            }
            out.push(v.value().to_vec());
        }
        Ok(out)
    }
}

fn check_references(
    tx: &WriteTransaction,
    repo: u64,
    domain: u64,
    m: &NewManifest,
) -> Result<(), StoreError> {
    let links = tx.open_table(LINKS)?;
    let blobs = tx.open_table(BLOBS)?;
    for (digest, size) in &m.blobs {
        if links.get((repo, digest.as_str()))?.is_none() {
            return Err(StoreError::ManifestBlobUnknown(digest.to_string()));
        }
        let stored = blobs.get((domain, digest.as_str()))?.map(|v| v.value().1);
        if stored != Some(*size) {
            return Err(StoreError::ManifestRefMismatch(format!(
                "descriptor of {digest} says {size} bytes, the blob has {}",
                stored.unwrap_or(0)
            )));
        }
    }
    let manifests = tx.open_table(MANIFESTS)?;
    for (digest, size) in &m.children {
        let row = manifests.get((repo, digest.as_str()))?;
        let row = row.ok_or_else(|| StoreError::ManifestBlobUnknown(digest.to_string()))?;
        let len = decode(row.value())?.2.len() as u64;
        if len != *size {
            return Err(StoreError::ManifestRefMismatch(format!(
                "descriptor of {digest} says {size} bytes, the manifest has {len}"
            )));
        }
    }
    Ok(())
}
