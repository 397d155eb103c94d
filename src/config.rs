//! Configuration: built-in defaults, overridden by a JSON file, overridden by flags; validated once.

use crate::crypto::Algorithm;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Validated settings for `outpost serve`.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Directory holding `outpost.redb`.
    pub data_dir: PathBuf,
    /// Chunk-sized transfer buffers lent at once (more transfers get small ones).
    pub workers: usize,
    /// redb page cache, bytes.
    pub cache_size: usize,
    /// Bytes per stored chunk and per transfer buffer (one per worker).
    pub chunk_size: usize,
    /// Largest manifest accepted, bytes.
    pub max_manifest_size: usize,
    /// Upload sessions idle longer than this are cancelled and their data dropped.
    pub upload_ttl: Duration,
    /// `maxConnections`, `headerTimeout`, `idleTimeout`, `ioTimeout` (the window of the
    /// minimum transfer rate; also how long pull-through waiters wait), `minTransferRate`.
    pub connections: crate::net::Limits,
    /// Upload data is refused (507) while less than this would stay free on the disk, so
    /// that manifests, deletes and the database's own commits always have room.
    pub min_free_space: usize,
    /// `blobMounting`: cross-repository mounts are honoured (the start value; changeable at
    /// runtime, see `settings`).
    pub blob_mounting: bool,
    /// `automaticMount`: a mount without `from` may take the blob from any repository.
    pub automatic_mount: bool,
    /// `masterKeyFile`: the master key wrapping the data keys (else the systemd credential).
    pub master_key_file: Option<PathBuf>,
    /// `encryption`: which key new repositories get, first matching rule wins.
    pub encryption: Vec<EncryptionRule>,
    /// `auth` and `access`: `None` when neither is given (everything open).
    pub auth: Option<AuthConfig>,
    /// `tls`: serve HTTPS with this certificate and key.
    pub tls: Option<TlsConfig>,
    /// `mirrors`: upstream registries to sync from or cache.
    pub mirrors: Vec<MirrorConfig>,
    /// `gcGracePeriod`, `gcInterval`, `lifecycle`: the garbage collector.
    pub gc: crate::gc::config::GcConfig,
    /// `scrubRate`, `scrubInterval`: the background scrub.
    pub scrub: crate::scrub::config::ScrubConfig,
    /// `immutableTags`: tags a push may set but never move.
    pub immutable_tags: Vec<crate::registry::immutable::ImmutableRule>,
    /// `quotas` and `maxStoreSize`: byte budgets.
    pub quotas: crate::quota::Quotas,
    /// `logFormat`: text lines or JSON objects (the registry's log).
    pub log_format: crate::logging::LogFormat,
    /// `metrics`: who may scrape `/metrics`, and its own listener.
    pub metrics: crate::metrics::config::MetricsConfig,
    /// `audit`: the audit trail's bound.
    pub audit: crate::audit::config::AuditConfig,
    /// `notifications`: webhook endpoints for pushes and deletes.
    pub notifications: Vec<crate::events::config::Endpoint>,
}

/// A `mirrors` entry, validated.
#[derive(Debug, Clone)]
pub struct MirrorConfig {
    /// `name`: how status and `outpost mirror run NAME` call it.
    pub name: String,
    /// `upstream`: `http(s)://host[:port]`.
    pub upstream: String,
    /// `username`.
    pub username: Option<String>,
    /// `passwordFile`: the password (or token) on its first line; read at each pass.
    pub password_file: Option<PathBuf>,
    /// `caFile`: PEM CA certificates to trust instead of the built-in roots.
    pub ca_file: Option<PathBuf>,
    /// `repositories`: upstream repositories to sync (stored under the same names).
    pub repositories: Vec<String>,
    /// `tags`: tags to sync; empty: all (or those matching `tag_regex`).
    pub tags: Vec<String>,
    /// `tagRegex`: tags to sync.
    pub tag_regex: Option<regex_lite::Regex>,
    /// `platforms`: platforms kept of multi-platform images; None: all.
    pub platforms: Option<Vec<crate::mirror::Platform>>,
    /// `interval`: a pass runs this often while the registry serves; None: on demand only.
    pub interval: Option<Duration>,
    /// `pullThrough`: a local repository prefix; `PREFIX/x` pulls `x` from the upstream on a
    /// miss and caches it.
    pub pull_through: Option<String>,
    /// `cache`: the pull-through cache's tag TTL, size limit and pins.
    pub cache: crate::mirror::cache_config::CacheConfig,
}

impl MirrorConfig {
    /// The basic credentials, if configured (the password file is read now).
    pub fn credentials(&self) -> Result<Option<(String, String)>, String> {
        let Some(user) = &self.username else {
            return Ok(None);
        };
        let Some(file) = &self.password_file else {
            return Ok(Some((user.clone(), String::new())));
        };
        let text = std::fs::read_to_string(file).map_err(|e| {
            format!(
                "mirror {}: cannot read passwordFile {}: {e}",
                self.name,
                file.display()
            )
        })?;
        Ok(Some((
            user.clone(),
            text.lines().next().unwrap_or("").to_owned(),
        )))
    }

    /// True if `tag` is one to sync.
    pub fn wants_tag(&self, tag: &str) -> bool {
        (self.tags.is_empty() || self.tags.iter().any(|t| t == tag))
            && self.tag_regex.as_ref().is_none_or(|r| r.is_match(tag))
    }
}

/// A `mirrors` entry as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MirrorSpec {
    name: String,
    upstream: String,
    username: Option<String>,
    password_file: Option<PathBuf>,
    ca_file: Option<PathBuf>,
    repositories: Option<Vec<String>>,
    tags: Option<Vec<String>>,
    tag_regex: Option<String>,
    platforms: Option<Vec<String>>,
    interval: Option<String>,
    pull_through: Option<String>,
    cache: Option<crate::mirror::cache_config::CacheSpec>,
}

impl MirrorSpec {
    fn resolve(self) -> Result<MirrorConfig, String> {
        let what = format!("mirror {:?}", self.name);
        let ok_name = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if !ok_name {
            return Err(format!("{what}: name must be 1-64 of a-z 0-9 . _ -"));
        }
        let upstream = self.upstream.trim_end_matches('/').to_owned();
        let host = upstream
            .strip_prefix("https://")
            .or_else(|| upstream.strip_prefix("http://"));
        if host.is_none_or(|h| h.is_empty() || h.contains('/')) {
            return Err(format!(
                "{what}: upstream {:?} must be http(s)://HOST[:PORT], e.g. https://registry.example.com",
                self.upstream
            ));
        }
        let repositories = self.repositories.unwrap_or_default();
        for r in &repositories {
            if !crate::registry::names::valid_name(r) {
                return Err(format!("{what}: {r:?} is not a repository name"));
            }
        }
        let tags = self.tags.unwrap_or_default();
        for t in &tags {
            if !crate::registry::names::valid_tag(t) {
                return Err(format!("{what}: {t:?} is not a tag"));
            }
        }
        let tag_regex = self
            .tag_regex
            .map(|r| regex_lite::Regex::new(&r).map_err(|e| format!("{what}: tagRegex {r:?}: {e}")))
            .transpose()?;
        let platforms = self
            .platforms
            .map(|ps| {
                ps.iter()
                    .map(|p| crate::mirror::Platform::parse(p).map_err(|e| format!("{what}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        let interval = self
            .interval
            .map(|i| parse_duration(&i).map_err(|e| format!("{what}: interval: {e}")))
            .transpose()?;
        // Bounded above too: the scheduler adds it to the clock, which a duration of some
        // 10^11 years overflowed (a panic that ended the scheduler after its first pass).
        if interval.is_some_and(|i| i.is_zero() || i > Duration::from_secs(365 * 86400)) {
            return Err(format!("{what}: interval must be 1s to 365d"));
        }
        let pull_through = self
            .pull_through
            .map(|p| p.trim_end_matches('/').to_owned());
        if let Some(p) = &pull_through {
            if !crate::registry::names::valid_name(p) {
                return Err(format!(
                    "{what}: pullThrough {p:?} must be a repository name prefix, e.g. hub"
                ));
            }
        }
        if self.cache.is_some() && pull_through.is_none() {
            return Err(format!("{what}: cache settings need pullThrough"));
        }
        let cache = self.cache.unwrap_or_default().resolve(&what)?;
        if repositories.is_empty() && pull_through.is_none() {
            return Err(format!(
                "{what}: give repositories to sync, pullThrough for a cache, or both"
            ));
        }
        if self.password_file.is_some() && self.username.is_none() {
            return Err(format!("{what}: passwordFile needs a username"));
        }
        Ok(MirrorConfig {
            name: self.name,
            upstream,
            username: self.username,
            password_file: self.password_file,
            ca_file: self.ca_file,
            repositories,
            tags,
            tag_regex,
            platforms,
            interval,
            pull_through,
            cache,
        })
    }
}

/// Users, tokens and access rules, when auth is on.
#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// `auth.htpasswd`: an htpasswd file (bcrypt) whose users sign in besides the store's.
    pub htpasswd: Option<PathBuf>,
    /// `auth.tokenTtl`: how long a bearer token from `/token` is valid.
    pub token_ttl: Duration,
    /// `auth.realm`: the token endpoint's URL in challenges (default: from the request's Host).
    pub realm: Option<String>,
    /// `auth.service`: the service name in challenges and tokens.
    pub service: String,
    /// `access` rules and `auth.admins`.
    pub access: crate::auth::Access,
}

/// `tls`: PEM files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    /// `tls.certFile`: the certificate chain, leaf first.
    pub cert_file: PathBuf,
    /// `tls.keyFile`: the private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `auth` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthSpec {
    /// `htpasswd`
    pub htpasswd: Option<PathBuf>,
    /// `tokenTtl`, e.g. `"5m"`
    pub token_ttl: Option<String>,
    /// `realm`
    pub realm: Option<String>,
    /// `service`
    pub service: Option<String>,
    /// `admins`
    pub admins: Option<Vec<String>>,
}

/// An `access` rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessSpec {
    /// Name pattern, e.g. `plant-a/*`.
    pub repositories: String,
    /// Users, `anonymous` or `authenticated`.
    pub pull: Option<Vec<String>>,
    /// Users, `anonymous` or `authenticated`.
    pub push: Option<Vec<String>>,
    /// Users, `anonymous` or `authenticated`.
    pub delete: Option<Vec<String>>,
}

/// `tls` as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TlsSpec {
    /// `certFile`
    pub cert_file: PathBuf,
    /// `keyFile`
    pub key_file: PathBuf,
}

/// True if `p` is a repository name pattern (`a-z 0-9 . _ - /` and `*`).
pub fn valid_pattern(p: &str) -> bool {
    !p.is_empty()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-/*".contains(&b))
}

impl AccessSpec {
    fn resolve(self, n: usize) -> Result<crate::auth::rules::AccessRule, String> {
        let what = format!("access rule {n} ({:?})", self.repositories);
        if !valid_pattern(&self.repositories) {
            return Err(format!(
                "{what}: repositories must be a repository name pattern such as plant-a/*"
            ));
        }
        let who = |v: Option<Vec<String>>, verb: &str| -> Result<Vec<_>, String> {
            v.unwrap_or_default()
                .iter()
                .map(|p| {
                    crate::auth::Principal::parse(p).map_err(|e| format!("{what}: {verb}: {e}"))
                })
                .collect()
        };
        Ok(crate::auth::rules::AccessRule {
            pull: who(self.pull, "pull")?,
            push: who(self.push, "push")?,
            delete: who(self.delete, "delete")?,
            repositories: self.repositories,
        })
    }
}

fn resolve_auth(
    spec: Option<AuthSpec>,
    access: Option<Vec<AccessSpec>>,
) -> Result<Option<AuthConfig>, String> {
    if spec.is_none() && access.is_none() {
        return Ok(None);
    }
    let spec = spec.unwrap_or_default();
    let token_ttl = match spec.token_ttl {
        None => Duration::from_secs(300),
        Some(t) => parse_duration(&t).map_err(|e| format!("auth.tokenTtl: {e}"))?,
    };
    if !(60..=86400).contains(&token_ttl.as_secs()) {
        return Err("auth.tokenTtl: must be 1m to 24h".into());
    }
    if let Some(r) = &spec.realm {
        let ok = (r.starts_with("http://") || r.starts_with("https://"))
            && r.bytes()
                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
        if !ok {
            return Err(format!(
                "auth.realm: {r:?} is not a URL such as https://registry.plant-a:5000/token"
            ));
        }
    }
    let service = spec.service.unwrap_or_else(|| "outpost".to_owned());
    if service.is_empty()
        || !service
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:-".contains(&b))
    {
        return Err(format!(
            "auth.service: {service:?} must be 1 or more of a-z A-Z 0-9 . _ : -"
        ));
    }
    let admins = spec.admins.unwrap_or_default();
    if let Some(bad) = admins.iter().find(|a| !crate::auth::valid_user_name(a)) {
        return Err(format!(
            "auth.admins: {bad:?} is not a user name (1-64 of a-z A-Z 0-9 . _ @ -)"
        ));
    }
    let rules = access
        .unwrap_or_default()
        .into_iter()
        .enumerate()
        .map(|(i, r)| r.resolve(i + 1))
        .collect::<Result<_, _>>()?;
    Ok(Some(AuthConfig {
        htpasswd: spec.htpasswd,
        token_ttl,
        realm: spec.realm,
        service,
        access: crate::auth::Access { rules, admins },
    }))
}

/// An `encryption` rule: repositories whose name matches `repositories` are created with
/// data key `key` (`None`: plaintext).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncryptionRule {
    /// A name pattern; `*` matches any run of characters, `/` included.
    pub repositories: String,
    /// The key's name and algorithm; `None` for plaintext.
    pub key: Option<(String, Algorithm)>,
}

impl EncryptionRule {
    /// True if repository `name` matches the pattern.
    pub fn matches(&self, name: &str) -> bool {
        glob(self.repositories.as_bytes(), name.as_bytes())
    }
}

/// `*`-only glob matching, iterative (no backtracking blow-up on hostile names).
pub fn glob(pattern: &[u8], name: &[u8]) -> bool {
    let (mut p, mut n) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while n < name.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, n));
            p += 1;
        } else if p < pattern.len() && pattern[p] == name[n] {
            p += 1;
            n += 1;
        } else if let Some((sp, sn)) = star {
            p = sp + 1;
            n = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A key name: 1 to 64 of `a-z A-Z 0-9 . _ -`.
pub fn valid_key_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// An `encryption` rule as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RuleSpec {
    /// Name pattern, e.g. `plant-a/*`.
    pub repositories: String,
    /// Key name; absent with `algorithm: "none"` for plaintext.
    pub key: Option<String>,
    /// `aes-256-gcm` (default), `chacha20-poly1305`, or `none`.
    pub algorithm: Option<String>,
}

impl RuleSpec {
    fn resolve(self, n: usize) -> Result<EncryptionRule, String> {
        let what = format!("encryption rule {n} ({:?})", self.repositories);
        if !valid_pattern(&self.repositories) {
            return Err(format!(
                "{what}: repositories must be a repository name pattern such as plant-a/*"
            ));
        }
        let key = match (self.key, self.algorithm.as_deref()) {
            (None, Some("none")) => None,
            (Some(k), Some("none")) => {
                return Err(format!(
                    "{what}: algorithm none (plaintext) takes no key {k:?}"
                ))
            }
            (None, _) => {
                return Err(format!(
                    "{what}: give a key name, or \"algorithm\": \"none\" for plaintext"
                ))
            }
            (Some(k), alg) => {
                if !valid_key_name(&k) {
                    return Err(format!(
                        "{what}: key {k:?} is not a key name (1-64 of a-z A-Z 0-9 . _ -)"
                    ));
                }
                let alg = alg.map_or(Ok(Algorithm::Aes256Gcm), |a| {
                    Algorithm::parse(a).map_err(|e| format!("{what}: {e}, or none"))
                })?;
                Some((k, alg))
            }
        };
        Ok(EncryptionRule {
            repositories: self.repositories,
            key,
        })
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            data_dir: PathBuf::from("outpost-data"),
            workers: 8,
            cache_size: 2 << 20,
            chunk_size: 256 << 10,
            max_manifest_size: 4 << 20,
            upload_ttl: Duration::from_secs(24 * 3600),
            min_free_space: 64 << 20,
            connections: crate::net::Limits::default(),
            blob_mounting: true,
            automatic_mount: true,
            master_key_file: None,
            encryption: Vec::new(),
            auth: None,
            tls: None,
            mirrors: Vec::new(),
            gc: crate::gc::config::GcConfig::default(),
            scrub: crate::scrub::config::ScrubConfig::default(),
            immutable_tags: Vec::new(),
            quotas: crate::quota::Quotas::default(),
            log_format: crate::logging::LogFormat::Text,
            metrics: crate::metrics::config::MetricsConfig::default(),
            audit: Default::default(),
            notifications: Vec::new(),
        }
    }
}

/// Settings as written by an operator (file or flags): all optional, sizes as text or numbers.
/// Keys are camelCase in the file (`dataDir`, `blobMounting`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Overrides {
    /// `listen`
    pub listen: Option<String>,
    /// `dataDir`
    pub data_dir: Option<PathBuf>,
    /// `workers`
    pub workers: Option<usize>,
    /// `cacheSize`
    pub cache_size: Option<Size>,
    /// `chunkSize`
    pub chunk_size: Option<Size>,
    /// `maxManifestSize`
    pub max_manifest_size: Option<Size>,
    /// `uploadTtl`, e.g. `"24h"`
    pub upload_ttl: Option<String>,
    /// `minFreeSpace`
    pub min_free_space: Option<Size>,
    /// `ioTimeout`, e.g. `"2m"`
    pub io_timeout: Option<String>,
    /// `maxConnections`
    pub max_connections: Option<usize>,
    /// `headerTimeout`, e.g. `"10s"`
    pub header_timeout: Option<String>,
    /// `idleTimeout`, e.g. `"60s"`
    pub idle_timeout: Option<String>,
    /// `minTransferRate`, bytes per second, e.g. `"1KiB"`
    pub min_transfer_rate: Option<Size>,
    /// `blobMounting`: `"enabled"` or `"disabled"`
    pub blob_mounting: Option<String>,
    /// `automaticMount`: `"enabled"` or `"disabled"`
    pub automatic_mount: Option<String>,
    /// `masterKeyFile`
    pub master_key_file: Option<PathBuf>,
    /// `encryption`: rules
    pub encryption: Option<Vec<RuleSpec>>,
    /// `auth`: users and tokens
    pub auth: Option<AuthSpec>,
    /// `access`: rules
    pub access: Option<Vec<AccessSpec>>,
    /// `tls`: certificate and key files
    pub tls: Option<TlsSpec>,
    /// `mirrors`: upstream registries
    pub mirrors: Option<Vec<MirrorSpec>>,
    /// `gcGracePeriod`, e.g. `"24h"`
    pub gc_grace_period: Option<String>,
    /// `gcInterval`, e.g. `"1h"`, or `"off"`
    pub gc_interval: Option<String>,
    /// `scrubRate`, e.g. `"1MiB"` (per second)
    pub scrub_rate: Option<Size>,
    /// `scrubInterval`, e.g. `"7d"`, or `"off"`
    pub scrub_interval: Option<String>,
    /// `lifecycle`: rules per repository pattern
    pub lifecycle: Option<Vec<crate::gc::config::PolicySpec>>,
    /// `immutableTags`: rules per repository pattern
    pub immutable_tags: Option<Vec<crate::registry::immutable::ImmutableSpec>>,
    /// `maxStoreSize`: the whole store's byte budget
    pub max_store_size: Option<Size>,
    /// `quotas`: byte budgets per repository pattern
    pub quotas: Option<Vec<crate::quota::config::QuotaSpec>>,
    /// `logFormat`: `"text"` or `"json"`
    pub log_format: Option<String>,
    /// `metrics`: `users`, `listen`
    pub metrics: Option<crate::metrics::config::MetricsSpec>,
    /// `audit`: `maxRecords`, `log`
    pub audit: Option<crate::audit::config::AuditSpec>,
    /// `notifications`: webhook endpoints
    pub notifications: Option<Vec<crate::events::config::EndpointSpec>>,
}

/// `"enabled"` or `"disabled"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Toggle {
    /// On.
    Enabled,
    /// Off.
    Disabled,
}

impl Toggle {
    /// Parses `enabled` / `disabled` (as written on a command line).
    pub fn parse(s: &str) -> Result<Toggle, String> {
        match s {
            "enabled" => Ok(Toggle::Enabled),
            "disabled" => Ok(Toggle::Disabled),
            _ => Err(format!("{s:?} is neither enabled nor disabled")),
        }
    }

    /// True for `Enabled`.
    pub fn on(self) -> bool {
        self == Toggle::Enabled
    }

    /// The word for `on`.
    pub fn word(on: bool) -> &'static str {
        if on {
            "enabled"
        } else {
            "disabled"
        }
    }
}

/// A byte size: a JSON number, or text such as `"4MiB"`, `"512KiB"`, `"1048576"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Size {
    /// Plain bytes.
    Bytes(u64),
    /// Text with an optional unit.
    Text(String),
}

impl Size {
    /// The size in bytes; `what` names the key in errors.
    pub fn bytes(&self, what: &str) -> Result<usize, String> {
        match self {
            Size::Bytes(n) => usize::try_from(*n).map_err(|_| format!("{what}: {n} is too large")),
            Size::Text(t) => parse_size(t).map_err(|e| format!("{what}: {e}")),
        }
    }

    /// The size in bytes, as u64: sizes of stored data may pass 4 GiB on 32-bit ARM.
    pub fn bytes_u64(&self) -> Result<u64, String> {
        match self {
            Size::Bytes(n) => Ok(*n),
            Size::Text(t) => parse_size_u64(t),
        }
    }
}

/// Splits `"64 KiB"` into 64 and `"KiB"`; None if it does not start with a number.
fn number_and_unit(s: &str) -> Option<(u64, &str)> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    Some((num.parse().ok()?, unit.trim()))
}

/// Parses `1234`, `64KiB`, `4MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`: all powers of 1024).
pub fn parse_size(s: &str) -> Result<usize, String> {
    usize::try_from(parse_size_u64(s)?).map_err(|_| format!("{s:?} is too large"))
}

/// `parse_size` for sizes that may exceed the address space (store budgets on 32-bit ARM).
pub fn parse_size_u64(s: &str) -> Result<u64, String> {
    let (num, unit) = number_and_unit(s)
        .ok_or_else(|| format!("{s:?} is not a size (e.g. 4MiB, 512KiB, 1048576)"))?;
    let mult: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        u => {
            return Err(format!(
                "unknown unit {u:?} in {s:?} (use B, KiB, MiB or GiB)"
            ))
        }
    };
    num.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Parses `90`, `90s`, `30m`, `24h`, `7d` (a number without unit is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) =
        number_and_unit(s).ok_or_else(|| format!("{s:?} is not a duration (e.g. 30m, 24h, 7d)"))?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        u => return Err(format!("unknown unit {u:?} in {s:?} (use s, m, h or d)")),
    };
    num.checked_mul(mult)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{s:?} is too long"))
}

/// An optional `enabled`/`disabled` value, named `what` in errors.
fn toggle(v: Option<String>, default: bool, what: &str) -> Result<bool, String> {
    v.map_or(Ok(default), |s| {
        Toggle::parse(&s)
            .map(Toggle::on)
            .map_err(|e| format!("{what}: {e}"))
    })
}

impl Overrides {
    /// Reads a JSON config file; unknown keys are errors, so a typo does not pass silently.
    pub fn from_file(path: &Path) -> Result<Overrides, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read config {}: {e}", path.display()))?;
        serde_json::from_str(&text).map_err(|e| format!("config {}: {e}", path.display()))
    }

    /// Lays `other`'s settings over these.
    pub fn merge(self, other: Overrides) -> Overrides {
        Overrides {
            listen: other.listen.or(self.listen),
            data_dir: other.data_dir.or(self.data_dir),
            workers: other.workers.or(self.workers),
            cache_size: other.cache_size.or(self.cache_size),
            chunk_size: other.chunk_size.or(self.chunk_size),
            max_manifest_size: other.max_manifest_size.or(self.max_manifest_size),
            upload_ttl: other.upload_ttl.or(self.upload_ttl),
            min_free_space: other.min_free_space.or(self.min_free_space),
            io_timeout: other.io_timeout.or(self.io_timeout),
            max_connections: other.max_connections.or(self.max_connections),
            header_timeout: other.header_timeout.or(self.header_timeout),
            idle_timeout: other.idle_timeout.or(self.idle_timeout),
            min_transfer_rate: other.min_transfer_rate.or(self.min_transfer_rate),
            blob_mounting: other.blob_mounting.or(self.blob_mounting),
            automatic_mount: other.automatic_mount.or(self.automatic_mount),
            master_key_file: other.master_key_file.or(self.master_key_file),
            encryption: other.encryption.or(self.encryption),
            auth: other.auth.or(self.auth),
            access: other.access.or(self.access),
            tls: other.tls.or(self.tls),
            mirrors: other.mirrors.or(self.mirrors),
            gc_grace_period: other.gc_grace_period.or(self.gc_grace_period),
            gc_interval: other.gc_interval.or(self.gc_interval),
            scrub_rate: other.scrub_rate.or(self.scrub_rate),
            scrub_interval: other.scrub_interval.or(self.scrub_interval),
            lifecycle: other.lifecycle.or(self.lifecycle),
            immutable_tags: other.immutable_tags.or(self.immutable_tags),
            max_store_size: other.max_store_size.or(self.max_store_size),
            quotas: other.quotas.or(self.quotas),
            log_format: other.log_format.or(self.log_format),
            metrics: other.metrics.or(self.metrics),
            audit: other.audit.or(self.audit),
            notifications: other.notifications.or(self.notifications),
        }
    }

    /// Applies these over the defaults and checks every value.
    pub fn resolve(self) -> Result<Config, String> {
        let d = Config::default();
        let listen = match self.listen {
            None => d.listen,
            Some(a) => a.parse().map_err(|_| {
                format!("listen: {a:?} is not an address such as 127.0.0.1:5000 or [::1]:5000")
            })?,
        };
        let size =
            |v: Option<Size>, default: usize, what: &str| v.map_or(Ok(default), |s| s.bytes(what));
        // Connection timeouts: 1 s to a day (a day is as good as never, and stays far from
        // the end of the clock).
        let duration = |v: Option<String>, default: Duration, what: &str| match v {
            None => Ok(default),
            Some(t) => match parse_duration(&t) {
                Ok(d) if d.is_zero() || d > Duration::from_secs(86400) => {
                    Err(format!("{what}: {t:?} is out of range (1s to 1d)"))
                }
                Ok(d) => Ok(d),
                Err(e) => Err(format!("{what}: {e}")),
            },
        };
        let dc = d.connections;
        let io_timeout = duration(self.io_timeout, dc.phases.window, "ioTimeout")?;
        let connections = crate::net::Limits {
            max_connections: self.max_connections.unwrap_or(dc.max_connections),
            phases: tiny_http::Limits {
                head: duration(self.header_timeout, dc.phases.head, "headerTimeout")?,
                idle: duration(self.idle_timeout, dc.phases.idle, "idleTimeout")?,
                window: io_timeout,
                min_rate: match self.min_transfer_rate {
                    None => dc.phases.min_rate,
                    // "1KiB/s" reads as well as "1KiB".
                    Some(Size::Text(t)) => parse_size(t.trim().trim_end_matches("/s"))
                        .map_err(|e| format!("minTransferRate: {e} (bytes per second)"))?
                        as u64,
                    Some(Size::Bytes(n)) => n,
                },
                drain: dc.phases.drain,
            },
        };
        let c = Config {
            listen,
            data_dir: self.data_dir.unwrap_or(d.data_dir),
            workers: self.workers.unwrap_or(d.workers),
            cache_size: size(self.cache_size, d.cache_size, "cacheSize")?,
            chunk_size: size(self.chunk_size, d.chunk_size, "chunkSize")?,
            max_manifest_size: size(
                self.max_manifest_size,
                d.max_manifest_size,
                "maxManifestSize",
            )?,
            min_free_space: size(self.min_free_space, d.min_free_space, "minFreeSpace")?,
            connections,
            upload_ttl: match self.upload_ttl {
                None => d.upload_ttl,
                Some(t) => parse_duration(&t).map_err(|e| format!("uploadTtl: {e}"))?,
            },
            blob_mounting: toggle(self.blob_mounting, d.blob_mounting, "blobMounting")?,
            automatic_mount: toggle(self.automatic_mount, d.automatic_mount, "automaticMount")?,
            master_key_file: self.master_key_file,
            encryption: self
                .encryption
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, r)| r.resolve(i + 1))
                .collect::<Result<_, _>>()?,
            auth: resolve_auth(self.auth, self.access)?,
            tls: self.tls.map(|t| TlsConfig {
                cert_file: t.cert_file,
                key_file: t.key_file,
            }),
            mirrors: self
                .mirrors
                .unwrap_or_default()
                .into_iter()
                .map(MirrorSpec::resolve)
                .collect::<Result<_, _>>()?,
            gc: crate::gc::config::resolve(self.gc_grace_period, self.gc_interval, self.lifecycle)?,
            scrub: crate::scrub::config::resolve(self.scrub_rate, self.scrub_interval)?,
            immutable_tags: self
                .immutable_tags
                .unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, r)| r.resolve(i + 1))
                .collect::<Result<_, _>>()?,
            quotas: crate::quota::config::resolve(self.max_store_size, self.quotas)?,
            log_format: match self.log_format {
                None => d.log_format,
                Some(f) => {
                    crate::logging::LogFormat::parse(&f).map_err(|e| format!("logFormat: {e}"))?
                }
            },
            metrics: self.metrics.unwrap_or_default().resolve()?,
            audit: crate::audit::config::resolve(self.audit)?,
            notifications: crate::events::config::resolve(self.notifications)?,
        };
        if c.metrics.listen == Some(c.listen) && c.listen.port() != 0 {
            return Err(format!(
                "metrics.listen: {} is the registry's own listen address: give the metrics \
                 listener another port (or leave it out: /metrics is on the main port too)",
                c.listen
            ));
        }
        for (i, m) in c.mirrors.iter().enumerate() {
            if c.mirrors[..i].iter().any(|o| o.name == m.name) {
                return Err(format!("mirrors: two are named {:?}", m.name));
            }
            if let Some(p) = &m.pull_through {
                if c.mirrors[..i]
                    .iter()
                    .any(|o| o.pull_through.as_ref() == Some(p))
                {
                    return Err(format!("mirrors: two use pullThrough {p:?}"));
                }
            }
        }
        let mut algorithms = std::collections::HashMap::new();
        for (name, alg) in c.encryption.iter().filter_map(|r| r.key.as_ref()) {
            if let Some(other) = algorithms.insert(name, alg) {
                if other != alg {
                    return Err(format!(
                        "encryption: key {name:?} is given as {} and as {}: one key, one algorithm",
                        other.name(),
                        alg.name()
                    ));
                }
            }
        }
        let within = |v: usize, lo: usize, hi: usize, what: &str, hint: &str| {
            if (lo..=hi).contains(&v) {
                Ok(())
            } else {
                Err(format!("{what}: {v} is out of range ({hint})"))
            }
        };
        within(c.workers, 1, 1024, "workers", "1 to 1024")?;
        within(
            c.cache_size,
            64 << 10,
            usize::MAX,
            "cacheSize",
            "at least 64KiB",
        )?;
        within(
            c.chunk_size,
            4 << 10,
            64 << 20,
            "chunkSize",
            "4KiB to 64MiB",
        )?;
        if c.upload_ttl.is_zero() {
            return Err("uploadTtl: must be longer than 0s".into());
        }
        within(
            c.connections.max_connections,
            1,
            1 << 16,
            "maxConnections",
            "1 to 65536; each connection has a thread",
        )?;
        if !c.chunk_size.is_power_of_two() {
            return Err(format!(
                "chunkSize: {} is not a power of two (e.g. 256KiB, 1MiB, 4MiB)",
                c.chunk_size
            ));
        }
        within(
            c.max_manifest_size,
            1 << 10,
            64 << 20,
            "maxManifestSize",
            "1KiB to 64MiB",
        )?;
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4MiB"), Ok(4 << 20));
        assert_eq!(parse_size("512 KiB"), Ok(512 << 10));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("100"), Ok(100));
        assert!(parse_size("4 parsecs").is_err());
        assert!(parse_size("MiB").is_err());
    }

    #[test]
    fn encryption_rules() {
        let file: Overrides = serde_json::from_str(
            r#"{"encryption": [
                {"repositories": "plant-a/public/*", "algorithm": "none"},
                {"repositories": "plant-a/*", "key": "plant-a", "algorithm": "chacha20-poly1305"},
                {"repositories": "*", "key": "site"}]}"#,
        )
        .unwrap();
        let c = file.resolve().unwrap();
        let key_of = |name: &str| {
            let rule = c.encryption.iter().find(|r| r.matches(name)).unwrap();
            rule.key.as_ref().map(|k| (k.0.as_str(), k.1))
        };
        assert_eq!(key_of("plant-a/public/x"), None);
        assert_eq!(
            key_of("plant-a/app/web"),
            Some(("plant-a", Algorithm::ChaCha20Poly1305))
        );
        assert_eq!(key_of("plant-b"), Some(("site", Algorithm::Aes256Gcm)));
        let bad = |json: &str| {
            let o: Overrides = serde_json::from_str(json).unwrap();
            o.resolve().unwrap_err()
        };
        assert!(bad(r#"{"encryption":[{"repositories":"a/*"}]}"#).contains("give a key"));
        assert!(
            bad(r#"{"encryption":[{"repositories":"a","key":"k","algorithm":"des"}]}"#)
                .contains("not an algorithm")
        );
        assert!(bad(r#"{"encryption":[{"repositories":"A!","key":"k"}]}"#).contains("pattern"));
        assert!(bad(r#"{"encryption":[{"repositories":"a","key":"k"},
            {"repositories":"b","key":"k","algorithm":"chacha20-poly1305"}]}"#)
        .contains("one key, one algorithm"));
        assert!(glob(b"a*b*c", b"axxbyyc") && !glob(b"a*b*c", b"axxbyy"));
        assert!(
            glob(b"*", b"")
                && glob(b"plant-a/*", b"plant-a/x/y")
                && !glob(b"plant-a/*", b"plant-b/x")
        );
    }

    #[test]
    fn metrics_listener_beside_the_main_one() {
        let resolve = |json: &str| serde_json::from_str::<Overrides>(json).unwrap().resolve();
        let c = resolve(r#"{"metrics": {"users": ["prom"], "listen": "9102"}}"#).unwrap();
        assert_eq!(c.metrics.users, ["prom"]);
        assert_eq!(c.metrics.listen, Some("127.0.0.1:9102".parse().unwrap()));
        let e =
            resolve(r#"{"listen": "127.0.0.1:7000", "metrics": {"listen": "7000"}}"#).unwrap_err();
        assert!(e.contains("the registry's own listen address"), "{e}");
        // Port 0 on both: two ports the system picks.
        assert!(resolve(r#"{"listen": "127.0.0.1:0", "metrics": {"listen": "0"}}"#).is_ok());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert!(parse_duration("1 week").is_err());
        assert!(parse_duration("h").is_err());
    }

    #[test]
    fn mirrors() {
        let resolve = |m: &str| -> Result<Config, String> {
            serde_json::from_str::<Overrides>(&format!(r#"{{"mirrors": {m}}}"#))
                .map_err(|e| e.to_string())?
                .resolve()
        };
        let c = resolve(
            r#"[{"name": "hq", "upstream": "https://r.example.com/", "repositories": ["a/b"],
                 "tagRegex": "^v1\\.", "platforms": ["linux/arm64"], "interval": "15m"}]"#,
        )
        .unwrap();
        let m = &c.mirrors[0];
        assert_eq!(m.upstream, "https://r.example.com");
        assert!(m.wants_tag("v1.2") && !m.wants_tag("v2.0"));
        assert_eq!(m.interval, Some(Duration::from_secs(900)));
        let err = |m: &str, want: &str| {
            let e = resolve(m).unwrap_err();
            assert!(e.contains(want), "{m}: {e}");
        };
        err(
            r#"[{"name": "x", "upstream": "https://a"}]"#,
            "give repositories",
        );
        err(
            r#"[{"name": "x", "upstream": "https://a", "repositories": ["a"], "tagRegex": "("}]"#,
            "tagRegex",
        );
        err(
            r#"[{"name": "x", "upstream": "https://a/v2/", "pullThrough": "hub"}]"#,
            "must be http(s)://HOST",
        );
        err(
            r#"[{"name": "x", "upstream": "https://a", "pullThrough": "hub"},
                {"name": "x", "upstream": "https://b", "pullThrough": "hub2"}]"#,
            "two are named",
        );
        err(
            r#"[{"name": "x", "upstream": "https://a", "pullThrough": "Hub"}]"#,
            "pullThrough",
        );
        err(
            r#"[{"name": "x", "upstream": "https://a", "pullThrough": "h", "colour": 1}]"#,
            "unknown field",
        );
        // Regression: an interval past what the clock can add panicked the scheduler.
        for far in ["106751991167302d", "366d"] {
            err(
                &format!(
                    r#"[{{"name": "x", "upstream": "https://a", "repositories": ["a"], "interval": "{far}"}}]"#
                ),
                "interval must be 1s to 365d",
            );
        }
        assert!(resolve(
            r#"[{"name": "x", "upstream": "https://a", "repositories": ["a"], "interval": "365d"}]"#
        )
        .is_ok());
        // A pull-through cache's own settings.
        let c = resolve(
            r#"[{"name": "hub", "upstream": "https://a", "pullThrough": "hub",
                 "cache": {"tagTtl": "0s", "maxSize": "8GiB", "pinned": ["library/alpine:3.20", "base"]}}]"#,
        )
        .unwrap();
        let cache = &c.mirrors[0].cache;
        assert_eq!(cache.tag_ttl, Duration::ZERO);
        assert_eq!(cache.max_size, Some(8 << 30)); // past 4 GiB, on 32-bit ARM too
        assert!(cache.pins("library/alpine", Some("3.20")) && !cache.pins("library/alpine", None));
        assert!(cache.pins("base", None) && cache.pins("base", Some("v1")));
        let default =
            resolve(r#"[{"name": "hub", "upstream": "https://a", "pullThrough": "hub"}]"#);
        assert_eq!(
            default.unwrap().mirrors[0].cache.tag_ttl,
            Duration::from_secs(300)
        );
        for (cache, want) in [
            (r#""cache": {"maxSize": 0}"#, "maxSize must be more than 0"),
            (r#""cache": {"maxSize": "lots"}"#, "cache.maxSize"),
            (
                r#""cache": {"tagTtl": "400d"}"#,
                "tagTtl must be 0s to 365d",
            ),
            (r#""cache": {"pinned": ["Alpine"]}"#, "cache.pinned"),
            (r#""cache": {"pinned": ["alpine:"]}"#, "cache.pinned"),
            (r#""cache": {"size": 1}"#, "unknown field"),
        ] {
            err(
                &format!(
                    r#"[{{"name": "x", "upstream": "https://a", "pullThrough": "h", {cache}}}]"#
                ),
                want,
            );
        }
        err(
            r#"[{"name": "x", "upstream": "https://a", "repositories": ["a"], "cache": {}}]"#,
            "cache settings need pullThrough",
        );
    }

    #[test]
    fn layering_and_validation() {
        let file: Overrides = serde_json::from_str(
            r#"{"workers": 3, "chunkSize": "256KiB", "blobMounting": "disabled"}"#,
        )
        .unwrap();
        let flags = Overrides {
            workers: Some(5),
            ..Default::default()
        };
        let c = file.merge(flags).resolve().unwrap();
        assert_eq!((c.workers, c.chunk_size), (5, 256 << 10));
        assert!(!c.blob_mounting && c.automatic_mount);
        let off: Overrides = serde_json::from_str(r#"{"blobMounting": "off"}"#).unwrap();
        assert!(off.resolve().unwrap_err().starts_with("blobMounting:"));
        assert!(serde_json::from_str::<Overrides>(r#"{"chunk_size": 4096}"#).is_err());
        assert!(serde_json::from_str::<Overrides>(r#"{"wrokers": 3}"#).is_err());
        assert!(Overrides {
            workers: Some(0),
            ..Default::default()
        }
        .resolve()
        .is_err());
        let odd = Overrides {
            chunk_size: Some(Size::Text("100KiB".into())),
            ..Default::default()
        };
        assert!(odd.resolve().unwrap_err().contains("power of two"));
        assert!(Overrides {
            listen: Some("nowhere".into()),
            ..Default::default()
        }
        .resolve()
        .is_err());
    }

    #[test]
    fn connection_limits() {
        let limits = |json: &str| {
            serde_json::from_str::<Overrides>(json)
                .unwrap()
                .resolve()
                .map(|c| c.connections)
        };
        let d = limits("{}").unwrap();
        assert_eq!(d.max_connections, 256);
        assert_eq!(d.phases, tiny_http::Limits::default());
        let c = limits(
            r#"{"maxConnections": 800, "headerTimeout": "5s", "idleTimeout": "2m",
                "ioTimeout": "30s", "minTransferRate": "2KiB/s"}"#,
        )
        .unwrap();
        assert_eq!(c.max_connections, 800);
        assert_eq!(c.phases.head, Duration::from_secs(5));
        assert_eq!(c.phases.idle, Duration::from_secs(120));
        assert_eq!(c.phases.window, Duration::from_secs(30));
        assert_eq!(c.phases.min_rate, 2048);
        assert_eq!(
            limits(r#"{"minTransferRate": 0}"#).unwrap().phases.min_rate,
            0
        );
        for (bad, says) in [
            (r#"{"maxConnections": 0}"#, "maxConnections"),
            (r#"{"maxConnections": 100000}"#, "maxConnections"),
            (r#"{"headerTimeout": "0s"}"#, "headerTimeout"),
            (r#"{"idleTimeout": "2d"}"#, "idleTimeout"),
            (r#"{"ioTimeout": "99999999999999999s"}"#, "ioTimeout"),
            (r#"{"minTransferRate": "fast"}"#, "minTransferRate"),
        ] {
            let e = limits(bad).unwrap_err();
            assert!(e.starts_with(says), "{bad}: {e}");
        }
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::registry::prop_config;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    /// Values an operator (or a careless generator of config files) might write.
    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            any::<u64>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            Just(Value::from(u64::MAX)),
            "[0-9]{1,25}[a-zA-Z]{0,3}".prop_map(Value::from),
            "[0-9]{1,3} ?(KiB|MiB|GiB|s|m|h|d|/s)".prop_map(Value::from),
            prop::sample::select(vec![
                "enabled",
                "disabled",
                "127.0.0.1:0",
                "[::1]:5000",
                "*",
                "a/*",
                "none",
                "aes-256-gcm",
                "https://r.example",
                "http://",
                "linux/arm64",
                "(",
                "a{99999}",
                "213503982334601d",
                "106751991167302d",
                "18446744073709551615",
            ])
            .prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::from),
            Just(Value::Null),
            Just(json!([])),
        ]
    }

    fn object(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
        proptest::collection::vec(
            (prop::sample::select(keys), value()),
            0..keys.len().min(6) + 1,
        )
        .prop_map(|kv| Value::Object(kv.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()))
    }

    fn config_json() -> impl Strategy<Value = Value> {
        let mirror = object(&[
            "name",
            "upstream",
            "username",
            "passwordFile",
            "caFile",
            "interval",
            "tagRegex",
            "pullThrough",
        ])
        .prop_flat_map(|m| {
            // Durations of any size that fit the parser (half of them past what the clock
            // can add), often in place of the random interval.
            let interval = (
                any::<u64>(),
                prop::sample::select(vec![("s", 1), ("m", 60), ("h", 3600), ("d", 86400)]),
            )
                .prop_map(|(n, (unit, mult))| Value::from(format!("{}{unit}", (n / mult).max(1))));
            (Just(m), proptest::option::of(interval))
        })
        .prop_map(|(mut m, interval)| {
            // Enough that many entries pass the early checks and reach the later ones.
            for (k, v) in [
                ("name", "m"),
                ("upstream", "https://r.example"),
                ("pullThrough", "hub"),
            ] {
                if m.get(k).is_none_or(|v| !v.is_string()) {
                    m[k] = Value::from(v);
                }
            }
            if let Some(i) = interval {
                m["interval"] = i;
            }
            m
        });
        let top = object(&[
            "listen",
            "workers",
            "cacheSize",
            "chunkSize",
            "maxManifestSize",
            "uploadTtl",
            "minFreeSpace",
            "ioTimeout",
            "maxConnections",
            "headerTimeout",
            "idleTimeout",
            "minTransferRate",
            "blobMounting",
            "automaticMount",
            "maxStoreSize",
            "bogus",
        ]);
        let auth = object(&["tokenTtl", "realm", "service"]);
        let rule = object(&["repositories", "key", "algorithm"]);
        let quota = object(&["repositories", "maxSize"]);
        (
            top,
            proptest::option::of(auth),
            proptest::collection::vec(rule, 0..3),
            proptest::collection::vec(mirror, 0..3),
            proptest::collection::vec(quota, 0..3),
        )
            .prop_map(|(mut top, auth, rules, mirrors, quotas)| {
                if !quotas.is_empty() {
                    top["quotas"] = Value::from(quotas);
                }
                if let Some(a) = auth {
                    top["auth"] = a;
                }
                if !rules.is_empty() {
                    top["encryption"] = Value::from(rules);
                }
                if !mirrors.is_empty() {
                    let mut mirrors = mirrors;
                    for (i, m) in mirrors.iter_mut().enumerate().skip(1) {
                        // Distinct names and caches, or only the first mirror is ever checked.
                        m["name"] = Value::from(format!("m{i}"));
                        m["pullThrough"] = Value::from(format!("hub{i}"));
                    }
                    top["mirrors"] = Value::from(mirrors);
                }
                top
            })
    }

    proptest! {
        #![proptest_config(prop_config(512))]

        /// Any config file: read or refused, and resolved or refused, without a panic; every
        /// duration of an accepted config that is added to the clock can be (the upload TTL
        /// is only subtracted, saturating, and divided).
        #[test]
        fn any_config_file(v in config_json(), junk in "\\PC{0,60}") {
            let _ = serde_json::from_str::<Overrides>(&junk).map(Overrides::resolve);
            let Ok(o) = serde_json::from_value::<Overrides>(v) else { return Ok(()) };
            if let Ok(c) = o.resolve() {
                let now = std::time::Instant::now();
                let p = c.connections.phases;
                for d in c.mirrors.iter().filter_map(|m| m.interval).chain([p.head, p.idle, p.window]) {
                    prop_assert!(now.checked_add(d).is_some(), "{:?}", d);
                }
            }
        }

        /// Sizes and durations: any text parses or is refused; `N UNIT` is N times the unit,
        /// or "too large" when that does not fit.
        #[test]
        fn sizes_and_durations(
            n in prop_oneof![any::<u64>(), 0u64..5000],
            unit in prop::sample::select(vec!["", "b", "K", "kb", "KiB", "m", "MiB", "G", "gib", "s", "h", "d"]),
            junk in "[0-9 ]{0,25}[a-zA-Z/]{0,4}|\\PC{0,20}",
        ) {
            let _ = (parse_size(&junk), parse_duration(&junk));
            let size_mult: Option<u64> = match unit.to_ascii_lowercase().as_str() {
                "" | "b" => Some(1),
                "k" | "kb" | "kib" => Some(1 << 10),
                "m" | "mib" => Some(1 << 20),
                "g" | "gib" => Some(1 << 30),
                _ => None,
            };
            if let Some(mult) = size_mult {
                let want = n.checked_mul(mult).and_then(|b| usize::try_from(b).ok());
                prop_assert_eq!(parse_size(&format!("{n}{unit}")).ok(), want);
            }
            let secs: Option<u64> = match unit {
                "" | "s" => Some(1),
                "m" => Some(60),
                "h" => Some(3600),
                "d" => Some(86400),
                _ => None,
            };
            if let Some(mult) = secs {
                let want = n.checked_mul(mult).map(Duration::from_secs);
                prop_assert_eq!(parse_duration(&format!("{n} {unit}")).ok(), want);
            }
        }

        /// The `*` glob agrees with a plain recursive matcher (and is fast on hostile
        /// patterns, which the recursive one is not).
        #[test]
        fn glob_agrees_with_recursion(p in "[ab*/]{0,12}", n in "[ab/]{0,12}") {
            fn slow(p: &[u8], n: &[u8]) -> bool {
                match (p.first(), n.first()) {
                    (None, _) => n.is_empty(),
                    (Some(b'*'), _) => slow(&p[1..], n) || (!n.is_empty() && slow(p, &n[1..])),
                    (Some(c), Some(d)) => c == d && slow(&p[1..], &n[1..]),
                    (Some(_), None) => false,
                }
            }
            prop_assert_eq!(glob(p.as_bytes(), n.as_bytes()), slow(p.as_bytes(), n.as_bytes()));
        }
    }
}
