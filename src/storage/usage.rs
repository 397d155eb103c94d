//! Space: what each repository links, holds alone and shares; what the file holds against
//! what is live; compaction of a stopped store.

use super::schema::{BLOBS, LINKS, MANIFESTS, REPOS, UPLOADS};
use super::{Store, StoreError};
use redb::ReadableTable;
use serde_json::{json, Value};
use std::collections::HashMap;

impl Store {
    /// Space per repository and for the store, from one snapshot, as JSON (what `outpost du`
    /// and `/admin/du` show). A blob counts fully for every repository that links it
    /// (`linkedBytes`); `exclusiveBytes` are those of blobs no other repository of its
    /// encryption domain links (what deleting the repository frees), the rest is `sharedBytes`.
    pub fn usage(&self) -> Result<Value, StoreError> {
        let tx = self.read()?;
        let mut repos: Vec<(String, u64, u64)> = Vec::new();
        let mut index = HashMap::new();
        for row in tx.open_table(REPOS)?.iter()? {
            let (name, v) = row?;
            let (id, domain) = v.value();
            index.insert(id, repos.len());
            repos.push((name.value().to_owned(), id, domain));
        }
        let blobs = tx.open_table(BLOBS)?;
        // Per repository: links, linked bytes, exclusive bytes, manifests, manifest bytes.
        let mut per = vec![[0u64; 5]; repos.len()];
        let mut linkers: HashMap<(u64, String), Vec<usize>> = HashMap::new();
        let mut sizes: HashMap<(u64, String), u64> = HashMap::new();
        for row in tx.open_table(LINKS)?.iter()? {
            let (k, _) = row?;
            let (repo, digest) = k.value();
            let Some(&i) = index.get(&repo) else { continue };
            let domain = repos[i].2;
            let size = blobs.get((domain, digest))?.map_or(0, |v| v.value().1);
            per[i][0] += 1;
            per[i][1] += size;
            let key = (domain, digest.to_owned());
            sizes.insert(key.clone(), size);
            linkers.entry(key).or_default().push(i);
        }
        for (key, by) in &linkers {
            if let [only] = by[..] {
                per[only][2] += sizes[key];
            }
        }
        let mut manifest_bytes = 0u64;
        for row in tx.open_table(MANIFESTS)?.iter()? {
            let (k, v) = row?;
            let n = v.value().len() as u64;
            manifest_bytes += n;
            if let Some(&i) = index.get(&k.value().0) {
                per[i][3] += 1;
                per[i][4] += n;
            }
        }
        let (mut blob_count, mut blob_bytes) = (0u64, 0u64);
        for row in blobs.iter()? {
            blob_count += 1;
            blob_bytes += row?.1.value().1;
        }
        let mut upload_bytes = 0u64;
        for row in tx.open_table(UPLOADS)?.iter()? {
            upload_bytes += row?.1.value().3;
        }
        let file_bytes = std::fs::metadata(self.handle.path()).map_or(0, |m| m.len());
        let live = blob_bytes + manifest_bytes + upload_bytes;
        let list: Vec<Value> = repos
            .iter()
            .zip(&per)
            .map(|((name, _, domain), p)| {
                json!({
                    "name": name,
                    "key": self.key_name(*domain),
                    "blobLinks": p[0],
                    "linkedBytes": p[1] + p[4],
                    "exclusiveBytes": p[2] + p[4],
                    "sharedBytes": p[1] - p[2],
                    "manifests": p[3],
                })
            })
            .collect();
        let linked: u64 = per.iter().map(|p| p[1]).sum();
        Ok(json!({
            "repositories": list,
            "quotas": self.quota_usage()?,
            "store": {
                "repositories": repos.len(),
                "blobs": blob_count,
                "blobBytes": blob_bytes,
                "manifestBytes": manifest_bytes,
                "uploadBytes": upload_bytes,
                "dedupedBytes": linked.saturating_sub(blob_bytes),
                "liveBytes": live,
                "fileBytes": file_bytes,
                "overheadBytes": file_bytes.saturating_sub(live),
            }
        }))
    }

    /// Gives the file's free pages back to the filesystem (the store must be open by this
    /// process alone). Returns the file's size before and after.
    pub fn compact(&self) -> Result<(u64, u64), StoreError> {
        let size = || std::fs::metadata(self.handle.path()).map_or(0, |m| m.len());
        let before = size();
        // redb compacts only with every earlier commit processed: two durable commits first.
        for _ in 0..2 {
            self.write(true)?.commit()?;
        }
        while self.handle.compact()? {}
        Ok((before, size()))
    }
}
