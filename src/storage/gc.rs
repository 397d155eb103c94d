//! The collector's view of the store and its deletions. It plans from one snapshot (a read
//! transaction, which never blocks a writer) and deletes in short write transactions that
//! check again, row by row, that what they delete is still garbage: redb's single writer
//! orders each of them against every manifest PUT, tag move and mount.

use super::repos::{find_repo_w, Repo};
use super::schema::{
    BLOBS, LINKS, MANIFESTS, PUSHED, REFERRERS, REFS, REF_CHILD, REF_LAZY, REPOS, TAGS, UPLOADS,
};
use super::{keyed_by, Store, StoreError};
use crate::audit::Change;
use redb::{ReadableTable, WriteTransaction};
use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

/// A manifest as the collector sees it.
#[derive(Debug, Clone, Default)]
pub struct ManifestState {
    /// Unix seconds of its first push.
    pub pushed: u64,
    /// Its push's number: orders pushes within a second.
    pub seq: u64,
    /// Bytes of its stored record.
    pub bytes: u64,
    /// Tags pointing at it, sorted.
    pub tags: Vec<String>,
    /// Its subject, if it is a referrer of a manifest of the repository or elsewhere.
    pub subject: Option<String>,
    /// Manifests of the repository it lists (an index's children).
    pub children: Vec<String>,
}

/// A repository as the collector sees it.
#[derive(Debug, Clone, Default)]
pub struct RepoState {
    /// Its name.
    pub name: String,
    /// Its id (a repository deleted and created again meanwhile has another).
    pub id: u64,
    /// Its encryption domain.
    pub domain: u64,
    /// Manifests by digest.
    pub manifests: BTreeMap<String, ManifestState>,
    /// Blob links: digest -> (unix seconds linked, blob size).
    pub links: BTreeMap<String, (u64, u64)>,
    /// Blob digest -> manifests of the repository that list it.
    pub blob_refs: HashMap<String, Vec<String>>,
    /// Open upload sessions into it.
    pub sessions: u64,
    /// A repository that rules would create in another domain (created by `repo create`
    /// with its own key) is kept when empty: removing it would forget its key.
    pub keyed: bool,
}

/// The whole store as the collector sees it, from one snapshot.
#[derive(Debug, Default)]
pub struct GcSnapshot {
    /// Repositories by name.
    pub repos: Vec<RepoState>,
    /// (domain, digest) -> holders (links and shadowing uploads) of each stored blob.
    pub holders: HashMap<(u64, String), u64>,
}

/// One deletion the collector asks for; each is checked again when it is done.
#[derive(Debug, Clone)]
pub enum Step {
    /// Delete manifest `digest` if its tags are still (a subset of) `tags` and no manifest
    /// lists it or names it as subject (the collector deletes those first, so one whose
    /// deletion was skipped keeps what it needs).
    Manifest {
        /// Its digest.
        digest: String,
        /// The tags it had when planned.
        tags: Vec<String>,
    },
    /// Unlink blob `digest` if no manifest of the repository lists it and it was linked no
    /// later than `linked_by` (unix seconds); its data goes with its last holder.
    Link {
        /// Its digest.
        digest: String,
        /// The newest link time that may go.
        linked_by: u64,
    },
    /// Remove the repository if it holds nothing at all.
    Repo,
}

/// Writer time spent by the collector's transactions.
#[derive(Debug, Default, Clone, Copy)]
pub struct Held {
    /// Write transactions committed.
    pub transactions: u64,
    /// The longest, from begin to commit.
    pub longest: Duration,
    /// All of them.
    pub total: Duration,
}

impl Held {
    /// Counts a transaction that held the writer for `took`.
    pub fn add(&mut self, took: Duration) {
        self.transactions += 1;
        self.total += took;
        self.longest = self.longest.max(took);
    }
}

impl Store {
    /// What the collector plans from: every repository's manifests (with tags, push times,
    /// subjects and children), links and references, in one read transaction.
    pub fn gc_snapshot(&self) -> Result<GcSnapshot, StoreError> {
        let tx = self.read()?;
        let mut snap = GcSnapshot::default();
        let mut by_id = HashMap::new();
        for row in tx.open_table(REPOS)?.iter()? {
            let (name, v) = row?;
            let (id, domain) = v.value();
            let name = name.value().to_owned();
            by_id.insert(id, snap.repos.len());
            snap.repos.push(RepoState {
                keyed: self.new_repo_domain(&name) != Some(domain),
                name,
                id,
                domain,
                ..RepoState::default()
            });
        }
        let pushed = tx.open_table(PUSHED)?;
        for row in tx.open_table(MANIFESTS)?.iter()? {
            let (k, v) = row?;
            let (repo, digest) = k.value();
            let Some(&i) = by_id.get(&repo) else { continue };
            let (at, seq) = pushed.get((repo, digest))?.map_or((0, 0), |v| v.value());
            let m = ManifestState {
                pushed: at,
                seq,
                bytes: v.value().len() as u64,
                ..ManifestState::default()
            };
            snap.repos[i].manifests.insert(digest.to_owned(), m);
        }
        for row in tx.open_table(TAGS)?.iter()? {
            let (k, v) = row?;
            let (repo, tag) = k.value();
            let Some(&i) = by_id.get(&repo) else { continue };
            if let Some(m) = snap.repos[i].manifests.get_mut(v.value()) {
                m.tags.push(tag.to_owned());
            }
        }
        for row in tx.open_table(REFERRERS)?.iter()? {
            let k = row?.0;
            let (repo, subject, digest) = k.value();
            let Some(&i) = by_id.get(&repo) else { continue };
            if let Some(m) = snap.repos[i].manifests.get_mut(digest) {
                m.subject = Some(subject.to_owned());
            }
        }
        for row in tx.open_table(REFS)?.iter()? {
            let (k, v) = row?;
            let (repo, target, digest) = k.value();
            let Some(&i) = by_id.get(&repo) else { continue };
            let r = &mut snap.repos[i];
            if v.value() & !REF_LAZY == REF_CHILD {
                if let Some(m) = r.manifests.get_mut(digest) {
                    m.children.push(target.to_owned());
                }
            } else {
                let by = r.blob_refs.entry(target.to_owned()).or_default();
                by.push(digest.to_owned());
            }
        }
        let blobs = tx.open_table(BLOBS)?;
        for row in tx.open_table(LINKS)?.iter()? {
            let (k, v) = row?;
            let (repo, digest) = k.value();
            let Some(&i) = by_id.get(&repo) else { continue };
            let r = &mut snap.repos[i];
            let size = blobs.get((r.domain, digest))?.map_or(0, |b| b.value().1);
            r.links.insert(digest.to_owned(), (v.value().1, size));
        }
        for row in blobs.iter()? {
            let (k, v) = row?;
            let (domain, digest) = k.value();
            snap.holders
                .insert((domain, digest.to_owned()), v.value().2);
        }
        for row in tx.open_table(UPLOADS)?.iter()? {
            let (_, v) = row?;
            let name = v.value().0;
            // Repositories came in name order.
            if let Ok(i) = snap.repos.binary_search_by(|r| r.name.as_str().cmp(name)) {
                snap.repos[i].sessions += 1;
            }
        }
        Ok(snap)
    }

    /// Does `steps` of repository `name` (id `id`) in order, in one write transaction, until
    /// they are done or `budget` has passed; every step is checked again first. Returns, for
    /// each step taken, whether it deleted (false: no longer garbage, skipped). Commits without durability: the
    /// pass ends with `gc_settle`.
    pub fn gc_apply(
        &self,
        name: &str,
        id: u64,
        steps: &[Step],
        budget: Duration,
        held: &mut Held,
    ) -> Result<Vec<bool>, StoreError> {
        let tx = self.write(false)?;
        let began = Instant::now();
        let mut done = Vec::new();
        let repo = match find_repo_w(&tx, name) {
            Ok(r) if r.id == id => r,
            // Deleted, or deleted and pushed again: nothing planned applies to it.
            Ok(_) | Err(StoreError::RepoUnknown) => return Ok(vec![false; steps.len()]),
            Err(e) => return Err(e),
        };
        // The repository's tags by manifest, read once per transaction (this transaction is
        // the only writer, so it stays true as its own deletions update it).
        let mut tags_of: Option<HashMap<String, Vec<String>>> = None;
        for step in steps {
            if !done.is_empty() && began.elapsed() >= budget {
                break;
            }
            let (deleted, change) = match step {
                Step::Manifest { digest, tags } => {
                    let tags_of = match &mut tags_of {
                        Some(t) => t,
                        None => tags_of.insert(tags_by_manifest(&tx, repo.id)?),
                    };
                    let change = Change::in_repo("manifest.delete", name)
                        .with("digest", digest.as_str())
                        .with("tags", tags.clone());
                    let deleted =
                        self.collect_manifest(&tx, (name, repo), digest, tags, tags_of)?;
                    (deleted, change)
                }
                Step::Link { digest, linked_by } => (
                    self.collect_link(&tx, (name, repo), digest, *linked_by)?,
                    Change::in_repo("blob.delete", name).with("digest", digest.as_str()),
                ),
                Step::Repo => {
                    let deleted = collect_repo(&tx, name, repo)?;
                    if deleted {
                        // Its counts go with it (a new repository of its name starts at 0).
                        self.forget_pulls(name);
                    }
                    (deleted, Change::in_repo("repository.delete", name))
                }
            };
            if deleted {
                tx.audit(change);
            }
            done.push(deleted);
        }
        tx.commit()?;
        held.add(began.elapsed());
        Ok(done)
    }

    /// Whether blob `digest` is stored in `domain`.
    pub fn blob_stored(&self, domain: u64, digest: &str) -> Result<bool, StoreError> {
        Ok(self
            .read()?
            .open_table(BLOBS)?
            .get((domain, digest))?
            .is_some())
    }

    /// Ends a pass: two durable commits, so the pass survives a power cut and redb can reuse
    /// the pages it freed (it reuses a commit's freed pages only after a later durable one).
    pub fn gc_settle(&self) -> Result<(), StoreError> {
        for _ in 0..2 {
            self.write(true)?.commit()?;
        }
        self.space_freed();
        Ok(())
    }

    fn collect_manifest(
        &self,
        tx: &WriteTransaction,
        (name, repo): (&str, Repo),
        digest: &str,
        planned_tags: &[String],
        tags_of: &mut HashMap<String, Vec<String>>,
    ) -> Result<bool, StoreError> {
        let id = repo.id;
        let current = tags_of.get(digest).map_or(&[][..], Vec::as_slice);
        // A tag that reached it since the plan keeps it.
        if current.iter().any(|t| !planned_tags.contains(t)) {
            return Ok(false);
        }
        // So does an index that lists it or a referrer of it: those going in this pass went
        // already (with their rows), so what is left stays.
        if keyed_by(&tx.open_table(REFS)?, id, digest)?
            || keyed_by(&tx.open_table(REFERRERS)?, id, digest)?
        {
            return Ok(false);
        }
        let tags = tags_of.remove(digest).unwrap_or_default();
        Ok(self
            .remove_manifest(tx, (name, repo), digest, Some(tags))?
            .is_some())
    }

    fn collect_link(
        &self,
        tx: &WriteTransaction,
        (name, repo): (&str, Repo),
        digest: &str,
        linked_by: u64,
    ) -> Result<bool, StoreError> {
        let id = repo.id;
        let mut links = tx.open_table(LINKS)?;
        match links.get((id, digest))?.map(|v| v.value().1) {
            Some(at) if at <= linked_by => {}
            _ => return Ok(false),
        }
        if keyed_by(&tx.open_table(REFS)?, id, digest)? {
            return Ok(false);
        }
        links.remove((id, digest))?;
        drop(links);
        self.unlinked(tx, (name, repo), digest, true)?;
        Ok(true)
    }
}

/// Tags of repository id `id` by the manifest they point at.
fn tags_by_manifest(
    tx: &WriteTransaction,
    id: u64,
) -> Result<HashMap<String, Vec<String>>, StoreError> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for row in tx
        .open_table(TAGS)?
        .range::<(u64, &str)>((id, "")..(id + 1, ""))?
    {
        let (k, v) = row?;
        out.entry(v.value().to_owned())
            .or_default()
            .push(k.value().1.to_owned());
    }
    Ok(out)
}

/// Removes repository `name` if nothing at all refers to it any more.
fn collect_repo(tx: &WriteTransaction, name: &str, repo: Repo) -> Result<bool, StoreError> {
    let id = repo.id;
    if has_rows(tx, LINKS, id)?
        || has_rows(tx, TAGS, id)?
        || has_rows(tx, MANIFESTS, id)?
        || has_rows(tx, PUSHED, id)?
    {
        return Ok(false);
    }
    let referrers = tx.open_table(REFERRERS)?;
    let mut range = referrers.range::<(u64, &str, &str)>((id, "", "")..(id + 1, "", ""))?;
    if range.next().is_some() {
        return Ok(false);
    }
    drop(range);
    for row in tx.open_table(UPLOADS)?.iter()? {
        if row?.1.value().0 == name {
            return Ok(false);
        }
    }
    tx.open_table(REPOS)?.remove(name)?;
    super::audit::drop_pulls(tx, name)?;
    Ok(true)
}

/// Whether `table` has a row of repository id `id`.
fn has_rows<V: redb::Value + 'static>(
    tx: &WriteTransaction,
    table: redb::TableDefinition<(u64, &'static str), V>,
    id: u64,
) -> Result<bool, StoreError> {
    let table = tx.open_table(table)?;
    let found = table
        .range::<(u64, &str)>((id, "")..(id + 1, ""))?
        .next()
        .is_some();
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::digest::Digest;
    use crate::storage::NewManifest;

    fn manifest<'a>(
        body: &'a [u8],
        digest: &'a Digest,
        children: Vec<(&'a Digest, u64)>,
        tags: &'a [String],
    ) -> NewManifest<'a> {
        NewManifest {
            digest,
            media_type: "application/vnd.oci.image.index.v1+json",
            body,
            blobs: Vec::new(),
            children,
            tags,
            referrer: None,
            lazy: false,
            immutable: None,
        }
    }

    /// A pass planned an untagged index and its child; the index is tagged before the
    /// deletions run: both stay (the index's deletion is skipped first, so its row still
    /// lists the child when the child's turn comes).
    #[test]
    fn what_a_skipped_index_lists_stays() {
        let dir = std::env::temp_dir().join(format!("outpost-gc-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let s = crate::storage::test_store(&dir);
        let child = br#"{"schemaVersion":2,"manifests":[]}"#;
        let child_d = Digest::sha256_of(child);
        s.manifest_put("r", &manifest(child, &child_d, Vec::new(), &[]))
            .unwrap();
        let index = format!(
            r#"{{"schemaVersion":2,"manifests":[{{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"{child_d}","size":{}}}]}}"#,
            child.len()
        );
        let index_d = Digest::sha256_of(index.as_bytes());
        let children = vec![(&child_d, child.len() as u64)];
        s.manifest_put(
            "r",
            &manifest(index.as_bytes(), &index_d, children.clone(), &[]),
        )
        .unwrap();
        let id = s.gc_snapshot().unwrap().repos[0].id;
        // The tag arrives after the plan.
        let tags = ["keep".to_owned()];
        s.manifest_put("r", &manifest(index.as_bytes(), &index_d, children, &tags))
            .unwrap();
        let step = |d: &Digest| Step::Manifest {
            digest: d.to_string(),
            tags: Vec::new(),
        };
        let steps = [step(&index_d), step(&child_d)];
        let mut held = Held::default();
        let done = s
            .gc_apply("r", id, &steps, Duration::from_secs(1), &mut held)
            .unwrap();
        assert_eq!(done, vec![false, false]);
        assert!(s.manifest_by_digest("r", &child_d).is_ok());
        assert_eq!(s.check().unwrap(), Vec::<String>::new());
        // Untagged again, the same plan deletes both, the index first.
        s.tag_delete("r", "keep").unwrap();
        let done = s
            .gc_apply("r", id, &steps, Duration::from_secs(1), &mut held)
            .unwrap();
        assert_eq!(done, vec![true, true]);
        assert_eq!(s.check().unwrap(), Vec::<String>::new());
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
