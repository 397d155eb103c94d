//! Pull-through caches: a repository prefix mapped to an upstream. A miss is fetched from
//! the upstream, stored and passed on to the client as it arrives; concurrent misses of one
//! blob fetch it once (the others wait, then read the store); when the upstream is down,
//! what is cached keeps serving.

use super::cache_config::CacheConfig;
use super::local::LocalSink;
use super::remote::Remote;
use super::{Fetched, MirrorError, Sink, Source};
use crate::config::MirrorConfig;
use crate::digest::{Digest, Hasher};
use crate::registry::Reference;
use crate::storage::{Store, StoreError};
use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
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
    config: CacheConfig,
    /// After the upstream failed, tags are served from the cache without asking it until
    /// then: a dead upstream must not cost every pull a connect timeout.
    quiet_until: Mutex<Option<Instant>>,
    /// Tags looked up upstream lately ("repo:tag" -> when), for `tagTtl`.
    checked: Mutex<HashMap<String, Instant>>,
    /// Manifests pulled lately ("repo@reference" -> unix seconds): the eviction order.
    pulled: Mutex<HashMap<String, u64>>,
    /// Bytes the cache held when last counted, plus what it stored since; None: not counted.
    held: Mutex<Option<u64>>,
    /// Taken by the eviction running (one at a time).
    evicting: Mutex<()>,
    /// Set when the cache grew while an eviction ran: it counts again.
    again: AtomicBool,
    /// Repositories with a manifest being looked up and served now: never evicted meanwhile.
    busy: Mutex<HashMap<String, usize>>,
}

/// Keeps a repository of a cache from eviction while its manifest is served; returned by
/// `PullThrough::manifest`.
pub struct Pulled<'a> {
    cache: &'a Cache,
    repo: String,
    /// A manifest fetched but not kept (the store refused it, e.g. past a quota): serve
    /// these bytes.
    pub unkept: Option<Fetched>,
}

impl Drop for Pulled<'_> {
    fn drop(&mut self) {
        let mut busy = lock(&self.cache.busy);
        if let Some(n) = busy.get_mut(&self.repo) {
            *n -= 1;
            if *n == 0 {
                busy.remove(&self.repo);
            }
        }
    }
}

/// Entries the `checked` and `pulled` maps keep at most: a flood of distinct references must
/// not grow them without bound (past it, the oldest half goes; an image whose pull is
/// forgotten is ordered by when it was fetched).
const REMEMBERED: usize = 65_536;

/// Locks `m`, whatever a panicking holder left (these maps are hints).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Drops the older half of `map` once it holds `REMEMBERED` entries.
fn bound<V: Copy + Ord>(map: &mut HashMap<String, V>) {
    if map.len() < REMEMBERED {
        return;
    }
    let mut ages: Vec<V> = map.values().copied().collect();
    let (_, median, _) = ages.select_nth_unstable(REMEMBERED / 2);
    let median = *median;
    map.retain(|_, v| *v > median);
}

/// How long a failed upstream is not asked about tags.
const QUIET: Duration = Duration::from_secs(30);

impl Cache {
    fn quiet(&self) -> bool {
        lock(&self.quiet_until).is_some_and(|t| Instant::now() < t)
    }

    fn failed(&self) {
        *lock(&self.quiet_until) = Some(Instant::now() + QUIET);
    }

    /// Whether tag `key` ("repo:tag") was looked up upstream within `tagTtl`.
    fn fresh(&self, key: &str) -> bool {
        lock(&self.checked)
            .get(key)
            .is_some_and(|t| t.elapsed() < self.config.tag_ttl)
    }

    fn looked_up(&self, key: String) {
        let mut m = lock(&self.checked);
        bound(&mut m);
        m.insert(key, Instant::now());
    }

    /// Records a pull of manifest `reference` (tag or digest) of `repo`.
    fn note_pull(&self, repo: &str, reference: &str) {
        if self.config.max_size.is_none() {
            return; // nothing is evicted: the order is of no use
        }
        let mut m = lock(&self.pulled);
        bound(&mut m);
        m.insert(format!("{repo}@{reference}"), crate::clock::unix_now());
    }

    /// The upstream repository of local repository `repo` of this cache.
    fn upstream_of<'r>(&self, repo: &'r str) -> Option<&'r str> {
        repo.strip_prefix(self.prefix.as_str())?.strip_prefix('/')
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
    /// Upload session in the store; None: a part passed on without storing it.
    pub upload: Option<String>,
    /// Local repository.
    pub repo: String,
    /// Its digest.
    pub digest: Digest,
    /// Which cache, for status.
    pub cache: String,
    _flight: Option<FlightGuard>,
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
                    config: m.cache.clone(),
                    quiet_until: Mutex::default(),
                    checked: Mutex::default(),
                    pulled: Mutex::default(),
                    held: Mutex::default(),
                    evicting: Mutex::default(),
                    again: AtomicBool::new(false),
                    busy: Mutex::default(),
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
            Some(Route {
                cache: c,
                upstream_repo: c.upstream_of(repo)?.to_owned(),
            })
        })
    }

    /// Why `repo` takes no pushes, if it is a cache's: its content is the upstream's.
    pub fn refuses_pushes(&self, repo: &str) -> Option<String> {
        let r = self.route(repo)?;
        Some(format!(
            "{repo} is in the pull-through cache {}/ of {} (mirror {}): it takes no pushes; push to {} as {}, or to a repository outside {}/",
            r.cache.prefix,
            r.cache.remote.base(),
            r.cache.name,
            r.cache.remote.base(),
            r.upstream_repo,
            r.cache.prefix
        ))
    }

    /// Refreshes manifest `reference` of `repo` from the upstream: a tag is looked up at
    /// most every `tagTtl` (the cached one is served meanwhile, and while the upstream
    /// fails), a digest only on a miss. Stores what it fetched; the caller then serves from
    /// the store. Err: the store does not have it and the upstream could not say (no
    /// answer, or an error other than 404), so a "not found" would be a guess.
    pub fn manifest<'c>(
        &self,
        store: &Store,
        route: &Route<'c>,
        repo: &str,
        reference: &str,
    ) -> Result<Pulled<'c>, MirrorError> {
        let c = route.cache;
        *lock(&c.busy).entry(repo.to_owned()).or_default() += 1;
        let mut pulled = Pulled {
            cache: c,
            repo: repo.to_owned(),
            unkept: None,
        };
        let tag = match Reference::parse(reference) {
            Ok(Reference::Digest(d)) => {
                if store.manifest_by_digest(repo, &d).is_ok() {
                    crate::metrics::get().cache_hit();
                    c.note_pull(repo, reference);
                    return Ok(pulled);
                }
                None
            }
            Ok(Reference::Tag(t)) => Some(t),
            Err(_) => return Ok(pulled),
        };
        let key = format!("{repo}:{reference}");
        if tag.is_some()
            && (c.quiet() || c.fresh(&key))
            && store.manifest_by_tag(repo, reference).is_ok()
        {
            crate::metrics::get().cache_hit();
            c.note_pull(repo, reference);
            return Ok(pulled);
        }
        crate::metrics::get().cache_miss();
        match c.remote.manifest(&route.upstream_repo, reference, None) {
            Ok(f) => {
                c.note_pull(repo, reference);
                let unchanged = tag.as_ref().is_some_and(|t| {
                    store
                        .manifest_by_tag(repo, t)
                        .is_ok_and(|m| m.digest == f.digest.as_str())
                });
                if tag.is_some() {
                    c.looked_up(key.clone());
                }
                if !unchanged {
                    let bytes = f.body.len() as u64;
                    // Stored by the cache, for the client that pulled it.
                    let _actor = crate::audit::acting_as("cache", crate::audit::actor().addr);
                    match LocalSink::lazy(store).put_manifest(repo, &f, tag.as_deref()) {
                        Ok(()) => {
                            super::sync::note_cache(store, &c.name, false, bytes, None);
                            self.grown(store, c, bytes);
                        }
                        Err(e) => {
                            log::warn!("cache {}: {key} passed on, not kept: {e}", c.name);
                            pulled.unkept = Some(f);
                        }
                    }
                }
                Ok(pulled)
            }
            Err(e) => {
                // An answer (404, 401) means the upstream is there; no answer, it is not.
                if e.status.is_none() {
                    c.failed();
                }
                log::warn!("cache {}: {key} from upstream: {e}", c.name);
                let have = tag.is_some() && store.manifest_by_tag(repo, reference).is_ok();
                super::sync::note_cache(store, &c.name, have, 0, Some(&e.message));
                if have {
                    c.note_pull(repo, reference);
                    Ok(pulled)
                } else if e.status == Some(404) {
                    Ok(pulled)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// Counts `bytes` that cache `c` stored; past its `maxSize`, evicts the images pulled
    /// least recently until it holds 90 % of it (so that not every fetch evicts).
    fn grown(&self, store: &Store, c: &Cache, bytes: u64) {
        let Some(limit) = c.config.max_size else {
            return;
        };
        {
            let mut held = lock(&c.held);
            if let Some(h) = *held {
                *held = Some(h.saturating_add(bytes));
                if h.saturating_add(bytes) <= limit {
                    return;
                }
            }
        }
        // One eviction at a time; one that grew the cache while another ran has that one
        // count again when it ends (its snapshot may predate these bytes).
        for _ in 0..4 {
            let Ok(_one) = c.evicting.try_lock() else {
                c.again.store(true, Ordering::Relaxed);
                return;
            };
            c.again.store(false, Ordering::Relaxed);
            self.evict(store, c, limit);
            drop(_one);
            if !c.again.swap(false, Ordering::Relaxed) {
                return;
            }
        }
    }

    /// One eviction of cache `c` down to its `limit` (see `evict::run`).
    fn evict(&self, store: &Store, c: &Cache, limit: u64) {
        let pulled = lock(&c.pulled).clone();
        let last_pull =
            |repo: &str, reference: &str| pulled.get(&format!("{repo}@{reference}")).copied();
        let busy = lock(&c.busy).clone();
        let keep = |repo: &str| busy.contains_key(repo);
        let upstream = |repo: &str| c.upstream_of(repo).map(str::to_owned);
        let seen = super::evict::Seen {
            last_pull: &last_pull,
            busy: &keep,
            upstream: &upstream,
        };
        match super::evict::run(store, &c.prefix, &c.config, limit, &seen) {
            Ok(r) => {
                *lock(&c.held) = Some(r.held_after);
                for (image, ago) in &r.evicted {
                    log::info!(
                        "cache {}: evicted {image} (last pulled {ago} s ago) to stay under maxSize {limit}",
                        c.name
                    );
                }
                if r.held_after > limit {
                    log::warn!(
                        "cache {}: holds {} bytes, over its maxSize of {limit}: the rest is pinned or being served",
                        c.name,
                        r.held_after
                    );
                }
                super::sync::note_cache_size(
                    store,
                    &c.name,
                    r.held_after,
                    limit,
                    r.evicted.len() as u64,
                );
            }
            Err(e) => log::warn!("cache {}: evicting: {e}", c.name),
        }
    }

    /// The size of blob `digest` upstream, asked without fetching it (a `HEAD` of a blob
    /// the cache lacks): None if the upstream does not have it.
    pub fn blob_size(
        &self,
        route: &Route<'_>,
        digest: &Digest,
    ) -> Result<Option<u64>, MirrorError> {
        crate::metrics::get().cache_miss();
        route.cache.remote.head_blob(&route.upstream_repo, digest)
    }

    /// Bytes `start` to `last` of blob `digest` (of `size` bytes) straight from the
    /// upstream, neither stored nor verified (a part cannot be: the client checks the
    /// whole): a `Range` request does not wait for the whole blob.
    pub fn blob_part(
        &self,
        route: &Route<'_>,
        digest: &Digest,
        (start, last): (u64, u64),
    ) -> Result<Relay, MirrorError> {
        crate::metrics::get().cache_miss();
        let resp = route
            .cache
            .remote
            .blob_range(&route.upstream_repo, digest, start, last)?;
        Ok(Relay {
            body: Box::new(resp.into_body().into_reader()),
            size: last - start + 1,
            upload: None,
            repo: String::new(),
            digest: digest.clone(),
            cache: route.cache.name.clone(),
            _flight: None,
        })
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
                crate::metrics::get().cache_hit();
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
            crate::metrics::get().cache_miss();
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
            // Past a quota the blob is passed on without being kept: the client still gets
            // it, the card gets nothing.
            let upload = match store.quota_room(repo, Some(digest), size) {
                Ok(()) => Some(store.upload_create(repo)?),
                Err(e) => {
                    log::warn!("cache {}: {repo}@{digest} passed on, not kept: {e}", c.name);
                    None
                }
            };
            return Ok(Some(Relay {
                body: Box::new(resp.into_body().into_reader()),
                size,
                upload,
                repo: repo.to_owned(),
                digest: digest.clone(),
                cache: c.name.clone(),
                _flight: Some(guard),
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
        if let (true, Some(upload)) = (n > 0, &self.upload) {
            store
                .upload_append(&self.repo, upload, at, &buf[..n])
                .map_err(std::io::Error::other)?;
            hasher.update(&buf[..n]);
        }
        Ok(n)
    }

    /// Commits the blob if it is complete and its digest verifies, else drops it. A part
    /// passed on only has to be complete.
    pub fn finish(
        self,
        caches: &PullThrough,
        store: &Store,
        got: u64,
        hasher: Hasher,
    ) -> Result<(), String> {
        let Some(upload) = &self.upload else {
            return match got == self.size {
                true => Ok(()),
                false => Err(format!("upstream stopped at byte {got} of {}", self.size)),
            };
        };
        let digest = hasher.finish();
        if got == self.size && digest == self.digest {
            if let Err(e) = store.upload_finish(&self.repo, upload, &self.digest, self.size) {
                // Refused (a quota filled meanwhile): the session goes with it.
                let _ = store.upload_cancel(&self.repo, upload);
                return Err(e.to_string());
            }
            super::sync::note_cache(store, &self.cache, false, self.size, None);
            if let Some(c) = caches.caches.iter().find(|c| c.name == self.cache) {
                caches.grown(store, c, self.size);
            }
            return Ok(());
        }
        let _ = store.upload_cancel(&self.repo, upload);
        let why = if got != self.size {
            format!("upstream stopped at byte {got} of {}", self.size)
        } else {
            format!("upstream content has digest {digest}: dropped")
        };
        super::sync::note_cache(store, &self.cache, false, 0, Some(&why));
        Err(why)
    }
}
