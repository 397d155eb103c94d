//! `GET`/`HEAD`/`DELETE /v2/<name>/blobs/<digest>`, with single-range reads.

use super::errors::{ApiError, Code};
use super::{header, App, Body, Reply, Result};
use crate::digest::Digest;
use crate::storage::StoreError;
use tiny_http::Request;

/// What a `Range` header asks of a blob of a given size.
#[derive(Debug, PartialEq, Eq)]
enum Wanted {
    /// The whole blob (no header, or one we must ignore per RFC 9110).
    All,
    /// `len` bytes from `start`.
    Part { start: u64, len: u64 },
    /// A well-formed range that lies outside the blob.
    Unsatisfiable,
}

fn parse_range(value: Option<&str>, size: u64) -> Wanted {
    let Some(spec) = value.and_then(|v| v.trim().strip_prefix("bytes=")) else {
        return Wanted::All;
    };
    if spec.contains(',') {
        return Wanted::All; // multiple ranges: serving the whole representation is allowed
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Wanted::All;
    };
    let num = |s: &str| -> Option<u64> {
        let s = s.trim();
        (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit()))
            .then(|| s.parse().ok())
            .flatten()
    };
    match (a.trim().is_empty(), num(a), num(b)) {
        // bytes=-n: the last n bytes
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                Wanted::Unsatisfiable
            } else {
                let n = n.min(size);
                Wanted::Part {
                    start: size - n,
                    len: n,
                }
            }
        }
        (false, Some(start), end) => {
            if !b.trim().is_empty() && end.is_none() {
                return Wanted::All;
            }
            if end.is_some_and(|e| e < start) {
                return Wanted::All; // syntactically invalid: ignored
            }
            if start >= size {
                return Wanted::Unsatisfiable;
            }
            let last = end.map_or(size - 1, |e| e.min(size - 1));
            Wanted::Part {
                start,
                len: last - start + 1,
            }
        }
        _ => Wanted::All,
    }
}

/// An answer carrying (part of) blob `digest`, or its head.
fn blob_reply(status: u16, body: Body, digest: &Digest) -> Reply {
    Reply {
        status,
        headers: Vec::new(),
        body,
    }
    .header("Content-Type", "application/octet-stream")
    .header("Docker-Content-Digest", digest.as_str())
}

/// A well-formed range outside a blob of `size` bytes.
fn unsatisfiable(size: u64) -> ApiError {
    ApiError::new(
        416,
        Code::RangeInvalid,
        "requested range lies outside the blob",
    )
    .header("Content-Range", format!("bytes */{size}"))
}

/// `GET`/`HEAD` a blob linked into `name`.
pub fn get(app: &App, req: &Request, name: &str, digest: &str) -> Result<Reply> {
    let digest = Digest::parse(digest)?;
    // A push checks its layers this way before it skips uploading them: keep them for it.
    let grace = app.config.gc.grace.as_secs();
    let blob = app.store.linked_blob_renewed(name, &digest, grace)?;
    let base = |status: u16| {
        blob_reply(status, Body::Empty, &digest)
            .header("ETag", format!("\"{digest}\""))
            .header("Accept-Ranges", "bytes")
    };
    match parse_range(header(req, "Range"), blob.size) {
        Wanted::All => {
            let mut r = base(200);
            r.body = Body::Blob {
                blob,
                start: 0,
                len: blob.size,
            };
            Ok(r)
        }
        Wanted::Part { start, len } => {
            let mut r = base(206).header(
                "Content-Range",
                format!("bytes {start}-{}/{}", start + len - 1, blob.size),
            );
            r.body = Body::Blob { blob, start, len };
            Ok(r)
        }
        Wanted::Unsatisfiable => Err(unsatisfiable(blob.size)),
    }
}

/// `DELETE` a blob from `name`: unlinks it; the content goes when nothing links it.
pub fn delete(app: &App, name: &str, digest: &str) -> Result<Reply> {
    let digest = Digest::parse(digest)?;
    app.store.unlink_blob(name, &digest)?;
    Ok(Reply::empty(202).header("Docker-Content-Digest", digest.as_str()))
}

/// `GET`/`HEAD` a blob of a pull-through cache's repository: from the store if it is
/// there, else from the upstream (stored and sent as it arrives).
pub fn get_cached(
    app: &App,
    req: &Request,
    route: &crate::mirror::cache::Route<'_>,
    name: &str,
    digest: &str,
) -> Result<Reply> {
    let d = Digest::parse(digest)?;
    match app.store.linked_blob(name, &d) {
        Ok(_) => {
            crate::metrics::get().cache_hit();
            return get(app, req, name, digest);
        }
        Err(StoreError::BlobUnknown | StoreError::RepoUnknown) => {}
        Err(e) => return Err(e.into()),
    }
    let what = format!("blob {d}");
    let unknown = || {
        ApiError::new(
            404,
            Code::BlobUnknown,
            "not cached, and the upstream does not have it",
        )
    };
    // A HEAD, or a Range, is answered from the upstream at once rather than after fetching
    // the whole blob (a HEAD only asks; a part is passed on without being stored).
    let range = header(req, "Range");
    if *req.method() == tiny_http::Method::Head || range.is_some() {
        let size = app
            .cache
            .blob_size(route, &d)
            .map_err(|e| super::upstream_failed(&what, &e))?
            .ok_or_else(unknown)?;
        let (start, len) = match parse_range(range, size) {
            Wanted::All if *req.method() == tiny_http::Method::Head => {
                return Ok(blob_reply(200, Body::Head(size), &d).header("Accept-Ranges", "bytes"));
            }
            Wanted::All => (0, 0),
            Wanted::Part { start, len } => (start, len),
            Wanted::Unsatisfiable => return Err(unsatisfiable(size)),
        };
        if len > 0 {
            let last = start + len - 1;
            let relay = app
                .cache
                .blob_part(route, &d, (start, last))
                .map_err(|e| super::upstream_failed(&what, &e))?;
            return Ok(blob_reply(206, Body::Relay(relay), &d)
                .header("Content-Range", format!("bytes {start}-{last}/{size}")));
        }
    }
    match app.cache.blob(
        &app.store,
        route,
        name,
        &d,
        app.config.connections.phases.window,
    ) {
        Ok(None) => get(app, req, name, digest),
        Ok(Some(relay)) => Ok(blob_reply(200, Body::Relay(relay), &d)),
        Err(e) if e.status == Some(404) => Err(unknown()),
        Err(e) => Err(super::upstream_failed(&what, &e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Wanted::*;

    #[test]
    fn ranges() {
        let r = |v: &str, size| parse_range(Some(v), size);
        assert_eq!(r("bytes=0-99", 1000), Part { start: 0, len: 100 });
        assert_eq!(
            r("bytes=990-2000", 1000),
            Part {
                start: 990,
                len: 10
            }
        );
        assert_eq!(
            r("bytes=10-", 1000),
            Part {
                start: 10,
                len: 990
            }
        );
        assert_eq!(
            r("bytes=-10", 1000),
            Part {
                start: 990,
                len: 10
            }
        );
        assert_eq!(
            r("bytes=-5000", 1000),
            Part {
                start: 0,
                len: 1000
            }
        );
        assert_eq!(r("bytes=1000-", 1000), Unsatisfiable);
        assert_eq!(r("bytes=-0", 1000), Unsatisfiable);
        assert_eq!(r("bytes=0-0", 0), Unsatisfiable);
        for ignored in [
            "bytes=5-1",
            "bytes=a-b",
            "items=0-1",
            "bytes=0-1,3-4",
            "bytes=-",
            "bytes=1-x",
        ] {
            assert_eq!(r(ignored, 1000), All, "{ignored}");
        }
        assert_eq!(parse_range(None, 5), All);
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use crate::registry::prop_config;
    use proptest::prelude::*;

    /// Range values: well-formed, near misses, huge numbers, anything.
    fn range_value() -> impl Strategy<Value = String> {
        let num = prop_oneof![
            any::<u64>().prop_map(|n| n.to_string()),
            (0u64..2000).prop_map(|n| n.to_string()),
            Just("18446744073709551616".to_owned()),
            Just("99999999999999999999999999".to_owned()),
            Just(String::new()),
            "[0-9 +-]{0,4}",
        ]
        .boxed();
        prop_oneof![
            (num.clone(), num).prop_map(|(a, b)| format!("bytes={a}-{b}")),
            "bytes=[0-9, -]{0,20}",
            "\\PC{0,40}",
        ]
    }

    proptest! {
        #![proptest_config(prop_config(1024))]

        /// Any `Range` against any size: no panic, and a part always lies inside the blob,
        /// so the `Content-Range` arithmetic of `get` cannot wrap.
        #[test]
        fn parts_lie_inside_the_blob(v in range_value(), size in prop_oneof![any::<u64>(), 0u64..2000]) {
            match parse_range(Some(&v), size) {
                Wanted::Part { start, len } => {
                    prop_assert!(len >= 1);
                    prop_assert!(start.checked_add(len).is_some_and(|end| end <= size));
                }
                Wanted::Unsatisfiable => prop_assert!(v.trim().starts_with("bytes=")),
                Wanted::All => {}
            }
        }

        /// The part we answer with, asked for again as the `Content-Range` of the reply
        /// writes it, is the same part.
        #[test]
        fn the_answer_asks_for_itself(a in any::<u64>(), b in any::<u64>(), size in any::<u64>()) {
            if let Wanted::Part { start, len } = parse_range(Some(&format!("bytes={a}-{b}")), size) {
                let again = format!("bytes={start}-{}", start + len - 1);
                prop_assert_eq!(parse_range(Some(&again), size), Wanted::Part { start, len });
            }
        }
    }
}
