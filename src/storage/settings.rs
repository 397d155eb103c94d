//! Registry settings changed at runtime, kept in the store so that they outlive restarts.

use super::schema::SETTINGS;
use super::{Store, StoreError};
use crate::audit::Change;
use redb::ReadableTable;

impl Store {
    /// Every setting changed at runtime, as (name, value).
    pub fn settings(&self) -> Result<Vec<(String, String)>, StoreError> {
        let tx = self.read()?;
        let mut out = Vec::new();
        for row in tx.open_table(SETTINGS)?.iter()? {
            let (k, v) = row?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    /// Sets `name` to `value`, or with None forgets it (the config file's value applies again).
    pub fn set_setting(&self, name: &str, value: Option<&str>) -> Result<(), StoreError> {
        let tx = self.write(true)?;
        {
            let mut table = tx.open_table(SETTINGS)?;
            match value {
                Some(v) => {
                    table.insert(name, v)?;
                }
                None => {
                    table.remove(name)?;
                }
            }
        }
        tx.audit(match value {
            Some(v) => Change::new("setting.set")
                .with("name", name)
                .with("value", v),
            None => Change::new("setting.reset").with("name", name),
        });
        tx.commit()
    }
}
