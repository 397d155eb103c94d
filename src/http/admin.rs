//! The admin API: settings (read, change at runtime), stats, a consistency check, keys, and
//! creating and deleting repositories.

use super::errors::{ApiError, Code};
use super::{read_small_body, App, Reply, Result};
use crate::settings::SettingsError;
use tiny_http::Request;

/// Largest settings patch read.
const MAX_PATCH: usize = 64 << 10;

fn json(value: &serde_json::Value) -> Reply {
    let body = serde_json::to_vec_pretty(value).expect("JSON serialises");
    Reply::bytes(200, "application/json", body)
}

/// `GET /admin/settings`: every switch, its value and where the value comes from.
pub fn settings(app: &App) -> Result<Reply> {
    Ok(json(&app.settings.to_json()))
}

/// `PATCH /admin/settings` with a JSON merge patch, e.g. `{"blobMounting": "disabled"}`.
pub fn settings_patch(app: &App, req: &mut Request) -> Result<Reply> {
    let body = read_small_body(req, MAX_PATCH, ("settings patch", Code::Unsupported), None)?;
    let patch: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(400, Code::Unsupported, format!("body is not JSON: {e}")))?;
    match app.settings.apply(&app.store, &patch) {
        Ok(()) => Ok(json(&app.settings.to_json())),
        Err(SettingsError::Invalid(m)) => Err(ApiError::new(400, Code::Unsupported, m)),
        Err(SettingsError::Store(e)) => Err(e.into()),
    }
}

/// `GET /admin/stats`: counters since start, what the store holds, and where the registry
/// listens (so that commands reaching it through its admin socket find its HTTP API).
pub fn stats(app: &App) -> Result<Reply> {
    let mut out = crate::metrics::get().stats_json();
    out["listen"] = serde_json::json!({
        "address": app.config.listen.to_string(),
        "tls": app.config.tls.is_some(),
    });
    let t = app.store.totals()?;
    out["store"] = serde_json::json!({
        "repositories": t.repositories,
        "blobs": t.blobs,
        "blobBytes": t.blob_bytes,
        "links": t.links,
        "uploads": t.uploads,
        "fileBytes": t.file_bytes,
    });
    out["quotas"] = app.store.quota_usage()?;
    out["settings"] = app.settings.to_json();
    Ok(json(&out))
}

/// `GET /admin/check`: verifies the store's reference counts and manifest records in one
/// snapshot; 200 with `{"ok": true}`, or 500 with the problems found (each also logged).
/// `dangling` lists what manifests reference but clients deleted (not a store problem).
pub fn check(app: &App) -> Result<Reply> {
    let mut dangling = Vec::new();
    let problems = app.store.check_all(&mut dangling)?;
    for p in &problems {
        log::error!("store check: {p}");
    }
    let mut reply = json(&serde_json::json!({
        "ok": problems.is_empty(),
        "problems": problems,
        "dangling": dangling,
    }));
    if !problems.is_empty() {
        reply.status = 500;
    }
    Ok(reply)
}

/// The JSON of a key as listed.
pub fn key_json(k: &crate::storage::KeyInfo) -> serde_json::Value {
    serde_json::json!({
        "name": k.name,
        "algorithm": k.algorithm.name(),
        "repositories": k.repositories,
        "blobs": k.blobs,
        "blobBytes": k.bytes,
        "masterKeyIds": k.masters,
    })
}

/// `GET /admin/keys`: every data key (names and algorithms; never key material).
pub fn keys(app: &App) -> Result<Reply> {
    let keys: Vec<_> = app.store.keys()?.iter().map(key_json).collect();
    Ok(json(&serde_json::json!({ "keys": keys })))
}

/// `PUT /admin/repositories/<name>` with `{"key": K, "algorithm": A}` (both optional; no key:
/// plaintext): creates the repository with that key. 201, or 409 if it exists.
pub fn repo_create(app: &App, req: &mut Request, name: &str) -> Result<Reply> {
    let body = read_small_body(req, MAX_PATCH, ("repository", Code::Unsupported), None)?;
    let spec: serde_json::Value = if body.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::new(400, Code::Unsupported, format!("body is not JSON: {e}")))?
    };
    let (key, algorithm) = parse_key_spec(&spec)?;
    let key = key.as_deref().map(|k| (k, algorithm));
    app.store.repo_create(name, key)?;
    log::info!(
        "created repository {name} ({})",
        key.map_or("plaintext".to_owned(), |k| format!("key {:?}", k.0))
    );
    let mut reply = json(&serde_json::json!({ "name": name, "key": key.map(|k| k.0) }));
    reply.status = 201;
    Ok(reply)
}

/// `{"key": K, "algorithm": A}` checked: a valid key name, a known algorithm.
fn parse_key_spec(
    spec: &serde_json::Value,
) -> Result<(Option<String>, Option<crate::crypto::Algorithm>)> {
    let bad = |m: String| ApiError::new(400, Code::Unsupported, m);
    let obj = spec
        .as_object()
        .ok_or_else(|| bad("body must be a JSON object".into()))?;
    if let Some(k) = obj.keys().find(|k| *k != "key" && *k != "algorithm") {
        return Err(bad(format!("unknown field {k:?} (fields: key, algorithm)")));
    }
    let text = |f: &str| -> Result<Option<String>> {
        match obj.get(f) {
            None | Some(serde_json::Value::Null) => Ok(None),
            Some(serde_json::Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(bad(format!("{f} must be a string"))),
        }
    };
    let key = text("key")?;
    if let Some(k) = &key {
        if !crate::config::valid_key_name(k) {
            return Err(bad(format!(
                "{k:?} is not a key name (1-64 of a-z A-Z 0-9 . _ -)"
            )));
        }
    }
    let algorithm = text("algorithm")?
        .map(|a| crate::crypto::Algorithm::parse(&a))
        .transpose()
        .map_err(bad)?;
    if key.is_none() && algorithm.is_some() {
        return Err(bad("an algorithm needs a key".into()));
    }
    Ok((key, algorithm))
}

/// `DELETE /admin/repositories/<name>[?erase=true]`: deletes the repository and everything
/// only it holds; with `erase`, destroys its data key too (crypto-erase).
pub fn repo_delete(app: &App, name: &str, query: &super::routes::Query) -> Result<Reply> {
    let erase = flag(query, "erase")?;
    let d = app.store.repo_delete(name, erase)?;
    log::info!(
        "deleted repository {name}: {} blob(s) freed{}",
        d.blobs_freed,
        match (&d.key, d.erased) {
            (Some(k), true) => format!(", key {k:?} destroyed"),
            _ => String::new(),
        }
    );
    Ok(json(&serde_json::json!({
        "name": name,
        "key": d.key,
        "blobsFreed": d.blobs_freed,
        "erased": d.erased,
    })))
}

/// Largest user request body read.
const MAX_USER_BODY: usize = 8 << 10;

/// `GET /admin/users`: users of the store and of the htpasswd file (names only).
pub fn users(app: &App) -> Result<Reply> {
    let htpasswd = app.gate.as_ref().and_then(|g| g.htpasswd_users());
    Ok(json(&serde_json::json!({
        "auth": app.gate.is_some(),
        "users": app.store.users()?,
        "htpasswd": htpasswd,
    })))
}

/// `POST /admin/users/NAME` (`create`) or `PUT` (new password), body `{"password": "..."}`;
/// the password is hashed here and never logged.
pub fn user_put(app: &App, req: &mut Request, name: &str, create: bool) -> Result<Reply> {
    let body = read_small_body(req, MAX_USER_BODY, ("user", Code::Unsupported), None)?;
    let password = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["password"].as_str().map(str::to_owned))
        .ok_or_else(|| {
            ApiError::new(
                400,
                Code::Unsupported,
                "body must be {\"password\": \"...\"}",
            )
        })?;
    crate::auth::passwords::acceptable(&password)
        .map_err(|m| ApiError::new(400, Code::Unsupported, m))?;
    let hash = crate::auth::passwords::hash(&password);
    app.store.user_put(name, &hash, create)?;
    if let Some(g) = &app.gate {
        g.users_changed();
    }
    log::info!(
        "{} user {name:?}",
        if create {
            "added"
        } else {
            "changed the password of"
        }
    );
    let mut reply = json(&serde_json::json!({ "user": name }));
    if create {
        reply.status = 201;
    }
    Ok(reply)
}

/// `DELETE /admin/users/NAME`.
pub fn user_delete(app: &App, name: &str) -> Result<Reply> {
    app.store.user_delete(name)?;
    if let Some(g) = &app.gate {
        g.users_changed();
    }
    log::info!("deleted user {name:?}");
    Ok(json(&serde_json::json!({ "user": name })))
}

/// `GET /admin/mirrors`: each configured mirror's last pass, totals and cache activity.
pub fn mirrors(app: &App) -> Result<Reply> {
    let v = crate::mirror::sync::status(&app.store, &app.config.mirrors)
        .map_err(|e| ApiError::new(500, Code::Unknown, e.message))?;
    Ok(json(&v))
}

/// `POST /admin/mirrors/<name>/run`: runs one sync pass now and answers its report.
pub fn mirror_run(app: &App, name: &str) -> Result<Reply> {
    let m = app
        .config
        .mirrors
        .iter()
        .find(|m| m.name == name)
        .ok_or_else(|| ApiError::new(404, Code::NameUnknown, format!("no mirror named {name}")))?;
    let progress = crate::mirror::progress::Progress::new(false);
    let report = crate::mirror::sync::run_pass(&app.store, m, &app.stopping, progress)
        .map_err(|e| ApiError::new(409, Code::Unsupported, e.message))?;
    Ok(json(&report))
}

/// `POST /admin/gc[?dryRun=true]`: a collector pass now (waiting for one under way), or only
/// its plan; answers the report.
pub fn gc(app: &App, query: &super::routes::Query) -> Result<Reply> {
    if let Some(k) = query.unknown(&["dryRun"]) {
        return Err(ApiError::new(
            400,
            Code::Unsupported,
            format!("unknown parameter {k:?}: the only one is dryRun=true|false"),
        ));
    }
    let dry_run = flag(query, "dryRun")?;
    let report = crate::gc::run(&app.store, &app.config.gc, dry_run, &app.stopping)?;
    if !dry_run {
        log::info!("gc (asked for): {}", crate::gc::summary(&report));
    }
    Ok(json(&report))
}

/// `POST /admin/scrub[?repository=R][&rate=SIZE]`: a scrub pass now, of the whole store
/// (starting a full pass anew) or of one repository, as fast as the store reads unless a
/// rate per second is given; answers the report. Waits for a pass under way.
pub fn scrub(app: &App, query: &super::routes::Query) -> Result<Reply> {
    if let Some(k) = query.unknown(&["repository", "rate"]) {
        return Err(ApiError::new(
            400,
            Code::Unsupported,
            format!("unknown parameter {k:?}: repository=NAME and rate=SIZE are known"),
        ));
    }
    // An unknown repository is answered by the pass's first read (NAME_UNKNOWN).
    let repo = query.get("repository");
    let rate = query
        .get("rate")
        .map(crate::config::parse_size)
        .transpose()
        .map_err(|e| ApiError::new(400, Code::Unsupported, format!("rate: {e}")))?
        .filter(|&r| r > 0)
        .map(|r| r as u64);
    let healer = crate::scrub::heal::Healer::new(&app.config.mirrors);
    let opts = crate::scrub::Options {
        repo,
        rate,
        fresh: true,
        healer: &healer,
        background: false,
    };
    let mut report = crate::scrub::run(&app.store, &opts, &app.stopping)?;
    report["fileCheck"] = serde_json::json!(
        "not run: redb's integrity check needs the database to itself (outpost scrub on the \
         stopped store runs it); every page a blob or manifest lives in was read"
    );
    log::info!("scrub (asked for): {}", crate::scrub::summary(&report));
    Ok(json(&report))
}

/// `GET /admin/scrub`: the pass running, the full pass under way, the last full pass, and
/// the quarantine with what each object breaks.
pub fn scrub_status(app: &App) -> Result<Reply> {
    Ok(json(&crate::scrub::status(&app.store, &app.config.scrub)?))
}

/// `GET /admin/du`: space per repository and for the store.
pub fn du(app: &App) -> Result<Reply> {
    Ok(json(&app.store.usage()?))
}

/// Query parameter `name` as a switch: absent or `false`, or `true`.
fn flag(query: &super::routes::Query, name: &str) -> Result<bool> {
    match query.get(name) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(v) => Err(ApiError::new(
            400,
            Code::Unsupported,
            format!("{name}={v:?}: use true or false"),
        )),
    }
}

/// `GET /admin/audit[?since=T][&repo=R][&user=U][&limit=N]`: the newest matching audit
/// records (at most `limit`, default 1000), oldest first. `since` is RFC 3339 or a duration
/// ago (`1h`).
pub fn audit(app: &App, query: &super::routes::Query) -> Result<Reply> {
    let bad = |m: String| ApiError::new(400, Code::Unsupported, m);
    if let Some(k) = query.unknown(&["since", "repo", "user", "limit"]) {
        return Err(bad(format!(
            "unknown parameter {k:?}: since, repo, user and limit are known"
        )));
    }
    let filter = crate::audit::Filter {
        since: query
            .get("since")
            .map(|s| crate::audit::parse_since(s, crate::clock::unix_now()))
            .transpose()
            .map_err(|e| bad(format!("since: {e}")))?,
        repo: query.get("repo").map(str::to_owned),
        user: query.get("user").map(str::to_owned),
        limit: match query.get("limit") {
            None => crate::audit::DEFAULT_LIMIT,
            Some(n) => n
                .parse()
                .map_err(|_| bad(format!("limit: {n:?} is not a number")))?,
        },
    };
    let records = app.store.audit_records(&filter)?;
    let records: Vec<_> = records.iter().map(crate::audit::Record::to_json).collect();
    Ok(json(&serde_json::json!({ "records": records })))
}

/// `GET /admin/pulls[?repo=R]`: manifest GETs counted per repository and tag or digest,
/// with the time of the last.
pub fn pulls(app: &App, query: &super::routes::Query) -> Result<Reply> {
    if let Some(k) = query.unknown(&["repo"]) {
        return Err(ApiError::new(
            400,
            Code::Unsupported,
            format!("unknown parameter {k:?}: the only one is repo=NAME"),
        ));
    }
    let pulls = app.store.pulls(query.get("repo"))?;
    let pulls: Vec<_> = pulls
        .iter()
        .map(crate::storage::PullCount::to_json)
        .collect();
    Ok(json(&serde_json::json!({ "pulls": pulls })))
}
