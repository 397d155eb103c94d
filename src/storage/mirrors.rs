//! Mirror state, kept in the store so that status and resumable transfers outlive restarts.

use super::schema::MIRRORS;
use super::{Store, StoreError};

impl Store {
    /// The state of mirror `name` (JSON), if it ever ran.
    pub fn mirror_state(&self, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(MIRRORS)?;
        let v = table.get(name)?.map(|v| v.value().to_vec());
        Ok(v)
    }

    /// Replaces the state of mirror `name`.
    pub fn set_mirror_state(&self, name: &str, state: &[u8]) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        tx.open_table(MIRRORS)?.insert(name, state)?;
        tx.commit()
    }
}
