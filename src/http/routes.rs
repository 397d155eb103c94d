//! The `/v2/...` path grammar: a request path becomes a `Route` with a validated name.

use super::errors::{ApiError, Code};
use crate::metrics::Kind;
use crate::registry::names::valid_name;

/// What a request path addresses.
#[derive(Debug, PartialEq, Eq)]
pub enum Route {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(String),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(String, String),
    /// `/v2/<name>/blobs/<digest>`
    Blob(String, String),
    /// `/v2/<name>/blobs/uploads/`
    Uploads(String),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(String, String),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(String, String),
    /// `/admin/settings`
    AdminSettings,
    /// `/admin/stats`
    AdminStats,
    /// `/admin/check`
    AdminCheck,
    /// `/admin/keys`
    AdminKeys,
    /// `/admin/repositories/<name>`
    AdminRepository(String),
    /// `/admin/users`
    AdminUsers,
    /// `/admin/users/<name>`
    AdminUser(String),
    /// `/admin/mirrors`
    AdminMirrors,
    /// `/admin/mirrors/<name>/run`
    AdminMirrorRun(String),
    /// `/admin/gc`: a collector pass (`?dryRun=true`: only its plan)
    AdminGc,
    /// `/admin/du`: space per repository
    AdminDu,
    /// `/admin/scrub`: the scrub's status (GET), a pass now (POST, `?repository=R`)
    AdminScrub,
    /// `/admin/audit`
    AdminAudit,
    /// `/admin/pulls`
    AdminPulls,
    /// `/token`: Docker's token endpoint
    Token,
    /// `/healthz` or `/readyz`
    Health(super::health::Probe),
    /// `/metrics`: Prometheus metrics
    Metrics,
}

/// Parses the path part of a request URL (no query).
pub fn route(path: &str) -> Result<Route, ApiError> {
    let not_found = || ApiError::new(404, Code::Unsupported, "no such endpoint");
    match path {
        "/admin/settings" => return Ok(Route::AdminSettings),
        "/admin/stats" => return Ok(Route::AdminStats),
        "/admin/check" => return Ok(Route::AdminCheck),
        "/admin/keys" => return Ok(Route::AdminKeys),
        "/admin/users" => return Ok(Route::AdminUsers),
        "/admin/mirrors" => return Ok(Route::AdminMirrors),
        "/admin/gc" => return Ok(Route::AdminGc),
        "/admin/du" => return Ok(Route::AdminDu),
        "/admin/scrub" => return Ok(Route::AdminScrub),
        "/admin/audit" => return Ok(Route::AdminAudit),
        "/admin/pulls" => return Ok(Route::AdminPulls),
        "/token" => return Ok(Route::Token),
        "/metrics" => return Ok(Route::Metrics),
        _ => {}
    }
    if let Some(probe) = super::health::Probe::at(path) {
        return Ok(Route::Health(probe));
    }
    if let Some(name) = path.strip_prefix("/admin/users/") {
        return if crate::auth::valid_user_name(name) {
            Ok(Route::AdminUser(name.to_owned()))
        } else {
            Err(ApiError::new(
                400,
                Code::Unsupported,
                "invalid user name: 1-64 of a-z A-Z 0-9 . _ @ -",
            ))
        };
    }
    if let Some(name) = path
        .strip_prefix("/admin/mirrors/")
        .and_then(|r| r.strip_suffix("/run"))
    {
        return if name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        {
            Ok(Route::AdminMirrorRun(name.to_owned()))
        } else {
            Err(not_found())
        };
    }
    if let Some(name) = path.strip_prefix("/admin/repositories/") {
        return if valid_name(name) {
            Ok(Route::AdminRepository(name.to_owned()))
        } else {
            Err(ApiError::new(
                400,
                Code::NameInvalid,
                "invalid repository name",
            ))
        };
    }
    let rest = match path.strip_prefix("/v2") {
        Some("" | "/") => return Ok(Route::Base),
        Some(r) => r.strip_prefix('/').ok_or_else(not_found)?,
        None => return Err(not_found()),
    };
    if rest == "_catalog" {
        return Ok(Route::Catalog);
    }
    let segs: Vec<String> = rest
        .split('/')
        .map(percent_decode)
        .collect::<Option<_>>()
        .ok_or_else(|| ApiError::new(400, Code::NameInvalid, "bad percent-encoding in path"))?;
    let n = segs.len();
    let name = |k: usize| -> Result<String, ApiError> {
        let name = segs[..n - k].join("/");
        if valid_name(&name) {
            Ok(name)
        } else {
            Err(
                ApiError::new(400, Code::NameInvalid, "invalid repository name").detail(
                    serde_json::json!({ "name": name.chars().take(300).collect::<String>() }),
                ),
            )
        }
    };
    let at = |i: usize| if i <= n { segs[n - i].as_str() } else { "" };
    if n >= 3 && at(3) == "blobs" && at(2) == "uploads" {
        return if at(1).is_empty() {
            Ok(Route::Uploads(name(3)?))
        } else {
            Ok(Route::Upload(name(3)?, at(1).to_owned()))
        };
    }
    if n >= 3 && at(2) == "blobs" && at(1) == "uploads" {
        return Ok(Route::Uploads(name(2)?));
    }
    if n >= 3 && at(2) == "tags" && at(1) == "list" {
        return Ok(Route::Tags(name(2)?));
    }
    if n >= 3 {
        let kind = at(2);
        let last = at(1).to_owned();
        match kind {
            "blobs" => return Ok(Route::Blob(name(2)?, last)),
            "manifests" => return Ok(Route::Manifest(name(2)?, last)),
            "referrers" => return Ok(Route::Referrers(name(2)?, last)),
            _ => {}
        }
    }
    Err(not_found())
}

/// What `path` addresses, for the request metrics: the route's kind as `route` would parse
/// it, told from the last segments alone (nothing decoded, nothing allocated).
pub fn kind(path: &str) -> Kind {
    match path {
        "/v2" | "/v2/" => return Kind::Base,
        "/v2/_catalog" => return Kind::Catalog,
        "/token" => return Kind::Token,
        "/metrics" => return Kind::Metrics,
        "/healthz" | "/readyz" => return Kind::Health,
        p if p.starts_with("/admin/") => return Kind::Admin,
        p if !p.starts_with("/v2/") => return Kind::Other,
        _ => {}
    }
    let mut last = path[4..].rsplit('/');
    let (s1, s2, s3) = (last.next(), last.next(), last.next());
    match (s3, s2, s1) {
        (Some("blobs"), Some("uploads"), _) | (Some(_), Some("blobs"), Some("uploads")) => {
            Kind::Upload
        }
        (Some(_), Some("tags"), Some("list")) => Kind::Tags,
        (Some(_), Some("blobs"), _) => Kind::Blob,
        (Some(_), Some("manifests"), _) => Kind::Manifest,
        (Some(_), Some("referrers"), _) => Kind::Referrers,
        _ => Kind::Other,
    }
}

/// The query parameters of a URL, percent-decoded.
pub struct Query(Vec<(String, String)>);

impl Query {
    /// Parses everything after `?` (if any) of `url`.
    pub fn parse(url: &str) -> Result<Query, ApiError> {
        let q = url.split_once('?').map_or("", |(_, q)| q);
        let bad = || ApiError::new(400, Code::Unsupported, "bad percent-encoding in query");
        let mut out = Vec::new();
        for pair in q.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let plus = |s: &str| s.replace('+', " ");
            out.push((
                percent_decode(&plus(k)).ok_or_else(bad)?,
                percent_decode(&plus(v)).ok_or_else(bad)?,
            ));
        }
        Ok(Query(out))
    }

    /// The first value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The first parameter not among `known`, if any: for endpoints where a misspelt
    /// parameter must not pass unnoticed (`dryrun=true` must not run a real pass).
    pub fn unknown(&self, known: &[&str]) -> Option<&str> {
        self.0
            .iter()
            .map(|(k, _)| k.as_str())
            .find(|k| !known.contains(k))
    }

    /// Every value of parameter `name`.
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Decodes `%XX` escapes; None if an escape is malformed or the result is not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    if !s.contains('%') {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes a query value (for `Link` headers).
pub fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_with_tricky_names() {
        use Route::*;
        let r = |p: &str| route(p).unwrap();
        assert_eq!(r("/v2/"), Base);
        assert_eq!(r("/v2/_catalog"), Catalog);
        assert_eq!(r("/v2/a/b/tags/list"), Tags("a/b".into()));
        assert_eq!(r("/v2/a/blobs/uploads/"), Uploads("a".into()));
        assert_eq!(r("/v2/a/blobs/uploads"), Uploads("a".into()));
        assert_eq!(
            r("/v2/a/blobs/uploads/xyz"),
            Upload("a".into(), "xyz".into())
        );
        assert_eq!(
            r("/v2/blobs/blobs/sha256:x"),
            Blob("blobs".into(), "sha256:x".into())
        );
        assert_eq!(
            r("/v2/x/manifests/manifests/v1"),
            Manifest("x/manifests".into(), "v1".into())
        );
        assert_eq!(
            r("/v2/a/manifests/sha256%3Aab"),
            Manifest("a".into(), "sha256:ab".into())
        );
        assert_eq!(
            r("/v2/a/referrers/sha256:ab"),
            Referrers("a".into(), "sha256:ab".into())
        );
        for bad in [
            "/v2/A/tags/list",
            "/v2/../tags/list",
            "/v2//tags/list",
            "/v2/a%2F/tags/list",
        ] {
            assert_eq!(route(bad).unwrap_err().code, Code::NameInvalid, "{bad}");
        }
        assert_eq!(route("/v3/").unwrap_err().status, 404);
        assert_eq!(route("/v2/a/what/x").unwrap_err().status, 404);
    }

    #[test]
    fn kinds_follow_the_routes() {
        for (p, k) in [
            ("/v2/", Kind::Base),
            ("/v2", Kind::Base),
            ("/v2/_catalog", Kind::Catalog),
            ("/v2/a/b/tags/list", Kind::Tags),
            ("/v2/a/blobs/uploads/", Kind::Upload),
            ("/v2/a/blobs/uploads", Kind::Upload),
            ("/v2/a/blobs/uploads/xyz", Kind::Upload),
            ("/v2/blobs/blobs/sha256:x", Kind::Blob),
            ("/v2/x/manifests/manifests/v1", Kind::Manifest),
            ("/v2/a/referrers/sha256:ab", Kind::Referrers),
            ("/admin/stats", Kind::Admin),
            ("/token", Kind::Token),
            ("/metrics", Kind::Metrics),
            ("/healthz", Kind::Health),
            ("/v2/a/what/x", Kind::Other),
            ("/v3/", Kind::Other),
            ("/", Kind::Other),
        ] {
            assert_eq!(kind(p), k, "{p}");
        }
    }

    #[test]
    fn query_decoding() {
        let q = Query::parse("/x?digest=sha256%3Aab&tag=a&tag=b&n=").unwrap();
        assert_eq!(q.get("digest"), Some("sha256:ab"));
        assert_eq!(q.all("tag").collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(q.get("n"), Some(""));
        assert!(Query::parse("/x?a=%zz").is_err());
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::registry::prop_config;
    use proptest::prelude::*;

    /// Path segments an attacker would try: the grammar's keywords, escapes good and bad,
    /// dots, empties, and anything.
    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            prop::sample::select(vec![
                "v2",
                "blobs",
                "uploads",
                "manifests",
                "tags",
                "list",
                "referrers",
                "_catalog",
                "admin",
                "users",
                "mirrors",
                "run",
                "repositories",
                "..",
                ".",
                "",
                "%",
                "%2",
                "%zz",
                "%2F",
                "%2f",
                "%00",
                "%ff",
                "%C3%A9",
                "sha256:ab",
                "a",
                "A",
            ])
            .prop_map(str::to_owned),
            "[a-z0-9._%-]{0,12}",
            "\\PC{0,8}",
        ]
    }

    fn path() -> impl Strategy<Value = String> {
        prop_oneof![
            proptest::collection::vec(segment(), 0..12).prop_map(|s| format!("/{}", s.join("/"))),
            proptest::collection::vec(segment(), 0..12)
                .prop_map(|s| format!("/v2/{}", s.join("/"))),
            "\\PC{0,300}",
        ]
    }

    proptest! {
        #![proptest_config(prop_config(1024))]

        /// Any path routes or is refused without a panic, and every name a route carries is
        /// a valid repository (or user, or mirror) name.
        #[test]
        fn routes_carry_valid_names(p in path()) {
            use Route::*;
            match route(&p) {
                Ok(Tags(n) | Manifest(n, _) | Blob(n, _) | Uploads(n) | Upload(n, _)
                    | Referrers(n, _) | AdminRepository(n)) => prop_assert!(valid_name(&n), "{}", p),
                Ok(AdminUser(n)) => prop_assert!(crate::auth::valid_user_name(&n)),
                Ok(AdminMirrorRun(n)) => prop_assert!(!n.contains('/') && n.len() <= 64),
                Ok(_) | Err(_) => {}
            }
        }

        /// Encoding then decoding gives back any text, and the encoding is plain ASCII
        /// without `&`, `=`, `+` or `#` (safe in a `Link` header's query).
        #[test]
        fn percent_round_trip(s in "\\PC{0,100}|.{0,40}") {
            let e = percent_encode(&s);
            prop_assert!(e.bytes().all(|b| b.is_ascii_graphic() && !b"&=+#\"<>".contains(&b)));
            prop_assert_eq!(percent_decode(&e), Some(s));
        }

        /// Decoding any text does not panic, and text without `%` is left as it is.
        #[test]
        fn percent_decode_total(s in "[%0-9a-fA-Fg+]{0,40}|\\PC{0,60}") {
            let d = percent_decode(&s);
            if !s.contains('%') {
                prop_assert_eq!(d, Some(s));
            } else if let Some(d) = d {
                prop_assert!(d.len() <= s.len());
            }
        }

        /// Any query string parses or is refused; one built from encoded pairs parses back
        /// to exactly those pairs.
        #[test]
        fn query_round_trip(
            junk in "\\PC{0,100}",
            pairs in proptest::collection::vec(("\\PC{0,12}", "\\PC{0,12}"), 0..8),
        ) {
            let _ = Query::parse(&junk);
            let _ = Query::parse(&format!("/x?{junk}"));
            let pairs: Vec<_> = pairs.into_iter().filter(|(k, v)| !k.is_empty() || !v.is_empty()).collect();
            let text: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
                .collect();
            let q = Query::parse(&format!("/v2/_catalog?{}", text.join("&"))).unwrap();
            prop_assert_eq!(q.0, pairs);
        }
    }
}
