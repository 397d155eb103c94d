//! Users who sign in with a password: name -> password hash (hashed by the caller).

use super::schema::USERS;
use super::{Store, StoreError};
use crate::audit::Change;
use redb::ReadableTable;

impl Store {
    /// The stored password hash of `name`, if the store has that user.
    pub fn user_hash(&self, name: &str) -> Result<Option<String>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(USERS)?;
        Ok(table.get(name)?.map(|h| h.value().to_owned()))
    }

    /// Every user name, sorted.
    pub fn users(&self) -> Result<Vec<String>, StoreError> {
        let tx = self.read()?;
        let mut out = Vec::new();
        for row in tx.open_table(USERS)?.iter()? {
            out.push(row?.0.value().to_owned());
        }
        Ok(out)
    }

    /// Adds user `name` with password hash `hash` (`create`), or replaces the hash of an
    /// existing user (`!create`).
    pub fn user_put(&self, name: &str, hash: &str, create: bool) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        {
            let mut table = tx.open_table(USERS)?;
            let exists = table.get(name)?.is_some();
            if create && exists {
                return Err(StoreError::UserExists);
            }
            if !create && !exists {
                return Err(StoreError::UserUnknown);
            }
            table.insert(name, hash)?;
        }
        let action = if create { "user.add" } else { "user.passwd" };
        tx.audit(Change::new(action).with("name", name));
        tx.commit()
    }

    /// Removes user `name`.
    pub fn user_delete(&self, name: &str) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        if tx.open_table(USERS)?.remove(name)?.is_none() {
            return Err(StoreError::UserUnknown);
        }
        tx.audit(Change::new("user.delete").with("name", name));
        tx.commit()
    }
}
