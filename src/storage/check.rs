//! A consistency check of the store's bookkeeping: what `/admin/check` reports and the tests
//! assert after crashes and races.

use super::schema::{BLOBS, LINKS, REPOS, SHADOWS, UPLOADS};
use super::{Store, StoreError};
use redb::ReadableTable;
use std::collections::{BTreeMap, HashMap};

impl Store {
    /// Checks, in one snapshot, that every blob's count equals the links and shadowing
    /// uploads that hold it, that every link points at a stored blob, and that every link and
    /// shadow belongs to a known repository or upload, and that every manifest record opens,
    /// decodes and matches its digest. Returns the problems found (none: ok).
    #[cfg(test)]
    pub fn check(&self) -> Result<Vec<String>, StoreError> {
        let mut dangling = Vec::new();
        let mut problems = self.check_all(&mut dangling)?;
        problems.extend(dangling);
        Ok(problems)
    }

    /// `check`, with what clients' own deletes can leave apart from the problems: references
    /// to blobs or manifests a client deleted from under a manifest (`dangling`).
    pub fn check_all(&self, dangling: &mut Vec<String>) -> Result<Vec<String>, StoreError> {
        let tx = self.read()?;
        let mut problems = Vec::new();
        let mut names = HashMap::new();
        for row in tx.open_table(REPOS)?.iter()? {
            let (name, v) = row?;
            let (id, domain) = v.value();
            names.insert(id, (name.value().to_owned(), domain));
        }
        // (domain, digest) -> holders counted from links and shadows.
        let mut held: BTreeMap<(u64, String), u64> = BTreeMap::new();
        for row in tx.open_table(LINKS)?.iter()? {
            let (k, _) = row?;
            let (repo, digest) = k.value();
            match names.get(&repo) {
                Some((_, domain)) => *held.entry((*domain, digest.to_owned())).or_default() += 1,
                None => problems.push(format!("link of {digest} in unknown repository {repo}")),
            }
        }
        let uploads = tx.open_table(UPLOADS)?;
        for row in tx.open_table(SHADOWS)?.iter()? {
            let (id, v) = row?;
            let (domain, digest) = v.value();
            if uploads.get(id.value())?.is_none() {
                problems.push(format!(
                    "shadow of {digest} by unknown upload {}",
                    id.value()
                ));
            }
            *held.entry((domain, digest.to_owned())).or_default() += 1;
        }
        for row in tx.open_table(BLOBS)?.iter()? {
            let (k, v) = row?;
            let (domain, digest) = k.value();
            let count = v.value().2;
            let holders = held.remove(&(domain, digest.to_owned())).unwrap_or(0);
            if count != holders {
                problems.push(format!(
                    "blob {digest} (domain {domain}) counts {count} holders, has {holders}"
                ));
            }
        }
        for ((domain, digest), n) in held {
            problems.push(format!(
                "{n} links to {digest} (domain {domain}), which is not stored"
            ));
        }
        self.check_manifests(&tx, &names, &mut problems, dangling)?;
        self.check_quotas(&tx, &mut problems)?;
        Ok(problems)
    }
}
