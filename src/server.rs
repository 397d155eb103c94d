//! The listener, a bounded pool of worker threads, and graceful shutdown on SIGTERM/SIGINT.

use crate::config::Config;
use crate::crypto::MasterKey;
use crate::http::{self, App};
use crate::storage::{Store, StoreError, StoreOptions};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::Duration;

/// Runs the registry until SIGTERM/SIGINT; returns once the database is closed.
pub fn run(config: Config) -> Result<(), String> {
    std::fs::create_dir_all(&config.data_dir).map_err(|e| {
        format!(
            "cannot create data directory {}: {e}",
            config.data_dir.display()
        )
    })?;
    let db_path = config.data_dir.join("outpost.redb");
    let store = open_store(&config, &db_path, true)?;
    let stopping = Arc::new(AtomicBool::new(false));
    let listen = config.listen;
    let io_timeout = config.io_timeout;
    let workers = config.workers;
    let app = App::new(store, config, stopping.clone())
        .map_err(|e| format!("cannot read settings from {}: {e}", db_path.display()))?;
    let server = tiny_http::Server::new(tiny_http::ServerConfig {
        addr: tiny_http::ConfigListenAddr::IP(vec![listen]),
        ssl: None,
        socket_timeout: Some(io_timeout),
    })
    .map_err(|e| format!("cannot listen on {listen}: {e}"))?;
    let server = Arc::new(server);
    let mut signals = Signals::new([SIGTERM, SIGINT])
        .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    log::info!(
        "listening on {} (store {}, {} workers)",
        server
            .server_addr()
            .to_ip()
            .map_or_else(|| "?".to_owned(), |a| a.to_string()),
        db_path.display(),
        workers
    );
    let app = Arc::new(app);

    let pool: Vec<_> = (0..workers)
        .map(|i| {
            let (server, app) = (server.clone(), app.clone());
            thread::Builder::new()
                .name(format!("worker-{i}"))
                .spawn(move || worker(&server, &app))
                .map_err(|e| format!("cannot start worker: {e}"))
        })
        .collect::<Result<_, _>>()?;

    {
        let (server, stopping) = (server.clone(), stopping.clone());
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
                    log::info!("signal {sig}: finishing in-flight requests, then stopping");
                    stopping.store(true, Ordering::SeqCst);
                    for _ in 0..workers {
                        server.unblock();
                    }
                }
            })
            .map_err(|e| format!("cannot start signal thread: {e}"))?;
    }

    let (janitor_stop, janitor_wait) = mpsc::channel::<()>();
    let janitor = {
        let app = app.clone();
        thread::Builder::new()
            .name("janitor".into())
            .spawn(move || janitor(&app, &janitor_wait))
            .map_err(|e| format!("cannot start janitor: {e}"))?
    };

    for w in pool {
        let _ = w.join();
    }
    drop(janitor_stop);
    let _ = janitor.join();
    drop(server);
    if let Err(e) = app.store.flush() {
        log::error!("flushing the store at shutdown: {e}");
    }
    match Arc::try_unwrap(app) {
        Ok(app) => drop(app), // closes the database cleanly
        Err(_) => log::warn!("store still referenced at shutdown"),
    }
    log::info!("stopped");
    Ok(())
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
    };
    Store::open(path, options).map_err(|e| match e {
        StoreError::Keys(m) => m,
        e => format!("cannot open store {}: {e}", path.display()),
    })
}

/// Makes mounts durable within `FLUSH_EVERY`, and drops abandoned upload sessions: at start,
/// then every quarter of the TTL (1 s to 1 h), until `stop` is dropped.
fn janitor(app: &App, stop: &mpsc::Receiver<()>) {
    const FLUSH_EVERY: Duration = Duration::from_secs(1);
    let ttl = app.config.upload_ttl;
    let every = (ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let mut next_purge = std::time::Instant::now();
    loop {
        if let Err(e) = app.store.flush() {
            log::warn!("flushing the store: {e}");
        }
        if std::time::Instant::now() >= next_purge {
            match app.store.purge_uploads(ttl.as_secs()) {
                Ok(0) => {}
                Ok(n) => log::info!("dropped {n} upload session(s) idle for more than {ttl:?}"),
                Err(e) => log::warn!("purging idle uploads: {e}"),
            }
            next_purge = std::time::Instant::now() + every;
        }
        if let Err(mpsc::RecvTimeoutError::Disconnected) = stop.recv_timeout(FLUSH_EVERY) {
            return;
        }
    }
}

fn worker(server: &tiny_http::Server, app: &App) {
    loop {
        if app.stopping.load(Ordering::SeqCst) {
            return;
        }
        match server.recv() {
            Ok(req) => {
                // A panic is one failed request (tiny_http answers 500), not a dead worker.
                if catch_unwind(AssertUnwindSafe(|| http::handle(app, req))).is_err() {
                    log::error!("request handler panicked");
                }
            }
            Err(e) if !app.stopping.load(Ordering::SeqCst) => log::warn!("accept: {e}"),
            Err(_) => return,
        }
    }
}
