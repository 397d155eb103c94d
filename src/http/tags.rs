//! Tag listing and the catalog, both sorted and paginated with `n`/`last` and `Link`.

use super::errors::{ApiError, Code};
use super::routes::{percent_encode, Query};
use super::{App, Reply, Result};

/// Most entries in one page when the client asks for none or for more.
const MAX_PAGE: usize = 10_000;

fn page_size(query: &Query) -> Result<usize> {
    match query.get("n") {
        None | Some("") => Ok(MAX_PAGE),
        Some(v) => v.parse::<usize>().map(|n| n.min(MAX_PAGE)).map_err(|_| {
            ApiError::new(
                400,
                Code::PaginationNumberInvalid,
                "n must be a non-negative integer",
            )
        }),
    }
}

fn paged(path: &str, n: usize, items: &[String], more: bool, json: serde_json::Value) -> Reply {
    let body = serde_json::to_vec(&json).expect("JSON serialises");
    let reply = Reply::bytes(200, "application/json", body);
    match (more, items.last()) {
        (true, Some(last)) => reply.header(
            "Link",
            format!("<{path}?n={n}&last={}>; rel=\"next\"", percent_encode(last)),
        ),
        _ => reply,
    }
}

/// `GET /v2/<name>/tags/list`.
pub fn list(app: &App, name: &str, query: &Query) -> Result<Reply> {
    let n = page_size(query)?;
    let (tags, more) = app.store.tags(name, query.get("last"), n)?;
    let json = serde_json::json!({ "name": name, "tags": tags });
    Ok(paged(
        &format!("/v2/{name}/tags/list"),
        n,
        &tags,
        more,
        json,
    ))
}

/// `GET /v2/_catalog`.
/// Lists only the repositories `visible` lets through (those the caller may pull).
pub fn catalog(app: &App, query: &Query, visible: &dyn Fn(&str) -> bool) -> Result<Reply> {
    let n = page_size(query)?;
    let (repos, more) = app.store.catalog(query.get("last"), n, visible)?;
    let json = serde_json::json!({ "repositories": repos });
    Ok(paged("/v2/_catalog", n, &repos, more, json))
}
