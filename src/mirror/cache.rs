//! Pull-through caches: a repository prefix mapped to an upstream. A miss is fetched from
//! the upstream, stored and passed on to the client as it arrives; concurrent misses of one
//! blob fetch it once (the others wait, then read the store); when the upstream is down,
//! what is cached keeps serving.

use super::local::LocalSink;
use super::remote::Remote;
use super::{MirrorError, Sink, Source};
use crate::config::MirrorConfig;
use crate::digest::{Digest, Hasher};
use crate::registry::Reference;
use crate::storage::{Store, StoreError};
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// The configured caches.
pub struct PullThrough {
    caches: Vec<Cache>,
    flights: Flights,
}

type Flights = Arc<Mutex<HashMap<String, Arc<Flight>>>>;

struct Cache {
    name: String,
    prefix: String,
    remote: Remote,
    /// After the upstream failed, tags are served from the cache without asking it until
    /// then: a dead upstream must not cost every pull a connect timeout.
    quiet_until: Mutex<Option<Instant>>,
}

/// How long a failed upstream is not asked about tags.
const QUIET: Duration = Duration::from_secs(30);

impl Cache {
    fn quiet(&self) -> bool {
        self.quiet_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|t| Instant::now() < t)
    }

    fn failed(&self) {
        *self.quiet_until.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + QUIET);
    }
}

#[derive(Default)]
struct Flight {
    done: Mutex<bool>,
    cv: Condvar,
}

/// Held by the request fetching a blob; waiters wake when it drops.
pub struct FlightGuard {
    owner: Flights,
    key: String,
    flight: Arc<Flight>,
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.owner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        *self.flight.done.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.flight.cv.notify_all();
    }
}

/// Which cache a repository belongs to, and its name upstream.
pub struct Route<'a> {
    cache: &'a Cache,
    /// The repository upstream.
    pub upstream_repo: String,
}

/// An upstream blob on its way into the store and to a client.
pub struct Relay {
    /// Upstream body.
    pub body: Box<dyn Read + Send>,
    /// Bytes it has.
    pub size: u64,
    /// Upload session in the store.
    pub upload: String,
    /// Local repository.
    pub repo: String,
    /// Its digest.
    pub digest: Digest,
    /// Which cache, for status.
    pub cache: String,
    _flight: FlightGuard,
}

impl PullThrough {
    /// The caches of `mirrors` entries with `pullThrough`.
    pub fn new(mirrors: &[MirrorConfig]) -> PullThrough {
        let mut caches = Vec::new();
        for m in mirrors {
            let Some(prefix) = &m.pull_through else {
                continue;
            };
            match m
                .credentials()
                .and_then(|c| Remote::new(&m.upstream, c, m.ca_file.as_deref()))
            {
                Ok(remote) => caches.push(Cache {
                    name: m.name.clone(),
                    prefix: prefix.clone(),
                    remote,
                    quiet_until: Mutex::default(),
                }),
                Err(e) => log::error!("mirror {}: pull-through cache off: {e}", m.name),
            }
        }
        PullThrough {
            caches,
            flights: Flights::default(),
        }
    }

    /// The cache serving `repo`, if any.
    pub fn route(&self, repo: &str) -> Option<Route<'_>> {
        self.caches.iter().find_map(|c| {
            let rest = repo.strip_prefix(&c.prefix)?.strip_prefix('/')?;
            Some(Route {
                cache: c,
                upstream_repo: rest.to_owned(),
            })
        })
    }

    /// Refreshes manifest `reference` of `repo` from the upstream: a tag is looked up each
    /// time (falling back to the cached one if the upstream fails), a digest only on a miss.
    /// Stores what it fetched; the caller then serves from the store.
    pub fn manifest(&self, store: &Store, route: &Route<'_>, repo: &str, reference: &str) {
        let c = route.cache;
        let cached = match Reference::parse(reference) {
            Ok(Reference::Digest(d)) => store.manifest_by_digest(repo, &d).is_ok(),
            Ok(Reference::Tag(t)) => c.quiet() && store.manifest_by_tag(repo, &t).is_ok(),
            Err(_) => return,
        };
        if cached {
            return;
        }
        let fetched = c.remote.manifest(&route.upstream_repo, reference, None);
        match fetched {
            Ok(f) => {
                let tag = match Reference::parse(reference) {
                    Ok(Reference::Tag(t)) => Some(t),
                    _ => None,
                };
                let unchanged = tag.as_ref().is_some_and(|t| {
                    store
                        .manifest_by_tag(repo, t)
                        .is_ok_and(|m| m.digest == f.digest.as_str())
                });
                if unchanged {
                    return;
                }
                let bytes = f.body.len() as u64;
                match LocalSink::lazy(store).put_manifest(repo, &f, tag.as_deref()) {
                    Ok(()) => super::sync::note_cache(store, &c.name, false, bytes, None),
                    Err(e) => log::warn!("cache {}: storing {repo}:{reference}: {e}", c.name),
                }
            }
            Err(e) => {
                // An answer (404, 401) means the upstream is there; no answer, it is not.
                if e.status.is_none() {
                    c.failed();
                }
                log::warn!("cache {}: {repo}:{reference} from upstream: {e}", c.name);
                let have = match Reference::parse(reference) {
                    Ok(Reference::Tag(t)) => store.manifest_by_tag(repo, &t).is_ok(),
                    _ => false,
                };
                super::sync::note_cache(store, &c.name, have, 0, Some(&e.message));
            }
        }
    }

    /// A blob missing from `repo`: linked from elsewhere in the store if it is there, else
    /// fetched. Returns None when the store now has it (serve from there), or the relay
    /// that fetches it. Waits while another request fetches the same blob.
    pub fn blob(
        &self,
        store: &Store,
        route: &Route<'_>,
        repo: &str,
        digest: &Digest,
        wait: Duration,
    ) -> Result<Option<Relay>, MirrorError> {
        let key = format!("{repo}@{digest}");
        loop {
            match store.linked_blob(repo, digest) {
                Ok(_) => return Ok(None),
                Err(StoreError::BlobUnknown | StoreError::RepoUnknown) => {}
                Err(e) => return Err(e.into()),
            }
            // Linked from another repository of this cache only: one elsewhere in the store
            // may be private, and a digest must not open it to readers of the cache.
            let prefix = format!("{}/", route.cache.prefix);
            let in_cache = |r: &str| r.starts_with(&prefix);
            if store
                .mount(repo, crate::storage::MountFrom::Any, digest, &in_cache)?
                .is_ok()
            {
                return Ok(None);
            }
            let (flight, leader) = {
                let mut f = self.flights.lock().unwrap_or_else(|p| p.into_inner());
                match f.get(&key) {
                    Some(fl) => (fl.clone(), false),
                    None => {
                        let fl = Arc::new(Flight::default());
                        f.insert(key.clone(), fl.clone());
                        (fl, true)
                    }
                }
            };
            if !leader {
                let done = flight.done.lock().unwrap_or_else(|p| p.into_inner());
                let (done, timeout) = flight
                    .cv
                    .wait_timeout_while(done, wait, |d| !*d)
                    .unwrap_or_else(|p| p.into_inner());
                if timeout.timed_out() && !*done {
                    return Err(MirrorError::new(format!(
                        "blob {digest} is still being fetched from the upstream: retry"
                    )));
                }
                continue; // the store has it now, or the fetch failed and we try ourselves
            }
            let guard = FlightGuard {
                owner: self.flights.clone(),
                key: key.clone(),
                flight,
            };
            let c = route.cache;
            let (resp, _) = c
                .remote
                .blob_response(&route.upstream_repo, digest, 0)
                .inspect_err(|e| {
                    super::sync::note_cache(store, &c.name, false, 0, Some(&e.message))
                })?;
            let size = resp
                .headers()
                .get("content-length")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<u64>().ok())
                .ok_or_else(|| MirrorError::new("upstream sent a blob without Content-Length"))?;
            let upload = store.upload_create(repo)?;
            return Ok(Some(Relay {
                body: Box::new(resp.into_body().into_reader()),
                size,
                upload,
                repo: repo.to_owned(),
                digest: digest.clone(),
                cache: c.name.clone(),
                _flight: guard,
            }));
        }
    }
}

impl Relay {
    /// Reads the next piece (up to `buf`'s length) from the upstream, stores it and hashes
    /// it; returns its length (0 at the end).
    pub fn next(
        &mut self,
        store: &Store,
        at: u64,
        hasher: &mut Hasher,
        buf: &mut [u8],
    ) -> std::io::Result<usize> {
        let n = super::fill(&mut self.body, buf)?;
        if at + n as u64 > self.size {
            return Err(std::io::Error::other(
                "upstream sent more than it announced",
            ));
        }
        if n > 0 {
            store
                .upload_append(&self.repo, &self.upload, at, &buf[..n])
                .map_err(std::io::Error::other)?;
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }

    /// Commits the blob if it is complete and its digest verifies, else drops it.
    pub fn finish(self, store: &Store, got: u64, hasher: Hasher) -> Result<(), String> {
        let digest = hasher.finish();
        if got == self.size && digest == self.digest {
            store
                .upload_finish(&self.repo, &self.upload, &self.digest, self.size)
                .map_err(|e| e.to_string())?;
            super::sync::note_cache(store, &self.cache, false, self.size, None);
            return Ok(());
        }
        let _ = store.upload_cancel(&self.repo, &self.upload);
        let why = if got != self.size {
            format!("upstream stopped at byte {got} of {}", self.size)
        } else {
            format!("upstream content has digest {digest}: dropped")
        };
        super::sync::note_cache(store, &self.cache, false, 0, Some(&why));
        Err(why)
    }
}
