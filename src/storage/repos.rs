//! Repositories: name -> id and encryption domain, created on first push; the catalog.

use super::domains::PLAINTEXT;
use super::schema::{BLOBS, LINKS, MANIFESTS, PUSHED, REFERRERS, REFS, REPOS, TAGS};
use super::{next_id, page, Store, StoreError};
use crate::audit::Change;
use crate::crypto::Algorithm;
use redb::{ReadTransaction, ReadableTable, ReadableTableMetadata, WriteTransaction};
use std::ops::Bound;

/// A repository as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Repo {
    /// Its id: the first half of its link, manifest and tag keys.
    pub id: u64,
    /// The encryption domain its content is stored in (0: plaintext).
    pub domain: u64,
}

fn lookup(
    repos: &impl ReadableTable<&'static str, (u64, u64)>,
    name: &str,
) -> Result<Option<Repo>, StoreError> {
    Ok(repos
        .get(name)?
        .map(|v| v.value())
        .map(|(id, domain)| Repo { id, domain }))
}

/// Repository `name` as seen by `tx`.
pub(super) fn find_repo(tx: &ReadTransaction, name: &str) -> Result<Repo, StoreError> {
    lookup(&tx.open_table(REPOS)?, name)?.ok_or(StoreError::RepoUnknown)
}

/// Repository `name` within a write.
pub(super) fn find_repo_w(tx: &WriteTransaction, name: &str) -> Result<Repo, StoreError> {
    lookup(&tx.open_table(REPOS)?, name)?.ok_or(StoreError::RepoUnknown)
}

/// Repository `name`, created in `domain` if new (repositories are created on first push).
/// If it exists in another domain, its key changed since the caller looked: refused.
pub(super) fn ensure_repo(
    tx: &WriteTransaction,
    name: &str,
    domain: u64,
) -> Result<Repo, StoreError> {
    let existing = lookup(&tx.open_table(REPOS)?, name)?;
    match existing {
        Some(r) if r.domain == domain => Ok(r),
        Some(_) => Err(StoreError::DomainChanged(name.to_owned())),
        None => {
            let id = next_id(tx, "next_repo_id")?;
            tx.open_table(REPOS)?.insert(name, (id, domain))?;
            Ok(Repo { id, domain })
        }
    }
}

impl Store {
    /// Repository names after `last`, sorted, at most `n`; and whether more follow.
    pub fn catalog(
        &self,
        last: Option<&str>,
        n: usize,
        visible: &dyn Fn(&str) -> bool,
    ) -> Result<(Vec<String>, bool), StoreError> {
        let tx = self.read()?;
        let repos = tx.open_table(REPOS)?;
        let lower = last.map_or(Bound::Unbounded, Bound::Excluded);
        let range = repos.range::<&str>((lower, Bound::Unbounded))?;
        let names = range
            .map(|r| Ok(r?.0.value().to_owned()))
            .filter(|r: &Result<String, StoreError>| r.as_ref().map_or(true, |n| visible(n)));
        page(names, n)
    }
}

/// What `repo_delete` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deleted {
    /// The repository's key (None: plaintext).
    pub key: Option<String>,
    /// Blobs whose last link went with the repository (their data was deleted).
    pub blobs_freed: u64,
    /// The key was destroyed (crypto-erase).
    pub erased: bool,
}

impl Store {
    /// Creates repository `name` with data key `key` (created if new; its algorithm given or
    /// the default), or plaintext; refused if it exists.
    pub fn repo_create(
        &self,
        name: &str,
        key: Option<(&str, Option<Algorithm>)>,
    ) -> Result<(), StoreError> {
        let exists = |r: Repo| StoreError::RepoExists(self.key_name(r.domain));
        if let Some(r) = lookup(&self.read()?.open_table(REPOS)?, name)? {
            return Err(exists(r));
        }
        let domain = match key {
            None => PLAINTEXT,
            Some((k, alg)) => self.ensure_key(k, alg)?,
        };
        let tx = self.write(true)?;
        if let Some(r) = lookup(&tx.open_table(REPOS)?, name)? {
            return Err(exists(r));
        }
        ensure_repo(&tx, name, domain)?;
        let mut change = Change::in_repo("repository.create", name);
        if let Some((k, _)) = key {
            change = change.with("key", k);
        }
        tx.audit(change);
        tx.commit()?;
        Ok(())
    }

    /// Deletes repository `name` with its manifests, tags, links and upload sessions; blobs
    /// no other repository links go too. With `erase`, the repository's data key is
    /// destroyed as well, in the same transaction: refused for a plaintext repository and
    /// for a key other repositories still use (nothing is deleted then).
    pub fn repo_delete(&self, name: &str, erase: bool) -> Result<Deleted, StoreError> {
        let tx = self.write(true)?;
        let repo = find_repo_w(&tx, name)?;
        let key = self.key_name(repo.domain);
        if erase {
            let Some(key) = &key else {
                return Err(StoreError::Keys(format!(
                    "{name} is not encrypted: there is no key to erase (delete it without --erase)"
                )));
            };
            let mut others = Vec::new();
            for row in tx.open_table(REPOS)?.iter()? {
                let (n, v) = row?;
                if v.value().1 == repo.domain && n.value() != name {
                    others.push(n.value().to_owned());
                }
            }
            if !others.is_empty() {
                return Err(StoreError::Keys(format!(
                    "key {key:?} is also used by {}: delete those too, or delete {name} without \
                     --erase (nothing was deleted)",
                    others.join(", ")
                )));
            }
        }
        let (id, domain) = (repo.id, repo.domain);
        let digests: Vec<String> = {
            let links = tx.open_table(LINKS)?;
            let mut v = Vec::new();
            for row in links.range::<(u64, &str)>((id, "")..(id + 1, ""))? {
                v.push(row?.0.value().1.to_owned());
            }
            v
        };
        tx.open_table(LINKS)?
            .retain_in::<(u64, &str), _>((id, "")..(id + 1, ""), |_, _| false)?;
        let blobs_before = tx.open_table(BLOBS)?.len()?;
        for d in &digests {
            self.unlinked(&tx, (name, repo), d, false)?;
        }
        let blobs_freed = blobs_before - tx.open_table(BLOBS)?.len()?;
        let mut manifest_bytes = 0i128;
        tx.open_table(MANIFESTS)?
            .retain_in::<(u64, &str), _>((id, "")..(id + 1, ""), |_, v| {
                manifest_bytes += v.len() as i128;
                false
            })?;
        self.quota_manifest(&tx, name, -manifest_bytes)?;
        tx.open_table(TAGS)?
            .retain_in::<(u64, &str), _>((id, "")..(id + 1, ""), |_, _| false)?;
        tx.open_table(REFERRERS)?
            .retain_in::<(u64, &str, &str), _>((id, "", "")..(id + 1, "", ""), |_, _| false)?;
        tx.open_table(REFS)?
            .retain_in::<(u64, &str, &str), _>((id, "", "")..(id + 1, "", ""), |_, _| false)?;
        tx.open_table(PUSHED)?
            .retain_in::<(u64, &str), _>((id, "")..(id + 1, ""), |_, _| false)?;
        super::audit::drop_pulls(&tx, name)?;
        let mut sessions = self.cancel_sessions_of(&tx, name)?;
        tx.open_table(REPOS)?.remove(name)?;
        if erase {
            sessions.extend(self.erase_domain(&tx, domain)?);
        }
        let action = if erase {
            "repository.erase"
        } else {
            "repository.delete"
        };
        let mut change = Change::in_repo(action, name).with("blobsFreed", blobs_freed);
        if let Some(k) = &key {
            change = change.with("key", k.as_str());
        }
        tx.audit(change);
        tx.commit()?;
        self.forget_pulls(name);
        let mut progress = self.progress();
        for s in &sessions {
            progress.remove(s);
        }
        drop(progress);
        if erase {
            self.forget_domain(domain);
        }
        self.space_freed();
        Ok(Deleted {
            key,
            blobs_freed,
            erased: erase,
        })
    }
}
