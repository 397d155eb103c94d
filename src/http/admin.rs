//! The admin API: `/admin/settings` (read, change at runtime) and `/admin/stats`.

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
    let body = read_small_body(req, MAX_PATCH, "settings patch", Code::Unsupported)?;
    let patch: serde_json::Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(400, Code::Unsupported, format!("body is not JSON: {e}")))?;
    match app.settings.apply(&app.store, &patch) {
        Ok(()) => Ok(json(&app.settings.to_json())),
        Err(SettingsError::Invalid(m)) => Err(ApiError::new(400, Code::Unsupported, m)),
        Err(SettingsError::Store(e)) => Err(e.into()),
    }
}

/// `GET /admin/stats`: counters since start and what the store holds.
pub fn stats(app: &App) -> Result<Reply> {
    let mut out = app.stats.to_json();
    let t = app.store.totals()?;
    out["store"] = serde_json::json!({
        "repositories": t.repositories,
        "blobs": t.blobs,
        "blobBytes": t.blob_bytes,
        "links": t.links,
        "uploads": t.uploads,
        "fileBytes": t.file_bytes,
    });
    out["settings"] = app.settings.to_json();
    Ok(json(&out))
}

/// `GET /admin/check`: verifies the store's reference counts in one snapshot; 200 with
/// `{"ok": true}`, or 500 with the problems found (each also logged).
pub fn check(app: &App) -> Result<Reply> {
    let problems = app.store.check()?;
    for p in &problems {
        log::error!("store check: {p}");
    }
    let mut reply = json(&serde_json::json!({ "ok": problems.is_empty(), "problems": problems }));
    if !problems.is_empty() {
        reply.status = 500;
    }
    Ok(reply)
}
