//! The HTTP edge: parse a request into a route, call the store, write the response.

mod admin;
mod auth;
mod blobs;
mod buffers;
mod errors;
mod health;
mod manifests;
mod routes;
mod stream;
mod tags;
mod uploads;

pub use admin::key_json;
pub use auth::Origin;
pub use routes::percent_encode;

use crate::config::Config;
use crate::settings::Settings;
use crate::storage::{BlobInfo, Store};
use errors::{ApiError, Code};
use routes::{Query, Route};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
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
    hashers: uploads::HasherCache,
    /// Where each upload session was last told it stands.
    acknowledged: uploads::Acknowledged,
    /// Pull-through caches of `mirrors`.
    cache: crate::mirror::cache::PullThrough,
    /// Transfer buffers, `workers` chunk-sized ones at most.
    buffers: buffers::Buffers,
    /// Proof of life of the registry port's accept loop (the watchdog and `/readyz` read it).
    pub heartbeat: crate::net::listener::Heartbeat,
}

impl App {
    /// Wires the store and configuration together (with settings changed at runtime
    /// earlier, and the htpasswd file if auth names one).
    pub fn new(store: Store, config: Config, stopping: Arc<AtomicBool>) -> Result<App, String> {
        let gate = match &config.auth {
            Some(a) => Some(auth::Gate::new(
                a.clone(),
                config.tls.is_some(),
                config.metrics.users.clone(),
            )?),
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
            hashers: uploads::HasherCache::default(),
            acknowledged: uploads::Acknowledged::default(),
            heartbeat: Default::default(),
        })
    }

    fn stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }
}

/// Manifests of the largest size that may be arriving at once (smaller ones share the room:
/// each holds what it has received).
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
    /// Only the head of a body of this many bytes: a `HEAD` answered without the body at
    /// hand (a blob the cache asked its upstream about).
    Head(u64),
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

/// Who made a request and from where: for the access log, the audit trail and metrics.
#[derive(Clone, Debug)]
pub struct Who {
    /// `Caller::name`: a user, `anonymous` or `operator`; `anonymous` until auth has
    /// identified the caller (and for a request refused before it could).
    pub user: String,
    /// The client's address; `None` on the admin socket.
    pub addr: Option<std::net::IpAddr>,
}

/// Serves one request from `origin`, start to finish, and logs it.
pub fn handle(app: &App, mut req: Request, origin: Origin) {
    let started = Instant::now();
    let method = req.method().clone();
    let url = req.url().to_owned();
    let mut who = Who {
        user: "anonymous".to_owned(),
        addr: req.remote_addr().map(|a| a.ip()),
    };
    let result = dispatch(app, &mut req, origin, &mut who);
    let received = req.body_bytes_read();
    let sent = match result {
        Ok(reply) => send(app, req, reply),
        Err(e) => {
            if e.status >= 500 {
                log::warn!("{method} {url}: {}", e.message);
            }
            send(app, req, e.into())
        }
    };
    let path = url.split_once('?').map_or(url.as_str(), |(p, _)| p);
    let kind = routes::kind(path);
    crate::metrics::get().request(kind, method.as_str(), sent.status, started.elapsed());
    log_access(&method, &url, sent, received, started, &who);
    // Scratch space a request grew stays with the thread; a connection thread may idle long.
    crate::storage::trim_thread_buffers();
}

/// The access log line of a request: `METHOD URL STATUS` first (what greps of the log look
/// for), then bytes sent and received (bodies), the time taken, the client and the user;
/// with `logFormat: json` the same as fields.
fn log_access(method: &Method, url: &str, sent: Sent, received: u64, started: Instant, who: &Who) {
    let ms = (started.elapsed().as_secs_f64() * 1e4).round() / 10.0;
    let addr = who.addr.map_or("-".to_owned(), |a| a.to_string());
    let (status, bytes, user) = (sent.status, sent.bytes, who.user.as_str());
    log::info!(
        target: "outpost::http::access",
        method = method.as_str(),
        path = url,
        status = status,
        bytes = bytes,
        received = received,
        duration_ms = ms,
        addr = addr.as_str(),
        user = user;
        "{method} {url} {status} sent={bytes}B received={received}B time={ms:.1}ms addr={addr} \
         user={user}"
    );
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

/// Routes `req` to its handler; `who` learns the caller once auth has identified it.
fn dispatch(app: &App, req: &mut Request, origin: Origin, who: &mut Who) -> Result<Reply> {
    let url = req.url().to_owned();
    let path = url.split_once('?').map_or(url.as_str(), |(p, _)| p);
    if origin == Origin::MetricsListener {
        return metrics_listener(app, path, req.method());
    }
    let route = routes::route(path)?;
    let query = Query::parse(&url)?;
    let method = req.method().clone();
    let gate = app.gate.as_ref();
    let caller = auth::check(gate, &app.store, req, &route, origin)?;
    caller.name().clone_into(&mut who.user);
    // The changes this request commits are recorded as the caller's.
    let _actor = crate::audit::acting_as(&who.user, who.addr);
    use Method::*;
    match (route, &method) {
        (Route::Token, Get | Post) => auth::token(gate, &app.store, req, &query, &mut who.user),
        (Route::Health(probe), Get | Head) => Ok(health::reply(app, probe)),
        (Route::Base, Get | Head) => Ok(Reply::bytes(200, "application/json", b"{}".to_vec())),
        (Route::Catalog, Get) => tags::catalog(app, &query, &|r| caller.may_list(gate, r)),
        (Route::Tags(name), Get) => tags::list(app, &name, &query),
        (Route::Manifest(name, r), Get | Head) => manifests::count_pull(
            app,
            &method,
            (&name, &r),
            match app.cache.route(&name) {
                Some(route) => manifests::get_cached(app, &route, &name, &r),
                None => manifests::get(app, &name, &r),
            },
        ),
        (Route::Manifest(name, _), Put)
        | (Route::Uploads(name), Post)
        | (Route::Upload(name, _), Patch | Put)
            if app.cache.route(&name).is_some() =>
        {
            let why = app.cache.refuses_pushes(&name).unwrap_or_default();
            Err(ApiError::new(405, Code::Unsupported, why))
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
        (Route::AdminGc, Post) => admin::gc(app, &query),
        (Route::AdminAudit, Get) => admin::audit(app, &query),
        (Route::AdminPulls, Get) => admin::pulls(app, &query),
        (Route::AdminDu, Get) => admin::du(app),
        (Route::AdminScrub, Get) => admin::scrub_status(app),
        (Route::AdminScrub, Post) => admin::scrub(app, &query),
        (Route::Metrics, Get | Head) => Ok(metrics(app)),
        (_, m) => Err(ApiError::new(
            405,
            Code::Unsupported,
            format!("method {m} not allowed here"),
        )),
    }
}

/// `GET /metrics`: the Prometheus text exposition of this registry.
fn metrics(app: &App) -> Reply {
    let text = crate::metrics::scrape(
        crate::metrics::get(),
        &app.store,
        app.config.min_free_space as u64,
    );
    Reply::bytes(200, crate::metrics::CONTENT_TYPE, text.into_bytes())
        .header("Cache-Control", "no-store")
}

/// A request on `metrics.listen`: `/metrics`, `/healthz` and `/readyz` to anyone, 404 for
/// everything else (it is no door to the registry's API).
fn metrics_listener(app: &App, path: &str, method: &Method) -> Result<Reply> {
    if !matches!(method, Method::Get | Method::Head) {
        return Err(ApiError::new(
            405,
            Code::Unsupported,
            format!("method {method} not allowed here"),
        ));
    }
    if path == "/metrics" {
        return Ok(metrics(app));
    }
    health::health_reply(app, path).ok_or_else(|| {
        ApiError::new(
            404,
            Code::Unsupported,
            "this listener serves /metrics, /healthz and /readyz only",
        )
    })
}

/// The answer for `what` of a pull-through cache that the store lacks and the upstream did
/// not give: unreachable (no answer) or failing (an error other than 404).
pub(super) fn upstream_failed(what: &str, e: &crate::mirror::MirrorError) -> ApiError {
    let how = if e.status.is_none() {
        "unreachable"
    } else {
        "failing"
    };
    ApiError::new(
        503,
        Code::Unavailable,
        format!("{what} is not cached, and the upstream is {how}: {e}"),
    )
    .header("Retry-After", "30".to_owned())
}

/// Value of request header `name`, if present.
fn header<'r>(req: &'r Request, name: &str) -> Option<&'r str> {
    req.headers()
        .iter()
        .find(|h| h.field.as_str().as_str().eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

/// Reads a small request body of at most `max` bytes: `Err(413 SIZE_INVALID)` beyond it
/// (checked against Content-Length first), a read failure as `code`. With `room`, the bytes
/// are held under the budget for bodies read whole, as they arrive (`Err(503)` if there is no
/// room for them).
fn read_small_body(
    req: &mut Request,
    max: usize,
    (what, code): (&str, Code),
    mut room: Option<&mut buffers::BodyRoom<'_>>,
) -> Result<Vec<u8>> {
    use std::io::Read;
    const PIECE: usize = 64 << 10;
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
    let mut body = Vec::new();
    let reader = req.as_reader();
    loop {
        // One more byte than allowed tells a body over the limit.
        let piece = PIECE.min(max + 1 - body.len()) as u64;
        if let Some(room) = room.as_deref_mut() {
            if !room.grow(piece) {
                return Err(ApiError::new(
                    503,
                    Code::Unavailable,
                    format!("too many large {what}s are arriving at once: retry in a moment"),
                )
                .header("Retry-After", "1".to_owned()));
            }
        }
        let n = reader
            .take(piece)
            .read_to_end(&mut body)
            .map_err(|e| ApiError::new(400, code, format!("reading {what}: {e}")))?;
        if body.len() > max {
            return Err(too_big());
        }
        if (n as u64) < piece {
            return Ok(body);
        }
    }
}

/// True if the request carries a body (declared length > 0 or chunked).
fn has_body(req: &Request) -> bool {
    header(req, "Transfer-Encoding").is_some() || req.body_length().is_some_and(|n| n > 0)
}

/// What a response put on the wire: its status and body bytes.
#[derive(Debug, Clone, Copy)]
struct Sent {
    status: u16,
    /// Body bytes written (headers aside; none for a `HEAD`).
    bytes: u64,
}

/// Writes `reply`; returns what was sent.
fn send(app: &App, req: Request, reply: Reply) -> Sent {
    let Reply {
        status,
        mut headers,
        body,
    } = reply;
    headers.push(("Docker-Distribution-API-Version", "registry/2.0".to_owned()));
    // Header values come from requests and from stored data: whatever let a control
    // character through upstream, it never reaches the wire (no response splitting).
    if let Some((name, _)) = headers.iter().find(|(_, v)| !header_value_safe(v)) {
        log::error!("refused to send a {name} header holding a control character");
        let e = ApiError::new(
            500,
            Code::Unknown,
            format!("the response's {name} header would hold a control character"),
        );
        return send(app, req, e.into());
    }
    let _transfer = matches!(body, Body::Blob { .. } | Body::Relay(_))
        .then(|| crate::metrics::get().transfer(crate::metrics::Direction::Download));
    match body {
        Body::Blob { blob, start, len } => {
            match stream::blob(app, req, status, &headers, (blob, start, len)) {
                Ok(bytes) => Sent { status, bytes },
                // Failed before anything was sent: still time for a proper error.
                Err(failed) => {
                    let (req, e) = *failed;
                    send(app, req, e.into())
                }
            }
        }
        Body::Relay(relay) => stream::relay(app, req, status, &headers, relay),
        Body::Head(len) => stream::head(req, status, &headers, len),
        Body::Empty => send_bytes(req, status, headers, Vec::new()),
        Body::Bytes(data) => send_bytes(req, status, headers, data),
    }
}

/// True if `v` may be sent as a header value: visible ASCII, spaces and tabs only.
fn header_value_safe(v: &str) -> bool {
    v.bytes().all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
}

/// Writes a small, fully known response through tiny_http; returns what was sent.
fn send_bytes(
    req: Request,
    status: u16,
    headers: Vec<(&'static str, String)>,
    data: Vec<u8>,
) -> Sent {
    let bytes = if *req.method() == Method::Head {
        0
    } else {
        data.len() as u64
    };
    let mut response = Response::from_data(data).with_status_code(status);
    for (name, value) in headers {
        // Header values we set are ASCII; anything else is dropped rather than panicking.
        if let Ok(h) = Header::from_bytes(name.as_bytes(), value.as_bytes()) {
            response.add_header(h);
        }
    }
    match req.respond(response) {
        Ok(()) => Sent { status, bytes },
        Err(e) => {
            log::debug!("response not delivered: {e}");
            Sent { status, bytes: 0 }
        }
    }
}
