//! `outpost serve`: opens the store, listens (HTTP or HTTPS, bound here or passed by systemd)
//! and on the admin socket, serves connections on bounded pools of threads (`net`), runs the
//! janitor, the mirror scheduler and the watchdog, and shuts down gracefully on SIGTERM/SIGINT.

use crate::config::Config;
use crate::crypto::MasterKey;
use crate::http::{self, App};
use crate::net::listener::{accept_loop, Heartbeat, Listening};
use crate::net::pool::{Incoming, Pool, Slot};
use crate::storage::{Store, StoreError, StoreOptions};
use crate::systemd;
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// Connections the admin socket serves at once (the operator's commands).
const ADMIN_CONNECTIONS: usize = 8;
/// Connections `metrics.listen` serves at once (scrapers and health checks).
const METRICS_CONNECTIONS: usize = 4;
/// At shutdown, how long running requests may take to finish before their connections are cut.
const STOP_GRACE: Duration = Duration::from_secs(60);

/// Runs the registry until SIGTERM/SIGINT; returns once the database is closed. An error if
/// it cannot start, or if its listening socket fails for good (then it exits non-zero, so that
/// systemd restarts it).
pub fn run(config: Config) -> Result<(), String> {
    // Before anything logs.
    crate::logging::set_format(config.log_format);
    // First, while this is the only thread: the socket systemd may have passed.
    let activated = systemd::activated_listener()?;
    crate::storage::private_dir(&config.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let db_path = config.data_dir.join("outpost.redb");
    let store = open_store(&config, &db_path, true)?;
    let stopping = Arc::new(AtomicBool::new(false));
    let listen = config.listen;
    let limits = config.connections;
    let tls = config
        .tls
        .as_ref()
        .map(crate::tls::server_config)
        .transpose()?
        .map(tiny_http::TlsConfig::new);
    let socket_path = config.data_dir.join(ADMIN_SOCKET);
    let listener = match activated {
        Some(l) => {
            log::info!("using the listening socket passed by systemd (listen setting ignored)");
            l
        }
        None => std::net::TcpListener::bind(listen)
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?,
    };
    let local = listener
        .local_addr()
        .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let metrics_listener = match config.metrics.listen {
        None => None,
        Some(a) => {
            let l = std::net::TcpListener::bind(a)
                .and_then(|l| Ok((l.local_addr()?, l)))
                .map_err(|e| format!("cannot listen on {a} (metrics.listen): {e}"))?;
            Some(l)
        }
    };
    warn_if_exposed(&config, local);
    // From here `listen` is where the registry really listens (a port 0 became a port): what
    // `/admin/stats` tells the commands that reach it through the admin socket.
    let mut config = config;
    config.listen = local;
    let app = Arc::new(App::new(store, config, stopping.clone())?);
    let admin = admin_socket(&socket_path);
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let tls_on = tls.is_some();
    let scheme = if tls_on { "https" } else { "http" };
    log::info!(
        "listening on {local} ({scheme}, store {}, up to {} connections{})",
        db_path.display(),
        limits.max_connections,
        if app.config.auth.is_some() {
            ", auth on"
        } else {
            ""
        }
    );

    if let Some((a, _)) = &metrics_listener {
        log::info!("metrics, healthz and readyz served to anyone on http://{a}");
        if !a.ip().is_loopback() {
            log::warn!(
                "metrics.listen {a} is beyond loopback: whoever reaches it reads /metrics \
                 without credentials"
            );
        }
    }
    crate::metrics::get().started();

    let pool = {
        let app = app.clone();
        Pool::new(
            "conn",
            limits.max_connections,
            Box::new(move |c, slot| {
                let _open = crate::metrics::get().connection();
                serve(
                    &app,
                    c,
                    slot,
                    tls.as_ref(),
                    limits.phases,
                    http::Origin::Network,
                )
            }),
        )
    };
    let admin_pool = {
        let app = app.clone();
        Pool::new(
            "admin",
            ADMIN_CONNECTIONS,
            Box::new(move |c, slot| {
                serve(
                    &app,
                    c,
                    slot,
                    None,
                    limits.phases,
                    http::Origin::AdminSocket,
                )
            }),
        )
    };
    let metrics_pool = {
        let app = app.clone();
        let origin = http::Origin::MetricsListener;
        Pool::new(
            "metrics",
            METRICS_CONNECTIONS,
            Box::new(move |c, slot| serve(&app, c, slot, None, limits.phases, origin)),
        )
    };

    {
        let stopping = stopping.clone();
        thread::Builder::new()
            .name("signals".into())
            .spawn(move || {
                let mut count = 0;
                for sig in signals.forever() {
                    count += 1;
                    if count > 1 {
                        log::warn!("second signal {sig}: exiting now");
                        std::process::exit(1);
                    }
                    // The flag first: once the line is out, `/readyz` says stopping.
                    stopping.store(true, Ordering::SeqCst);
                    log::info!("signal {sig}: finishing in-flight requests, then stopping");
                    systemd::notify("STOPPING=1\nSTATUS=stopping");
                }
            })
            .map_err(|e| format!("cannot start signal thread: {e}"))?;
    }

    // The socket accepts (it was bound and listens already): tell systemd.
    systemd::notify(&format!(
        "READY=1\nSTATUS=serving {scheme} on {local}\nMAINPID={}",
        std::process::id()
    ));

    if crate::clock::offset() != 0 {
        log::warn!(
            "OUTPOST_CLOCK_OFFSET moves this registry's clock by {} s (for tests only)",
            crate::clock::offset()
        );
    }
    crate::events::init(&app.store, &app.config.notifications)?;
    let janitor = background(&app, "janitor", janitor)?;
    let collector = background(&app, "gc", scheduled_gc)?;
    let mirrors = background(&app, "mirrors", scheduled_mirrors)?;
    let scrubber = background(&app, "scrub", scheduled_scrub)?;
    let notifier = background(&app, "events", notifications)?;

    // A TLS client could not read a plain 503: it sees the connection close, and retries.
    let refusal = if tls_on {
        Vec::new()
    } else {
        http::busy_response()
    };
    // The App's: `/readyz` reads it too.
    let heartbeat = &app.heartbeat;
    let (watchdog_stop, watchdog_wait) = mpsc::channel::<()>();
    let lost = thread::scope(|scope| {
        let beside = [
            admin.map(|a| ("admin socket", "admin", Listening::Unix(a), &admin_pool)),
            metrics_listener.map(|(_, l)| {
                (
                    "metrics.listen",
                    "metrics",
                    Listening::Tcp(l),
                    &metrics_pool,
                )
            }),
        ];
        for (what, name, l, pool) in beside.into_iter().flatten() {
            let (refusal, stopping) = (&refusal, &stopping);
            let started = thread::Builder::new()
                .name(format!("{name}-accept"))
                .spawn_scoped(scope, move || {
                    let beat = Heartbeat::default();
                    if let Err(e) = accept_loop(&l, pool, refusal, stopping, &beat) {
                        log::error!("{what}: {e}; it stays closed until a restart");
                    }
                });
            if let Err(e) = started {
                log::warn!("no {what}: cannot start its thread: {e}");
            }
        }
        if let Some(interval) = systemd::watchdog_interval() {
            let (app, pool) = (&app, &pool);
            let started =
                thread::Builder::new()
                    .name("watchdog".into())
                    .spawn_scoped(scope, move || {
                        let store = || app.store.ping().map_err(|e| e.to_string());
                        let checks = crate::net::watchdog::Checks {
                            heartbeat,
                            pool,
                            stall: limits.phases.window * 2,
                            store: &store,
                        };
                        crate::net::watchdog::run(interval, &checks, &watchdog_wait)
                    });
            if let Err(e) = started {
                log::warn!("no watchdog pings: cannot start their thread: {e}");
            }
        }
        // This thread accepts. A panic here is a lost listener too.
        let l = Listening::Tcp(listener);
        let accepted = catch_unwind(AssertUnwindSafe(|| {
            accept_loop(&l, &pool, &refusal, &stopping, heartbeat)
        }))
        .unwrap_or_else(|_| Err("the accept loop panicked".into()));
        // New clients are refused at once from here on, rather than left waiting in a backlog
        // nobody reads (with socket activation, systemd keeps them for the next start).
        drop(l);
        // Stopping (a signal), or the listener is gone: either way, wind down.
        stopping.store(true, Ordering::SeqCst);
        drop(watchdog_stop);
        for p in [&pool, &admin_pool, &metrics_pool] {
            p.stop();
        }
        if !pool.drain(STOP_GRACE) {
            log::warn!(
                "connections still busy after {STOP_GRACE:?}: cutting them (uploads can resume)"
            );
            pool.abort_all();
            pool.drain(Duration::from_secs(5));
        }
        for p in [&admin_pool, &metrics_pool] {
            p.abort_all();
            p.drain(Duration::from_secs(5));
        }
        accepted.err()
    });
    for (stop, thread) in [janitor, collector, mirrors, scrubber, notifier] {
        drop(stop);
        let _ = thread.join();
    }
    drop((pool, admin_pool, metrics_pool));
    if socket_path.exists() {
        let _ = std::fs::remove_file(&socket_path);
    }
    if let Err(e) = app
        .store
        .flush_tallies(true)
        .and_then(|()| app.store.flush())
    {
        log::error!("writing failed logins and pull counts at shutdown: {e}");
    }
    if let Err(e) = app.store.save_progress() {
        log::error!("saving upload progress at shutdown: {e}");
    }
    match Arc::try_unwrap(app) {
        Ok(app) => drop(app), // closes the database cleanly
        Err(_) => log::warn!("store still referenced at shutdown"),
    }
    if let Some(e) = lost {
        log::error!("{e}: exiting with an error so that the service manager restarts outpost");
        return Err(e);
    }
    log::info!("stopped");
    Ok(())
}

/// Serves one connection's requests in turn, until it ends or the registry stops; `origin`:
/// where a TCP connection arrived (a Unix one is the admin socket).
fn serve(
    app: &App,
    conn: Incoming,
    slot: &Slot<'_>,
    tls: Option<&tiny_http::TlsConfig>,
    limits: tiny_http::Limits,
    origin: http::Origin,
) {
    let peer = match &conn {
        Incoming::Tcp(s) => s.peer_addr().ok(),
        Incoming::Unix(_) => None,
    };
    let (mut conn, origin) = match conn {
        Incoming::Tcp(s) => match tiny_http::HttpConnection::tcp(s, limits, tls) {
            Ok(c) => (c, origin),
            Err(e) => {
                log::debug!("connection dropped before its first request: {e}");
                return;
            }
        },
        Incoming::Unix(s) => (
            tiny_http::HttpConnection::unix(s, limits),
            http::Origin::AdminSocket,
        ),
    };
    slot.watch(conn.watch());
    for req in conn.by_ref() {
        http::handle(app, req, origin);
        slot.answered();
        if slot.stopping() {
            break;
        }
    }
    if let Some((status, why)) = conn.refused() {
        rejected(status, why, peer);
    }
}

/// Counts and logs (at most one line a minute: a scanner or a broken client may send many) a
/// request the HTTP layer answered by itself, which neither the access log nor the request
/// counters see.
fn rejected(status: u16, why: &str, peer: Option<std::net::SocketAddr>) {
    static LOG: crate::net::Throttled = crate::net::Throttled::new(Duration::from_secs(60));
    crate::metrics::get().rejected(status);
    LOG.warn(|| {
        let peer = peer.map_or("the admin socket".to_owned(), |p| p.ip().to_string());
        format!("answered {status} ({why}) to {peer} before any handler, and closed")
    });
}

/// Name of the systemd credential holding the master key (`LoadCredential=`).
pub const MASTER_KEY_CREDENTIAL: &str = "outpost-master-key";

/// The master key: `masterKeyFile` if set, else the systemd credential if there is one.
pub fn master_key(config: &Config) -> Result<Option<MasterKey>, String> {
    if let Some(path) = &config.master_key_file {
        return MasterKey::load(path).map(Some);
    }
    let Some(dir) = std::env::var_os("CREDENTIALS_DIRECTORY") else {
        return Ok(None);
    };
    let path = std::path::Path::new(&dir).join(MASTER_KEY_CREDENTIAL);
    if path.exists() {
        MasterKey::load(&path).map(Some)
    } else {
        Ok(None)
    }
}

/// Opens the store at `path` as `config` says, with the master key it names; refuses
/// encryption rules that no master key can serve. `serving`: the registry starts, and
/// settles a master key rotation on the key it started with.
pub fn open_store(config: &Config, path: &std::path::Path, serving: bool) -> Result<Store, String> {
    let master = master_key(config)?;
    let keys: Vec<&str> = config
        .encryption
        .iter()
        .filter_map(|r| r.key.as_ref().map(|k| k.0.as_str()))
        .collect();
    if master.is_none() && !keys.is_empty() {
        return Err(format!(
            "the encryption rules name keys ({}) but there is no master key: set \
             masterKeyFile in the config, or provide the systemd credential {} \
             (outpost key generate FILE writes a new one)",
            keys.join(", "),
            MASTER_KEY_CREDENTIAL
        ));
    }
    if let Some(m) = &master {
        log::info!("master key id {} from {}", m.id(), m.source());
    }
    let options = StoreOptions {
        cache_size: config.cache_size,
        chunk_size: config.chunk_size,
        min_free_space: config.min_free_space as u64,
        master_key: master,
        encryption: config.encryption.clone(),
        settle_master_key: serving,
        quotas: config.quotas.clone(),
        audit: config.audit,
    };
    Store::open(path, options).map_err(|e| match e {
        StoreError::Keys(m) => m,
        e => format!("cannot open store {}: {e}", path.display()),
    })
}

/// Starts background task `task` on a thread named `name`; it runs until the returned
/// sender is dropped (the task sees its receiver disconnect).
fn background(
    app: &Arc<App>,
    name: &str,
    task: fn(&App, &mpsc::Receiver<()>),
) -> Result<(mpsc::Sender<()>, thread::JoinHandle<()>), String> {
    let (stop, wait) = mpsc::channel::<()>();
    let app = app.clone();
    let handle = thread::Builder::new()
        .name(name.into())
        .spawn(move || task(&app, &wait))
        .map_err(|e| format!("cannot start the {name} thread: {e}"))?;
    Ok((stop, handle))
}

/// Makes mounts durable within `FLUSH_EVERY`, hands freed memory back, and drops abandoned
/// upload sessions: at start, then every quarter of the TTL (1 s to 1 h), until `stop` is
/// dropped.
fn janitor(app: &App, stop: &mpsc::Receiver<()>) {
    const FLUSH_EVERY: Duration = Duration::from_secs(1);
    let ttl = app.config.upload_ttl;
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut next_purge = std::time::Instant::now();
    loop {
        // Before the flush, which makes the batch durable.
        if let Err(e) = app.store.flush_tallies(false) {
            log::warn!("writing failed logins and pull counts: {e}");
        }
        if let Err(e) = app.store.flush() {
            log::warn!("flushing the store: {e}");
        }
        // Chunks of blobs a pass deleted that it did not get to (it was stopped, or the
        // process was killed): reaped in the background.
        let mut held = crate::storage::Held::default();
        let slice = Duration::from_millis(200);
        match crate::gc::reap(&app.store, &mut held, &app.stopping, slice) {
            Ok(true) => {
                if let Err(e) = app.store.gc_settle() {
                    log::warn!("settling deleted chunks: {e}");
                }
            }
            Ok(false) => {}
            Err(e) => log::warn!("deleting the chunks of deleted blobs: {e}"),
        }
        if std::time::Instant::now() >= next_purge {
            match app.store.purge_uploads(ttl.as_secs()) {
                Ok(0) => {}
                Ok(n) => log::info!("dropped {n} upload session(s) idle for more than {ttl:?}"),
                Err(e) => log::warn!("purging idle uploads: {e}"),
            }
            next_purge = std::time::Instant::now() + every;
        }
        crate::memory::give_back();
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(FLUSH_EVERY) {
            return;
        }
    }
}

/// Delivers webhook notifications to each `notifications` endpoint until the registry stops.
fn notifications(app: &App, _stop: &mpsc::Receiver<()>) {
    if app.config.notifications.is_empty() {
        return;
    }
    let instance = match app.store.instance_id() {
        Ok(id) => id,
        Err(e) => {
            log::error!("notifications: cannot read the store's id: {e}; none are sent");
            return;
        }
    };
    let scheme = if app.config.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let source = crate::events::Source {
        base: format!("{scheme}://{}", app.config.listen),
        addr: app.config.listen.to_string(),
        instance,
    };
    crate::events::run(
        &app.store,
        &app.config.notifications,
        &source,
        &app.stopping,
    );
}

/// Runs a collector pass every `gcInterval` (the first within five minutes of start), until
/// `stop` is dropped.
fn scheduled_gc(app: &App, stop: &mpsc::Receiver<()>) {
    let Some(every) = app.config.gc.interval else {
        return;
    };
    let mut wait = every.min(Duration::from_secs(300));
    loop {
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(wait) {
            return;
        }
        match crate::gc::run(&app.store, &app.config.gc, false, &app.stopping) {
            Ok(r) => {
                let nothing = ["manifests", "blobLinks", "repositories"]
                    .iter()
                    .all(|k| r[k].as_array().is_none_or(Vec::is_empty));
                if !nothing {
                    log::info!("gc: {}", crate::gc::summary(&r));
                }
            }
            Err(e) => log::warn!("gc pass: {e}"),
        }
        wait = every;
    }
}

/// Scrubs at `scrubRate`: goes on with a full pass under way, or starts one every
/// `scrubInterval` (the first check within five minutes of start), until `stop` is dropped.
fn scheduled_scrub(app: &App, stop: &mpsc::Receiver<()>) {
    if app.config.scrub.interval.is_none() {
        return;
    }
    let healer = crate::scrub::heal::Healer::new(&app.config.mirrors);
    let mut wait = Duration::from_secs(300);
    loop {
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(wait) {
            return;
        }
        wait = crate::scrub::scheduled(&app.store, &app.config.scrub, &healer, &app.stopping);
    }
}

/// Runs each mirror with an `interval` once soon after start, then every interval.
fn scheduled_mirrors(app: &App, stop: &mpsc::Receiver<()>) {
    let start = std::time::Instant::now() + Duration::from_secs(5);
    let mut due: Vec<_> = app
        .config
        .mirrors
        .iter()
        .filter(|m| m.interval.is_some() && !m.repositories.is_empty())
        .map(|m| (m, start))
        .collect();
    if due.is_empty() {
        return;
    }
    loop {
        for (m, next) in &mut due {
            if std::time::Instant::now() < *next || app.stopping.load(Ordering::Relaxed) {
                continue;
            }
            let progress = crate::mirror::progress::Progress::new(false);
            match crate::mirror::sync::run_pass(&app.store, m, &app.stopping, progress) {
                Ok(r) => log::info!(
                    "mirror {}: pass {} ({} image(s) fetched, {} bytes)",
                    m.name,
                    r["result"].as_str().unwrap_or("?"),
                    r["imagesFetched"],
                    r["bytesFetched"]
                ),
                Err(e) => log::warn!("mirror {}: {e}", m.name),
            }
            *next = std::time::Instant::now() + m.interval.unwrap_or(Duration::from_secs(3600));
        }
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(Duration::from_secs(1))
        {
            return;
        }
    }
}

/// The admin socket's file name in the data directory.
pub const ADMIN_SOCKET: &str = "admin.sock";

/// Listens on the admin socket at `path` (mode 600: the registry's user and root), replacing
/// a stale one; `None` (logged) if that fails, e.g. a path too long for a socket.
fn admin_socket(path: &std::path::Path) -> Option<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    // The store's lock is held: no other outpost serves this data directory, so a socket
    // file left here is stale.
    let _ = std::fs::remove_file(path);
    let bound = std::os::unix::net::UnixListener::bind(path).and_then(|l| {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        Ok(l)
    });
    match bound {
        Ok(l) => Some(l),
        Err(e) => {
            log::warn!(
                "no admin socket at {}: {e}; outpost commands on this host then need the \
                 registry stopped, or --server",
                path.display()
            );
            None
        }
    }
}

/// Warns when the registry is reachable beyond this host without the protection it needs.
fn warn_if_exposed(config: &Config, listening: std::net::SocketAddr) {
    if let Some(w) = exposure(config, listening) {
        log::warn!("{w}");
    }
}

/// What is unprotected when the registry listens on `listening` beyond loopback, if anything.
fn exposure(config: &Config, listening: std::net::SocketAddr) -> Option<String> {
    if listening.ip().is_loopback() {
        return None;
    }
    if config.auth.is_none() {
        return Some(format!(
            "!!! listening on {} WITHOUT AUTHENTICATION: anyone who can reach this address may \
             pull, push and delete every image and use the admin API. Add \"access\" rules \
             (see README: Access control and TLS) or listen on 127.0.0.1 only. !!!",
            listening
        ));
    }
    config.tls.is_none().then(|| {
        format!(
            "listening on {} with auth but without TLS: passwords and tokens cross the network \
             in clear text. Configure tls.certFile/tls.keyFile (outpost tls self-signed writes \
             a pair).",
            listening
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Overrides;

    #[test]
    fn listening_beyond_loopback_without_auth_or_tls_is_called_out() {
        let config = |json: &str| {
            serde_json::from_str::<Overrides>(json)
                .unwrap()
                .resolve()
                .unwrap()
        };
        let check = |json: &str| {
            let c = config(json);
            exposure(&c, c.listen)
        };
        assert_eq!(check("{}"), None);
        assert_eq!(check(r#"{"listen": "[::1]:5000"}"#), None);
        let open = check(r#"{"listen": "0.0.0.0:5000"}"#).unwrap();
        assert!(open.contains("WITHOUT AUTHENTICATION"), "{open}");
        let clear = check(r#"{"listen": "10.0.0.5:5000", "access": []}"#).unwrap();
        assert!(clear.contains("without TLS"), "{clear}");
        let tls = r#"{"listen": "10.0.0.5:5000", "access": [],
                      "tls": {"certFile": "c", "keyFile": "k"}}"#;
        assert_eq!(check(tls), None);
        // A socket passed by systemd counts, whatever the listen setting says.
        let passed = exposure(&config("{}"), "0.0.0.0:5000".parse().unwrap()).unwrap();
        assert!(passed.contains("WITHOUT AUTHENTICATION"), "{passed}");
    }
}
