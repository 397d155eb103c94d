//! The audit trail's tables: records appended in the transaction of each change, read back
//! by filter or by sequence; pull counts and failed logins written a batch at a time; the
//! delivery cursor of each notification endpoint.

use super::schema::{AUDIT, EVENT_CURSORS, META, PULLS};
use super::{Store, StoreError};
use crate::audit::config::AuditConfig;
use crate::audit::{Actor, Change, Filter, Record, Tally};
use redb::{ReadableDatabase, ReadableTable, ReadableTableMetadata, WriteTransaction};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The newest committed record's sequence number: notification senders compare their cursor
/// with it instead of reading the store. Process-wide: one store per process.
static LAST_SEQ: AtomicU64 = AtomicU64::new(0);
/// The newest record a durable commit has made durable (with every record before it): what
/// notifications may send. Non-durable commits (the collector's, mounts) wait for the next
/// durable one.
static DURABLE_SEQ: AtomicU64 = AtomicU64::new(0);

/// Failed logins are written at most this often: a flood of them costs one small commit per
/// interval, whatever its size.
const LOGINS_EVERY: Duration = Duration::from_secs(10);
/// Pull counts are written at most this often (and at shutdown): a power cut loses at most
/// this long of counts.
pub const PULLS_EVERY: Duration = Duration::from_secs(60);

/// An empty tally: the first failed logins are written at the next flush, later ones at most
/// every `LOGINS_EVERY`; pulls a minute after start at the earliest.
pub(super) fn new_tally() -> (Tally, Instant, Instant) {
    let now = Instant::now();
    (
        Tally::default(),
        now.checked_sub(LOGINS_EVERY).unwrap_or(now),
        now,
    )
}

/// Appends `changes` (each with its actor) to the trail in `tx`, numbered on from the last,
/// and drops the oldest past `max`; returns the records for `committed`.
pub(super) fn append(
    tx: &WriteTransaction,
    changes: impl Iterator<Item = (Change, Actor)>,
    max: u64,
) -> Result<Vec<Record>, StoreError> {
    let mut changes = changes.peekable();
    if changes.peek().is_none() {
        return Ok(Vec::new());
    }
    let mut meta = tx.open_table(META)?;
    let mut seq = meta.get("next_audit")?.map_or(1, |v| v.value());
    let time = super::now();
    let mut table = tx.open_table(AUDIT)?;
    let mut records = Vec::new();
    for (change, actor) in changes {
        let r = Record::new(change, &actor, seq, time);
        let json = serde_json::to_vec(&r).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        table.insert(seq, json.as_slice())?;
        records.push(r);
        seq += 1;
    }
    meta.insert("next_audit", seq)?;
    while table.len()? > max {
        table.pop_first()?;
    }
    Ok(records)
}

/// Drops the stored pull counts of repository `name` (deleted), in `tx`.
pub(super) fn drop_pulls(tx: &WriteTransaction, name: &str) -> Result<(), StoreError> {
    tx.open_table(PULLS)?
        .retain_in::<(&str, &str), _>((name, "")..=(name, "\u{10ffff}"), |_, _| false)?;
    Ok(())
}

/// After a reopen the file is at its last durable state: the numbers follow it (a record of a
/// commit it lost is gone, and its number is given again; no event was sent for it).
pub(super) fn reload_seqs(db: &redb::Database) -> Result<(), StoreError> {
    let tx = db.begin_read()?;
    let last = tx.open_table(AUDIT)?.last()?.map_or(0, |(k, _)| k.value());
    LAST_SEQ.store(last, Ordering::SeqCst);
    DURABLE_SEQ.store(last, Ordering::SeqCst);
    Ok(())
}

/// The newest record `tx` holds (0: none): read before a durable commit, which makes it and
/// every record before it durable.
pub(super) fn last_in(tx: &WriteTransaction) -> Result<u64, StoreError> {
    let meta = tx.open_table(META)?;
    let next = meta.get("next_audit")?.map_or(1, |v| v.value());
    Ok(next - 1)
}

/// Called once `records` are durable (or committed): logs them if asked to, and lets the
/// notification senders know.
/// `durable_upto`: for a durable commit, the newest record it holds (`last_in`).
pub(super) fn committed(records: &[Record], config: AuditConfig, durable_upto: Option<u64>) {
    if let Some(last) = records.last() {
        LAST_SEQ.fetch_max(last.seq, Ordering::SeqCst);
    }
    if let Some(upto) = durable_upto {
        DURABLE_SEQ.fetch_max(upto, Ordering::SeqCst);
    }
    if config.log {
        for r in records {
            log::info!(target: "audit", "{}", r.line());
        }
    }
}

/// Pull counts of one repository and reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullCount {
    /// The repository.
    pub repo: String,
    /// The tag or digest pulled.
    pub reference: String,
    /// Manifest GETs counted.
    pub count: u64,
    /// Unix seconds of the last.
    pub last: u64,
}

impl PullCount {
    /// As the admin API shows it.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "repository": self.repo,
            "reference": self.reference,
            "count": self.count,
            "lastPulled": crate::clock::rfc3339(self.last),
        })
    }
}

impl Store {
    /// Reads the last sequence number at open, for `last_audit_seq`.
    pub(super) fn load_audit_seq(&self) -> Result<(), StoreError> {
        let tx = self.read()?;
        if let Some((k, _)) = tx.open_table(AUDIT)?.last()? {
            // What the file holds at open survived: durable.
            LAST_SEQ.fetch_max(k.value(), Ordering::SeqCst);
            DURABLE_SEQ.fetch_max(k.value(), Ordering::SeqCst);
        }
        Ok(())
    }

    /// The newest record that is durable: raised by every durable commit.
    pub fn durable_audit_seq(&self) -> u64 {
        DURABLE_SEQ.load(Ordering::SeqCst)
    }

    /// The newest committed record's sequence number (0: none yet).
    pub fn last_audit_seq(&self) -> u64 {
        LAST_SEQ.load(Ordering::SeqCst)
    }

    /// The newest `filter.limit` records that match `filter`, oldest first.
    pub fn audit_records(&self, filter: &Filter) -> Result<Vec<Record>, StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(AUDIT)?;
        let mut out = Vec::new();
        for row in table.iter()?.rev() {
            if out.len() >= filter.limit {
                break;
            }
            let r = decode(row?.1.value())?;
            if filter.matches(&r) {
                out.push(r);
            }
        }
        out.reverse();
        Ok(out)
    }

    /// Up to `limit` records after sequence number `after`, oldest first; and how many of
    /// those after it the bound has dropped already.
    pub fn audit_after(&self, after: u64, limit: usize) -> Result<(Vec<Record>, u64), StoreError> {
        let tx = self.read()?;
        let table = tx.open_table(AUDIT)?;
        let first = table.first()?.map(|(k, _)| k.value());
        let lost = first.map_or(0, |f| f.saturating_sub(after + 1));
        let mut out = Vec::new();
        for row in table.range(after + 1..)?.take(limit) {
            out.push(decode(row?.1.value())?);
        }
        Ok((out, lost))
    }

    /// Counts a failed login (written with the next batch: see `flush_tallies`).
    pub fn login_failed(&self, addr: Option<std::net::IpAddr>, user: &str, limited: bool) {
        self.tally().0.login_failed(addr, user, limited);
    }

    /// Forgets the pulls of `repo` counted in memory (its stored ones go with its deletion).
    pub(super) fn forget_pulls(&self, repo: &str) {
        self.tally().0.forget_repo(repo);
    }

    /// Counts a manifest GET of `reference` in `repo`.
    pub fn pulled(&self, repo: &str, reference: &str) {
        let full = self.tally().0.pulled(repo, reference, super::now());
        if full {
            if let Err(e) = self.write_pulls() {
                log::warn!("writing pull counts: {e}");
            }
        }
    }

    fn tally(&self) -> std::sync::MutexGuard<'_, (Tally, Instant, Instant)> {
        self.tally.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes failed logins (at most every 10 s) and pull counts (at most every minute), or
    /// both now with `force` (shutdown); called about once a second.
    pub fn flush_tallies(&self, force: bool) -> Result<(), StoreError> {
        let (logins, pulls) = {
            let t = self.tally();
            (
                t.0.has_logins() && (force || t.1.elapsed() >= LOGINS_EVERY),
                t.0.has_pulls() && (force || t.2.elapsed() >= PULLS_EVERY),
            )
        };
        if logins {
            let batch = {
                let mut t = self.tally();
                t.1 = Instant::now();
                t.0.take_logins()
            };
            // Not durable by itself: made durable with the next durable commit or flush.
            let tx = self.write(false)?;
            let config = self.handle.audit_config();
            let records = append(&tx, batch.into_iter(), config.max_records)?;
            tx.commit()?;
            self.unflushed.store(true, Ordering::SeqCst);
            committed(&records, config, None);
        }
        if pulls {
            self.write_pulls()?;
        }
        Ok(())
    }

    /// Adds the pulls counted since the last write to the store's counts.
    fn write_pulls(&self) -> Result<(), StoreError> {
        let pulls = {
            let mut t = self.tally();
            t.2 = Instant::now();
            t.0.take_pulls()
        };
        if pulls.is_empty() {
            return Ok(());
        }
        let tx = self.write(false)?;
        {
            let mut table = tx.open_table(PULLS)?;
            for (repo, reference, (n, last)) in &pulls {
                let (count, at) = table
                    .get((repo.as_str(), reference.as_str()))?
                    .map_or((0, 0), |v| v.value());
                table.insert(
                    (repo.as_str(), reference.as_str()),
                    (count + n, at.max(*last)),
                )?;
            }
        }
        tx.commit()?;
        self.unflushed.store(true, Ordering::SeqCst);
        Ok(())
    }

    /// Pull counts, of repository `repo` or all, sorted by repository and reference; counts
    /// not yet written are included.
    pub fn pulls(&self, repo: Option<&str>) -> Result<Vec<PullCount>, StoreError> {
        let mut all = std::collections::BTreeMap::new();
        {
            let tx = self.read()?;
            for row in tx.open_table(PULLS)?.iter()? {
                let (k, v) = row?;
                let (r, reference) = k.value();
                if repo.is_none_or(|x| x == r) {
                    all.insert((r.to_owned(), reference.to_owned()), v.value());
                }
            }
        }
        for (r, reference, (n, last)) in self.tally().0.pulls(repo) {
            let e = all.entry((r, reference)).or_insert((0, 0));
            e.0 += n;
            e.1 = e.1.max(last);
        }
        Ok(all
            .into_iter()
            .map(|((repo, reference), (count, last))| PullCount {
                repo,
                reference,
                count,
                last,
            })
            .collect())
    }

    /// This store's id (16 hex digits, made at first use): the `source.instanceID` of its
    /// notifications, and with a sequence number an event id that stays the same when an
    /// event is delivered again.
    pub fn instance_id(&self) -> Result<String, StoreError> {
        let found = self
            .read()?
            .open_table(META)?
            .get("instance_id")?
            .map(|v| v.value());
        let id = match found {
            Some(id) => id,
            None => {
                let tx = self.write(true)?;
                let id = {
                    let mut meta = tx.open_table(META)?;
                    let existing = meta.get("instance_id")?.map(|v| v.value());
                    match existing {
                        Some(id) => id,
                        None => {
                            let id = u64::from_le_bytes(crate::crypto::random::<8>());
                            meta.insert("instance_id", id)?;
                            id
                        }
                    }
                };
                tx.commit()?;
                id
            }
        };
        Ok(format!("{id:016x}"))
    }

    /// The last sequence number delivered to notification endpoint `name` (None: never
    /// delivered; it starts at the trail's current end).
    pub fn event_cursor(&self, name: &str) -> Result<Option<u64>, StoreError> {
        let tx = self.read()?;
        let v = tx.open_table(EVENT_CURSORS)?.get(name)?.map(|v| v.value());
        Ok(v)
    }

    /// Records that endpoint `name` has received everything up to `seq`. Not durable by
    /// itself (the store's flush makes it so within a second): a crash before redelivers,
    /// which at-least-once delivery allows.
    pub fn set_event_cursor(&self, name: &str, seq: u64) -> Result<(), StoreError> {
        let tx = self.write(false)?;
        tx.open_table(EVENT_CURSORS)?.insert(name, seq)?;
        tx.commit()?;
        self.unflushed.store(true, Ordering::SeqCst);
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Result<Record, StoreError> {
    serde_json::from_slice(bytes).map_err(|e| StoreError::Corrupt(format!("audit record: {e}")))
}
