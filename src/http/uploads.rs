//! Blob uploads: monolithic, chunked (`Content-Range`), streamed, resumable; finished by digest.

use super::errors::{range_header, ApiError, Code};
use super::{has_body, header, App, Reply, Result};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::metrics::Refusal;
use crate::registry::names::valid_name;
use crate::settings::Key;
use crate::storage::{MountFrom, StoreError};
use std::collections::HashMap;
use std::io::{self, Read};
use std::sync::Mutex;
use tiny_http::Request;

/// Sessions an upload map keeps; past that, an arbitrary one is forgotten (a hash is then
/// recomputed from storage at the finish; an acknowledged offset is no longer compared).
const SESSIONS_KEPT: usize = 1024;

/// Something kept per upload session, in memory only, for at most `SESSIONS_KEPT` sessions.
pub struct PerSession<V>(Mutex<HashMap<String, V>>);

impl<V> Default for PerSession<V> {
    fn default() -> Self {
        PerSession(Mutex::default())
    }
}

impl<V> PerSession<V> {
    fn map(&self) -> std::sync::MutexGuard<'_, HashMap<String, V>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put(&self, id: &str, v: V) {
        let mut map = self.map();
        if map.len() >= SESSIONS_KEPT && !map.contains_key(id) {
            if let Some(k) = map.keys().next().cloned() {
                map.remove(&k);
            }
        }
        map.insert(id.to_owned(), v);
    }

    fn take(&self, id: &str) -> Option<V> {
        self.map().remove(id)
    }

    fn forget(&self, id: &str) {
        self.map().remove(id);
    }
}

/// Running hash state of upload sessions, valid at a given offset. Only a cache: after a
/// restart (or an eviction) the finish re-reads the stored chunks instead.
pub type HasherCache = PerSession<(u64, Hasher)>;

impl HasherCache {
    /// The hash of session `id` if it stands at offset `at`.
    fn take_at(&self, id: &str, at: u64) -> Option<Hasher> {
        self.take(id)
            .and_then(|(offset, h)| (offset == at).then_some(h))
    }
}

/// The offset each session was last told it stands at (a 202 to a `PATCH`). A store reopened
/// after an I/O error is back at its last durable commit and may hold less than that: the
/// finish then answers where the session really stands (416 and `Range`) instead of
/// discarding an upload that lost bytes through no fault of its client.
pub type Acknowledged = PerSession<u64>;

impl Acknowledged {
    fn get(&self, id: &str) -> Option<u64> {
        self.map().get(id).copied()
    }
}

fn location(name: &str, id: &str) -> String {
    format!("/v2/{name}/blobs/uploads/{id}")
}

/// 202/204 answer describing where session `id` stands.
fn session_reply(app: &App, status: u16, name: &str, id: &str, received: u64) -> Reply {
    Reply::empty(status)
        .header("Location", location(name, id))
        .header("Range", range_header(received))
        .header("Docker-Upload-UUID", id)
        .header(
            "OCI-Chunk-Min-Length",
            app.store.chunk_payload().to_string(),
        )
}

/// Upload ids are 32 hex digits; anything else is unknown without a lookup.
fn check_id(id: &str) -> Result<()> {
    if id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(StoreError::UploadUnknown.into())
    }
}

/// `POST /v2/<name>/blobs/uploads/`: mounts with `?mount=` (and `from=`) when it can, else
/// opens a session, or with `?digest=` takes the whole blob.
/// `may_pull` says whether the caller may pull a mount's source repository.
pub fn start(
    app: &App,
    req: &mut Request,
    name: &str,
    query: &super::Query,
    may_pull: &dyn Fn(&str) -> bool,
) -> Result<Reply> {
    if let Some(mount) = query.get("mount") {
        match try_mount(app, name, mount, query.get("from"), may_pull)? {
            Ok(reply) => return Ok(reply),
            Err(why) => {
                crate::metrics::get().refused(why);
                log::info!(
                    "mount of {mount:.80} into {name} not done ({}): opening an upload",
                    why.name()
                );
            }
        }
    }
    let digest = query.get("digest").map(Digest::parse).transpose()?;
    if let (Some(d), Some(n)) = (&digest, req.body_length()) {
        // A monolithic push over a quota is refused before even a session is written.
        app.store.quota_room(name, Some(d), n)?;
    }
    // Only a session without `digest` is announced to the client (202), who may resume it.
    let id = match digest {
        None => app.store.upload_start(name)?,
        Some(_) => app.store.upload_create(name)?,
    };
    let Some(digest) = digest else {
        return Ok(session_reply(app, 202, name, &id, 0));
    };
    let result = receive(app, req, name, &id, (0, Some(&digest)))
        .and_then(|_| finish(app, name, &id, &digest));
    if result.is_err() {
        discard(app, name, &id);
    }
    result
}

/// A cross-repository mount: 201 with the blob's location in `name`, or why not (the caller
/// then answers like a plain POST, so the client uploads; never 401/404 for a bad `from`).
fn try_mount(
    app: &App,
    name: &str,
    mount: &str,
    from: Option<&str>,
    may_pull: &dyn Fn(&str) -> bool,
) -> Result<Result<Reply, Refusal>> {
    if !app.settings.on(Key::BlobMounting) {
        return Ok(Err(Refusal::Disabled));
    }
    let Ok(digest) = Digest::parse(mount) else {
        return Ok(Err(Refusal::DigestInvalid));
    };
    let source = match from {
        Some(f) if !valid_name(f) => return Ok(Err(Refusal::FromInvalid)),
        Some(f) => MountFrom::Repo(f),
        None if !app.settings.on(Key::AutomaticMount) => {
            return Ok(Err(Refusal::AutomaticDisabled))
        }
        None => MountFrom::Any,
    };
    // A source the caller may not pull is treated like one without the blob: a plain
    // upload, so the answer does not tell whether the blob is there.
    let mounted = match app.store.mount(name, source, &digest, may_pull)? {
        Ok(m) => m,
        Err(why) => return Ok(Err(Refusal::Store(why))),
    };
    crate::metrics::get().mounted(mounted.size);
    log::info!(
        "mounted {digest} ({} bytes) into {name} from {}{}",
        mounted.size,
        mounted.from,
        if mounted.linked {
            ""
        } else {
            " (already there)"
        }
    );
    Ok(Ok(Reply::empty(201)
        .header("Location", format!("/v2/{name}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.as_str())))
}

/// `GET` an upload: where it stands, so that a client can resume (also after a restart).
pub fn status(app: &App, name: &str, id: &str) -> Result<Reply> {
    check_id(id)?;
    let up = app.store.upload(name, id)?;
    Ok(session_reply(app, 204, name, id, up.received))
}

/// `PATCH` an upload: one chunk (with `Content-Range`) or a stream (without).
pub fn patch(app: &App, req: &mut Request, name: &str, id: &str) -> Result<Reply> {
    check_id(id)?;
    let received = append_body(app, req, name, id, None)?;
    app.acknowledged.put(id, received);
    Ok(session_reply(app, 202, name, id, received))
}

/// `PUT` an upload with `?digest=`: an optional last chunk, then verify and commit.
pub fn put(
    app: &App,
    req: &mut Request,
    name: &str,
    id: &str,
    query: &super::Query,
) -> Result<Reply> {
    check_id(id)?;
    let digest = query.get("digest").ok_or_else(|| {
        ApiError::new(
            400,
            Code::DigestInvalid,
            "the digest query parameter is required to finish an upload",
        )
    })?;
    let digest = Digest::parse(digest)?;
    if has_body(req) {
        append_body(app, req, name, id, Some(&digest))?;
    }
    finish(app, name, id, &digest)
}

/// `DELETE` an upload: cancel it and drop what it received.
pub fn cancel(app: &App, name: &str, id: &str) -> Result<Reply> {
    check_id(id)?;
    app.store.upload_cancel(name, id)?;
    app.hashers.forget(id);
    app.acknowledged.forget(id);
    Ok(Reply::empty(204))
}

fn discard(app: &App, name: &str, id: &str) {
    app.hashers.forget(id);
    app.acknowledged.forget(id);
    if let Err(e) = app.store.upload_cancel(name, id) {
        log::debug!("discarding upload {id}: {e}");
    }
}

/// Appends the request body at the session's offset, checking `Content-Range` if sent;
/// `digest` is the blob's when the request names it. Returns the new offset.
fn append_body(
    app: &App,
    req: &mut Request,
    name: &str,
    id: &str,
    digest: Option<&Digest>,
) -> Result<u64> {
    let up = app.store.upload(name, id)?;
    let out_of_order = |received: u64| -> ApiError {
        ApiError::from(StoreError::UploadOffset(received)).header("Location", location(name, id))
    };
    if let Some(value) = header(req, "Content-Range") {
        let (first, len) = parse_content_range(value).ok_or_else(|| {
            ApiError::new(
                400,
                Code::BlobUploadInvalid,
                "Content-Range must be <first>-<last>, with first <= last < 2^64 - 1",
            )
        })?;
        if first != up.received {
            return Err(out_of_order(up.received));
        }
        if req.body_length().is_some_and(|n| n != len) {
            return Err(ApiError::new(
                400,
                Code::SizeInvalid,
                "Content-Length disagrees with Content-Range",
            ));
        }
    }
    // Another writer moved the session on: the store's error already says where to.
    receive(app, req, name, id, (up.received, digest)).map_err(|e| match e.status {
        416 => e.header("Location", location(name, id)),
        _ => e,
    })
}

/// Streams the body into the session from offset `start`, one chunk per transaction, hashing
/// as it goes. What arrived before an interruption stays committed, so the client can resume.
/// A body that would take a quota past its limit (`digest`: the blob's, if known) is refused
/// before it is read when its length is declared, else at the first chunk that would, and
/// the session is discarded.
fn receive(
    app: &App,
    req: &mut Request,
    name: &str,
    id: &str,
    (start, digest): (u64, Option<&Digest>),
) -> Result<u64> {
    let _transfer = crate::metrics::get().transfer(crate::metrics::Direction::Upload);
    let room = |end: u64| -> Result<()> {
        if app.store.upload_repeats(id) {
            return Ok(()); // writes nothing; if it adds to a quota, the finish refuses it
        }
        Ok(app.store.quota_room(name, digest, end)?)
    };
    let declared = req.body_length();
    if let Some(Err(e)) = declared.map(|n| room(start.saturating_add(n))) {
        discard(app, name, id);
        return Err(e);
    }
    let mut at = start;
    let mut hasher = app
        .hashers
        .take_at(id, at)
        .or_else(|| (at == 0).then(|| Hasher::new(Algorithm::Sha256)));
    let mut pacer = app.buffers.pacer();
    let result = (|| -> Result<()> {
        let reader = req.as_reader();
        loop {
            // A step's buffer: chunk-sized while the client keeps up (see `Pacer`).
            let mut lease = pacer.lease();
            let buf = &mut lease.buf;
            buf.resize(lease.step, 0);
            let t = std::time::Instant::now();
            let (n, eof, err) = fill(reader, buf);
            let took = t.elapsed();
            if n > 0 {
                room(at + n as u64)?;
                let turn = app.buffers.turn(super::buffers::Way::Write);
                let appended = app.store.upload_append(name, id, at, &buf[..n]);
                drop(turn);
                match appended {
                    Ok(end) => {
                        if let Some(h) = hasher.as_mut() {
                            h.update(&buf[..n]);
                        }
                        at = end;
                    }
                    Err(e) => {
                        hasher = None;
                        return Err(e.into());
                    }
                }
            }
            pacer.done(lease, n, took);
            if let Some(e) = err {
                return Err(ApiError::new(
                    400,
                    Code::BlobUploadInvalid,
                    format!("upload interrupted at offset {at}: {e}"),
                ));
            }
            if eof {
                return Ok(());
            }
            if app.stopping() {
                return Err(ApiError::new(
                    503,
                    Code::Unavailable,
                    "registry is shutting down: resume this upload when it is back",
                ));
            }
        }
    })();
    match (&result, hasher) {
        // Refused by a quota: the session goes (its data would only wait for uploadTtl).
        (Err(e), _) if e.code == Code::Denied => discard(app, name, id),
        (_, Some(h)) => app.hashers.put(id, (at, h)),
        _ => {}
    }
    result?;
    if declared.is_some_and(|n| n != at - start) {
        return Err(ApiError::new(
            400,
            Code::BlobUploadInvalid,
            format!("body ended early; upload is at offset {at}"),
        ));
    }
    Ok(at)
}

/// Reads until `buf` is full or the body ends; returns (bytes, ended, error).
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> (usize, bool, Option<io::Error>) {
    let mut n = 0;
    while n < buf.len() {
        match reader.read(&mut buf[n..]) {
            Ok(0) => return (n, true, None),
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (n, false, Some(e)),
        }
    }
    (n, false, None)
}

/// Verifies the session's content against `digest` and commits it as a blob of `name`.
/// On a mismatch the upload is discarded: nothing of it becomes visible.
fn finish(app: &App, name: &str, id: &str, digest: &Digest) -> Result<Reply> {
    let up = app.store.upload(name, id)?;
    if app.acknowledged.get(id).is_some_and(|a| a > up.received) {
        return Err(ApiError::from(StoreError::UploadOffset(up.received))
            .header("Location", location(name, id)));
    }
    let cached = app
        .hashers
        .take_at(id, up.received)
        .filter(|h| h.algorithm() == digest.algorithm());
    let actual = match cached {
        Some(h) => h.finish(),
        None => app.store.hash_blob(up.content(), digest.algorithm())?,
    };
    if actual != *digest {
        discard(app, name, id);
        return Err(ApiError::new(
            400,
            Code::DigestInvalid,
            format!("uploaded content has digest {actual}, not {digest}: upload discarded"),
        ));
    }
    let finished = app.store.upload_finish(name, id, digest, up.received);
    if let Err(StoreError::Quota(_)) = &finished {
        discard(app, name, id);
    }
    if finished? {
        crate::metrics::get().deduplicated(up.received);
        log::info!(
            "{digest} ({} bytes) was stored already: linked into {name}, upload dropped",
            up.received
        );
    }
    app.acknowledged.forget(id);
    Ok(Reply::empty(201)
        .header("Location", format!("/v2/{name}/blobs/{digest}"))
        .header("Docker-Content-Digest", digest.as_str()))
}

/// `first-last`, optionally as `bytes first-last/total` or `bytes=first-last`, as (first,
/// length); `None` also for a range whose length does not fit 64 bits.
fn parse_content_range(v: &str) -> Option<(u64, u64)> {
    let v = v.trim();
    let v = v
        .strip_prefix("bytes")
        .map_or(v, |r| r.trim_start_matches([' ', '=']));
    let v = v.split_once('/').map_or(v, |(r, _)| r);
    let (a, b) = v.split_once('-')?;
    let digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit()) && !s.is_empty();
    if !digits(a) || !digits(b) {
        return None;
    }
    let (a, b): (u64, u64) = (a.parse().ok()?, b.parse().ok()?);
    Some((a, b.checked_sub(a)?.checked_add(1)?))
}

#[cfg(test)]
mod tests {
    use super::parse_content_range as p;

    #[test]
    fn content_ranges() {
        assert_eq!(p("0-99"), Some((0, 100)));
        assert_eq!(p("bytes 100-199/1000"), Some((100, 100)));
        assert_eq!(p("bytes=5-5"), Some((5, 1)));
        assert_eq!(p("1-18446744073709551615"), Some((1, u64::MAX)));
        for bad in [
            "",
            "5-1",
            "-5",
            "a-b",
            "1-",
            "1--2",
            "0-18446744073709551615",
            "0-18446744073709551616",
        ] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }
}

#[cfg(test)]
mod props {
    use super::parse_content_range;
    use crate::registry::prop_config;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(prop_config(1024))]

        /// Any `Content-Range`: no panic, and what parses has a length of at least one
        /// whose last byte's offset does not wrap.
        #[test]
        fn ranges_never_wrap(v in "(bytes[ =]?)?[0-9]{0,21}-[0-9]{0,21}(/[0-9*]{0,3})?|\\PC{0,40}") {
            if let Some((start, len)) = parse_content_range(&v) {
                prop_assert!(len >= 1 && start.checked_add(len - 1).is_some());
            }
        }

        /// `a-b` as clients write it (bare, or as `bytes a-b/total`) parses back to its
        /// start and length.
        #[test]
        fn written_ranges_parse_back(a in any::<u64>(), b in any::<u64>(), form in 0..3) {
            let v = match form {
                0 => format!("{a}-{b}"),
                1 => format!("bytes {a}-{b}/*"),
                _ => format!("bytes={a}-{b}"),
            };
            let want = b.checked_sub(a).and_then(|d| d.checked_add(1)).map(|len| (a, len));
            prop_assert_eq!(parse_content_range(&v), want);
        }
    }
}
