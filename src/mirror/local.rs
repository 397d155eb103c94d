//! The store as a mirroring source (export) and sink (import, sync, pull-through).

use super::{fill, BlobReader, Fetched, MirrorError, Result, Sink, Source};
use crate::digest::{Digest, Hasher};
use crate::registry::manifest::Manifest;
use crate::registry::Reference;
use crate::storage::{BlobInfo, MountFrom, NewManifest, Store, StoreError};
use std::collections::HashMap;
use std::io::Read;

/// Reads images out of a store.
pub struct LocalSource<'s>(pub &'s Store);

impl Source for LocalSource<'_> {
    fn manifest(&self, repo: &str, reference: &str, _hint: Option<&str>) -> Result<Fetched> {
        let r = Reference::parse(reference)
            .map_err(|_| MirrorError::new(format!("{reference:?} is not a tag or digest")))?;
        let m = match &r {
            Reference::Tag(t) => self.0.manifest_by_tag(repo, t),
            Reference::Digest(d) => self.0.manifest_by_digest(repo, d),
        }
        .map_err(|e| match e {
            StoreError::ManifestUnknown | StoreError::RepoUnknown => {
                MirrorError::new(format!("{repo}: no manifest {reference}"))
            }
            e => e.into(),
        })?;
        let wanted = match &r {
            Reference::Digest(d) => Some(d),
            Reference::Tag(_) => None,
        };
        Fetched::verified(m.media_type, m.body, wanted, repo)
    }

    fn blob(&self, repo: &str, digest: &Digest, size: u64, offset: u64) -> Result<BlobReader<'_>> {
        let blob = self.0.linked_blob(repo, digest)?;
        if blob.size != size {
            return Err(MirrorError::integrity(format!(
                "blob {digest}: stored with {} bytes, its descriptor says {size}",
                blob.size
            )));
        }
        Ok(Box::new(StoredReader {
            store: self.0,
            blob,
            at: offset,
            buf: Vec::new(),
            pos: 0,
            hint: crate::storage::ChunkHint::default(),
        }))
    }
}

impl LocalSource<'_> {
    /// Every tag of `repo`.
    pub fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        loop {
            let (page, more) = self.0.tags(repo, out.last().map(String::as_str), 1000)?;
            out.extend(page);
            if !more {
                return Ok(out);
            }
        }
    }
}

/// A stored blob, read a chunk at a time.
struct StoredReader<'s> {
    store: &'s Store,
    blob: BlobInfo,
    at: u64,
    buf: Vec<u8>,
    pos: usize,
    hint: crate::storage::ChunkHint,
}

impl Read for StoredReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.pos == self.buf.len() {
            if self.at >= self.blob.size {
                return Ok(0);
            }
            let step = self.store.chunk_payload();
            self.store
                .read_blob_on(self.blob, self.at, step, &mut self.buf, &mut self.hint)
                .map_err(std::io::Error::other)?;
            if self.buf.is_empty() {
                return Err(std::io::Error::other("stored blob ended early"));
            }
            self.at += self.buf.len() as u64;
            self.pos = 0;
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Writes images into a store. Keeps the upload sessions of transfers that broke off, so
/// that the next attempt continues them (`partials`).
pub struct LocalSink<'s> {
    store: &'s Store,
    /// digest -> (repository, upload session id) of interrupted transfers.
    pub partials: HashMap<String, (String, String)>,
    /// Manifests may reference blobs not yet stored (a pull-through cache fills them later).
    lazy: bool,
}

impl<'s> LocalSink<'s> {
    /// A sink into `store`.
    pub fn new(store: &'s Store) -> LocalSink<'s> {
        LocalSink {
            store,
            partials: HashMap::new(),
            lazy: false,
        }
    }

    /// A sink that stores manifests before their blobs (pull-through caches).
    pub fn lazy(store: &'s Store) -> LocalSink<'s> {
        LocalSink {
            lazy: true,
            ..LocalSink::new(store)
        }
    }

    /// Where an earlier transfer of `digest` into `repo` stopped: (session, bytes, hasher).
    fn resume(&mut self, repo: &str, digest: &Digest) -> Option<(String, u64, Hasher)> {
        let (r, id) = self.partials.remove(digest.as_str())?;
        if r != repo {
            let _ = self.store.upload_cancel(&r, &id);
            return None;
        }
        let up = self.store.upload(repo, &id).ok()?;
        let mut hasher = Hasher::new(digest.algorithm());
        self.store.hash_into(up.content(), &mut hasher).ok()?;
        Some((id, up.received, hasher))
    }
}

impl Sink for LocalSink<'_> {
    fn has_blob(&mut self, repo: &str, digest: &Digest, _size: u64) -> Result<bool> {
        match self.store.linked_blob(repo, digest) {
            Ok(_) => return Ok(true),
            Err(StoreError::BlobUnknown | StoreError::RepoUnknown) => {}
            Err(e) => return Err(e.into()),
        }
        // Stored for another repository of the same key: link it, no data written.
        Ok(self
            .store
            .mount(repo, MountFrom::Any, digest, &|_| true)?
            .is_ok())
    }

    fn put_blob<'a>(
        &mut self,
        repo: &str,
        digest: &Digest,
        size: u64,
        open: &mut dyn FnMut(u64) -> Result<BlobReader<'a>>,
    ) -> Result<()> {
        // A quota this blob would pass refuses it before anything is fetched.
        self.store.quota_room(repo, Some(digest), size)?;
        let (id, mut at, mut hasher) = match self.resume(repo, digest) {
            Some(r) if r.1 <= size => r,
            _ => (
                self.store.upload_create(repo)?,
                0,
                Hasher::new(digest.algorithm()),
            ),
        };
        let step = self.store.chunk_payload();
        let mut buf = vec![0u8; step];
        let result = (|| -> Result<()> {
            let mut r = open(at)?;
            loop {
                let n = fill(&mut r, &mut buf).map_err(|e| {
                    MirrorError::new(format!("blob {digest}: transfer broke off at {at}: {e}"))
                })?;
                if n == 0 {
                    break;
                }
                if at + n as u64 > size {
                    return Err(MirrorError::integrity(format!(
                        "blob {digest}: longer than its {size} bytes: refused"
                    )));
                }
                at = self.store.upload_append(repo, &id, at, &buf[..n])?;
                hasher.update(&buf[..n]);
            }
            Ok(())
        })();
        if let Err(e) = result {
            if e.integrity {
                let _ = self.store.upload_cancel(repo, &id);
            } else {
                self.partials
                    .insert(digest.to_string(), (repo.to_owned(), id));
            }
            return Err(e);
        }
        if at != size {
            // Short: the source ended early; keep what came for the next attempt.
            self.partials
                .insert(digest.to_string(), (repo.to_owned(), id));
            return Err(MirrorError::new(format!(
                "blob {digest}: the source ended at byte {at} of {size}"
            )));
        }
        let got = hasher.finish();
        if got != *digest {
            let _ = self.store.upload_cancel(repo, &id);
            return Err(MirrorError::integrity(format!(
                "blob {digest}: content has digest {got}: refused (tampered or corrupt)"
            )));
        }
        // Refused at the finish (a quota filled meanwhile): the session goes with it, or
        // every pass would leave another copy behind.
        self.store
            .upload_finish(repo, &id, digest, size)
            .inspect_err(|_| {
                let _ = self.store.upload_cancel(repo, &id);
            })?;
        Ok(())
    }

    fn has_manifest(&mut self, repo: &str, digest: &Digest) -> Result<bool> {
        match self.store.manifest_by_digest(repo, digest) {
            Ok(_) => Ok(true),
            Err(StoreError::ManifestUnknown | StoreError::RepoUnknown) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn put_manifest(&mut self, repo: &str, m: &Fetched, tag: Option<&str>) -> Result<()> {
        let parsed = Manifest::parse(Some(&m.media_type), &m.body)
            .map_err(|e| MirrorError::integrity(format!("manifest {}: {e:?}", m.digest)))?;
        let tags: Vec<String> = tag.into_iter().map(str::to_owned).collect();
        self.store.manifest_put(
            repo,
            &NewManifest::of(&parsed, &m.digest, &m.body, &tags, self.lazy),
        )?;
        Ok(())
    }

    fn forget_blob(&mut self, repo: &str, digest: &Digest) {
        let _ = self.store.unlink_blob(repo, digest);
    }
}
