//! Repositories: name -> id, created on first push; the catalog.

use super::schema::REPOS;
use super::{next_id, page, Store, StoreError};
use redb::{ReadTransaction, ReadableTable, WriteTransaction};
use std::ops::Bound;

fn lookup(repos: &impl ReadableTable<&'static str, u64>, name: &str) -> Result<u64, StoreError> {
    let id = repos.get(name)?.map(|v| v.value());
    id.ok_or(StoreError::RepoUnknown)
}

/// The id of repository `name` as seen by `tx`.
pub(super) fn repo_id(tx: &ReadTransaction, name: &str) -> Result<u64, StoreError> {
    lookup(&tx.open_table(REPOS)?, name)
}

/// The id of repository `name` within a write, if it exists.
pub(super) fn repo_id_w(tx: &WriteTransaction, name: &str) -> Result<u64, StoreError> {
    lookup(&tx.open_table(REPOS)?, name)
}

/// The id of repository `name`, creating it (repositories are created on first push).
pub(super) fn ensure_repo(tx: &WriteTransaction, name: &str) -> Result<u64, StoreError> {
    match repo_id_w(tx, name) {
        Err(StoreError::RepoUnknown) => {
            let id = next_id(tx, "next_repo_id")?;
            tx.open_table(REPOS)?.insert(name, id)?;
            Ok(id)
        }
        other => other,
    }
}

impl Store {
    /// Repository names after `last`, sorted, at most `n`; and whether more follow.
    pub fn catalog(&self, last: Option<&str>, n: usize) -> Result<(Vec<String>, bool), StoreError> {
        let tx = self.read()?;
        let repos = tx.open_table(REPOS)?;
        let lower = last.map_or(Bound::Unbounded, Bound::Excluded);
        let range = repos.range::<&str>((lower, Bound::Unbounded))?;
        page(range.map(|r| Ok(r?.0.value().to_owned())), n)
    }
}
