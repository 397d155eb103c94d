//! Mirroring: copying images between the store, upstream registries and OCI layouts.
//!
//! One engine (`copy_image`) moves an image from a `Source` to a `Sink`: export is the store
//! (or a running registry) into a layout, import is a layout into the store (or a running
//! registry), sync is an upstream registry into the store. Manifests are fetched first and
//! filtered by platform; then every blob the sink lacks is streamed across, its digest
//! verified on the way; manifests are stored last, children before parents.

pub mod archive;
pub mod cache;
pub mod cache_config;
mod evict;
pub mod layout;
pub mod local;
pub mod progress;
pub mod remote;
pub mod sync;
mod tar;

use crate::digest::Digest;
use crate::registry::manifest::{Manifest, DOCKER_LIST, OCI_INDEX};
use serde_json::Value;
use std::fmt;
use std::io::Read;

/// Why a mirroring operation failed; the message names what and why.
#[derive(Debug)]
pub struct MirrorError {
    /// What went wrong, for an operator.
    pub message: String,
    /// Content failed verification (tampered or corrupt), as opposed to a transfer failure.
    pub integrity: bool,
    /// The HTTP status a registry answered with, if it answered at all.
    pub status: Option<u16>,
}

impl MirrorError {
    /// A failure that a retry may cure (network, upstream, store).
    pub fn new(message: impl Into<String>) -> MirrorError {
        MirrorError {
            message: message.into(),
            integrity: false,
            status: None,
        }
    }

    /// Content that does not match its digest or size.
    pub fn integrity(message: impl Into<String>) -> MirrorError {
        MirrorError {
            message: message.into(),
            integrity: true,
            status: None,
        }
    }

    /// The same error with `context: ` in front.
    pub fn context(self, context: impl fmt::Display) -> MirrorError {
        MirrorError {
            message: format!("{context}: {}", self.message),
            ..self
        }
    }
}

impl fmt::Display for MirrorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<crate::storage::StoreError> for MirrorError {
    fn from(e: crate::storage::StoreError) -> Self {
        MirrorError::new(format!("store: {e}"))
    }
}

/// Results of this layer.
pub type Result<T, E = MirrorError> = std::result::Result<T, E>;

/// A manifest as fetched, with the digest of its exact bytes.
#[derive(Clone, Debug)]
pub struct Fetched {
    /// Its media type.
    pub media_type: String,
    /// sha256 of `body` (or the digest it was asked for, verified).
    pub digest: Digest,
    /// The exact bytes.
    pub body: Vec<u8>,
}

impl Fetched {
    /// Checks `body` against `wanted` (a digest reference) and wraps it.
    pub fn verified(
        media_type: String,
        body: Vec<u8>,
        wanted: Option<&Digest>,
        what: &str,
    ) -> Result<Fetched> {
        let digest = match wanted {
            Some(w) => {
                let got = w.rehash(&body);
                if got != *w {
                    return Err(MirrorError::integrity(format!(
                        "{what}: manifest {w} has digest {got}: refused"
                    )));
                }
                got
            }
            None => Digest::sha256_of(&body),
        };
        Ok(Fetched {
            media_type,
            digest,
            body,
        })
    }
}

/// A blob reader opened at an offset.
pub type BlobReader<'a> = Box<dyn Read + 'a>;

/// Where images are read from.
pub trait Source {
    /// The manifest `reference` (tag or digest) of `repo`; `hint` is the media type its
    /// parent's descriptor gave, for sources that do not keep one.
    fn manifest(&self, repo: &str, reference: &str, hint: Option<&str>) -> Result<Fetched>;
    /// Blob `digest` (`size` bytes) of `repo`, from byte `offset`.
    fn blob(&self, repo: &str, digest: &Digest, size: u64, offset: u64) -> Result<BlobReader<'_>>;
}

/// Where images are written.
pub trait Sink {
    /// True if `repo` holds blob `digest` now, linking it from elsewhere in the same store
    /// if it can (no data moves).
    fn has_blob(&mut self, repo: &str, digest: &Digest, size: u64) -> Result<bool>;
    /// Stores blob `digest` of `size` bytes into `repo`, reading it through `open(offset)`
    /// (a sink that kept part of an interrupted transfer asks for the rest only). The digest
    /// is verified before the blob is committed.
    fn put_blob<'s>(
        &mut self,
        repo: &str,
        digest: &Digest,
        size: u64,
        open: &mut dyn FnMut(u64) -> Result<BlobReader<'s>>,
    ) -> Result<()>;
    /// True if `repo` holds manifest `digest`.
    fn has_manifest(&mut self, repo: &str, digest: &Digest) -> Result<bool>;
    /// Stores a manifest whose references are all present, tagged `tag` if given.
    fn put_manifest(&mut self, repo: &str, m: &Fetched, tag: Option<&str>) -> Result<()>;
    /// Undoes `put_blob` of this run (best effort): the image it belonged to failed.
    fn forget_blob(&mut self, _repo: &str, _digest: &Digest) {}
}

/// `os/architecture[/variant]`, e.g. `linux/arm/v7`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Platform {
    os: String,
    architecture: String,
    variant: Option<String>,
}

impl Platform {
    /// Parses `linux/arm64` or `linux/arm/v7`.
    pub fn parse(s: &str) -> Result<Platform, String> {
        let parts: Vec<&str> = s.trim().split('/').collect();
        let ok = |p: &&str| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        };
        if !(2..=3).contains(&parts.len()) || !parts.iter().all(ok) {
            return Err(format!(
                "platform {s:?}: write OS/ARCH or OS/ARCH/VARIANT, e.g. linux/arm64 or linux/arm/v7"
            ));
        }
        Ok(Platform {
            os: parts[0].to_owned(),
            architecture: parts[1].to_owned(),
            variant: parts.get(2).map(|v| (*v).to_owned()),
        })
    }

    /// Parses a comma-separated list.
    pub fn parse_list(s: &str) -> Result<Vec<Platform>, String> {
        s.split(',')
            .filter(|p| !p.trim().is_empty())
            .map(Platform::parse)
            .collect()
    }

    /// The platform of an index entry, if it names one.
    fn of_descriptor(d: &Value) -> Option<Platform> {
        let p = d.get("platform")?;
        Some(Platform {
            os: p.get("os")?.as_str()?.to_owned(),
            architecture: p.get("architecture")?.as_str()?.to_owned(),
            variant: p.get("variant").and_then(Value::as_str).map(str::to_owned),
        })
    }

    /// True if `self` (a filter) accepts `other`: a filter without a variant takes any.
    fn accepts(&self, other: &Platform) -> bool {
        self.os == other.os
            && self.architecture == other.architecture
            && (self.variant.is_none() || self.variant == other.variant)
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// What one `copy_image` did.
#[derive(Clone, Debug, Default)]
pub struct Copied {
    /// The top manifest as stored (a rewritten index if platforms were dropped).
    pub top: Option<Fetched>,
    /// Blobs transferred / already present.
    pub blobs_copied: u64,
    /// Blobs the sink had (or linked from elsewhere).
    pub blobs_present: u64,
    /// Blob bytes transferred.
    pub bytes_copied: u64,
    /// Bytes of the image's blobs, transferred or not.
    pub bytes_total: u64,
}

/// A planned copy: manifests children-first, then the blobs they need.
struct Plan {
    manifests: Vec<Fetched>,
    blobs: Vec<(Digest, u64)>,
}

/// Is `m` an index (by media type or shape)?
pub fn is_index(m: &Fetched) -> bool {
    m.media_type == OCI_INDEX
        || m.media_type == DOCKER_LIST
        || serde_json::from_slice::<Value>(&m.body)
            .ok()
            .is_some_and(|v| v.get("manifests").is_some())
}

/// Fetches `top` and what it references, dropping index entries of other platforms than
/// `platforms` (None: keep all) and rewriting such indexes.
fn plan(
    src: &dyn Source,
    repo: &str,
    top: Fetched,
    platforms: Option<&[Platform]>,
    what: &str,
) -> Result<Plan> {
    let mut plan = Plan {
        manifests: Vec::new(),
        blobs: Vec::new(),
    };
    walk(src, repo, top, platforms, what, &mut plan, 0)?;
    Ok(plan)
}

fn walk(
    src: &dyn Source,
    repo: &str,
    m: Fetched,
    platforms: Option<&[Platform]>,
    what: &str,
    plan: &mut Plan,
    depth: u32,
) -> Result<()> {
    if depth > 4 {
        return Err(MirrorError::new(format!("{what}: indexes nested too deep")));
    }
    let parsed = Manifest::parse(Some(&m.media_type), &m.body)
        .map_err(|e| MirrorError::integrity(format!("{what}: manifest {}: {e:?}", m.digest)))?;
    if !is_index(&m) {
        for b in &parsed.blobs {
            if !plan.blobs.iter().any(|(d, _)| *d == b.digest) {
                plan.blobs.push((b.digest.clone(), b.size));
            }
        }
        plan.manifests.push(m);
        return Ok(());
    }
    let mut json: Value = serde_json::from_slice(&m.body)
        .map_err(|e| MirrorError::integrity(format!("{what}: index {}: {e}", m.digest)))?;
    let entries = json["manifests"].as_array().cloned().unwrap_or_default();
    let mut kept = Vec::new();
    let mut seen = Vec::new();
    for entry in entries {
        let platform = Platform::of_descriptor(&entry);
        if let Some(p) = &platform {
            seen.push(p.to_string());
        }
        let wanted = match (platforms, &platform) {
            (None, _) => true,
            (Some(filter), Some(p)) => filter.iter().any(|f| f.accepts(p)),
            // Entries without a platform (attestations, nested indexes) go with a filter.
            (Some(_), None) => false,
        };
        if !wanted {
            continue;
        }
        let digest = entry["digest"]
            .as_str()
            .and_then(|d| Digest::parse(d).ok())
            .ok_or_else(|| MirrorError::integrity(format!("{what}: index entry without digest")))?;
        let size = entry["size"].as_u64().unwrap_or(0);
        let hint = entry["mediaType"].as_str().map(str::to_owned);
        let child = src
            .manifest(repo, digest.as_str(), hint.as_deref())
            .map_err(|e| e.context(what))?;
        if child.digest != digest || child.body.len() as u64 != size {
            return Err(MirrorError::integrity(format!(
                "{what}: manifest {digest} does not match its index entry (size {size}, got {} \
                 bytes with digest {})",
                child.body.len(),
                child.digest
            )));
        }
        walk(src, repo, child, platforms, what, plan, depth + 1)?;
        kept.push(entry);
    }
    let total = json["manifests"].as_array().map_or(0, Vec::len);
    if kept.is_empty() && total > 0 {
        return Err(MirrorError::new(format!(
            "{what}: no manifest matches platform {} (it has {})",
            platforms
                .unwrap_or_default()
                .iter()
                .map(|p| p.to_string())
                .collect::<Vec<_>>()
                .join(","),
            if seen.is_empty() {
                "none named".to_owned()
            } else {
                seen.join(", ")
            }
        )));
    }
    if kept.len() == total {
        plan.manifests.push(m);
    } else {
        json["manifests"] = Value::Array(kept);
        let body = serde_json::to_vec(&json).expect("JSON values serialize");
        plan.manifests.push(Fetched {
            media_type: m.media_type,
            digest: Digest::sha256_of(&body),
            body,
        });
    }
    Ok(())
}

/// Copies image `reference` of `src_repo` from `src` into `dst_repo` of `sink`, tagged
/// `tag` if given. Only blobs the sink lacks are read. If a blob fails verification, blobs
/// this call stored are taken back and no manifest is stored: nothing of the image shows.
#[allow(clippy::too_many_arguments)]
pub fn copy_image(
    src: &dyn Source,
    src_repo: &str,
    reference: &str,
    sink: &mut dyn Sink,
    dst_repo: &str,
    tag: Option<&str>,
    platforms: Option<&[Platform]>,
    progress: &mut progress::Progress,
) -> Result<Copied> {
    let what = match tag {
        Some(t) => format!("{dst_repo}:{t}"),
        None if reference.contains(':') => format!("{dst_repo}@{reference}"),
        None => format!("{dst_repo}:{reference}"),
    };
    let top = src
        .manifest(src_repo, reference, None)
        .map_err(|e| e.context(&what))?;
    let plan = plan(src, src_repo, top, platforms, &what)?;
    let mut copied = Copied {
        bytes_total: plan.blobs.iter().map(|b| b.1).sum(),
        ..Copied::default()
    };
    progress.add_total(plan.blobs.len() as u64, copied.bytes_total);
    let mut stored: Vec<&Digest> = Vec::new();
    for (digest, size) in &plan.blobs {
        if sink.has_blob(dst_repo, digest, *size)? {
            copied.blobs_present += 1;
            progress.skipped(*size);
            continue;
        }
        let counter = progress.clone();
        let mut open = |offset: u64| -> Result<BlobReader<'_>> {
            Ok(counter.wrap(src.blob(src_repo, digest, *size, offset)?))
        };
        if let Err(e) = sink.put_blob(dst_repo, digest, *size, &mut open) {
            if e.integrity {
                for d in stored {
                    sink.forget_blob(dst_repo, d);
                }
            }
            return Err(e.context(&what));
        }
        stored.push(digest);
        copied.blobs_copied += 1;
        copied.bytes_copied += size;
        progress.blob_done();
    }
    let last = plan.manifests.len() - 1;
    for (i, m) in plan.manifests.iter().enumerate() {
        if i == last {
            sink.put_manifest(dst_repo, m, tag)
                .map_err(|e| e.context(&what))?;
            copied.top = Some(m.clone());
        } else if !sink.has_manifest(dst_repo, &m.digest)? {
            sink.put_manifest(dst_repo, m, None)
                .map_err(|e| e.context(&what))?;
        }
    }
    Ok(copied)
}

/// Reads into `buf` until it is full or the reader ends; returns the bytes read.
pub fn fill(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// `repo`, `repo:tag` or `repo@digest`, as named on a command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageName {
    /// Repository.
    pub repo: String,
    /// Tag or digest; None: every tag.
    pub reference: Option<String>,
}

impl ImageName {
    /// Parses and validates `repo[:tag|@digest]`.
    pub fn parse(s: &str) -> Result<ImageName, String> {
        let bad = |why: &str| format!("{s:?}: {why} (write REPO, REPO:TAG or REPO@sha256:...)");
        let (repo, reference) = if let Some((r, d)) = s.split_once('@') {
            Digest::parse(d).map_err(|e| bad(&e.to_string()))?;
            (r, Some(d.to_owned()))
        } else {
            match s.rsplit_once(':') {
                Some((r, t)) if !t.contains('/') => {
                    if !crate::registry::names::valid_tag(t) {
                        return Err(bad("invalid tag"));
                    }
                    (r, Some(t.to_owned()))
                }
                _ => (s, None),
            }
        };
        if !crate::registry::names::valid_name(repo) {
            return Err(bad("invalid repository name"));
        }
        Ok(ImageName {
            repo: repo.to_owned(),
            reference,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn platforms_and_names() {
        let f = Platform::parse_list("linux/arm64, linux/arm/v7").unwrap();
        let arm64v8 = Platform::parse("linux/arm64/v8").unwrap();
        assert!(f[0].accepts(&arm64v8));
        assert!(!f[1].accepts(&Platform::parse("linux/arm/v6").unwrap()));
        assert!(Platform::parse("linux").is_err());
        assert!(Platform::parse("linux/arm/v7/x").is_err());
        assert!(Platform::parse("linux/a b").is_err());
        assert_eq!(
            ImageName::parse("a/b:v1").unwrap(),
            ImageName {
                repo: "a/b".into(),
                reference: Some("v1".into())
            }
        );
        assert_eq!(ImageName::parse("a/b").unwrap().reference, None);
        assert!(ImageName::parse("A:v1").is_err());
        assert!(ImageName::parse("a@sha256:12").is_err());
    }
}
