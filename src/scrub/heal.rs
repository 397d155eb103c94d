//! Self-healing: a quarantined blob that a configured mirror or pull-through upstream can
//! provide is fetched again, verified and put back in place of the damaged copy.

use crate::config::MirrorConfig;
use crate::digest::{Digest, Hasher};
use crate::mirror::remote::Remote;
use crate::storage::Store;
use serde_json::{json, Value};
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};

/// An upstream that may hold a repository's blobs.
struct Source {
    mirror: String,
    /// `pullThrough` prefix: `PREFIX/x` is `x` upstream.
    prefix: Option<String>,
    /// Synced repositories (stored under the same names).
    repositories: Vec<String>,
    remote: Remote,
}

impl Source {
    /// The upstream name of local repository `repo`, if this source provides it.
    fn upstream_repo(&self, repo: &str) -> Option<String> {
        if let Some(rest) = self
            .prefix
            .as_deref()
            .and_then(|p| repo.strip_prefix(p)?.strip_prefix('/'))
        {
            return Some(rest.to_owned());
        }
        self.repositories
            .iter()
            .any(|r| r == repo)
            .then(|| repo.to_owned())
    }
}

/// The configured mirrors, as sources of blobs to heal.
pub struct Healer {
    sources: Vec<Source>,
}

impl Healer {
    /// Sources from the `mirrors` config (those whose credentials cannot be read are left
    /// out, with a log line).
    pub fn new(mirrors: &[MirrorConfig]) -> Healer {
        let mut sources = Vec::new();
        for m in mirrors {
            match m
                .credentials()
                .and_then(|c| Remote::new(&m.upstream, c, m.ca_file.as_deref()))
            {
                Ok(remote) => sources.push(Source {
                    mirror: m.name.clone(),
                    prefix: m.pull_through.clone(),
                    repositories: m.repositories.clone(),
                    remote,
                }),
                Err(e) => log::warn!("mirror {}: cannot heal from it: {e}", m.name),
            }
        }
        Healer { sources }
    }

    /// Tries to heal every quarantined blob; returns those healed (digest, repository,
    /// mirror). Failures are logged and the blob stays quarantined.
    pub fn heal_all(&self, store: &Store, stop: &AtomicBool) -> Vec<Value> {
        if self.sources.is_empty() {
            return Vec::new();
        }
        let bad = match store.quarantined() {
            Ok(b) => b,
            Err(e) => {
                log::warn!("scrub: listing the quarantine: {e}");
                return Vec::new();
            }
        };
        let mut healed = Vec::new();
        'blobs: for b in bad.iter().filter(|b| !b.manifest) {
            let Ok(digest) = Digest::parse(&b.digest) else {
                continue;
            };
            for (repo, _, _) in &b.repositories {
                for s in &self.sources {
                    if stop.load(Ordering::Relaxed) {
                        return healed;
                    }
                    let Some(upstream) = s.upstream_repo(repo) else {
                        continue;
                    };
                    match fetch(store, s, repo, &upstream, &digest, stop) {
                        Ok(size) => {
                            log::warn!(
                                "scrub: healed blob {digest} ({size} bytes) of {repo} from \
                                 mirror {} ({}/{upstream})",
                                s.mirror,
                                s.remote.base()
                            );
                            healed.push(json!({"digest": b.digest, "repository": repo,
                                "mirror": s.mirror, "bytes": size}));
                            continue 'blobs;
                        }
                        Err(e) => log::warn!(
                            "scrub: cannot heal blob {digest} of {repo} from mirror {}: {e}",
                            s.mirror
                        ),
                    }
                }
            }
        }
        healed
    }
}

/// Fetches blob `digest` of `upstream` from `s` into a new upload session of `repo` and
/// commits it if its digest verifies (the finish replaces the quarantined copy); returns
/// its size.
fn fetch(
    store: &Store,
    s: &Source,
    repo: &str,
    upstream: &str,
    digest: &Digest,
    stop: &AtomicBool,
) -> Result<u64, String> {
    let (resp, _) = s
        .remote
        .blob_response(upstream, digest, 0)
        .map_err(|e| e.message)?;
    let mut body = resp.into_body().into_reader();
    let upload = store.upload_create(repo).map_err(|e| e.to_string())?;
    let mut hasher = Hasher::new(digest.algorithm());
    let mut buf = vec![0u8; store.chunk_payload()];
    let mut at = 0u64;
    let copied = loop {
        if stop.load(Ordering::Relaxed) {
            break Err("stopping".to_owned());
        }
        let n = match crate::mirror::fill(&mut body as &mut dyn Read, &mut buf) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(format!("reading from the upstream: {e}")),
        };
        hasher.update(&buf[..n]);
        if let Err(e) = store.upload_append(repo, &upload, at, &buf[..n]) {
            break Err(e.to_string());
        }
        at += n as u64;
    };
    let verified = copied.and_then(|()| {
        let got = hasher.finish();
        if got != *digest {
            return Err(format!("the upstream's copy hashes to {got}"));
        }
        store
            .upload_finish(repo, &upload, digest, at)
            .map_err(|e| e.to_string())
    });
    match verified {
        Ok(_) => Ok(at),
        Err(e) => {
            let _ = store.upload_cancel(repo, &upload);
            Err(e)
        }
    }
}
