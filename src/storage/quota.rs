//! Quota usage: counters in `quota_usage`, changed by the very transactions that store or
//! delete a blob, link or unlink one, or store or delete a manifest, so that a crash leaves
//! them exactly as consistent as the rows they count. The transactions that add bytes
//! (upload finish, mount, manifest put) compare them with the limits before they commit.
//!
//! What a counter holds: the whole store's (`""`), every stored blob once per domain plus
//! every manifest record; a quota's, every (domain, digest) that at least one repository it
//! covers links, once, plus the manifest records of those repositories. Upload sessions in
//! progress are not charged until they finish.

use super::repos::Repo;
use super::schema::{BLOBS, LINKS, MANIFESTS, QUOTA_USAGE, REPOS};
use super::{Store, StoreError};
use crate::digest::Digest;
use crate::quota::{Exceeded, STORE};
use redb::{ReadableTable, WriteTransaction};
use std::collections::{BTreeMap, HashSet};

/// The key of the store-wide counter (no pattern is empty).
const WHOLE: &str = "";

/// A counter as a transaction began: (key, limit, bytes).
pub(super) type Before = Vec<(String, Option<u64>, u64)>;

/// Every counter recomputed from the tables: key -> bytes.
fn tally(
    quotas: &crate::quota::Quotas,
    repos: &impl ReadableTable<&'static str, (u64, u64)>,
    links: &impl ReadableTable<(u64, &'static str), (u8, u64)>,
    blobs: &impl ReadableTable<(u64, &'static str), (u64, u64, u64)>,
    manifests: &impl ReadableTable<(u64, &'static str), &'static [u8]>,
) -> Result<BTreeMap<String, u64>, StoreError> {
    let mut out = BTreeMap::from([(WHOLE.to_owned(), 0u64)]);
    for row in blobs.iter()? {
        *out.get_mut(WHOLE).expect("inserted") += row?.1.value().1;
    }
    // Repository id -> (domain, indices of the quotas covering it).
    let mut covered = std::collections::HashMap::new();
    for row in repos.iter()? {
        let (name, v) = row?;
        let (id, domain) = v.value();
        let which: Vec<usize> = (0..quotas.rules.len())
            .filter(|&i| quotas.rules[i].covers(name.value()))
            .collect();
        covered.insert(id, (domain, which));
    }
    let mut bytes = vec![0u64; quotas.rules.len()];
    let mut seen: Vec<HashSet<(u64, String)>> = vec![HashSet::new(); quotas.rules.len()];
    for row in links.iter()? {
        let (k, _) = row?;
        let (repo, digest) = k.value();
        let Some((domain, which)) = covered.get(&repo) else {
            continue;
        };
        if which.is_empty() {
            continue;
        }
        let size = blobs.get((*domain, digest))?.map_or(0, |v| v.value().1);
        for &i in which {
            if seen[i].insert((*domain, digest.to_owned())) {
                bytes[i] += size;
            }
        }
    }
    for row in manifests.iter()? {
        let (k, v) = row?;
        let n = v.value().len() as u64;
        *out.get_mut(WHOLE).expect("inserted") += n;
        if let Some((_, which)) = covered.get(&k.value().0) {
            for &i in which {
                bytes[i] += n;
            }
        }
    }
    for (q, n) in quotas.rules.iter().zip(bytes) {
        out.insert(q.repositories.clone(), n);
    }
    Ok(out)
}

/// `tally` of the store's quotas in transaction `tx` (read or write: their tables differ in
/// type, not in what `tally` reads).
macro_rules! recount {
    ($store:expr, $tx:expr) => {
        tally(
            &$store.quotas,
            &$tx.open_table(REPOS)?,
            &$tx.open_table(LINKS)?,
            &$tx.open_table(BLOBS)?,
            &$tx.open_table(MANIFESTS)?,
        )?
    };
}

/// Names of the repositories of `domain` other than id `except` that link `digest` and that
/// `wanted` selects.
fn linking(
    repos: &impl ReadableTable<&'static str, (u64, u64)>,
    links: &impl ReadableTable<(u64, &'static str), (u8, u64)>,
    (domain, digest): (u64, &str),
    except: u64,
    wanted: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, StoreError> {
    let mut out = Vec::new();
    for row in repos.iter()? {
        let (name, v) = row?;
        let (id, d) = v.value();
        if d == domain && id != except && wanted(name.value()) && links.get((id, digest))?.is_some()
        {
            out.push(name.value().to_owned());
        }
    }
    Ok(out)
}

/// Adds `delta` to counter `key` (absent: a quota not configured, nothing to keep).
fn bump(tx: &WriteTransaction, key: &str, delta: i128) -> Result<(), StoreError> {
    if delta == 0 {
        return Ok(());
    }
    let mut table = tx.open_table(QUOTA_USAGE)?;
    let Some(now) = table.get(key)?.map(|v| v.value()) else {
        return Ok(());
    };
    let next = (i128::from(now) + delta).clamp(0, i128::from(u64::MAX)) as u64;
    table.insert(key, next)?;
    Ok(())
}

impl Store {
    /// Makes `quota_usage` hold exactly the configured quotas' counters, rebuilding them if
    /// its keys are others (a quota added or removed, a store from before quotas): one scan
    /// of the links, blobs and manifests, at open. With `version`, the schema version is set
    /// in the same transaction.
    pub(super) fn quota_settle(&self, version: Option<u64>) -> Result<(), StoreError> {
        let mut wanted: Vec<&str> = self
            .quotas
            .rules
            .iter()
            .map(|q| q.repositories.as_str())
            .collect();
        wanted.push(WHOLE);
        wanted.sort_unstable();
        let have: Vec<String> = {
            let tx = self.read()?;
            let table = tx.open_table(QUOTA_USAGE)?;
            let keys = table.iter()?.map(|r| Ok(r?.0.value().to_owned()));
            keys.collect::<Result<_, StoreError>>()?
        };
        if have == wanted && version.is_none() {
            return Ok(());
        }
        let tx = self.write(true)?;
        if have != wanted {
            self.quota_rebuild(&tx)?;
            log::info!(
                "quota usage counted for {} quota(s) and the store",
                self.quotas.rules.len()
            );
        }
        if let Some(v) = version {
            tx.open_table(super::schema::META)?
                .insert("schema_version", v)?;
        }
        tx.commit()
    }

    /// Recomputes every counter within `tx` (at open, and after a repository changed domain).
    pub(super) fn quota_rebuild(&self, tx: &WriteTransaction) -> Result<(), StoreError> {
        let counts = recount!(self, tx);
        let mut table = tx.open_table(QUOTA_USAGE)?;
        table.retain(|_, _| false)?;
        for (k, n) in &counts {
            table.insert(k.as_str(), *n)?;
        }
        Ok(())
    }

    /// A blob of `size` bytes was stored (`added`) or deleted in some domain, within `tx`.
    pub(super) fn quota_blob(
        &self,
        tx: &WriteTransaction,
        size: u64,
        added: bool,
    ) -> Result<(), StoreError> {
        bump(tx, WHOLE, signed(size, added))
    }

    /// Repository `name` (`repo`) gained (`added`) or lost its link to `digest` (`size`
    /// bytes), within `tx`: each quota covering it is charged or credited unless another
    /// repository it covers links the blob in the same domain (then it stays charged once).
    pub(super) fn quota_link(
        &self,
        tx: &WriteTransaction,
        (name, repo): (&str, Repo),
        digest: &str,
        size: u64,
        added: bool,
    ) -> Result<(), StoreError> {
        let covering: Vec<&crate::quota::Quota> = self.quotas.covering(name).collect();
        if covering.is_empty() {
            return Ok(());
        }
        let others = linking(
            &tx.open_table(REPOS)?,
            &tx.open_table(LINKS)?,
            (repo.domain, digest),
            repo.id,
            &|n| covering.iter().any(|q| q.covers(n)),
        )?;
        for q in covering {
            if !others.iter().any(|n| q.covers(n)) {
                bump(tx, &q.repositories, signed(size, added))?;
            }
        }
        Ok(())
    }

    /// The manifest records of repository `name` grew by `delta` bytes (less if negative),
    /// within `tx`.
    pub(super) fn quota_manifest(
        &self,
        tx: &WriteTransaction,
        name: &str,
        delta: i128,
    ) -> Result<(), StoreError> {
        bump(tx, WHOLE, delta)?;
        for q in self.quotas.covering(name) {
            bump(tx, &q.repositories, delta)?;
        }
        Ok(())
    }

    /// The counters that limit repository `name`, as `tx` begins.
    pub(super) fn quota_before(
        &self,
        tx: &WriteTransaction,
        name: &str,
    ) -> Result<Before, StoreError> {
        let table = tx.open_table(QUOTA_USAGE)?;
        let get =
            |k: &str| -> Result<u64, StoreError> { Ok(table.get(k)?.map_or(0, |v| v.value())) };
        let mut out = Vec::new();
        if let Some(limit) = self.quotas.store {
            out.push((WHOLE.to_owned(), Some(limit), get(WHOLE)?));
        }
        for q in self.quotas.covering(name) {
            out.push((q.repositories.clone(), Some(q.limit), get(&q.repositories)?));
        }
        Ok(out)
    }

    /// Refuses the changes `tx` made if they took a counter of `before` up and past its
    /// limit: the authority on quotas (redb has one writer, so racing pushes are ordered
    /// here). A counter already over its limit (the limit was lowered) may stay so; it only
    /// may not grow.
    pub(super) fn quota_enforce(
        &self,
        tx: &WriteTransaction,
        before: &Before,
    ) -> Result<(), StoreError> {
        let table = tx.open_table(QUOTA_USAGE)?;
        for (key, limit, used) in before {
            let Some(limit) = *limit else { continue };
            let now = table.get(key.as_str())?.map_or(0, |v| v.value());
            if now > *used && now > limit {
                return Err(exceeded(key, limit, *used, now - used));
            }
        }
        Ok(())
    }

    /// Refuses early a blob of `bytes` bytes (`digest`, if known) about to be written into
    /// repository `repo` when it would take a quota past its limit: the store-wide one unless
    /// the domain stores it, a quota unless one of its repositories links it. An estimate
    /// from the last commit (concurrent uploads are not counted): the finish decides.
    pub fn quota_room(
        &self,
        repo: &str,
        digest: Option<&Digest>,
        bytes: u64,
    ) -> Result<(), StoreError> {
        let covering: Vec<&crate::quota::Quota> = self.quotas.covering(repo).collect();
        if covering.is_empty() && self.quotas.store.is_none() {
            return Ok(());
        }
        let tx = self.read()?;
        let table = tx.open_table(QUOTA_USAGE)?;
        let repos = tx.open_table(REPOS)?;
        let domain = match repos.get(repo)? {
            Some(v) => Some(v.value().1),
            None => self.new_repo_domain(repo),
        };
        let known = digest.zip(domain);
        let check = |key: &str, limit: u64, free: bool| -> Result<(), StoreError> {
            let used = table.get(key)?.map_or(0, |v| v.value());
            if !free && used.saturating_add(bytes) > limit {
                return Err(exceeded(key, limit, used, bytes));
            }
            Ok(())
        };
        if let Some(limit) = self.quotas.store {
            let stored = match known {
                Some((d, domain)) => tx.open_table(BLOBS)?.get((domain, d.as_str()))?.is_some(),
                None => false,
            };
            check(WHOLE, limit, stored)?;
        }
        let holders = match known {
            Some((d, domain)) => linking(
                &repos,
                &tx.open_table(LINKS)?,
                (domain, d.as_str()),
                u64::MAX,
                &|n| covering.iter().any(|q| q.covers(n)),
            )?,
            None => Vec::new(),
        };
        for q in covering {
            check(
                &q.repositories,
                q.limit,
                holders.iter().any(|n| q.covers(n)),
            )?;
        }
        Ok(())
    }

    /// Every quota (the store's first, named `maxStoreSize`) with its limit (null: none) and
    /// the bytes it holds, as JSON: what `/admin/stats` and `outpost du` show.
    pub fn quota_usage(&self) -> Result<serde_json::Value, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(QUOTA_USAGE)?;
        let get =
            |k: &str| -> Result<u64, StoreError> { Ok(table.get(k)?.map_or(0, |v| v.value())) };
        let mut out = vec![serde_json::json!({
            "quota": STORE, "limit": self.quotas.store, "used": get(WHOLE)?,
        })];
        for q in &self.quotas.rules {
            out.push(serde_json::json!({
                "quota": q.repositories, "limit": q.limit, "used": get(&q.repositories)?,
            }));
        }
        Ok(serde_json::Value::Array(out))
    }

    /// Adds to `problems` every counter that differs from a recount in snapshot `tx`.
    pub(super) fn check_quotas(
        &self,
        tx: &redb::ReadTransaction,
        problems: &mut Vec<String>,
    ) -> Result<(), StoreError> {
        let counts = recount!(self, tx);
        let table = tx.open_table(QUOTA_USAGE)?;
        for (k, n) in counts {
            let kept = table.get(k.as_str())?.map(|v| v.value());
            if kept != Some(n) {
                let name = if k.is_empty() { STORE } else { k.as_str() };
                problems.push(format!(
                    "quota {name} counts {kept:?} bytes, a recount finds {n}"
                ));
            }
        }
        Ok(())
    }
}

fn signed(size: u64, added: bool) -> i128 {
    if added {
        i128::from(size)
    } else {
        -i128::from(size)
    }
}

fn exceeded(key: &str, limit: u64, used: u64, needs: u64) -> StoreError {
    StoreError::Quota(Exceeded {
        quota: if key.is_empty() { STORE } else { key }.to_owned(),
        limit,
        used,
        needs,
    })
}
