//! A pull-through cache's own settings: a mirror entry's `cache` object.

use serde::Deserialize;
use std::time::Duration;

/// How long a tag looked up upstream is served from the cache before it is asked again.
const DEFAULT_TAG_TTL: Duration = Duration::from_secs(300);

/// A pull-through cache's settings, validated.
#[derive(Debug, Clone)]
pub struct CacheConfig {
    /// `tagTtl`: a tag is looked up upstream at most this often (0: on every pull).
    pub tag_ttl: Duration,
    /// `maxSize`: bytes the cache's repositories may hold (blobs once each, and manifests);
    /// None: no limit.
    pub max_size: Option<u64>,
    /// `pinned`: never evicted. Upstream names: a repository (`library/alpine`), or a tag of
    /// one (`library/alpine:3.20`).
    pub pinned: Vec<Pin>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            tag_ttl: DEFAULT_TAG_TTL,
            max_size: None,
            pinned: Vec::new(),
        }
    }
}

/// What a `pinned` entry keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pin {
    /// The upstream repository.
    pub repo: String,
    /// One tag of it; None: all of it.
    pub tag: Option<String>,
}

impl CacheConfig {
    /// Whether tag `tag` (None: any manifest) of upstream repository `repo` is pinned.
    pub fn pins(&self, repo: &str, tag: Option<&str>) -> bool {
        self.pinned
            .iter()
            .any(|p| p.repo == repo && (p.tag.is_none() || p.tag.as_deref() == tag))
    }
}

/// A mirror's `cache` object as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CacheSpec {
    tag_ttl: Option<String>,
    max_size: Option<crate::config::Size>,
    pinned: Option<Vec<String>>,
}

impl CacheSpec {
    /// Validates; `what` names the mirror in messages.
    pub fn resolve(self, what: &str) -> Result<CacheConfig, String> {
        let tag_ttl = match self.tag_ttl {
            Some(t) => crate::config::parse_duration(&t)
                .map_err(|e| format!("{what}: cache.tagTtl: {e}"))?,
            None => DEFAULT_TAG_TTL,
        };
        if tag_ttl > Duration::from_secs(365 * 86400) {
            return Err(format!("{what}: cache.tagTtl must be 0s to 365d"));
        }
        let max_size = self
            .max_size
            .map(|s| {
                s.bytes_u64()
                    .map_err(|e| format!("{what}: cache.maxSize: {e}"))
            })
            .transpose()?;
        if max_size == Some(0) {
            return Err(format!(
                "{what}: cache.maxSize must be more than 0 (leave it out for no limit)"
            ));
        }
        let mut pinned = Vec::new();
        for p in self.pinned.unwrap_or_default() {
            let (repo, tag) = match p.rsplit_once(':') {
                Some((r, t)) => (r, Some(t)),
                None => (p.as_str(), None),
            };
            let ok = crate::registry::names::valid_name(repo)
                && tag.is_none_or(crate::registry::names::valid_tag);
            if !ok {
                return Err(format!(
                    "{what}: cache.pinned: {p:?} must be an upstream repository or REPOSITORY:TAG, e.g. library/alpine:3.20"
                ));
            }
            pinned.push(Pin {
                repo: repo.to_owned(),
                tag: tag.map(str::to_owned),
            });
        }
        Ok(CacheConfig {
            tag_ttl,
            max_size,
            pinned,
        })
    }
}
