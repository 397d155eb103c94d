//! Manifests, tags and referrers of each repository.

use super::domains::Domain;
use super::repos::{ensure_repo, find_repo, find_repo_w, Repo};
use super::schema::{
    BLOBS, LINKS, MANIFESTS, PUSHED, QUARANTINE, QUARANTINE_MANIFEST, REFERRERS, REFS, REF_BLOB,
    REF_CHILD, REF_LAZY, TAGS,
};
use super::{page, Store, StoreError};
use crate::audit::Change;
use crate::crypto::Binding;
use crate::digest::Digest;
use redb::{ReadableTable, WriteTransaction};
use std::borrow::Cow;
use std::ops::Bound;

/// First byte of a record sealed with its domain's key (a plaintext manifest record starts
/// with its version, 1; a plaintext referrer descriptor with `{`).
const SEALED: u8 = 2;

/// `plain` as stored in a domain with key `key`: sealed and bound to `at`, or as it is.
fn seal_record(key: Option<&Domain>, at: &Binding, plain: Vec<u8>) -> Vec<u8> {
    match key {
        None => plain,
        Some(d) => {
            let mut v = Vec::with_capacity(1 + plain.len() + crate::crypto::SEAL_OVERHEAD);
            v.push(SEALED);
            d.key.seal(at, &plain, &mut v);
            v
        }
    }
}

/// The plaintext of a stored record of a domain with key `key`; `what` names it in errors.
/// In an encrypted domain a record that is not sealed, or does not open, is refused.
fn open_record<'a>(
    key: Option<&Domain>,
    at: &Binding,
    stored: &'a [u8],
    what: &dyn Fn() -> String,
) -> Result<Cow<'a, [u8]>, StoreError> {
    let Some(d) = key else {
        return Ok(Cow::Borrowed(stored));
    };
    let failed = || {
        StoreError::Integrity(format!(
            "{} does not open with key {:?}: it was altered or moved",
            what(),
            d.name
        ))
    };
    let sealed = stored.strip_prefix(&[SEALED]).ok_or_else(failed)?;
    let mut buf = sealed.to_vec();
    let n = d.key.open(at, &mut buf).map_err(|_| failed())?.len();
    buf.truncate(n);
    Ok(Cow::Owned(buf))
}

fn manifest_at(repo: u64, digest: &str) -> Binding {
    Binding::record(b'm', repo, &[digest])
}

fn referrer_at(repo: u64, subject: &str, digest: &str) -> Binding {
    Binding::record(b'r', repo, &[subject, digest])
}

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
    /// Store without checking references (a pull-through cache fetches them on demand).
    pub lazy: bool,
    /// For a client's push: the immutable-tag rule (its description) that holds tag `t`, if
    /// any. Such a tag may be set, or set again to the same manifest, but never moved.
    pub immutable: Option<&'a ImmutableRule<'a>>,
}

/// The immutable-tag rule (described) that holds a tag, if any.
pub type ImmutableRule<'a> = dyn Fn(&str) -> Option<String> + 'a;

impl<'a> NewManifest<'a> {
    /// What storing validated manifest `m` (bytes `body`, digest `digest`) under `tags`
    /// requires; `lazy` skips the reference checks.
    pub fn of(
        m: &'a crate::registry::manifest::Manifest,
        digest: &'a Digest,
        body: &'a [u8],
        tags: &'a [String],
        lazy: bool,
    ) -> NewManifest<'a> {
        NewManifest {
            digest,
            media_type: &m.media_type,
            body,
            blobs: m.blobs.iter().map(|d| (&d.digest, d.size)).collect(),
            children: m.children.iter().map(|d| (&d.digest, d.size)).collect(),
            tags,
            referrer: m
                .subject
                .as_ref()
                .map(|s| (s, m.referrer_descriptor(digest, body.len()))),
            lazy,
            immutable: None,
        }
    }
}

// Value layout: version 1, u16 media type length, media type, u8 subject length, subject, body.
// A field too long for its length prefix is refused, never wrapped (the handlers bound media
// types to 255 bytes and digests are at most 135).
fn encode(media_type: &str, subject: Option<&Digest>, body: &[u8]) -> Result<Vec<u8>, StoreError> {
    let subject = subject.map_or("", |d| d.as_str());
    let too_long = |what: &str, n: usize| {
        StoreError::ManifestInvalid(format!("manifest {what} of {n} bytes is too long to store"))
    };
    let mt_len =
        u16::try_from(media_type.len()).map_err(|_| too_long("media type", media_type.len()))?;
    let subj_len = u8::try_from(subject.len()).map_err(|_| too_long("subject", subject.len()))?;
    let mut v = Vec::with_capacity(4 + media_type.len() + subject.len() + body.len());
    v.push(1);
    v.extend_from_slice(&mt_len.to_le_bytes());
    v.extend_from_slice(media_type.as_bytes());
    v.push(subj_len);
    v.extend_from_slice(subject.as_bytes());
    v.extend_from_slice(body);
    Ok(v)
}

/// What a decoded record lists: (digest, `REF_BLOB` or `REF_CHILD`) of its blobs and, for an
/// index, its manifests.
fn listed(media_type: &str, body: &[u8]) -> Result<Vec<(String, u8)>, StoreError> {
    let m = crate::registry::manifest::Manifest::parse(Some(media_type), body)
        .map_err(|e| StoreError::Corrupt(format!("{e:?}")))?;
    let blobs = m.blobs.iter().map(|d| (d.digest.to_string(), REF_BLOB));
    let children = m.children.iter().map(|d| (d.digest.to_string(), REF_CHILD));
    Ok(blobs.chain(children).collect())
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
        let domain = self.domain_for(repo)?;
        let key = self.domain_key(domain)?;
        let key = key.as_deref();
        // Manifests are bounded by maxManifestSize, not small: they count against the reserve.
        self.check_space(super::stored_size(m.body.len() as u64))?;
        let tx = self.write_grouped()?;
        {
            let name = repo;
            let before = self.quota_before(&tx, name)?;
            let repo = ensure_repo(&tx, repo, domain)?;
            if !m.lazy {
                check_references(&tx, repo, key, m)?;
            }
            let subject = m.referrer.as_ref().map(|(s, _)| *s);
            let digest = m.digest.as_str();
            let value = encode(m.media_type, subject, m.body)?;
            let value = seal_record(key, &manifest_at(repo.id, digest), value);
            // A push of a quarantined manifest's content replaces the damaged record.
            tx.open_table(QUARANTINE)?
                .remove((QUARANTINE_MANIFEST, repo.id, digest))?;
            let old = tx
                .open_table(MANIFESTS)?
                .insert((repo.id, digest), value.as_slice())?
                .map_or(0, |v| v.value().len());
            self.quota_manifest(&tx, name, value.len() as i128 - old as i128)?;
            self.quota_enforce(&tx, &before)?;
            let mut push = Change::in_repo("manifest.push", name)
                .with("digest", digest)
                .with("mediaType", m.media_type)
                .with("size", m.body.len());
            if let Some(tag) = m.tags.first() {
                push = push.with("tag", tag.as_str());
            }
            if m.tags.len() > 1 {
                // One push event per tag (`?tag=a&tag=b`), as a push of each would send.
                push = push.with("tags", m.tags.to_vec());
            }
            tx.audit(push);
            let mut tags = tx.open_table(TAGS)?;
            for tag in m.tags {
                let old = tags.insert((repo.id, tag.as_str()), digest)?;
                let old = old.map(|v| v.value().to_owned());
                match &old {
                    None => tx.audit(
                        Change::in_repo("tag.set", name)
                            .with("tag", tag.as_str())
                            .with("digest", digest),
                    ),
                    Some(from) if from != digest => tx.audit(
                        Change::in_repo("tag.move", name)
                            .with("tag", tag.as_str())
                            .with("from", from.as_str())
                            .with("to", digest),
                    ),
                    Some(_) => {}
                }
                if let (Some(old), Some(rule)) = (old, m.immutable.and_then(|f| f(tag))) {
                    if old != digest {
                        return Err(StoreError::TagImmutable {
                            tag: tag.clone(),
                            current: old,
                            rule,
                        });
                    }
                }
            }
            drop(tags);
            let lazy = if m.lazy { REF_LAZY } else { 0 };
            let mut refs = tx.open_table(REFS)?;
            for (d, _) in &m.blobs {
                refs.insert((repo.id, d.as_str(), digest), REF_BLOB | lazy)?;
            }
            for (d, _) in &m.children {
                refs.insert((repo.id, d.as_str(), digest), REF_CHILD | lazy)?;
            }
            if tx.open_table(PUSHED)?.get((repo.id, digest))?.is_none() {
                let seq = super::next_id(&tx, "next_push")?;
                tx.open_table(PUSHED)?
                    .insert((repo.id, digest), (super::now(), seq))?;
            }
            if let Some((subject, descriptor)) = &m.referrer {
                let s = subject.as_str();
                let value = seal_record(key, &referrer_at(repo.id, s, digest), descriptor.clone());
                tx.open_table(REFERRERS)?
                    .insert((repo.id, s, digest), value.as_slice())?;
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
        let repo = find_repo(&tx, repo)?;
        let table = tx.open_table(MANIFESTS)?;
        let row = table
            .get((repo.id, digest.as_str()))?
            .ok_or(StoreError::ManifestUnknown)?;
        self.stored_manifest(repo, digest.as_str(), row.value())
    }

    /// The manifest tagged `tag` in `repo`.
    pub fn manifest_by_tag(&self, repo: &str, tag: &str) -> Result<StoredManifest, StoreError> {
        let tx = self.read()?;
        let repo = find_repo(&tx, repo)?;
        let tags = tx.open_table(TAGS)?;
        let digest = tags
            .get((repo.id, tag))?
            .ok_or(StoreError::ManifestUnknown)?;
        let digest = digest.value().to_owned();
        let table = tx.open_table(MANIFESTS)?;
        let row = table.get((repo.id, digest.as_str()))?;
        let row = row
            .ok_or_else(|| StoreError::Corrupt(format!("tag {tag} points at missing {digest}")))?;
        self.stored_manifest(repo, &digest, row.value())
    }

    /// A manifest from its stored record, opened with its repository's key.
    fn stored_manifest(
        &self,
        repo: Repo,
        digest: &str,
        stored: &[u8],
    ) -> Result<StoredManifest, StoreError> {
        let key = self.domain_key(repo.domain)?;
        let record = open_manifest(key.as_deref(), repo.id, digest, stored)?;
        let (media_type, _, body) = decode(&record)?;
        // A manifest is small: checked on every read, so rotten bytes are never served
        // under the digest they no longer have (a sealed record is checked by its tag too).
        verify_body(digest, body)?;
        Ok(StoredManifest {
            digest: digest.to_owned(),
            media_type: media_type.to_owned(),
            body: body.to_vec(),
        })
    }

    /// Deletes manifest `digest` from `repo`, with every tag pointing at it and its referrer
    /// entry; returns the tags it removed.
    pub fn manifest_delete(&self, repo: &str, digest: &Digest) -> Result<Vec<String>, StoreError> {
        let tx = self.write(true)?;
        let tags = {
            let named = find_repo_w(&tx, repo)?;
            self.remove_manifest(&tx, (repo, named), digest.as_str(), None)?
                .ok_or(StoreError::ManifestUnknown)?
        };
        tx.audit(
            Change::in_repo("manifest.delete", repo)
                .with("digest", digest.as_str())
                .with("tags", tags.clone()),
        );
        tx.commit()?;
        self.space_freed();
        Ok(tags)
    }

    /// Removes manifest `digest` of `repo` within `tx`: its record, every tag pointing at it
    /// (`tags`, when the caller knows them; else found by a walk of the repository's tags),
    /// its referrer entry, its references and push time. Returns the tags removed; None if
    /// there was no such manifest.
    pub(super) fn remove_manifest(
        &self,
        tx: &WriteTransaction,
        (name, repo): (&str, Repo),
        digest: &str,
        tags: Option<Vec<String>>,
    ) -> Result<Option<Vec<String>>, StoreError> {
        let key = self.domain_key(repo.domain)?;
        let mut manifests = tx.open_table(MANIFESTS)?;
        let Some(value) = manifests.remove((repo.id, digest))? else {
            return Ok(None);
        };
        tx.open_table(QUARANTINE)?
            .remove((QUARANTINE_MANIFEST, repo.id, digest))?;
        self.quota_manifest(tx, name, -(value.value().len() as i128))?;
        // A record that no longer opens is still deleted; its referrer entry, which it names,
        // cannot be found and stays, and its references are found the slow way.
        let record = open_manifest(key.as_deref(), repo.id, digest, value.value())
            .and_then(|r| {
                let (media_type, subject, body) = decode(&r)?;
                Ok((subject.to_owned(), listed(media_type, body).ok()))
            })
            .ok();
        drop(value);
        drop(manifests);
        let (subject, targets) = record.unwrap_or_default();
        if !subject.is_empty() {
            tx.open_table(REFERRERS)?
                .remove((repo.id, subject.as_str(), digest))?;
        }
        let id = repo.id;
        let mut tag_table = tx.open_table(TAGS)?;
        let tags = match tags {
            Some(tags) => {
                for t in &tags {
                    tag_table.remove((id, t.as_str()))?;
                }
                tags
            }
            None => {
                let mut removed = Vec::new();
                tag_table.retain_in::<(u64, &str), _>((id, "")..(id + 1, ""), |k, target| {
                    let keep = target != digest;
                    if !keep {
                        removed.push(k.1.to_owned());
                    }
                    keep
                })?;
                removed
            }
        };
        drop(tag_table);
        let mut refs = tx.open_table(REFS)?;
        match targets {
            Some(targets) => {
                for (t, _) in &targets {
                    refs.remove((id, t.as_str(), digest))?;
                }
            }
            None => refs
                .retain_in::<(u64, &str, &str), _>((id, "", "")..(id + 1, "", ""), |k, _| {
                    k.2 != digest
                })?,
        }
        tx.open_table(PUSHED)?.remove((id, digest))?;
        Ok(Some(tags))
    }

    /// Removes tag `tag` from `repo`; the manifest stays.
    pub fn tag_delete(&self, repo: &str, tag: &str) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        {
            let id = find_repo_w(&tx, repo)?.id;
            let digest = match tx.open_table(TAGS)?.remove((id, tag))? {
                None => return Err(StoreError::ManifestUnknown),
                Some(d) => d.value().to_owned(),
            };
            tx.audit(
                Change::in_repo("tag.delete", repo)
                    .with("tag", tag)
                    .with("digest", digest),
            );
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
        let repo = find_repo(&tx, repo)?.id;
        let tags = tx.open_table(TAGS)?;
        let lower = last.map_or(Bound::Included((repo, "")), |l| Bound::Excluded((repo, l)));
        let range = tags.range::<(u64, &str)>((lower, Bound::Excluded((repo + 1, ""))))?;
        page(range.map(|r| Ok(r?.0.value().1.to_owned())), n)
    }

    /// Descriptors (JSON) of the manifests in `repo` whose subject is `subject`.
    pub fn referrers(&self, repo: &str, subject: &Digest) -> Result<Vec<Vec<u8>>, StoreError> {
        let tx = self.read()?;
        let repo = find_repo(&tx, repo)?;
        let key = self.domain_key(repo.domain)?;
        let table = tx.open_table(REFERRERS)?;
        let s = subject.as_str();
        let mut out = Vec::new();
        for row in table.range::<(u64, &str, &str)>((repo.id, s, "")..)? {
            let (k, v) = row?;
            let (r, subject, digest) = k.value();
            if r != repo.id || subject != s {
                break;
            }
            let what = || format!("the referrer {digest} of {s}");
            let at = referrer_at(repo.id, s, digest);
            out.push(open_record(key.as_deref(), &at, v.value(), &what)?.into_owned());
        }
        Ok(out)
    }
}

impl Store {
    /// Records, within `tx`, the references and a push time of every stored manifest: the
    /// latest link time of the blobs it lists (its push came right after their upload), else
    /// now; pushes are numbered in that order. The schema 3 migration. Returns how many manifests. A manifest whose key is missing
    /// stops it (the store cannot be used without its keys anyway); one that no longer opens
    /// or parses is logged and gets no references.
    pub(super) fn build_references(&self, tx: &WriteTransaction) -> Result<u64, StoreError> {
        let mut repos = std::collections::HashMap::new();
        for row in tx.open_table(super::schema::REPOS)?.iter()? {
            let (name, v) = row?;
            let (id, domain) = v.value();
            repos.insert(id, (name.value().to_owned(), domain));
        }
        let now = super::now();
        let mut rows = Vec::new();
        for row in tx.open_table(MANIFESTS)?.iter()? {
            let (k, v) = row?;
            let (repo, digest) = k.value();
            let Some((name, domain)) = repos.get(&repo) else {
                continue;
            };
            let key = self.domain_key(*domain)?;
            let parsed = open_manifest(key.as_deref(), repo, digest, v.value()).and_then(|r| {
                let (media_type, _, body) = decode(&r)?;
                listed(media_type, body)
            });
            let targets = parsed.unwrap_or_else(|e| {
                log::warn!("manifest {digest} of {name}: {e}; its references are not known");
                Vec::new()
            });
            rows.push((0, repo, digest.to_owned(), targets));
        }
        {
            let links = tx.open_table(LINKS)?;
            for (at, repo, _, targets) in &mut rows {
                for (t, _) in targets.iter() {
                    if let Some(v) = links.get((*repo, t.as_str()))? {
                        *at = (*at).max(v.value().1);
                    }
                }
                if *at == 0 {
                    *at = now;
                }
            }
        }
        rows.sort();
        let mut refs = tx.open_table(REFS)?;
        for (at, repo, digest, targets) in &rows {
            for (t, kind) in targets {
                // Lazy: a pull-through cache's manifest may lack what it lists.
                refs.insert((*repo, t.as_str(), digest.as_str()), kind | REF_LAZY)?;
            }
            let seq = super::next_id(tx, "next_push")?;
            tx.open_table(PUSHED)?
                .insert((*repo, digest.as_str()), (*at, seq))?;
        }
        Ok(rows.len() as u64)
    }
}

/// Re-seals, within `tx`, every manifest and referrer entry of repository id `repo` from
/// key `old` to key `new` (either None: plaintext); returns how many.
pub(super) fn reseal_records(
    tx: &WriteTransaction,
    repo: u64,
    old: Option<&Domain>,
    new: Option<&Domain>,
) -> Result<u64, StoreError> {
    let mut n = 0;
    let mut manifests = tx.open_table(MANIFESTS)?;
    let mut rows = Vec::new();
    for row in manifests.range::<(u64, &str)>((repo, "")..(repo + 1, ""))? {
        let (k, v) = row?;
        let digest = k.value().1.to_owned();
        let plain = open_manifest(old, repo, &digest, v.value())?.into_owned();
        rows.push((digest, plain));
    }
    for (digest, plain) in rows {
        let value = seal_record(new, &manifest_at(repo, &digest), plain);
        manifests.insert((repo, digest.as_str()), value.as_slice())?;
        n += 1;
    }
    let mut referrers = tx.open_table(REFERRERS)?;
    let mut rows = Vec::new();
    for row in referrers.range::<(u64, &str, &str)>((repo, "", "")..(repo + 1, "", ""))? {
        let (k, v) = row?;
        let (_, subject, digest) = k.value();
        let what = || format!("the referrer {digest} of {subject}");
        let at = referrer_at(repo, subject, digest);
        let plain = open_record(old, &at, v.value(), &what)?.into_owned();
        rows.push((subject.to_owned(), digest.to_owned(), plain));
    }
    for (subject, digest, plain) in rows {
        let value = seal_record(new, &referrer_at(repo, &subject, &digest), plain);
        referrers.insert((repo, subject.as_str(), digest.as_str()), value.as_slice())?;
        n += 1;
    }
    Ok(n)
}

/// The plaintext record of manifest `digest` of repository id `repo`.
fn open_manifest<'a>(
    key: Option<&Domain>,
    repo: u64,
    digest: &str,
    stored: &'a [u8],
) -> Result<Cow<'a, [u8]>, StoreError> {
    open_record(key, &manifest_at(repo, digest), stored, &|| {
        format!("manifest {digest}")
    })
}

impl Store {
    /// Adds to `problems` every manifest record in `tx` that does not open with its
    /// repository's key, does not decode, or does not hash to its digest, every tag that
    /// points at no stored manifest, and references and push times out of step with the
    /// manifests; to `dangling`, what a manifest lists that its repository lacks (a client
    /// may delete a blob or manifest that another lists, as with distribution).
    /// `repos` maps repository ids to (name, domain).
    pub(super) fn check_manifests(
        &self,
        tx: &redb::ReadTransaction,
        repos: &std::collections::HashMap<u64, (String, u64)>,
        problems: &mut Vec<String>,
        dangling: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let manifests = tx.open_table(MANIFESTS)?;
        for row in manifests.iter()? {
            let (k, v) = row?;
            let (repo, digest) = k.value();
            let Some((name, domain)) = repos.get(&repo) else {
                problems.push(format!("manifest {digest} in unknown repository {repo}"));
                continue;
            };
            if let Err(e) = self.verify_manifest_record(*domain, repo, digest, v.value()) {
                problems.push(format!("manifest {digest} of {name}: {e}"));
            }
        }
        let name_of = |repo: u64| repos.get(&repo).map_or("an unknown repository", |r| &r.0);
        let links = tx.open_table(LINKS)?;
        for row in tx.open_table(REFS)?.iter()? {
            let (k, v) = row?;
            let (repo, target, digest) = k.value();
            if manifests.get((repo, digest))?.is_none() {
                problems.push(format!(
                    "a reference to {target} by missing manifest {digest} of {}",
                    name_of(repo)
                ));
            }
            let kind = v.value();
            let present = match kind & !REF_LAZY {
                REF_BLOB => links.get((repo, target))?.is_some(),
                _ => manifests.get((repo, target))?.is_some(),
            };
            if !present && kind & REF_LAZY == 0 {
                dangling.push(format!(
                    "manifest {digest} of {} lists {target}, which the repository lacks",
                    name_of(repo)
                ));
            }
        }
        let pushed = tx.open_table(PUSHED)?;
        for row in manifests.iter()? {
            let k = row?.0;
            let (repo, digest) = k.value();
            if pushed.get((repo, digest))?.is_none() {
                problems.push(format!(
                    "manifest {digest} of {} has no push time",
                    name_of(repo)
                ));
            }
        }
        for row in tx.open_table(TAGS)?.iter()? {
            let (k, v) = row?;
            let (repo, tag) = k.value();
            if manifests.get((repo, v.value()))?.is_none() {
                problems.push(format!(
                    "tag {tag} of {} points at missing manifest {}",
                    name_of(repo),
                    v.value()
                ));
            }
        }
        Ok(())
    }
}

impl Store {
    /// Ok if the stored record of manifest `digest` of repository id `repo` (in `domain`)
    /// opens with its key, decodes, and hashes to its digest: what `/admin/check` and the
    /// scrub ask of every manifest.
    pub(super) fn verify_manifest_record(
        &self,
        domain: u64,
        repo: u64,
        digest: &str,
        stored: &[u8],
    ) -> Result<(), StoreError> {
        let key = self.domain_key(domain)?;
        let record = open_manifest(key.as_deref(), repo, digest, stored)?;
        verify_body(digest, decode(&record)?.2)
    }
}

/// Ok if `body` hashes to `digest`, the key it is stored under.
fn verify_body(digest: &str, body: &[u8]) -> Result<(), StoreError> {
    let expected = Digest::parse(digest)
        .map_err(|e| StoreError::Corrupt(format!("manifest stored under {digest:?}: {e}")))?;
    let actual = expected.rehash(body);
    if actual != expected {
        return Err(StoreError::Integrity(format!(
            "manifest {digest}: its stored body hashes to {actual}"
        )));
    }
    Ok(())
}

fn check_references(
    tx: &WriteTransaction,
    repo: Repo,
    key: Option<&Domain>,
    m: &NewManifest,
) -> Result<(), StoreError> {
    let domain = repo.domain;
    let repo = repo.id;
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
        let record = open_manifest(key, repo, digest.as_str(), row.value())?;
        let len = decode(&record)?.2.len() as u64;
        if len != *size {
            return Err(StoreError::ManifestRefMismatch(format!(
                "descriptor of {digest} says {size} bytes, the manifest has {len}"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::test_store as store;

    #[test]
    fn a_field_too_long_for_its_prefix_is_refused_not_wrapped() {
        let long = "a/".to_owned() + &"b".repeat(70_000);
        assert!(matches!(
            encode(&long, None, b"{}"),
            Err(StoreError::ManifestInvalid(_))
        ));
        let v = encode("a/b", None, b"{}").unwrap();
        assert_eq!(decode(&v).unwrap(), ("a/b", "", &b"{}"[..]));
    }

    #[test]
    fn the_check_decodes_and_hashes_every_manifest_record() {
        let dir = std::env::temp_dir().join(format!("outpost-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = store(&dir);
        let body = br#"{"schemaVersion":2,"manifests":[]}"#;
        let digest = Digest::sha256_of(body);
        let tags = ["v1".to_owned()];
        let m = NewManifest {
            digest: &digest,
            media_type: "application/vnd.oci.image.index.v1+json",
            body,
            blobs: Vec::new(),
            children: Vec::new(),
            tags: &tags,
            referrer: None,
            lazy: false,
            immutable: None,
        };
        s.manifest_put("r", &m).unwrap();
        assert_eq!(s.check().unwrap(), Vec::<String>::new());
        // Rot: the body changes under its digest, then the record stops decoding.
        for value in [
            encode(
                m.media_type,
                None,
                br#"{"schemaVersion":2,"manifests":[ ]}"#,
            )
            .unwrap(),
            vec![1, 0xff, 0xff, b'a'],
        ] {
            let tx = s.write(true).unwrap();
            let id = find_repo_w(&tx, "r").unwrap().id;
            tx.open_table(MANIFESTS)
                .unwrap()
                .insert((id, digest.as_str()), value.as_slice())
                .unwrap();
            tx.commit().unwrap();
            let mut problems = s.check().unwrap();
            // A record resized behind the store's back also unbalances the quota counters.
            let recount = problems.iter().position(|p| p.starts_with("quota "));
            assert!(recount.is_some(), "{problems:?}");
            problems.remove(recount.unwrap());
            // Put the counters right again for the next round.
            let tx = s.write(true).unwrap();
            s.quota_rebuild(&tx).unwrap();
            tx.commit().unwrap();
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains(digest.as_str()), "{problems:?}");
        }
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
