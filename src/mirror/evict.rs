//! Keeping a pull-through cache under its `maxSize`: the images pulled least recently go,
//! with the blob links only they held, planned from one snapshot and deleted by the
//! collector's re-checked steps (so a manifest that gained a tag meanwhile, or a link that a
//! new manifest lists, stays).

use super::cache_config::CacheConfig;
use crate::clock::unix_now;
use crate::storage::{GcSnapshot, Held, RepoState, Step, Store, StoreError};
use std::collections::{HashMap, HashSet};
use std::time::Duration;

/// How long one eviction transaction keeps adding deletions (as the collector's).
const TX_BUDGET: Duration = Duration::from_millis(5);

/// What an eviction did.
#[derive(Debug, Default)]
pub struct Evicted {
    /// Bytes the cache holds afterwards (as planned: a step skipped by its re-check keeps a
    /// little more).
    pub held_after: u64,
    /// Images evicted (`repo@digest`) and seconds since their last pull.
    pub evicted: Vec<(String, u64)>,
}

/// What the cache knows beyond the store: when references were pulled
/// (`last_pull(repo, reference)`; else an image's fetch time counts), which repositories
/// are being served now (`busy`: never evicted meanwhile), and each repository's upstream
/// name (`upstream`), which `pinned` speaks of.
pub struct Seen<'a> {
    /// When a tag or digest of a repository was last pulled.
    pub last_pull: &'a dyn Fn(&str, &str) -> Option<u64>,
    /// Whether a repository has a manifest being served.
    pub busy: &'a dyn Fn(&str) -> bool,
    /// The upstream repository of a cache repository.
    pub upstream: &'a dyn Fn(&str) -> Option<String>,
}

/// An image: a manifest no other manifest of its repository lists, with those it lists.
struct Image<'a> {
    repo: &'a RepoState,
    top: &'a str,
    members: Vec<&'a str>,
    last_used: u64,
}

/// The deletions planned so far and the bytes the cache would still hold after them.
struct Tally<'a> {
    steps: Vec<RepoSteps>,
    /// (domain, digest) -> (links from the cache's repositories, blob size).
    linkers: HashMap<(u64, &'a str), (u64, u64)>,
    held: u64,
}

impl<'a> Tally<'a> {
    /// Unlinks blob `d` from repository `r` (the `i`th of the cache); its bytes leave the
    /// cache with its last link there.
    fn unlink(&mut self, i: usize, r: &'a RepoState, d: &'a str, linked_by: u64) {
        self.steps[i].links.push(Step::Link {
            digest: d.to_owned(),
            linked_by,
        });
        if let Some(e) = self.linkers.get_mut(&(r.domain, d)) {
            e.0 -= 1;
            if e.0 == 0 {
                self.held -= e.1;
            }
        }
    }
}

/// A repository's deletions, in the order they must happen.
#[derive(Default)]
struct RepoSteps {
    manifests: Vec<Step>,
    links: Vec<Step>,
    emptied: bool,
}

/// Evicts from the cache of repositories under `prefix/` until it holds at most 90 % of
/// `limit`, if it holds more than `limit`.
pub fn run(
    store: &Store,
    prefix: &str,
    cfg: &CacheConfig,
    limit: u64,
    seen: &Seen,
) -> Result<Evicted, StoreError> {
    // Evictions are the cache's in the audit trail, whichever pull made room.
    let _actor = crate::audit::acting_as("cache", None);
    let snap = store.gc_snapshot()?;
    let now = unix_now();
    let (plan, out) = plan(&snap, prefix, cfg, limit, now, seen);
    let mut held = Held::default();
    for (repo, steps) in plan {
        let mut all = steps.manifests;
        all.extend(steps.links);
        if steps.emptied {
            all.push(Step::Repo);
        }
        let mut done = 0;
        while done < all.len() {
            let before = held.total;
            done += store
                .gc_apply(&repo.name, repo.id, &all[done..], TX_BUDGET, &mut held)?
                .len();
            std::thread::sleep((held.total - before).max(Duration::from_millis(1)));
        }
    }
    if held.transactions > 0 {
        store.gc_settle()?;
    }
    Ok(out)
}

/// Plans an eviction (free of storage, for tests): the deletions per repository, and what
/// they evict.
fn plan<'a>(
    snap: &'a GcSnapshot,
    prefix: &str,
    cfg: &CacheConfig,
    limit: u64,
    now: u64,
    seen: &Seen,
) -> (Vec<(&'a RepoState, RepoSteps)>, Evicted) {
    let under = format!("{prefix}/");
    let repos: Vec<&RepoState> = snap
        .repos
        .iter()
        .filter(|r| r.name.starts_with(&under))
        .collect();
    // The cache's bytes: its manifests, and each blob it links once per encryption domain.
    let mut linkers: HashMap<(u64, &str), (u64, u64)> = HashMap::new(); // -> (links, size)
    let mut held = 0u64;
    for r in &repos {
        held += r.manifests.values().map(|m| m.bytes).sum::<u64>();
        for (d, (_, size)) in &r.links {
            linkers
                .entry((r.domain, d.as_str()))
                .or_insert((0, *size))
                .0 += 1;
        }
    }
    held += linkers.values().map(|(_, size)| size).sum::<u64>();
    let mut out = Evicted {
        held_after: held,
        evicted: Vec::new(),
    };
    if held <= limit {
        return (Vec::new(), out);
    }
    let target = limit - limit / 10;
    let mut t = Tally {
        steps: repos.iter().map(|_| RepoSteps::default()).collect(),
        linkers,
        held,
    };
    // Links no manifest lists (fetched by digest alone, or left by an evicted image) go
    // first: a pull that wants one again fetches it again.
    for (i, r) in repos.iter().enumerate() {
        for d in r.links.keys() {
            let listed = r.blob_refs.get(d).is_some_and(|m| !m.is_empty());
            if !listed && t.held > target && !(seen.busy)(&r.name) {
                t.unlink(i, r, d, now);
            }
        }
    }
    // Then images, least recently pulled first, never a pinned one.
    let mut images: Vec<(usize, Image)> = Vec::new();
    for (i, r) in repos.iter().enumerate() {
        let listed: HashSet<&str> = r
            .manifests
            .values()
            .flat_map(|m| m.children.iter().map(String::as_str))
            .collect();
        if (seen.busy)(&r.name) {
            continue;
        }
        let up = (seen.upstream)(&r.name).unwrap_or_default();
        let mut referrers: HashMap<&str, Vec<&str>> = HashMap::new();
        for (d, m) in &r.manifests {
            if let Some(s) = &m.subject {
                referrers.entry(s.as_str()).or_default().push(d.as_str());
            }
        }
        for (digest, m) in &r.manifests {
            if listed.contains(digest.as_str())
                || m.subject
                    .as_ref()
                    .is_some_and(|s| r.manifests.contains_key(s))
            {
                continue; // goes with the index listing it; a referrer with its subject
            }
            if cfg.pins(&up, None) || m.tags.iter().any(|t| cfg.pins(&up, Some(t))) {
                continue;
            }
            // Referrers (signatures, SBOMs) go first: a manifest with one cannot be deleted.
            let own: Vec<&str> = std::iter::once(digest.as_str())
                .chain(m.children.iter().map(String::as_str))
                .filter(|d| r.manifests.contains_key(*d))
                .collect();
            let mut members: Vec<&str> = own
                .iter()
                .flat_map(|d| referrers.get(d).into_iter().flatten().copied())
                .collect();
            members.extend(own);
            let last_used = members
                .iter()
                .filter_map(|d| (seen.last_pull)(&r.name, d))
                .chain(m.tags.iter().filter_map(|t| (seen.last_pull)(&r.name, t)))
                .max()
                .unwrap_or(m.pushed);
            images.push((
                i,
                Image {
                    repo: r,
                    top: digest,
                    members,
                    last_used,
                },
            ));
        }
    }
    images.sort_by(|a, b| (a.1.last_used, a.1.top).cmp(&(b.1.last_used, b.1.top)));
    // Manifests of each repository still listing each blob, as images go.
    let mut listing: Vec<HashMap<&str, usize>> = repos
        .iter()
        .map(|r| {
            r.blob_refs
                .iter()
                .map(|(d, m)| (d.as_str(), m.len()))
                .collect()
        })
        .collect();
    let mut gone: Vec<HashSet<&str>> = repos.iter().map(|_| HashSet::new()).collect();
    for (i, img) in images {
        if t.held <= target {
            break;
        }
        let r = img.repo;
        for d in &img.members {
            if !gone[i].insert(d) {
                continue; // a child shared with an image evicted before
            }
            let m = &r.manifests[*d];
            t.held -= m.bytes;
            t.steps[i].manifests.push(Step::Manifest {
                digest: (*d).to_owned(),
                tags: m.tags.clone(),
            });
            for (blob, by) in &r.blob_refs {
                if !by.iter().any(|x| x == d) {
                    continue;
                }
                let left = listing[i].get_mut(blob.as_str()).expect("from blob_refs");
                *left -= 1;
                if *left == 0 && r.links.contains_key(blob) {
                    t.unlink(i, r, blob, now);
                }
            }
        }
        out.evicted.push((
            format!("{}@{}", r.name, img.top),
            now.saturating_sub(img.last_used),
        ));
    }
    for (i, r) in repos.iter().enumerate() {
        let s = &mut t.steps[i];
        s.emptied = r.sessions == 0
            && gone[i].len() == r.manifests.len()
            && s.links.len() == r.links.len()
            && !r.keyed;
    }
    let held = t.held;
    out.held_after = held;
    let plan = repos
        .into_iter()
        .zip(t.steps)
        .filter(|(_, s)| !s.manifests.is_empty() || !s.links.is_empty())
        .collect();
    (plan, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::ManifestState;

    /// A cache repository `c/NAME` with an index `NAME-i` of two platform manifests (each
    /// listing a blob of `size`), a signature of the index, pulled (fetched) at `at`.
    fn image(name: &str, size: u64, at: u64) -> RepoState {
        let m = |d: &str| format!("{name}-{d}");
        let mut r = RepoState {
            name: format!("c/{name}"),
            id: at,
            ..RepoState::default()
        };
        let state = |children: Vec<String>, subject: Option<String>, tags: &[&str]| ManifestState {
            pushed: at,
            bytes: 100,
            tags: tags.iter().map(|t| t.to_string()).collect(),
            subject,
            children,
            ..ManifestState::default()
        };
        r.manifests
            .insert(m("i"), state(vec![m("a"), m("b")], None, &["v1"]));
        r.manifests.insert(m("a"), state(vec![], None, &[]));
        r.manifests.insert(m("b"), state(vec![], None, &[]));
        r.manifests
            .insert(m("sig"), state(vec![], Some(m("i")), &[]));
        for p in ["a", "b"] {
            r.links.insert(m(&format!("blob-{p}")), (at, size));
            r.blob_refs.insert(m(&format!("blob-{p}")), vec![m(p)]);
        }
        r
    }

    fn planned(snap: &GcSnapshot, cfg: &CacheConfig, limit: u64) -> (Vec<String>, Evicted) {
        let none = |_: &str, _: &str| None;
        let idle = |_: &str| false;
        let up = |r: &str| r.strip_prefix("c/").map(str::to_owned);
        let seen = Seen {
            last_pull: &none,
            busy: &idle,
            upstream: &up,
        };
        let (plan, out) = plan(snap, "c", cfg, limit, 10_000, &seen);
        let steps = plan
            .iter()
            .flat_map(|(r, s)| {
                let mut v: Vec<String> = s
                    .manifests
                    .iter()
                    .chain(&s.links)
                    .map(|st| match st {
                        Step::Manifest { digest, .. } => format!("m {digest}"),
                        Step::Link { digest, .. } => format!("l {digest}"),
                        Step::Repo => unreachable!(),
                    })
                    .collect();
                if s.emptied {
                    v.push(format!("r {}", r.name));
                }
                v
            })
            .collect();
        (steps, out)
    }

    #[test]
    fn the_oldest_unpinned_image_goes_whole_referrers_first_then_children_and_its_blobs() {
        let snap = GcSnapshot {
            repos: vec![
                image("old", 1000, 1),
                image("pinned", 1000, 0),
                image("new", 1000, 2),
            ],
            ..GcSnapshot::default()
        };
        // 3 x (4 manifests of 100 + 2 blobs of 1000) = 7200 bytes.
        let cfg = CacheConfig {
            pinned: vec![crate::mirror::cache_config::Pin {
                repo: "pinned".into(),
                tag: Some("v1".into()),
            }],
            ..CacheConfig::default()
        };
        let (steps, out) = planned(&snap, &cfg, 6000);
        assert_eq!(
            steps,
            [
                "m old-sig",
                "m old-i",
                "m old-a",
                "m old-b",
                "l old-blob-a",
                "l old-blob-b",
                "r c/old"
            ]
        );
        assert_eq!(out.held_after, 4800);
        assert_eq!(out.evicted.len(), 1);
        // Under the limit: nothing. Far over it: everything but the pinned image.
        assert!(planned(&snap, &cfg, 7200).0.is_empty());
        let (steps, out) = planned(&snap, &cfg, 100);
        assert_eq!(out.evicted.len(), 2);
        assert!(steps.iter().all(|s| !s.contains("pinned")), "{steps:?}");
        assert_eq!(out.held_after, 2400);
    }

    #[test]
    fn a_blob_shared_by_two_cache_repositories_leaves_the_cache_with_its_last_link() {
        let mut a = image("a", 1000, 1);
        let mut b = image("b", 1000, 2);
        // b's first platform lists a's first blob instead of its own.
        b.links.remove("b-blob-a");
        b.blob_refs.remove("b-blob-a");
        b.links.insert("a-blob-a".into(), (2, 1000));
        b.blob_refs.insert("a-blob-a".into(), vec!["b-a".into()]);
        a.id = 1;
        b.id = 2;
        let snap = GcSnapshot {
            repos: vec![a, b],
            ..GcSnapshot::default()
        };
        // 2 x 400 of manifests + 3 distinct blobs = 3800; evicting a frees only its second blob.
        let (_, out) = planned(&snap, &CacheConfig::default(), 3700);
        assert_eq!(out.evicted.len(), 1);
        assert_eq!(out.held_after, 3800 - 400 - 1000);
    }
}
