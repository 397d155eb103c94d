//! Encryption domains: one named data key and algorithm each, the key wrapped by the master
//! key. Domain 0 is plaintext and has no row. Data keys are unwrapped once, at open.

use super::schema::{BLOBS, DOMAINS, PREFIXES, REPOS, UPLOADS};
use super::{next_id, Store, StoreError};
use crate::audit::Change;
use crate::config::EncryptionRule;
use crate::crypto::{random, Algorithm, DataKey, MasterKey, KEY_LEN, WRAPPED_LEN};
use redb::ReadableTable;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

/// The plaintext domain.
pub(super) const PLAINTEXT: u64 = 0;

/// An encryption domain's key, unwrapped.
pub(super) struct Domain {
    /// The key's name, as rules and commands give it.
    pub name: String,
    /// The data key.
    pub key: DataKey,
}

/// The master key, the rules that pick a new repository's key, and the unwrapped data keys.
pub(super) struct Keyring {
    master: Option<MasterKey>,
    rules: Vec<EncryptionRule>,
    domains: RwLock<HashMap<u64, Arc<Domain>>>,
    /// Held while a key is created, so that two first pushes do not create two keys of one name.
    creating: Mutex<()>,
}

impl Keyring {
    pub fn new(master: Option<MasterKey>, rules: Vec<EncryptionRule>) -> Keyring {
        Keyring {
            master,
            rules,
            domains: RwLock::default(),
            creating: Mutex::default(),
        }
    }

    fn map(&self) -> std::sync::RwLockReadGuard<'_, HashMap<u64, Arc<Domain>>> {
        self.domains.read().unwrap_or_else(|p| p.into_inner())
    }

    fn by_name(&self, name: &str) -> Option<(u64, Algorithm)> {
        self.map()
            .iter()
            .find(|(_, d)| d.name == name)
            .map(|(id, d)| (*id, d.key.algorithm()))
    }
}

/// A domain row: name, algorithm, and the data key wrapped by each master key id listed.
struct Row {
    name: String,
    algorithm: Algorithm,
    wraps: Vec<(String, Vec<u8>)>,
}

// Layout: version 1, algorithm code, name length, name, wrap count, then per wrap the master
// key id (8 ASCII hex digits) and the wrapped key (WRAPPED_LEN bytes).
fn encode(r: &Row) -> Vec<u8> {
    let mut v = vec![1, r.algorithm.code(), r.name.len() as u8];
    v.extend_from_slice(r.name.as_bytes());
    v.push(r.wraps.len() as u8);
    for (id, wrapped) in &r.wraps {
        v.extend_from_slice(id.as_bytes());
        v.extend_from_slice(wrapped);
    }
    v
}

fn decode(domain: u64, v: &[u8]) -> Result<Row, StoreError> {
    let bad = || StoreError::Corrupt(format!("undecodable key record of domain {domain}"));
    let (&[1, alg, name_len], rest) = v.split_first_chunk::<3>().ok_or_else(bad)? else {
        return Err(bad());
    };
    let algorithm = Algorithm::from_code(alg).ok_or_else(bad)?;
    let name_len = usize::from(name_len);
    let name = rest.get(..name_len).ok_or_else(bad)?;
    let name = std::str::from_utf8(name).map_err(|_| bad())?.to_owned();
    let (&count, mut rest) = rest[name_len..].split_first().ok_or_else(bad)?;
    let mut wraps = Vec::new();
    for _ in 0..count {
        let id = rest.get(..8).ok_or_else(bad)?;
        let wrapped = rest.get(8..8 + WRAPPED_LEN).ok_or_else(bad)?;
        let id = std::str::from_utf8(id).map_err(|_| bad())?.to_owned();
        wraps.push((id, wrapped.to_vec()));
        rest = &rest[8 + WRAPPED_LEN..];
    }
    Ok(Row {
        name,
        algorithm,
        wraps,
    })
}

/// Every domain row of `table`, decoded.
fn all_rows(table: &impl ReadableTable<u64, &'static [u8]>) -> Result<Vec<(u64, Row)>, StoreError> {
    let mut rows = Vec::new();
    for row in table.iter()? {
        let (k, v) = row?;
        rows.push((k.value(), decode(k.value(), v.value())?));
    }
    Ok(rows)
}

/// A data key as `outpost key list` shows it.
#[derive(Debug, Clone)]
pub struct KeyInfo {
    /// Its name.
    pub name: String,
    /// Its algorithm.
    pub algorithm: Algorithm,
    /// Repositories stored with it.
    pub repositories: Vec<String>,
    /// Blobs stored with it, and their bytes.
    pub blobs: u64,
    /// Bytes of those blobs.
    pub bytes: u64,
    /// Ids of the master keys its data key is wrapped by.
    pub masters: Vec<String>,
}

impl Store {
    /// Unwraps every domain's data key with the master key. A store with encrypted domains
    /// and no master key, or a master key that opens none of them, is refused: it would
    /// otherwise serve nothing or, worse, ciphertext. With `settle`, wraps by other master
    /// keys (a rotation that was interrupted, or finished by this start) are dropped: the
    /// master key the registry started with is the one that stays.
    pub(super) fn load_domains(&self, settle: bool) -> Result<(), StoreError> {
        let rows = all_rows(&self.read()?.open_table(DOMAINS)?)?;
        if rows.is_empty() {
            return Ok(());
        }
        let names = || {
            let n: Vec<&str> = rows.iter().map(|(_, r)| r.name.as_str()).collect();
            n.join(", ")
        };
        let ids = || {
            let mut ids: Vec<&str> = rows
                .iter()
                .flat_map(|(_, r)| r.wraps.iter().map(|w| w.0.as_str()))
                .collect();
            ids.sort_unstable();
            ids.dedup();
            ids.join(" or ")
        };
        let Some(master) = &self.keys.master else {
            return Err(StoreError::Keys(format!(
                "the store holds encrypted repositories (keys: {}) and no master key was \
                 given: set masterKeyFile in the config, or provide the systemd credential \
                 outpost-master-key (the store's master key id is {})",
                names(),
                ids()
            )));
        };
        let mut map = HashMap::new();
        let mut stale = Vec::new();
        for (id, row) in &rows {
            let wrapped = row.wraps.iter().find(|w| w.0 == master.id());
            let key = wrapped.and_then(|w| master.unwrap(*id, &row.name, row.algorithm, &w.1).ok());
            let Some(mut raw) = key else {
                return Err(StoreError::Keys(format!(
                    "the master key from {} (id {}) does not open the store's data key {:?}, \
                     which master key id {} wraps: start with the master key the store was \
                     encrypted with",
                    master.source(),
                    master.id(),
                    row.name,
                    ids()
                )));
            };
            let domain = Domain {
                name: row.name.clone(),
                key: DataKey::new(row.algorithm, &raw),
            };
            raw.fill(0);
            map.insert(*id, Arc::new(domain));
            if row.wraps.len() > 1 {
                stale.push(*id);
            }
        }
        *self.keys.domains.write().unwrap_or_else(|p| p.into_inner()) = map;
        if settle && !stale.is_empty() {
            let dropped = self.keep_only_master_wraps(master.id())?;
            log::warn!(
                "data keys were also wrapped by master key id(s) {dropped}: a rotation was \
                 interrupted or has just finished; kept only master key id {}",
                master.id()
            );
        }
        Ok(())
    }

    /// Drops, in one durable transaction, every wrap not by master key `keep`; returns the ids
    /// dropped.
    fn keep_only_master_wraps(&self, keep: &str) -> Result<String, StoreError> {
        let mut dropped = Vec::new();
        let tx = self.write(true)?;
        {
            let mut table = tx.open_table(DOMAINS)?;
            let rows = all_rows(&table)?;
            for (id, mut row) in rows {
                row.wraps.retain(|w| {
                    if w.0 != keep {
                        dropped.push(w.0.clone());
                    }
                    w.0 == keep
                });
                table.insert(id, encode(&row).as_slice())?;
            }
        }
        dropped.sort_unstable();
        dropped.dedup();
        if !dropped.is_empty() {
            tx.audit(
                Change::new("key.rotate.finish")
                    .with("master", keep)
                    .with("dropped", dropped.join(", ")),
            );
        }
        tx.commit()?;
        Ok(dropped.join(", "))
    }

    /// Refuses rules that ask an existing key for another algorithm than it has: every
    /// first push they match would fail, so the registry says so at start instead.
    pub(super) fn check_rules(&self) -> Result<(), StoreError> {
        for rule in &self.keys.rules {
            let Some((name, want)) = &rule.key else {
                continue;
            };
            if let Some((_, has)) = self.keys.by_name(name) {
                if has != *want {
                    return Err(StoreError::Keys(format!(
                        "the encryption rule for {} asks key {name:?} to be {}, but it was \
                         created as {}: a key's algorithm never changes; name a new key in \
                         the rule (and outpost repo move repositories to it if they should \
                         change too)",
                        rule.repositories,
                        want.name(),
                        has.name()
                    )));
                }
            }
        }
        Ok(())
    }

    /// The unwrapped key of `domain`; None for plaintext.
    pub(super) fn domain_key(&self, domain: u64) -> Result<Option<Arc<Domain>>, StoreError> {
        if domain == PLAINTEXT {
            return Ok(None);
        }
        match self.keys.map().get(&domain) {
            Some(d) => Ok(Some(d.clone())),
            None => Err(StoreError::Integrity(format!(
                "domain {domain} has no data key (erased?)"
            ))),
        }
    }

    /// The domain new content of repository `name` goes to: the repository's own if it
    /// exists, else the one the first matching encryption rule names (its key is created on
    /// first use), else plaintext.
    pub(super) fn domain_for(&self, name: &str) -> Result<u64, StoreError> {
        if let Some(v) = self.read()?.open_table(REPOS)?.get(name)? {
            return Ok(v.value().1);
        }
        let rule = self.keys.rules.iter().find(|r| r.matches(name));
        match rule.and_then(|r| r.key.as_ref()) {
            None => Ok(PLAINTEXT),
            Some((key, algorithm)) => self.ensure_key(key, Some(*algorithm)),
        }
    }

    /// The domain a new repository `name` would get now, if its key exists (None if the
    /// rules name a key not created yet).
    pub(super) fn new_repo_domain(&self, name: &str) -> Option<u64> {
        let rule = self.keys.rules.iter().find(|r| r.matches(name));
        match rule.and_then(|r| r.key.as_ref()) {
            None => Some(PLAINTEXT),
            Some((key, _)) => self.keys.by_name(key).map(|(id, _)| id),
        }
    }

    /// The domain of data key `name`, created (with `algorithm`, default AES-256-GCM) if
    /// there is none; refused if it exists with another algorithm than the one asked for.
    pub(super) fn ensure_key(
        &self,
        name: &str,
        algorithm: Option<Algorithm>,
    ) -> Result<u64, StoreError> {
        let _one_at_a_time = self.keys.creating.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((id, has)) = self.keys.by_name(name) {
            return match algorithm {
                Some(want) if want != has => Err(StoreError::Keys(format!(
                    "key {name:?} is {}, not {}: a key's algorithm is fixed when it is created",
                    has.name(),
                    want.name()
                ))),
                _ => Ok(id),
            };
        }
        let Some(master) = &self.keys.master else {
            return Err(StoreError::Keys(format!(
                "cannot create key {name:?}: no master key is configured (set masterKeyFile, \
                 or provide the systemd credential outpost-master-key)"
            )));
        };
        let algorithm = algorithm.unwrap_or(Algorithm::Aes256Gcm);
        let mut raw = random::<KEY_LEN>();
        let tx = self.write(true)?;
        let id = next_id(&tx, "next_domain_id")?;
        let row = Row {
            name: name.to_owned(),
            algorithm,
            wraps: vec![(
                master.id().to_owned(),
                master.wrap(id, name, algorithm, &raw),
            )],
        };
        tx.open_table(DOMAINS)?
            .insert(id, encode(&row).as_slice())?;
        tx.audit(
            Change::new("key.create")
                .with("key", name)
                .with("algorithm", algorithm.name()),
        );
        tx.commit()?;
        let domain = Domain {
            name: name.to_owned(),
            key: DataKey::new(algorithm, &raw),
        };
        raw.fill(0);
        self.keys
            .domains
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, Arc::new(domain));
        log::info!("created data key {name:?} ({})", algorithm.name());
        Ok(id)
    }

    /// The key name of `domain` (None: plaintext).
    pub(super) fn key_name(&self, domain: u64) -> Option<String> {
        self.keys.map().get(&domain).map(|d| d.name.clone())
    }

    /// Every data key, with what uses it.
    pub fn keys(&self) -> Result<Vec<KeyInfo>, StoreError> {
        let tx = self.read()?;
        let mut out: HashMap<u64, KeyInfo> = HashMap::new();
        for (id, r) in all_rows(&tx.open_table(DOMAINS)?)? {
            out.insert(
                id,
                KeyInfo {
                    name: r.name,
                    algorithm: r.algorithm,
                    repositories: Vec::new(),
                    blobs: 0,
                    bytes: 0,
                    masters: r.wraps.into_iter().map(|w| w.0).collect(),
                },
            );
        }
        for row in tx.open_table(REPOS)?.iter()? {
            let (name, v) = row?;
            if let Some(k) = out.get_mut(&v.value().1) {
                k.repositories.push(name.value().to_owned());
            }
        }
        for row in tx.open_table(BLOBS)?.iter()? {
            let (k, v) = row?;
            if let Some(info) = out.get_mut(&k.value().0) {
                info.blobs += 1;
                info.bytes += v.value().1;
            }
        }
        let mut keys: Vec<KeyInfo> = out.into_values().collect();
        keys.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(keys)
    }

    /// Wraps every data key under `new` as well, in one durable transaction: afterwards
    /// either master key opens the store, and the first start with `new` drops the old wraps
    /// (`load_domains`). Returns how many keys were wrapped.
    pub fn add_master_wraps(&self, new: &MasterKey) -> Result<usize, StoreError> {
        let master = self.keys.master.as_ref().ok_or_else(|| {
            StoreError::Keys("no master key is configured: there is nothing to rotate".into())
        })?;
        let tx = self.write(true)?;
        let n = {
            let mut table = tx.open_table(DOMAINS)?;
            let mut rows = all_rows(&table)?;
            for (id, row) in &mut rows {
                let current = row.wraps.iter().find(|w| w.0 == master.id());
                let raw =
                    current.and_then(|w| master.unwrap(*id, &row.name, row.algorithm, &w.1).ok());
                let Some(mut raw) = raw else {
                    return Err(StoreError::Corrupt(format!(
                        "key {:?} is not wrapped by the current master key",
                        row.name
                    )));
                };
                // Only the current key's wrap stays besides the new one (an earlier,
                // unfinished rotation's is dropped).
                row.wraps.retain(|w| w.0 == master.id());
                let wrapped = new.wrap(*id, &row.name, row.algorithm, &raw);
                raw.fill(0);
                row.wraps.push((new.id().to_owned(), wrapped));
                table.insert(*id, encode(row).as_slice())?;
            }
            rows.len()
        };
        tx.audit(
            Change::new("key.rotate")
                .with("from", master.id())
                .with("to", new.id())
                .with("keys", n),
        );
        tx.commit()?;
        Ok(n)
    }

    /// Finishes a master key rotation to `new`: only its wraps stay.
    pub fn finish_master_rotation(&self, new: &MasterKey) -> Result<(), StoreError> {
        self.keep_only_master_wraps(new.id()).map(|_| ())
    }

    /// Destroys data key `domain` within `tx`, with everything still sealed by it: upload
    /// sessions sealing for it (first pushes to repositories a rule maps to it), and blobs
    /// they were repeating. The caller has unlinked every repository from it. Returns the
    /// sessions dropped, for the caller to forget once `tx` commits.
    pub(super) fn erase_domain(
        &self,
        tx: &redb::WriteTransaction,
        domain: u64,
    ) -> Result<Vec<String>, StoreError> {
        let sessions: Vec<(String, String)> = {
            let mut v = Vec::new();
            for row in tx.open_table(UPLOADS)?.iter()? {
                let (id, up) = row?;
                if up.value().1 == domain {
                    v.push((id.value().to_owned(), up.value().0.to_owned()));
                }
            }
            v
        };
        for (id, repo) in &sessions {
            self.drop_session(tx, repo, id)?;
        }
        let blobs: Vec<(String, u64, u64)> = {
            let mut v = Vec::new();
            let table = tx.open_table(BLOBS)?;
            for row in table.range((domain, "")..(domain + 1, ""))? {
                let (k, b) = row?;
                v.push((k.value().1.to_owned(), b.value().0, b.value().1));
            }
            v
        };
        for (digest, id, size) in &blobs {
            tx.open_table(BLOBS)?.remove((domain, digest.as_str()))?;
            self.quota_blob(tx, *size, false)?;
            super::blobs::drop_chunks(tx, *id)?;
        }
        tx.open_table(PREFIXES)?
            .retain_in((domain, 0, "")..(domain + 1, 0, ""), |_, _| false)?;
        tx.open_table(DOMAINS)?.remove(domain)?;
        Ok(sessions.into_iter().map(|(id, _)| id).collect())
    }

    /// Forgets the unwrapped key of `domain` (after its erasure committed).
    pub(super) fn forget_domain(&self, domain: u64) {
        self.keys
            .domains
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&domain);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip() {
        let r = Row {
            name: "plant-a".into(),
            algorithm: Algorithm::ChaCha20Poly1305,
            wraps: vec![
                ("0123abcd".into(), vec![1; WRAPPED_LEN]),
                ("89abcdef".into(), vec![2; WRAPPED_LEN]),
            ],
        };
        let back = decode(3, &encode(&r)).unwrap();
        assert_eq!(back.name, "plant-a");
        assert_eq!(back.algorithm, Algorithm::ChaCha20Poly1305);
        assert_eq!(back.wraps, r.wraps);
        assert!(decode(3, &encode(&r)[..20]).is_err());
    }
}
