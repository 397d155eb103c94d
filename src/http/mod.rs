//! The HTTP edge: parse a request into a route, call the store, write the response.

mod admin;
mod auth;
mod blobs;
mod buffers;
mod errors;
mod manifests;
mod routes;
mod stats;
mod tags;
mod uploads;

pub use admin::key_json;
pub use auth::Origin;
pub use routes::percent_encode;

use crate::config::Config;
use crate::settings::Settings;
use crate::storage::{BlobInfo, ChunkHint, Store, StoreError};
use buffers::{Lease, Pacer};
use errors::{ApiError, Code};
use routes::{Query, Route};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;
use tiny_http::{Header, Method, Request, Response};

/// What every handler needs: the store, the settings, and whether we are shutting down.
pub struct App {
    /// The store.
    pub store: Store,
    /// Validated configuration.
    pub config: Config,
    /// Set on SIGTERM/SIGINT: long transfers stop at their next chunk.
    pub stopping: Arc<AtomicBool>,
    /// Switches an operator can flip at runtime.
    settings: Settings,
    /// Access control; `None` when auth is off.
    gate: Option<auth::Gate>,
    stats: stats::Stats,
    hashers: uploads::HasherCache,
    /// Pull-through caches of `mirrors`.
    cache: crate::mirror::cache::PullThrough,
    /// Transfer buffers, `workers` chunk-sized ones at most.
    buffers: buffers::Buffers,
}

impl App {
    /// Wires the store and configuration together (with settings changed at runtime
    /// earlier, and the htpasswd file if auth names one).
    pub fn new(store: Store, config: Config, stopping: Arc<AtomicBool>) -> Result<App, String> {
        let gate = match &config.auth {
            Some(a) => Some(auth::Gate::new(a.clone(), config.tls.is_some())?),
            None => None,
        };
        Ok(App {
            settings: Settings::load(&config, &store)
                .map_err(|e| format!("cannot read settings from the store: {e}"))?,
            gate,
            cache: crate::mirror::cache::PullThrough::new(&config.mirrors),
            buffers: buffers::Buffers::new(
                store.chunk_payload(),
                config.workers,
                MANIFESTS_AT_ONCE * config.max_manifest_size as u64,
            ),
            store,
            config,
            stopping,
            stats: stats::Stats::default(),
            hashers: uploads::HasherCache::default(),
        })
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

/// Manifests of the largest size that may be arriving at once (smaller ones share the room).
const MANIFESTS_AT_ONCE: u64 = 4;

/// A successful answer.
pub struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    body: Body,
}

enum Body {
    Empty,
    Bytes(Vec<u8>),
    /// `len` bytes of a stored blob from `start`, streamed chunk by chunk.
    Blob {
        blob: BlobInfo,
        start: u64,
        len: u64,
    },
    /// A blob coming from a pull-through cache's upstream: stored and sent as it arrives.
    Relay(crate::mirror::cache::Relay),
}

impl From<ApiError> for Reply {
    /// The OCI error JSON, with the headers that belong to the error.
    fn from(e: ApiError) -> Reply {
        let mut reply = Reply::bytes(e.status, "application/json", e.body());
        reply.headers.extend(e.headers);
        reply
    }
}

impl Reply {
    fn empty(status: u16) -> Reply {
        Reply {
            status,
            headers: Vec::new(),
            body: Body::Empty,
        }
    }

    fn bytes(status: u16, content_type: &str, body: Vec<u8>) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type", content_type.to_owned())],
            body: Body::Bytes(body),
        }
    }

    fn header(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

type Result<T, E = ApiError> = std::result::Result<T, E>;

/// Serves one request from `origin`, start to finish, and logs it.
pub fn handle(app: &App, mut req: Request, origin: Origin) {
    let started = Instant::now();
    let method = req.method().clone();
    let url = req.url().to_owned();
    let result = dispatch(app, &mut req, origin);
    let status = match result {
        Ok(reply) => send(app, req, reply),
        Err(e) => {
            let status = e.status;
            if status >= 500 {
                log::warn!("{method} {url}: {}", e.message);
            }
            send(app, req, e.into())
        }
    };
    log::info!(
        "{method} {url} {status} {:.1}ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    // Scratch space a request grew stays with the thread; a connection thread may idle long.
    crate::storage::trim_thread_buffers();
}

/// The whole response a connection gets when every connection slot is taken: 503 with
/// `Retry-After`, and the connection closes.
pub fn busy_response() -> Vec<u8> {
    let body = ApiError::new(
        503,
        Code::Unavailable,
        "too many connections (maxConnections): retry in a moment",
    )
    .body();
    let mut r = format!(
        "HTTP/1.1 503 Service Unavailable\r\nServer: outpost\r\nRetry-After: 1\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\
         Docker-Distribution-API-Version: registry/2.0\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(&body);
    r
}

fn dispatch(app: &App, req: &mut Request, origin: Origin) -> Result<Reply> {
    let url = req.url().to_owned();
    let path = url.split_once('?').map_or(url.as_str(), |(p, _)| p);
    let route = routes::route(path)?;
    let query = Query::parse(&url)?;
    let method = req.method().clone();
    let gate = app.gate.as_ref();
    let caller = auth::check(gate, &app.store, req, &route, origin)?;
    use Method::*;
    match (route, &method) {
        (Route::Token, Get | Post) => auth::token(gate, &app.store, req, &query),
        (Route::Base, Get | Head) => Ok(Reply::bytes(200, "application/json", b"{}".to_vec())),
        (Route::Catalog, Get) => tags::catalog(app, &query, &|r| caller.may_list(gate, r)),
        (Route::Tags(name), Get) => tags::list(app, &name, &query),
        (Route::Manifest(name, r), Get | Head) => {
            if let Some(route) = app.cache.route(&name) {
                app.cache.manifest(&app.store, &route, &name, &r);
            }
            manifests::get(app, &name, &r)
        }
        (Route::Manifest(name, r), Put) => manifests::put(app, req, &name, &r, &query),
        (Route::Manifest(name, r), Delete) => manifests::delete(app, &name, &r),
        (Route::Blob(name, d), Get | Head) => match app.cache.route(&name) {
            Some(route) => blobs::get_cached(app, req, &route, &name, &d),
            None => blobs::get(app, req, &name, &d),
        },
        (Route::Blob(name, d), Delete) => blobs::delete(app, &name, &d),
        (Route::Uploads(name), Post) => {
            uploads::start(app, req, &name, &query, &|r| caller.may_pull(gate, r))
        }
        (Route::Upload(name, id), Get) => uploads::status(app, &name, &id),
        (Route::Upload(name, id), Patch) => uploads::patch(app, req, &name, &id),
        (Route::Upload(name, id), Put) => uploads::put(app, req, &name, &id, &query),
        (Route::Upload(name, id), Delete) => uploads::cancel(app, &name, &id),
        (Route::Referrers(name, d), Get) => manifests::referrers(app, &name, &d, &query),
        (Route::AdminSettings, Get) => admin::settings(app),
        (Route::AdminSettings, Patch) => admin::settings_patch(app, req),
        (Route::AdminStats, Get) => admin::stats(app),
        (Route::AdminCheck, Get) => admin::check(app),
        (Route::AdminKeys, Get) => admin::keys(app),
        (Route::AdminRepository(name), Put) => admin::repo_create(app, req, &name),
        (Route::AdminRepository(name), Delete) => admin::repo_delete(app, &name, &query),
        (Route::AdminUsers, Get) => admin::users(app),
        (Route::AdminUser(name), Post) => admin::user_put(app, req, &name, true),
        (Route::AdminUser(name), Put) => admin::user_put(app, req, &name, false),
        (Route::AdminUser(name), Delete) => admin::user_delete(app, &name),
        (Route::AdminMirrors, Get) => admin::mirrors(app),
        (Route::AdminMirrorRun(name), Post) => admin::mirror_run(app, &name),
        (_, m) => Err(ApiError::new(
            405,
            Code::Unsupported,
            format!("method {m} not allowed here"),
        )),
    }
}

/// Value of request header `name`, if present.
fn header<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Reads a small request body of at most `max` bytes: `Err(413 SIZE_INVALID)` beyond it
/// (checked against Content-Length first), a read failure as `code`.
fn read_small_body(req: &mut Request, max: usize, what: &str, code: Code) -> Result<Vec<u8>> {
    use std::io::Read;
    let too_big = || {
        ApiError::new(
            413,
            Code::SizeInvalid,
            format!("{what} larger than the registry's limit of {max} bytes"),
        )
    };
    if req.body_length().is_some_and(|n| n > max as u64) {
        return Err(too_big());
    }
    let mut body = Vec::with_capacity(req.body_length().map_or(0, |n| n as usize + 1));
    req.as_reader()
        .take(max as u64 + 1)
        .read_to_end(&mut body)
        .map_err(|e| ApiError::new(400, code, format!("reading {what}: {e}")))?;
    if body.len() > max {
        return Err(too_big());
    }
    Ok(body)
}

/// True if the request carries a body (declared length > 0 or chunked).
fn has_body(req: &Request) -> bool {
    header(req, "Transfer-Encoding").is_some() || req.body_length().is_some_and(|n| n > 0)
}

/// Writes `reply`; returns the status sent.
fn send(app: &App, req: Request, reply: Reply) -> u16 {
    let Reply {
        status,
        mut headers,
        body,
    } = reply;
    headers.push(("Docker-Distribution-API-Version", "registry/2.0".to_owned()));
    match body {
        Body::Blob { blob, start, len } => {
            match stream_blob(app, req, status, &headers, blob, start, len) {
                Ok(()) => status,
                // Failed before anything was sent: still time for a proper error.
                Err(failed) => {
                    let (req, e) = *failed;
                    send(app, req, e.into())
                }
            }
        }
        Body::Relay(relay) => relay_blob(app, req, status, &headers, relay),
        Body::Empty => send_bytes(req, status, headers, Vec::new()),
        Body::Bytes(data) => send_bytes(req, status, headers, data),
    }
}

/// Writes a small, fully known response through tiny_http; returns the status.
fn send_bytes(
    req: Request,
    status: u16,
    headers: Vec<(&'static str, String)>,
    data: Vec<u8>,
) -> u16 {
    let mut response = Response::from_data(data).with_status_code(status);
    for (name, value) in headers {
        // Header values we set are ASCII; anything else is dropped rather than panicking.
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    if let Err(e) = req.respond(response) {
        log::debug!("response not delivered: {e}");
    }
    status
}

/// Why a blob transfer stopped early: the client's connection, or the store; or why it does
/// not read ahead.
enum Stop {
    Client(std::io::Error),
    Store(StoreError),
    NoHelper,
}

/// Reads up to `max` bytes of `blob` from `at` into `buf`: one store call, as one of the steps
/// the buffer budget lets move at once.
fn read_step(
    app: &App,
    (blob, hint): (BlobInfo, &mut ChunkHint),
    at: u64,
    max: u64,
    buf: &mut Vec<u8>,
) -> std::result::Result<(), StoreError> {
    let mut step = app.buffers.step();
    if blob.domain == 0 || buf.capacity() > app.store.chunk_payload() {
        return app.store.read_blob_on(blob, at, max as usize, buf, hint);
    }
    // A sealed chunk opens whole: a small step opens it in the step's scratch and keeps its
    // part, so that the small buffer stays small.
    let scratch = step.scratch();
    app.store
        .read_blob_on(blob, at, max as usize, scratch, hint)?;
    buf.clear();
    buf.extend_from_slice(scratch);
    Ok(())
}

/// Reads `blob` from `from` to `end` in `step`-byte pieces into the buffers of `spare` (the
/// two it starts with, then each the receiver gives back) and sends them down `full`; stops at
/// the first error (sent too), when the receiver goes, or when the registry is stopping.
fn read_ahead(
    app: &App,
    (blob, mut hint): (BlobInfo, ChunkHint),
    from: u64,
    end: u64,
    step: u64,
    full: &mpsc::SyncSender<Result<Vec<u8>, StoreError>>,
    spare: &mpsc::Receiver<Vec<u8>>,
) {
    let mut at = from;
    while at < end && !app.stopping() {
        let Ok(mut buf) = spare.recv() else {
            return;
        };
        match read_step(app, (blob, &mut hint), at, step.min(end - at), &mut buf) {
            Ok(()) if buf.is_empty() => return,
            Ok(()) => {
                at += buf.len() as u64;
                if full.send(Ok(buf)).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = full.send(Err(e));
                return;
            }
        }
    }
}

/// The status line and headers of a blob response of `len` bytes, written by hand because
/// the body goes straight onto the connection; `closes`: the connection ends after it.
fn response_head(
    status: u16,
    len: u64,
    headers: &[(&'static str, String)],
    closes: bool,
) -> String {
    let reason = match status {
        200 => "OK",
        206 => "Partial Content",
        _ => "",
    };
    let mut head =
        format!("HTTP/1.1 {status} {reason}\r\nServer: outpost\r\nContent-Length: {len}\r\n");
    if closes {
        head.push_str("Connection: close\r\n");
    }
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Streams a blob straight onto the connection: header, then one store read and one socket
/// write per step (tiny_http's own body copy goes 8 KiB at a time). A step is a chunk while
/// the client keeps up and a chunk-sized buffer is free, else `buffers::SMALL` bytes (see
/// `buffers::Pacer`). The first step is read before the header is written, so a store
/// failure there is still answered properly (`Err`); a failure after that shuts the
/// connection down, so the client sees a truncated transfer rather than waiting for bytes
/// that will never come.
fn stream_blob(
    app: &App,
    mut req: Request,
    status: u16,
    headers: &[(&'static str, String)],
    blob: BlobInfo,
    start: u64,
    len: u64,
) -> std::result::Result<(), Box<(Request, ApiError)>> {
    let head_only = *req.method() == Method::Head;
    let sealed = blob.domain != 0;
    let mut pacer = app.buffers.pacer();
    let mut lease = pacer.lease();
    let mut hint = ChunkHint::default();
    let end = start + len;
    if !head_only && len > 0 {
        let step = (lease.step as u64).min(len);
        if let Err(e) = read_step(app, (blob, &mut hint), start, step, &mut lease.buf) {
            return Err(Box::new((req, ApiError::from(e))));
        }
    }
    let head = response_head(status, len, headers, req.closes_connection());
    let abort = req.abort_handle();
    let url = req.url().to_owned();
    // Plaintext over plain HTTP: the body goes to the socket by hand (see `send_raw`).
    let raw = if sealed { None } else { req.raw_body() };
    let mut w = req.into_writer();
    let mut at = start;
    let result = (|| -> std::io::Result<()> {
        w.write_all(head.as_bytes())?;
        if head_only || len == 0 {
            return w.flush();
        }
        if lease.buf.is_empty() {
            return Err(std::io::Error::other("blob ended early"));
        }
        let failed = match raw {
            Some(raw) => {
                w.flush()?;
                send_raw(app, raw, (blob, &mut hint), lease, &mut at, end)
            }
            None => send_paced(
                app,
                &mut w,
                (&mut pacer, lease),
                (blob, &mut hint),
                &mut at,
                end,
            ),
        };
        match failed {
            Ok(()) if at >= end => w.flush(),
            Ok(()) => Err(std::io::Error::other("blob ended early")),
            Err(Stop::Client(e)) => Err(e),
            Err(Stop::Store(StoreError::Integrity(m))) => {
                // Headers are out: the connection is cut, and the bad chunk unsent.
                log::error!("integrity error serving {url}: {m}");
                Err(std::io::Error::other(format!(
                    "integrity check failed: {m}"
                )))
            }
            Err(Stop::Store(e)) => Err(std::io::Error::other(e)),
            Err(Stop::NoHelper) => unreachable!("handled above"),
        }
    })();
    if let Err(e) = result {
        use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
        if matches!(e.kind(), BrokenPipe | ConnectionReset | ConnectionAborted) {
            log::debug!("client left blob {} at byte {at} of {end}", blob.id);
        } else {
            log::warn!("blob {} cut short at byte {at} of {end}: {e}", blob.id);
        }
        if let Some(a) = abort {
            a.abort();
        }
    }
    Ok(())
}

/// Sends `[at, end)` of a blob through the response writer, the first step's bytes in
/// `lease` already: each step in a buffer from `pacer`; sealed blobs for a client that keeps
/// up are read and opened ahead on a helper thread.
fn send_paced<'a>(
    app: &'a App,
    w: &mut impl Write,
    (pacer, lease): (&mut Pacer<'a>, Lease<'a>),
    (blob, hint): (BlobInfo, &mut ChunkHint),
    at: &mut u64,
    end: u64,
) -> std::result::Result<(), Stop> {
    let sealed = blob.domain != 0;
    send_step(w, pacer, lease, at).map_err(Stop::Client)?;
    // Sealed, for a client that keeps up: the rest is read and opened on a helper thread
    // while this one writes (opening a chunk costs about as much CPU as sending it), when
    // two more chunk-sized buffers are free and a thread can be had.
    let ahead = match (
        sealed && *at < end && pacer.fast(),
        app.buffers.take_chunk(),
    ) {
        (true, Some(one)) => app.buffers.take_chunk().map(|two| [one, two]),
        _ => None,
    };
    let step = app.store.chunk_payload() as u64;
    let failed = match ahead {
        Some(mut spares) => std::thread::scope(|scope| {
            let (full, filled) = mpsc::sync_channel::<Result<Vec<u8>, StoreError>>(1);
            let (give_back, spare) = mpsc::channel::<Vec<u8>>();
            for l in &mut spares {
                let _ = give_back.send(std::mem::take(&mut l.buf));
            }
            let (from, h) = (*at, *hint);
            let helper = std::thread::Builder::new()
                .name("read-ahead".into())
                .stack_size(256 << 10)
                .spawn_scoped(scope, move || {
                    read_ahead(app, (blob, h), from, end, step, &full, &spare)
                });
            if helper.is_err() {
                return Err(Stop::NoHelper);
            }
            for chunk in filled {
                let chunk = chunk.map_err(Stop::Store)?;
                w.write_all(&chunk).map_err(Stop::Client)?;
                *at += chunk.len() as u64;
                let _ = give_back.send(chunk);
            }
            Ok(())
        }),
        None => Err(Stop::NoHelper),
    };
    match failed {
        // One thread: read a step, write it.
        Err(Stop::NoHelper) => {
            while *at < end {
                if app.stopping() {
                    return Err(Stop::Client(std::io::Error::other("shutting down")));
                }
                let mut lease = pacer.lease();
                let step = (lease.step as u64).min(end - *at);
                read_step(app, (blob, &mut *hint), *at, step, &mut lease.buf)
                    .map_err(Stop::Store)?;
                if lease.buf.is_empty() {
                    break;
                }
                send_step(w, pacer, lease, at).map_err(Stop::Client)?;
            }
            Ok(())
        }
        other => other,
    }
}

/// Sends `[at, end)` of a plaintext blob to the socket by hand, the first step's bytes in
/// `first` already. A step is read into one of the budget's chunk-sized buffers and the socket
/// takes what it can at once; when it is full, the buffer is kept for a moment (`HOLD`: a
/// client that keeps up drains it by then) and then given back, and the socket is waited for
/// with no buffer held (what it did not take is read again, from redb's page cache, when it
/// can take more). So a slow client holds no buffer, and a few buffers serve every download.
fn send_raw(
    app: &App,
    mut raw: tiny_http::RawBody,
    (blob, hint): (BlobInfo, &mut ChunkHint),
    first: Lease<'_>,
    at: &mut u64,
    end: u64,
) -> std::result::Result<(), Stop> {
    const HOLD: std::time::Duration = std::time::Duration::from_millis(20);
    let (mut lease, mut sent) = (Some(first), 0);
    while *at < end {
        if app.stopping() {
            return Err(Stop::Client(std::io::Error::other("shutting down")));
        }
        let step = match &mut lease {
            Some(l) => l,
            None => {
                raw.wait_room(None).map_err(Stop::Client)?;
                let mut l = app.buffers.take_brief();
                let step = (l.step as u64).min(end - *at);
                read_step(app, (blob, &mut *hint), *at, step, &mut l.buf).map_err(Stop::Store)?;
                if l.buf.is_empty() {
                    break;
                }
                sent = 0;
                lease.insert(l)
            }
        };
        let n = raw.send_some(&step.buf[sent..]).map_err(Stop::Client)?;
        (sent, *at) = (sent + n, *at + n as u64);
        if sent == step.buf.len() || !raw.wait_room(Some(HOLD)).map_err(Stop::Client)? {
            lease = None;
        }
    }
    Ok(())
}

/// Writes one step of a blob to the client (`at` moves on); the pacer learns how fast the
/// client took it.
fn send_step<'a>(
    w: &mut impl Write,
    pacer: &mut Pacer<'a>,
    lease: Lease<'a>,
    at: &mut u64,
) -> std::io::Result<()> {
    let t = Instant::now();
    w.write_all(&lease.buf)?;
    let n = lease.buf.len();
    *at += n as u64;
    pacer.done(lease, n, t.elapsed());
    Ok(())
}

/// Sends a blob as it arrives from a pull-through cache's upstream, storing each piece
/// before passing it on. If the client goes, the fetch still completes into the store
/// (other clients may be waiting for it); the blob is committed only if its digest verifies.
fn relay_blob(
    app: &App,
    mut req: Request,
    status: u16,
    headers: &[(&'static str, String)],
    mut relay: crate::mirror::cache::Relay,
) -> u16 {
    let head_only = *req.method() == Method::Head;
    let size = relay.size;
    let head = response_head(status, size, headers, req.closes_connection());
    let abort = req.abort_handle();
    let mut w = Some(req.into_writer());
    let mut client = |bytes: &[u8]| {
        if let Some(out) = &mut w {
            if out.write_all(bytes).is_err() {
                w = None;
            }
        }
    };
    client(head.as_bytes());
    let mut hasher = crate::digest::Hasher::new(relay.digest.algorithm());
    let mut at = 0u64;
    let mut lease = app.buffers.take();
    let buf = &mut lease.buf;
    buf.resize(lease.step, 0);
    let result = loop {
        if app.stopping() {
            break Err("shutting down".to_owned());
        }
        match relay.next(&app.store, at, &mut hasher, buf) {
            Ok(0) => break Ok(()),
            Ok(n) => {
                if !head_only {
                    client(&buf[..n]);
                }
                at += n as u64;
            }
            Err(e) => break Err(e.to_string()),
        }
    };
    let digest = relay.digest.clone();
    let outcome = result.and_then(|()| relay.finish(&app.store, at, hasher));
    match outcome {
        Ok(()) => {
            if let Some(out) = &mut w {
                let _ = out.flush();
            }
        }
        Err(e) => {
            log::warn!("pull-through of blob {digest}: {e}");
            if let Some(a) = abort {
                a.abort();
            }
        }
    }
    status
}
