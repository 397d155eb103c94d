//! Commands besides `serve` that manage a registry: over the HTTP admin API of the registry
//! serving the store (its admin socket) or of one elsewhere (`--server`, HTTP or HTTPS with
//! credentials), or directly on the store when none serves it.

pub mod output;

pub mod audit;
pub mod certs;
pub mod gc;
pub mod help;
pub mod mirror;
pub mod scrub;
pub mod users;

use output::note;
use output::out;

use crate::config::Config;
use crate::crypto::{Algorithm, MasterKey};
use crate::mirror::remote::Remote;
use crate::settings::Settings;
use crate::storage::Store;
use serde_json::{Map, Value};
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Which registry a command reaches and who it is there: `--server`, `--user` (password
/// from `$OUTPOST_PASSWORD`, the terminal, or the first line of stdin), `--ca-file`.
#[derive(Default)]
pub struct Login {
    /// `--server`: the registry's URL (`http://` or `https://`; plain `HOST:PORT` is HTTP).
    pub server: Option<String>,
    /// `--user`, else `$OUTPOST_USER`.
    pub user: Option<String>,
    /// `--ca-file`: CA certificates (PEM) for an https registry.
    pub ca_file: Option<PathBuf>,
}

impl Login {
    /// A client of the registry at `url` with these credentials (the password asked for
    /// now), trusting `ca` (else the system's roots).
    fn remote(&self, url: &str, ca: Option<&Path>) -> Result<Remote, String> {
        let creds = match &self.user {
            None => None,
            Some(u) => Some((u.clone(), password(u)?)),
        };
        Remote::new(url, creds, ca)
    }
}

/// The password of `user` signing in to a registry: `$OUTPOST_PASSWORD`, else asked on the
/// terminal, else the first line of stdin.
fn password(user: &str) -> Result<String, String> {
    let p = match std::env::var("OUTPOST_PASSWORD") {
        Ok(p) => p,
        // SAFETY: isatty only inspects file descriptor 0.
        Err(_) if unsafe { libc::isatty(0) } == 1 => {
            users::prompt_hidden(&format!("password for {user}: "))?
        }
        Err(_) => users::stdin_line()?,
    };
    // Sent, an empty password would only count as a failed login against this address.
    if p.is_empty() {
        return Err(format!(
            "no password for --user {user}: set $OUTPOST_PASSWORD, type it at the prompt, or \
             give it as the first line of stdin"
        ));
    }
    Ok(p)
}

/// Where a command's work is done: over HTTP by the registry serving the store, or on the store.
enum Reach {
    Online(Endpoint),
    Offline(Box<Store>, std::path::PathBuf),
}

/// How the running registry is reached.
enum Endpoint {
    /// Its admin socket: the operator, whatever the access rules say.
    Socket(PathBuf),
    /// A registry at a URL (`--server`), over HTTP or HTTPS through the mirror's client,
    /// as `--user` or anonymous.
    Remote(Box<Remote>),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Socket(p) => write!(f, "{}", p.display()),
            Endpoint::Remote(r) => write!(f, "{}", r.base()),
        }
    }
}

/// The registry serving the store in the data directory, or that store itself: decided by
/// the store, never by whatever answers at the listen address (that may be another registry).
/// With `--server`, the registry there. A new command that manages a registry takes the
/// `Login` and does its work through `call` on `Reach::Online`, or on the store.
fn reach(config: &Config, login: &Login) -> Result<Reach, String> {
    reach_or_create(config, login, false)
}

/// `reach`, creating the store if there is none (`create`): users set up before the first
/// start, a gateway's first mirror pass.
fn reach_or_create(config: &Config, login: &Login, create: bool) -> Result<Reach, String> {
    let reached = find(config, login, create)?;
    // Which registry a command acts on is never left to guess.
    match &reached {
        Reach::Online(Endpoint::Socket(p)) => note!(
            "using the registry serving {} (through its admin socket {})",
            config.data_dir.display(),
            p.display()
        ),
        Reach::Online(Endpoint::Remote(r)) => match r.user() {
            Some(u) => note!("using the registry at {} as {u}", r.base()),
            None => note!("using the registry at {}", r.base()),
        },
        Reach::Offline(_, path) => {
            note!("using the store {} (no registry serves it)", path.display())
        }
    }
    Ok(reached)
}

/// `reach_or_create` without saying which.
fn find(config: &Config, login: &Login, create: bool) -> Result<Reach, String> {
    if let Some(s) = &login.server {
        let url = server_url(s)?;
        let remote = login.remote(&url, login.ca_file.as_deref())?;
        return Ok(Reach::Online(Endpoint::Remote(Box::new(remote))));
    }
    let socket = config.data_dir.join(crate::server::ADMIN_SOCKET);
    match UnixStream::connect(&socket) {
        Ok(_) => return Ok(Reach::Online(Endpoint::Socket(socket))),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            return Err(format!(
                "cannot use the admin socket {}: {e} (run this as the registry's user or root)",
                socket.display()
            ))
        }
        Err(_) => {} // no registry, or one that stopped and left its socket file
    }
    let path = store_path(config);
    if !path.exists() {
        // A registry creates its store when it starts: none serves this data directory, so
        // whatever answers at the listen address is not its registry.
        if !create {
            return Err(format!(
                "there is no store at {} (give --config or --data-dir naming the registry's \
                 store, or --server)",
                path.display()
            ));
        }
        crate::storage::private_dir(&config.data_dir)
            .map_err(|e| format!("cannot create {}: {e}", config.data_dir.display()))?;
        note!(
            "there is no store at {}: creating it for the registry's first start",
            path.display()
        );
        return Ok(Reach::Offline(Box::new(open_offline(config, &path)?), path));
    }
    match open_offline(config, &path) {
        Ok(store) => Ok(Reach::Offline(Box::new(store), path)),
        Err(_) if in_use(&path) => Err(held_elsewhere(config, &path)),
        Err(e) => Err(e),
    }
}

/// The store, for commands that need it to themselves.
fn stopped_store(config: &Config, what: &str) -> Result<Store, String> {
    let path = store_path(config);
    if !path.exists() {
        return Err(format!(
            "there is no store at {} (give --config or --data-dir)",
            path.display()
        ));
    }
    open_offline(config, &path).map_err(|e| {
        if in_use(&path) {
            format!(
                "{} is in use by a registry or another outpost command: stop it first ({what} \
                 needs the store to itself; e.g. systemctl stop outpost)",
                path.display()
            )
        } else {
            e
        }
    })
}

fn store_path(config: &Config) -> PathBuf {
    config.data_dir.join("outpost.redb")
}

/// Whether another process has the store open: redb locks the file while it is open, and a
/// read-only open is refused by that lock without changing the file.
fn in_use(path: &Path) -> bool {
    matches!(
        redb::ReadOnlyDatabase::open(path),
        Err(redb::DatabaseError::DatabaseAlreadyOpen | redb::DatabaseError::LockProtocolMismatch)
    )
}

/// Why a store held by a process without an admin socket (a registry that could not create
/// one, e.g. for a data directory path too long for a socket, or another outpost command)
/// cannot be worked on: whatever answers at an address cannot be told to be the registry
/// serving this store, so only `--server` names one.
fn held_elsewhere(config: &Config, path: &Path) -> String {
    format!(
        "{} is in use, and no admin socket answers in {}: nothing was done. If a registry \
         serves it, pass --server with the address it logged; if another outpost command \
         works on it, let it finish",
        path.display(),
        config.data_dir.display()
    )
}

/// One request to the running registry; the JSON it answered with `ok` status.
fn call(
    at: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&str>,
    ok: u16,
) -> Result<Value, String> {
    call_for(at, method, path, body, ok, Duration::from_secs(30))
}

/// `call`, waiting up to `wait` for the answer.
fn call_for(
    at: &Endpoint,
    method: &str,
    path: &str,
    body: Option<&str>,
    ok: u16,
    wait: Duration,
) -> Result<Value, String> {
    let reply = match at {
        Endpoint::Socket(p) => {
            let unreachable = |e: std::io::Error| format!("cannot reach outpost at {at}: {e}");
            let conn = UnixStream::connect(p).map_err(unreachable)?;
            conn.set_read_timeout(Some(wait)).map_err(unreachable)?;
            request(conn, "localhost", method, path, body)
                .map_err(|e| format!("talking to outpost at {at}: {e}"))?
        }
        Endpoint::Remote(r) => r.admin(method, path, body, wait)?,
    };
    reply_json(reply, at, ok)
}

/// `outpost settings [NAME=VALUE ...]`: shows the runtime switches, changing the given ones
/// first. VALUE is `enabled`, `disabled`, or `default` (back to the config file's value).
pub fn settings(config: &Config, login: &Login, changes: &[String]) -> Result<(), String> {
    let mut patch = Map::new();
    for change in changes {
        let (name, value) = change
            .split_once('=')
            .ok_or_else(|| format!("{change:?}: write NAME=VALUE, e.g. blobMounting=disabled"))?;
        let value = match value {
            "default" => Value::Null,
            v => Value::String(v.to_owned()),
        };
        patch.insert(name.to_owned(), value);
    }
    let shown = match reach(config, login)? {
        Reach::Online(at) => {
            if patch.is_empty() {
                call(&at, "GET", "/admin/settings", None, 200)?
            } else {
                let body = Value::Object(patch).to_string();
                call(&at, "PATCH", "/admin/settings", Some(&body), 200)?
            }
        }
        Reach::Offline(store, path) => {
            let settings = Settings::load(config, &store).map_err(|e| e.to_string())?;
            if !patch.is_empty() {
                settings
                    .apply(&store, &Value::Object(patch))
                    .map_err(|e| match e {
                        crate::settings::SettingsError::Invalid(m) => m,
                        crate::settings::SettingsError::Store(e) => e.to_string(),
                    })?;
                note!(
                    "no registry serves {}: changed it directly; it applies from its next start",
                    path.display()
                );
            }
            settings.to_json()
        }
    };
    print_settings(&shown);
    Ok(())
}

/// How a key choice reads in output.
fn key_words(key: Option<&str>) -> String {
    key.map_or("plaintext".to_owned(), |k| format!("key {k:?}"))
}

/// `outpost repo create NAME [--key K [--algorithm A]]`.
pub fn repo_create(
    config: &Config,
    login: &Login,
    name: &str,
    key: Option<(String, Option<Algorithm>)>,
) -> Result<(), String> {
    let words = key_words(key.as_ref().map(|k| k.0.as_str()));
    match reach(config, login)? {
        Reach::Online(at) => {
            let mut body = Map::new();
            if let Some((k, alg)) = &key {
                body.insert("key".into(), Value::String(k.clone()));
                if let Some(a) = alg {
                    body.insert("algorithm".into(), Value::String(a.name().into()));
                }
            }
            let path = format!("/admin/repositories/{name}");
            call(
                &at,
                "PUT",
                &path,
                Some(&Value::Object(body).to_string()),
                201,
            )?;
        }
        Reach::Offline(store, _) => store
            .repo_create(name, key.as_ref().map(|(k, a)| (k.as_str(), *a)))
            .map_err(|e| format!("cannot create {name}: {e}"))?,
    }
    out!("created repository {name} ({words})");
    Ok(())
}

/// `outpost repo delete NAME [--erase]`.
pub fn repo_delete(config: &Config, login: &Login, name: &str, erase: bool) -> Result<(), String> {
    let (key, freed, erased) = match reach(config, login)? {
        Reach::Online(at) => {
            let path = format!("/admin/repositories/{name}?erase={erase}");
            let v = call(&at, "DELETE", &path, None, 200)?;
            (
                v["key"].as_str().map(str::to_owned),
                v["blobsFreed"].as_u64().unwrap_or(0),
                v["erased"].as_bool().unwrap_or(false),
            )
        }
        Reach::Offline(store, _) => {
            let d = store
                .repo_delete(name, erase)
                .map_err(|e| format!("cannot delete {name}: {e}"))?;
            (d.key, d.blobs_freed, d.erased)
        }
    };
    out!(
        "deleted repository {name} ({}); {freed} blob(s) no other repository held were deleted",
        key_words(key.as_deref())
    );
    if erased {
        out!(
            "key {:?} destroyed: what it sealed, including any copy of the old blocks (a backup, \
             a cloned card), can no longer be decrypted. Its wrapped copy may linger in freed \
             pages of the database until they are reused; rotating the master key (outpost key \
             rotate) and destroying the old one makes that copy useless too.",
            key.unwrap_or_default()
        );
    }
    Ok(())
}

/// `outpost repo move NAME (--key K [--algorithm A] | --plaintext)`: (re-)encrypts or
/// decrypts.
pub fn repo_move(
    config: &Config,
    name: &str,
    key: Option<(String, Option<Algorithm>)>,
) -> Result<(), String> {
    let store = stopped_store(config, "repo move")?;
    let m = store
        .repo_move(name, key.as_ref().map(|(k, a)| (k.as_str(), *a)))
        .map_err(|e| format!("cannot move {name}: {e}"))?;
    let to = key.as_ref().map(|k| k.0.as_str());
    // What happened to the bytes: the words say which way they went.
    let (verb, target) = match (m.from.is_some(), to.is_some()) {
        (true, false) => ("decrypted", "in plaintext".to_owned()),
        (false, true) => ("encrypted", "with the new key".to_owned()),
        (true, true) => ("re-encrypted", "with the new key".to_owned()),
        (false, false) => ("copied", "in plaintext".to_owned()),
    };
    let records = if to.is_some() {
        "re-sealed"
    } else {
        "stored in plaintext"
    };
    out!(
        "moved {name} from {} to {}: {} blob(s) {verb} ({} bytes), {} already stored \
         {target}, {} manifest record(s) {records}",
        key_words(m.from.as_deref()),
        key_words(to),
        m.blobs_copied,
        m.bytes_copied,
        m.blobs_shared,
        m.records
    );
    Ok(())
}

/// `outpost key list`: names, algorithms and users of the data keys (never key material).
pub fn key_list(config: &Config, login: &Login) -> Result<(), String> {
    let keys = match reach(config, login)? {
        Reach::Online(at) => call(&at, "GET", "/admin/keys", None, 200)?["keys"].clone(),
        Reach::Offline(store, _) => {
            let keys = store.keys().map_err(|e| e.to_string())?;
            Value::Array(keys.iter().map(crate::http::key_json).collect())
        }
    };
    let keys = keys.as_array().cloned().unwrap_or_default();
    if keys.is_empty() {
        out!("no data keys: every repository is plaintext");
    }
    for k in keys {
        let repos: Vec<&str> = k["repositories"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        out!(
            "{:<20} {:<18} {} blob(s), {} bytes; master key {}; repositories: {}",
            k["name"].as_str().unwrap_or("?"),
            k["algorithm"].as_str().unwrap_or("?"),
            k["blobs"],
            k["blobBytes"],
            k["masterKeyIds"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(" + "))
                .unwrap_or_default(),
            if repos.is_empty() {
                "none".to_owned()
            } else {
                repos.join(", ")
            }
        );
    }
    Ok(())
}

/// `outpost key generate FILE`.
pub fn key_generate(path: &Path) -> Result<(), String> {
    let id = crate::crypto::generate_master_key(path)?;
    out!(
        "wrote a new master key to {} (id {id}, mode 600). Keep a copy somewhere safe: without \
         it, encrypted repositories cannot be read.",
        path.display()
    );
    Ok(())
}

/// `outpost key rotate [--new-master-key FILE]`: re-wraps every data key under a new master
/// key. Without FILE, a new key is generated next to `masterKeyFile` and replaces it:
///   1. the new key is written to `<masterKeyFile>.new` (reused if a crash left one);
///   2. every data key is wrapped by both keys (one durable transaction);
///   3. `<masterKeyFile>.new` is renamed over `masterKeyFile`;
///   4. the old key's wraps are dropped.
///
/// A crash anywhere leaves a store that the key in `masterKeyFile` opens, and the first
/// start finishes or undoes the rotation (`Store::open` keeps only that key's wraps).
pub fn key_rotate(config: &Config, new: Option<&Path>) -> Result<(), String> {
    let current = crate::server::master_key(config)?
        .ok_or("no master key is configured (masterKeyFile or the systemd credential): there is nothing to rotate")?;
    let store = stopped_store(config, "key rotate")?;
    let (new_key, replace) = match new {
        Some(p) => (MasterKey::load(p)?, None),
        None => {
            let Some(file) = &config.master_key_file else {
                return Err(format!(
                    "the master key comes from the systemd credential {}: give \
                     --new-master-key FILE (made with outpost key generate FILE), then point \
                     LoadCredential at it",
                    crate::server::MASTER_KEY_CREDENTIAL
                ));
            };
            let mut next = file.clone().into_os_string();
            next.push(".new");
            let next = std::path::PathBuf::from(next);
            if !next.exists() {
                crate::crypto::generate_master_key(&next)?;
            }
            (MasterKey::load(&next)?, Some((next, file.clone())))
        }
    };
    if new_key.id() == current.id() {
        return Err(format!(
            "the new master key is the current one (id {}): give another",
            current.id()
        ));
    }
    let n = store
        .add_master_wraps(&new_key)
        .map_err(|e| format!("cannot re-wrap the data keys: {e}"))?;
    let Some((next, file)) = replace else {
        out!(
            "{n} data key(s) are now wrapped by master key id {} as well as id {}. Point \
             masterKeyFile or LoadCredential at {} and start outpost: the first start with it \
             drops the old wraps (until then either key opens the store).",
            new_key.id(),
            current.id(),
            new.map(Path::display)
                .map(|d| d.to_string())
                .unwrap_or_default()
        );
        return Ok(());
    };
    std::fs::rename(&next, &file)
        .and_then(|()| sync_dir(&file))
        .map_err(|e| {
            format!(
                "cannot move {} over {}: {e}; the store opens with either key, so retry",
                next.display(),
                file.display()
            )
        })?;
    store
        .finish_master_rotation(&new_key)
        .map_err(|e| format!("dropping the old wraps: {e} (the next start does it)"))?;
    out!(
        "rotated the master key: {n} data key(s) re-wrapped from id {} to id {}; {} now holds \
         the new key. Destroy every copy of the old one (backups included).",
        current.id(),
        new_key.id(),
        file.display()
    );
    Ok(())
}

/// Makes a rename in `file`'s directory durable.
fn sync_dir(file: &Path) -> std::io::Result<()> {
    let dir = file.parent().filter(|p| !p.as_os_str().is_empty());
    std::fs::File::open(dir.unwrap_or(Path::new(".")))?.sync_all()
}

fn print_settings(v: &Value) {
    let Some(obj) = v.as_object() else { return };
    for (name, s) in obj {
        let value = s["value"].as_str().unwrap_or("?");
        let note = if s["source"] == "runtime" {
            format!(
                "set at runtime; the config file says {}",
                s["configFile"].as_str().unwrap_or("?")
            )
        } else {
            "config file".to_owned()
        };
        out!("{name:<16} {value:<9} ({note})");
    }
}

fn open_offline(config: &Config, path: &Path) -> Result<Store, String> {
    crate::server::open_store(config, path, false)
}

/// Where the registry serving the store through its admin socket `at` listens for HTTP,
/// and whether with TLS: what it says.
fn http_addr(at: &Endpoint) -> Result<(SocketAddr, bool), String> {
    let stats = call(at, "GET", "/admin/stats", None, 200)?;
    let listen = &stats["listen"];
    let addr = listen["address"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| format!("outpost at {at} did not say where it listens"))?;
    Ok((local_addr(addr), listen["tls"] == true))
}

/// Where a registry listening on `listen` is reached from this machine.
fn local_addr(listen: SocketAddr) -> SocketAddr {
    let mut a = listen;
    if a.ip().is_unspecified() {
        a.set_ip(match a {
            SocketAddr::V4(_) => [127, 0, 0, 1].into(),
            SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
        });
    }
    a
}

/// The base URL `--server` names: `https://host:port`, `http://host:port`, or `host:port`
/// (plain HTTP).
fn server_url(s: &str) -> Result<String, String> {
    let (scheme, rest) = match s.split_once("://") {
        Some((scheme @ ("http" | "https"), rest)) => (scheme, rest),
        Some(_) => {
            return Err(format!(
                "--server {s:?}: give http://HOST:PORT or https://HOST:PORT"
            ))
        }
        None => ("http", s),
    };
    let hostport = rest.trim_end_matches('/');
    if hostport.contains('@') {
        // Not echoed: the URL holds a password.
        return Err(
            "--server: give the user with --user and the password through $OUTPOST_PASSWORD, \
             the prompt or stdin, not in the URL"
                .into(),
        );
    }
    if hostport.is_empty() || hostport.contains(['/', '?', '#']) {
        return Err(format!(
            "--server {s:?}: give http://HOST:PORT or https://HOST:PORT (no path)"
        ));
    }
    Ok(format!("{scheme}://{hostport}"))
}

/// One HTTP/1.1 request with `Connection: close`; returns status and body.
fn request(
    mut conn: impl Read + Write,
    host: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> std::io::Result<(u16, Vec<u8>)> {
    let body = body.unwrap_or("");
    // HTTP/1.0: the answer comes unchunked, its end the connection's (a large admin answer,
    // such as a long audit trail, would otherwise come chunked).
    write!(
        conn,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut raw = Vec::new();
    conn.take(16 << 20).read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| std::io::Error::other("malformed response"))?;
    let head = String::from_utf8_lossy(&raw[..split]);
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("malformed status line"))?;
    let chunked = head.lines().any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("transfer-encoding") && v.trim() == "chunked"
        })
    });
    let body = &raw[split + 4..];
    if chunked {
        return Ok((status, dechunk(body)?));
    }
    Ok((status, body.to_vec()))
}

/// The payload of a chunked body (a server may chunk whatever the request's version).
fn dechunk(mut body: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = || std::io::Error::other("malformed chunked body");
    let mut out = Vec::new();
    loop {
        let eol = body.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size = std::str::from_utf8(&body[..eol]).map_err(|_| bad())?;
        let size = size.split(';').next().unwrap_or_default().trim();
        let n = usize::from_str_radix(size, 16).map_err(|_| bad())?;
        body = &body[eol + 2..];
        if n == 0 {
            return Ok(out);
        }
        let chunk = body.get(..n).ok_or_else(bad)?;
        out.extend_from_slice(chunk);
        body = body.get(n + 2..).ok_or_else(bad)?;
    }
}

/// The JSON of an `ok` answer, or the error message the registry sent.
fn reply_json((status, body): (u16, Vec<u8>), at: &Endpoint, ok: u16) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(&body)
        .map_err(|_| format!("outpost at {at} answered {status} without JSON"))?;
    if status == ok {
        return Ok(v);
    }
    let msg = v["errors"][0]["message"].as_str().unwrap_or("no message");
    let hint = match (at, status) {
        (Endpoint::Remote(r), 401) => match r.user() {
            None => " (auth is on there: give --user NAME of an admin; the password comes from \
                     $OUTPOST_PASSWORD, the terminal or stdin)"
                .to_owned(),
            Some(u) => format!(" (the password of {u} was refused)"),
        },
        (Endpoint::Remote(r), 403) => match r.user() {
            None => " (give --user NAME of an admin)".to_owned(),
            Some(u) => {
                format!(" ({u} may not do this: give --user NAME of an admin, one of auth.admins)")
            }
        },
        _ => String::new(),
    };
    Err(format!("outpost at {at} refused ({status}): {msg}{hint}"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn server_urls() {
        let url = |s| super::server_url(s);
        assert_eq!(url("https://gw1:5000/").unwrap(), "https://gw1:5000");
        assert_eq!(url("http://10.0.0.5:5000").unwrap(), "http://10.0.0.5:5000");
        assert_eq!(url("10.0.0.5:5000").unwrap(), "http://10.0.0.5:5000");
        assert!(url("ftp://gw1").is_err());
        assert!(url("https://gw1:5000/v2/").is_err());
        assert!(url("https://").is_err());
        assert!(url("http://gw1:5000?x").is_err());
        assert_eq!(
            super::dechunk(b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n").unwrap(),
            b"abcde"
        );
        assert!(super::dechunk(b"zz\r\n").is_err());
        assert!(super::dechunk(b"9\r\nabc").is_err());
        let e = url("https://root:secret@gw1:5000").unwrap_err();
        assert!(!e.contains("secret"), "{e}");
    }
}
